"""Lab 08 exercise: how long does a post-copy migration take?

The exercise draws a buffer size, a network round trip and a link bandwidth;
``answer()`` runs the ``postcopy`` scenario (APF on, a compute task beside the
walker) and returns the virtual time at which the last page reached the
destination, in ms. The check accepts a prediction within ``TOLERANCE``.
"""

from __future__ import annotations

import math

from ..scenarios import run_scenario
from . import CheckResult, Exercise, miss

TOLERANCE = 0.05          # relative
LINKS = {"1 GbE": 125_000_000, "2.5 GbE": 312_500_000, "10 GbE": 1_250_000_000}


class MigrationTime(Exercise):
    """Time until every page of the buffer has left the source (ms)."""
    title = "How long does post-copy take?"

    def _draw(self, rng):
        link = rng.choice(sorted(LINKS))
        return {"npages": rng.choice((64, 96, 128, 192, 256)),
                "rtt_ns": rng.choice((100_000, 200_000, 500_000, 1_000_000, 2_000_000)),
                "link": link, "bandwidth_bytes_per_s": LINKS[link]}

    def scenario_params(self) -> dict:
        p = self.params
        return {"npages": p["npages"], "rtt_ns": p["rtt_ns"],
                "bandwidth_bytes_per_s": p["bandwidth_bytes_per_s"], "calc_thread": True}

    def question(self) -> str:
        p = self.params
        return (f"[seed {self.seed}] Post-copy: the guest resumes on the destination while all "
                f"{p['npages']} pages of its buffer (4 KiB each) are still on the source. The "
                f"source streams them over one {p['link']} link ({p['bandwidth_bytes_per_s']:,} "
                f"bytes/s) while the guest's page faults ask for pages on demand (round trip "
                f"{p['rtt_ns'] / 1e3:g} µs, jittered); a demanded page is sent next, ahead of the "
                f"stream.\n"
                f"At what virtual time (ms after the switch-over) has the last page arrived? "
                f"(a number in ms; within {TOLERANCE:.0%} counts)")

    def _solve(self) -> float:
        r = run_scenario("postcopy", apf=True, seed=self.seed, **self.scenario_params())
        return round(r.elapsed_ns / 1e6, 4)

    def check(self, value) -> CheckResult:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return CheckResult(False, f"give a number of milliseconds, not {value!r}.")
        expected = self._expected()
        err = (value - expected) / expected
        if abs(err) <= TOLERANCE:
            return CheckResult(True, f"{value:g} ms is within {err:+.1%} of the measured {expected:g} ms.")
        return CheckResult(False, miss(f"{value:g} ms is {err:+.0%} off (more than {TOLERANCE:.0%}).",
                                       f"{value:g} ms is not within {TOLERANCE:.0%} of the measured time."))

    def hint(self) -> str:
        return ("Each page is sent exactly once, demanded or streamed, and the link is never idle "
                "while pages remain: time to put one page on the wire = 4096 bytes / bandwidth. "
                "Then the last page still has to cross the network: half a round trip.")
