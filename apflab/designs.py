"""The five designs side by side: what each costs and what each needs.

    rows = apflab.designs.table(apflab.compare_designs("syscall_read", seed=0))

One row per design ("sync" is APF off). Every number comes from the run's trace
and the guest kernel's own source; nothing is fitted.
"""

from __future__ import annotations

from . import guest
from .delivery import describe

SDEI_FIRST, SDEI_LAST = 0xC4000020, 0xC4000032
VENDOR_ASYNC_PF = 0x86000002


def _apf_exits(r) -> int:
    """vCPU exits that async page faults cost: the stage-2 faults on pages needing I/O, and
    the SDEI/ASYNC_PF hypercalls made from the first notice on (boot-time probing excluded)."""
    tr = r.trace
    by_state = tr.tally("stage2_fault")
    faults = sum(by_state.get(k, 0) for k in ("swapped", "remote", "inflight"))
    first = next((rec.t_ns for rec in tr.records if rec.kind == "apf_not_present"), None)
    if first is None:
        return faults
    calls = sum(1 for rec in tr.records
                if rec.kind == "hvc" and rec.t_ns >= first
                and (SDEI_FIRST <= rec.get("fid") <= SDEI_LAST or rec.get("fid") == VENDOR_ASYNC_PF))
    return faults + calls


def row(design: str, r) -> dict:
    """One design's figures (``r`` a ScenarioResult run with that design)."""
    d = describe(design)
    asyncs = r.apf_not_present
    bd = r.breakdown
    out = {
        "design": design,
        "elapsed_ms": round(r.elapsed_ns / 1e6, 3),
        "stalled_ms": round(r.stall_ns / 1e6, 3),
        "work_total": r.work.get("total"),
        "work_compute": r.work.get("compute"),
        "io_faults": r.faults,
        "async_faults": asyncs,
        "async_fraction": round(asyncs / r.faults, 3) if r.faults else 0.0,
        # notices the guest could not use (it cannot sleep in kernel mode): wasted exits
        "notices_unused": r.kernel.get("apf", {}).get("not_parked", 0),
        "fallbacks": dict(r.fallbacks),
        "exits_per_async_fault": round(_apf_exits(r) / asyncs, 2) if asyncs else None,
        # Guest kernel + handler + host time, per async fault. The kernel's own work (ticks,
        # scheduling, syscalls) is in it too: compare designs on the same scenario only.
        "vcpu_us_per_async_fault": (round((bd["host"] + bd["el1"] + bd["handler"]) / asyncs / 1e3, 2)
                                    if asyncs else None),
        "guest_lines": guest.guest_support_lines(design),
        "guest_support": d["guest_support"],
        "migration_state": list(d["migration_state"]),
    }
    return out


def table(results: dict) -> list[dict]:
    """Rows for ``compare_designs``'s result, in its order."""
    return [row(name, r) for name, r in results.items()]


def text(rows: list[dict]) -> str:
    """The rows as a terminal table, designs as columns."""
    keys = [("elapsed_ms", "elapsed (ms)"), ("stalled_ms", "stalled (ms)"), ("work_total", "work (total)"),
            ("work_compute", "work (compute)"), ("io_faults", "faults needing I/O"),
            ("async_faults", "async faults"), ("async_fraction", "async fraction"),
            ("notices_unused", "notices the guest could not use"),
            ("fallbacks", "fallbacks"), ("exits_per_async_fault", "exits / async fault"),
            ("vcpu_us_per_async_fault", "vCPU µs / async fault"), ("guest_lines", "guest lines needed"),
            ("guest_support", "guest support"), ("migration_state", "migration state (items)")]

    def fmt(k, v):
        if v is None:
            return "-"
        if k == "fallbacks":
            return ", ".join(f"{a}={b}" for a, b in sorted(v.items())) or "-"
        if k == "migration_state":
            return str(len(v))
        return str(v)
    cols = [[fmt(k, rw[k]) for k, _ in keys] for rw in rows]
    w0 = max(len(label) for _, label in keys)
    widths = [max(len(rw["design"]), *(len(c) for c in col)) for rw, col in zip(rows, cols)]
    lines = [f"{'':<{w0}}  " + "  ".join(f"{rw['design']:<{w}}" for rw, w in zip(rows, widths))]
    for i, (_, label) in enumerate(keys):
        lines.append(f"{label:<{w0}}  " + "  ".join(f"{col[i]:<{w}}" for col, w in zip(cols, widths)))
    return "\n".join(lines)
