""""Page not present" as a synchronous exception at the faulting instruction.

x86 has delivered it as a #PF since 2020 (the token in the shared data, CR2 holding
it before); here the host injects a synchronous external data (or instruction) abort
into EL1, ELR at the faulting instruction, FAR the faulting address, as KVM/arm64
injects aborts (``kvm_inject_dabt``). The guest's abort handler reads the shared
block: reason PAGE_NOT_PRESENT means "park this task", anything else is a real abort.

Synchronous, so PSTATE.I does not matter; a kernel-mode fault still falls back
("kernel_mode") because the guest kernel cannot sleep there.
"""

from __future__ import annotations

from ..arch import EC_DABT_LOW, EC_IABT_LOW, ESR_IL, FSC_EXTABT, VEC_SYNC
from .base import Delivery


class AbortDelivery(Delivery):
    name = "abort"
    guest_flag = 2
    REASONS = ()
    NOT_PRESENT = "synchronous abort injected at the faulting instruction (as x86's #PF)"
    PAGE_READY = "PPI + IRQ_ACK"
    GUEST_SUPPORT = "abort handler + APF client"
    MIGRATION_STATE = ("APF control word and shared-block address", "APF token table")

    def not_present(self, vcpu, work, fault) -> None:
        host = self.host
        ec = EC_IABT_LOW if fault.access == "fetch" else EC_DABT_LOW
        if fault.el != 0:
            ec += 1                      # from the current EL (EC_DABT_CUR / EC_IABT_CUR)
        wnr = (1 << 6) if fault.access == "write" else 0
        esr = (ec << 26) | ESR_IL | wnr | FSC_EXTABT
        vector = vcpu.take_exception(VEC_SYNC, return_pc=fault.pc, esr=esr, far=fault.ipa)
        host.trace.emit(host.now, "exception", what="apf_abort", esr=esr, from_el=fault.el,
                        vector=vector)
        host.charge(host.costs.inject_ns, what="abort_inject")

