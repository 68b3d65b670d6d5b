"""Lab 04 exercise: follow SDEI event 0 through a seeded sequence of calls.

The guest makes the calls in order and logs each result; event 0's handler
counts its runs and completes with EVENT_COMPLETE. The answer is what that
guest logged, run on a fresh ``Machine`` (the OSTEP ``-c`` mode).
"""

from __future__ import annotations

from ..machine import Machine
from ..smccc import to_s64
from . import CheckResult, Exercise

# The calls the sequence draws from: name -> (function ID, x1, x2).
CALLS = {
    "EVENT_REGISTER(0, handler)": (0xC4000021, 0, "handler"),
    "EVENT_ENABLE(0)": (0xC4000022, 0, 0),
    "EVENT_DISABLE(0)": (0xC4000023, 0, 0),
    "EVENT_UNREGISTER(0)": (0xC4000027, 0, 0),
    "EVENT_SIGNAL(0, PE 0)": (0xC400002F, 0, 0),
    "PE_MASK": (0xC400002B, 0, 0),
    "PE_UNMASK": (0xC400002C, 0, 0),
}
WEIGHTS = (1, 1, 3, 2, 1, 3, 1)     # in CALLS order: spoilers more often
SEQUENCE_LENGTH = 6
EVENT_STATUS = 0xC4000028
EVENT_COMPLETE = 0xC4000025


def _call(fid: int, x1, x2) -> list[str]:
    x2_line = f"    adr  x2, {x2}" if isinstance(x2, str) else f"    mov  x2, #{x2}"
    lines = [f"    ldr  x0, ={fid:#x}", f"    mov  x1, #{x1}", x2_line]
    if fid == 0xC4000021:                       # EVENT_REGISTER also takes ep_arg, flags, affinity
        lines += ["    mov  x3, #0", "    mov  x4, #0", "    mov  x5, #0"]
    return lines + ["    hvc  #0"]


class SdeiSequence(Exercise):
    """Predict each result, the final EVENT_STATUS and how often the handler ran."""
    title = "Follow an SDEI event"

    def _draw(self, rng):
        # A client's usual path (register, then enable, unmask and signal in a seeded order)
        # with two seeded extra calls slipped in, which may spoil or delay the delivery.
        core = ["EVENT_ENABLE(0)", "PE_UNMASK", "EVENT_SIGNAL(0, PE 0)"]
        rng.shuffle(core)
        seq = ["EVENT_REGISTER(0, handler)"] + core
        for extra in rng.choices(list(CALLS), weights=WEIGHTS, k=SEQUENCE_LENGTH - len(seq)):
            seq.insert(rng.randrange(1, len(seq) + 1), extra)
        return {"sequence": seq}

    def source(self) -> str:
        out = ["_start:", "    adr  x20, results"]
        for name in self.params["sequence"]:
            out += [f"    // {name}"] + _call(*CALLS[name]) + ["    str  x0, [x20], #8"]
        out += ["    // EVENT_STATUS(0)"] + _call(EVENT_STATUS, 0, 0) + ["    str  x0, [x20], #8", "    brk  #0",
                "handler:                        // x0 = event, x1 = ep_arg, x2 = interrupted PC",
                "    adr  x9, handled",
                "    ldr  x10, [x9]",
                "    add  x10, x10, #1",
                "    str  x10, [x9]"]
        out += _call(EVENT_COMPLETE, 0, 0)
        out += ["    .balign 8", "handled: .quad 0", f"results: .space {8 * (SEQUENCE_LENGTH + 1)}"]
        return "\n".join(out) + "\n"

    def question(self) -> str:
        listing = "\n".join(f"  {i + 1}. {name}" for i, name in enumerate(self.params["sequence"]))
        return (f"[seed {self.seed}] A fresh guest (PE masked, event 0 unregistered) makes these SDEI "
                f"calls in order; event 0's handler counts its runs and ends with EVENT_COMPLETE.\n"
                f"{listing}\n  then EVENT_STATUS(0).\n"
                f"Answer with a tuple (results, status, handled): the six results as signed ints, "
                f"the final EVENT_STATUS value, and how many times the handler ran.")

    def _solve(self):
        m = Machine(seed=self.seed)
        syms = m.load_asm(self.source())
        m.run(max_instructions=10_000)
        log = [to_s64(m.read_u64(syms["results"] + 8 * i)) for i in range(SEQUENCE_LENGTH + 1)]
        return (tuple(log[:-1]), log[-1], m.read_u64(syms["handled"]))

    def check(self, value) -> CheckResult:
        if isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], (list, tuple)):
            value = (tuple(to_s64(v) if isinstance(v, int) else v for v in value[0]), value[1], value[2])
        elif isinstance(value, list):
            value = tuple(value)
        return super().check(value)

    def hint(self) -> str:
        return ("Track three things after each call: event 0's state (0, 1 registered, 3 enabled), "
                "whether the PE is masked (it starts masked), and whether a signal is pending. "
                "A pending signal is delivered as soon as the event is enabled and the PE unmasked; "
                "the handler completes, so the state goes back to 3. Calls the state table forbids "
                "return DENIED (-3); SIGNAL of an unregistered event is DENIED too; UNREGISTER drops "
                "a pending signal; PE_MASK returns 1 only if it was the call that masked the PE.")
