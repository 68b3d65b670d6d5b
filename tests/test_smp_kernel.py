"""The guest mini-kernel on several vCPUs: secondaries brought up with PSCI CPU_ON, a run
queue per CPU, per-vCPU APF clients, the ticket spinlock, bad inputs. Guest-level: the
kernel's own counters and the host's trace say what happened."""

import re
from pathlib import Path

import pytest

import apflab
from apflab import guest, scenarios
from apflab.errors import GuestError, ParameterError

KERNEL = Path(guest.__file__).resolve().parent / "kernel.S"


def boot(tasks, vcpus, *, machine_vcpus=None, run=True, budget=50_000_000, **build):
    m = apflab.Machine(seed=0, vcpus=machine_vcpus or vcpus)
    syms = m.load_asm(guest.build_source(tasks, vcpus=vcpus, **build))
    guest.pin_kernel(m, syms)
    guest.attach(m, syms)
    if run:
        m.run(max_instructions=budget)
        guest.check_no_panic(m, syms)
    return m, syms


# ---------------------------------------------------------------------------- bring-up

@pytest.mark.parametrize("vcpus", [2, 4])
def test_secondaries_come_up_and_each_cpu_runs_its_own_tasks(vcpus):
    tasks = [guest.yield_loop(20) for _ in range(2 * vcpus)]
    m, syms = boot(tasks, vcpus)
    ks = guest.read_kernel_state(m, syms)
    assert ks["stop_reason"] == "all tasks exited"
    assert ks["cpus_online"] == (1 << vcpus) - 1
    assert [c["cpu_id"] for c in ks["cpus"]] == list(range(vcpus))
    for t in ks["tasks"]:
        assert t["exited"] and t["done"] == 20 and t["cpu"] == t["index"] % vcpus
    for c in range(vcpus):
        log = set(guest.read_kernel_state(m, syms, cpu=c)["sched_log"]) - {0xFF}
        # CPU c switched to its own tasks, every one of them, and to no other
        assert log == {i for i in range(2 * vcpus) if i % vcpus == c}
    # guest.attach: the host charges each vCPU's user time to the task running on that vCPU
    for c in range(vcpus):
        spans = m.trace.lane(c)[0]
        assert {sp[3] for sp in spans if sp[2] == "el0"} == {i for i in range(2 * vcpus) if i % vcpus == c}
    # every vCPU ran guest code
    assert [r["vcpu"] for r in m.cpu_report()["vcpus"] if r["run_ns"] > 0] == list(range(vcpus))


def test_a_task_can_be_placed_on_a_cpu():
    tasks = [guest.yield_loop(5), guest.TaskSpec("yield_loop", [5], cpu=1), guest.yield_loop(5)]
    m, syms = boot(tasks, 2)
    assert [t["cpu"] for t in guest.read_kernel_state(m, syms)["tasks"]] == [0, 1, 0]


def test_more_vcpus_than_tasks_is_fine_the_extra_cpus_idle():
    """A choice: a CPU with no task idles (WFI, woken by its tick) rather than being refused."""
    m, syms = boot([guest.yield_loop(10), guest.yield_loop(10)], 4)
    ks = guest.read_kernel_state(m, syms)
    assert ks["stop_reason"] == "all tasks exited" and ks["cpus_online"] == 0b1111
    assert ks["cpus"][3]["ctx_switches"] == 0 and ks["cpus"][3]["idle_entries"] >= 1


def test_the_last_task_exiting_on_a_secondary_stops_the_run_through_cpu0():
    """vCPU 0's task is short, vCPU 1's long: vCPU 1 sees the end and sends CPU 0 the stop IPI
    (the harness stops at CPU 0's brk #0)."""
    m, syms = boot([guest.yield_loop(2), guest.compute(iters=50, limit=200)], 2)
    ks = guest.read_kernel_state(m, syms)
    assert ks["stop_reason"] == "all tasks exited"
    assert ks["tasks"][1]["exit_ns"] > ks["tasks"][0]["exit_ns"]
    assert ks["stop_ns"] >= ks["tasks"][1]["exit_ns"]
    # the stop IPI (SGI 2) was acknowledged on vCPU 0, and only there
    assert [r.get("vcpu") for r in m.trace.select("irq_ack", intid=2)] == [0]
    pc = m.reg("pc")                                       # vCPU 0 stopped at its brk #0
    assert syms["kernel_stopped"] < pc < syms["kernel_stop_remote"] and "brk" in m.disasm(pc)[0][1]


def test_one_vcpu_kernel_starts_no_secondary():
    m, syms = boot([guest.yield_loop(3)], 1)
    ks = guest.read_kernel_state(m, syms)
    assert ks["nr_cpus"] == 1 and ks["cpus_online"] == 1 and m.psci is None


# ---------------------------------------------------------------------------- APF per vCPU

@pytest.mark.parametrize("vcpus", [2, 4])
def test_page_ready_goes_to_the_vcpu_that_faulted(vcpus):
    r = scenarios.run_scenario("smp_memtouch", apf=True, vcpus=vcpus, npages=16, limit_pages=8)
    ks, tr = r.kernel, r.trace
    nps, readies = tr.select("apf_not_present"), tr.select("apf_page_ready")
    assert nps and len(readies) == len(nps)
    for rec in nps + readies:
        assert rec.get("token") & 0xFFF == rec.get("vcpu")        # the token names the faulting vCPU
    for c in ks["cpus"]:
        assert c["apf_enabled"] and c["apf_not_present"] == c["apf_page_ready"] > 0
        assert c["apf_not_present"] == len([x for x in nps if x.get("vcpu") == c["cpu"]])
    for t in ks["tasks"]:                                  # each CPU parked its own walker
        assert t["parked"] == ks["cpus"][t["cpu"]]["apf_not_present"]


@pytest.mark.parametrize("vcpus", [2, 4])
@pytest.mark.parametrize("design", scenarios.DESIGNS)
def test_every_design_works_with_several_vcpus(design, vcpus):
    """APF off ("sync") and on with each delivery design: every walk completes with its pages
    intact (a corrupted page raises), no task is left waiting for a page (no lost wake-up)."""
    kw = dict(vcpus=vcpus, npages=16, rounds=2, limit_pages=8, calc_thread=vcpus <= 2)
    if design == "sync":
        r = scenarios.run_scenario("smp_memtouch", apf=False, **kw)
    else:
        r = scenarios.run_scenario("smp_memtouch", apf=True, delivery=design, **kw)
    ks = r.kernel
    walkers = ks["tasks"][:vcpus]
    assert all(t["exited"] and t["mismatches"] == 0 and t["touches"] == 32 for t in walkers)
    assert not any(t["state"] == "apf_wait" for t in ks["tasks"])
    assert len(r.vcpus) == vcpus and all(v["run_ns"] > 0 for v in r.vcpus)
    if design in ("sdei", "irq", "abort"):
        assert all(c["apf_not_present"] == c["apf_page_ready"] > 0 for c in ks["cpus"])
        assert r.stall_ns == 0
    elif design == "sync":
        assert r.stall_ns > 0 and r.apf_not_present == 0
    else:                                                   # halt: the host holds the vCPU
        assert r.trace.counts.get("apf_halt", 0) > 0


def test_same_seed_same_trace_digest_with_four_vcpus():
    a = scenarios.run_scenario("smp_memtouch", apf=True, vcpus=4, npages=8, limit_pages=8, seed=3)
    b = scenarios.run_scenario("smp_memtouch", apf=True, vcpus=4, npages=8, limit_pages=8, seed=3)
    assert a.trace.digest() == b.trace.digest() and a.elapsed_ns == b.elapsed_ns


# ---------------------------------------------------------------------------- the spinlock

@pytest.mark.parametrize("vcpus", [2, 4])
def test_the_kernel_lock_gives_mutual_exclusion(vcpus):
    """Tasks on every CPU bump lock_counter under the lock with a load ... store 3000
    iterations apart: the count is exact, and the CPUs did wait for each other."""
    tasks = [guest.lockloop(30, work=3000, think=300, touch=False) for _ in range(vcpus)]
    m, syms = boot(tasks, vcpus)
    ks = guest.read_kernel_state(m, syms)
    assert ks["lock"]["counter"] == 30 * vcpus
    assert ks["lock"]["next"] == ks["lock"]["owner"] == 30 * vcpus and ks["lock"]["holder"] == -1
    assert sum(c["lock_contended"] for c in ks["cpus"]) > 0
    assert ks["lock"]["spin_ns"] > 0


def test_without_the_lock_the_same_increments_are_lost():
    """The control: the same calls with LT_NOLOCK lose updates, so the test above can fail."""
    tasks = [guest.lockloop(30, work=3000, think=300, touch=False, nolock=True) for _ in range(2)]
    m, syms = boot(tasks, 2)
    ks = guest.read_kernel_state(m, syms)
    assert ks["lock"]["counter"] < 60
    assert sum(c["lock_acquired"] for c in ks["cpus"]) == 0


def test_per_cpu_variables_are_only_reached_through_the_per_cpu_macros():
    """kernel.S: a label inside the per-CPU block is never addressed as a shared one (adr,
    ldr_l, str_l, inc_l), which would make every CPU use CPU 0's copy."""
    src = KERNEL.read_text()
    block = src[src.index("\npercpu0:"):src.index("percpu0_end:")]
    percpu = set(re.findall(r"^([a-z_0-9]+):", block, re.M)) - {"percpu0"}
    bad = []
    for n, line in enumerate(src.splitlines(), 1):
        code = line.split("//")[0]
        m = re.match(r"\s*(adr|ldr_l|str_l|inc_l)\s+(.*)", code)
        if not m:
            continue
        args = [a.strip() for a in m.group(2).split(",")]
        sym = args[0] if m.group(1) == "inc_l" else args[1]
        if sym in percpu:
            bad.append((n, line.strip()))
    assert len(percpu) > 30 and not bad


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("vcpus", [0, 9, True, 2.0, None])
def test_build_source_vcpus_out_of_range(vcpus):
    with pytest.raises(ParameterError, match="vcpus"):
        guest.build_source([guest.yield_loop(1)], vcpus=vcpus)


def test_a_task_on_a_cpu_that_does_not_exist():
    with pytest.raises(ParameterError, match=r"task 1 \(yield_loop\): cpu must be an int in \[0, 2\)"):
        guest.build_source([guest.yield_loop(1), guest.TaskSpec("yield_loop", [1], cpu=2)], vcpus=2)


def test_a_kernel_for_two_cpus_on_a_one_vcpu_machine_panics_clearly():
    """No PSCI on a one-vCPU machine: CPU_ON is NOT_SUPPORTED, the kernel panics and says so."""
    m, syms = boot([guest.yield_loop(1), guest.yield_loop(1)], 2, machine_vcpus=1, run=False)
    m.run(max_instructions=5_000_000)
    with pytest.raises(GuestError, match="secondary CPU did not come up"):
        guest.check_no_panic(m, syms)
    assert m.read_u64(syms["cpu_on_ret"] + 8) == (1 << 64) - 1     # NOT_SUPPORTED


def test_read_kernel_state_of_a_cpu_the_kernel_does_not_have():
    m, syms = boot([guest.yield_loop(1)], 2, run=False)
    with pytest.raises(ParameterError, match=r"cpu must be an int in \[0, 2\)"):
        guest.read_kernel_state(m, syms, cpu=2)
    with pytest.raises(ParameterError, match="not a per-CPU variable"):
        guest.percpu_addr(syms, "exited_mask", 1)


@pytest.mark.parametrize("kw, match", [
    ({"vcpus": 0}, "vcpus=0"), ({"vcpus": 9}, "vcpus=9"),
    ({"vcpus": 5, "calc_thread": True}, "8 task slots"),
    ({"time_slice_ns": 100_000}, "needs pcpus"), ({"pcpus": 0}, "pcpus=0"),
])
def test_smp_memtouch_bad_parameters(kw, match):
    with pytest.raises(ParameterError, match=match):
        scenarios.build("smp_memtouch", apf=True, **kw)


def test_a_panic_on_a_secondary_stops_the_run_through_cpu0():
    """A task on CPU 1 executes an undefined instruction: CPU 1 panics, parks and sends CPU 0
    the stop IPI; the run ends at CPU 0's brk #0 and the panic names CPU 1 (no hang)."""
    bad = "bad_task:\n\t.inst 0x00000000\n\tb bad_task\n"
    tasks = [guest.compute(iters=50, limit=100_000), guest.TaskSpec("bad_task", [], cpu=1)]
    m, syms = boot(tasks, 2, run=False, extra_source=bad)
    m.run(max_instructions=20_000_000)
    ks = guest.read_kernel_state(m, syms)
    assert ks["panic"]["reason"] == "bad synchronous exception from EL0" and ks["panic"]["cpu"] == 1
    assert ks["panic"]["task"] == 1 and not ks["tasks"][0]["exited"]
    with pytest.raises(GuestError, match="bad synchronous exception"):
        guest.check_no_panic(m, syms)
