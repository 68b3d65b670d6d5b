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
