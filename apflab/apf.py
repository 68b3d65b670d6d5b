"""Asynchronous page faults: the protocol core of KVM's side (docs/REFERENCES.md, "APF protocol").

Named after the page's lifecycle, like KVM's ``virt/kvm/async_pf.c``:

- ``page_not_present``: a stage-2 fault on a page that needs I/O. If an async
  fault is possible, queue the page-in, write {reason=PAGE_NOT_PRESENT, token}
  to the guest's shared block and let the delivery design tell the guest; the
  vCPU does not stall. Otherwise return the fallback reason, and the host takes
  the synchronous (stalling) path.
- ``page_in_done``: the page-in finished; map it (prefault) and queue the
  "page ready" notice.
- ``poll``: once the shared slot is free and no earlier "page ready" awaits its
  ack, let the design notify the next one.
- ``IRQ_ACK``: the guest consumed it; lower the PPI and deliver the next one.

How the guest is told is not this module's business: a ``Delivery``
(``apflab.delivery``: sdei, irq, abort, halt) says why it cannot deliver now,
and does the notifying. This core owns the tokens, the 64-slot queue, the
shared block, the work table and IRQ_ACK; it never names SDEI.

One owner per queue: ``self.work`` holds every outstanding item (cap 64, the
``ASYNC_PF_PER_VCPU`` of KVM); ``self.ready`` the completed ones awaiting
their notification, in completion order.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from enum import Enum

from .errors import InvariantError, ParameterError
from .smccc import Call
from .stage2 import PageState

# KVM vendor hypervisor service (SMC32 fast call, owner 6).
VENDOR_HYP_KVM_FEATURES = 0x86000000
VENDOR_HYP_KVM_PTP = 0x86000001
VENDOR_HYP_KVM_ASYNC_PF = 0x86000002
VENDOR_FIRST, VENDOR_LAST = 0x86000000, 0x8600FFFF
FEATURE_PTP = 1 << 1
FEATURE_ASYNC_PF = 1 << 2

# ASYNC_PF sub-functions in x1 (0-5 as in the arm64 series; 6 is the lab's own, for the
# "irq" design's not-present PPI).
(ASYNC_PF_VERSION, ASYNC_PF_SLOTS, ASYNC_PF_SDEI, ASYNC_PF_IRQ, ASYNC_PF_ENABLE, ASYNC_PF_IRQ_ACK,
 ASYNC_PF_NP_IRQ) = range(7)
APF_VERSION = 0x010000
ASYNC_PF_PER_VCPU = 64
APF_PPI = 19                 # lab default: a free PPI on the virt platform (27 is the vtimer)
APF_NP_PPI = 20              # lab's own: "page not present" as an interrupt (the "irq" design)

# SMCCC generic return codes (DEN0028 7.1).
SMCCC_SUCCESS = 0
SMCCC_NOT_SUPPORTED = -1
SMCCC_INVALID_PARAMETER = -3

# Control word flags (low bits of ``gpa | flags``).
APF_ENABLED = 1 << 0
APF_SEND_ALWAYS = 1 << 1
APF_DELIVERY_SHIFT = 2       # bits [3:2]: the notice the guest is ready for (lab's own):
APF_DELIVERY_MASK = 0x3 << APF_DELIVERY_SHIFT   # 0 SDEI, 1 IRQ, 2 abort, 3 reserved
APF_RESERVED = 0x30          # bits [5:4] must be zero

# struct kvm_vcpu_pv_apf_data { u32 reason; u32 token; u8 pad[56]; u32 enabled; }
OFF_REASON, OFF_TOKEN, OFF_ENABLED = 0, 4, 60
APF_BLOCK_SIZE = 64
PAGE_NOT_PRESENT, PAGE_READY = 1, 2
TOKEN_WAKE_ALL = 0xFFFFFFFF

# Why the host fell back to a synchronous fault. The core's own reasons, then each design's
# (``apflab.delivery.*.REASONS``). See docs/REFERENCES.md, "When the host falls back".
FALLBACKS = ("apf_disabled", "kernel_mode", "in_handler", "pe_masked", "event_disabled",
             "event_pending", "irq_masked", "slot_busy", "queue_full", "repeated_fault", "prefault")


class WorkState(Enum):
    NOT_PRESENT_SENT = "not_present_sent"   # page-in running, guest told to park the task
    READY = "ready"                         # page-in done, waiting for the slot to notify
    READY_SENT = "ready_sent"               # page-ready notice given, waiting for IRQ_ACK
    DONE = "done"


# The work item lifecycle as a table: (state, action) -> new state.
WORK_TRANSITIONS = {
    (WorkState.NOT_PRESENT_SENT, "page_in_done"): WorkState.READY,
    (WorkState.READY, "notify"): WorkState.READY_SENT,
    (WorkState.READY, "release"): WorkState.DONE,      # a design with no notice (halt)
    (WorkState.READY_SENT, "ack"): WorkState.DONE,
}


@dataclass
class Work:
    token: int
    gpn: int
    t_fault: int
    t_done: int
    state: WorkState = WorkState.NOT_PRESENT_SENT
    task: int | None = None
    pc: int = 0                  # the faulting instruction


class ApfService:
    """The host APF service for one vCPU (vcpu_id 0), with one delivery design."""
    name = "kvm-vendor"

    def __init__(self, host, delivery, vcpu_id: int = 0):
        self.host = host
        self.vcpu_id = vcpu_id
        self.delivery = delivery
        self.control = 0
        self._block_gpa = 0
        self._allowed = True         # the host may switch APF off (labs: "APF off")
        self.next_id = 0
        self.work: dict[int, Work] = {}          # token -> outstanding item
        self.ready: deque[Work] = deque()        # completed, not yet notified
        self.notified: Work | None = None        # page ready raised, awaiting IRQ_ACK
        self.reserved = 0                        # slots held by the explorer's "fill the queue"
        self.wake_all_count = 0
        self.ever_enabled = False

    @classmethod
    def install(cls, host, delivery: str = "sdei", **options) -> "ApfService":
        from .delivery import make_delivery
        from .host import Registration
        svc = cls(host, None)
        svc.delivery = make_delivery(delivery, svc, **options)
        host.register(Registration("apf", svc, fids=(VENDOR_FIRST, VENDOR_LAST),
                                   before_entry=svc.before_entry,
                                   holds=getattr(svc.delivery, "holds", None),
                                   page_not_present=svc.page_not_present))
        return svc

    # ------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        return bool(self.control & APF_ENABLED)

    @property
    def allowed(self) -> bool:
        return self._allowed

    @allowed.setter
    def allowed(self, value: bool) -> None:
        self.set_allowed(value)

    @property
    def block_gpa(self) -> int:
        """The shared block the guest gave on its last ENABLE (kept after a disable, so the
        wake-all sent then can still be written there)."""
        return self._block_gpa

    @property
    def fallbacks(self) -> dict[str, int]:
        """Fallbacks by reason, counted once, in the trace."""
        return self.host.trace.tally("apf_fallback")

    @property
    def not_present_count(self) -> int:
        return self.host.trace.counts.get("apf_not_present", 0)

    @property
    def page_ready_count(self) -> int:
        return self.host.trace.counts.get("apf_page_ready", 0)

    def read_block(self, off: int) -> int:
        return struct.unpack("<I", self.host.stage2.read(self.block_gpa + off, 4))[0]

    def write_block(self, off: int, value: int) -> None:
        self.host.stage2.write(self.block_gpa + off, struct.pack("<I", value))

    def slot_busy(self) -> bool:
        return self.read_block(OFF_REASON) != 0

    def outstanding_for(self, gpn: int) -> Work | None:
        """The item whose page-in is running for ``gpn``, if any."""
        for w in self.work.values():
            if w.gpn == gpn and w.state is WorkState.NOT_PRESENT_SENT:
                return w
        return None

    def _transition(self, w: Work, action: str) -> None:
        new = WORK_TRANSITIONS.get((w.state, action))
        if new is None:
            raise InvariantError(f"APF work {w.token:#x}: {action} in state {w.state.value}")
        w.state = new

    # ------------------------------------------------------------------ injection (labs, tests)
    def set_allowed(self, allowed: bool) -> None:
        """The host offers APF (True) or withdraws it (False: every fault stalls)."""
        if not isinstance(allowed, bool):
            raise ParameterError(f"allowed must be True or False, got {allowed!r}")
        self._allowed = allowed

    def fill_queue(self) -> int:
        """Hold every free slot of the 64-slot queue until ``release_queue``: the next
        faults that need I/O fall back with "queue_full". Returns the slots now held."""
        self.reserved = ASYNC_PF_PER_VCPU
        return self.reserved

    def release_queue(self) -> int:
        """Give back the slots ``fill_queue`` held; returns how many."""
        n, self.reserved = self.reserved, 0
        return n

    # ------------------------------------------------------------------ lifecycle
    def fallback_reason(self, vcpu, gpn: int, el: int) -> str | None:
        """Why an async fault is not possible now; None if it is.

        The core's checks and the design's (``delivery.why_not``), in the order KVM
        makes them; the reason is returned, never stored.
        """
        d = self.delivery
        if not self._allowed or (d.needs_guest and not self.enabled):
            return "apf_disabled"
        if d.needs_guest and el != 0 and not self.control & APF_SEND_ALWAYS:
            return "kernel_mode"
        reason = d.why_not(vcpu, el)
        if reason is not None:
            return reason
        if self.host.stage2.state(gpn) == PageState.INFLIGHT:
            return "repeated_fault"
        if d.uses_block and self.slot_busy():
            return "slot_busy"
        if len(self.work) + self.reserved >= ASYNC_PF_PER_VCPU:
            return "queue_full"
        return None

    def page_not_present(self, vcpu, fault) -> str | None:
        """Try the asynchronous path for a fault that needs I/O; None if taken, else why not."""
        host = self.host
        if self._allowed and host.stage2.state(fault.gpn) == PageState.INFLIGHT:
            w = self.outstanding_for(fault.gpn)
            if w is not None and self.delivery.refault(vcpu, w, fault):
                host.charge(host.costs.fault_ns, what="stage2_fault")
                host.trace.emit(host.now, "apf_refault", token=w.token, gpn=fault.gpn,
                                design=self.delivery.name)
                return None
        reason = self.fallback_reason(vcpu, fault.gpn, fault.el)
        if reason is not None:
            host.trace.emit(host.now, "apf_fallback", gpn=fault.gpn, reason=reason,
                            design=self.delivery.name)
            return reason
        token = (self.next_id << 12) | self.vcpu_id
        self.next_id = (self.next_id + 1) & 0xFFFF
        if token in self.work:
            raise InvariantError(f"APF token {token:#x} is already outstanding")
        host.charge(host.costs.fault_ns, what="stage2_fault")
        done = host.stage2.start_page_in(fault.gpn, host.now, host.rng)
        w = Work(token, fault.gpn, host.now, done, task=host.current_task(), pc=fault.pc)
        self.work[token] = w
        host.schedule(done, "apf_page_in_done", lambda: self.page_in_done(w))
        if self.delivery.uses_block:
            self.write_block(OFF_TOKEN, token)
            self.write_block(OFF_REASON, PAGE_NOT_PRESENT)
        host.trace.emit(host.now, "apf_not_present", token=token, gpn=fault.gpn, done_ns=done,
                        task=w.task, design=self.delivery.name)
        self.delivery.not_present(vcpu, w, fault)
        return None

    def page_in_done(self, w: Work) -> None:
        """The I/O finished: prefault the page in and queue the page-ready notice."""
        host = self.host
        # A vCPU queued for a physical CPU is not running either: nothing to kick.
        if not (host.halted or host.stalling or host.holds(host.vcpu)) and host.has_pcpu():
            host.charge(host.costs.kick_ns, what="kick")    # kvm_vcpu_kick: make the running vCPU exit
        if host.stage2.state(w.gpn) == PageState.INFLIGHT:
            host.stage2.finish_page_in(w.gpn)
        self._transition(w, "page_in_done")
        host.trace.emit(host.now, "apf_page_in_done", token=w.token, gpn=w.gpn)
        if w.token not in self.work:          # dropped when the guest disabled APF
            return
        if not self.delivery.notifies_ready:
            self._transition(w, "release")
            del self.work[w.token]
            self.delivery.page_ready(host.vcpu, w)
            return
        self.ready.append(w)
        self.poll()

    def before_entry(self, vcpu) -> None:
        """Run-loop hook: the guest may have freed the shared slot since the last notice."""
        if self.ready and self.notified is None:
            self.poll()

    def poll(self) -> None:
        """Deliver the next "page ready" if the slot is free and nothing awaits an ack."""
        if not self.ready or self.notified is not None:
            return
        if not self.enabled and self.ready[0].token != TOKEN_WAKE_ALL:
            return
        if self.slot_busy():
            return
        w = self.ready.popleft()
        self._transition(w, "notify")
        self.notified = w
        self.write_block(OFF_TOKEN, w.token)
        self.write_block(OFF_REASON, PAGE_READY)
        self.delivery.page_ready(self.host.vcpu, w)
        self.host.trace.emit(self.host.now, "apf_page_ready", token=w.token, gpn=w.gpn,
                             waited_ns=self.host.now - w.t_fault)

    def irq_ack(self) -> int:
        """ASYNC_PF IRQ_ACK: lower the PPI, retire the item, deliver the next."""
        host = self.host
        host.gic.set_line(APF_PPI, False)
        w = self.notified
        if w is None:
            return SMCCC_SUCCESS          # a spurious ack is harmless
        self.notified = None
        if w.token != TOKEN_WAKE_ALL:
            self._transition(w, "ack")
            del self.work[w.token]
        host.trace.emit(host.now, "apf_ack", token=w.token)
        self.poll()
        return SMCCC_SUCCESS

    def wake_all(self) -> None:
        """Send token all-ones: "wake every waiting task" (on disable and on (re)enable)."""
        if not self.delivery.notifies_ready:
            return                        # nobody waits in the guest: there is no notice
        w = Work(TOKEN_WAKE_ALL, -1, self.host.now, self.host.now, state=WorkState.READY)
        self.ready.append(w)
        self.wake_all_count += 1
        self.host.trace.emit(self.host.now, "apf_wake_all")
        self.poll()

    # ------------------------------------------------------------------ hypercalls
    def handle(self, vcpu, call: Call) -> object:
        fid = call.fid
        offered = self._allowed and self.delivery.needs_guest
        if fid == VENDOR_HYP_KVM_FEATURES:
            return FEATURE_ASYNC_PF if offered else 0
        if fid != VENDOR_HYP_KVM_ASYNC_PF:
            return SMCCC_NOT_SUPPORTED
        sub = call.arg(1)
        if sub == ASYNC_PF_IRQ_ACK:
            # Honoured even after the host withdrew the feature: a page ready (or the
            # wake-all sent on withdrawal) must still be acknowledgeable.
            return self.irq_ack()
        if not offered:
            return SMCCC_NOT_SUPPORTED
        if sub == ASYNC_PF_VERSION:
            return APF_VERSION
        if sub == ASYNC_PF_SLOTS:
            return ASYNC_PF_PER_VCPU
        if sub == ASYNC_PF_IRQ:
            return APF_PPI
        if sub == ASYNC_PF_ENABLE:
            return self._enable(call.arg(2), call.arg(3))
        return self.delivery.discover(sub)

    def _enable(self, lo: int, hi: int) -> int:
        if lo >> 32 or hi >> 32:
            return SMCCC_INVALID_PARAMETER
        control = lo | hi << 32
        host = self.host
        if control & APF_ENABLED:
            gpa = control & ~(APF_BLOCK_SIZE - 1)
            if control & APF_RESERVED:
                return SMCCC_INVALID_PARAMETER     # reserved flag bits 4-5
            if not (host.stage2.in_ram(gpa) and host.stage2.in_ram(gpa + APF_BLOCK_SIZE - 1)):
                return SMCCC_INVALID_PARAMETER
            asked = (control & APF_DELIVERY_MASK) >> APF_DELIVERY_SHIFT
            if asked != self.delivery.guest_flag:
                return SMCCC_INVALID_PARAMETER     # the guest is ready for another design
            if not self.delivery.guest_ready():
                return SMCCC_INVALID_PARAMETER     # e.g. the SDEI event is not registered
            was = self.enabled
            self.control = control
            self._block_gpa = gpa & 0xFFFFFFFFFFFFFFFF
            self.write_block(OFF_REASON, 0)
            self.write_block(OFF_TOKEN, 0)
            self.write_block(OFF_ENABLED, 1)
            host.trace.emit(host.now, "apf_enable", gpa=gpa, send_always=bool(control & APF_SEND_ALWAYS),
                            delivery=self.delivery.name)
            # x86 (kvm_pv_enable_async_pf) and the arm64 series send wake-all on every enable:
            # tasks parked before a migration or a disable must not sleep for ever. On the
            # first enable nobody can be waiting yet, so the lab sends it on re-enables only
            # (it would only occupy the slot when the first fault comes).
            if self.ever_enabled:
                self.wake_all()
            self.ever_enabled = True
            return SMCCC_SUCCESS
        was = self.enabled
        if was:
            self.write_block(OFF_ENABLED, 0)
        outstanding = len(self.work)
        self.control = control & ~APF_ENABLED
        host.trace.emit(host.now, "apf_disable", outstanding=outstanding)
        if was:
            # KVM clears the completion queue (kvm_clear_async_pf_completion_queue): the
            # page-ins still finish and map their pages, but no notice is owed for them.
            # The tasks the guest parked would sleep for ever: wake them all.
            for token in [t for t, w in self.work.items() if w is not self.notified]:
                del self.work[token]
            self.ready.clear()
            if outstanding:
                self.wake_all()
        return SMCCC_SUCCESS

    # ------------------------------------------------------------------ for widgets
    def snapshot(self) -> dict:
        return {
            "enabled": self.enabled, "allowed": self._allowed, "block_gpa": self.block_gpa,
            "delivery": self.delivery.name,
            "send_always": bool(self.control & APF_SEND_ALWAYS),
            "outstanding": [{"token": w.token, "gpn": w.gpn, "state": w.state.value, "task": w.task,
                             "done_ns": w.t_done} for w in self.work.values()],
            "reserved": self.reserved,
            "ready_queue": [w.token for w in self.ready],
            "notified": self.notified.token if self.notified else None,
            "not_present": self.not_present_count, "page_ready": self.page_ready_count,
            "fallbacks": dict(self.fallbacks),
        }
