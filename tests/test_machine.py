"""Guest-level tests of the machine: exceptions, eret, timer IRQ, WFI, stage-2, errors."""

import pytest

import apflab
from apflab import BudgetExceeded, GuestError, GuestFault, ParameterError
from apflab.stage2 import PageState

RAM = apflab.RAM_BASE

# A guest with vectors: SVC from EL0 counts and returns; IRQs from EL1 or EL0
# acknowledge the GIC, count timer ticks and re-arm the timer.
KERNEL = r"""
    .equ TICK, 4000
_start:
    adr x0, vectors
    msr vbar_el1, x0
    mov x0, #0xff
    msr s3_0_c4_c6_0, x0        // ICC_PMR_EL1: let every priority through
    mov x0, #1
    msr s3_0_c12_c12_7, x0      // ICC_IGRPEN1_EL1
    mrs x0, cntvct_el0
    add x0, x0, #TICK
    msr cntv_cval_el0, x0
    mov x0, #1
    msr cntv_ctl_el0, x0        // timer on
    msr daifclr, #2             // IRQs on
    adr x19, ticks
1:  ldr x1, [x19]
    cmp x1, #3
    b.lt 1b
    // halt until the next tick: wfi must wake on the timer
    ldr x20, [x19]
    wfi
    ldr x21, [x19]
    // touch the data page that the test evicted before the run
    adr x2, data
    ldr x22, [x2]
    // drop to EL0 and make a system call there
    msr daifset, #2
    adr x0, el0_code
    msr elr_el1, x0
    mov x0, #0                  // SPSR: EL0t, interrupts unmasked
    msr spsr_el1, x0
    adr x0, el0_stack_top
    msr sp_el0, x0
    eret

el0_code:
    mov x7, #0x77
    svc #0x42
    mov x23, x7                 // survives the system call
    mov x24, sp
    brk #0

    .balign 2048
vectors:
    .space 0x280
irq_cur:                        // 0x280: IRQ from EL1 with SP_EL1
    b irq
    .space 0x400 - 0x284
sync_lower:                     // 0x400: synchronous from EL0
    mrs x9, esr_el1
    adr x10, last_esr
    str x9, [x10]
    adr x10, svc_count
    ldr x11, [x10]
    add x11, x11, #1
    str x11, [x10]
    eret
    .space 0x480 - 0x420
irq_lower:                      // 0x480: IRQ from EL0
    b irq
    .space 0x800 - 0x484

irq:
    mrs x9, s3_0_c12_c12_0      // ICC_IAR1_EL1
    cmp x9, #27
    b.ne 2f
    adr x10, ticks
    ldr x11, [x10]
    add x11, x11, #1
    str x11, [x10]
    mrs x12, cntv_cval_el0
    add x12, x12, #TICK
    msr cntv_cval_el0, x12
2:  msr s3_0_c12_c12_1, x9      // ICC_EOIR1_EL1
    eret

    .balign 8
ticks:     .quad 0
svc_count: .quad 0
last_esr:  .quad 0
    .balign 4096
data:      .quad 0x1122334455667788
    .space 4096 - 8
el0_stack: .space 1024
el0_stack_top:
"""


def test_exceptions_timer_wfi_stage2_and_svc_from_el0():
    m = apflab.Machine(seed=0)
    syms = m.load_asm(KERNEL)
    data = syms["data"]
    assert m.page_state(data) == PageState.RESIDENT
    m.evict(data)
    assert m.page_state(data) == PageState.SWAPPED
    assert m.read_u64(data) == 0x1122334455667788      # readable wherever it is
    r = m.run(max_instructions=2_000_000)
    assert m.reg("x20") + 1 == m.reg("x21")              # wfi woke on exactly one tick
    assert m.reg("x22") == 0x1122334455667788            # bytes came back from swap
    assert m.page_state(data) == PageState.RESIDENT
    assert m.read_u64(syms["svc_count"]) == 1
    esr = m.read_u64(syms["last_esr"])
    assert esr >> 26 == 0x15 and esr & 0xFFFF == 0x42 and esr & (1 << 25)
    assert m.reg("x23") == 0x77
    assert m.reg("x24") == syms["el0_stack_top"]         # EL0 kept its own stack
    assert (m.reg("pstate") >> 2) & 3 == 0              # stopped at EL0
    bd = m.trace.breakdown()
    assert sum(bd.values()) == r.elapsed_ns == m.now_ns
    assert bd["el0"] > 0 and bd["halted"] > 0 and bd["stalled"] > 0
    # the synchronous page-in stalled the vCPU for the swap device's latency
    stalls = m.trace.select("stall")
    assert len(stalls) == 1 and stalls[0].get("ns") > 10_000


def test_same_seed_same_trace():
    digests = set()
    for _ in range(2):
        m = apflab.Machine(seed=7)
        syms = m.load_asm(KERNEL)
        m.evict(syms["data"])
        m.run(max_instructions=2_000_000)
        digests.add(m.trace.digest())
    assert len(digests) == 1
    m = apflab.Machine(seed=8)
    syms = m.load_asm(KERNEL)
    m.evict(syms["data"])
    m.run(max_instructions=2_000_000)
    assert m.trace.digest() not in digests               # the seed drives the page-in latency


def test_harness_registers_and_memory():
    m = apflab.Machine(seed=0)
    syms = m.load_asm("_start:\n add x0, x1, x2\n str x0, [x3]\n brk #0\n buf: .quad 0")
    m.set_reg("x1", 40)
    m.set_reg("x2", 2)
    m.set_reg("x3", syms["buf"])
    r = m.run()
    assert m.reg("x0") == 42 and m.read_u64(syms["buf"]) == 42
    assert r.instructions == 3 and r.pc == syms["_start"] + 8
    m.write_u64(syms["buf"], 5)
    assert m.read_u64(syms["buf"]) == 5
    with pytest.raises(KeyError, match="unknown register"):
        m.reg("x99")


def test_runaway_guest_stops_at_budget_with_pc():
    m = apflab.Machine(seed=0)
    syms = m.load_asm("_start:\nloop: b loop\n")
    with pytest.raises(BudgetExceeded) as e:
        m.run(max_instructions=10_000)
    assert e.value.pc == syms["loop"] and "b" in e.value.insn


def test_svc_without_vectors_names_pc_and_syndrome():
    m = apflab.Machine(seed=0)
    syms = m.load_asm("_start:\n nop\nbad: svc #3\n brk #0")
    with pytest.raises(GuestFault) as e:
        m.run()
    assert e.value.pc == syms["bad"]
    assert "svc" in e.value.insn and "EC=0x15" in e.value.syndrome


def test_undefined_instruction_without_vectors():
    m = apflab.Machine(seed=0)
    syms = m.load_asm("_start:\n nop\nbad: .word 0\n brk #0")
    with pytest.raises(GuestFault, match="undefined") as e:
        m.run()
    assert e.value.pc == syms["bad"]


def test_access_outside_ram_is_a_clear_error():
    m = apflab.Machine(seed=0)
    syms = m.load_asm("_start:\n mov x1, #0x1000\nbad: ldr x0, [x1]\n brk #0")
    with pytest.raises(GuestFault, match="outside guest RAM") as e:
        m.run()
    assert e.value.pc == syms["bad"] and "ldr" in e.value.insn


def test_wfi_with_nothing_to_wake_it():
    m = apflab.Machine(seed=0)
    m.load_asm("_start:\n wfi\n brk #0")
    with pytest.raises(GuestError, match="nothing that could ever wake it"):
        m.run()


def test_unknown_hypercall_returns_not_supported():
    m = apflab.Machine(seed=0)
    m.load_asm("_start:\n movz x0, #0x8200, lsl #16\n hvc #0\n brk #0")
    m.run()
    assert m.reg("x0") == (1 << 64) - 1


def test_bad_parameters():
    with pytest.raises(ParameterError):
        apflab.Machine(seed=0, ram_size=1000)
    with pytest.raises(ParameterError):
        apflab.Machine(seed=0, ns_per_insn=0)
    m = apflab.Machine(seed=0)
    with pytest.raises(ParameterError, match="load_asm"):
        m.run()
    with pytest.raises(apflab.AsmError, match="_start"):
        m.load_asm("main: nop")


def test_exception_in_a_host_handler_is_not_swallowed():
    m = apflab.Machine(seed=0)
    m.load_asm("_start:\n mrs x0, cntvct_el0\n brk #0")

    def boom():
        raise RuntimeError("boom")
    from apflab.timer import CNTVCT_EL0
    m.vcpu.sysreg_read[CNTVCT_EL0] = boom
    with pytest.raises(RuntimeError, match="boom"):
        m.run()
