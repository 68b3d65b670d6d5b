"""Build the lab notebooks from their cell lists and execute them, so outputs are real.

    .venv/bin/python tools/make_notebooks.py            # every lab and solution
    .venv/bin/python tools/make_notebooks.py lab05      # the modules whose name contains "lab05"

Each module in tools/notebooks/ defines LAB (path), CELLS, and optionally SOLUTION and
SOLUTION_CELLS. Every notebook is executed here, so a cell that fails stops the build. Student
notebooks (labs/) are then stored *without* outputs, so students predict before they run
(`make test` runs them with `--nbval-lax`); solutions (labs/solutions/) keep their outputs,
which nbval compares on `make test`. Image links are written relative to the notebook's own
folder, so the solutions' diagrams resolve too.
"""

import importlib
import os
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))


ASSETS = ROOT / "assets"


def relink_assets(cells, folder: Path) -> None:
    """Point ``../assets/x.svg`` links (written for labs/) at assets/ from ``folder``."""
    rel = Path(os.path.relpath(ASSETS, folder)).as_posix()
    for c in cells:
        if c.cell_type == "markdown":
            c.source = re.sub(r"\]\((?:\.\./)+assets/", f"]({rel}/", c.source)


def build(path: Path, cells, *, keep_outputs: bool = True) -> None:
    cells = [nbformat.from_dict(dict(c)) for c in cells]     # copies: labs and solutions share cells
    relink_assets(cells, path.parent)
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
        if not keep_outputs and c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    print("wrote", path.relative_to(ROOT))


def modules(filters):
    for f in sorted((ROOT / "tools" / "notebooks").glob("lab*.py")):
        if not filters or any(x in f.stem for x in filters):
            yield importlib.import_module(f"notebooks.{f.stem}")


if __name__ == "__main__":
    for mod in modules(sys.argv[1:]):
        build(ROOT / mod.LAB, mod.CELLS, keep_outputs=False)
        if getattr(mod, "SOLUTION", None):
            build(ROOT / mod.SOLUTION, mod.SOLUTION_CELLS)
