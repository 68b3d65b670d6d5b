""""Page not present" as an SDEI event: the design of the arm64 KVM APF series.

The event is NMI-like: not masked by PSTATE.I, but it cannot be delivered while
the PE is masked (PE_MASK), while a handler runs (same-priority events never
nest, DEN0054C 6.2.1), before the guest enabled it, or while an earlier raise
still waits. Each of those is a fallback to the synchronous path.
"""

from __future__ import annotations

from ..errors import InvariantError, ParameterError
from .base import Delivery


class SdeiDelivery(Delivery):
    name = "sdei"
    guest_flag = 0
    REASONS = ("in_handler", "event_pending", "pe_masked", "event_disabled")
    NOT_PRESENT = "SDEI event (registered by the guest; NMI-like)"
    PAGE_READY = "PPI + IRQ_ACK"
    GUEST_SUPPORT = "SDEI client + APF client"
    MIGRATION_STATE = ("APF control word and shared-block address", "APF token table",
                       "SDEI PE mask", "SDEI event state (registered/enabled/running, entry, arg, flags)",
                       "SDEI interrupted context (x0-x17, PC, PSTATE) while a handler runs")

    def __init__(self, apf):
        super().__init__(apf)
        self.sdei = self.host.service("sdei")
        if self.sdei is None:
            raise ParameterError("delivery='sdei' needs the SDEI service (Machine(sdei=True)); "
                                 "without it choose delivery='irq', 'abort' or 'halt', or apf=False")

    def why_not(self, vcpu, el: int) -> str | None:
        from ..sdei import EVENT_ASYNC_PF, S_ENABLED
        sdei = self.sdei
        ev = sdei.events[EVENT_ASYNC_PF]
        if sdei.handler_running():
            return "in_handler"
        if ev.triggered:
            return "event_pending"       # an earlier raise is still waiting to be dispatched
        if sdei.pe.masked:
            return "pe_masked"
        if ev.state != S_ENABLED:
            return "event_disabled"
        return None

    def not_present(self, vcpu, work, fault) -> None:
        from ..sdei import EVENT_ASYNC_PF
        if not self.sdei.raise_event(EVENT_ASYNC_PF):
            raise InvariantError("APF: the SDEI event was checked deliverable but was not dispatched")

    def discover(self, sub: int) -> int:
        from ..apf import ASYNC_PF_SDEI
        from ..sdei import EVENT_ASYNC_PF
        from ..smccc import NOT_SUPPORTED
        return EVENT_ASYNC_PF if sub == ASYNC_PF_SDEI else NOT_SUPPORTED

    def guest_ready(self) -> bool:
        # Refused before the guest registered the "page not present" event.
        from ..sdei import EVENT_ASYNC_PF
        return bool(self.sdei.events[EVENT_ASYNC_PF].state & 1)
