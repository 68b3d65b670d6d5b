"""The paravirtual "vCPU preempted" flag (pvlock.py): discovery through SMCCC, the per-vCPU
structure in the host's reserved page, and when the host sets the flag. Guest-level tests
in assembly: the guest calls PV_LOCK_PREEMPTED and reads the flag itself."""

import pytest

import apflab
from apflab import pvlock
from apflab.errors import ParameterError
from apflab.smccc import SMCCC_ARCH_FEATURES
from apflab.stage2 import PageState

from guestlib import mov64
from test_smp import CPU_ON

NOT_SUPPORTED = (1 << 64) - 1
PV_TIME_FEATURES = 0xC5000020      # DEN0057: another owner's call, not PV lock's


def call(fid: int, x1: int = 0) -> list[str]:
    return mov64("x0", fid) + mov64("x1", x1) + ["hvc #0"]


DISCOVERY = "\n".join(
    ["_start:"]
    + call(SMCCC_ARCH_FEATURES, pvlock.PV_LOCK_FEATURES) + ["mov x19, x0"]
    + call(pvlock.PV_LOCK_FEATURES, pvlock.PV_LOCK_FEATURES) + ["mov x20, x0"]
    + call(pvlock.PV_LOCK_FEATURES, pvlock.PV_LOCK_PREEMPTED) + ["mov x21, x0"]
    + call(pvlock.PV_LOCK_FEATURES, PV_TIME_FEATURES) + ["mov x22, x0"]
    + call(pvlock.PV_LOCK_PREEMPTED) + ["mov x23, x0"]
    + ["brk #0"]) + "\n"


def test_discovery_with_the_service_on():
    m = apflab.Machine(seed=0, pv_lock="preempted")
    m.load_asm(DISCOVERY)
    m.run(10_000)
    assert [m.reg(r) for r in ("x19", "x20", "x21")] == [0, 0, 0]
    assert m.reg("x22") == NOT_SUPPORTED
    addr = m.reg("x23")
    assert addr == m.pv_lock.address(0) == m.ram_base + m.ram_size - 4096


@pytest.mark.parametrize("vcpus", [1, 2])
def test_not_supported_when_the_service_is_off(vcpus):
    m = apflab.Machine(seed=0, vcpus=vcpus)
    m.load_asm(DISCOVERY)
    m.run(10_000)
    assert [m.reg(r) for r in ("x19", "x20", "x21", "x22", "x23")] == [NOT_SUPPORTED] * 5
    assert m.pv_lock is None


# Each vCPU asks for its own structure and stores the answer in ``addrs[i]``; each then
# reads its own flag (0: it is running) into ``seen[i]``.
PER_VCPU = "\n".join(
    ["_start:", "adr x12, secondary"]
    + sum((mov64("x0", CPU_ON) + [f"mov x1, #{i}", "mov x2, x12", f"mov x3, #{i}", "hvc #0"]
           for i in (1, 2, 3)), [])
    + ["mov x0, #0", "bl publish",
       "adr x5, done", "1: ldar x6, [x5]", "cmp x6, #3", "b.ne 1b", "brk #0",
       "publish:", "mov x9, x0",
       *mov64("x0", pvlock.PV_LOCK_PREEMPTED), "hvc #0",
       "adr x5, addrs", "str x0, [x5, x9, lsl #3]",
       "ldr x6, [x0]", "adr x5, seen", "str x6, [x5, x9, lsl #3]", "ret",
       "secondary:", "bl publish",
       "adr x5, done", "2: ldaxr x6, [x5]", "add x6, x6, #1", "stlxr w7, x6, [x5]", "cbnz w7, 2b",
       "3: wfi", "b 3b",
       ".balign 8", "done: .quad 0", "addrs: .quad 0, 0, 0, 0", "seen: .quad 9, 9, 9, 9"]) + "\n"


def test_each_vcpu_has_its_own_aligned_resident_structure():
    m = apflab.Machine(seed=0, vcpus=4, pv_lock="preempted", memory_limit=64 * 4096)
    syms = m.load_asm(PER_VCPU)
    m.run(1_000_000)
    addrs = [m.read_u64(syms["addrs"] + 8 * i) for i in range(4)]
    assert len(set(addrs)) == 4
    assert all(a % pvlock.STATE_SIZE == 0 for a in addrs)
    assert addrs == [m.pv_lock.address(i) for i in range(4)]
    assert [m.read_u64(syms["seen"] + 8 * i) for i in range(4)] == [0, 0, 0, 0]
    gpn = m.stage2.gpn_of(addrs[0])
    assert all(m.stage2.gpn_of(a) == gpn for a in addrs)
    assert gpn in m.stage2.pinned and m.page_state(addrs[0]) == PageState.RESIDENT
    m.stage2.set_limit(4)                      # squeeze: every page but the pinned ones may go
    assert m.page_state(addrs[0]) == PageState.RESIDENT
    assert not m.trace.select("stage2_fault", gpn=gpn)   # the guest never faulted on it


def test_the_boot_stack_starts_below_the_reserved_page():
    m = apflab.Machine(seed=0, pv_lock="preempted")
    m.load_asm("_start:\n brk #0\n")
    assert m.reg("sp") == m.pv_lock.base
    plain = apflab.Machine(seed=0)
    plain.load_asm("_start:\n brk #0\n")
    assert plain.reg("sp") == plain.ram_base + plain.ram_size


def test_bad_inputs():
    with pytest.raises(ParameterError, match="pv_lock"):
        apflab.Machine(seed=0, pv_lock="stalled")
    m = apflab.Machine(seed=0, pv_lock="preempted", ram_size=64 * 1024)
    with pytest.raises(ParameterError, match="preempted flags"):
        m.load_asm("_start:\n brk #0\n", base=m.pv_lock.base)
    with pytest.raises(ParameterError, match="overlaps"):
        m.pv_lock.check_free(m.pv_lock.base - 8, m.pv_lock.base + 8)
    m.pv_lock.check_free(m.ram_base, m.pv_lock.base)        # up to it is fine


# vCPU 0 publishes its flag's address, starts vCPU 1 and waits until vCPU 1 watches the flag;
# then it touches ``page`` (swapped out: APF off, so a synchronous stall) or, with
# ``work`` > 0, counts to ``work``; then it ends the watch. vCPU 1 adds vCPU 0's flag into
# x20 on every read (x21 counts the reads).
def watcher(touch: bool, work: int = 0) -> str:
    act = ["adr x4, page", "ldr x7, [x4]"] if touch else mov64("x7", work) + ["5: subs x7, x7, #1", "b.ne 5b"]
    return "\n".join(
        ["_start:", *mov64("x0", pvlock.PV_LOCK_PREEMPTED), "hvc #0", "adr x5, flag0", "str x0, [x5]",
         "adr x12, secondary", *mov64("x0", CPU_ON), "mov x1, #1", "mov x2, x12", "mov x3, #0", "hvc #0",
         "adr x5, ready", "1: ldar x6, [x5]", "cbz x6, 1b",
         *act,
         "adr x5, phase", "mov x6, #1", "stlr x6, [x5]",
         "adr x5, acked", "2: ldar x6, [x5]", "cbz x6, 2b", "brk #0",
         "secondary:", "adr x5, flag0", "ldr x8, [x5]",
         "adr x5, ready", "mov x6, #1", "stlr x6, [x5]",
         "mov x20, #0", "mov x21, #0", "adr x9, phase",
         "3: ldr x6, [x8]", "add x20, x20, x6", "add x21, x21, #1", "ldar x10, [x9]", "cbz x10, 3b",
         "adr x5, acked", "mov x6, #1", "stlr x6, [x5]",
         "4: wfi", "b 4b",
         ".balign 8", "flag0: .quad 0", "ready: .quad 0", "phase: .quad 0", "acked: .quad 0",
         ".balign 4096", "page: .quad 0"]) + "\n"


def run_stall(mode):
    m = apflab.Machine(seed=0, vcpus=2, apf=False, pv_lock=mode)
    syms = m.load_asm(watcher(touch=True))
    m.write_u64(syms["page"], 77)
    m.evict(syms["page"])
    m.run(5_000_000)
    assert m.reg("x7") == 77
    stall = m.trace.select("stall", vcpu=0)
    assert len(stall) == 1 and stall[0].get("ns") > 10_000
    return m, stall[0]


def test_vcpu1_sees_vcpu0_flagged_while_it_stalls_with_the_stall_option():
    m, stall = run_stall("preempted+stalled")
    seen, reads = m.reg("x20", vcpu=1), m.reg("x21", vcpu=1)
    assert seen > 1000 and seen < reads       # flagged during the stall only
    assert m.read_u64(m.pv_lock.address(0)) == 0            # running again at the end
    flips = [(r.get("value"), r.get("why")) for r in m.trace.select("pv_preempted", vcpu=0)]
    assert flips == [(1, "stalled"), (0, "running")]
    on, off = m.trace.select("pv_preempted", vcpu=0)
    assert on.t_ns == stall.t_ns - stall.get("ns")          # set when the stall starts
    assert off.t_ns >= stall.t_ns                           # cleared when it runs again


def test_kvm_semantics_do_not_flag_a_vcpu_sleeping_in_a_fault():
    m, _ = run_stall("preempted")
    assert m.reg("x20", vcpu=1) == 0 and m.reg("x21", vcpu=1) > 1000
    assert not m.trace.select("pv_preempted")


def run_overcommit(pcpus, mode="preempted", slice_ns=20_000):
    m = apflab.Machine(seed=0, vcpus=2, apf=False, pv_lock=mode, pcpus=pcpus, time_slice_ns=slice_ns)
    m.load_asm(watcher(touch=False, work=100_000))
    m.run(5_000_000)
    return m


def test_flag_set_while_preempted_under_overcommit():
    """Two vCPUs on one pCPU: vCPU 1 runs only while vCPU 0 waits for the pCPU, so every
    read vCPU 1 makes after vCPU 0's first preemption finds it flagged."""
    m = run_overcommit(1)
    seen, reads = m.reg("x20", vcpu=1), m.reg("x21", vcpu=1)
    assert m.cpu_report()["preemptions"] > 4
    assert reads > 1000 and seen == reads
    recs = m.trace.select("pv_preempted", vcpu=0)
    assert recs and {r.get("why") for r in recs} == {"preempted", "running"}
    assert [r.get("value") for r in recs] == [1, 0] * (len(recs) // 2) + [1] * (len(recs) % 2)


def test_no_flag_with_a_pcpu_each():
    m = run_overcommit(2)
    assert m.reg("x20", vcpu=1) == 0 and m.reg("x21", vcpu=1) > 1000
    assert m.cpu_report()["preemptions"] == 0


def test_same_seed_same_trace_with_the_flag():
    a, b = run_overcommit(1), run_overcommit(1)
    assert a.trace.digest() == b.trace.digest()
