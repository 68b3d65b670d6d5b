"""Fault handling: stage-2 faults per second of wall time on the ``memtouch`` workload.

Targets (issue 14): at least 20,000 faults/s with APF on (``delivery="sdei"``), so a
55,000-fault experiment (the size of the arm64 APF patch runs) takes under 3 s, and at least
40,000 with APF off (every fault a synchronous stall). Every delivery design's rate is
reported beside them. Also printed: bare unicorn's cost of one emu_start, which bounds what
any design with several exits per fault can reach. Only ``Setup.run`` is timed (building the
machine and assembling the kernel are not fault handling).
"""

from __future__ import annotations

import time

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc

from apflab import scenarios

TARGET = 20_000            # faults/s, APF on (sdei)
TARGET_OFF = 40_000        # faults/s, APF off


def _emu_start_cost(n: int = 20_000) -> float:
    """Seconds per emu_start of a 1-instruction run on bare unicorn."""
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.mem_map(0x4000_0000, 0x1000)
    uc.mem_write(0x4000_0000, b"\x1f\x20\x03\xd5" * 4)      # nops
    t = time.perf_counter()
    for _ in range(n):
        uc.emu_start(0x4000_0000, 0x4000_0004)
    return (time.perf_counter() - t) / n


def _rate(npages: int, repeat: int, apf: bool, delivery: str) -> dict:
    best = r = None
    for _ in range(repeat):
        setup = scenarios.build("memtouch", apf=apf, delivery=delivery, seed=0, npages=npages,
                                limit_pages=npages // 4)
        t = time.perf_counter()
        r = setup.run()
        dt = time.perf_counter() - t
        best = dt if best is None else min(best, dt)
    return {"faults": r.faults, "seconds": round(best, 3), "faults_per_s": round(r.faults / best)}


def measure(npages: int, repeat: int) -> dict:
    out = {"apf_on": _rate(npages, repeat, True, "sdei"), "apf_off": _rate(npages, repeat, False, "sdei")}
    out["designs"] = {d: (out["apf_on"] if d == "sdei" else _rate(npages, repeat, True, d))
                      for d in scenarios.DESIGNS if d != "sync"}
    cost = _emu_start_cost()
    on, off = out["apf_on"]["faults_per_s"], out["apf_off"]["faults_per_s"]
    return {**out, "bare_emu_start_us": round(cost * 1e6, 2),
            "target_faults_per_s": TARGET, "ratio_to_target": round(on / TARGET, 3), "meets_target": on >= TARGET,
            "target_off_faults_per_s": TARGET_OFF, "off_ratio_to_target": round(off / TARGET_OFF, 3),
            "off_meets_target": off >= TARGET_OFF,
            "seconds_for_55000_faults": round(55_000 / on, 1)}
