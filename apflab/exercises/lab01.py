"""Lab 01 exercises: read a small AArch64 program and predict what it leaves behind.

Both exercises draw a program from the seed, and ``answer()`` assembles and
runs exactly that program on a fresh ``Machine`` (the OSTEP ``-c`` mode):
nothing is computed by a second, Python-side interpreter that could disagree
with the CPU.
"""

from __future__ import annotations

from ..machine import Machine
from . import Exercise

MASK64 = (1 << 64) - 1


def _asm(lines) -> str:
    """Lines of (code, comment) as neatly aligned GNU-as source; labels start in column 0."""
    out = []
    for code, comment in lines:
        text = code if code.endswith(":") or code[:2] in ("1:", "bu") else "    " + code
        out.append(f"{text:34s}// {comment}" if comment else text)
    return "\n".join(out) + "\n"


class PredictRegister(Exercise):
    """What is in ``x0`` when a seeded counted loop reaches ``brk #0``?"""
    title = "Predict a register"

    OPS = ("add", "sub", "eor")

    def _draw(self, rng):
        op = rng.choice(self.OPS)
        # ``sub`` starts high enough that x0 never goes below zero (no 2**64 wrap to puzzle over):
        # at most 8 iterations of x1 <= 9 + 7*3, so x0 loses at most 8 * 30 = 240.
        start = rng.randrange(300, 600) if op == "sub" else rng.randrange(1, 40)
        return {"op": op, "x0": start, "x1": rng.randrange(1, 10), "n": rng.randrange(2, 9),
                "step": rng.randrange(1, 4)}

    def source(self) -> str:
        p = self.params
        return _asm([
            ("_start:", ""),
            (f"mov  x0, #{p['x0']}", ""),
            (f"mov  x1, #{p['x1']}", ""),
            (f"mov  x2, #{p['n']}", "loop counter"),
            (f"1:  {p['op']:4s} x0, x0, x1", "label 1: the top of the loop"),
            (f"add  x1, x1, #{p['step']}", ""),
            ("subs x2, x2, #1", "sets Z when x2 reaches 0"),
            ("b.ne 1b", "back to label 1 while Z is clear"),
            ("brk  #0", "stop: back to Python"),
        ])

    def question(self) -> str:
        return (f"[seed {self.seed}] What value does x0 hold when this guest reaches brk #0? "
                f"(an int; hex or decimal)\n\n" + self.source())

    def _solve(self) -> int:
        m = Machine(seed=self.seed)
        m.load_asm(self.source())
        m.run(max_instructions=1_000)
        return m.reg("x0")

    def hint(self) -> str:
        return (f"Write a table with one row per iteration: x0, x1 and x2 at the top of the loop. "
                f"The loop body runs {self.params['n']} times, and x1 grows by "
                f"{self.params['step']} after each {self.params['op']}.")


class FillArray(Exercise):
    """A loop stores a sequence into memory; what does ``m.read_u64`` return for one slot?"""
    title = "Read memory back"

    MODES = ("post", "pre")

    def _draw(self, rng):
        n = rng.randrange(3, 7)
        stride = rng.choice((8, 16))
        return {"mode": rng.choice(self.MODES), "first": rng.randrange(1, 20),
                "step": rng.randrange(2, 9), "n": n, "stride": stride,
                "k": rng.randrange(0, (n + 1) * stride // 8)}

    def source(self) -> str:
        p = self.params
        d = p["stride"]
        store = ((f"1:  str  x0, [x3], #{d}", f"post-index: store at x3, then x3 += {d}")
                 if p["mode"] == "post" else
                 (f"1:  str  x0, [x3, #{d}]!", f"pre-index: x3 += {d}, then store at x3"))
        return _asm([
            ("_start:", ""),
            ("adr  x3, buf", "x3 = address of buf"),
            (f"mov  x0, #{p['first']}", ""),
            (f"mov  x2, #{p['n']}", "loop counter"),
            store,
            (f"add  x0, x0, #{p['step']}", ""),
            ("subs x2, x2, #1", ""),
            ("b.ne 1b", ""),
            ("brk  #0", ""),
            (".balign 8", "8-byte align what follows"),
            (f"buf: .space {self.slots() * 8}", f"{self.slots()} zeroed 64-bit slots"),
        ])

    def slots(self) -> int:
        return (self.params["n"] + 1) * self.params["stride"] // 8

    def question(self) -> str:
        return (f"[seed {self.seed}] After this guest stops, what does "
                f"m.read_u64(syms['buf'] + {8 * self.params['k']}) return?\n\n" + self.source())

    def _solve(self) -> int:
        m = Machine(seed=self.seed)
        syms = m.load_asm(self.source())
        m.run(max_instructions=1_000)
        return m.read_u64(syms["buf"] + 8 * self.params["k"])

    def hint(self) -> str:
        d = self.params["stride"]
        if self.params["mode"] == "pre":
            return (f"With `[x3, #{d}]!` the base register moves *before* the store: the first value "
                    f"lands at buf + {d}, and buf + 0 is never written. Slots no store reaches stay 0.")
        return (f"With `[x3], #{d}` the store uses x3 as it is, then moves it {d} bytes on: the "
                f"value of iteration i (from 0) lands at buf + {d}*i. Slots no store reaches stay 0.")
