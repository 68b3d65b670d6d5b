"""Lab 05 exercise: predict how long a vCPU stalls on stage-2 faults with APF off.

The exercise draws a swap device, a buffer and a host memory limit from the seed;
``answer()`` runs exactly that ``memtouch`` scenario (APF off, no compute task) and
reads the stall time from its trace (the OSTEP ``-c`` mode). The check accepts a
prediction within ``TOLERANCE`` of the measured value: page-in times are drawn from a
seeded lognormal spread, so "faults x median latency" is close, not exact.
"""

from __future__ import annotations

import math

from ..backing import HDD_JITTER, SSD_JITTER
from ..scenarios import run_scenario
from . import HINT_ON_REQUEST, CheckResult, Exercise, miss

TOLERANCE = 0.20          # relative: |guess - measured| <= 20% of measured


def _number(value):
    """A plain int/float, or None when ``value`` is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class PredictStall(Exercise):
    """Total synchronous stall (ms) of a memtouch walk with APF off."""
    title = "Predict the stall"
    TOLERANCE = TOLERANCE

    def _draw(self, rng):
        store = rng.choice(("ssd", "ssd", "hdd"))
        if store == "ssd":
            latency = rng.choice((20_000, 50_000, 100_000, 200_000))
        else:
            latency = rng.choice((5_000_000, 13_000_000))
        return {"store": store, "latency_ns": latency, "npages": rng.choice((48, 64, 96)),
                "limit_pages": rng.choice((16, 32, 48, 64, 96, 128)), "rounds": rng.choice((2, 3))}

    def scenario_params(self) -> dict:
        """What ``run_scenario("memtouch", apf=False, ...)`` gets."""
        p = self.params
        return {"store": p["store"], "latency_ns": p["latency_ns"], "npages": p["npages"],
                "limit_pages": p["limit_pages"], "rounds": p["rounds"], "calc_thread": False}

    def question(self) -> str:
        p = self.params
        jitter = SSD_JITTER if p["store"] == "ssd" else HDD_JITTER
        return (f"[seed {self.seed}] APF is off and there is no compute task. One task walks a "
                f"buffer of {p['npages']} pages {p['rounds']} times (one load and one store per "
                f"page); before it starts, every page is in {p['store'].upper()} swap "
                f"(median read {p['latency_ns'] / 1e3:g} µs, lognormal spread sigma {jitter}). "
                f"The host memory limit leaves {p['limit_pages']} frames for the buffer; evictions "
                f"are FIFO.\n"
                f"How many milliseconds does the vCPU spend stalled in total? "
                f"(a number in ms; within {TOLERANCE:.0%} counts)")

    def _solve(self) -> float:
        r = run_scenario("memtouch", apf=False, seed=self.seed, **self.scenario_params())
        return round(r.stall_ns / 1e6, 3)

    def check(self, value) -> CheckResult:
        guess = _number(value)
        if guess is None:
            return CheckResult(False, f"give a number of milliseconds, not {value!r}. " + HINT_ON_REQUEST)
        expected = self._expected()
        err = (guess - expected) / expected
        if abs(err) <= TOLERANCE:
            return CheckResult(True, f"{guess:g} ms is within {err:+.1%} of the measured "
                                     f"{expected:g} ms.")
        return CheckResult(False, miss(f"{guess:g} ms is {err:+.0%} off (more than {TOLERANCE:.0%}).",
                                       f"{guess:g} ms is not within {TOLERANCE:.0%} of the measured stall."))

    def hint(self) -> str:
        return ("Stall ≈ (faults needing I/O) × (mean read time). Every page starts in swap, so the "
                "first round faults on every page. A later round faults again only if the buffer "
                "does not fit under the limit: with FIFO eviction and a sequential walk, a buffer "
                "even one page too big faults on every page. With APF off reads never overlap, "
                "and a lognormal's mean is its median × exp(sigma²/2).")
