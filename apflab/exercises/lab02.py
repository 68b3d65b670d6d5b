"""Lab 02 exercises: exception syndromes and the vector table.

``DecodeSyndrome`` makes the guest take a seeded synchronous exception and
shows the ESR_EL1 its handler saved; the student decodes it. ``WhichVector``
asks which VBAR_EL1 offset a seeded (exception kind, origin) pair enters; the
answer comes from a guest whose sixteen vector slots each report their own
offset.
"""

from __future__ import annotations

from ..machine import Machine
from . import CheckResult, Exercise

# What the guest executes for each kind of synchronous exception.
_TRIGGERS = {
    "svc": "svc  #{imm:#x}",     # system call
    "brk": "brk  #{imm:#x}",     # breakpoint (any immediate but 0, which the lab keeps for "stop")
    "udf": ".inst {imm:#010x}          // udf #{imm:#x}: keystone lacks the mnemonic",
}

# Drop to EL0 (SPSR_EL1 = 0: EL0t, interrupts unmasked) with a stack of its own.
_TO_EL0 = """\
    adr  x0, el0_code
    msr  elr_el1, x0
    mov  x0, #0
    msr  spsr_el1, x0
    adr  x0, el0_stack_top
    msr  sp_el0, x0
    eret
el0_code:
"""


def _vectors(slot_body: str) -> str:
    """A 2 KiB-aligned table of 16 slots of 128 bytes; ``{off}`` is the slot's offset."""
    slots = "".join(f"    .balign 128\n" + slot_body.format(off=off) for off in range(0, 0x800, 0x80))
    return "    .balign 2048\nvectors:\n" + slots


class DecodeSyndrome(Exercise):
    """Decode EC and the immediate from an ESR_EL1 a handler saved."""
    title = "Decode a syndrome"

    def _draw(self, rng):
        kind = rng.choice(sorted(_TRIGGERS))
        return {"kind": kind, "imm": rng.randrange(1, 0x10000), "from_el": rng.choice((0, 1))}

    def source(self) -> str:
        p = self.params
        trigger = "    " + _TRIGGERS[p["kind"]].format(imm=p["imm"]) + "\n"
        # Every synchronous slot saves ESR_EL1 to `saved` and stops.
        body = "    mrs  x9, esr_el1\n    adr  x10, saved\n    str  x9, [x10]\n    brk  #0\n"
        return ("_start:\n    adr  x0, vectors\n    msr  vbar_el1, x0\n"
                + (_TO_EL0 if p["from_el"] == 0 else "")
                + trigger + "    brk  #0\n"
                + _vectors(body)
                + "    .balign 8\nsaved: .quad 0\nel0_stack: .space 256\nel0_stack_top:\n")

    def esr(self) -> int:
        """Run the guest: the ESR_EL1 value its handler saved."""
        if getattr(self, "_esr", None) is None:
            m = Machine(seed=self.seed)
            syms = m.load_asm(self.source())
            m.run(max_instructions=1_000)
            self._esr = m.read_u64(syms["saved"])
        return self._esr

    def question(self) -> str:
        return (f"[seed {self.seed}] A guest at EL{self.params['from_el']} executed one instruction "
                f"that trapped to EL1. The handler saved ESR_EL1 = {self.esr():#010x}.\n"
                f"What are the exception class EC (bits [31:26]) and the 16-bit immediate "
                f"(ISS bits [15:0])? Answer as a tuple (ec, imm).")

    def _solve(self) -> tuple[int, int]:
        esr = self.esr()
        return ((esr >> 26) & 0x3F, esr & 0xFFFF)

    def check(self, value) -> CheckResult:
        if isinstance(value, list):
            value = tuple(value)
        result = super().check(value)
        if result:      # say it in hex, as the question does
            return CheckResult(True, f"EC={value[0]:#x}, imm={value[1]:#x} is right.")
        return result

    def hint(self) -> str:
        return ("Shift right by 26 and keep 6 bits for EC; mask with 0xFFFF for the immediate. "
                "EC 0x15 is SVC, 0x3C is BRK, 0x00 is 'unknown' (an undefined instruction, "
                "whose syndrome carries no immediate).")


# (kind, origin) -> how the guest gets there and triggers it.
ORIGINS = ("el0", "el1t", "el1h")
KINDS = ("sync", "irq")


class WhichVector(Exercise):
    """Which offset from VBAR_EL1 does the CPU enter for a seeded (kind, origin)?"""
    title = "Which vector?"

    def _draw(self, rng):
        return {"kind": rng.choice(KINDS), "origin": rng.choice(ORIGINS)}

    def source(self) -> str:
        p = self.params
        lines = "_start:\n    adr  x0, vectors\n    msr  vbar_el1, x0\n"
        if p["kind"] == "irq":
            lines += ("    mov  x0, #0xff\n    msr  s3_0_c4_c6_0, x0        // ICC_PMR_EL1\n"
                      "    mov  x0, #1\n    msr  s3_0_c12_c12_7, x0      // ICC_IGRPEN1_EL1\n"
                      "    mrs  x0, cntvct_el0\n    add  x0, x0, #100\n"
                      "    msr  cntv_cval_el0, x0       // fire in 100 ns\n"
                      "    mov  x0, #1\n    msr  cntv_ctl_el0, x0\n")
        if p["origin"] == "el0":
            lines += _TO_EL0
        elif p["origin"] == "el1t":
            lines += "    msr  spsel, #0               // EL1 now uses SP_EL0: EL1t\n"
        if p["origin"] != "el0" and p["kind"] == "irq":
            lines += "    msr  daifclr, #2             // unmask IRQs\n"
        lines += ("    svc  #0\n" if p["kind"] == "sync" else "1:  b    1b                   // wait\n")
        lines += "    brk  #0\n"
        # Each slot puts its own offset in x9 and stops.
        return lines + _vectors("    mov  x9, #{off:#x}\n    brk  #0\n") + \
            "    .balign 8\nel0_stack: .space 256\nel0_stack_top:\n"

    def describe(self) -> str:
        kind = {"sync": "an SVC (synchronous exception)", "irq": "a timer IRQ"}[self.params["kind"]]
        origin = {"el0": "at EL0 (user code)", "el1t": "at EL1 on SP_EL0 (EL1t)",
                  "el1h": "at EL1 on SP_EL1 (EL1h)"}[self.params["origin"]]
        return f"{kind} while running {origin}"

    def question(self) -> str:
        return (f"[seed {self.seed}] The guest takes {self.describe()}. At which offset from "
                f"VBAR_EL1 does execution continue? (an int, e.g. 0x80)")

    def _solve(self) -> int:
        m = Machine(seed=self.seed)
        m.load_asm(self.source())
        m.run(max_instructions=10_000)
        return m.reg("x9")

    def check(self, value) -> CheckResult:
        result = super().check(value)
        if result:
            return CheckResult(True, f"{value:#x} is right.")
        return result

    def hint(self) -> str:
        return ("Four groups of 0x200 bytes: current EL with SP_EL0, current EL with SP_ELx, "
                "lower EL in AArch64, lower EL in AArch32. Inside a group: synchronous +0x000, "
                "IRQ +0x080, FIQ +0x100, SError +0x180.")
