"""The fast path (trapped GIC registers and hypercalls handled inside the engine's
hooks) changes nothing a run produces: the same trace digest, the same final guest state, on
every scenario and every delivery design, with one vCPU and with two. ``APFLAB_SLOW_PATH=1``
selects the slow path."""

import hashlib

import pytest

import apflab
from apflab import host as H
from apflab import psci, scenarios

from guestlib import mov64

SMALL = {
    "memtouch": dict(npages=48, limit_pages=12, rounds=2),
    "gleb2010": dict(npages=24, limit_pages=40, fault_tasks=2, compute_tasks=2, duration_ns=3_000_000),
    "postcopy": dict(npages=48),
    "syscall_read": dict(npages=32, limit_pages=8),
    "smp_memtouch": dict(vcpus=1, npages=24, limit_pages=8, rounds=2),
    "lock_holder": dict(vcpus=2, npages=4, rounds=1),
    "overcommit": dict(npages=24, limit_pages=8, duration_ns=2_000_000, time_slice_ns=500_000),
}
# The fast path serves one vCPU without physical-CPU scheduling (host._exit_continue); these
# runs have several vCPUs or a HostScheduler, so both paths must agree while it stays off.
SLOW_ONLY = {"lock_holder", "overcommit"}


def _state(m) -> dict:
    """What a run leaves behind: every vCPU's registers, RAM, clocks, retired counts."""
    return {"regs": [m.regs(i) for i in range(len(m.host.cpus))],
            "ram": hashlib.sha256(m.vcpu.ram).hexdigest(),
            "now": [st.now for st in m.host.cpus], "retired": m.host.retired}


def _run_scenario(monkeypatch, slow: bool, name: str, design: str):
    monkeypatch.setenv("APFLAB_SLOW_PATH", "1" if slow else "0")
    apf = design != "sync"
    setup = scenarios.build(name, apf=apf, delivery="sdei" if design == "sync" else design, seed=3,
                            **SMALL[name])
    result = setup.run()
    machines = [t[0] for t in setup.tenants] if name == "overcommit" else [setup.machine]
    assert all(m.host.fast_path is not slow for m in machines)
    return ([m.trace.digest() for m in machines], [_state(m) for m in machines],
            sum(m.vcpu.inline_traps for m in machines))


def test_the_environment_variable_selects_the_path(monkeypatch):
    monkeypatch.setenv("APFLAB_SLOW_PATH", "1")
    assert not H.fast_path_default() and not apflab.Machine(seed=0).host.fast_path
    monkeypatch.setenv("APFLAB_SLOW_PATH", "0")
    assert H.fast_path_default() and apflab.Machine(seed=0).host.fast_path
    monkeypatch.delenv("APFLAB_SLOW_PATH")
    assert apflab.Machine(seed=0).host.fast_path


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_every_design_gives_the_same_trace_and_state_on_both_paths(monkeypatch, name):
    inlined = 0
    for design in scenarios.DESIGNS:
        slow_digest, slow_state, slow_inline = _run_scenario(monkeypatch, True, name, design)
        fast_digest, fast_state, fast_inline = _run_scenario(monkeypatch, False, name, design)
        assert slow_inline == 0
        assert fast_digest == slow_digest, f"{name}/{design}: traces differ"
        assert fast_state == slow_state, f"{name}/{design}: final guest state differs"
        inlined += fast_inline
    if name in SLOW_ONLY:
        assert inlined == 0
    elif name == "postcopy":
        # The post-copy stream commits pages at every turn of the loop (backing.py
        # background_due): the fast path leaves those runs to the slow path entirely.
        assert inlined == 0
    else:
        assert inlined > 0, f"{name}: the fast path never handled a trap inside the engine"


# Two vCPUs: vCPU 0 starts vCPU 1, then both take timer interrupts (ICC_IAR1/EOIR1 traps) and
# vCPU 0 sends vCPU 1 SGIs; vCPU 0 stops when vCPU 1 has counted 5 SGIs and 3 ticks.
TWO = """
_start:
    adr x12, secondary
""" + "\n".join("    " + line for line in mov64("x0", psci.CPU_ON_64)) + """
    mov x1, #1
    mov x2, x12
    hvc #0
    bl setup
    mov x20, #0
1:  movz x0, #2                  // target list: Aff0 = 1
    movk x0, #(5 << 8), lsl #16  // INTID 5
    msr s3_0_c12_c11_5, x0       // ICC_SGI1R_EL1
    add x20, x20, #1
    mov x7, #400
2:  subs x7, x7, #1
    b.ne 2b
    adr x5, sgis
    ldr x6, [x5]
    cmp x6, #5
    b.lo 1b
    adr x5, ticks
    ldr x6, [x5]
    cmp x6, #3
    b.lo 1b
    brk #0
secondary:
    bl setup
3:  wfi
    b 3b
setup:
    adr x0, vectors
    msr vbar_el1, x0
    mov x0, #0xff
    msr s3_0_c4_c6_0, x0         // ICC_PMR_EL1
    mov x0, #1
    msr s3_0_c12_c12_7, x0       // ICC_IGRPEN1_EL1
    mrs x0, cntvct_el0
    add x0, x0, #3000
    msr cntv_cval_el0, x0
    mov x0, #1
    msr cntv_ctl_el0, x0
    msr daifclr, #2
    ret
.balign 2048
vectors:
    .space 0x280
    mrs x9, s3_0_c12_c12_0       // ICC_IAR1_EL1
    mrs x10, mpidr_el1
    and x10, x10, #0xff
    cmp x9, #27
    b.eq 4f
    cbz x10, 5f
    adr x5, sgis
    ldr x6, [x5]
    add x6, x6, #1
    str x6, [x5]
    b 5f
4:  mrs x11, cntvct_el0
    add x11, x11, #3000
    msr cntv_cval_el0, x11
    cbz x10, 5f
    adr x5, ticks
    ldr x6, [x5]
    add x6, x6, #1
    str x6, [x5]
5:  msr s3_0_c12_c12_1, x9       // ICC_EOIR1_EL1
    eret
.balign 8
sgis: .quad 0
ticks: .quad 0
"""

# One vCPU: timer interrupts and SGIs to itself; the handler counts them.
ONE = """
_start:
    adr x0, vectors
    msr vbar_el1, x0
    mov x0, #0xff
    msr s3_0_c4_c6_0, x0         // ICC_PMR_EL1
    mov x0, #1
    msr s3_0_c12_c12_7, x0       // ICC_IGRPEN1_EL1
    mrs x0, cntvct_el0
    add x0, x0, #2000
    msr cntv_cval_el0, x0
    mov x0, #1
    msr cntv_ctl_el0, x0
    msr daifclr, #2
    mov x20, #0
1:  mov x0, #(3 << 24)           // INTID 3, target list: Aff0 = 0 (itself)
    orr x0, x0, #1
    msr s3_0_c12_c11_5, x0       // ICC_SGI1R_EL1
    mov x7, #300
2:  subs x7, x7, #1
    b.ne 2b
    add x20, x20, #1
    cmp x20, #20
    b.lo 1b
    brk #0
.balign 2048
vectors:
    .space 0x280
    mrs x9, s3_0_c12_c12_0       // ICC_IAR1_EL1
    cmp x9, #27
    b.ne 4f
    mrs x11, cntvct_el0
    add x11, x11, #2000
    msr cntv_cval_el0, x11
    add x22, x22, #1
    b 5f
4:  add x21, x21, #1
5:  msr s3_0_c12_c12_1, x9       // ICC_EOIR1_EL1
    eret
"""


def _run_machine(monkeypatch, slow: bool, vcpus: int, src: str):
    monkeypatch.setenv("APFLAB_SLOW_PATH", "1" if slow else "0")
    m = apflab.Machine(seed=1, vcpus=vcpus)
    m.load_asm(src)
    m.run(2_000_000)
    return m


@pytest.mark.parametrize("vcpus,src", [(1, ONE), (2, TWO)])
def test_interrupt_heavy_guests_give_the_same_trace_on_both_paths(monkeypatch, vcpus, src):
    slow = _run_machine(monkeypatch, True, vcpus, src)
    fast = _run_machine(monkeypatch, False, vcpus, src)
    assert slow.trace.select("irq_ack") and slow.trace.select("irq_eoi")
    assert fast.trace.digest() == slow.trace.digest()
    assert _state(fast) == _state(slow)
    if vcpus == 1:
        assert fast.reg("x21") == 20 and fast.reg("x22") > 0
        assert fast.vcpu.inline_traps > 0
    else:
        assert fast.vcpu.inline_traps == 0      # several vCPUs: every trap takes the slow path


def test_a_host_error_inside_the_hook_is_raised_as_on_the_slow_path(monkeypatch):
    """An error the host raises while the fast path handles a trap keeps its type."""
    errors = []
    for slow in (True, False):
        monkeypatch.setenv("APFLAB_SLOW_PATH", "1" if slow else "0")
        m = apflab.Machine(seed=1)
        m.load_asm(ONE)

        def boom(value, gic=m.host.gic):
            if gic.active_stack:
                raise apflab.errors.InvariantError("eoi refused")
        m.vcpu.sysreg_write[(3, 0, 12, 12, 1)] = boom
        with pytest.raises(apflab.errors.InvariantError, match="eoi refused") as e:
            m.run(2_000_000)
        errors.append((type(e.value), m.host.retired, m.trace.digest()))
    assert errors[0] == errors[1]
