"""How the guest is told "page not present" and "page ready": one small module per design.

The APF core (``apflab.apf``) owns the protocol: tokens, the 64-slot queue, the shared
block, the work table, IRQ_ACK. A design only answers three questions, the same for all:

- ``why_not(vcpu, el)``: why a notice cannot be delivered now (a fallback reason), or None;
- ``not_present(vcpu, work, fault)``: tell the guest (or hold the vCPU);
- ``page_ready(vcpu, work)``: tell the guest the page is back (or release the vCPU).

| design | not present                         | page ready      | guest support           |
|--------|-------------------------------------|-----------------|-------------------------|
| sdei   | SDEI event (the arm64 series)        | PPI + IRQ_ACK   | SDEI client + APF client|
| irq    | a PPI, taken as an ordinary IRQ      | PPI + IRQ_ACK   | IRQ handler + APF client|
| abort  | synchronous abort at the instruction | PPI + IRQ_ACK   | abort handler + APF client |
| halt   | none: the vCPU halts in the host     | vCPU released   | none                    |
"""

from __future__ import annotations

from ..errors import ParameterError
from .base import Delivery

DESIGNS = ("sdei", "irq", "abort", "halt")


def _design_class(name: str):
    """The class of delivery design ``name``, or None."""
    from .abort import AbortDelivery
    from .halt import HaltDelivery
    from .irq import IrqDelivery
    from .sdei import SdeiDelivery
    return {"sdei": SdeiDelivery, "irq": IrqDelivery, "abort": AbortDelivery,
            "halt": HaltDelivery}.get(name)


def make_delivery(name: str, apf, **options) -> Delivery:
    """The delivery design ``name`` for the APF service ``apf``."""
    cls = _design_class(name)
    if cls is None:
        raise ParameterError(f"unknown delivery design {name!r}; choose one of {', '.join(DESIGNS)}")
    return cls(apf, **options)


def describe(name: str) -> dict:
    """What a design needs and what a host must migrate for it (for tables and labs)."""
    if name == "sync":
        return {"design": "sync", "not_present": "none: the vCPU stalls until the page is in",
                "page_ready": "none", "guest_support": "none", "reasons": (), "migration_state": ()}
    cls = _design_class(name)
    if cls is None:
        raise ParameterError(f"unknown design {name!r}; choose one of sync, {', '.join(DESIGNS)}")
    return {"design": name, "not_present": cls.NOT_PRESENT, "page_ready": cls.PAGE_READY,
            "guest_support": cls.GUEST_SUPPORT, "reasons": cls.REASONS,
            "migration_state": cls.MIGRATION_STATE}


__all__ = ["DESIGNS", "Delivery", "make_delivery", "describe"]
