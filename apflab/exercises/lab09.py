"""Lab 09 exercise: argue with numbers — from what swap latency on does APF pay off?

The exercise draws a task mix (the walker alone, or beside a compute task), a tick
period and a grid of swap latencies. ``answer()`` sweeps ``memtouch`` over the grid,
APF off and on, and returns the smallest latency of the grid from which on APF makes
the walk faster at that latency and every larger one in the grid, or ``"never"`` when
it is not faster even at the largest (the OSTEP ``-c`` mode: the same sweep the student is
asked to run).
"""

from __future__ import annotations

from ..sweep import sweep
from . import CheckResult, Exercise

CANDIDATES_US = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 50)
NEVER = "never"
NPAGES, LIMIT_PAGES = 32, 16


def break_even(rows) -> int | str:
    """From sweep rows (APF off and on per latency): the smallest latency_ns from which APF
    is faster at that latency and every larger one; "never" if APF is not faster at the largest."""
    by_lat: dict[int, dict[bool, int]] = {}
    for row in rows:
        by_lat.setdefault(row["param.latency_ns"], {})[row["apf"]] = row["elapsed_ns"]
    answer = NEVER
    for lat in sorted(by_lat, reverse=True):
        t = by_lat[lat]
        if t[True] < t[False]:
            answer = lat
        else:
            break
    return answer


class BreakEven(Exercise):
    """The smallest grid latency from which APF pays off, or "never"."""
    title = "Where does APF stop paying off?"

    def _draw(self, rng):
        low = rng.sample([c for c in CANDIDATES_US if c <= 3], 2)
        high = rng.sample([c for c in CANDIDATES_US if c > 3], 3)
        return {"calc_thread": rng.random() < 0.7,
                "tick_ns": rng.choice((50_000, 100_000, 200_000)),
                "latencies_ns": sorted(1000 * c for c in low + high)}

    def grid(self) -> dict:
        return {"latency_ns": list(self.params["latencies_ns"])}

    def fixed(self) -> dict:
        p = self.params
        return {"calc_thread": p["calc_thread"], "tick_ns": p["tick_ns"], "npages": NPAGES,
                "limit_pages": LIMIT_PAGES, "store": "ssd"}

    def question(self) -> str:
        p = self.params
        mix = "the walker and a compute task" if p["calc_thread"] else "the walker alone"
        lats = ", ".join(f"{v // 1000} µs" for v in p["latencies_ns"])
        return (f"[seed {self.seed}] Claim: \"with fast enough storage, APF is pure overhead\". "
                f"Test it for memtouch with {mix} ({NPAGES} pages, limit {LIMIT_PAGES}, tick "
                f"{p['tick_ns'] // 1000} µs) over the SSD latencies {lats}.\n"
                f"What is the smallest latency of this grid from which on APF makes the walk faster "
                f"(at it and at every larger latency of the grid)? Answer in ns, or \"never\" if "
                f"APF is not faster even at the largest.\n"
                f"Run it: sweep(\"memtouch\", ex.grid(), workers=1, progress=False, "
                f"seeds=({self.seed},), **ex.fixed())  (from apflab.sweep import sweep)")

    def _solve(self):
        rows = sweep("memtouch", self.grid(), workers=1, progress=False, seeds=(self.seed,),
                     **self.fixed())
        return break_even(rows)

    def check(self, value) -> CheckResult:
        if isinstance(value, str) and value.strip().lower() == NEVER:
            value = NEVER
        elif isinstance(value, bool) or not isinstance(value, int):
            return CheckResult(False, f"answer with a latency in ns (an int from the grid) or "
                                      f"\"never\", not {value!r}.")
        elif value not in self.params["latencies_ns"]:
            return CheckResult(False, f"{value} is not in the grid {self.params['latencies_ns']}.")
        expected = self.answer()
        if value == expected:
            return CheckResult(True, "\"never\" is right: APF does not pay off anywhere in this grid."
                               if value == NEVER else f"{value} ns is right.")
        return CheckResult(False, f"{value!r} is not it. {self.hint()}")

    def hint(self) -> str:
        return ("For each latency compare elapsed_ns of the APF-off and APF-on rows. Without anything "
                "else to run, APF only adds work to each fault. With a compute task, APF pays off "
                "once the page takes longer to arrive than the guest needs to take the SDEI event and "
                "switch tasks; below that the page is back before the walker gives up the vCPU, and "
                "the walker then waits for its next turn.")
