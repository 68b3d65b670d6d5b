"""Exercises for the labs, in the manner of the OSTEP homework simulators.

Each exercise takes a student seed and draws its own variant from a private
``random.Random(seed)``; ``params`` echoes what was drawn; ``answer()`` computes
the expected result with the same machinery the student uses (the OSTEP ``-c``
"compute the answer" mode); ``check(value)`` says whether a value is right and
why not; ``hint()`` nudges without giving it away, and only when asked for.

Classroom mode (``APFLAB_CLASSROOM=1`` in the environment, set by the instructor in
the hub image): ``answer()`` refuses, and grading happens on the instructor's side
(``apflab.exercises.grading``, used by nbgrader's hidden tests) from the student's seed.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from ..errors import ParameterError


CLASSROOM_ENV = "APFLAB_CLASSROOM"
HINT_ON_REQUEST = "(ex.hint() gives a hint.)"


def classroom() -> bool:
    """True when the instructor switched on classroom mode (APFLAB_CLASSROOM=1)."""
    return os.environ.get(CLASSROOM_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class ClassroomModeError(PermissionError):
    """Raised by the "compute the answer" helpers in classroom mode."""


def refuse_in_classroom(what: str) -> None:
    if classroom():
        raise ClassroomModeError(
            f"{what} is switched off in classroom mode ({CLASSROOM_ENV}=1): work the answer out and "
            f"test it with ex.check(...); ex.hint() gives a hint. Your instructor grades from your "
            f"seed on their side.")


def miss(detail: str, plain: str) -> str:
    """A failed numeric check's message: ``detail`` (how far off, which way) in self-study;
    ``plain`` in classroom mode, where "18% too high" would give the answer away in one call."""
    return (plain if classroom() else detail) + " " + HINT_ON_REQUEST


@dataclass
class CheckResult:
    correct: bool
    message: str

    def __bool__(self) -> bool:
        return self.correct

    def __repr__(self) -> str:
        return ("correct: " if self.correct else "not yet: ") + self.message


def _same(a, b) -> bool:
    """Equal as a student means it: lists and tuples alike, -1 and 0xFFFF_FFFF_FFFF_FFFF alike."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and not isinstance(b, bool):
        return (a - b) % (1 << 64) == 0
    return a == b


class Exercise:
    """Base class: subclasses set ``title`` and implement ``_draw``, ``_solve``, ``question``."""
    title = ""

    def __init__(self, seed: int):
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ParameterError(f"seed must be an int (your student number, for example), got {seed!r}")
        self.seed = seed
        self.params = self._draw(random.Random(seed))
        self._answer = None

    def _draw(self, rng: random.Random) -> dict:
        raise NotImplementedError

    def _solve(self):
        raise NotImplementedError

    def question(self) -> str:
        raise NotImplementedError

    def answer(self):
        """Compute the expected answer (the "-c" mode); refuses in classroom mode."""
        refuse_in_classroom("ex.answer()")
        return self._expected()

    def _expected(self):
        """The expected answer, computed once; what ``check`` and the graders compare with."""
        if self._answer is None:
            self._answer = self._solve()
        return self._answer

    def check(self, value) -> CheckResult:
        expected = self._expected()
        if _same(value, expected):
            return CheckResult(True, f"{value} is right.")
        return CheckResult(False, f"{value!r} is not it. " + HINT_ON_REQUEST)

    def hint(self) -> str:
        return ""

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{type(self).__name__}(seed={self.seed}; {shown})\n{self.question()}"


class CountInstructions(Exercise):
    """Lab 00: how many instructions does a counted loop retire before ``brk #0``?"""
    title = "Count the instructions"

    def _draw(self, rng):
        return {"n": rng.randrange(3, 40), "body": rng.randrange(1, 4)}

    def source(self) -> str:
        body = "\n".join("    add x1, x1, #1" for _ in range(self.params["body"]))
        return (f"_start:\n    mov x0, #{self.params['n']}\n    mov x1, #0\n"
                f"1:\n{body}\n    subs x0, x0, #1\n    b.ne 1b\n    brk #0\n")

    def question(self) -> str:
        return ("How many instructions does this guest retire, counting the final brk?\n\n"
                + self.source())

    def _solve(self):
        from ..machine import Machine
        m = Machine(seed=self.seed)
        m.load_asm(self.source())
        return m.run().instructions

    def hint(self) -> str:
        return ("Count the two set-up instructions, then (body + subs + b.ne) per iteration, "
                "then the brk.")
