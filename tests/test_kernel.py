"""Guest-level tests of the mini-kernel (apflab/guest): scheduling, syscalls, idle,
the SDEI probe, APF discovery, and async page faults parking and waking tasks."""

import pytest

from apflab import GuestError, Machine
from apflab import guest
from apflab.guest import PAGE_SIZE, RAM_BASE

BUDGET = 30_000_000


def boot(tasks, *, machine_kw=None, pin=True, **build_kw):
    m = Machine(seed=0, **(machine_kw or {}))
    syms = m.load_asm(guest.build_source(tasks, **build_kw))
    if pin:
        guest.pin_kernel(m, syms)
    guest.attach(m, syms)
    return m, syms


def run(m, syms, budget=BUDGET):
    m.run(max_instructions=budget)
    st = guest.read_kernel_state(m, syms)
    assert st["panic"] is None, st["panic"]
    return st


def run_until(m, syms, cond, budget=BUDGET):
    """Run until cond(kernel state) holds (checked between vCPU slices); False if the guest stopped."""
    stop = m.host.run(budget, until=lambda: cond(guest.read_kernel_state(m, syms)))
    return stop is None


# ---------------------------------------------------------------- scheduling and syscalls

def test_two_compute_tasks_share_the_cpu_by_timer_preemption():
    m, syms = boot([guest.compute(iters=50, report=4, limit=1500)] * 2, tick_ns=20_000)
    st = run(m, syms)
    assert st["stop_reason"] == "all tasks exited"
    assert [t["work"] for t in st["tasks"]] == [1500, 1500]
    assert [t["units"] for t in st["tasks"]] == [1500, 1500]
    assert all(t["exited"] for t in st["tasks"])
    assert st["ticks"] >= 10
    # preempted many times: each task was switched in repeatedly, alternating
    assert all(t["switches"] >= 5 for t in st["tasks"])
    log = st["sched_log"]
    assert log[:8] == [0, 1, 0, 1, 0, 1, 0, 1]
    assert st["total_work"] == 3000
    assert st["current_task"] is not None     # the last task to run called exit


def test_yield_alternates_strictly_without_a_tick():
    m, syms = boot([guest.yield_loop(6), guest.yield_loop(6)], tick_ns=0)
    st = run(m, syms)
    assert st["ticks"] == 0
    assert [t["done"] for t in st["tasks"]] == [6, 6]
    assert [t["pid"] for t in st["tasks"]] == [0, 1]
    assert [t["work"] for t in st["tasks"]] == [6, 6]
    # 0,1,0,1,... : every yield hands the CPU to the other task
    log = st["sched_log"]
    assert len(log) >= 12 and all(log[i] == i % 2 for i in range(12))


def test_stop_mask_ends_the_run_while_unmeasured_tasks_still_run():
    tasks = [guest.compute(iters=20, report=8, measured=False),
             guest.compute(iters=20, report=8, limit=400)]
    m, syms = boot(tasks, tick_ns=20_000)
    st = run(m, syms)
    assert st["stop_reason"] == "stop_mask tasks exited"
    forever, measured = st["tasks"]
    assert measured["exited"] and measured["work"] == 400
    assert forever["state"] == "runnable" and forever["work"] > 0
    assert st["stop_ns"] >= measured["exit_ns"]


def test_returning_from_the_entry_function_exits_and_bad_syscalls_get_enosys():
    extra = """
ret_task:
    mov x19, x0
    mov x8, #77             // no such syscall
    svc #0
    str x0, [x19, #64]      // result slot 8
    mov x0, #0
    ret                     // x30 = task_exit_stub: exit(0)
"""
    m, syms = boot([guest.TaskSpec("ret_task", [])], tick_ns=0, extra_source=extra)
    st = run(m, syms)
    t = st["tasks"][0]
    assert t["exited"] and t["exit_code"] == 0
    assert t["out"][0] == (-38) & (2**64 - 1)
    assert st["stop_reason"] == "all tasks exited"


def test_idle_wfi_wakes_on_the_timer():
    m, syms = boot([guest.sleeper(300_000, count=2)], tick_ns=50_000)
    st = run(m, syms)
    t = st["tasks"][0]
    assert t["exited"] and t["sleeps"] == 2
    assert t["t_end"] - t["t_start"] >= 600_000
    assert st["idle_entries"] >= 2
    assert 0xFF in st["sched_log"]               # the CPU went idle ...
    assert m.trace.breakdown()["halted"] > 0     # ... in wfi, woken by the tick


def test_sleep_without_a_tick_returns_at_once():
    m, syms = boot([guest.sleeper(1000, count=1)], tick_ns=0)
    st = run(m, syms)
    assert st["tasks"][0]["exited"] and st["idle_entries"] == 0


def test_a_task_fault_is_a_recorded_kernel_panic():
    extra = """
bad_task:
    brk #7
"""
    m, syms = boot([guest.TaskSpec("bad_task", [])], tick_ns=0, extra_source=extra)
    m.run(max_instructions=BUDGET)
    st = guest.read_kernel_state(m, syms)
    p = st["panic"]
    assert p["reason"] == "bad synchronous exception from EL0"
    assert p["esr"] >> 26 == 0x3C and p["esr"] & 0xFFFF == 7
    assert p["elr"] == syms["bad_task"] and p["task"] == 0
    with pytest.raises(GuestError, match="guest kernel panic"):
        guest.check_no_panic(m, syms)


# ---------------------------------------------------------------- SDEI and APF discovery

SDEI_CALL_ORDER = ["VERSION", "PRIVATE_RESET", "SHARED_RESET", "EVENT_GET_INFO", "EVENT_GET_INFO",
                   "EVENT_REGISTER", "EVENT_ENABLE", "PE_UNMASK"]


def test_sdei_probe_follows_linux_and_is_recorded():
    m, syms = boot([guest.compute(iters=10, limit=10)], tick_ns=0)
    st = run(m, syms)
    s = st["sdei"]
    assert (s["major"], s["minor"], s["vendor"]) == (1, 1, 0x4B564D)
    assert s["probe_done"] == 0xFF and all(s["steps"].values())
    assert s["results"]["get_info_priority"] == 0      # normal priority
    assert s["results"]["get_info_type"] == 0          # private event
    assert s["results"]["register"] == 0 and s["results"]["enable"] == 0
    assert s["event"] == 1
    calls = [r.get("call") for r in m.trace.select("sdei_call")]
    assert calls == SDEI_CALL_ORDER
    snap = m.sdei.snapshot()
    assert not snap["masked"]
    ev = snap["events"][1]
    assert ev["registered"] and ev["enabled"] and not ev["running"]
    assert ev["entry"] == syms["sdei_apf_entry"] and ev["ep_arg"] == syms["apf_data"]


def test_apf_discovery_values_are_recorded():
    m, syms = boot([guest.compute(iters=10, limit=10)], tick_ns=0)
    st = run(m, syms)
    a = st["apf"]
    assert a["features"] & (1 << 2)
    assert (a["version"], a["slots"], a["sdei_event"], a["irq"]) == (0x010000, 64, 1, 19)
    assert a["enable_ret"] == 0 and a["enabled"]
    assert m.apf.enabled and m.apf.block_gpa == syms["apf_data"]
    assert syms["apf_data"] % 64 == 0
    assert m.read_u32(syms["apf_data"] + 60) == 1      # host's "enabled" word


@pytest.mark.parametrize("how", ["host_hides_feature", "config_off"])
def test_no_apf_when_hidden_or_disabled(how):
    m = Machine(seed=0)
    if how == "host_hides_feature":
        m.apf.allowed = False
    src = guest.build_source([guest.compute(iters=10, limit=10)], tick_ns=0,
                             apf_enable=(how != "config_off"))
    syms = m.load_asm(src)
    st = run(m, syms)
    a = st["apf"]
    assert not a["enabled"] and a["sdei_event"] == -1 and a["irq"] == -1
    assert (a["features"] & 4) == (0 if how == "host_hides_feature" else 4)
    assert not m.apf.enabled
    # Only the driver part of the SDEI probe: version, resets, unmask; nothing registered.
    assert st["sdei"]["probe_done"] == 0x87 and st["sdei"]["event"] == -1
    assert m.sdei.snapshot()["events"][1]["state"] == 0


# ---------------------------------------------------------------- async page faults

LIMIT_PAGES = 40     # resident + in-flight cap; the kernel pins ~13 of them


def apf_machine(npages=48, rounds=3, compute=True, apf=True, limit_pages=LIMIT_PAGES, **kw):
    tasks = [guest.memtouch(npages, rounds=rounds, batch=8)]
    if compute:
        tasks.append(guest.compute(iters=40, report=8, measured=False))
    return boot(tasks, machine_kw={"memory_limit": limit_pages * PAGE_SIZE},
                tick_ns=100_000, apf_enable=apf, **kw)


def test_apf_parks_the_faulting_task_and_the_other_task_runs_meanwhile():
    m, syms = apf_machine()
    # Run until memtouch is parked by a "page not present" ...
    assert run_until(m, syms, lambda s: s["tasks"][0]["state"] == "apf_wait")
    st = guest.read_kernel_state(m, syms)
    work_parked = st["tasks"][1]["work"]
    table = st["apf"]["table"]
    assert [e["kind"] for e in table] == ["waiter"] and table[0]["task"] == 0
    # ... then until "page ready" has woken it: compute worked in between.
    assert run_until(m, syms, lambda s: s["tasks"][0]["state"] != "apf_wait")
    st = guest.read_kernel_state(m, syms)
    assert st["tasks"][1]["work"] > work_parked
    assert st["tasks"][0]["wakeups"] == 1 and st["apf"]["table"] == []

    st = run(m, syms)
    mt, cp = st["tasks"]
    a = st["apf"]
    assert st["stop_reason"] == "stop_mask tasks exited"
    assert mt["exited"] and mt["mismatches"] == 0 and mt["rounds_done"] == 3 and mt["work"] == 3 * 48
    # every notification parked the task once and woke it once: no lost wake-ups
    assert a["not_present"] > 10
    assert mt["parked"] == mt["wakeups"] == a["not_present"] == a["page_ready"]
    assert a["dummies"] == a["dummy_hits"] == a["table_full"] == a["bad_ready"] == 0
    assert a["table"] == [] and a["shared"] == {"reason": 0, "token": 0}
    # the SDEI handler resumed through the IRQ vector, which took its reschedule IPI
    assert st["irq_resched"] == a["not_present"]
    assert cp["work"] > 0 and cp["parked"] == 0
    # the host agrees: nothing outstanding, nothing stalled
    assert m.apf.snapshot()["outstanding"] == []
    assert m.trace.breakdown()["stalled"] == 0
    assert m.apf.not_present_count == a["not_present"]


def test_without_apf_the_same_run_stalls_the_vcpu():
    m, syms = apf_machine(apf=False)
    st = run(m, syms)
    mt = st["tasks"][0]
    assert mt["exited"] and mt["mismatches"] == 0 and mt["parked"] == 0
    assert st["apf"]["not_present"] == 0
    assert m.trace.breakdown()["stalled"] > 0
    assert m.apf.fallbacks["apf_disabled"] > 10


def test_apf_run_finishes_sooner_than_the_stalling_baseline():
    m1, s1 = apf_machine(apf=True)
    m0, s0 = apf_machine(apf=False)
    on, off = run(m1, s1), run(m0, s0)
    assert on["stop_ns"] < off["stop_ns"]
    assert on["tasks"][1]["work"] > off["tasks"][1]["work"]     # the compute task got the stall time


def test_apf_alone_the_cpu_idles_until_page_ready():
    m, syms = apf_machine(compute=False)
    st = run(m, syms)
    mt = st["tasks"][0]
    assert st["stop_reason"] == "all tasks exited"
    assert mt["mismatches"] == 0 and mt["parked"] == mt["wakeups"] > 0
    assert st["idle_entries"] >= mt["parked"]
    assert m.trace.breakdown()["halted"] > 0 and m.trace.breakdown()["stalled"] == 0


def test_pre_evicted_buffer_is_checked_across_page_in():
    """Host fills the buffer with round-0 values and evicts it before the run."""
    npages = 24
    m, syms = boot([guest.memtouch(npages, rounds=1, first_round=1), guest.compute(iters=40, measured=False)],
                   machine_kw={"memory_limit": LIMIT_PAGES * PAGE_SIZE}, tick_ns=100_000)
    buf = guest.read_kernel_state(m, syms)["tasks"][0]["buffer"]
    assert buf.start >= syms["kernel_end"] and buf.start % PAGE_SIZE == 0
    assert list(buf) == list(guest.task_buffers([guest.memtouch(npages)])[0])
    for i, addr in enumerate(buf):
        value = guest.memtouch_value(0, 0, i)
        m.write_u64(addr, value ^ (0xDEAD if i == 5 else 0))   # page 5 is "corrupt"
        m.evict(addr)
    assert all(m.page_state(a).name == "SWAPPED" for a in buf)
    st = run(m, syms)
    mt = st["tasks"][0]
    assert mt["exited"] and mt["touches"] == npages
    assert mt["mismatches"] == 1                    # exactly the page we corrupted
    assert mt["parked"] == npages == st["apf"]["page_ready"]
    for i, addr in enumerate(buf):
        assert m.read_u64(addr) == guest.memtouch_value(0, 1, i)


def test_wake_all_token_wakes_every_waiter():
    m, syms = apf_machine()
    assert run_until(m, syms, lambda s: s["tasks"][0]["state"] == "apf_wait")
    m.apf.wake_all()                     # token 0xFFFFFFFF: "wake every waiting task"
    assert run_until(m, syms, lambda s: s["apf"]["wake_all"] == 1)
    st = guest.read_kernel_state(m, syms)
    assert st["tasks"][0]["state"] != "apf_wait" and st["tasks"][0]["wakeups"] == 1
    st = run(m, syms)
    mt = st["tasks"][0]
    assert mt["exited"] and mt["mismatches"] == 0
    assert mt["parked"] == mt["wakeups"]
    # The real "page ready" of the token that wake-all already served found no waiter:
    # it was remembered as a dummy entry (the Linux rule) rather than lost.
    assert st["apf"]["dummies"] == 1
    assert [e["kind"] for e in st["apf"]["table"]] == ["dummy"]


def test_page_ready_before_not_present_leaves_a_dummy_and_does_not_park():
    """The Linux "dummy entry" rule, with the host's two notifications forced out of order."""
    m, syms = boot([guest.compute(iters=40, report=4, limit=3000)], tick_ns=50_000)
    assert run_until(m, syms, lambda s: s["ticks"] >= 2)
    block = syms["apf_data"]
    token = 0x7123
    # "page ready" for a token the guest has never heard of
    m.write_u32(block + 4, token)
    m.write_u32(block + 0, 2)
    m.host.gic.set_line(19, True)
    assert run_until(m, syms, lambda s: s["apf"]["dummies"] == 1)
    st = guest.read_kernel_state(m, syms)
    assert st["apf"]["table"] == [{"token": token, "kind": "dummy", "task": -1}]
    assert st["apf"]["shared"] == {"reason": 0, "token": 0}
    assert not m.host.gic.line[19]                   # IRQ_ACK lowered the line
    # now its "page not present", while the task runs at EL0
    assert run_until(m, syms, lambda s: m.vcpu.el == 0)
    m.write_u32(block + 4, token)
    m.write_u32(block + 0, 1)
    assert m.sdei.raise_event(1)
    st = run(m, syms)
    t = st["tasks"][0]
    assert st["apf"]["dummy_hits"] == 1 and st["apf"]["table"] == []
    assert t["parked"] == 0 and t["exited"] and t["work"] == 3000


def test_kernel_pages_cover_the_image_and_stop_before_the_buffers():
    m, syms = apf_machine()
    pages = guest.kernel_pages(syms)
    assert pages.start == RAM_BASE and pages.stop == syms["kernel_end"] and pages.step == PAGE_SIZE
    for name in ("vectors", "_start", "current_task", "apf_data", "tasks", "task_stacks_end",
                 "task0_params", "config_nr_tasks"):
        assert RAM_BASE <= syms[name] < pages.stop, name
    assert syms["vectors"] % 2048 == 0
    assert syms["kernel_end"] <= guest.DEFAULT_BUF_BASE
    assert all(m.stage2.gpn_of(a) in m.stage2.pinned for a in pages)


def test_postcopy_pages_fetched_on_demand_park_the_task():
    """Post-copy: the buffer is still on the migration source; each first touch is a demand
    fetch the task waits for asynchronously while the compute task runs."""
    npages = 16
    m, syms = boot([guest.memtouch(npages, rounds=2, first_round=1), guest.compute(iters=40, measured=False)],
                   machine_kw={"store": "postcopy"}, tick_ns=100_000)
    buf = guest.read_kernel_state(m, syms)["tasks"][0]["buffer"]
    for i, addr in enumerate(buf):
        m.write_u64(addr, guest.memtouch_value(0, 0, i))
    m.stage2.make_remote(m.stage2.gpn_of(a) for a in buf)
    assert all(m.page_state(a).name == "REMOTE" for a in buf)
    st = run(m, syms)
    mt, cp = st["tasks"]
    assert mt["exited"] and mt["mismatches"] == 0 and mt["rounds_done"] == 2
    assert mt["parked"] == mt["wakeups"] == npages       # one demand fetch per page, never again
    assert cp["work"] > 0
    assert m.trace.breakdown()["stalled"] == 0
