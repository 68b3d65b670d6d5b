"""Several vCPUs: shared RAM, exclusives across vCPUs, SGIs, per-vCPU timers, determinism,
budgets naming the vCPUs, bad parameters. Guest-level tests in assembly."""

import pytest

import apflab
from apflab import psci
from apflab.smp import MAX_VCPUS, sgi_targets

from guestlib import mov64

CPU_ON = psci.CPU_ON_64


def start_secondaries(n: int, label: str = "secondary") -> list[str]:
    """vCPU 0 starts vCPUs 1..n-1 at ``label`` with context id = the vCPU index."""
    out = [f"adr x12, {label}"]
    for i in range(1, n):
        out += mov64("x0", CPU_ON) + [f"mov x1, #{i}", "mov x2, x12", f"mov x3, #{i}", "hvc #0",
                                      f"cbnz x0, cpu_on_failed"]
    return out


def counter_guest(vcpus: int, n: int = 1000, atomic: str = "ldxr") -> str:
    """Every vCPU adds 1 to ``counter`` n times; vCPU 0 waits for the others, then brk #0
    with the counter in x0. ``atomic``: "ldxr", "ldaxr" (acquire/release pair), "lse"
    (LDADD) or "plain" (a racy ldr/add/str: the control)."""
    if atomic == "plain":
        body = ["2: ldr x8, [x4]", "add x8, x8, #1", "str x8, [x4]"]
    elif atomic == "lse":
        body = ["mov x8, #1", "2: .inst 0xf8280089"]          # ldadd x8, x9, [x4]
    else:
        ld, st = ("ldxr", "stxr") if atomic == "ldxr" else ("ldaxr", "stlxr")
        body = [f"2: {ld} x8, [x4]", "add x8, x8, #1", f"{st} w9, x8, [x4]",
                "cbz w9, 3f", "add x21, x21, #1", "b 2b", "3:"]
    src = ["_start:"] + start_secondaries(vcpus) + [
        "bl add_loop",
        "adr x5, done",
        "1: ldar x6, [x5]", f"cmp x6, #{vcpus - 1}", "b.ne 1b",
        "adr x4, counter", "ldr x0, [x4]", "brk #0",
        "cpu_on_failed: brk #2",
        "add_loop:", "adr x4, counter", f"mov x7, #{n}", "mov x21, #0",
    ] + body + ["subs x7, x7, #1", "b.ne 2b", "ret",
                "secondary:", "bl add_loop",
                "adr x5, done",                                    # done += 1, atomically
                "4: ldaxr x6, [x5]", "add x6, x6, #1", "stlxr w9, x6, [x5]", "cbnz w9, 4b",
                "5: wfi", "b 5b",
                ".balign 8", "counter: .quad 0", "done: .quad 0"]
    return "\n".join(src) + "\n"


def run_counter(vcpus: int, quantum: int = 1000, cpu_model: str = "cortex-a72", **kw):
    m = apflab.Machine(seed=0, vcpus=vcpus, quantum=quantum, cpu_model=cpu_model)
    m.load_asm(counter_guest(vcpus, **kw))
    m.run(2_000_000)
    return m


# ---------------------------------------------------------------------------------- done when

def test_two_vcpus_add_to_a_shared_counter_with_exclusives():
    """The issue's test: vCPU 0 starts vCPU 1 with CPU_ON, both add 1 a thousand times with
    LDXR/STXR: 2,000."""
    m = run_counter(2)
    assert m.reg("x0") == 2000
    assert m.read_u64(m.symbols["counter"]) == 2000


@pytest.mark.parametrize("quantum", [7, 50])
def test_the_counter_holds_when_slices_cut_the_exclusive_pairs(quantum):
    """Short slices put switches between LDXR and STXR: some store-exclusives fail and are
    retried (counted in x21), and the sum is still exact."""
    m = run_counter(2, quantum=quantum)
    assert m.reg("x0") == 2000
    assert m.reg("x21") + m.reg("x21", vcpu=1) > 0


def test_a_plain_read_modify_write_loses_updates():
    """The control: without exclusives the same interleaving loses increments, so the test
    above can fail."""
    m = run_counter(2, quantum=7, atomic="plain")
    assert m.reg("x0") < 2000


def test_acquire_release_exclusives_with_four_vcpus():
    m = run_counter(4, quantum=13, atomic="ldaxr")
    assert m.reg("x0") == 4000


def test_same_seed_same_trace_digest_twice():
    for vcpus in (1, 2, 4):
        a = run_counter(vcpus, quantum=37)
        b = run_counter(vcpus, quantum=37)
        assert a.trace.digest() == b.trace.digest(), vcpus
        assert a.reg("x0") == 1000 * vcpus


def test_records_carry_the_vcpu_only_with_several_vcpus():
    one = run_counter(1)
    assert all(rec.get("vcpu") is None for rec in one.trace.records)
    two = run_counter(2)
    assert {rec.get("vcpu") for rec in two.trace.records} == {0, 1}
    on = two.trace.select("hvc", fid=CPU_ON)
    assert len(on) == 1 and on[0].get("vcpu") == 0


def test_each_vcpu_has_its_own_lane_of_time():
    m = run_counter(2)
    for v in (0, 1):
        spans, modes = m.trace.lane(v)
        assert spans and sum(modes.values()) == spans[-1][1] - spans[0][0]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))   # each lane tiles
    assert m.trace.breakdown() == m.trace.breakdown(vcpu=0)


# ---------------------------------------------------------------------------------- exclusives

ABA = """
_start:
    adr x12, secondary
""" + "\n".join("    " + l for l in mov64("x0", CPU_ON)) + """
    mov x1, #1
    mov x2, x12
    hvc #0
    adr x4, word
    adr x5, flag
    ldxr x8, [x4]             // vCPU 0 takes the monitor on `word`
1:  ldr x6, [x5]              // ...and waits while vCPU 1 stores the *same* value to it
    cbz x6, 1b
    stxr w9, x8, [x4]         // must fail: another PE wrote the location
    mov x0, x9
    brk #0
secondary:
    adr x4, word
    ldr x8, [x4]
    str x8, [x4]
    adr x5, flag
    mov x6, #1
    str x6, [x5]
2:  wfi
    b 2b
.balign 8
word: .quad 0x1234
flag: .quad 0
"""


def test_store_exclusive_fails_after_another_vcpu_stored_the_same_value():
    m = apflab.Machine(seed=0, vcpus=2, quantum=5)
    m.load_asm(ABA)
    m.run(100_000)
    assert m.reg("x0") == 1


def test_without_clearing_the_monitor_the_engine_would_miss_that_store(monkeypatch):
    """Why the host clears the monitor on a switch: unicorn's store-exclusive compares the
    value only (QEMU's exclusive_val), so the same-value store goes unseen."""
    from apflab.cpu import Vcpu
    monkeypatch.setattr(Vcpu, "clear_exclusive", lambda self: None)
    m = apflab.Machine(seed=0, vcpus=2, quantum=5)
    m.load_asm(ABA)
    m.run(100_000)
    assert m.reg("x0") == 0


def test_lse_atomics_across_vcpus_with_the_max_cpu_model():
    """LDADD (Armv8.1 LSE) is exact across vCPUs with cpu_model="max"."""
    m = run_counter(4, quantum=7, atomic="lse", cpu_model="max")
    assert m.reg("x0") == 4000
    m = run_counter(2, quantum=7, atomic="ldxr", cpu_model="max")
    assert m.reg("x0") == 2000


def test_lse_is_undefined_on_the_default_cortex_a72():
    """The default engine model is Armv8.0: LDADD is an undefined instruction there."""
    with pytest.raises(apflab.GuestFault, match="undefined instruction"):
        run_counter(2, atomic="lse")


def test_unknown_cpu_model_is_a_parameter_error():
    with pytest.raises(apflab.ParameterError, match="cpu_model"):
        apflab.Machine(seed=0, cpu_model="cortex-x4")


# ---------------------------------------------------------------------------------- interrupts

SGI = """
_start:
    adr x12, secondary
""" + "\n".join("    " + l for l in mov64("x0", CPU_ON)) + """
    mov x1, #1
    mov x2, x12
    hvc #0
    adr x5, ready
1:  ldr x6, [x5]
    cbz x6, 1b
    movz x0, #2                  // target list: Aff0 = 1
    movk x0, #(5 << 8), lsl #16  // INTID 5 in [27:24]
    msr s3_0_c12_c11_5, x0       // ICC_SGI1R_EL1
    adr x5, got
2:  ldr x6, [x5]
    cbz x6, 2b
    mov x0, x6
    brk #0
secondary:
    adr x0, vectors
    msr vbar_el1, x0
    mov x0, #0xff
    msr s3_0_c4_c6_0, x0         // ICC_PMR_EL1
    mov x0, #1
    msr s3_0_c12_c12_7, x0       // ICC_IGRPEN1_EL1
    adr x5, ready
    str x0, [x5]
    msr daifclr, #2
3:  wfi
    b 3b
.balign 2048
vectors:
    .space 0x280
    mrs x9, s3_0_c12_c12_0       // ICC_IAR1_EL1
    mrs x10, mpidr_el1
    and x10, x10, #0xff
    add x11, x9, x10, lsl #8     // intid + 256 * vCPU
    adr x5, got
    str x11, [x5]
    msr s3_0_c12_c12_1, x9       // ICC_EOIR1_EL1
    eret
.balign 8
ready: .quad 0
got: .quad 0
"""


def test_sgi_from_vcpu0_is_taken_on_vcpu1():
    m = apflab.Machine(seed=0, vcpus=2)
    m.load_asm(SGI)
    m.run(200_000)
    assert m.reg("x0") == 5 + 256 * 1
    irqs = m.trace.select("irq")
    assert [(r.get("vcpu"), r.get("intid")) for r in irqs] == [(1, 5)]
    wake = m.trace.select("wake", vcpu=1)
    assert wake and wake[0].t_ns >= m.trace.select("irq_line", vcpu=1, intid=5)[0].t_ns


@pytest.mark.parametrize("value,sender,count,want", [
    ((3 << 24) | 0b110, 0, 4, [1, 2]),
    ((3 << 24) | (1 << 40), 2, 4, [0, 1, 3]),              # IRM: everyone but the sender
    ((3 << 24) | (1 << 16) | 1, 0, 4, []),                 # Aff1 = 1: no such cluster
    ((3 << 24) | 0xFF00, 0, 4, []),                        # targets that do not exist
])
def test_sgi_target_decoding(value, sender, count, want):
    assert sgi_targets(value, sender, count) == want


TIMERS = """
_start:
    adr x12, secondary
""" + "\n".join("    " + l for l in mov64("x0", CPU_ON)) + """
    mov x1, #1
    mov x2, x12
    hvc #0
    adr x5, got
1:  ldr x6, [x5]
    cbz x6, 1b
    mrs x7, cntvct_el0
    mrs x8, s3_3_c14_c3_1       // CNTV_CTL_EL0 of vCPU 0: never armed
    brk #0
secondary:
    adr x0, vectors
    msr vbar_el1, x0
    mov x0, #0xff
    msr s3_0_c4_c6_0, x0
    mov x0, #1
    msr s3_0_c12_c12_7, x0
    mov x0, #20000
    msr cntv_tval_el0, x0
    mov x0, #1
    msr cntv_ctl_el0, x0
    msr daifclr, #2
3:  wfi
    b 3b
.balign 2048
vectors:
    .space 0x280
    mrs x9, s3_0_c12_c12_0
    mov x0, #2                  // IMASK: the line drops
    msr cntv_ctl_el0, x0
    adr x5, got
    str x9, [x5]
    msr s3_0_c12_c12_1, x9
    eret
.balign 8
got: .quad 0
"""


def test_each_vcpu_has_its_own_timer():
    m = apflab.Machine(seed=0, vcpus=2)
    m.load_asm(TIMERS)
    m.run(500_000)
    assert m.read_u64(m.symbols["got"]) == 27
    assert m.reg("x8") == 0
    assert m.reg("x7") >= 20_000
    assert [r.get("vcpu") for r in m.trace.select("irq")] == [1]


# ---------------------------------------------------------------------------------- stage 2

EVICTED = """
_start:
    adr x12, secondary
""" + "\n".join("    " + l for l in mov64("x0", CPU_ON)) + """
    mov x1, #1
    mov x2, x12
    hvc #0
1:  b 1b
secondary:
    adr x4, page
    adr x5, phase
2:  ldr x6, [x4]             // keeps the page in this vCPU's TLB
    ldr x7, [x5]
    cbz x7, 2b
    ldr x6, [x4]             // after the eviction: must fault again
    mov x8, #2
    str x8, [x5]
3:  b 3b
.balign 8
phase: .quad 0
.balign 4096
page: .quad 77
"""


def test_stage2_eviction_reaches_every_vcpus_tlb():
    m = apflab.Machine(seed=0, vcpus=2, apf=False, sdei=False)
    syms = m.load_asm(EVICTED)
    m.step(20_000)
    m.evict(syms["page"])
    m.write_u64(syms["phase"], 1)
    m.step(200_000)
    assert m.read_u64(syms["phase"]) == 2
    gpn = m.stage2.gpn_of(syms["page"])
    faults = m.trace.select("stage2_fault", gpn=gpn, state="swapped")
    assert [r.get("vcpu") for r in faults] == [1]
    assert m.trace.select("stall", vcpu=1)


HALTED_FAULT = """
_start:
    adr x12, secondary
""" + "\n".join("    " + l for l in mov64("x0", CPU_ON)) + """
    mov x1, #1
    mov x2, x12
    hvc #0
    adr x5, phase
    mov x20, #0
1:  add x20, x20, #1         // vCPU 0 keeps working while vCPU 1 waits for its page
    ldr x6, [x5]
    cbz x6, 1b
    brk #0
secondary:
    msr daifclr, #2          // the halt design needs interrupts unmasked
    adr x4, page
    ldr x7, [x4]             // swapped out: vCPU 1's APF takes the fault
    adr x5, phase
    mov x6, #1
    str x6, [x5]
2:  b 2b
.balign 8
phase: .quad 0
.balign 4096
page: .quad 0
"""


def test_apf_is_per_vcpu_and_another_vcpu_runs_while_one_waits():
    """vCPU 1's fault is vCPU 1's APF work (token vCPU id 1, halted in the host); vCPU 0
    runs on meanwhile."""
    m = apflab.Machine(seed=0, vcpus=2, delivery="halt")
    syms = m.load_asm(HALTED_FAULT)
    m.write_u64(syms["page"], 77)
    m.evict(syms["page"])
    m.run(2_000_000)
    assert m.reg("x7", vcpu=1) == 77
    halts = m.trace.select("apf_halt")
    assert [(r.get("vcpu"), r.get("token") & 0xFFF) for r in halts] == [(1, 1)]
    assert m.apf_of(1).vcpu_id == 1 and m.apf_of(0) is m.apf and m.apf_of(1) is not m.apf
    assert not m.trace.tally("stall")                       # nobody stalled synchronously
    waited = m.trace.select("apf_page_in_done")[0].t_ns - halts[0].t_ns
    assert waited > 10_000 and m.reg("x20") > waited // 10  # vCPU 0 ran through the wait


def test_while_one_vcpu_stalls_in_a_synchronous_fault_the_other_runs():
    m = apflab.Machine(seed=0, vcpus=2, apf=False)
    syms = m.load_asm(HALTED_FAULT)
    m.write_u64(syms["page"], 77)
    m.evict(syms["page"])
    m.run(2_000_000)
    assert m.reg("x7", vcpu=1) == 77
    stalled = m.trace.breakdown(vcpu=1)["stalled"]
    assert stalled > 10_000
    zero = m.trace.breakdown(vcpu=0)
    assert zero["stalled"] == 0 and zero["halted"] == 0
    assert m.reg("x20") > stalled // 10


def sdei(fid_low: int, *args: int) -> list[str]:
    out = mov64("x0", 0xC4000000 | fid_low)
    for i, a in enumerate(args, start=1):
        out += mov64(f"x{i}", a)
    return out + ["hvc #0"]


SDEI_PER_PE = "\n".join(
    ["_start:", "adr x12, secondary"] + mov64("x0", CPU_ON) + ["mov x1, #1", "mov x2, x12", "hvc #0",
     "adr x5, ready", "1: ldr x6, [x5]", "cbz x6, 1b"]
    + sdei(0x28, 0) + ["mov x21, x0"]                  # EVENT_STATUS(0) on PE 0
    + sdei(0x2F, 0, 2) + ["mov x22, x0"]               # EVENT_SIGNAL to PE 2: no such PE
    + sdei(0x2F, 0, 0) + ["mov x23, x0"]               # to PE 0, where event 0 is unregistered
    + sdei(0x2F, 0, 0x101) + ["mov x25, x0"]           # Aff1 = 1: no such PE
    + sdei(0x2F, 0, (1 << 31) | 1) + ["mov x24, x0"]   # to PE 1, by its MPIDR_EL1 value (RES1 bit 31)
    + ["adr x5, got", "2: ldr x6, [x5]", "cbz x6, 2b", "mov x0, x6", "brk #0",
       "secondary:", "adr x2, handler"]
    + mov64("x0", 0xC4000021) + ["mov x1, #0", "mov x3, #0", "mov x4, #0", "hvc #0"]   # REGISTER(0, handler)
    + sdei(0x22, 0)                                    # ENABLE(0)
    + sdei(0x2C)                                       # PE_UNMASK
    + sdei(0x28, 0) + ["mov x21, x0",
       "adr x5, ready", "mov x6, #1", "str x6, [x5]", "3: b 3b",
       "handler:", "mrs x9, mpidr_el1", "and x9, x9, #0xff", "add x9, x9, #0x100",
       "adr x5, got", "str x9, [x5]"]
    + mov64("x0", 0xC4000025) + ["hvc #0",             # EVENT_COMPLETE
       ".balign 8", "ready: .quad 0", "got: .quad 0"]) + "\n"


def test_sdei_events_are_private_to_each_pe_and_signal_reaches_the_target_pe():
    m = apflab.Machine(seed=0, vcpus=2)
    m.load_asm(SDEI_PER_PE)
    m.run(500_000)
    assert m.reg("x21", vcpu=1) == 3                 # registered + enabled on PE 1
    assert m.reg("x21") == 0                          # ...and not on PE 0
    assert m.reg("x22") == (1 << 64) - 2              # INVALID_PARAMETERS
    assert m.reg("x23") == (1 << 64) - 3              # DENIED (lab choice)
    assert m.reg("x25") == (1 << 64) - 2              # INVALID_PARAMETERS
    assert m.reg("x24") == 0                          # only the affinity fields count (TF-A)
    assert m.reg("x0") == 0x101                       # the handler ran on vCPU 1
    assert [r.get("vcpu") for r in m.trace.select("sdei_dispatch")] == [1]
    assert m.sdei_of(1) is not m.sdei


# ---------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("vcpus", [0, -1, MAX_VCPUS + 1, True, 2.0])
def test_vcpus_out_of_range_is_a_parameter_error(vcpus):
    with pytest.raises(apflab.ParameterError, match="vcpus"):
        apflab.Machine(seed=0, vcpus=vcpus)


def test_quantum_must_be_positive():
    with pytest.raises(apflab.ParameterError, match="quantum"):
        apflab.Machine(seed=0, vcpus=2, quantum=0)


def test_reg_of_a_vcpu_that_does_not_exist():
    m = apflab.Machine(seed=0, vcpus=2)
    with pytest.raises(apflab.ParameterError, match="vcpu"):
        m.reg("x0", vcpu=2)


SPINLOCK = """
_start:
    adr x4, lock
    mov x8, #1
    str x8, [x4]                 // vCPU 0 takes the lock and never releases it
    adr x12, secondary
""" + "\n".join("    " + l for l in mov64("x0", CPU_ON)) + """
    mov x1, #1
    mov x2, x12
    hvc #0
    adr x5, done
1:  ldr x6, [x5]                 // waits for vCPU 1, which waits for the lock
    cbz x6, 1b
    brk #0
secondary:
    adr x4, lock
2:  ldaxr x8, [x4]
    cbnz x8, 2b                  // spin
    mov x8, #1
    stxr w9, x8, [x4]
    cbnz w9, 2b
    adr x5, done
    str x8, [x5]
3:  b 3b
.balign 8
lock: .quad 0
done: .quad 0
"""


def test_a_spinlock_that_never_unlocks_stops_at_the_budget_naming_the_spinning_vcpus():
    m = apflab.Machine(seed=0, vcpus=2)
    m.load_asm(SPINLOCK)
    with pytest.raises(apflab.BudgetExceeded) as e:
        m.run(50_000)
    msg = str(e.value)
    assert "vCPU 0 running" in msg and "vCPU 1 running" in msg
    assert "ldaxr" in msg or "cbnz" in msg
    assert "max_instructions=50000" in msg


def test_every_vcpu_halted_with_nothing_to_wake_it_is_a_clear_error():
    src = ("_start:\n  adr x12, secondary\n" + "\n".join("  " + l for l in mov64("x0", CPU_ON))
           + "\n  mov x1, #1\n  mov x2, x12\n  hvc #0\n1: wfi\n  b 1b\nsecondary:\n2: wfi\n  b 2b\n")
    m = apflab.Machine(seed=0, vcpus=2)
    m.load_asm(src)
    with pytest.raises(apflab.GuestError, match="every vCPU is halted.*vCPU 0 halted.*vCPU 1 halted"):
        m.run(100_000)


def test_brk0_on_a_secondary_is_not_the_harness_stop():
    src = ("_start:\n  adr x12, secondary\n" + "\n".join("  " + l for l in mov64("x0", CPU_ON))
           + "\n  mov x1, #1\n  mov x2, x12\n  hvc #0\n1: b 1b\nsecondary:\n  brk #0\n")
    m = apflab.Machine(seed=0, vcpus=2)
    m.load_asm(src)
    with pytest.raises(apflab.GuestFault, match="brk with no exception vectors"):
        m.run(100_000)


def test_one_vcpu_machine_is_unchanged_by_default():
    m = apflab.Machine(seed=0)
    assert len(m.vcpus) == 1 and m.host.cpus[0].vcpu is m.vcpu
    assert m.psci is None


def test_a_several_vcpu_trace_saves_and_loads_with_its_lanes():
    m = run_counter(2)
    text = m.trace.to_json()
    back = apflab.Trace.from_json(text)
    assert back.digest() == m.trace.digest()
    assert back.lane(1)[0] == m.trace.lane(1)[0] and back.breakdown(vcpu=1) == m.trace.breakdown(vcpu=1)
    bad = text.replace('"lanes":[\n[0,', '"lanes":[\n[1,', 1)
    with pytest.raises(apflab.TraceFormatError):
        apflab.Trace.from_json(bad)


def test_a_one_pe_service_registered_directly_on_several_vcpus_is_refused():
    from apflab.host import Registration
    m = apflab.Machine(seed=0, vcpus=2, sdei=False, apf=False)

    class Probe:
        name = "probe"

        def handle(self, vcpu, call):
            return 0

    with pytest.raises(apflab.InvariantError, match="install_per_vcpu"):
        m.host.register(Registration("probe", Probe(), fids=(0x82000000, 0x82000001)))
    got = m.host.install_per_vcpu(lambda k: m.host.register(Registration("probe", Probe(),
                                                                         fids=(0x82000000, 0x82000001))))
    assert len(got) == 2 and got[0] is not got[1]
