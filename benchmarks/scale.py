"""Scale: a 1 GiB guest under a 512 MiB host limit runs ``memtouch``; peak host memory.

Targets (issue 6, issue 14): peak resident memory of the whole process under 1.5 GiB, and
the run (building included) under 30 s.
Run in a child process so the figure is this run's own (ru_maxrss).
"""

from __future__ import annotations

import json
import subprocess
import sys

TARGET_BYTES = int(1.5 * (1 << 30))
TARGET_SECONDS = 30.0

CHILD = r"""
import json, resource, time, apflab
t = time.perf_counter()
r = apflab.run_scenario("memtouch", apf=True, seed=0, ram_mib=1024, npages={npages},
                        limit_pages={limit}, rounds=1, max_instructions=10**10,
                        keep_records=False)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"faults": r.faults, "seconds": round(dt, 1), "peak_rss_bytes": peak}}))
"""


def measure(npages: int, limit_pages: int) -> dict:
    code = CHILD.format(npages=npages, limit=limit_pages)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out.update(guest_ram_bytes=1 << 30, host_limit_bytes=limit_pages * 4096,
               buffer_bytes=npages * 4096, target_peak_bytes=TARGET_BYTES,
               ratio_to_target=round(out["peak_rss_bytes"] / TARGET_BYTES, 3),
               meets_target=out["peak_rss_bytes"] < TARGET_BYTES,
               target_seconds=TARGET_SECONDS,
               seconds_ratio_to_target=round(out["seconds"] / TARGET_SECONDS, 3),
               meets_seconds_target=out["seconds"] < TARGET_SECONDS)
    return out
