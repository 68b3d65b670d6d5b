"""A GICv3 CPU interface for one vCPU, reached through trapped ICC_* registers.

Only what a guest kernel needs: PPIs (INTID 16-31) and SGIs to self (0-15),
one priority per INTID, the priority mask, group-1 enable, acknowledge and
end-of-interrupt with an active priority. Lines are level-sensitive like the
timer and the APF "page ready" PPI: a line held high becomes pending again
after EOI (GICv3 architecture spec, IHI0069, 4.1 "interrupt lifecycle").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvariantError

SPURIOUS = 1023          # ICC_IAR1_EL1 when nothing can be acknowledged (IHI0069 2.2.1)
NUM_INTIDS = 32          # SGIs 0-15 and PPIs 16-31; SPIs are not modelled
DEFAULT_PRIORITY = 0xA0  # what Linux programs for its PPIs (GICD_INT_DEF_PRI)
IDLE_PRIORITY = 0xFF

# (op0, op1, CRn, CRm, op2) of the ICC system registers (IHI0069 12.2).
ICC_PMR_EL1 = (3, 0, 4, 6, 0)
ICC_IAR1_EL1 = (3, 0, 12, 12, 0)
ICC_EOIR1_EL1 = (3, 0, 12, 12, 1)
ICC_HPPIR1_EL1 = (3, 0, 12, 12, 2)
ICC_BPR1_EL1 = (3, 0, 12, 12, 3)
ICC_CTLR_EL1 = (3, 0, 12, 12, 4)
ICC_SRE_EL1 = (3, 0, 12, 12, 5)
ICC_IGRPEN1_EL1 = (3, 0, 12, 12, 7)
ICC_DIR_EL1 = (3, 0, 12, 11, 1)
ICC_RPR_EL1 = (3, 0, 12, 11, 3)
ICC_SGI1R_EL1 = (3, 0, 12, 11, 5)


@dataclass
class GicCpu:
    """Plain state of the CPU interface; the host routes sysreg traps here."""
    pmr: int = 0                     # reset value masks everything (IHI0069 12.2.19)
    igrpen1: int = 0
    bpr1: int = 0
    line: list[bool] = field(default_factory=lambda: [False] * NUM_INTIDS)
    edge_pending: list[bool] = field(default_factory=lambda: [False] * NUM_INTIDS)
    active: list[bool] = field(default_factory=lambda: [False] * NUM_INTIDS)
    priority: list[int] = field(default_factory=lambda: [DEFAULT_PRIORITY] * NUM_INTIDS)
    active_stack: list[int] = field(default_factory=list)   # INTIDs in acknowledge order
    bound: set = field(default_factory=set)     # INTIDs bound to SDEI events: never signalled as IRQs
    raised: set = field(default_factory=set)    # INTIDs whose line is high or edge pending (fast path)
    on_event: object = None          # callable(kind, fields) for the trace, set by the host

    # -------------------------------------------------------------- lines
    def set_line(self, intid: int, level: bool) -> None:
        """Drive a level-sensitive PPI (timer, APF page ready)."""
        self._check(intid)
        if self.line[intid] != level:
            self.line[intid] = level
            self._update_raised(intid)
            self._emit("irq_line", intid=intid, level=level)

    def send_sgi(self, intid: int) -> None:
        self._check(intid)
        if intid >= 16:
            raise InvariantError(f"INTID {intid} is not an SGI")
        self.edge_pending[intid] = True
        self.raised.add(intid)
        self._emit("irq_line", intid=intid, level=True)

    def pulse(self, intid: int) -> None:
        """Make a PPI pending as an edge (no line to hold): the "irq" design's not-present."""
        self._check(intid)
        if intid < 16:
            raise InvariantError(f"INTID {intid} is an SGI: use send_sgi")
        self.edge_pending[intid] = True
        self.raised.add(intid)
        self._emit("irq_line", intid=intid, level=True)

    def is_pending(self, intid: int) -> bool:
        return ((self.line[intid] or self.edge_pending[intid]) and not self.active[intid]
                and intid not in self.bound)

    # -------------------------------------------------------------- delivery
    def running_priority(self) -> int:
        return self.priority[self.active_stack[-1]] if self.active_stack else IDLE_PRIORITY

    def highest_pending(self) -> int:
        """The INTID the guest would acknowledge now, or SPURIOUS."""
        best, best_prio = SPURIOUS, 0x100
        for intid in sorted(self.raised):
            if self.is_pending(intid) and self.priority[intid] < best_prio:
                best, best_prio = intid, self.priority[intid]
        return best

    def _update_raised(self, intid: int) -> None:
        if self.line[intid] or self.edge_pending[intid]:
            self.raised.add(intid)
        else:
            self.raised.discard(intid)

    def signalling(self) -> bool:
        """True when the CPU interface asserts IRQ to the PE (PSTATE.I decides the rest)."""
        if not self.raised or not (self.igrpen1 & 1):
            return False
        intid = self.highest_pending()
        if intid == SPURIOUS:
            return False
        prio = self.priority[intid]
        return prio < self.pmr and prio < self.running_priority()

    def any_pending(self) -> bool:
        """Pending at all, masked or not: this is what wakes a WFI (Arm ARM D1.16.2)."""
        return self.signalling()

    # -------------------------------------------------------------- sysregs
    def read_iar1(self) -> int:
        if not self.signalling():
            return SPURIOUS
        intid = self.highest_pending()
        self.edge_pending[intid] = False
        self._update_raised(intid)
        self.active[intid] = True
        self.active_stack.append(intid)
        self._emit("irq_ack", intid=intid)
        return intid

    def write_eoir1(self, value: int) -> None:
        intid = value & 0xFFFFFF
        if intid >= NUM_INTIDS or not self.active[intid]:
            # IHI0069 says the effect is UNPREDICTABLE; a lab should say so.
            self._emit("irq_bad_eoi", intid=intid)
            return
        self.active[intid] = False
        self.active_stack.remove(intid)
        self._emit("irq_eoi", intid=intid)

    def write_sgi1r(self, value: int) -> None:
        # Only "to self" is modelled: one vCPU (IRM or target list bit 0).
        self.send_sgi((value >> 24) & 0xF)

    def sysreg_handlers(self) -> tuple[dict, dict]:
        """(reads, writes) keyed by sysreg encoding, for ``Vcpu``."""
        reads = {
            ICC_PMR_EL1: lambda: self.pmr,
            ICC_IAR1_EL1: self.read_iar1,
            ICC_HPPIR1_EL1: self.highest_pending,
            ICC_BPR1_EL1: lambda: self.bpr1,
            ICC_CTLR_EL1: lambda: 0,
            ICC_SRE_EL1: lambda: 0x7,   # system-register interface on, IRQ/FIQ bypass off
            ICC_IGRPEN1_EL1: lambda: self.igrpen1,
            ICC_RPR_EL1: self.running_priority,
        }
        writes = {
            ICC_PMR_EL1: self._write_pmr,
            ICC_EOIR1_EL1: self.write_eoir1,
            ICC_BPR1_EL1: self._write_bpr1,
            ICC_CTLR_EL1: lambda v: None,
            ICC_SRE_EL1: lambda v: None,
            ICC_IGRPEN1_EL1: self._write_igrpen1,
            ICC_DIR_EL1: lambda v: None,
            ICC_SGI1R_EL1: self.write_sgi1r,
        }
        return reads, writes

    def _write_pmr(self, v: int) -> None:
        self.pmr = v & 0xFF

    def _write_bpr1(self, v: int) -> None:
        self.bpr1 = v & 7

    def _write_igrpen1(self, v: int) -> None:
        self.igrpen1 = v & 1

    def _check(self, intid: int) -> None:
        if not 0 <= intid < NUM_INTIDS:
            raise InvariantError(f"INTID {intid} is not an SGI or PPI")

    def _emit(self, kind: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event(kind, fields)
