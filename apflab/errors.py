"""Exceptions apflab raises.

Guest mistakes made through a hypercall get the spec's error code in x0, not an
exception (STYLE: "spec error codes for guest mistakes, exceptions for ours").
What is left here is for the student or instructor at the Python level: bad
assembly, a guest that cannot go on, bad parameters, corrupt files, and broken
invariants inside apflab itself.
"""


class ApflabError(Exception):
    """Base class of every exception apflab raises on purpose."""


class AsmError(ApflabError):
    """The guest assembly does not assemble; names the line and its text."""

    def __init__(self, message: str, line: int | None = None, text: str | None = None):
        self.message = message
        self.line = line
        self.text = text
        where = f"line {line}: {text.strip()!r}: " if line is not None else ""
        super().__init__(f"{where}{message}")


class GuestError(ApflabError):
    """The guest stopped in a way the harness cannot continue from.

    Carries the PC, the disassembled instruction there and, when an exception
    was involved, the decoded syndrome, so a student can find the fault.
    """

    def __init__(self, message: str, pc: int | None = None, insn: str | None = None,
                 syndrome: str | None = None):
        self.message = message
        self.pc = pc
        self.insn = insn
        self.syndrome = syndrome
        parts = [message]
        if pc is not None:
            parts.append(f"at pc={pc:#x}" + (f" ({insn})" if insn else ""))
        if syndrome:
            parts.append(syndrome)
        super().__init__("; ".join(parts))


class BudgetExceeded(GuestError):
    """The guest ran past ``max_instructions`` (or the virtual-time budget)."""


class GuestFault(GuestError):
    """An exception the guest has no vector for, or an access outside guest RAM."""


class HookError(ApflabError):
    """A Python exception raised inside a unicorn hook, re-raised after emu_start."""


class ParameterError(ApflabError, ValueError):
    """A scenario, machine or model parameter is out of range."""


class TraceFormatError(ApflabError):
    """A saved trace or result file is corrupt, truncated or of another format."""


class InvariantError(ApflabError):
    """A rule inside apflab itself was broken: a bug in apflab, not in the guest."""
