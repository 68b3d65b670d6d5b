"""An IRQ held off by PSTATE.I is taken right after the instruction that unmasks it.

The architecture takes a pending IRQ as soon as PSTATE.I clears (after
``msr daifclr``, ``msr daif`` or an ``eret`` restoring an SPSR with I clear), not
some instructions later. Each guest below lets the timer fire while IRQs are
masked, unmasks them one way, then counts instructions in x5: the IRQ handler
must see x5 == 0.
"""

import pytest

import apflab

HEAD = r"""
_start:
    adr x0, vectors
    msr vbar_el1, x0
    mov x0, #0xff
    msr s3_0_c4_c6_0, x0        // ICC_PMR_EL1
    mov x0, #1
    msr s3_0_c12_c12_7, x0      // ICC_IGRPEN1_EL1
    mrs x0, cntvct_el0
    add x0, x0, #50
    msr cntv_cval_el0, x0
    mov x0, #1
    msr cntv_ctl_el0, x0        // fires ~50 instructions from now, IRQs still masked
    mov x5, #0
    .rept 300
    nop
    .endr
"""

TAIL = r"""
counting:
    .rept 300
    add x5, x5, #1
    .endr
    brk #0

    .balign 2048
vectors:
    .space 0x280
    b irq                       // 0x280: IRQ from EL1
    .space 0x480 - 0x284
    b irq                       // 0x480: IRQ from EL0
    .space 0x800 - 0x484
irq:
    mov x6, x5                  // instructions run between the unmask and the IRQ
    mrs x9, s3_0_c12_c12_0      // ICC_IAR1_EL1
    msr s3_0_c12_c12_1, x9      // ICC_EOIR1_EL1
    brk #0
"""

UNMASKS = {
    "daifclr": "    msr daifclr, #2\n    b counting\n",
    "msr_daif": "    mov x1, #0x300              // D and A stay set, I and F clear\n    msr daif, x1\n    b counting\n",
    "eret": ("    adr x0, counting\n    msr elr_el1, x0\n    msr spsr_el1, xzr           // EL0t, DAIF clear\n"
             "    adr x0, stack_top\n    msr sp_el0, x0\n    eret\n    .balign 16\nstack: .space 256\nstack_top:\n"),
}


@pytest.mark.parametrize("how", sorted(UNMASKS))
def test_pending_irq_is_taken_right_after_the_unmasking_instruction(how):
    m = apflab.Machine(seed=0)
    m.load_asm(HEAD + UNMASKS[how] + TAIL)
    m.run(max_instructions=10_000)
    assert m.reg("x9") == 27                         # the timer's PPI was acknowledged
    assert m.reg("x6") == 0, f"IRQ taken {m.reg('x6')} instructions after the unmask"
    irq = m.trace.select("irq")
    assert len(irq) == 1


def test_masking_write_does_not_stop_early():
    # msr daif with I set keeps the IRQ pending: the guest reaches brk #0 in the
    # counting loop (x5 == 300) and never enters the handler.
    src = HEAD + "    mov x1, #0x3c0\n    msr daif, x1\n    b counting\n" + TAIL
    m = apflab.Machine(seed=0)
    m.load_asm(src)
    m.run(max_instructions=10_000)
    assert m.reg("x5") == 300 and not m.trace.select("irq")


def test_unmask_kinds_decode_the_instruction_words():
    from apflab.asm import assemble
    from apflab.cpu import unmask_kind
    words = {}
    for text in ("eret", "msr daifclr, #2", "msr daifclr, #0xf", "msr daifclr, #1", "msr daifset, #2",
                 "msr daif, x3", "mrs x3, daif", "nop"):
        code = assemble(text, 0x4000_0000).code
        words[text] = unmask_kind(int.from_bytes(code[:4], "little"))
    assert words == {"eret": "eret", "msr daifclr, #2": "daifclr", "msr daifclr, #0xf": "daifclr",
                     "msr daifclr, #1": None, "msr daifset, #2": None, "msr daif, x3": "msr_daif",
                     "mrs x3, daif": None, "nop": None}


def test_gleb2010_defaults_have_no_slot_busy_fallback():
    # With the IRQ taken up to 64 instructions late, a task could fault while the
    # page-ready notice still sat unread in the shared slot (16 slot_busy fallbacks).
    from apflab import run_scenario
    r = run_scenario("gleb2010", apf=True, seed=0)
    assert "slot_busy" not in r.fallbacks and r.apf_not_present > 500
