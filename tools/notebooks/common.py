"""Cell helpers shared by the lab modules: predict prompts, and nbgrader-ready exercise cells.

Solution notebooks (labs/solutions/) double as nbgrader source notebooks: the cell that
computes an answer is a solution cell (``### BEGIN SOLUTION`` ... ``### END SOLUTION``,
stripped by ``nbgrader generate_assignment``) and the cell that checks it is a locked,
graded test cell whose hidden part (``### BEGIN HIDDEN TESTS``) grades from the student's
seed with ``apflab.exercises.grading``, never through the student-facing ``answer()``.
"""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

SCHEMA = 3


def predict(prompt: str, name: str, example: str = "None") -> list:
    """A "Predict:" prompt and the cell the student writes the prediction in (before running)."""
    return [md(f"**Predict:** {prompt} Write it in the next cell *before* you run the experiment "
               f"below it; afterwards, say in a sentence why you were right or wrong."),
            code(f"{name} = {example}   # <- your prediction, before running the next cell")]


def solution(grade_id: str, setup: str, body: str):
    """An nbgrader solution cell: ``setup`` stays in the released notebook, ``body`` is stripped."""
    src = (setup.rstrip() + "\n" if setup else "") + "### BEGIN SOLUTION\n" + body.strip("\n") + "\n### END SOLUTION"
    c = code(src)
    c.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False, "task": False,
                              "grade_id": grade_id, "schema_version": SCHEMA}
    return c


def graded(grade_id: str, points: int, ex: str, cls: str, module: str, var: str):
    """An nbgrader test cell: shows ``ex.check(var)``, and grades it from the seed in hidden tests."""
    src = (f"print({ex}.check({var}))\n"
           "### BEGIN HIDDEN TESTS\n"
           "from apflab.exercises import grading\n"
           f"from {module} import {cls} as _Graded\n"
           f"assert grading.verify(_Graded, {ex}.seed, {var})\n"
           "### END HIDDEN TESTS")
    c = code(src)
    c.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "task": False,
                              "grade_id": grade_id, "points": points, "schema_version": SCHEMA}
    return c


def expected_time(minutes: int, kinds: str) -> str:
    return f"**Expected time:** about {minutes} minutes. **Exercises:** {kinds}."
