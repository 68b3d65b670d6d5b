"""What one asynchronous page fault costs the vCPU, measured from a run's trace.

An async fault takes the vCPU away from useful EL0 work twice:

- "page not present": from the stage-2 abort to the next instruction at EL0
  (the host handles the abort and injects the SDEI event; the guest's SDEI
  entry reads back x0-x3 with EVENT_CONTEXT, parks the task, sends itself a
  reschedule IPI and COMPLETE_AND_RESUMEs into its IRQ vector, which takes the
  IPI and switches to another task);
- "page ready": from the host's kick (or the page-in's end, if the vCPU was
  halted) to the next instruction at EL0 (the PPI is injected, the guest's IRQ
  path wakes the task, IRQ_ACKs, EOIs and switches to it).

``async_fault_costs`` takes the union of those windows, splits their time into
host work (by the "cost" records the host writes for each charge: which exit,
which hypercall) and guest instructions (the SDEI handler's, the kernel's),
and divides by the number of async faults. Halted time inside a window is not
a cost (the vCPU had nothing to run). The rows add up exactly to the total:
``other host`` is host time in the windows with no "cost" record (0 when every
charge on the path is labelled) and ``guest kernel`` includes any unrelated
kernel work that happens to fall inside a window (a timer tick).
"""

from __future__ import annotations

import bisect

from .errors import ParameterError
from .trace import Trace

COST_MODES = ("host", "handler", "el1")    # halted, stalled and el0 time are not per-fault costs

_HOST_LABELS = {
    "stage2_fault": "host: stage-2 abort (exit + fault handling)",
    "sdei_inject": "host: SDEI event injection",
    "sgi_trap": "host: ICC_SGI1R_EL1 trap (reschedule IPI)",
    "kick": "host: kick of the running vCPU (page ready)",
    "irq_inject": "host: IRQ injection",
    "abort_inject": "host: abort injection",
    "wfi_exit": "host: WFI exit",
}


def _hvc_label(fid: int) -> str:
    from .sdei import NAMES
    from .apf import VENDOR_HYP_KVM_ASYNC_PF
    if fid in NAMES:
        return f"host: hypercall SDEI {NAMES[fid]}"
    if fid == VENDOR_HYP_KVM_ASYNC_PF:
        return "host: hypercall ASYNC_PF (IRQ_ACK)"
    return f"host: hypercall {fid:#x}"


def _windows(trace: Trace) -> list[tuple[int, int]]:
    """[start, end) of every not-present and page-ready window, merged where they overlap."""
    spans = trace.spans
    el0_starts = [s[0] for s in spans if s[2] == "el0"]

    def next_el0(t: int) -> int:
        i = bisect.bisect_left(el0_starts, t)
        return el0_starts[i] if i < len(el0_starts) else (spans[-1][1] if spans else t)

    out = []
    last_fault_t = None
    np_start = None
    kick_t = None
    ready_start: dict[int, int] = {}
    for rec in trace.records:
        kind = rec.kind
        if kind == "stage2_fault":
            last_fault_t = rec.t_ns
        elif kind == "apf_not_present":
            np_start = last_fault_t if last_fault_t is not None else rec.t_ns
            if rec.get("design") not in (None, "sdei"):
                # irq, abort: the notice is an exception taken at once; the window ends at
                # the next EL0 instruction (halt: when the vCPU runs EL0 code again).
                out.append((np_start, next_el0(rec.t_ns)))
                np_start = None
        elif kind == "sdei_complete" and np_start is not None:
            out.append((np_start, next_el0(rec.t_ns)))
            np_start = None
        elif kind == "cost" and rec.get("what") == "kick":
            kick_t = rec.t_ns
        elif kind == "apf_page_in_done":
            ready_start[rec.get("token")] = kick_t if kick_t is not None else rec.t_ns
            kick_t = None
        elif kind == "apf_ack" and rec.get("token") in ready_start:
            out.append((ready_start.pop(rec.get("token")), next_el0(rec.t_ns)))
    out.sort()
    merged: list[list[int]] = []
    for a, b in out:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def async_fault_costs(trace: Trace) -> dict:
    """Per-async-fault cost, component by component, from a trace with its records kept.

    Returns {"faults": n, "total_ns": all windows' cost, "per_fault_ns": total / n,
    "components": {label: ns over all faults}} (components sum to total_ns exactly).
    """
    if not trace.keep_records or trace.dropped:
        raise ParameterError("the cost breakdown needs every trace record (keep_records=True)")
    n = trace.counts.get("apf_not_present", 0)
    windows = _windows(trace)
    starts = [a for a, _ in windows]

    def inside(t: int) -> bool:
        i = bisect.bisect_right(starts, t) - 1
        return i >= 0 and t < windows[i][1]

    mode_ns = dict.fromkeys(COST_MODES, 0)
    spans = trace.spans
    span_starts = [s[0] for s in spans]
    for a, b in windows:
        i = max(0, bisect.bisect_right(span_starts, a) - 1)
        while i < len(spans) and spans[i][0] < b:
            s0, s1, mode, _task = spans[i]
            if mode in mode_ns:
                mode_ns[mode] += max(0, min(b, s1) - max(a, s0))
            i += 1

    components: dict[str, int] = {}
    labelled = 0
    for rec in trace.records:
        if rec.kind != "cost" or not inside(rec.t_ns):
            continue
        what = rec.get("what")
        label = _hvc_label(rec.get("fid")) if what == "hvc" else _HOST_LABELS.get(what, f"host: {what}")
        components[label] = components.get(label, 0) + rec.get("ns")
        labelled += rec.get("ns")
    components["host: other (unlabelled)"] = mode_ns["host"] - labelled
    components["guest: SDEI handler instructions"] = mode_ns["handler"]
    components["guest: kernel instructions (IRQ entries, wake-up, context switch)"] = mode_ns["el1"]
    total = sum(mode_ns.values())
    return {"faults": n, "total_ns": total, "per_fault_ns": total / n if n else 0.0,
            "components": components}


def format_costs(costs: dict) -> str:
    """A text table: each component per async fault (ns) and its share; the total last."""
    n = costs["faults"]
    if not n:
        return "no asynchronous page faults in this run"
    rows = sorted(costs["components"].items(), key=lambda kv: -kv[1])
    w = max(len(k) for k, _ in rows)
    total = costs["total_ns"]
    lines = [f"{'per async fault (' + str(n) + ' faults)':<{w}}  {'ns':>9}  share"]
    for label, ns in rows:
        lines.append(f"{label:<{w}}  {ns / n:>9.1f}  {100 * ns / total if total else 0:4.1f}%")
    lines.append(f"{'total':<{w}}  {total / n:>9.1f}  100.0%")
    return "\n".join(lines)
