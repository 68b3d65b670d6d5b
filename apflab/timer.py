"""The EL1 virtual timer (Arm ARM D11.2), driven by the host's virtual clock.

CNTVCT_EL0 counts at CNTFRQ_EL0 = 1 GHz, so one tick is one virtual
nanosecond (the frequency Armv8.6 makes standard). The timer's output is a
level on PPI 27: ENABLE and not IMASK and CVAL <= CNTVCT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

TIMER_PPI = 27                      # virtual timer PPI on the virt platform and in KVM
CNTFRQ_HZ = 1_000_000_000

CNTFRQ_EL0 = (3, 3, 14, 0, 0)
CNTVCT_EL0 = (3, 3, 14, 0, 2)
CNTV_TVAL_EL0 = (3, 3, 14, 3, 0)
CNTV_CTL_EL0 = (3, 3, 14, 3, 1)
CNTV_CVAL_EL0 = (3, 3, 14, 3, 2)

CTL_ENABLE, CTL_IMASK, CTL_ISTATUS = 1, 2, 4


@dataclass
class VirtualTimer:
    now: Callable[[], int]           # the host's clock, in ns (= ticks)
    ctl: int = 0
    cval: int = 0

    def condition(self) -> bool:
        return bool(self.ctl & CTL_ENABLE) and self.now() >= self.cval

    def output(self) -> bool:
        """The PPI line level."""
        return self.condition() and not self.ctl & CTL_IMASK

    def next_fire_ns(self) -> int | None:
        """When the line will rise, if it is low and will rise by itself."""
        if self.ctl & CTL_ENABLE and not self.ctl & CTL_IMASK and self.now() < self.cval:
            return self.cval
        return None

    def read_ctl(self) -> int:
        return (self.ctl & (CTL_ENABLE | CTL_IMASK)) | (CTL_ISTATUS if self.condition() else 0)

    def write_ctl(self, v: int) -> None:
        self.ctl = v & (CTL_ENABLE | CTL_IMASK)

    def write_cval(self, v: int) -> None:
        self.cval = v & (1 << 64) - 1

    def read_tval(self) -> int:
        return (self.cval - self.now()) & 0xFFFFFFFF

    def write_tval(self, v: int) -> None:
        # TVAL is a signed 32-bit offset from now (Arm ARM D11.2.4).
        v &= 0xFFFFFFFF
        if v & 0x80000000:
            v -= 1 << 32
        self.cval = (self.now() + v) & (1 << 64) - 1

    def sysreg_handlers(self) -> tuple[dict, dict]:
        reads = {
            CNTFRQ_EL0: lambda: CNTFRQ_HZ,
            CNTVCT_EL0: self.now,
            CNTV_CTL_EL0: self.read_ctl,
            CNTV_CVAL_EL0: lambda: self.cval,
            CNTV_TVAL_EL0: self.read_tval,
        }
        writes = {
            CNTV_CTL_EL0: self.write_ctl,
            CNTV_CVAL_EL0: self.write_cval,
            CNTV_TVAL_EL0: self.write_tval,
        }
        return reads, writes
