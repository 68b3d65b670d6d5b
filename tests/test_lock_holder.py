"""lock_holder: a vCPU stalled in a kernel-mode fault while it holds the guest's spinlock
makes the other vCPUs spin; the paravirtual "vCPU preempted" flag lets them block instead.

Every run checks the lock itself (the measure raises unless lock_counter equals the calls
made) and the pages read under it (a wrong value raises)."""

import pytest

from apflab import scenarios
from apflab.errors import ParameterError

SMALL = dict(npages=8, rounds=1)


@pytest.mark.parametrize("apf", [False, True])
def test_the_other_vcpus_spin_while_the_holder_stalls(apf):
    r = scenarios.run_scenario("lock_holder", apf=apf, **SMALL)
    lock = r.lock
    assert lock["counter"] == 2 * 8 and lock["acquired"] == 16
    assert lock["contended"] > 0 and lock["spin_ns"] > 0
    assert lock["spin_ns"] == sum(lock["spin_ns_per_vcpu"]) and all(s > 0 for s in lock["spin_ns_per_vcpu"])
    assert lock["waiters_blocked"] == 0 and lock["pv_published"] == [False, False]
    # kernel-mode faults: no design made them asynchronous, the holders stalled
    assert r.stall_ns > 0 and r.apf_not_present == 0
    assert all(v["stall_ns"] > 0 for v in r.vcpus)
    # a waiter spins for a good part of a page-in (tens of µs on the SSD model) per contention
    assert lock["spin_ns"] > 20_000 * lock["contended"] // 2


@pytest.mark.parametrize("apf", [False, True])
def test_pv_lock_with_the_stall_flag_turns_spinning_into_other_work(apf):
    off = scenarios.run_scenario("lock_holder", apf=apf, **SMALL)
    on = scenarios.run_scenario("lock_holder", apf=apf, pv_lock=True, **SMALL)
    assert on.params["pv_lock"] is True and on.params["pv_flag"] == "preempted+stalled"
    assert on.lock["pv_published"] == [True, True]
    assert on.lock["counter"] == off.lock["counter"] == 16
    assert on.lock["waiters_blocked"] > 0 and on.lock["wakeup_ipis"] > 0
    assert on.lock["spin_ns"] < off.lock["spin_ns"] // 10
    assert on.work["compute"] > off.work["compute"]        # the waiters' vCPUs ran the compute tasks
    assert [t["lock_blocks"] for t in on.kernel["tasks"][:2]] != [0, 0]


def test_kvms_preempted_flag_alone_is_never_set_without_overcommit():
    """pv_flag='preempted' is KVM's meaning (lost the physical CPU): with a physical CPU per
    vCPU nobody is ever preempted, so nothing blocks and the waiters spin."""
    r = scenarios.run_scenario("lock_holder", apf=True, pv_lock=True, pv_flag="preempted", **SMALL)
    assert r.lock["pv_published"] == [True, True]
    assert r.lock["waiters_blocked"] == 0 and r.lock["spin_ns"] > 0
    assert not r.trace.select("pv_preempted", value=1)


def test_overcommit_makes_lock_holder_preemption_worse():
    """One physical CPU for two vCPUs: a waiter may spin through the holder's whole wait for
    the physical CPU (steal time), so the spin time grows."""
    alone = scenarios.run_scenario("lock_holder", apf=True, **SMALL)
    shared = scenarios.run_scenario("lock_holder", apf=True, pcpus=1, time_slice_ns=200_000, **SMALL)
    assert sum(v["steal_ns"] for v in shared.vcpus) > 0
    assert shared.lock["spin_ns"] > alone.lock["spin_ns"]


def test_every_design_runs_lock_holder():
    res = scenarios.compare_designs("lock_holder", npages=4, rounds=1)
    assert set(res) == set(scenarios.DESIGNS)
    for d, r in res.items():
        assert r.lock["counter"] == 8, d
        assert r.lock["spin_ns"] > 0, d


def test_compare_gives_apf_off_then_on_with_the_lock_figures():
    off, on = scenarios.compare("lock_holder", vcpus=3, **SMALL)
    assert (off.apf, on.apf) == (False, True)
    assert len(off.lock["spin_ns_per_vcpu"]) == len(on.vcpus) == 3
    assert off.row()["lock.spin_ns"] == off.lock["spin_ns"] and "vcpu2.stall_ns" in on.row()
    assert "lock spin (total)" in on.table()


def test_same_seed_same_digest():
    a = scenarios.run_scenario("lock_holder", apf=True, pv_lock=True, seed=5, **SMALL)
    b = scenarios.run_scenario("lock_holder", apf=True, pv_lock=True, seed=5, **SMALL)
    assert a.trace.digest() == b.trace.digest() and a.lock == b.lock


def test_parameters_are_documented_and_echoed():
    doc = scenarios.parameters("lock_holder")
    for k in ("vcpus", "pv_lock", "pv_flag", "work", "think", "pcpus", "time_slice_ns"):
        assert k in doc and doc[k]["rule"]
    assert "beyond KVM" in doc["pv_flag"]["rule"]
    assert "vcpus" in scenarios.parameters("smp_memtouch")


@pytest.mark.parametrize("kw, match", [
    ({"vcpus": 1}, "vcpus=1"), ({"vcpus": 5}, "vcpus=5"), ({"pv_lock": "yes"}, "pv_lock='yes'"),
    ({"pv_flag": "halted"}, "pv_flag='halted'"), ({"npages": 0}, "npages=0"),
    ({"time_slice_ns": 50_000}, "needs pcpus"), ({"spin": 3}, "unknown parameter 'spin'"),
])
def test_bad_parameters(kw, match):
    with pytest.raises(ParameterError, match=match):
        scenarios.build("lock_holder", apf=True, **kw)
