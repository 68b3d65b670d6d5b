"""Build-it exercises: the grader runs the guest with the student's code and says what is wrong in
words. The empty skeleton gets a "what is missing" message (never a crash or a hang), the
solution passes, and typical mistakes are named (clobbered register, wrong token, no IRQ_ACK)."""

import pytest

from apflab.exercises import holes
from apflab.exercises.build import PageNotPresentEntry, PageReadyHandler
from apflab.exercises.lab02 import PeriodicTick, tick_solution
from apflab.errors import AsmError
from apflab.machine import Machine


def test_kernel_marks_both_regions():
    assert {"page_ready_irq", "page_not_present"} <= set(holes.names())
    assert "apf_page_ready:" in holes.reference("page_ready_irq")
    assert "sdei_apf_entry:" in holes.reference("page_not_present")


@pytest.mark.parametrize("cls", [PageReadyHandler, PageNotPresentEntry])
@pytest.mark.parametrize("seed", [0, 3])
def test_solution_passes_and_skeleton_says_what_is_missing(cls, seed):
    ex = cls(seed)
    good = ex.check(ex.answer())
    assert good, good.message
    assert "every walker finished" in good.message
    bad = ex.check(ex.skeleton())
    assert not bad
    if cls is PageReadyHandler:
        assert "never got IRQ_ACK" in bad.message and "never woken" in bad.message
    else:
        assert "never completed the event" in bad.message


def test_page_ready_without_freeing_the_slot_is_named():
    ex = PageReadyHandler(1)
    code = ex.answer().replace("apf_page_ready_ack:\n\tstr\twzr, [x20, #APF_TOKEN]\n\tstr\twzr, [x20, #APF_REASON]\n",
                               "apf_page_ready_ack:\n")
    assert code != ex.answer()
    r = ex.check(code)
    assert not r and "reason was still non-zero" in r.message


def test_page_ready_without_the_end_of_interrupt_is_named():
    ex = PageReadyHandler(2)
    code = ex.answer().replace("\tmsr\ts3_0_c12_c12_1, x19", "\tnop")
    assert code != ex.answer()
    r = ex.check(code)
    assert not r and "ICC_EOIR1_EL1 was never written for the page-ready interrupt" in r.message
    assert ex.check(ex.answer())


def test_page_ready_waking_the_wrong_task_is_named():
    ex = PageReadyHandler(0)
    # look the waiter up under token + 0x1000: another task's token (or none)
    code = ex.answer().replace("\tmov\tw9, w22\n\tmov\tx10, #APF_KIND_WAITER\n",
                               "\tadd\tw9, w22, #0x1000\n\tmov\tx10, #APF_KIND_WAITER\n", 1)
    assert code != ex.answer()
    r = ex.check(code)
    assert not r and ("was not woken" in r.message or "woke task" in r.message)


def test_page_not_present_clobbering_x19_is_named():
    ex = PageNotPresentEntry(2)
    code = ex.answer().replace("sdei_apf_entry:\n", "sdei_apf_entry:\n\tmov\tx19, #0x5a\n", 1)
    r = ex.check(code)
    assert not r and "register x19 was clobbered" in r.message


def test_page_not_present_wrong_token_is_named():
    ex = PageNotPresentEntry(0)
    code = ex.answer().replace("\tstr\tw6, [x11, #APF_E_TOKEN]\n", "\tstr\twzr, [x11, #APF_E_TOKEN]\n", 1)
    assert code != ex.answer()
    r = ex.check(code)
    assert not r and "recorded under token 0x0" in r.message


def test_assembly_errors_name_the_students_line():
    ex = PageReadyHandler(0)
    code = ex.skeleton().replace("\tcmp\tw21, #APF_PAGE_READY\n", "\tcmpp\tw21, #APF_PAGE_READY\n")
    r = ex.check(code)
    want = 1 + ex.skeleton().split("\n").index("\tcmp\tw21, #APF_PAGE_READY")
    assert not r and f"line {want}:" in r.message and "cmpp" in r.message
    r = ex.check(ex.skeleton().replace("apf_page_ready:\n", "my_handler:\n"))
    assert not r and "needs the label `apf_page_ready`" in r.message
    with pytest.raises(AsmError):
        holes.load(Machine(seed=0), "// STUDENT-BEGIN x\n// STUDENT-END x\n_start: brk #0\n", "x", "nop nop\n")


def test_periodic_tick_grader():
    ex = PeriodicTick(4)
    assert ex.check(tick_solution())
    r = ex.check(ex.skeleton())
    assert not r and "never read ICC_IAR1_EL1" in r.message and "storm" in r.message
    drift = tick_solution().replace("mrs  x11, cntv_cval_el0", "mrs  x11, cntvct_el0")
    assert "drift" in ex.check(drift).message
    noeoi = tick_solution().replace("2:  msr  s3_0_c12_c12_1, x9", "2:  nop")
    assert "ICC_EOIR1_EL1 was never written" in ex.check(noeoi).message
    typo = tick_solution().replace("cmp  x9, #27", "cmpp x9, #27")
    assert "line 2:" in ex.check(typo).message
    clobber = tick_solution().replace("adr  x12, ticks", "adr  x12, ticks\n    mov  x20, #0")
    assert "register x20 was clobbered" in ex.check(clobber).message
    assert not ex.check(None)
