"""The lab notebooks as shipped: student labs without outputs and with "Predict:" cells, solutions
with outputs and nbgrader metadata, every image link resolving from the notebook's own folder,
and JupyterLab's news pop-up switched off in the lab environment's settings."""

import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
LABS = sorted((ROOT / "labs").glob("*.ipynb"))
SOLUTIONS = sorted((ROOT / "labs" / "solutions").glob("*.ipynb"))
OURS = [p for p in LABS if p.name[:2] <= "08"]           # labs 00-08 follow the predict rules
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("path", LABS + SOLUTIONS, ids=lambda p: str(p.relative_to(ROOT)))
def test_image_links_resolve_from_the_notebooks_folder(path):
    nb = nbformat.read(path, 4)
    links = [m for c in nb.cells if c.cell_type == "markdown" for m in IMAGE.findall(c.source)]
    for link in links:
        if "://" in link:
            continue
        assert (path.parent / link).resolve().is_file(), f"{path.name}: {link} does not exist from {path.parent}"


@pytest.mark.parametrize("path", OURS, ids=lambda p: p.name)
def test_student_labs_ship_without_outputs_and_ask_for_predictions(path):
    nb = nbformat.read(path, 4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    text = "\n".join(c.source for c in nb.cells)
    assert "**Expected time:**" in text
    assert "**Predict:**" in text
    # hints only when asked for: no cell prints one unprompted
    for c in code:
        for line in c.source.splitlines():
            assert not re.match(r"\s*(print\()?ex\d?\.hint\(\)", line), f"{path.name}: {line!r}"


@pytest.mark.parametrize("path", [p for p in SOLUTIONS if p.name[:2] <= "08"], ids=lambda p: p.name)
def test_solutions_keep_outputs_and_are_nbgrader_sources(path):
    nb = nbformat.read(path, 4)
    assert any(c.outputs for c in nb.cells if c.cell_type == "code")
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
    solutions = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    assert graded and len(graded) == len(solutions)
    ids = [c.metadata["nbgrader"]["grade_id"] for c in graded + solutions]
    assert len(ids) == len(set(ids))
    for c in graded:
        assert "BEGIN HIDDEN TESTS" in c.source and "grading.verify" in c.source
        assert c.metadata["nbgrader"]["points"] > 0
        assert not any(o.output_type == "error" for o in c.outputs)
        assert "correct:" in "".join(o.get("text", "") for o in c.outputs)
    for c in solutions:
        assert "### BEGIN SOLUTION" in c.source and "### END SOLUTION" in c.source
        assert ".answer(" not in c.source


def test_jupyterlab_news_popup_is_off():
    overrides = json.loads((ROOT / "binder" / "overrides.json").read_text())
    notif = overrides["@jupyterlab/apputils-extension:notification"]
    assert notif["fetchNews"] == "false" and notif["checkForUpdates"] is False
    try:
        import jupyterlab
    except ImportError:
        pytest.skip("JupyterLab is not installed here")
    schema_dir = Path(jupyterlab.__file__).parent.parent.parent.parent.parent / "share" / "jupyter" / "lab" / "schemas"
    schema = schema_dir / "@jupyterlab" / "apputils-extension" / "notification.json"
    if schema.is_file():                    # the value must be one the setting accepts
        allowed = [o["const"] for o in json.loads(schema.read_text())["properties"]["fetchNews"]["oneOf"]]
        assert notif["fetchNews"] in allowed
    makefile = (ROOT / "Makefile").read_text()
    assert "binder/overrides.json" in makefile and "binder/overrides.json" in (ROOT / "binder" / "postBuild").read_text()
