"""Plotly figures of where the vCPU's time went, read only from traces and results.

Every figure has a pure-data twin that returns the numbers it draws, so tests (and curious
students) can check a picture against the trace without parsing plotly JSON:

    figure                      data
    timeline(trace)             timeline_data(trace)        bars per task row, markers
    breakdown_bar(results)      breakdown_data(results)     ns per mode per run
    stall_histogram(results)    stall_data(results)         stall / APF-wait durations, binned
    sweep_lines(rows, ...)      sweep_series(rows, ...)     mean y per (series, x)
    sweep_heatmap(rows, ...)    sweep_grid(rows, ...)       mean z per (y, x) cell
    model_vs_published(rows)    published_data(rows)        our ratio next to the paper's
    swimlanes(m)                lanes_data(m)               one lane per vCPU (and per pCPU)
    cpu_breakdown_bar(m)        cpu_breakdown_data(m)       run/stall/steal/idle per vCPU
    vm_work_bar(reports)        vm_work_data(reports)       work per VM sharing the pCPUs

Figures stay light: times are rounded to the nanosecond, long traces are merged down to a
few thousand bars, and histograms are binned here (plotly gets counts, not raw samples).
Times are shown in µs on timelines and in ms on bars; the data helpers keep integer ns.
"""

from __future__ import annotations

import bisect
import math
from pathlib import Path
from typing import Iterable, Mapping

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .errors import ParameterError
from .smp import MAX_VCPUS
from .trace import MODES, STEAL, Trace

MODE_COLORS = {
    "el0": "#4C78A8",       # guest user work: what the lab wants more of
    "el1": "#72B7B2",       # guest kernel
    "handler": "#B279A2",   # the guest's SDEI handler
    "halted": "#BAB0AC",    # WFI: nothing runnable
    "stalled": "#E45756",   # waiting in the host for a page: what APF removes
    "host": "#F58518",      # exits, hypercalls, page-outs charged to the vCPU
}
MARKERS = {   # record kind -> (symbol, colour, what it means)
    "apf_not_present": ("triangle-down", "#54A24B", "page not present (SDEI injected)"),
    "apf_page_ready": ("triangle-up", "#2F6F2A", "page ready (PPI raised)"),
    "stall": ("x", "#9D1F1A", "synchronous stall ended"),
}
IDLE_ROW = "idle/kernel"
MAX_BARS = 5_000
MAX_MARKERS = 2_000          # per kind; beyond that every k-th is drawn (counts stay exact)

# The published measurements the labs put the model next to; docs/REFERENCES.md
# ("Published figures") quotes each with its message id. ratio = after / before
# (APF on / APF off) of the metric named; "before"/"after" are the source's own numbers.
PUBLISHED = {
    "arm64_v3_compute": {
        "label": "arm64 APF v3, with compute thread", "scenario": "memtouch",
        "params": {"calc_thread": True}, "metric": "elapsed_ns", "before": 108_392, "after": 64_751,
        "unit": "ms", "source": "arm64 APF v3 cover letter, 7 May 2021, "
                                "<20210507084053.44407-1-gshan@redhat.com>, test [2] run 1: "
                                "108392 ms -> 64751 ms"},
    "arm64_v3_no_compute": {
        "label": "arm64 APF v3, no compute thread", "scenario": "memtouch",
        "params": {"calc_thread": False}, "metric": "elapsed_ns", "before": 61_399, "after": 59_911,
        "unit": "ms", "source": "arm64 APF v3 cover letter, 7 May 2021, "
                                "<20210507084053.44407-1-gshan@redhat.com>, test [1] run 1: "
                                "61399 ms -> 59911 ms"},
    "arm64_v4_no_compute": {
        "label": "arm64 APF v4, no compute thread", "scenario": "memtouch",
        "params": {"calc_thread": False}, "metric": "elapsed_ns", "before": 14_592, "after": 15_010,
        "unit": "ms", "source": "arm64 APF v4 cover letter, 15 Aug 2021, "
                                "<20210815005947.83699-1-gshan@redhat.com>, test (a) run 1: "
                                "14.592 s -> 15.010 s"},
    "x86_2010": {
        "label": "x86 2010, 4 faulting + 4 compute", "scenario": "gleb2010",
        "params": {}, "metric": "work_compute", "before": 129_752_639_953, "after": 258_846_142_585,
        "unit": "work units", "source": "Natapov, async PF v4 cover letter, 6 Jul 2010, "
                                        "<1278433500-29884-1-git-send-email-gleb@redhat.com>: "
                                        "worker total 129752639953 -> 258846142585"},
    "postcopy": {
        "label": "post-copy migration, compute rate", "scenario": "postcopy",
        "params": {"calc_thread": True}, "metric": "compute_rate", "before": 75, "after": 126,
        "unit": "k/ms", "source": "arm64 APF v3 cover letter, 7 May 2021, "
                                  "<20210507084053.44407-1-gshan@redhat.com>, test [3] run 1: "
                                  "calculation speed 75k/ms -> 126k/ms"},
}


# ---------------------------------------------------------------------- small helpers

def _trace_of(obj) -> Trace:
    if isinstance(obj, Trace):
        return obj
    trace = getattr(obj, "trace", None)
    if isinstance(trace, Trace):
        return trace
    raise ParameterError(f"expected a Trace or something with a .trace (a ScenarioResult or a "
                         f"Machine), got {type(obj).__name__}")


def _task_names(obj) -> dict[int, str]:
    """Task index -> label, from a ScenarioResult's kernel state when there is one."""
    kernel = getattr(obj, "kernel", None) or {}
    names = {}
    for t in kernel.get("tasks", ()):
        names[t["index"]] = f"task {t['index']}: {t['entry']}"
    return names


def _us(ns: int) -> float:
    return round(ns / 1e3, 3)


def _ms(ns: int) -> float:
    return round(ns / 1e6, 6)


def _fmt_ns(ns: float) -> str:
    if ns >= 1e9:
        return f"{ns / 1e9:g} s"
    if ns >= 1e6:
        return f"{ns / 1e6:g} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:g} µs"
    return f"{ns:g} ns"


def _labelled(results) -> list[tuple[str, object]]:
    """(label, result) pairs from a dict label->result or a list of results."""
    if isinstance(results, Mapping):
        return [(str(k), v) for k, v in results.items()]
    if hasattr(results, "trace") and hasattr(results, "breakdown"):
        results = [results]
    results = list(results)
    base = [f"{getattr(r, 'name', 'run')} APF {'on' if getattr(r, 'apf', False) else 'off'}"
            for r in results]
    if len(set(base)) < len(base):
        base = [f"{b} (seed {getattr(r, 'seed', i)})" for i, (b, r) in enumerate(zip(base, results))]
    if len(set(base)) < len(base):
        base = [f"{b} #{i}" for i, b in enumerate(base)]
    return list(zip(base, results))


def _sort_key(v):
    if isinstance(v, bool):
        return (0, int(v), "")
    if isinstance(v, (int, float)):
        return (1, v, "")
    return (2, 0, str(v))


# ---------------------------------------------------------------------- timeline

def timeline_data(trace_or_result, t0: int | None = None, t1: int | None = None,
                  max_bars: int = MAX_BARS) -> dict:
    """The timeline's numbers: rows, bars (row, start_ns, dur_ns, mode), markers, mode totals.

    Spans are clipped to [t0, t1).  When more than ``max_bars`` would be drawn, runs of short
    spans (shorter than ``bin_ns``) in one row are merged into one bar per mode, laid end to
    end from where the run started; the time per mode and per row stays exact.
    """
    trace = _trace_of(trace_or_result)
    names = _task_names(trace_or_result)
    spans = trace.spans
    lo = spans[0][0] if spans else 0
    hi = spans[-1][1] if spans else 0
    t0 = lo if t0 is None else max(int(t0), lo)
    t1 = hi if t1 is None else min(int(t1), hi)
    if t1 < t0:
        raise ParameterError(f"t1 ({t1}) is before t0 ({t0})")
    first = bisect.bisect_right([s[1] for s in spans], t0) if spans else 0
    clipped = []
    for a, b, mode, task in spans[first:]:
        if a >= t1:
            break
        a, b = max(a, t0), min(b, t1)
        if b > a:
            clipped.append((a, b, mode, task))

    tasks = sorted({s[3] for s in clipped if s[3] is not None})
    rows = [names.get(t, f"task {t}") for t in tasks]
    row_of = {t: names.get(t, f"task {t}") for t in tasks}
    if any(s[3] is None for s in clipped) or not clipped:
        rows.append(IDLE_ROW)
    row_of[None] = IDLE_ROW

    totals = dict.fromkeys(MODES, 0)
    for a, b, mode, _task in clipped:
        totals[mode] += b - a

    bin_ns = 0
    if len(clipped) <= max_bars:
        bars = [(row_of[task], a, b - a, mode) for a, b, mode, task in clipped]
    else:
        bin_ns = max(1, (t1 - t0) * 2 * len(rows) // max_bars)
        while True:
            bars = _merge(clipped, row_of, bin_ns)
            if len(bars) <= max_bars:
                break
            bin_ns *= 2

    markers = _markers(trace, clipped, row_of, t0, t1)
    for pts in markers.values():
        for _t, row, _text in pts:
            if row not in rows:
                rows.append(row)
    return {"rows": rows, "bars": bars, "mode_totals": totals, "t0": t0, "t1": t1,
            "bin_ns": bin_ns, "spans": len(clipped), "markers": markers,
            "dropped_records": trace.dropped}


def _merge(spans, row_of, bin_ns: int, order=MODES) -> list[tuple[str, int, int, str]]:
    """Keep spans >= bin_ns as they are; fold each row's runs of shorter ones per mode
    (modes laid end to end in ``order``)."""
    bars = []
    pending: dict[object, list] = {}        # task -> [start, {mode: ns}]

    def flush(task):
        start, per_mode = pending.pop(task)
        at = start
        for mode in order:
            ns = per_mode.get(mode, 0)
            if ns:
                bars.append((row_of[task], at, ns, mode))
                at += ns

    for a, b, mode, task in spans:
        dur = b - a
        if dur >= bin_ns:
            if task in pending:
                flush(task)
            bars.append((row_of[task], a, dur, mode))
            continue
        if task in pending and b - pending[task][0] > bin_ns:
            flush(task)
        if task not in pending:
            pending[task] = [a, {}]
        per_mode = pending[task][1]
        per_mode[mode] = per_mode.get(mode, 0) + dur
    for task in list(pending):
        flush(task)
    bars.sort(key=lambda bar: bar[1])
    return bars


def _markers(trace: Trace, spans, row_of, t0: int, t1: int) -> dict:
    """apf_not_present / apf_page_ready / stall records in [t0, t1], each placed on a row."""
    starts = [s[0] for s in spans]

    def row_at(t: int) -> str:
        # A stall record is emitted when the stall ends: look just before t.
        i = bisect.bisect_right(starts, max(t - 1, t0)) - 1
        return spans[i][3] if 0 <= i < len(spans) else None

    token_task: dict[int, object] = {}
    out = {kind: [] for kind in MARKERS}
    for rec in trace.records:
        kind = rec.kind
        if kind == "apf_not_present":
            token_task[rec.get("token")] = rec.get("task")
        if kind not in out or not t0 <= rec.t_ns <= t1:
            continue
        if kind == "apf_not_present":
            task = rec.get("task")
            text = f"token {rec.get('token'):#x}, gpn {rec.get('gpn'):#x}"
        elif kind == "apf_page_ready":
            task = token_task.get(rec.get("token"), row_at(rec.t_ns))
            text = f"token {rec.get('token'):#x}, gpn {rec.get('gpn'):#x}, waited {_fmt_ns(rec.get('waited_ns'))}"
        else:
            task = row_at(rec.t_ns)
            text = f"{rec.get('reason')}: {_fmt_ns(rec.get('ns'))}"
        out[kind].append((rec.t_ns, row_of.get(task, IDLE_ROW), text))
    return out


def timeline(trace_or_result, t0: int | None = None, t1: int | None = None, *,
             max_bars: int = MAX_BARS, title: str | None = None) -> go.Figure:
    """The vCPU timeline: one row per guest task plus idle/kernel, bars coloured by mode."""
    d = timeline_data(trace_or_result, t0, t1, max_bars)
    fig = go.Figure()
    for mode in MODES:
        bars = [b for b in d["bars"] if b[3] == mode]
        if not bars:
            continue
        fig.add_trace(go.Bar(
            orientation="h", name=mode, y=[b[0] for b in bars], x=[_us(b[2]) for b in bars],
            base=[_us(b[1]) for b in bars], marker_color=MODE_COLORS[mode], marker_line_width=0,
            hovertemplate=f"{mode}<br>%{{base}} µs + %{{x}} µs<extra>%{{y}}</extra>"))
    for kind, (symbol, color, meaning) in MARKERS.items():
        pts = d["markers"][kind]
        if not pts:
            continue
        step = -(-len(pts) // MAX_MARKERS)
        shown = pts[::step]
        fig.add_trace(go.Scatter(
            mode="markers", name=kind + (f" (1 in {step})" if step > 1 else ""),
            x=[_us(p[0]) for p in shown], y=[p[1] for p in shown], text=[p[2] for p in shown],
            marker=dict(symbol=symbol, color=color, size=9, line_width=0),
            hovertemplate=f"{meaning}<br>%{{x}} µs<br>%{{text}}<extra>%{{y}}</extra>"))
    note = f" (short spans merged below {_fmt_ns(d['bin_ns'])})" if d["bin_ns"] else ""
    fig.update_layout(
        title=title or f"vCPU timeline{note}", barmode="overlay", bargap=0.25,
        xaxis_title="virtual time (µs)", yaxis=dict(categoryorder="array", categoryarray=d["rows"][::-1]),
        legend_title_text="mode / event", height=max(260, 90 + 60 * len(d["rows"])),
        margin=dict(l=10, r=10, t=50, b=40))
    return fig


# ---------------------------------------------------------------------- breakdown

def breakdown_data(results) -> dict:
    """{"labels": [...], "modes": {mode: [ns per label]}, "elapsed": [...]} from the results."""
    pairs = _labelled(results)
    labels = [label for label, _ in pairs]
    modes = {mode: [int(r.breakdown.get(mode, 0)) for _, r in pairs] for mode in MODES}
    elapsed = [sum(r.breakdown.values()) for _, r in pairs]
    return {"labels": labels, "modes": modes, "elapsed": elapsed}


def breakdown_bar(results, *, title: str = "Where the vCPU's time went") -> go.Figure:
    """Stacked bars of vCPU time by mode, one bar per run (APF off next to APF on)."""
    d = breakdown_data(results)
    fig = go.Figure()
    for mode in MODES:
        ns = d["modes"][mode]
        if not any(ns):
            continue
        fig.add_trace(go.Bar(
            name=mode, x=d["labels"], y=[_ms(v) for v in ns], customdata=ns,
            marker_color=MODE_COLORS[mode],
            hovertemplate=f"{mode}: %{{y:.3f}} ms<extra>%{{x}}</extra>"))
    for label, total in zip(d["labels"], d["elapsed"]):
        fig.add_annotation(x=label, y=_ms(total), text=f"{total / 1e6:.2f} ms", showarrow=False,
                           yshift=10)
    fig.update_layout(title=title, barmode="stack", yaxis_title="virtual time (ms)",
                      legend_title_text="mode", margin=dict(l=10, r=10, t=50, b=40))
    return fig


# ---------------------------------------------------------------------- stalls

def _edges(values: list[int]) -> list[int]:
    """Bin edges in ns: 0, then 1-2-5 steps from 1 µs, up to just past the largest value."""
    edges = [0]
    e, k = 1_000, 0
    top = max(values, default=0)
    while True:
        edges.append(e)
        if e > top:
            return edges
        k += 1
        e = (1_000, 2_000, 5_000)[k % 3] * 10 ** (k // 3)


def _bin_label(lo: int, hi: int) -> str:
    return f"< {_fmt_ns(hi)}" if lo == 0 else f"{_fmt_ns(lo)}–{_fmt_ns(hi)}"


def _count(values: list[int], edges: list[int]) -> list[int]:
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[min(bisect.bisect_right(edges, v) - 1, len(counts) - 1)] += 1
    return counts


def stall_data(results) -> dict:
    """Stall durations (``stall`` records' ns) and APF waits (``apf_page_ready`` waited_ns).

    Returns {"edges": [...ns], "bins": [labels], "runs": {label: {"stall_ns": [...],
    "wait_ns": [...], "stall_counts": [...], "wait_counts": [...]}}}; both histograms use the
    same edges so runs compare bin for bin.
    """
    runs = {}
    for label, r in _labelled(results):
        trace = _trace_of(r)
        runs[label] = {"stall_ns": [rec.get("ns") for rec in trace.select("stall")],
                       "wait_ns": [rec.get("waited_ns") for rec in trace.select("apf_page_ready")]}
    every = [v for run in runs.values() for v in run["stall_ns"] + run["wait_ns"]]
    edges = _edges(every)
    for run in runs.values():
        run["stall_counts"] = _count(run["stall_ns"], edges)
        run["wait_counts"] = _count(run["wait_ns"], edges)
    bins = [_bin_label(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    return {"edges": edges, "bins": bins, "runs": runs}


def stall_histogram(results, *, title: str = "How long the vCPU waited for a page") -> go.Figure:
    """Left: synchronous stalls (the vCPU did nothing); right: APF waits (the task waited,
    the vCPU ran something else)."""
    d = stall_data(results)
    palette = ("#E45756", "#4C78A8", "#54A24B", "#F58518", "#B279A2", "#72B7B2")
    # Drop empty bins at either end of the shared range; keep the ones between.
    totals = [sum(run["stall_counts"][i] + run["wait_counts"][i] for run in d["runs"].values())
              for i in range(len(d["bins"]))]
    used = [i for i, n in enumerate(totals) if n]
    keep = range(used[0], used[-1] + 1) if used else range(0)
    bins = [d["bins"][i] for i in keep]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=("synchronous stalls (stall records)",
                                        "APF: fault → page ready (waited_ns)"))
    for k, (label, run) in enumerate(d["runs"].items()):
        color = palette[k % len(palette)]
        for col, key, n in ((1, "stall_counts", len(run["stall_ns"])),
                            (2, "wait_counts", len(run["wait_ns"]))):
            fig.add_trace(go.Bar(name=label, legendgroup=label, showlegend=col == 1,
                                 x=bins, y=[run[key][i] for i in keep], marker_color=color,
                                 hovertemplate=f"{label}<br>%{{x}}: %{{y}} of {n}<extra></extra>"),
                          row=1, col=col)
    fig.update_layout(title=title, barmode="group", margin=dict(l=10, r=10, t=70, b=40))
    fig.update_yaxes(title_text="count", row=1, col=1)
    fig.update_xaxes(title_text="duration", type="category")
    return fig


# ---------------------------------------------------------------------- parameter sweeps

def _get(row: Mapping, key: str):
    """row[key], also reaching into nested dicts with "a.b" (e.g. "work.total")."""
    if key in row:
        return row[key]
    value = row
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise ParameterError(f"sweep row has no {key!r} (keys: {', '.join(map(str, row))})")
        value = value[part]
    return value


def sweep_series(rows: Iterable[Mapping], x: str, y: str, color: str | None = None) -> dict:
    """{series value: {"x": [...], "y": [mean], "min": [...], "max": [...], "n": [...]}},
    x sorted; rows with the same (series, x) (several seeds, say) are averaged."""
    groups: dict[object, dict[object, list]] = {}
    for row in rows:
        key = _get(row, color) if color else None
        groups.setdefault(key, {}).setdefault(_get(row, x), []).append(_get(row, y))
    out = {}
    for key in sorted(groups, key=_sort_key):
        xs = sorted(groups[key], key=_sort_key)
        ys = [groups[key][v] for v in xs]
        out[key] = {"x": xs, "y": [sum(v) / len(v) for v in ys], "min": [min(v) for v in ys],
                    "max": [max(v) for v in ys], "n": [len(v) for v in ys]}
    return out


def sweep_lines(rows: Iterable[Mapping], x: str, y: str, color: str | None = None, *,
                title: str | None = None, log_x: bool = False) -> go.Figure:
    """One line per value of ``color``; error bars span min-max where rows repeat."""
    series = sweep_series(rows, x, y, color)
    fig = go.Figure()
    for key, s in series.items():
        spread = any(n > 1 for n in s["n"])
        fig.add_trace(go.Scatter(
            mode="lines+markers", name=f"{color}={key}" if color else y, x=s["x"], y=s["y"],
            error_y=dict(type="data", symmetric=False,
                         array=[hi - m for hi, m in zip(s["max"], s["y"])],
                         arrayminus=[m - lo for lo, m in zip(s["min"], s["y"])]) if spread else None))
    fig.update_layout(title=title or f"{y} against {x}", xaxis_title=x, yaxis_title=y,
                      legend_title_text=color or "", margin=dict(l=10, r=10, t=50, b=40))
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def sweep_grid(rows: Iterable[Mapping], x: str, y: str, z: str) -> dict:
    """{"x": [...], "y": [...], "z": [[mean or None per x] per y], "n": [[count]]}."""
    cells: dict[tuple, list] = {}
    for row in rows:
        cells.setdefault((_get(row, x), _get(row, y)), []).append(_get(row, z))
    xs = sorted({k[0] for k in cells}, key=_sort_key)
    ys = sorted({k[1] for k in cells}, key=_sort_key)
    zz = [[(sum(cells[(a, b)]) / len(cells[(a, b)])) if (a, b) in cells else None for a in xs]
          for b in ys]
    nn = [[len(cells.get((a, b), ())) for a in xs] for b in ys]
    return {"x": xs, "y": ys, "z": zz, "n": nn}


def sweep_heatmap(rows: Iterable[Mapping], x: str, y: str, z: str, *, title: str | None = None,
                  colorscale: str = "RdBu") -> go.Figure:
    """A heatmap of the mean ``z`` for each (x, y) of a sweep; missing cells stay blank."""
    g = sweep_grid(rows, x, y, z)
    fig = go.Figure(go.Heatmap(
        x=[str(v) for v in g["x"]], y=[str(v) for v in g["y"]], z=g["z"], colorscale=colorscale,
        texttemplate="%{z:.3g}", colorbar_title=z,
        hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>{z}=%{{z:.4g}}<extra></extra>"))
    fig.update_layout(title=title or f"{z} by {x} and {y}", xaxis_title=x, yaxis_title=y,
                      xaxis_type="category", yaxis_type="category",
                      margin=dict(l=10, r=10, t=50, b=40))
    return fig


# ---------------------------------------------------------------------- model vs published

def _metric(result, metric: str) -> float:
    if metric == "elapsed_ns":
        return result.elapsed_ns
    if metric == "work_total":
        return result.work["total"]
    if metric == "work_compute":
        return result.work["compute"]
    if metric == "compute_rate":          # compute work per virtual ns
        return result.work["compute"] / result.elapsed_ns
    raise ParameterError(f"unknown metric {metric!r}")


def _ratio(key: str, metric: str, off, on) -> float:
    off_v = off if isinstance(off, (int, float)) else _metric(off, metric)
    on_v = on if isinstance(on, (int, float)) else _metric(on, metric)
    if not off_v:
        raise ParameterError(f"{key}: the APF-off {metric} is 0; no ratio")
    return on_v / off_v


def published_data(rows) -> list[dict]:
    """Our APF-on/APF-off ratios next to ``PUBLISHED`` (sources: docs/REFERENCES.md).

    ``rows``: a list of dicts, each {"key": one of PUBLISHED, and one of "ours": ratio,
    "off"/"on": two ScenarioResults (or two numbers), or "pairs": a list of (off, on), one
    per seed}; or a dict key -> (off, on).  The ratio is on/off of the published metric.
    With "pairs", "ours" is the mean over seeds and "ours_min"/"ours_max" the spread.
    """
    if isinstance(rows, Mapping):
        rows = [{"key": k, "off": v[0], "on": v[1]} for k, v in rows.items()]
    out = []
    for row in rows:
        key = row.get("key")
        if key not in PUBLISHED:
            raise ParameterError(f"unknown published figure {key!r}; known: {', '.join(PUBLISHED)}")
        pub = PUBLISHED[key]
        if "ours" in row:
            ratios = [float(row["ours"])]
        elif "pairs" in row:
            ratios = [_ratio(key, pub["metric"], off, on) for off, on in row["pairs"]]
            if not ratios:
                raise ParameterError(f"{key}: 'pairs' is empty")
        else:
            ratios = [_ratio(key, pub["metric"], row["off"], row["on"])]
        ours = sum(ratios) / len(ratios)
        ratio = pub["after"] / pub["before"]
        out.append({"key": key, "label": pub["label"], "metric": pub["metric"],
                    "published": ratio, "ours": ours, "ours_min": min(ratios),
                    "ours_max": max(ratios), "n": len(ratios), "published_change": ratio - 1,
                    "ours_change": ours - 1, "source": pub["source"]})
    return out


def model_vs_published(rows, *, title: str = "Our model against the published measurements") -> go.Figure:
    """Grouped bars of APF-on / APF-off ratios: the source's next to ours; 1.0 = no change.
    Where ours comes from several seeds the bar is the mean and the error bar the min-max."""
    data = published_data(rows)
    labels = [d["label"] + ("<br>(time: lower is better)" if d["metric"] == "elapsed_ns"
                            else "<br>(work: higher is better)") for d in data]
    fig = go.Figure()
    for key, name, color in (("published", "published", "#BAB0AC"), ("ours", "apflab", "#4C78A8")):
        spread = key == "ours" and any(d["n"] > 1 for d in data)
        fig.add_trace(go.Bar(
            name=name, x=labels, y=[round(d[key], 4) for d in data], marker_color=color,
            text=[f"{d[key] - 1:+.0%}" for d in data], textposition="outside",
            customdata=[d["source"] for d in data],
            error_y=dict(type="data", symmetric=False,
                         array=[round(d["ours_max"] - d["ours"], 4) for d in data],
                         arrayminus=[round(d["ours"] - d["ours_min"], 4) for d in data])
            if spread else None,
            hovertemplate="%{y:.3f}× (%{text})<br>%{customdata}<extra>" + name + "</extra>"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#555")
    top = max([d["published"] for d in data] + [d["ours_max"] for d in data] + [1.0])
    fig.update_layout(title=title, barmode="group", yaxis_title="APF on / APF off",
                      yaxis_range=[0, top * 1.2], margin=dict(l=10, r=10, t=50, b=40))
    return fig


# ---------------------------------------------------------------------- several vCPUs

LANE_MODES = MODES + (STEAL,)
LANE_COLORS = {**MODE_COLORS, STEAL: "#FF9DA6"}     # runnable, waiting for a physical CPU
LANE_MEANING = {"el0": "guest user", "el1": "guest kernel", "handler": "SDEI handler",
                "halted": "guest idle (WFI)", "stalled": "stalled for a page",
                "host": "host work", STEAL: "steal: waiting for a pCPU"}
VM_COLORS = ("#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#EECA3B", "#9D755D")
CPU_PARTS = ("run", "stall", "steal", "idle")
CPU_PART_COLORS = {"run": "#4C78A8", "stall": "#E45756", "steal": "#FF9DA6", "idle": "#BAB0AC"}


def _vms(obj) -> tuple[list[tuple[str, Trace, list[int], object]], object]:
    """[(VM label, trace, vCPU indices, host or None)], and the shared HostScheduler or None.

    ``obj``: a Machine, a list of Machines sharing a scheduler (``run_tenants``), the
    ``overcommit`` scenario's setup (``.tenants``: VMs A and B), a Trace, or anything with
    ``.machines``, ``.machine`` or ``.trace``."""
    names = None
    if getattr(obj, "tenants", None):
        machines = [t[0] for t in obj.tenants]
        names = [f"VM {chr(ord('A') + k)} " for k in range(len(machines))]
    elif isinstance(obj, (list, tuple)):
        machines = list(obj)
    elif getattr(obj, "machines", None) is not None:
        machines = list(obj.machines)
    elif getattr(obj, "machine", None) is not None:
        machines = [obj.machine]
    elif hasattr(obj, "host") and hasattr(obj, "trace"):
        machines = [obj]
    else:
        trace = _trace_of(obj)
        lanes = [i for i in range(MAX_VCPUS) if trace.lane(i)[0]] or [0]
        return [("", trace, lanes, None)], None
    if not machines:
        raise ParameterError("no machines to draw")
    out = []
    for k, m in enumerate(machines):
        host = getattr(m, "host", None)
        if host is None:
            raise ParameterError(f"expected Machines, got {type(m).__name__}")
        label = names[k] if names else f"VM {k} " if len(machines) > 1 else ""
        out.append((label, m.trace, [st.index for st in host.cpus], host))
    scheds = {id(vm[3].sched) for vm in out}
    sched = out[0][3].sched
    if len(scheds) > 1:
        raise ParameterError("the machines do not share one HostScheduler: draw them one by one")
    return out, sched


def lanes_data(obj, t0: int | None = None, t1: int | None = None, max_bars: int = MAX_BARS) -> dict:
    """The swim lanes' numbers: one lane per vCPU (per VM) and, where the machine has
    physical CPUs, one per pCPU.

    Returns {"rows": vCPU lane labels, "bars": [(row, start_ns, dur_ns, mode)], "totals":
    {row: {mode: ns}}, "extent": {row: (first ns, last ns)}, "pcpu_rows": [...], "pcpu_bars":
    [(pcpu row, start_ns, dur_ns, holder row)], "pcpu_busy": {pcpu row: ns}, "t0", "t1",
    "bin_ns"}.  Modes are ``LANE_MODES`` (the trace's, plus "steal" with pCPUs).  As in
    ``timeline_data``, short spans are merged per lane when there are too many; the totals
    stay exact.
    """
    vms, sched = _vms(obj)
    lanes = []                   # (row, spans)
    for label, trace, indices, _host in vms:
        for i in indices:
            lanes.append((f"{label}vCPU {i}", trace.lane(i)[0]))
    ends = [(sp[0][0], sp[-1][1]) for _, sp in lanes if sp]
    lo = min((a for a, _ in ends), default=0)
    hi = max((b for _, b in ends), default=0)
    t0 = lo if t0 is None else max(int(t0), lo)
    t1 = hi if t1 is None else min(int(t1), hi)
    if t1 < t0:
        raise ParameterError(f"t1 ({t1}) is before t0 ({t0})")
    rows = [row for row, _ in lanes]
    clipped, totals, extent = [], {}, {}
    for row, spans in lanes:
        tot = dict.fromkeys(LANE_MODES, 0)
        for a, b, mode, _task in spans:
            if b <= t0:
                continue
            if a >= t1:
                break
            a, b = max(a, t0), min(b, t1)
            if b > a:
                clipped.append((a, b, mode, row))
                tot[mode] += b - a
                extent[row] = (extent.get(row, (a,))[0], b)
        totals[row] = tot
    clipped.sort(key=lambda s: s[0])
    bin_ns = 0
    row_of = {row: row for row in rows}
    if len(clipped) <= max_bars:
        bars = [(row, a, b - a, mode) for a, b, mode, row in clipped]
    else:
        bin_ns = max(1, (t1 - t0) * 2 * len(rows) // max_bars)
        while True:
            bars = _merge(clipped, row_of, bin_ns, LANE_MODES)
            if len(bars) <= max_bars or bin_ns > t1 - t0:    # (then: one bar per mode per lane)
                break
            bin_ns *= 2

    pcpu_rows, pcpu_bars, pcpu_busy = [], [], {}
    if sched is not None:
        holder = {}
        for label, _trace, _indices, host in vms:
            for st in host.cpus:
                holder[id(st)] = f"{label}vCPU {st.index}"
        for p in sched.pcpus:
            row = f"pCPU {p.index}"
            pcpu_rows.append(row)
            held = list(p.held)
            if p.running is not None and p.running.now > p.since:    # still held: up to its clock
                held.append((p.since, p.running.now, p.running))
            busy, last = 0, None
            for a, b, st in held:
                who = holder.get(id(st), "another VM")
                a, b = max(a, t0), min(b, t1)
                if b <= a:
                    continue
                busy += b - a
                if last is not None and last[3] == who and last[1] + last[2] == a:
                    last = (row, last[1], b - last[1], who)      # one holder, back to back
                    pcpu_bars[-1] = last
                else:
                    last = (row, a, b - a, who)
                    pcpu_bars.append(last)
            pcpu_busy[row] = busy
    return {"rows": rows, "bars": bars, "totals": totals, "extent": extent, "t0": t0, "t1": t1,
            "bin_ns": bin_ns, "pcpu_rows": pcpu_rows, "pcpu_bars": pcpu_bars, "pcpu_busy": pcpu_busy}


def swimlanes(obj, t0: int | None = None, t1: int | None = None, *, max_bars: int = MAX_BARS,
              title: str | None = None) -> go.Figure:
    """One lane per vCPU, coloured by where its time went (run modes, stalled, steal, idle);
    with physical CPUs, a second panel with one lane per pCPU coloured by the VM (and vCPU)
    holding it. ``obj``: a Machine, the list of Machines given to ``run_tenants``, or a Trace."""
    d = lanes_data(obj, t0, t1, max_bars)
    with_p = bool(d["pcpu_rows"])
    n, k = len(d["rows"]), len(d["pcpu_rows"])
    if with_p:
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                            row_heights=[max(n, 1) / (n + k), max(k, 1) / (n + k)],
                            subplot_titles=("guest's view: vCPUs", "host's view: physical CPUs"))
    else:
        fig = go.Figure()
    at = dict(row=1, col=1) if with_p else {}
    for mode in LANE_MODES:
        bars = [b for b in d["bars"] if b[3] == mode]
        if not bars:
            continue
        fig.add_trace(go.Bar(
            orientation="h", name=LANE_MEANING[mode], legendgroup="modes", y=[b[0] for b in bars],
            x=[_us(b[2]) for b in bars], base=[_us(b[1]) for b in bars], marker_color=LANE_COLORS[mode],
            marker_line_width=0, hovertemplate=f"{mode}<br>%{{base}} µs + %{{x}} µs<extra>%{{y}}</extra>"),
            **at)
    if with_p:
        holders = sorted({b[3] for b in d["pcpu_bars"]}, key=lambda h: (h.split("vCPU")[0], h))
        vm_names = sorted({h.split("vCPU")[0].strip() for h in holders})
        several = len(vm_names) > 1
        for h in holders:
            bars = [b for b in d["pcpu_bars"] if b[3] == h]
            vm = h.split("vCPU")[0].strip()
            color = VM_COLORS[(vm_names.index(vm) if several else int(h.rsplit(" ", 1)[-1]))
                              % len(VM_COLORS)] if h != "another VM" else "#BAB0AC"
            fig.add_trace(go.Bar(
                orientation="h", name=h, legendgroup=vm or h, y=[b[0] for b in bars],
                x=[_us(b[2]) for b in bars], base=[_us(b[1]) for b in bars], marker_color=color,
                marker_line_width=0.5, marker_line_color="white",
                hovertemplate=f"{h}<br>%{{base}} µs + %{{x}} µs<extra>%{{y}}</extra>"), row=2, col=1)
        fig.update_yaxes(categoryorder="array", categoryarray=d["pcpu_rows"][::-1], row=2, col=1)
        fig.update_yaxes(categoryorder="array", categoryarray=d["rows"][::-1], row=1, col=1)
        fig.update_xaxes(title_text="virtual time (µs)", row=2, col=1)
    else:
        fig.update_layout(yaxis=dict(categoryorder="array", categoryarray=d["rows"][::-1]),
                          xaxis_title="virtual time (µs)")
    note = f" (short spans merged below {_fmt_ns(d['bin_ns'])})" if d["bin_ns"] else ""
    fig.update_layout(title=title or f"Swim lanes: one per vCPU{' and per physical CPU' if with_p else ''}{note}",
                      barmode="overlay", bargap=0.25, legend_title_text="mode / holder",
                      height=max(260, 110 + 45 * (n + k)), margin=dict(l=10, r=10, t=60, b=40))
    return fig


def _report_of(obj) -> dict:
    if isinstance(obj, Mapping):
        return obj
    if getattr(obj, "vms", None) and hasattr(obj, "pcpus"):        # an overcommit result
        return {"vms": obj.vms, "pcpus": obj.pcpus, "elapsed_ns": obj.elapsed_ns}
    if isinstance(obj, (list, tuple)):
        from .pcpu import tenant_report
        return tenant_report(list(obj))
    if hasattr(obj, "cpu_report"):
        return obj.cpu_report()
    raise ParameterError(f"expected a Machine, a list of Machines or a cpu/tenant report, got "
                         f"{type(obj).__name__}")


def cpu_breakdown_data(obj) -> dict:
    """Per vCPU: run, stall, steal and idle ns (``Machine.cpu_report`` or ``tenant_report``);
    per pCPU: busy ns and utilisation. {"labels", "run", "stall", "steal", "idle", "total",
    "pcpus"}; ``obj``: a Machine, a list of Machines (tenants) or one of those reports."""
    rep = _report_of(obj)
    if "vms" in rep:
        rows = [(f"VM {vm['vm']} vCPU {v['vcpu']}", v) for vm in rep["vms"] for v in vm["vcpus"]]
    elif "vcpus" in rep:
        rows = [(f"vCPU {v['vcpu']}", v) for v in rep["vcpus"]]
    else:
        raise ParameterError("the report has neither 'vcpus' (cpu_report) nor 'vms' (tenant_report)")
    out = {"labels": [label for label, _ in rows]}
    for part in CPU_PARTS:
        out[part] = [int(v[f"{part}_ns"]) for _, v in rows]
    out["total"] = [sum(out[part][i] for part in CPU_PARTS) for i in range(len(rows))]
    out["pcpus"] = [dict(p) for p in rep.get("pcpus", ())]
    out["elapsed_ns"] = rep["elapsed_ns"]
    return out


def cpu_breakdown_bar(obj, *, title: str = "Where each vCPU's time went") -> go.Figure:
    """Stacked bars per vCPU: run (guest or host work on a pCPU), stall (waiting for a page),
    steal (runnable, waiting for a pCPU), idle (WFI)."""
    d = cpu_breakdown_data(obj)
    fig = go.Figure()
    for part in CPU_PARTS:
        if not any(d[part]):
            continue
        fig.add_trace(go.Bar(name=part, x=d["labels"], y=[_ms(v) for v in d[part]], customdata=d[part],
                             marker_color=CPU_PART_COLORS[part],
                             hovertemplate=f"{part}: %{{y:.3f}} ms<extra>%{{x}}</extra>"))
    sub = ""
    if d["pcpus"]:
        sub = "<br><sup>host: " + ", ".join(f"pCPU {p['pcpu']} busy {p['utilisation']:.0%}"
                                             for p in d["pcpus"]) + "</sup>"
    fig.update_layout(title=title + sub, barmode="stack", yaxis_title="virtual time (ms)",
                      legend_title_text="", margin=dict(l=10, r=10, t=70, b=40))
    return fig


def vm_work_data(runs, metric: str = "instructions") -> dict:
    """Work per VM in one or several runs of VMs sharing pCPUs (``tenant_report`` dicts, or
    a dict label -> report, e.g. APF off and on; ``overcommit`` results work too): {"labels":
    run labels, "vms": VM labels, "work": {vm: [per run]}, "utilisation": [mean pCPU
    utilisation per run]}. ``metric`` may reach into a dict: "work.total"."""
    if (isinstance(runs, Mapping) and "vms" in runs) or hasattr(runs, "vms"):
        runs = {"run": runs}
    if isinstance(runs, Mapping):
        runs = {k: _report_of(v) for k, v in runs.items()}
    if not isinstance(runs, Mapping) or not runs:
        raise ParameterError("expected a tenant report or a dict label -> tenant report")
    labels = [str(k) for k in runs]
    vms: list[str] = []
    work: dict[str, list] = {}
    for i, rep in enumerate(runs.values()):
        for vm in rep["vms"]:
            name = str(vm.get("name", f"VM {vm['vm']}"))
            try:
                value = _get(vm, metric)
            except ParameterError:
                raise ParameterError(f"VM {name} has no {metric!r} (keys: {', '.join(vm)})") from None
            if name not in work:
                vms.append(name)
                work[name] = [None] * len(labels)
            work[name][i] = value
    util = []
    for rep in runs.values():
        ps = rep.get("pcpus", ())
        util.append(sum(p["utilisation"] for p in ps) / len(ps) if ps else None)
    return {"labels": labels, "vms": vms, "work": work, "utilisation": util, "metric": metric}


def vm_work_bar(runs, metric: str = "instructions", *, title: str | None = None) -> go.Figure:
    """Grouped bars: each VM's work per run; the pCPUs' mean utilisation over each run."""
    d = vm_work_data(runs, metric)
    fig = go.Figure()
    for k, vm in enumerate(d["vms"]):
        fig.add_trace(go.Bar(name=vm, x=d["labels"], y=d["work"][vm], marker_color=VM_COLORS[k % len(VM_COLORS)],
                             hovertemplate=f"{vm}: %{{y:,}}<extra>%{{x}}</extra>"))
    for label, u in zip(d["labels"], d["utilisation"]):
        if u is not None:
            fig.add_annotation(x=label, y=0, yref="paper", yshift=-28, showarrow=False,
                               text=f"pCPUs busy {u:.0%}")
    fig.update_layout(title=title or f"Work per VM ({metric})", barmode="group", yaxis_title=metric,
                      margin=dict(l=10, r=10, t=50, b=60))
    return fig


# ---------------------------------------------------------------------- export

def save_html(fig: go.Figure, path) -> Path:
    """Write ``fig`` as one standalone HTML file (plotly.js inlined: it opens offline)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


__all__ = ["timeline", "timeline_data", "breakdown_bar", "breakdown_data", "stall_histogram",
           "stall_data", "sweep_lines", "sweep_series", "sweep_heatmap", "sweep_grid",
           "model_vs_published", "published_data", "swimlanes", "lanes_data", "cpu_breakdown_bar",
           "cpu_breakdown_data", "vm_work_bar", "vm_work_data", "save_html", "MODE_COLORS", "PUBLISHED"]
