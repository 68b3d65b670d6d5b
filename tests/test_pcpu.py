"""Physical CPUs (pcpu.py): vCPUs wait for a CPU (steal time), time slices, a synchronous
stall hands the CPU to another vCPU; the host's utilisation next to the guest's view."""

import pytest

import apflab

from test_smp import CPU_ON, HALTED_FAULT, mov64

WORKERS = "\n".join(
    ["_start:"]
    + sum(([f"adr x12, secondary"] + mov64("x0", CPU_ON) + [f"mov x1, #{i}", "mov x2, x12", "mov x3, x4",
                                                           "hvc #0"] for i in range(1, 4)), [])
    + ["bl work", "adr x5, done", "1: ldar x6, [x5]", "cmp x6, #3", "b.ne 1b", "brk #0",
       "work:", "mrs x9, mpidr_el1", "and x9, x9, #0xff", "adr x2, counters", "add x2, x2, x9, lsl #12",
       "mov x1, #0", "2: ldr x3, [x2]", "add x3, x3, #1", "str x3, [x2]", "add x1, x1, #1", "cmp x1, x4",
       "b.ne 2b", "ret",
       "secondary:", "mov x4, x0", "bl work", "adr x5, done",
       "4: ldaxr x6, [x5]", "add x6, x6, #1", "stlxr w9, x6, [x5]", "cbnz w9, 4b", "5: wfi", "b 5b",
       ".balign 8", "done: .quad 0", ".balign 4096", "counters: .space 4096 * 4"]) + "\n"


def workers(pcpus, slice_ns=100_000, iters=20_000):
    m = apflab.Machine(seed=0, vcpus=4, pcpus=pcpus, time_slice_ns=None if pcpus is None else slice_ns)
    m.load_asm(WORKERS)
    m.set_reg("x4", iters)
    m.run(10_000_000)
    for i in range(4):
        assert m.read_u64(m.symbols["counters"] + 4096 * i) == iters
    return m, m.cpu_report()


def test_enough_pcpus_means_no_steal():
    _, rep = workers(4)
    assert all(v["steal_ns"] == 0 for v in rep["vcpus"])
    assert rep["preemptions"] == 0


@pytest.mark.parametrize("pcpus", [1, 2])
def test_overcommit_shares_the_pcpus_and_accrues_steal(pcpus):
    """Four compute-bound vCPUs on fewer pCPUs: every pCPU's busy time is vCPU work, the
    work adds up, and the vCPUs wait (steal) for the rest."""
    m, rep = workers(pcpus)
    run = sum(v["run_ns"] for v in rep["vcpus"])
    busy = sum(p["busy_ns"] for p in rep["pcpus"])
    assert busy == run
    assert len(rep["pcpus"]) == pcpus and all(p["utilisation"] > 0.9 for p in rep["pcpus"])
    assert all(v["steal_ns"] > 0 for v in rep["vcpus"])
    assert rep["preemptions"] > 0
    for v in rep["vcpus"]:          # each lane tiles: its modes add up to its span of time
        spans, modes = m.trace.lane(v["vcpu"])
        assert sum(modes.values()) == spans[-1][1] - spans[0][0]


def test_fewer_pcpus_take_longer_in_virtual_time():
    times = [workers(p)[1]["elapsed_ns"] for p in (4, 2, 1)]
    assert times[0] < times[1] < times[2]


def test_the_time_slice_sets_the_preemptions():
    short = workers(1, slice_ns=20_000)[1]["preemptions"]
    long = workers(1, slice_ns=200_000)[1]["preemptions"]
    assert short > long


def test_same_seed_same_digest_with_pcpus():
    a, _ = workers(2)
    b, _ = workers(2)
    assert a.trace.digest() == b.trace.digest()


def test_a_synchronous_stall_releases_the_pcpu():
    """Two vCPUs on one pCPU: while vCPU 1 stalls for its page, vCPU 0 runs on that pCPU,
    so the host keeps it busy although the guest's vCPU 1 waits."""
    m = apflab.Machine(seed=0, vcpus=2, apf=False, pcpus=1, time_slice_ns=200_000)
    syms = m.load_asm(HALTED_FAULT)
    m.write_u64(syms["page"], 77)
    m.evict(syms["page"])
    m.run(5_000_000)
    rep = m.cpu_report()
    v0, v1 = rep["vcpus"]
    assert v1["stall_ns"] > 10_000
    assert rep["pcpus"][0]["busy_ns"] == v0["run_ns"] + v1["run_ns"]
    assert rep["pcpus"][0]["utilisation"] > 0.95


@pytest.mark.parametrize("kw,match", [
    ({"pcpus": 0}, "pcpus"), ({"pcpus": 2, "time_slice_ns": 0}, "time_slice_ns"),
    ({"time_slice_ns": 1000}, "needs pcpus"), ({"pcpus": 1.5}, "pcpus"),
])
def test_bad_pcpu_parameters(kw, match):
    with pytest.raises(apflab.ParameterError, match=match):
        apflab.Machine(seed=0, vcpus=2, **kw)


def test_trace_with_steal_saves_and_loads():
    m, _ = workers(2)
    back = apflab.Trace.from_json(m.trace.to_json())
    assert back.digest() == m.trace.digest()
    assert back.breakdown(vcpu=1)["steal"] == m.trace.breakdown(vcpu=1)["steal"] > 0


# ------------------------------------------------------------------ other tenants

def tenants(slice_ns=100_000, pcpus=2):
    from apflab.pcpu import HostScheduler, run_tenants
    sched = HostScheduler(pcpus, time_slice_ns=slice_ns)
    ms = []
    for seed, iters in ((0, 20_000), (1, 10_000)):
        m = apflab.Machine(seed=seed, vcpus=4, pcpus=sched)
        m.load_asm(WORKERS)
        m.set_reg("x4", iters)
        ms.append(m)
    rep = run_tenants(ms, 20_000_000)
    for m, iters in zip(ms, (20_000, 10_000)):
        assert [m.read_u64(m.symbols["counters"] + 4096 * i) for i in range(4)] == [iters] * 4
    return ms, rep


def test_two_vms_share_the_pcpus():
    ms, rep = tenants()
    run = sum(v["run_ns"] for vm in rep["vms"] for v in vm["vcpus"])
    assert sum(p["busy_ns"] for p in rep["pcpus"]) == run
    assert all(v["steal_ns"] > 0 for vm in rep["vms"] for v in vm["vcpus"])
    assert rep["vms"][0]["instructions"] > rep["vms"][1]["instructions"]   # twice the work
    assert all(p["utilisation"] > 0.9 for p in rep["pcpus"])


def test_tenants_are_deterministic():
    a, _ = tenants()
    b, _ = tenants()
    assert [m.trace.digest() for m in a] == [m.trace.digest() for m in b]


STALLER = """
_start:
    adr x4, page
    ldr x7, [x4]              // swapped out: a synchronous page-in
    brk #0
.balign 4096
page: .quad 5
"""
SPINNER = """
_start:
    mov x1, #0
1:  add x1, x1, #1
    cmp x1, x4
    b.ne 1b
    brk #0
"""


def test_a_vm_stalled_in_a_synchronous_fault_gives_its_pcpu_to_another_vm():
    """The host's view of a stall: one pCPU, a faulting VM and a computing VM. While the first
    waits for its page the second runs, so the pCPU stays busy with guest work."""
    from apflab.pcpu import HostScheduler, run_tenants
    sched = HostScheduler(1, time_slice_ns=1_000_000)
    faulting = apflab.Machine(seed=0, apf=False, pcpus=sched)
    syms = faulting.load_asm(STALLER)
    faulting.evict(syms["page"])
    computing = apflab.Machine(seed=1, pcpus=sched)
    computing.load_asm(SPINNER)
    computing.set_reg("x4", 100_000)
    rep = run_tenants([faulting, computing], 5_000_000)
    assert faulting.reg("x7") == 5
    (f,), (c,) = rep["vms"][0]["vcpus"], rep["vms"][1]["vcpus"]
    assert f["stall_ns"] > 10_000
    assert rep["pcpus"][0]["busy_ns"] == f["run_ns"] + c["run_ns"]      # the stall is not busy
    assert c["steal_ns"] < f["stall_ns"]       # the computing VM ran during the stall


def test_run_tenants_needs_one_shared_scheduler():
    from apflab.pcpu import run_tenants
    a = apflab.Machine(seed=0, pcpus=1)
    b = apflab.Machine(seed=0, pcpus=1)
    for m in (a, b):
        m.load_asm(SPINNER)
    with pytest.raises(apflab.ParameterError, match="share one HostScheduler"):
        run_tenants([a, b], 1000)


def test_run_tenants_budget_names_every_vm():
    from apflab.pcpu import HostScheduler, run_tenants
    sched = HostScheduler(1)
    ms = [apflab.Machine(seed=i, pcpus=sched) for i in range(2)]
    for m in ms:
        m.load_asm("_start:\n1: b 1b\n")
    with pytest.raises(apflab.BudgetExceeded, match="VM 0: vCPU 0 running.*VM 1: vCPU 0 running"):
        run_tenants(ms, 50_000)
