"""Fault handling: stage-2 faults per second of wall time, APF on, on the ``memtouch`` workload.

Target (issue 6): at least 20,000 faults/s, so a 55,000-fault experiment (the
size of the arm64 APF patch runs) takes under 3 s. Also printed: the same
workload with APF off (every fault a synchronous stall), and bare unicorn's cost
of one emu_start, which bounds what any per-exit design can reach.
"""

from __future__ import annotations

import time

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc

import apflab

TARGET = 20_000


def _emu_start_cost(n: int = 20_000) -> float:
    """Seconds per emu_start of a 1-instruction run on bare unicorn."""
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.mem_map(0x4000_0000, 0x1000)
    uc.mem_write(0x4000_0000, b"\x1f\x20\x03\xd5" * 4)      # nops
    t = time.perf_counter()
    for _ in range(n):
        uc.emu_start(0x4000_0000, 0x4000_0004)
    return (time.perf_counter() - t) / n


def measure(npages: int, repeat: int) -> dict:
    out = {}
    for apf in (True, False):
        best = None
        for _ in range(repeat):
            t = time.perf_counter()
            r = apflab.run_scenario("memtouch", apf=apf, seed=0, npages=npages, limit_pages=npages // 4)
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        out["apf_on" if apf else "apf_off"] = {"faults": r.faults, "seconds": round(best, 3),
                                              "faults_per_s": round(r.faults / best)}
    cost = _emu_start_cost()
    on = out["apf_on"]
    ratio = on["faults_per_s"] / TARGET
    return {**out, "bare_emu_start_us": round(cost * 1e6, 2), "target_faults_per_s": TARGET,
            "ratio_to_target": round(ratio, 3), "meets_target": ratio >= 1,
            "seconds_for_55000_faults": round(55_000 / on["faults_per_s"], 1)}
