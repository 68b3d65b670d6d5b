"""The named experiments (apflab.scenarios) with small parameters, APF off and on.

Each scenario runs once per APF setting (module fixture); the tests check the
relations that must hold between what the run measured and what the protocol
(docs/REFERENCES.md ("APF protocol")) says: without APF every fault that needs I/O stalls the vCPU
(fallback ``apf_disabled``); with APF the vCPU does not stall unless a fallback
forced it, every "page not present" is answered by a "page ready", and the time
saved goes to the compute tasks.
"""

from __future__ import annotations

import json

import pytest

import apflab
from apflab import ParameterError
from apflab.scenarios import SCENARIOS, compare, parameters, run_scenario

SMALL = {
    "memtouch": ("memtouch", dict(npages=64, limit_pages=16)),
    "memtouch_calc": ("memtouch", dict(npages=64, limit_pages=16, calc_thread=True)),
    "gleb2010": ("gleb2010", dict(fault_tasks=2, compute_tasks=2, npages=32, limit_pages=24,
                                  duration_ns=3_000_000)),
    "postcopy": ("postcopy", dict(npages=64)),
}
RUN_TO_COMPLETION = ("memtouch", "memtouch_calc")     # the measured task exits


@pytest.fixture(scope="module")
def runs():
    """{case: (off, on)}: every case run once with APF off and once with it on."""
    return {case: compare(name, seed=0, **params) for case, (name, params) in SMALL.items()}


CASES = list(SMALL)


def stalls(r):
    return r.trace.select("stall")


# ---------------------------------------------------------------------- always

@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("apf", [False, True], ids=["off", "on"])
def test_breakdown_tiles_the_run_and_params_are_echoed(runs, case, apf):
    r = runs[case][int(apf)]
    name, params = SMALL[case]
    assert r.name == name and r.apf is apf and r.seed == 0
    assert set(r.params) == set(parameters(name))
    assert all(r.params[k] == v for k, v in params.items())
    bd = r.breakdown
    assert set(bd) >= {"el0", "el1", "handler", "halted", "stalled", "host"}
    assert sum(bd.values()) == r.trace.elapsed_ns > 0
    assert r.stall_ns == bd["stalled"]
    if case in RUN_TO_COMPLETION:
        # memtouch measures until its task exits; the kernel stops a little later.
        assert r.elapsed_ns == r.kernel["tasks"][0]["exit_ns"]
        assert 0 < r.elapsed_ns <= r.trace.elapsed_ns
    else:
        assert r.elapsed_ns == r.trace.elapsed_ns
    if name == "gleb2010":
        assert r.elapsed_ns >= params["duration_ns"]
    # Every fault that needed I/O was either notified or fell back, and each fallback stalled once.
    assert r.faults == r.apf_not_present + sum(r.fallbacks.values()) > 0
    assert len(stalls(r)) == sum(r.fallbacks.values())
    assert {s.get("reason") for s in stalls(r)} == set(r.fallbacks)
    assert "prefault" not in r.fallbacks
    # Host and trace agree on the counts.
    assert len(r.trace.select("apf_not_present")) == r.apf_not_present
    assert len(r.trace.select("apf_page_ready")) == r.apf_page_ready
    s = r.summary()
    assert json.loads(r.to_json()) == json.loads(json.dumps(s))
    assert s["trace_digest"] == r.trace.digest()


# ---------------------------------------------------------------------- APF off

@pytest.mark.parametrize("case", CASES)
def test_apf_off_every_fault_stalls(runs, case):
    off = runs[case][0]
    assert off.apf_not_present == 0 and off.apf_page_ready == 0
    assert off.stall_ns > 0
    assert off.fallbacks == {"apf_disabled": off.faults}
    assert off.breakdown["handler"] == 0
    assert not off.kernel["apf"]["enabled"]          # the host did not offer the feature
    assert off.kernel["apf"]["features"] & (1 << 2) == 0
    assert all(t["parked"] == 0 for t in off.kernel["tasks"])


# ---------------------------------------------------------------------- APF on

@pytest.mark.parametrize("case", CASES)
def test_apf_on_notifies_instead_of_stalling(runs, case):
    off, on = runs[case]
    assert on.kernel["apf"]["enabled"]
    assert on.apf_not_present > 0
    if not on.fallbacks:
        assert on.stall_ns == 0
    assert on.stall_ns * 10 < off.stall_ns
    if case in RUN_TO_COMPLETION or case == "postcopy":
        # Nothing forces a fallback here: no stall at all, every notice answered.
        assert on.fallbacks == {} and on.stall_ns == 0
        assert on.apf_not_present == on.apf_page_ready
    else:
        # Cut off at the run length: a few notices may still be outstanding.
        assert on.apf_page_ready <= on.apf_not_present <= on.apf_page_ready + 64
    k = on.kernel["apf"]
    if case in RUN_TO_COMPLETION:
        assert k["not_present"] == on.apf_not_present and k["page_ready"] == on.apf_page_ready
    else:
        # Stopped by the host between two slices: the guest may not have taken the last
        # notice yet (its SDEI or IRQ is delivered, the handler not run).
        assert on.apf_not_present - 1 <= k["not_present"] <= on.apf_not_present
        assert on.apf_page_ready - 1 <= k["page_ready"] <= on.apf_page_ready
    assert sum(t["parked"] for t in on.kernel["tasks"]) == k["not_present"]
    assert k["bad_ready"] == k["table_full"] == 0


def test_memtouch_alone_does_the_same_work_either_way(runs):
    off, on = runs["memtouch"]
    want = SMALL["memtouch"][1]["npages"] * parameters("memtouch")["rounds"]["default"]
    assert off.work["memtouch"] == on.work["memtouch"] == want
    assert off.faults == on.faults                   # same pages, same evictions
    assert on.breakdown["halted"] > 0                # nothing else to run: the vCPU idles


def test_memtouch_with_calc_thread_finishes_sooner_and_computes_more_with_apf(runs):
    off, on = runs["memtouch_calc"]
    assert on.work["memtouch"] == off.work["memtouch"]
    assert on.elapsed_ns < off.elapsed_ns
    assert on.work["compute"] > off.work["compute"]
    assert on.breakdown["el0"] > off.breakdown["el0"]


def test_gleb2010_compute_tasks_do_more_work_with_apf(runs):
    off, on = runs["gleb2010"]
    assert on.work["compute"] > off.work["compute"]
    assert on.work["total"] > off.work["total"]


def test_postcopy_guest_does_more_work_with_apf(runs):
    off, on = runs["postcopy"]
    assert on.work["total"] > off.work["total"]
    assert on.work["compute"] > off.work["compute"]
    # Every page came over: demand-fetched ones are the faults, the rest were pushed.
    assert on.faults == on.apf_not_present <= SMALL["postcopy"][1]["npages"]


# ---------------------------------------------------------------------- parameters

@pytest.mark.parametrize("name, kw, word", [
    ("memtouch", dict(latency_ns=-1), "latency_ns"),
    ("gleb2010", dict(latency_ns=-50_000), "latency_ns"),
    ("memtouch", dict(limit_pages=0), "limit_pages"),
    ("gleb2010", dict(limit_pages=0), "limit_pages"),
    ("memtouch", dict(no_such_knob=1), "no_such_knob"),
    ("postcopy", dict(npages=64, frobnicate=True), "frobnicate"),
    ("gleb2010", dict(fault_tasks=9), "fault_tasks"),
    ("postcopy", dict(rtt_ns=-1), "rtt_ns"),
    ("memtouch", dict(calc_thread="yes"), "calc_thread"),
])
def test_bad_parameters_name_the_parameter(name, kw, word):
    with pytest.raises(ParameterError, match=word):
        run_scenario(name, apf=True, seed=0, **kw)


def test_unknown_scenario_and_bad_apf_flag():
    with pytest.raises(ParameterError, match="no_such_scenario"):
        run_scenario("no_such_scenario", apf=True)
    with pytest.raises(ParameterError, match="apf"):
        run_scenario("memtouch", apf="on")
    with pytest.raises(ParameterError, match="no_such_scenario"):
        compare("no_such_scenario")
    assert set(SCENARIOS) == {"memtouch", "gleb2010", "postcopy", "syscall_read", "smp_memtouch", "lock_holder",
                              "overcommit"}
    assert apflab.run_scenario is run_scenario


def test_host_costs_and_instruction_time_are_scenario_parameters():
    base = run_scenario("memtouch", apf=True, seed=0, npages=16, limit_pages=8)
    dear = run_scenario("memtouch", apf=True, seed=0, npages=16, limit_pages=8,
                        host_costs={"hvc_ns": 10_000})
    slow = run_scenario("memtouch", apf=True, seed=0, npages=16, limit_pages=8, ns_per_insn=4)
    assert dear.params["host_costs"] == {"hvc_ns": 10_000}
    assert dear.breakdown["host"] > base.breakdown["host"]
    assert slow.breakdown["el0"] == 4 * base.breakdown["el0"]
    with pytest.raises(ParameterError, match="host_costs"):
        run_scenario("memtouch", apf=True, host_costs={"hvc_ns": -1})


def test_memtouch_allocate_starts_with_the_guests_own_first_touch_work():
    """allocate=True: round 0 has the guest kernel zero each fresh page (alloc_page) and the host
    sees first touches (no I/O); the memory limit pushes pages to swap, so round 1 faults on them."""
    kw = dict(npages=32, limit_pages=8, rounds=2, calc_thread=True, allocate=True)
    off, on = compare("memtouch", seed=0, **kw)
    for r in (off, on):
        mt = r.kernel["tasks"][0]
        assert mt["exited"] and mt["mismatches"] == 0 and mt["rounds_done"] == 2
        assert mt["syscalls"] >= 32                                  # one alloc_page per page, and more
        assert r.trace.tally("stage2_fault").get("absent", 0) >= 32  # round 0: first touches
        assert r.faults >= 32 - 8                  # round 1 reads the pages the limit pushed out
        assert r.compute_rate > 0
    plain = run_scenario("memtouch", apf=True, seed=0, **{**kw, "allocate": False})
    assert plain.kernel["tasks"][0]["syscalls"] < on.kernel["tasks"][0]["syscalls"]
    assert "compute rate" in on.table() and on.row()["compute_rate_per_ms"] == round(on.compute_rate, 3)
