"""Lab 02 exercises: exception syndromes and the vector table.

``DecodeSyndrome`` makes the guest take a seeded synchronous exception and
shows the ESR_EL1 its handler saved; the student decodes it. ``WhichVector``
asks which VBAR_EL1 offset a seeded (exception kind, origin) pair enters; the
answer comes from a guest whose sixteen vector slots each report their own
offset.
"""

from __future__ import annotations

from ..machine import Machine
from . import CheckResult, Exercise, refuse_in_classroom

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


# ---------------------------------------------------------------------- build it: a periodic tick

_TICK_MAIN = """\
_start:
    adr  x0, vectors
    msr  vbar_el1, x0
    mov  x0, #0xff
    msr  s3_0_c4_c6_0, x0       // ICC_PMR_EL1: let every priority through
    mov  x0, #1
    msr  s3_0_c12_c12_7, x0     // ICC_IGRPEN1_EL1: group-1 interrupts on
    ldr  x1, period
    mrs  x0, cntvct_el0
    add  x0, x0, x1
    adr  x2, first_cval
    str  x0, [x2]               // the first deadline: one period from now
    msr  cntv_cval_el0, x0
    mov  x0, #1
    msr  cntv_ctl_el0, x0       // ENABLE = 1, IMASK = 0
    ldr  x20, wanted
    mov  x19, #0
    msr  daifclr, #2            // unmask IRQs
1:  add  x19, x19, #1           // the work the ticks interrupt
    ldr  x1, ticks
    cmp  x1, x20
    b.lo 1b
    msr  daifset, #2
    mrs  x0, cntv_cval_el0
    adr  x2, last_cval
    str  x0, [x2]
    adr  x2, loops
    str  x19, [x2]
    brk  #0

    .balign 2048
vectors:
    .space 0x280
irq_el1h:                       // VBAR_EL1 + 0x280: IRQ, current EL with SP_EL1
"""

_TICK_DATA = """
    .balign 8
period:     .quad {period}
wanted:     .quad {wanted}
ticks:      .quad 0
first_cval: .quad 0
last_cval:  .quad 0
loops:      .quad 0
"""

TICK_SKELETON = """\
    // You may use x9-x15; the interrupted loop keeps its state in x19 and x20.
    // TODO 1: acknowledge the interrupt: x9 = ICC_IAR1_EL1 (mrs x9, s3_0_c12_c12_0).
    // TODO 2: if x9 is the virtual timer's INTID (27): move the deadline on by one
    //         period (ldr x10, period) from the *previous* deadline (mrs x11,
    //         cntv_cval_el0), so that ticks do not drift; write it back to
    //         CNTV_CVAL_EL0; add 1 to `ticks` (adr x12, ticks; ldr; add; str).
    // TODO 3: end the interrupt: ICC_EOIR1_EL1 = x9 (msr s3_0_c12_c12_1, x9).
    eret
"""

_TICK_SOLUTION = """\
    mrs  x9, s3_0_c12_c12_0     // ICC_IAR1_EL1: acknowledge, x9 = INTID
    cmp  x9, #27
    b.ne 2f
    mrs  x11, cntv_cval_el0
    ldr  x10, period
    add  x11, x11, x10          // the next deadline, from the last one: no drift
    msr  cntv_cval_el0, x11
    adr  x12, ticks
    ldr  x13, [x12]
    add  x13, x13, #1
    str  x13, [x12]
2:  msr  s3_0_c12_c12_1, x9     // ICC_EOIR1_EL1: end of interrupt
    eret
"""


def tick_solution() -> str:
    """A complete periodic-tick handler (the worked solution); refuses in classroom mode."""
    refuse_in_classroom("tick_solution()")
    return _TICK_SOLUTION


class PeriodicTick(Exercise):
    """Build it: a periodic virtual-timer interrupt handler, graded by running it."""
    title = "Build a periodic tick"
    BUDGET_PER_TICK = 40_000        # instructions: a period is at most 9 µs, one instruction 1 ns

    def _draw(self, rng):
        return {"period_ns": 500 * rng.randrange(4, 19), "ticks": rng.randrange(5, 13)}

    def skeleton(self) -> str:
        """The handler to start from: it assembles and runs, with TODO holes."""
        return TICK_SKELETON

    def _solve(self) -> str:
        return _TICK_SOLUTION

    def question(self) -> str:
        p = self.params
        return (f"[seed {self.seed}] Write the IRQ handler at VBAR_EL1 + 0x280 (start from "
                f"ex.skeleton()) so that the virtual timer interrupts the loop every "
                f"{p['period_ns']} ns, without drift, and `ticks` counts them; the loop stops "
                f"after {p['ticks']} ticks. ex.check(code) runs it and says what went wrong.")

    def source(self, code: str) -> str:
        p = self.params
        if not code.endswith("\n"):
            code += "\n"
        return _TICK_MAIN + code + _TICK_DATA.format(period=p["period_ns"], wanted=p["ticks"])

    def run(self, code: str) -> dict:
        """Run the guest with ``code`` as the handler; what happened, as plain values."""
        from ..errors import AsmError
        m = Machine(seed=self.seed)
        first = _TICK_MAIN.count("\n") + 1
        try:
            syms = m.load_asm(self.source(code))
        except AsmError as err:
            if err.line is not None and first <= err.line < first + code.count("\n") + 1:
                raise AsmError(f"your handler, {err.message}", line=err.line - first + 1,
                               text=err.text) from None
            raise
        budget = self.BUDGET_PER_TICK * self.params["ticks"]
        stop = m.run_until((), budget)
        rd = lambda name: m.read_u64(syms[name])
        irq_times = [r.t_ns for r in m.trace.records if r.kind == "irq"]
        return {"finished": stop is not None, "ticks": rd("ticks"), "first_cval": rd("first_cval"),
                "last_cval": rd("last_cval"), "irqs": m.trace.counts.get("irq", 0),
                "acks": m.trace.counts.get("irq_ack", 0), "eois": m.trace.counts.get("irq_eoi", 0),
                "irq_times": irq_times, "x20": m.reg("x20")}

    def check(self, code) -> CheckResult:
        from ..errors import AsmError
        if not isinstance(code, str):
            return CheckResult(False, f"give your handler as a string of assembly, not {type(code).__name__}.")
        try:
            r = self.run(code)
        except AsmError as err:
            return CheckResult(False, f"does not assemble: {err}")
        p = self.params
        period, wanted = p["period_ns"], p["ticks"]
        problems = []
        if r["irqs"] == 0:
            problems.append("the timer interrupt was never taken.")
        elif r["acks"] == 0:
            problems.append(f"the handler ran {r['irqs']} times but never read ICC_IAR1_EL1: the "
                            f"interrupt was never acknowledged.")
        if r["acks"] and r["eois"] == 0:
            problems.append("ICC_EOIR1_EL1 was never written: after the first interrupt the timer's "
                            "priority stays active and no further interrupt can be taken.")
        if r["irqs"] > 2 * max(r["ticks"], 1) + 2:
            problems.append(f"the handler was entered {r['irqs']} times for {r['ticks']} ticks: an "
                            f"interrupt storm (the deadline stays in the past, so the level-triggered "
                            f"line stays high: move CNTV_CVAL_EL0 on).")
        gaps = [b - a for a, b in zip(r["irq_times"], r["irq_times"][1:])]
        if gaps and min(gaps) < period // 2 and r["irqs"] <= 2 * max(r["ticks"], 1) + 2:
            problems.append(f"an interrupt came back {min(gaps)} ns after the one before, not one "
                            f"period ({period} ns) later: the deadline was not moved into the future.")
        if r["x20"] != wanted:
            problems.append(f"register x20 was clobbered: the interrupted loop keeps its limit "
                            f"({wanted}) there, and found {r['x20']:#x} after your handler ran. "
                            f"Use x9-x15.")
        if not r["finished"]:
            problems.append(f"`ticks` reached {r['ticks']} of {wanted} within "
                            f"{self.BUDGET_PER_TICK * wanted:,} instructions.")
        elif r["ticks"] != wanted:
            problems.append(f"`ticks` is {r['ticks']}, expected {wanted}.")
        if r["finished"] and not problems:
            drift = r["last_cval"] - (r["first_cval"] + wanted * period)
            if drift != 0:
                problems.append(f"the deadlines drift: after {wanted} ticks CNTV_CVAL_EL0 is "
                                f"{drift:+d} ns away from first deadline + {wanted} x {period} ns. "
                                f"Add the period to the previous deadline (CNTV_CVAL_EL0), not to "
                                f"the count at the time the handler runs.")
        if problems:
            return CheckResult(False, " ".join(problems))
        return CheckResult(True, f"{wanted} ticks, one interrupt each, every {period} ns without "
                                 f"drift (the last deadline at first + {wanted} x {period} ns).")

    def hint(self) -> str:
        return ("The three system registers are in the table above (IAR1 to acknowledge, EOIR1 to "
                "end). The line is level-triggered: it stays high while CNTVCT >= CVAL, so the "
                "handler must move CVAL into the future before it ends the interrupt.")
