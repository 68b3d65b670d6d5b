"""Build the lab notebooks from their cell lists and execute them, so outputs are real.

    .venv/bin/python tools/make_notebooks.py            # every lab and solution
    .venv/bin/python tools/make_notebooks.py lab05      # the modules whose name contains "lab05"

Each module in tools/notebooks/ defines LAB (path), CELLS, and optionally SOLUTION and
SOLUTION_CELLS. Outputs stored in the notebooks are what nbval compares on `make test`.
"""

import importlib
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


def build(path: Path, cells) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = cells
    # Widget state is random model ids and large: not stored, so rebuilds diff cleanly.
    NotebookClient(nb, timeout=600, kernel_name="python3", store_widget_state=False,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nb.metadata.pop("widgets", None)
    for i, c in enumerate(nb.cells):       # keep diffs small: no timings, stable ids
        c.metadata.pop("execution", None)
        c["id"] = f"{path.stem[:2]}-{i:02d}"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    print("wrote", path.relative_to(ROOT))


def modules(filters):
    for f in sorted((ROOT / "tools" / "notebooks").glob("lab*.py")):
        if not filters or any(x in f.stem for x in filters):
            yield importlib.import_module(f"notebooks.{f.stem}")


if __name__ == "__main__":
    for mod in modules(sys.argv[1:]):
        build(ROOT / mod.LAB, mod.CELLS)
        if getattr(mod, "SOLUTION", None):
            build(ROOT / mod.SOLUTION, mod.SOLUTION_CELLS)
