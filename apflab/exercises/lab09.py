"""Lab 09 exercise: does Natapov's "twice the work" carry over to your mix?

Natapov's 2010 benchmark (docs/REFERENCES.md, "Published figures") ran 4 faulting and 4
computing threads and reported twice the compute work with async PF. The exercise draws
another mix (faulting tasks, compute tasks), a swap latency and a guest tick for the
``gleb2010`` scenario; ``answer()`` runs it with APF off and on (``compare``) and returns
the ratio of the compute tasks' work, on / off. The check accepts a value within
``TOLERANCE`` (relative) of the measured ratio. Quoting the published x2 is the rule of
thumb the exercise is built to refute: for most seeds it is outside the tolerance
(``tests/test_lab09.py`` checks that over 50 seeds).
"""

from __future__ import annotations

import math

from ..scenarios import compare
from . import HINT_ON_REQUEST, CheckResult, Exercise

TOLERANCE = 0.10               # |value / measured - 1|
PUBLISHED_RATIO = 258_846_142_585 / 129_752_639_953     # Natapov 2010: the rule of thumb
DURATION_NS = 4_000_000
NPAGES = 64                    # pages per faulting task; the memory limit holds half of them


class WorkRatio(Exercise):
    """Compute work with APF on / with APF off, for a seeded gleb2010 mix."""
    title = "Twice the work, here too?"

    def _draw(self, rng):
        return {"fault_tasks": rng.choice((1, 2, 3, 4)),
                "compute_tasks": rng.choice((1, 2, 3, 4)),
                "latency_ns": rng.choice((20_000, 50_000, 100_000, 200_000)),
                "tick_ns": rng.choice((50_000, 100_000, 200_000))}

    def scenario_params(self) -> dict:
        p = self.params
        return {"fault_tasks": p["fault_tasks"], "compute_tasks": p["compute_tasks"],
                "latency_ns": p["latency_ns"], "tick_ns": p["tick_ns"], "npages": NPAGES,
                "limit_pages": NPAGES // 2 * p["fault_tasks"], "duration_ns": DURATION_NS}

    def question(self) -> str:
        p = self.params
        return (f"[seed {self.seed}] Natapov measured twice the compute work with async PF "
                f"(4 faulting + 4 computing threads). Run gleb2010 with {p['fault_tasks']} "
                f"faulting and {p['compute_tasks']} compute task(s), a {p['latency_ns'] // 1000} µs "
                f"swap read and a {p['tick_ns'] // 1000} µs tick, for {DURATION_NS // 1_000_000} ms "
                f"of virtual time.\n"
                f"What is the compute tasks' work with APF on divided by their work with APF off? "
                f"(a number; within {TOLERANCE:.0%} counts)\n"
                f"Run it: off, on = compare(\"gleb2010\", seed={self.seed}, **ex.scenario_params())  "
                f"(from apflab.scenarios import compare), then use .work[\"compute\"].")

    def _solve(self) -> float:
        off, on = compare("gleb2010", seed=self.seed, **self.scenario_params())
        if not off.work["compute"]:
            return math.inf                # nothing computed without APF: any finite guess is wrong
        return on.work["compute"] / off.work["compute"]

    def check(self, value) -> CheckResult:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value <= 0:
            return CheckResult(False, f"give the ratio as a positive number (e.g. 1.7), not {value!r}.")
        expected = self._expected()
        if math.isfinite(expected) and abs(value / expected - 1) <= TOLERANCE:
            return CheckResult(True, f"{value:g} is right: measured {expected:.2f}.")
        if abs(value / PUBLISHED_RATIO - 1) <= 0.02:
            return CheckResult(False, f"{value:g} is the published figure, not your run's. {HINT_ON_REQUEST}")
        return CheckResult(False, f"{value:g} is not it. {HINT_ON_REQUEST}")

    def hint(self) -> str:
        return ("The ratio is set by how much of the vCPU the faulting tasks stall away without APF "
                "(more faulting tasks, slower reads: more) and by how many compute tasks are there "
                "to take it back. Run compare() and divide on.work['compute'] by off.work['compute'].")
