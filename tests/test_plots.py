"""apflab.plots: every figure's numbers agree with the trace and results it was drawn from."""

import re

import pytest

from apflab import plots, scenarios
from apflab.errors import ParameterError
from apflab.trace import MODES, Trace


@pytest.fixture(scope="module")
def pair():
    """A small memtouch + compute run with APF off and on (about 0.4 s)."""
    return scenarios.compare("memtouch", seed=0, npages=64, rounds=2, limit_pages=16, calc_thread=True)


def bar_ns_per_mode(fig) -> dict:
    """Sum of the horizontal bars' widths per mode, back in ns."""
    out = dict.fromkeys(MODES, 0)
    for tr in fig.data:
        if tr.type == "bar":
            out[tr.name] += round(sum(tr.x) * 1000)
    return out


def synthetic(n_spans: int) -> Trace:
    """A trace with many short spans over three tasks and every mode."""
    t = Trace()
    at = 0
    for i in range(n_spans):
        dur = 7 + (i * 13) % 50
        mode = MODES[i % len(MODES)]
        task = (None, 0, 1)[(i // 3) % 3]
        t.account(at, at + dur, mode, task)
        if i % 97 == 0:
            t.emit(at + dur, "stall", reason="apf_disabled", ns=dur)
        at += dur
    return t


# ---------------------------------------------------------------------- timeline

@pytest.mark.parametrize("which", [0, 1], ids=["apf_off", "apf_on"])
def test_timeline_time_per_mode_sums_to_the_breakdown(pair, which):
    r = pair[which]
    d = plots.timeline_data(r)
    assert d["mode_totals"] == r.trace.breakdown()
    per_mode = dict.fromkeys(MODES, 0)
    for _row, _start, dur, mode in d["bars"]:
        per_mode[mode] += dur
    assert per_mode == r.trace.breakdown()
    fig = plots.timeline(r)
    drawn = bar_ns_per_mode(fig)
    for mode in MODES:                  # µs rounded to 3 decimals: exact to the ns per bar
        assert abs(drawn[mode] - r.trace.breakdown()[mode]) <= len(d["bars"])
    assert d["rows"] == ["task 0: memtouch", "task 1: compute", "idle/kernel"]


def test_timeline_markers_match_the_records(pair):
    off, on = pair
    d_off, d_on = plots.timeline_data(off), plots.timeline_data(on)
    assert len(d_off["markers"]["stall"]) == len(off.trace.select("stall")) > 0
    assert len(d_on["markers"]["apf_not_present"]) == len(on.trace.select("apf_not_present")) > 0
    assert len(d_on["markers"]["apf_page_ready"]) == len(on.trace.select("apf_page_ready"))
    # memtouch (task 0) is the one that faults: its "not present" markers sit on its row
    assert {row for _t, row, _text in d_on["markers"]["apf_not_present"]} == {"task 0: memtouch"}
    names = {tr.name for tr in plots.timeline(on).data}
    assert {"apf_not_present", "apf_page_ready"} <= names


def test_timeline_window_clips_spans(pair):
    on = pair[1]
    t0, t1 = 1_000_000, 2_500_000
    d = plots.timeline_data(on, t0, t1)
    assert sum(d["mode_totals"].values()) == t1 - t0
    assert all(t0 <= start and start + dur <= t1 for _r, start, dur, _m in d["bars"])
    assert all(t0 <= t <= t1 for pts in d["markers"].values() for t, _row, _txt in pts)
    with pytest.raises(ParameterError):
        plots.timeline_data(on, 5, 1)


def test_timeline_merges_long_traces_but_keeps_every_ns():
    t = synthetic(30_000)
    d = plots.timeline_data(t, max_bars=5_000)
    assert d["spans"] == 30_000 and d["bin_ns"] > 0
    assert len(d["bars"]) <= 5_000
    assert d["mode_totals"] == t.breakdown()
    per_mode = dict.fromkeys(MODES, 0)
    per_row = {}
    for row, _start, dur, mode in d["bars"]:
        per_mode[mode] += dur
        per_row[row] = per_row.get(row, 0) + dur
    assert per_mode == t.breakdown()
    truth = {}
    for a, b, _mode, task in t.spans:
        row = plots.IDLE_ROW if task is None else f"task {task}"
        truth[row] = truth.get(row, 0) + b - a
    assert per_row == truth
    fig = plots.timeline(t)
    assert sum(len(tr.x) for tr in fig.data if tr.type == "bar") <= 5_000
    assert len(fig.to_json()) < 600_000           # light enough for a notebook


def test_timeline_accepts_a_trace_and_rejects_other_things():
    t = synthetic(10)
    assert plots.timeline_data(t)["rows"] == ["task 0", "task 1", "idle/kernel"]
    with pytest.raises(ParameterError):
        plots.timeline(42)


# ---------------------------------------------------------------------- breakdown

def test_breakdown_bars_equal_the_results_breakdown(pair):
    off, on = pair
    fig = plots.breakdown_bar([off, on])
    by_mode = {tr.name: tr for tr in fig.data}
    assert list(by_mode["el0"].x) == ["memtouch APF off", "memtouch APF on"]
    for mode in MODES:
        if mode not in by_mode:                       # modes with no time are not drawn
            assert off.breakdown[mode] == on.breakdown[mode] == 0
            continue
        tr = by_mode[mode]
        assert list(tr.customdata) == [off.breakdown[mode], on.breakdown[mode]]
        assert list(tr.y) == pytest.approx([off.breakdown[mode] / 1e6, on.breakdown[mode] / 1e6])
    assert fig.layout.barmode == "stack"
    d = plots.breakdown_data({"off": off, "on": on})
    assert d["labels"] == ["off", "on"]
    assert d["elapsed"] == [sum(off.breakdown.values()), sum(on.breakdown.values())]
    assert by_mode["stalled"].customdata[1] == 0 < by_mode["stalled"].customdata[0]


# ---------------------------------------------------------------------- stalls

def test_stall_histogram_counts_every_record(pair):
    off, on = pair
    d = plots.stall_data([off, on])
    run_off, run_on = d["runs"]["memtouch APF off"], d["runs"]["memtouch APF on"]
    assert sum(run_off["stall_counts"]) == len(off.trace.select("stall")) == off.trace.counts["stall"]
    assert sum(run_on["wait_counts"]) == len(on.trace.select("apf_page_ready"))
    assert sum(run_on["stall_counts"]) == 0 and sum(run_off["wait_counts"]) == 0
    edges = d["edges"]
    assert edges[0] == 0 and edges == sorted(edges) and max(run_off["stall_ns"]) < edges[-1]
    fig = plots.stall_histogram([off, on])
    stall_bars = [tr for tr in fig.data if tr.xaxis == "x"]
    wait_bars = [tr for tr in fig.data if tr.xaxis == "x2"]
    assert sum(sum(tr.y) for tr in stall_bars) == off.trace.counts["stall"]
    assert sum(sum(tr.y) for tr in wait_bars) == on.trace.counts["apf_page_ready"]


# ---------------------------------------------------------------------- sweeps

ROWS = [{"latency_us": lat, "mix": mix, "seed": seed, "ratio": lat / 100 + seed + (mix == "b"),
         "work": {"total": lat * 10}}
        for lat in (50, 150, 1000) for mix in "ab" for seed in (0, 1)]


def test_sweep_lines_average_repeats_and_sort_x():
    s = plots.sweep_series(ROWS, "latency_us", "ratio", "mix")
    assert list(s) == ["a", "b"]
    assert s["a"]["x"] == [50, 150, 1000]
    assert s["a"]["y"] == pytest.approx([1.0, 2.0, 10.5])
    assert s["b"]["n"] == [2, 2, 2] and s["b"]["min"] == pytest.approx([1.5, 2.5, 11])
    fig = plots.sweep_lines(ROWS, "latency_us", "ratio", "mix")
    assert [tr.name for tr in fig.data] == ["mix=a", "mix=b"]
    assert list(fig.data[0].y) == pytest.approx(s["a"]["y"])
    nested = plots.sweep_series(ROWS, "latency_us", "work.total")
    assert nested[None]["y"] == [500, 1500, 10000]
    with pytest.raises(ParameterError):
        plots.sweep_series(ROWS, "latency_us", "nope")


def test_sweep_heatmap_grid_and_missing_cells():
    rows = [r for r in ROWS if not (r["mix"] == "b" and r["latency_us"] == 1000)]
    g = plots.sweep_grid(rows, "latency_us", "mix", "ratio")
    assert g["x"] == [50, 150, 1000] and g["y"] == ["a", "b"]
    assert g["z"][0] == pytest.approx([1.0, 2.0, 10.5])
    assert g["z"][1][2] is None and g["n"][1] == [2, 2, 0]
    fig = plots.sweep_heatmap(rows, "latency_us", "mix", "ratio")
    assert fig.data[0].type == "heatmap" and fig.data[0].z[1][2] is None


# ---------------------------------------------------------------------- published

def test_model_vs_published(pair):
    off, on = pair
    rows = [{"key": "arm64_v3_compute", "off": off, "on": on},
            {"key": "x86_2010", "ours": 1.5}, {"key": "postcopy", "off": 100, "on": 150}]
    d = plots.published_data(rows)
    assert d[0]["published"] == pytest.approx(64_751 / 108_392)      # v3 cover letter, test [2]
    assert d[0]["ours"] == pytest.approx(on.elapsed_ns / off.elapsed_ns)
    assert d[1]["published"] == pytest.approx(258_846_142_585 / 129_752_639_953) and d[1]["ours"] == 1.5
    assert d[2]["published"] == pytest.approx(126 / 75) and d[2]["ours"] == 1.5
    assert plots.published_data({"arm64_v3_no_compute": (off, on)})[0]["published"] == pytest.approx(59_911 / 61_399)
    seeds = plots.published_data([{"key": "x86_2010", "pairs": [(10, 20), (10, 30)]}])[0]
    assert (seeds["ours"], seeds["ours_min"], seeds["ours_max"], seeds["n"]) == (2.5, 2.0, 3.0, 2)
    fig = plots.model_vs_published(rows)
    assert [tr.name for tr in fig.data] == ["published", "apflab"]
    assert list(fig.data[1].y) == pytest.approx([round(x["ours"], 4) for x in d])
    with pytest.raises(ParameterError):
        plots.published_data([{"key": "nope", "ours": 1}])


# ---------------------------------------------------------------------- export

def test_save_html_is_standalone(tmp_path, pair):
    path = plots.save_html(plots.breakdown_bar(list(pair)), tmp_path / "sub" / "bd.html")
    text = path.read_text(encoding="utf-8")
    assert re.findall(r"<script[^>]*\bsrc=", text) == []   # nothing fetched from a CDN
    assert len(text) > 1_000_000                   # plotly.js inlined: opens offline
    assert "memtouch APF off" in text


# ---------------------------------------------------------------------- several vCPUs

@pytest.fixture(scope="module")
def overcommitted():
    """Four compute-bound vCPUs on two pCPUs (tests/test_pcpu.py's guest)."""
    from test_pcpu import workers
    return workers(2)


@pytest.fixture(scope="module")
def two_vms():
    from test_pcpu import tenants
    return tenants()


def lane_bars(d, row):
    return sorted((b for b in d["bars"] if b[0] == row), key=lambda b: b[1])


def test_one_lane_per_vcpu_and_the_spans_tile_each_lane(overcommitted):
    m, rep = overcommitted
    d = plots.lanes_data(m)
    assert d["rows"] == [f"vCPU {i}" for i in range(4)] and d["bin_ns"] == 0
    for i, row in enumerate(d["rows"]):
        bars = lane_bars(d, row)
        spans, modes = m.trace.lane(i)
        assert bars[0][1] == spans[0][0] and bars[-1][1] + bars[-1][2] == spans[-1][1]
        for a, b in zip(bars, bars[1:]):        # back to back: no gap, no overlap
            assert a[1] + a[2] == b[1]
        assert {k: v for k, v in d["totals"][row].items() if v} == {k: v for k, v in modes.items() if v}
    # The lanes' totals are the report's run / stall / steal / idle.
    cb = plots.cpu_breakdown_data(m)
    for i, row in enumerate(d["rows"]):
        t = d["totals"][row]
        assert cb["run"][i] == t["el0"] + t["el1"] + t["handler"] + t["host"] == rep["vcpus"][i]["run_ns"]
        assert cb["steal"][i] == t["steal"] > 0
        assert cb["stall"][i] == t["stalled"] and cb["idle"][i] == t["halted"]
        assert cb["total"][i] == sum(t.values())


def test_pcpu_lanes_show_who_held_each_pcpu(overcommitted):
    m, rep = overcommitted
    d = plots.lanes_data(m)
    assert d["pcpu_rows"] == ["pCPU 0", "pCPU 1"]
    for p in rep["pcpus"]:
        row = f"pCPU {p['pcpu']}"
        assert d["pcpu_busy"][row] == p["busy_ns"]
        bars = sorted((b for b in d["pcpu_bars"] if b[0] == row), key=lambda b: b[1])
        assert sum(b[2] for b in bars) == p["busy_ns"]
        for a, b in zip(bars, bars[1:]):
            assert a[1] + a[2] <= b[1]              # one holder at a time
    held = {}
    for row, a, dur, who in d["pcpu_bars"]:
        held.setdefault(who, []).append((a, a + dur))
    for i, v in enumerate(rep["vcpus"]):
        spans = sorted(held[f"vCPU {i}"])
        assert sum(b - a for a, b in spans) == v["run_ns"]     # held a pCPU exactly while it ran
        for (a0, b0), (a1, _b1) in zip(spans, spans[1:]):
            assert b0 <= a1                          # never on two pCPUs at once


def test_swimlanes_figure_has_both_panels_and_draws_every_ns(overcommitted):
    m, rep = overcommitted
    fig = plots.swimlanes(m)
    d = plots.lanes_data(m)
    guest = [tr for tr in fig.data if tr.yaxis in (None, "y")]
    host = [tr for tr in fig.data if tr.yaxis == "y2"]
    assert {y for tr in guest for y in tr.y} == set(d["rows"])
    assert {y for tr in host for y in tr.y} == {"pCPU 0", "pCPU 1"}
    drawn = round(sum(sum(tr.x) for tr in guest) * 1000)
    assert drawn == sum(sum(t.values()) for t in d["totals"].values())
    assert round(sum(sum(tr.x) for tr in host) * 1000) == sum(p["busy_ns"] for p in rep["pcpus"])
    assert {tr.name for tr in host} == {f"vCPU {i}" for i in range(4)}


def test_without_pcpus_no_host_panel_and_no_steal():
    from test_smp import run_counter
    m = run_counter(2)
    d = plots.lanes_data(m)
    assert d["rows"] == ["vCPU 0", "vCPU 1"] and d["pcpu_rows"] == []
    assert all(t["steal"] == 0 for t in d["totals"].values())
    fig = plots.swimlanes(m)
    assert all(tr.yaxis in (None, "y") for tr in fig.data)
    assert plots.lanes_data(m.trace)["rows"] == ["vCPU 0", "vCPU 1"]     # from the trace alone
    with pytest.raises(ParameterError):
        plots.lanes_data(m, t0=10, t1=5)


def test_lanes_window_and_merging_keep_the_totals(overcommitted):
    m, _ = overcommitted
    d = plots.lanes_data(m, t0=50_000, t1=150_000)
    for row in d["rows"]:
        bars = lane_bars(d, row)
        assert bars[0][1] >= 50_000 and bars[-1][1] + bars[-1][2] <= 150_000
    full = plots.lanes_data(m)
    small = plots.lanes_data(m, max_bars=12)
    assert small["bin_ns"] > 0 and len(small["bars"]) <= 12 < len(full["bars"])
    assert small["totals"] == full["totals"]
    per_mode = {}
    for row, _a, dur, mode in small["bars"]:
        per_mode[(row, mode)] = per_mode.get((row, mode), 0) + dur
    assert per_mode == {(r, k): v for r, t in full["totals"].items() for k, v in t.items() if v}


def test_tenants_lanes_per_vm_and_work_per_vm(two_vms):
    ms, rep = two_vms
    d = plots.lanes_data(ms)
    assert d["rows"] == [f"VM {k} vCPU {i}" for k in range(2) for i in range(4)]
    assert {b[3].split(" vCPU")[0] for b in d["pcpu_bars"]} == {"VM 0", "VM 1"}
    assert [d["pcpu_busy"][f"pCPU {p['pcpu']}"] for p in rep["pcpus"]] == [p["busy_ns"] for p in rep["pcpus"]]
    cb = plots.cpu_breakdown_data(rep)
    assert cb["labels"] == d["rows"]
    assert cb["run"] == [v["run_ns"] for vm in rep["vms"] for v in vm["vcpus"]]
    w = plots.vm_work_data({"first": rep, "again": rep})
    assert w["vms"] == ["VM 0", "VM 1"] and w["labels"] == ["first", "again"]
    assert w["work"]["VM 0"] == [rep["vms"][0]["instructions"]] * 2
    assert w["utilisation"][0] == pytest.approx(sum(p["utilisation"] for p in rep["pcpus"]) / 2)
    fig = plots.vm_work_bar(rep)
    assert [list(tr.y) for tr in fig.data] == [[vm["instructions"]] for vm in rep["vms"]]
    with pytest.raises(ParameterError, match="no 'work'"):
        plots.vm_work_data(rep, metric="work")
    with pytest.raises(ParameterError, match="share one HostScheduler"):
        from test_pcpu import workers
        plots.lanes_data([ms[0], workers(1, iters=2_000)[0]])


def test_cpu_breakdown_bar_stacks_the_report(overcommitted):
    m, rep = overcommitted
    fig = plots.cpu_breakdown_bar(rep)
    got = {tr.name: list(tr.customdata) for tr in fig.data}
    assert got == {"run": [v["run_ns"] for v in rep["vcpus"]], "steal": [v["steal_ns"] for v in rep["vcpus"]]}
    assert "pCPU 0 busy" in fig.layout.title.text
    with pytest.raises(ParameterError):
        plots.cpu_breakdown_data({"elapsed_ns": 0})


def test_overcommit_setup_and_results_draw_both_vms():
    """The overcommit scenario's setup (VMs A and B) and its results feed the same figures."""
    setup = scenarios.build("overcommit", apf=True, seed=0, duration_ns=2_000_000, npages=16, limit_pages=8,
                            time_slice_ns=500_000)
    r = setup.run()
    d = plots.lanes_data(setup)
    assert d["rows"] == ["VM A vCPU 0", "VM B vCPU 0"] and d["pcpu_rows"] == ["pCPU 0"]
    assert d["pcpu_busy"]["pCPU 0"] == r.pcpus[0]["busy_ns"]
    assert {b[3] for b in d["pcpu_bars"]} == {"VM A vCPU 0", "VM B vCPU 0"}
    cb = plots.cpu_breakdown_data(r)
    assert cb["labels"] == ["VM A vCPU 0", "VM B vCPU 0"]
    assert cb["steal"] == [v["vcpus"][0]["steal_ns"] for v in r.vms]
    for i, row in enumerate(d["rows"]):        # the lanes and the report tell the same story
        assert d["totals"][row]["steal"] == cb["steal"][i] > 0
    w = plots.vm_work_data({"on": r}, "work.total")
    assert w["work"] == {"VM A": [r.vms[0]["work"]["total"]], "VM B": [r.vms[1]["work"]["total"]]}
