"""Student holes in the guest kernel: swap a marked region of ``kernel.S`` for student code.

``kernel.S`` marks the regions a lab lets students write between
``// STUDENT-BEGIN name`` and ``// STUDENT-END name``. ``substitute`` puts the
student's assembly there (in the whole source ``guest.build_source`` made, so
the kernel file itself is never edited), and ``load`` assembles it and turns an
assembler error into one that names the student's own line, or says which
label the rest of the kernel needs from the student's code.
"""

from __future__ import annotations

import re

from ..errors import AsmError, ParameterError
from ..guest import kernel_source

BEGIN = "// STUDENT-BEGIN {name}\n"
END = "// STUDENT-END {name}\n"


def _span(source: str, name: str) -> tuple[int, int]:
    begin, end = BEGIN.format(name=name), END.format(name=name)
    i = source.find(begin)
    j = source.find(end, i + 1)
    if i < 0 or j < 0:
        raise ParameterError(f"the source has no student region {name!r} "
                             f"(markers `{begin.strip()}` ... `{end.strip()}`)")
    return i + len(begin), j


def names(source: str | None = None) -> list[str]:
    """The student regions marked in ``source`` (default: the guest kernel)."""
    return re.findall(r"^// STUDENT-BEGIN (\S+)$", source or kernel_source(), re.M)


def reference(name: str) -> str:
    """The kernel's own code for region ``name``: what a complete solution does.

    Refuses in classroom mode. (The kernel's source ships with apflab, since every lab runs
    it: a student who opens apflab/guest/kernel.S can still read it; docs/INSTRUCTORS.md
    says so.)"""
    from . import refuse_in_classroom
    refuse_in_classroom(f"holes.reference({name!r})")
    src = kernel_source()
    i, j = _span(src, name)
    return src[i:j]


class Substituted:
    """A source with one region replaced; knows where the student's lines went."""

    def __init__(self, source: str, name: str, code: str):
        if not isinstance(code, str):
            raise ParameterError(f"student code for {name!r} must be a string of assembly, "
                                 f"got {type(code).__name__}")
        if not code.endswith("\n"):
            code += "\n"
        i, j = _span(source, name)
        self.name = name
        self.first_line = source.count("\n", 0, i) + 1      # 1-based line of the student's line 1
        self.n_lines = code.count("\n")
        self.source = source[:i] + code + source[j:]

    def student_line(self, line: int | None) -> int | None:
        """The student's own line number for a line of the whole source, or None outside it."""
        if line is None or not self.first_line <= line < self.first_line + self.n_lines:
            return None
        return line - self.first_line + 1

    def explain(self, err: AsmError) -> AsmError:
        """``err`` reworded for the student: their line, or what the kernel misses from them."""
        own = self.student_line(err.line)
        if own is not None:
            return AsmError(f"your {self.name} code, {err.message}", line=own, text=err.text)
        missing = re.search(r"undefined symbol `([^`]+)`", err.message)
        if missing:
            return AsmError(f"the kernel needs the label `{missing.group(1)}` from your {self.name} "
                            f"code (it is used at `{(err.text or '').strip()}`): define it, or keep "
                            f"the skeleton's label")
        return AsmError(f"with your {self.name} code the kernel does not assemble: {err}")


def load(machine, source: str, name: str, code: str) -> dict[str, int]:
    """``machine.load_asm`` of ``source`` with region ``name`` replaced by ``code``.

    Raises ``AsmError`` naming the student's line (``err.line`` counts from their line 1)."""
    sub = Substituted(source, name, code)
    try:
        return machine.load_asm(sub.source)
    except AsmError as err:
        raise sub.explain(err) from None
