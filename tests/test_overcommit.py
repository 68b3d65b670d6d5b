"""The ``overcommit`` scenario: two VMs share the host's physical CPUs; A faults (and
computes), B computes. The accounting adds up, runs are deterministic, every design works,
and APF's gain differs between the guest's view and the host's."""

import pytest

from apflab import scenarios as S
from apflab.errors import ParameterError

SMALL = dict(duration_ns=4_000_000, time_slice_ns=1_000_000, npages=64, limit_pages=16)


def run(design, **kw):
    p = {**SMALL, **kw}
    if design == "sync":
        return S.run_scenario("overcommit", apf=False, **p)
    return S.run_scenario("overcommit", apf=True, delivery=design, **p)


def check_accounts(r, duration_ns):
    """Per vCPU: run + stall + steal + idle covers its time from power-on to the end of the run;
    the pCPUs were busy exactly while vCPUs ran."""
    run_total = 0
    for vm in r.vms:
        for c in vm["vcpus"]:
            assert c["run_ns"] + c["stall_ns"] + c["steal_ns"] + c["idle_ns"] == c["end_ns"] - c["start_ns"]
            assert c["end_ns"] >= duration_ns
            run_total += c["run_ns"]
        assert vm["elapsed_ns"] == max(c["end_ns"] for c in vm["vcpus"])
        assert vm["instructions"] > 0 and vm["work"]["total"] > 0
    assert r.vms[0]["vcpus"][0]["start_ns"] == 0
    assert sum(p["busy_ns"] for p in r.pcpus) == run_total


@pytest.mark.parametrize("design", S.DESIGNS)
def test_accounting_adds_up_for_every_design(design):
    r = run(design)
    assert [v["vm"] for v in r.vms] == ["A", "B"]
    check_accounts(r, SMALL["duration_ns"])
    assert len(r.pcpus) == 1 and 0.95 < r.pcpus[0]["utilisation"] <= 1.0
    assert r.vms[1]["faults"] == 0 and r.vms[0]["faults"] > 0
    assert r.delivery == ("sync" if design == "sync" else design)
    if design in ("sdei", "irq", "abort"):
        assert r.apf_not_present > 0
    assert r.summary()["params"]["pcpus"] == 1
    text = r.table()
    assert "VM A: work" in text and "VM B: work" in text and "pCPU 0: utilisation" in text


def test_same_seed_same_digest_and_another_seed_differs():
    a, b = run("sdei"), run("sdei")
    assert a.trace.digest() == b.trace.digest()
    assert [v["trace_digest"] for v in a.vms] == [v["trace_digest"] for v in b.vms]
    c = run("sdei", seed=1)
    assert c.vms[0]["trace_digest"] != a.vms[0]["trace_digest"]


def test_apf_helps_the_faulting_vm_and_takes_pcpu_time_from_the_other():
    """One pCPU: without APF, A's stalls hand the pCPU to B; with APF, A keeps it and runs
    its compute task through its faults. The guest gains much more than the host."""
    off, on = run("sync"), run("sdei")
    g = S.overcommit_gains(off, on)
    assert on.vms[0]["work"]["total"] > 2 * off.vms[0]["work"]["total"]      # A gains
    assert on.vms[1]["work"]["total"] < 0.8 * off.vms[1]["work"]["total"]    # B loses
    assert g["guest_view"] > 2 and g["host_view"] < 1.1
    a_off, a_on = off.vms[0]["vcpus"][0], on.vms[0]["vcpus"][0]
    assert a_off["stall_ns"] > 0 and a_on["stall_ns"] < a_off["stall_ns"]
    assert on.vms[1]["vcpus"][0]["steal_ns"] > off.vms[1]["vcpus"][0]["steal_ns"]


def test_with_a_pcpu_each_apf_fills_the_idle_pcpu():
    """Two pCPUs: nobody can use A's pCPU while A stalls, so APF's gain is the host's too."""
    off, on = run("sync", pcpus=2), run("sdei", pcpus=2)
    assert on.pcpus[0]["utilisation"] > off.pcpus[0]["utilisation"] + 0.2
    assert on.vms[1]["work"]["total"] == off.vms[1]["work"]["total"]         # B is unaffected
    assert S.overcommit_gains(off, on)["host_view"] > 1.1


def test_parameters_are_checked_and_documented():
    spec = S.parameters("overcommit")
    for name in ("pcpus", "time_slice_ns", "npages", "latency_ns", "store", "duration_ns"):
        assert name in spec
    with pytest.raises(ParameterError, match="pcpus"):
        S.build("overcommit", pcpus=0)
    with pytest.raises(ParameterError, match="time_slice_ns"):
        S.build("overcommit", time_slice_ns=10)
    with pytest.raises(ParameterError, match="vcpus"):
        S.build("overcommit", vcpus=5)
    with pytest.raises(ParameterError, match="unknown parameter"):
        S.build("overcommit", calc_thread=True)
    off = run("sync")
    with pytest.raises(ParameterError, match="first run with APF off"):
        S.overcommit_gains(off, off)
    with pytest.raises(ParameterError, match="two overcommit results"):
        S.overcommit_gains(off, S.run_scenario("memtouch", apf=True, npages=8, limit_pages=4))


@pytest.mark.parametrize("design", ["sync", "sdei", "halt"])
def test_two_vcpus_per_vm_on_two_pcpus(design):
    """The SMP guest kernel: each VM has two vCPUs (A: a walker and a compute task on each),
    four vCPUs on two pCPUs. The same accounts hold for every vCPU."""
    r = run(design, vcpus=2, pcpus=2)
    assert [len(v["vcpus"]) for v in r.vms] == [2, 2] and len(r.pcpus) == 2
    check_accounts(r, SMALL["duration_ns"])
    assert set(r.vms[0]["work"]) == {"memtouch0", "memtouch1", "compute0", "compute1", "total"}
    assert all(c["steal_ns"] > 0 for v in r.vms for c in v["vcpus"])


def test_compare_designs_runs_every_design():
    res = S.compare_designs("overcommit", **SMALL, designs=("sync", "irq"))
    assert set(res) == {"sync", "irq"} and not res["sync"].apf and res["irq"].apf
