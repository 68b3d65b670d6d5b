"""Instructor-side grading, for nbgrader's hidden tests (``### BEGIN HIDDEN TESTS``).

A hidden test recomputes the expected value from the student's seed with the exercise's
own ``check`` (which never goes through the student-facing ``answer()``, so it works in
classroom mode), checks that the seed is the student's, and that the notebook did not take
a shortcut to the answer::

    from apflab.exercises import grading
    grading.verify(PredictStall, SEED, my_answer)

``verify`` raises ``AssertionError`` with the check's message: nbgrader shows it in the
autograded notebook and gives the cell's points only when nothing was raised.

What this cannot stop: the simulator is open source and runs in the student's kernel, so a
student can always run the experiment (for "measure" exercises that is the exercise) or copy
the grader's code. It stops the one-line shortcuts (``ex.answer()``, the private
``_expected``/``_solve``, ``holes.reference``, ``tick_solution``) and a seed that is not the student's.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

from . import CheckResult, Exercise

ROSTER_ENV = "APFLAB_ROSTER"      # CSV "student_id,seed": seeds the instructor handed out
SHORTCUTS = re.compile(r"\.answer\s*\(|\._expected\s*\(|\._solve\s*\(|holes\.reference\s*\(|"
                       r"tick_solution\s*\(|_TICK_SOLUTION|\._answer\b")


def _student_id(cwd: Path) -> str | None:
    """nbgrader autograde runs each notebook in ``autograded/<student>/<assignment>/``."""
    parts = cwd.resolve().parts
    if "autograded" in parts:
        i = len(parts) - 1 - parts[::-1].index("autograded")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def expected_seed(student_id: str) -> int | None:
    """The seed this student should use: from the roster, else the student id when it is a number."""
    roster = os.environ.get(ROSTER_ENV)
    if roster:
        with open(roster, newline="") as f:
            for row in csv.reader(f):
                if row and row[0].strip() == student_id:
                    return int(row[1])
        return None
    return int(student_id) if student_id.isdigit() else None


def check_seed(seed, cwd: str | Path | None = None) -> None:
    """Under ``nbgrader autograde``: the notebook's seed must be the student's."""
    student = _student_id(Path(cwd or os.getcwd()))
    if student is None:
        return                      # not under autograde (self-study, or the instructor's tests)
    want = expected_seed(student)
    assert want is not None, (f"no seed known for student {student!r}: add them to the roster "
                              f"(${ROSTER_ENV}, CSV student_id,seed) or use numeric student ids")
    assert seed == want, f"SEED is {seed!r}, but student {student}'s seed is {want}"


def check_no_shortcuts(sources=None) -> None:
    """The notebook's executed cells did not ask the library for the answer."""
    if sources is None:
        try:
            from IPython import get_ipython
            shell = get_ipython()
            sources = list(shell.user_ns.get("In", [])) if shell is not None else []
        except ImportError:
            sources = []
    for k, src in enumerate(sources):
        if "BEGIN HIDDEN TESTS" in src or "apflab.exercises import grading" in src:
            continue                # the grader's own cells
        hit = SHORTCUTS.search(src)
        assert hit is None, (f"cell {k} asks the library for the answer ({hit.group(0).strip()}): "
                             f"that is not allowed in a graded notebook")


def verify(cls: type[Exercise], seed, value) -> CheckResult:
    """The hidden test: right seed, no shortcut, and ``cls(seed).check(value)`` passes."""
    check_seed(seed)
    check_no_shortcuts()
    result = cls(seed).check(value)
    assert result, result.message
    return result
