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
- ``"after_retry"``: the instruction is retried first and faults again on the same
  page, whose page-in is running; only then is the IRQ taken. The host must recognise
  that second fault (same page, its notice not yet taken) and re-enter without
  stalling; the cost is one more exit per async fault (``apf_refault`` in the trace). A
  host that did not would count a "repeated_fault" and stall. The retry's outcome is
  certain (the page is in flight), so the model charges that second exit and records
  it when it raises the PPI, instead of letting the engine run the instruction again:
  otherwise a tick taken first could leave the notice unraised for ever.

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
        host = self.host
        if self.irq_window == "after_retry":
            # The retried instruction faults again at once: one more exit, seen as such.
            host.trace.emit(host.now, "stage2_fault", gpn=fault.gpn, ipa=fault.ipa, access=fault.access,
                            state="inflight", pc=fault.pc, el=fault.el)
            host.charge(host.costs.fault_ns, what="stage2_fault")
            host.trace.emit(host.now, "apf_refault", token=work.token, gpn=fault.gpn, design=self.name)
        host.gic.pulse(self.intid)

    def discover(self, sub: int) -> int:
        from ..apf import ASYNC_PF_NP_IRQ
        from ..smccc import NOT_SUPPORTED
        return self.intid if sub == ASYNC_PF_NP_IRQ else NOT_SUPPORTED
