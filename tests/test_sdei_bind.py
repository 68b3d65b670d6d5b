"""INTERRUPT_BIND: a bound PPI is delivered as an SDEI event, not as an IRQ."""

import apflab
from apflab.sdei import BOUND_EVENT_BASE

GUEST = r"""
_start:
    adr x20, log
    // bind the virtual timer's PPI 27
    movz x0, #0xC400, lsl #16
    add x0, x0, #0x2D            // INTERRUPT_BIND
    mov x1, #27
    hvc #0
    str x0, [x20], #8
    mov x21, x0                  // the bound event number
    movz x0, #0xC400, lsl #16
    add x0, x0, #0x21            // EVENT_REGISTER(event, handler, arg 0x55, flags 0, aff 0)
    mov x1, x21
    adr x2, handler
    mov x3, #0x55
    mov x4, #0
    mov x5, #0
    hvc #0
    str x0, [x20], #8
    movz x0, #0xC400, lsl #16
    add x0, x0, #0x22            // EVENT_ENABLE
    mov x1, x21
    hvc #0
    movz x0, #0xC400, lsl #16
    add x0, x0, #0x2C            // PE_UNMASK
    hvc #0
    // arm the timer; IRQs stay masked (DAIF.I set) - the event must still arrive
    mrs x0, cntvct_el0
    add x0, x0, #2000
    msr cntv_cval_el0, x0
    mov x0, #1
    msr cntv_ctl_el0, x0
    adr x22, fired
1:  ldr x0, [x22]
    cbz x0, 1b
    brk #0

handler:                          // x0 = event, x1 = ep_arg
    str x0, [x20], #8
    str x1, [x20], #8
    mov x9, #1
    adr x10, fired
    str x9, [x10]
    mov x9, #3                   // disarm: ENABLE | IMASK, so the line drops
    msr cntv_ctl_el0, x9
    movz x0, #0xC400, lsl #16
    add x0, x0, #0x25            // EVENT_COMPLETE
    mov x1, #0
    hvc #0

    .balign 8
fired: .quad 0
log:   .space 64
"""


def test_bound_timer_interrupt_arrives_as_its_sdei_event():
    m = apflab.Machine(seed=0)
    syms = m.load_asm(GUEST)
    m.run(max_instructions=200_000)
    log = [m.read_u64(syms["log"] + 8 * i) for i in range(4)]
    assert log[0] == BOUND_EVENT_BASE            # INTERRUPT_BIND returned the event number
    assert log[1] == 0                           # REGISTER succeeded
    assert log[2] == BOUND_EVENT_BASE            # the handler got x0 = that event
    assert log[3] == 0x55                        # and its ep_arg
    assert not m.trace.select("irq")             # never delivered as an IRQ
    assert [r.get("event") for r in m.trace.select("sdei_dispatch")] == [BOUND_EVENT_BASE]
