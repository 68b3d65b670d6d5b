"""Where one fault's host time goes: engine entries, register accesses, trace records and
hook calls per fault (exact counts), and host µs per fault by phase.

The counts come from counting wrappers installed for one run of ``memtouch`` only (the
figures of ``faults.py`` are measured without them). The µs by phase are cProfile's shares
of internal time, grouped by the module that spent it, scaled to the unprofiled wall time
of the same run: a profiler slows small Python functions more than the engine, so the
split is approximate, the total is not. A regression shows as the phase that grew.
"""

from __future__ import annotations

import cProfile
import pstats
import time

from apflab import cpu as C
from apflab import host as H
from apflab import scenarios

# Phase of a profiled function, by the file it lives in (first match wins).
PHASES = (
    ("engine", ("unicorn", "ctypes")),           # unicorn's C code and its Python binding
    ("vcpu", ("apflab/cpu.py",)),                 # hooks, registers, exception entry
    ("trace", ("apflab/trace.py",)),
    ("run loop", ("apflab/host.py", "apflab/smp.py")),
    ("services", ("apflab/sdei.py", "apflab/apf.py", "apflab/delivery/", "apflab/smccc.py",
                  "apflab/psci.py")),
    ("stage2", ("apflab/stage2.py", "apflab/backing.py")),
    ("gic+timer", ("apflab/irq.py", "apflab/timer.py")),
    ("guest probe", ("apflab/guest/",)),
    ("builtins", ("~",)),                         # dict, struct, ctypes helpers called from the above
)

_COUNTED = {
    "engine_entries": [(C.Vcpu, "_run_once"), (C.Vcpu, "clear_exclusive")],
    "register_reads": [(C.Vcpu, "_rd_fast")],
    "register_writes": [(C.Vcpu, "_wr_fast")],
    "sysreg_hook_calls": [(C.Vcpu, "_sys")],
    "intr_hook_calls": [(C.Vcpu, "_intr")],
    "tlb_fill_hook_calls": [(C.Vcpu, "_tlb_fill")],
    "watch_hook_calls": [(C.Vcpu, "_watch_hit")],
}


def _phase(filename: str) -> str:
    name = filename.replace("\\", "/")
    for phase, parts in PHASES:
        if any(p in name for p in parts):
            return phase
    return "other"


def _build(apf: bool, delivery: str, npages: int):
    return scenarios.build("memtouch", apf=apf, delivery=delivery, seed=0, npages=npages,
                           limit_pages=npages // 4)


def _run(apf: bool, delivery: str, npages: int):
    return _build(apf, delivery, npages).run()


def counts(apf: bool, delivery: str, npages: int) -> dict:
    """Exact per-fault counts of one run, with counting wrappers in place."""
    tally = dict.fromkeys(_COUNTED, 0)
    saved = []
    for key, targets in _COUNTED.items():
        for cls, name in targets:
            orig = getattr(cls, name)
            saved.append((cls, name, orig))

            def wrapped(*a, _orig=orig, _key=key, **k):
                tally[_key] += 1
                return _orig(*a, **k)
            setattr(cls, name, wrapped)
    try:
        r = _run(apf, delivery, npages)
    finally:
        for cls, name, orig in saved:
            setattr(cls, name, orig)
    n = r.faults
    out = {k: round(v / n, 2) for k, v in tally.items()}
    out["trace_records"] = round(sum(r.trace.counts.values()) / n, 2)
    out["exits_by_kind"] = {k: round(v / n, 2) for k, v in sorted(r.trace.counts.items())
                            if k in ("hvc", "irq", "halt", "stage2_fault", "exception")}
    return out


def phases(apf: bool, delivery: str, npages: int) -> dict:
    """Host µs per fault by phase (cProfile shares scaled to the unprofiled wall time)."""
    setup = _build(apf, delivery, npages)       # building (assembling the kernel) is not a phase
    t = time.perf_counter()
    r = setup.run()
    wall = time.perf_counter() - t
    setup = _build(apf, delivery, npages)
    prof = cProfile.Profile()
    prof.enable()
    setup.run()
    prof.disable()
    stats = pstats.Stats(prof).stats
    by = {}
    for (filename, _line, _func), (_cc, _nc, tottime, _ct, _callers) in stats.items():
        phase = _phase(filename)
        by[phase] = by.get(phase, 0.0) + tottime
    total = sum(by.values()) or 1.0
    us = wall * 1e6 / r.faults
    return {"faults": r.faults, "host_us_per_fault": round(us, 1),
            "by_phase_us": {k: round(us * v / total, 1) for k, v in sorted(by.items(), key=lambda kv: -kv[1])}}


def measure(npages: int = 256) -> dict:
    out = {}
    for label, apf, delivery in (("apf_on_sdei", True, "sdei"), ("apf_off", False, "sdei")):
        out[label] = {**phases(apf, delivery, npages), "per_fault": counts(apf, delivery, npages)}
    out["fast_path"] = H.fast_path_default()
    return out


def summary(prof: dict) -> str:
    """The profile as a few lines of text (printed by ``python -m benchmarks``)."""
    lines = [f"profile (memtouch, fast path {'on' if prof['fast_path'] else 'off: APFLAB_SLOW_PATH'}):"]
    for label, p in prof.items():
        if label == "fast_path":
            continue
        c = p["per_fault"]
        lines.append(f"  {label}: {p['host_us_per_fault']} host µs/fault; per fault: "
                     f"{c['engine_entries']} engine entries, {c['register_reads']} reg reads, "
                     f"{c['register_writes']} reg writes, {c['trace_records']} trace records, "
                     f"{c['sysreg_hook_calls']} sysreg + {c['intr_hook_calls']} intr + "
                     f"{c['tlb_fill_hook_calls']} tlb-fill + {c['watch_hook_calls']} watch hook calls")
        lines.append("    µs/fault by phase: " + ", ".join(f"{k} {v}" for k, v in p["by_phase_us"].items()))
    return "\n".join(lines)
