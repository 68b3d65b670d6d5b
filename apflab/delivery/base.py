"""The shape every delivery design has (see ``apflab.delivery``)."""

from __future__ import annotations

from ..smccc import NOT_SUPPORTED


class Delivery:
    """A design for telling the guest "page not present" / "page ready".

    Class attributes describe it; the three operations act. Designs hold no protocol
    state of their own beyond what their notice needs (the core owns the queue).
    """
    name = ""
    needs_guest = True        # the guest must discover and enable APF (a paravirtual design)
    uses_block = True         # {reason, token} of "not present" go through the shared block
    notifies_ready = True     # "page ready" is a notice the guest acknowledges (PPI + IRQ_ACK)
    guest_flag = 0            # the control word's delivery bits the guest sets on ENABLE
    REASONS: tuple[str, ...] = ()          # this design's own fallback reasons
    NOT_PRESENT = PAGE_READY = GUEST_SUPPORT = ""
    MIGRATION_STATE: tuple[str, ...] = ()  # per-vCPU state a host must save on migration

    def __init__(self, apf):
        self.apf = apf
        self.host = apf.host

    # ------------------------------------------------------------------ the three operations
    def why_not(self, vcpu, el: int) -> str | None:
        """Why the notice cannot be delivered now (a reason from ``REASONS``), or None."""
        return None

    def not_present(self, vcpu, work, fault) -> None:
        raise NotImplementedError

    def page_ready(self, vcpu, work) -> None:
        """Default: raise the page-ready PPI; the guest reads the block and acks with IRQ_ACK."""
        from ..apf import APF_PPI
        self.host.gic.set_line(APF_PPI, True)

    # ------------------------------------------------------------------ optional
    def refault(self, vcpu, work, fault) -> bool:
        """The guest faulted again on a page whose page-in is running for ``work``.

        True when this design expects that (and the host should re-enter without
        stalling); False lets the core count a "repeated_fault" fallback.
        """
        return False

    def discover(self, sub: int) -> int:
        """An ASYNC_PF sub-function only this design answers (e.g. the SDEI event number)."""
        return NOT_SUPPORTED

    def guest_ready(self) -> bool:
        """May the guest enable APF now (checked on ASYNC_PF ENABLE)?"""
        return True
