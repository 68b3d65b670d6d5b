"""The delivery designs (sdei, irq, abort, halt) from the guest's side, and side by side.

The irq and abort protocol tests run a small hand-written guest (``design_guest``): its
not-present handler (an IRQ handler for "irq", an EL0 abort handler for "abort") logs
{kind 1, reason, token, ELR, ESR}, frees the slot (unless told not to) and steps over the
faulting load; its page-ready IRQ handler logs {kind 2, reason, token}, frees the slot and
acknowledges with IRQ_ACK. The buffer is pre-filled and pushed to swap, so every first
touch is a stage-2 fault that needs I/O. Expectations come from the design table in
``docs/DESIGN.md`` and the architecture (ESR/FAR of an injected abort), not from the code.
"""

from __future__ import annotations

import struct

import pytest

import apflab
from apflab import Machine, ParameterError, designs
from apflab.guest import PAGE_SIZE, RAM_BASE
from apflab.smccc import Call
from guestlib import mov64

BUF = RAM_BASE + 0x10_0000
KVM_ASYNC_PF = 0x8600_0002
ASYNC_PF_ENABLE, ASYNC_PF_IRQ_ACK = 4, 5
NP_PPI, READY_PPI = 20, 19
FLAG_BITS = {"sdei": 0, "irq": 1 << 2, "abort": 2 << 2}
LOG_MAX = 128


def design_guest(delivery: str, *, npages: int, np_clear: bool = True, el0_irqs: bool = True,
                 el1_touch: int | None = None, touch_twice: bool = False) -> str:
    vec = []
    for n in range(16):
        vec.append("    .balign 128")
        vec.append({8: "    b el0_sync", 9: "    b el0_irq"}.get(n, "    brk #0x99"))
    flags = 1 | FLAG_BITS[delivery]
    L = ["    .balign 2048", "vectors:", *vec, "    .balign 128", "_start:",
         "adr x0, vectors", "msr vbar_el1, x0",
         "mov x0, #0xff", "msr s3_0_c4_c6_0, x0",              # ICC_PMR_EL1
         "mov x0, #1", "msr s3_0_c12_c12_7, x0",               # ICC_IGRPEN1_EL1
         "adr x4, apf_block", f"mov x5, #{flags}", "orr x4, x4, x5"] + mov64("x0", KVM_ASYNC_PF)
    L += [f"mov x1, #{ASYNC_PF_ENABLE}", "mov w2, w4", "lsr x3, x4, #32", "hvc #0",
          "cbnz x0, setup_failed"]
    if el1_touch is not None:
        L += mov64("x10", el1_touch) + ["ldr x11, [x10]"]
    L += ["adr x0, el0_main", "msr elr_el1, x0", f"mov x0, #{0 if el0_irqs else 0x80}", "msr spsr_el1, x0",
          "adr x0, el0_stack_top", "msr sp_el0, x0"]
    L += mov64("x20", BUF) + ["mov x21, #0", f"mov x22, #{npages}", "eret", "setup_failed:", "brk #0x51"]
    wait = ["cmp x23, x24", "b.lo el0_done"] if np_clear else []   # an unfreed slot: no page ready
    again = ["ldr x0, [x20]"] if touch_twice else []     # the same page again, still in flight
    L += ["el0_main:", "cmp x21, x22", "b.hs el0_done", "el0_touch:", "ldr x0, [x20]", *again,
          "add x20, x20, #4096", "add x21, x21, #1", "b el0_main",
          # wait for the outstanding page-ready notices, then stop
          "el0_done:", "adr x23, ready_seen", "ldr x23, [x23]", "adr x24, np_seen", "ldr x24, [x24]",
          *wait, "el0_stop:", "brk #0", "b el0_stop"]
    log = ["adr x4, log_len", "ldr x5, [x4]", "adr x6, log", f"mov x7, #{LOG_MAX}", "cmp x5, x7",
           "csel x8, x5, x7, lo", "cinc x5, x5, lo", "str x5, [x4]", "add x6, x6, x8, lsl #5"]
    # not present: log {1, reason, token, elr}, count, free the slot, step over the load.
    np = [*log, "adr x1, apf_block", "mov x7, #1", "ldr w8, [x1, #0]", "ldr w9, [x1, #4]",
          "mrs x2, elr_el1", "stp x7, x8, [x6]", "stp x9, x2, [x6, #16]",
          "adr x3, np_seen", "ldr x7, [x3]", "add x7, x7, #1", "str x7, [x3]"]
    if np_clear:
        np += ["str wzr, [x1, #4]", "str wzr, [x1, #0]"]
    np += ["mrs x9, elr_el1", "add x9, x9, #4", "msr elr_el1, x9"]
    L += ["el0_sync:", "mrs x9, esr_el1", "adr x10, last_esr", "str x9, [x10]",
          "mrs x9, far_el1", "adr x10, last_far", "str x9, [x10]",
          "mrs x9, esr_el1", "lsr x9, x9, #26", "cmp x9, #0x24", "b.ne bad_sync",
          *np, "eret", "bad_sync:", "brk #0x53"]
    L += ["el0_irq:", "mrs x12, s3_0_c12_c12_0",             # ICC_IAR1_EL1
          "cmp x12, #1023", "b.eq el0_irq_out",
          f"cmp x12, #{NP_PPI}", "b.ne el0_irq_ready", *np, "b el0_irq_eoi",
          "el0_irq_ready:", *log, "adr x1, apf_block", "mov x7, #2", "ldr w8, [x1, #0]", "ldr w9, [x1, #4]",
          "stp x7, x8, [x6]", "stp x9, x12, [x6, #16]", "str wzr, [x1, #4]", "str wzr, [x1, #0]",
          "adr x3, ready_seen", "ldr x7, [x3]", "add x7, x7, #1", "str x7, [x3]"]
    L += mov64("x0", KVM_ASYNC_PF) + [f"mov x1, #{ASYNC_PF_IRQ_ACK}", "hvc #0",
                                      "el0_irq_eoi:", "msr s3_0_c12_c12_1, x12", "el0_irq_out:", "eret"]
    L += ["    .balign 64", "apf_block:", "    .space 64", "    .balign 8",
          "np_seen:", "    .quad 0", "ready_seen:", "    .quad 0", "last_esr:", "    .quad 0",
          "last_far:", "    .quad 0", "log_len:", "    .quad 0", "log:", f"    .space {32 * (LOG_MAX + 1)}",
          "    .balign 16", "    .space 256", "el0_stack_top:", "    .quad 0"]
    return "\n".join(l if l.startswith("    ") or l.endswith(":") else "    " + l for l in L) + "\n"


def make(delivery, npages, guest_kw=None, **machine_kw):
    m = Machine(seed=0, delivery=delivery, **machine_kw)
    syms = m.load_asm(design_guest(delivery, npages=npages, **(guest_kw or {})))
    for i in range(npages):
        m.write_u64(BUF + i * PAGE_SIZE, 0xB0B0_0000_0000_0000 | i)
        m.evict(BUF + i * PAGE_SIZE)
    return m, syms


def read_log(m, syms):
    n = m.read_u64(syms["log_len"])
    return [struct.unpack("<4Q", m.read(syms["log"] + 32 * k, 32)) for k in range(n)]


# ---------------------------------------------------------------------- irq and abort protocols

@pytest.mark.parametrize("delivery", ["irq", "abort"])
def test_not_present_reaches_the_faulting_instruction_with_counting_tokens(delivery):
    m, syms = make(delivery, 4)
    m.run(max_instructions=2_000_000)
    log = read_log(m, syms)
    np = [e for e in log if e[0] == 1]
    ready = [e for e in log if e[0] == 2]
    assert [e[1] for e in np] == [1] * 4                       # reason PAGE_NOT_PRESENT
    assert [e[2] for e in np] == [k << 12 for k in range(4)]   # (id << 12) | vcpu 0
    assert {e[3] for e in np} == {syms["el0_touch"]}           # ELR: the faulting load
    assert sorted(e[2] for e in ready) == [e[2] for e in np] and {e[1] for e in ready} == {2}
    assert m.apf.fallbacks == {} and m.trace.breakdown()["stalled"] == 0


def test_irq_design_delivers_an_ordinary_interrupt_on_its_own_ppi():
    m, syms = make("irq", 3)
    m.run(max_instructions=2_000_000)
    irqs = [r.get("intid") for r in m.trace.select("irq")]
    assert irqs.count(NP_PPI) == 3 and irqs.count(READY_PPI) == 3
    assert m.trace.counts.get("sdei_dispatch", 0) == 0


def test_abort_design_injects_a_data_abort_with_far_and_the_external_abort_status():
    m, syms = make("abort", 1)
    m.run(max_instructions=2_000_000)
    esr = m.read_u64(syms["last_esr"])
    assert esr >> 26 == 0x24 and esr & 0x3F == 0x10          # DABT from EL0, synchronous external abort
    assert m.read_u64(syms["last_far"]) == BUF
    assert [r.get("what") for r in m.trace.select("exception")] == ["apf_abort"]


@pytest.mark.parametrize("delivery", ["irq", "abort"])
def test_an_unfreed_slot_makes_the_next_fault_fall_back_slot_busy(delivery):
    m, syms = make(delivery, 2, {"np_clear": False})
    m.run(max_instructions=2_000_000)
    assert m.apf.fallbacks == {"slot_busy": 1}
    assert [s.get("reason") for s in m.trace.select("stall")] == ["slot_busy"]


@pytest.mark.parametrize("delivery", ["irq", "abort"])
def test_touching_a_page_whose_page_in_runs_falls_back_repeated_fault(delivery):
    m, syms = make(delivery, 2, {"touch_twice": True})
    m.run(max_instructions=2_000_000)
    assert m.apf.fallbacks == {"repeated_fault": 2}
    assert m.apf.not_present_count == 2


@pytest.mark.parametrize("delivery", ["sdei", "irq", "abort", "halt"])
def test_apf_withdrawn_by_the_host_falls_back_apf_disabled_in_every_design(delivery):
    s = apflab.build("memtouch", delivery=delivery, npages=8, limit_pages=8, rounds=1, calc_thread=False)
    s.machine.apf.set_allowed(False)
    r = s.run()
    assert r.fallbacks == {"apf_disabled": 8} and r.apf_not_present == 0


def test_irq_design_falls_back_when_irqs_are_masked_where_sdei_would_not():
    m, syms = make("irq", 2, {"el0_irqs": False})
    m.run(max_instructions=2_000_000)
    assert m.apf.fallbacks == {"irq_masked": 2}


@pytest.mark.parametrize("delivery", ["irq", "abort"])
def test_kernel_mode_fault_falls_back_without_send_always(delivery):
    extra = RAM_BASE + 0x20_0000
    m = Machine(seed=0, delivery=delivery)
    syms = m.load_asm(design_guest(delivery, npages=0, el1_touch=extra))
    m.write_u64(extra, 5)
    m.evict(extra)
    m.run(max_instructions=2_000_000)
    assert m.apf.fallbacks == {"kernel_mode": 1}


@pytest.mark.parametrize("delivery", ["sdei", "irq", "abort", "halt"])
def test_a_held_queue_makes_every_design_fall_back_queue_full_until_released(delivery):
    r = apflab.build("memtouch", delivery=delivery, npages=16, limit_pages=8, rounds=1)
    m = r.machine
    assert m.apf.fill_queue() == 64
    m.run_until("apf_fallback")
    assert m.apf.fallbacks == {"queue_full": 1}
    # held slots stay held while time passes and other page-ins finish
    m.run_until("apf_fallback")
    assert m.apf.fallbacks == {"queue_full": 2}
    m.apf.release_queue()
    assert m.run_until("apf_not_present").kind == "apf_not_present"


def test_irq_window_after_retry_refaults_once_and_the_host_reenters_without_stalling():
    m, syms = make("irq", 3, irq_window="after_retry")
    m.run(max_instructions=2_000_000)
    assert m.trace.counts.get("apf_refault", 0) == 3
    assert m.apf.fallbacks == {} and m.trace.breakdown()["stalled"] == 0
    assert {e[3] for e in read_log(m, syms) if e[0] == 1} == {syms["el0_touch"]}
    before = make("irq", 3)[0]
    before.run(max_instructions=2_000_000)
    # one more exit (a stage-2 fault) per async fault than when the IRQ is taken first
    extra = m.trace.counts["stage2_fault"] - before.trace.counts["stage2_fault"]
    assert extra == 3


def test_enable_for_another_design_is_refused():
    m = Machine(seed=0, delivery="irq")
    m.load_asm(design_guest("abort", npages=0))
    with pytest.raises(apflab.GuestError):
        m.run(max_instructions=100_000)           # setup_failed: brk #0x51 with no handler
    assert m.apf.enabled is False


# ---------------------------------------------------------------------- the designs on the mini-kernel

@pytest.mark.parametrize("delivery", ["sdei", "irq", "abort", "halt"])
def test_every_design_loses_no_wakeup_and_corrupts_no_page(delivery):
    r = apflab.run_scenario("memtouch", apf=True, delivery=delivery, seed=3, npages=48, limit_pages=16,
                            rounds=2, calc_thread=True)
    ks = r.kernel
    mt = ks["tasks"][0]
    assert mt["exited"] and mt["mismatches"] == 0
    assert r.faults > 0 and r.apf_not_present > 0
    if delivery != "halt":
        assert mt["parked"] == mt["wakeups"] == ks["apf"]["not_present"] == r.apf_not_present
        assert r.apf_page_ready == r.apf_not_present
    else:
        assert r.apf_page_ready == 0 and ks["apf"]["enabled"] is False      # no guest support used
        assert r.trace.counts["apf_release"] == r.apf_not_present


@pytest.mark.parametrize("delivery", ["sdei", "irq", "abort", "halt"])
def test_property_no_design_loses_a_wakeup_or_corrupts_a_page(delivery):
    """Random small configurations (seeded): every walker finishes with its pages intact, and
    every task the guest parked was woken exactly once per park."""
    import random
    rng = random.Random(2026)
    for _ in range(4):
        kw = dict(npages=rng.choice([8, 24, 40]), limit_pages=rng.choice([8, 16]),
                  rounds=rng.choice([1, 2]), tick_ns=rng.choice([20_000, 100_000, 1_000_000]),
                  latency_ns=rng.choice([1_000, 20_000, 200_000]), calc_thread=rng.random() < 0.7,
                  store=rng.choice(["ssd", "hdd"]))
        seed = rng.randrange(1000)
        r = apflab.run_scenario("memtouch", apf=True, delivery=delivery, seed=seed, **kw)
        mt = r.kernel["tasks"][0]
        assert mt["exited"] and mt["mismatches"] == 0, (seed, kw)
        assert all(t["parked"] == t["wakeups"] for t in r.kernel["tasks"]), (seed, kw)
        assert not r.kernel["apf"]["table"] or delivery == "halt" or \
            all(e["kind"] != "waiter" for e in r.kernel["apf"]["table"]), (seed, kw)


@pytest.mark.parametrize("delivery", ["sdei", "irq", "abort", "halt"])
def test_same_seed_same_trace_for_every_design(delivery):
    a = apflab.run_scenario("memtouch", apf=True, delivery=delivery, seed=5, npages=24, limit_pages=8)
    b = apflab.run_scenario("memtouch", apf=True, delivery=delivery, seed=5, npages=24, limit_pages=8)
    assert a.trace.digest() == b.trace.digest()


def test_syscall_read_separates_the_designs_by_their_fallbacks():
    res = apflab.compare_designs("syscall_read", seed=0, npages=32, limit_pages=16)
    kernel_reads = 32 // 2
    assert res["sync"].fallbacks == {"apf_disabled": 32}
    for d in ("sdei", "irq", "abort"):
        assert res[d].fallbacks == {"kernel_mode": kernel_reads}, d
        assert res[d].apf_not_present == 32 - kernel_reads
    assert res["halt"].fallbacks == {"irq_masked": kernel_reads}
    for r in res.values():
        assert r.kernel["tasks"][0]["mismatches"] == 0 and r.kernel["tasks"][0]["exited"]


def test_send_always_lets_nmi_like_and_synchronous_notices_through_where_irq_falls_back():
    res = apflab.compare_designs("syscall_read", seed=0, designs=("sdei", "irq", "abort"), npages=32,
                                 limit_pages=16, send_always=True)
    # the kernel cannot sleep: the notice is wasted and the retry stalls (repeated_fault)
    assert res["sdei"].fallbacks.get("repeated_fault") == 16
    assert res["abort"].fallbacks.get("repeated_fault") == 16
    assert res["irq"].fallbacks == {"irq_masked": 16}
    assert res["sdei"].kernel["apf"]["not_parked"] == 16


def test_halt_helps_only_when_an_interrupt_comes_during_the_wait():
    # HDD latency (ms) >> the 100 us tick: the tick lets the compute task run while it waits.
    kw = dict(npages=8, limit_pages=8, rounds=1, calc_thread=True, store="hdd")
    sync = apflab.run_scenario("memtouch", apf=False, seed=0, **kw)
    halt = apflab.run_scenario("memtouch", apf=True, delivery="halt", seed=0, **kw)
    assert halt.work["compute"] > sync.work["compute"]
    assert halt.stall_ns < sync.stall_ns
    # a tick far longer than the run: nothing is injected during the waits, halt is a plain stall
    sync0 = apflab.run_scenario("memtouch", apf=False, seed=0, tick_ns=10**12, **kw)
    halt0 = apflab.run_scenario("memtouch", apf=True, delivery="halt", seed=0, tick_ns=10**12, **kw)
    assert halt0.stall_ns == pytest.approx(sync0.stall_ns, rel=0.05)


def test_compare_designs_and_the_table():
    res = apflab.compare_designs("memtouch", seed=0, npages=16, limit_pages=8, calc_thread=True)
    assert list(res) == ["sync", "sdei", "irq", "abort", "halt"]
    rows = designs.table(res)
    by = {r["design"]: r for r in rows}
    assert by["sync"]["async_fraction"] == 0 and by["sdei"]["async_fraction"] == 1.0
    assert by["halt"]["guest_lines"] == 0 < by["irq"]["guest_lines"] < by["sdei"]["guest_lines"]
    assert by["sdei"]["exits_per_async_fault"] > by["irq"]["exits_per_async_fault"]
    assert len(by["sdei"]["migration_state"]) > len(by["abort"]["migration_state"]) > 0 == len(by["halt"]["migration_state"])


# ---------------------------------------------------------------------- bugs of the issue "honest numbers"

def test_guest_disabling_apf_with_page_ins_outstanding_gets_its_waiters_woken():
    """KVM clears the completion queue on disable; the parked task must not sleep for ever."""
    s = apflab.build("memtouch", seed=0, npages=16, limit_pages=8, rounds=1, calc_thread=False)
    m = s.machine
    assert m.run_until("apf_not_present").kind == "apf_not_present"
    assert len(m.apf.work) == 1
    # the guest's own ASYNC_PF ENABLE(0) hypercall, made here at the point a guest would
    m.apf.handle(m.vcpu, Call(KVM_ASYNC_PF, (ASYNC_PF_ENABLE, 0, 0, 0, 0), m.vcpu.pc))
    assert m.apf.work == {} and m.trace.counts["apf_wake_all"] == 1
    stop = m.run(max_instructions=20_000_000)
    ks = apflab.guest.read_kernel_state(m, s.symbols)
    assert stop is not None and ks["tasks"][0]["exited"] and ks["tasks"][0]["mismatches"] == 0
    assert ks["apf"]["wake_all"] == 1
    assert m.apf.fallbacks.get("apf_disabled", 0) > 0       # later faults stall


def test_scenario_parameters_take_effect_and_contradictions_are_errors():
    s = apflab.build("memtouch", apf=False, npages=16, limit_pages=8)
    assert s.machine.apf.allowed is False
    assert s.machine.stage2.limit_pages == len(apflab.guest.kernel_pages(s.symbols)) + 8
    with pytest.raises(ParameterError, match="needs the SDEI service"):
        Machine(seed=0, sdei=False, apf=True, delivery="sdei")
    m = Machine(seed=0, sdei=False, apf=True, delivery="irq")      # no SDEI needed for irq
    assert m.apf.delivery.name == "irq"
    with pytest.raises(ParameterError, match="irq_window"):
        apflab.run_scenario("memtouch", apf=True, delivery="sdei", irq_window="after_retry")
    with pytest.raises(ParameterError, match="delivery design"):
        apflab.run_scenario("memtouch", apf=True, delivery="nmi")
