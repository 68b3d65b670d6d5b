"""No notice at all: the vCPU halts in the host (KVM x86's "artificial halt").

For guests with no paravirtual support. The vCPU waits in the host for the page,
but interrupts are still injected while it waits, so the guest may take its timer
tick and schedule another task; if it comes back to the faulting instruction
before the page is in, that faults again and the vCPU halts again. When the
page-in completes the page is mapped and the vCPU released: there is nothing to
acknowledge. With PSTATE.I set nothing could be injected, so that is a fallback
("irq_masked", as in x86's ``kvm_can_do_async_pf``).
"""

from __future__ import annotations

from ..arch import PSTATE_I
from .base import Delivery


class HaltDelivery(Delivery):
    name = "halt"
    needs_guest = False
    uses_block = False
    notifies_ready = False
    guest_flag = -1                  # nothing to enable
    REASONS = ("irq_masked",)
    NOT_PRESENT = "none: the vCPU halts in the host; interrupts are still injected"
    PAGE_READY = "the vCPU is released (nothing to acknowledge)"
    GUEST_SUPPORT = "none: works for any guest"
    MIGRATION_STATE = ()

    def __init__(self, apf):
        super().__init__(apf)
        self.held = None             # the work item the vCPU waits for, at its faulting PC

    def why_not(self, vcpu, el: int) -> str | None:
        return "irq_masked" if vcpu.pstate & PSTATE_I else None

    def not_present(self, vcpu, work, fault) -> None:
        self._hold(work)

    def refault(self, vcpu, work, fault) -> bool:
        self._hold(work)
        return True

    def _hold(self, work) -> None:
        self.held = work
        self.host.trace.emit(self.host.now, "apf_halt", token=work.token, gpn=work.gpn)

    def holds(self, vcpu) -> bool:
        """Run-loop hook: the vCPU stays in the host while it sits at the faulting PC."""
        w = self.held
        return w is not None and vcpu.pc == w.pc

    def page_ready(self, vcpu, work) -> None:
        if self.held is work:
            self.held = None
        self.host.trace.emit(self.host.now, "apf_release", token=work.token, gpn=work.gpn)
