"""nbgrader end to end on lab 02: the solution notebook is the nbgrader source; `generate_assignment`
strips solutions and hidden tests; `autograde` (in classroom mode, where `answer()` refuses)
gives the solution full marks, the released skeleton zero, a skeleton run as is zero with
the grader's words in the autograded notebook, and a notebook that asks the library for the
answers zero."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

nbgrader = pytest.importorskip("nbgrader")

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "labs" / "solutions" / "02-exceptions.ipynb"


# nbgrader runs `alembic` (its database migrations) from PATH: the one beside this Python.
BIN = str(Path(sys.executable).parent)


def nbgrader_cmd(course: Path, *args):
    env = dict(os.environ, APFLAB_CLASSROOM="1", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--force"], cwd=course, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def grade_cells(nb):
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if "nbgrader" in c.metadata}


CHEATS = {"lab02-syndrome": "my_answer = ex._expected()", "lab02-vector": "my_answer2 = ex2._expected()",
          "lab02-tick": "my_handler = ex3._expected()"}


def submission(release, source, student: str, fill: bool, drop_raise: bool = False, cheat: bool = False):
    nb = nbformat.read(release, 4)
    src_cells = grade_cells(nbformat.read(source, 4))
    for c in nb.cells:
        if c.cell_type == "code" and "SEED = 1234" in c.source:
            c.source = c.source.replace("SEED = 1234", f"SEED = {student}")
        meta = c.metadata.get("nbgrader", {})
        if meta.get("solution"):
            if fill:
                c.source = src_cells[meta["grade_id"]].source
            elif cheat:                     # the private method works in classroom mode...
                c.source = CHEATS[meta["grade_id"]]
            elif drop_raise and meta["grade_id"] == "lab02-tick":
                # a student who runs the skeleton as it is
                from apflab.exercises.lab02 import PeriodicTick
                c.source = 'my_handler = """\\\n' + PeriodicTick(0).skeleton() + '"""'
    return nb


def test_autograde_solution_full_marks_skeleton_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", BIN + os.pathsep + os.environ.get("PATH", ""))
    course = tmp_path / "course"
    (course / "source" / "lab02").mkdir(parents=True)
    shutil.copy(LAB, course / "source" / "lab02" / "lab02.ipynb")
    (course / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'apflab'\n"
        "c.ExecutePreprocessor.timeout = 240\n")
    nbgrader_cmd(course, "generate_assignment", "lab02")
    release = course / "release" / "lab02" / "lab02.ipynb"
    released = nbformat.read(release, 4)
    text = "\n".join(c.source for c in released.cells)
    assert "BEGIN HIDDEN TESTS" not in text and "grading.verify" not in text
    assert "BEGIN SOLUTION" not in text and "raise NotImplementedError" in text
    assert "cntv_cval_el0, x11" not in text                 # the tick solution is gone

    students = {"1234": dict(fill=True), "1235": dict(fill=False), "1236": dict(fill=False, drop_raise=True),
                "1237": dict(fill=False, cheat=True)}
    for student, how in students.items():
        d = course / "submitted" / student / "lab02"
        d.mkdir(parents=True)
        nbformat.write(submission(release, course / "source" / "lab02" / "lab02.ipynb", student, **how),
                       d / "lab02.ipynb")
    nbgrader_cmd(course, "autograde", "lab02")

    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        scores = {s: gb.find_submission("lab02", s) for s in students}
        got = {s: (sub.score, sub.max_score) for s, sub in scores.items()}
    assert got["1234"][0] == got["1234"][1] == 5, got
    assert got["1235"][0] == 0 and got["1236"][0] == 0 and got["1237"][0] == 0, got

    def errors(student):
        nb = nbformat.read(course / "autograded" / student / "lab02" / "lab02.ipynb", 4)
        return {gid: "\n".join(o.get("evalue", "") + "".join(o.get("traceback", []))
                              for o in c.outputs if o.output_type == "error")
                for gid, c in grade_cells(nb).items()}
    e = errors("1235")
    assert "NotImplementedError" in e["lab02-tick"]
    e = errors("1236")
    assert "never read ICC_IAR1_EL1" in e["lab02-tick-check"]     # the grader's words reach the student
    assert not any(errors("1234").values())
    e = errors("1237")                                          # ...but the hidden tests see it
    assert all("asks the library for the answer" in e[g] for g in
               ("lab02-syndrome-check", "lab02-vector-check", "lab02-tick-check")), e


def test_classroom_mode_refuses_answer(monkeypatch):
    from apflab.exercises import ClassroomModeError
    from apflab.exercises.lab02 import PeriodicTick, WhichVector
    from apflab.exercises import holes
    from apflab.exercises.lab02 import tick_solution
    monkeypatch.setenv("APFLAB_CLASSROOM", "1")
    for ex in (WhichVector(5), PeriodicTick(5)):
        with pytest.raises(ClassroomModeError, match="classroom mode"):
            ex.answer()
    for helper in (tick_solution, lambda: holes.reference("page_ready_irq")):
        with pytest.raises(ClassroomModeError, match="switched off in classroom mode"):
            helper()
    assert WhichVector(5).check(0x1234).correct is False      # checking still works
    from apflab.exercises.lab05 import PredictStall
    msg = PredictStall(3).check(1.0).message                  # but says neither how far nor which way
    assert "not within 20%" in msg and "off" not in msg and "-" not in msg.split("(")[0]
    monkeypatch.setenv("APFLAB_CLASSROOM", "0")
    assert WhichVector(5).answer() is not None
    assert "-71% off" in PredictStall(3).check(1.0).message     # self-study: the detail helps


def test_grading_refuses_shortcuts_and_foreign_seeds(tmp_path):
    from apflab.exercises import grading
    with pytest.raises(AssertionError, match="asks the library for the answer"):
        grading.check_no_shortcuts(["x = 1", "my_answer = ex.answer()"])
    grading.check_no_shortcuts(["my_answer = ex.params['n'] * 3", "ex.check(my_answer)"])
    d = tmp_path / "autograded" / "4242" / "lab02"
    d.mkdir(parents=True)
    grading.check_seed(4242, cwd=d)
    with pytest.raises(AssertionError, match="seed is 4242"):
        grading.check_seed(1234, cwd=d)
    grading.check_seed(1234, cwd=tmp_path)                    # not under autograde: nothing to check


def test_every_exercise_checks_without_answer_in_classroom_mode(monkeypatch):
    """No check may go through the student-facing answer(): in classroom mode it refuses."""
    import inspect
    from apflab import exercises
    from apflab.exercises import Exercise, lab01, lab02, lab03, lab04, lab05, lab06, lab07, lab08, lab09, lab10, lab11
    monkeypatch.setenv("APFLAB_CLASSROOM", "1")
    for mod in (exercises, lab01, lab02, lab03, lab04, lab05, lab06, lab07, lab08, lab09, lab10, lab11):
        for name, cls in vars(mod).items():
            if inspect.isclass(cls) and issubclass(cls, Exercise) and cls is not Exercise:
                src = inspect.getsource(cls)
                assert "self.answer()" not in src, f"{mod.__name__}.{name} calls answer() inside the class"
