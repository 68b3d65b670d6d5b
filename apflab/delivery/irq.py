""""Page not present" as an ordinary interrupt (a PPI): the question Arm asked in 2020.

The notice is a PPI the guest takes like any IRQ, so it can only be delivered
when PSTATE.I is clear ("irq_masked" otherwise) — the masked-IRQ cases are
exactly where SDEI, being NMI-like, would still get through.

The architectural catch: the architecture only promises that a pending, unmasked
interrupt is taken "in finite time", not before the next instruction. So after
the host re-enters the guest at the faulting instruction, the CPU may retry that
instruction first, and fault again on the same page. ``irq_window`` chooses:

- ``"before_retry"`` (default): the IRQ is taken on entry, before the retry (what
  a GIC with the interrupt already pending at entry does in practice);
- ``"after_retry"``: the instruction is retried first. The host must recognise the
  second fault (same page, a not-present notice still undelivered) and re-enter
  without stalling, so that the IRQ is taken then; the cost is one more exit per
  async fault (``apf_refault`` in the trace). A host that did not would count a
  "repeated_fault" and stall. Modelled by making the PPI visible only at that
  second fault.

The not-present PPI gets a higher priority than the tick and page-ready, so that it
is taken before anything can switch away from the faulting task.
"""

from __future__ import annotations

from ..arch import PSTATE_I
from ..errors import ParameterError
from .base import Delivery

IRQ_WINDOWS = ("before_retry", "after_retry")
NP_PRIORITY = 0x90           # above DEFAULT_PRIORITY (0xA0): taken before tick and page ready


class IrqDelivery(Delivery):
    name = "irq"
    guest_flag = 1
    REASONS = ("irq_masked",)
    NOT_PRESENT = "a PPI, taken as an ordinary IRQ (only when PSTATE.I is clear)"
    PAGE_READY = "PPI + IRQ_ACK"
    GUEST_SUPPORT = "IRQ handler + APF client"
    MIGRATION_STATE = ("APF control word and shared-block address", "APF token table",
                       "the not-present PPI's pending state (part of the GIC state)")

    def __init__(self, apf, irq_window: str = "before_retry"):
        super().__init__(apf)
        if irq_window not in IRQ_WINDOWS:
            raise ParameterError(f"irq_window={irq_window!r}: must be one of {IRQ_WINDOWS}")
        self.irq_window = irq_window
        from ..apf import APF_NP_PPI
        self.intid = APF_NP_PPI
        self.host.gic.priority[self.intid] = NP_PRIORITY

    def why_not(self, vcpu, el: int) -> str | None:
        return "irq_masked" if vcpu.pstate & PSTATE_I else None

    def not_present(self, vcpu, work, fault) -> None:
        if self.irq_window == "before_retry":
            self.host.gic.pulse(self.intid)
        else:
            work.delivered = False       # the CPU will retry the instruction first

    def refault(self, vcpu, work, fault) -> bool:
        if work.delivered or fault.pc != work.pc:
            return False
        work.delivered = True
        self.host.gic.pulse(self.intid)  # now taken, before the instruction runs again
        return True

    def discover(self, sub: int) -> int:
        from ..apf import ASYNC_PF_NP_IRQ
        from ..smccc import NOT_SUPPORTED
        return self.intid if sub == ASYNC_PF_NP_IRQ else NOT_SUPPORTED
