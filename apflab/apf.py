"""Asynchronous page faults: KVM's side of the arm64 APF protocol (PROTOCOLS.md 3).

Named after the page's lifecycle, like KVM's ``virt/kvm/async_pf.c``:

- ``page_not_present``: a stage-2 fault on a page that needs I/O. If APF is
  allowed, queue the page-in, write {reason=PAGE_NOT_PRESENT, token} to the
  guest's shared block and inject the SDEI event; the vCPU does not stall.
  Otherwise return False with ``last_fallback`` naming why, and the host takes
  the synchronous (stalling) path.
- ``page_ready``: the page-in finished; map it (prefault) and, once the shared
  slot is free and no earlier "page ready" awaits its ack, write
  {reason=PAGE_READY, token} and raise the page-ready PPI.
- ``IRQ_ACK``: the guest consumed it; lower the PPI and deliver the next one.

One owner per queue: ``self.work`` holds every outstanding item (cap 64, the
``ASYNC_PF_PER_VCPU`` of KVM); ``self.ready`` the completed ones awaiting
their notification, in completion order.
"""

from __future__ import annotations

import struct
from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum

from .errors import InvariantError
from .smccc import Call
from .stage2 import PageState

# KVM vendor hypervisor service (SMC32 fast call, owner 6): PROTOCOLS.md 3.
VENDOR_HYP_KVM_FEATURES = 0x86000000
VENDOR_HYP_KVM_PTP = 0x86000001
VENDOR_HYP_KVM_ASYNC_PF = 0x86000002
VENDOR_FIRST, VENDOR_LAST = 0x86000000, 0x8600FFFF
FEATURE_PTP = 1 << 1
FEATURE_ASYNC_PF = 1 << 2

# ASYNC_PF sub-functions in x1.
ASYNC_PF_VERSION, ASYNC_PF_SLOTS, ASYNC_PF_SDEI, ASYNC_PF_IRQ, ASYNC_PF_ENABLE, ASYNC_PF_IRQ_ACK = range(6)
APF_VERSION = 0x010000
ASYNC_PF_PER_VCPU = 64
APF_PPI = 19                 # lab default: a free PPI on the virt platform (27 is the vtimer)

# SMCCC generic return codes (DEN0028 7.1).
SMCCC_SUCCESS = 0
SMCCC_NOT_SUPPORTED = -1
SMCCC_INVALID_PARAMETER = -3

# Control word flags (low bits of ``gpa | flags``).
APF_ENABLED = 1 << 0
APF_SEND_ALWAYS = 1 << 1

# struct kvm_vcpu_pv_apf_data { u32 reason; u32 token; u8 pad[56]; u32 enabled; }
OFF_REASON, OFF_TOKEN, OFF_ENABLED = 0, 4, 60
APF_BLOCK_SIZE = 64
PAGE_NOT_PRESENT, PAGE_READY = 1, 2
TOKEN_WAKE_ALL = 0xFFFFFFFF

# Why the host fell back to a synchronous fault (PROTOCOLS.md 3, "When the host falls back").
FALLBACKS = ("apf_disabled", "kernel_mode", "in_handler", "pe_masked", "event_disabled",
             "event_pending", "slot_busy", "queue_full", "repeated_fault", "prefault")


class WorkState(Enum):
    NOT_PRESENT_SENT = "not_present_sent"   # page-in running, guest told to park the task
    READY = "ready"                         # page-in done, waiting for the slot to notify
    READY_SENT = "ready_sent"               # page-ready PPI raised, waiting for IRQ_ACK
    DONE = "done"


# The work item lifecycle as a table: (state, action) -> new state.
WORK_TRANSITIONS = {
    (WorkState.NOT_PRESENT_SENT, "page_in_done"): WorkState.READY,
    (WorkState.READY, "notify"): WorkState.READY_SENT,
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


class ApfService:
    """The host APF service for one vCPU (vcpu_id 0)."""
    name = "kvm-vendor"

    def __init__(self, host, vcpu_id: int = 0):
        self.host = host
        self.vcpu_id = vcpu_id
        self.control = 0
        self.allowed = True          # the host may switch APF off (labs: "APF off")
        self.next_id = 0
        self.work: dict[int, Work] = {}          # token -> outstanding item
        self.ready: deque[Work] = deque()        # completed, not yet notified
        self.notified: Work | None = None        # page ready raised, awaiting IRQ_ACK
        self.fallbacks: Counter[str] = Counter()
        self.last_fallback: str | None = None
        self.not_present_count = 0
        self.page_ready_count = 0
        self.wake_all_count = 0

    @classmethod
    def install(cls, host) -> "ApfService":
        svc = cls(host)
        host.router.register(VENDOR_FIRST, VENDOR_LAST, svc)
        host.apf = svc
        return svc

    # ------------------------------------------------------------------ state
    @property
    def enabled(self) -> bool:
        return bool(self.control & APF_ENABLED)

    @property
    def block_gpa(self) -> int:
        return self.control & ~(APF_BLOCK_SIZE - 1) & 0xFFFFFFFFFFFFFFFF

    def _read32(self, off: int) -> int:
        return struct.unpack("<I", self.host.stage2.read(self.block_gpa + off, 4))[0]

    def _write32(self, off: int, value: int) -> None:
        self.host.stage2.write(self.block_gpa + off, struct.pack("<I", value))

    def slot_busy(self) -> bool:
        return self._read32(OFF_REASON) != 0

    def _transition(self, w: Work, action: str) -> None:
        new = WORK_TRANSITIONS.get((w.state, action))
        if new is None:
            raise InvariantError(f"APF work {w.token:#x}: {action} in state {w.state.value}")
        w.state = new

    # ------------------------------------------------------------------ lifecycle
    def _fallback_reason(self, gpn: int) -> str | None:
        """Why an async fault is not possible now; None if it is (PROTOCOLS.md 3)."""
        from .sdei import EVENT_ASYNC_PF, S_ENABLED
        sdei = self.host.sdei
        if not (self.allowed and self.enabled):
            return "apf_disabled"
        if self.host.vcpu.el != 0 and not self.control & APF_SEND_ALWAYS:
            return "kernel_mode"
        ev = sdei.events[EVENT_ASYNC_PF]
        if sdei.handler_running():
            return "in_handler"
        if ev.triggered:
            return "event_pending"       # an earlier raise is still waiting to be dispatched
        if sdei.pe.masked:
            return "pe_masked"
        if ev.state != S_ENABLED:
            return "event_disabled"
        if self.host.stage2.state(gpn) == PageState.INFLIGHT:
            return "repeated_fault"
        if self.slot_busy():
            return "slot_busy"
        if len(self.work) >= ASYNC_PF_PER_VCPU:
            return "queue_full"
        return None

    def page_not_present(self, gpn: int, exit_info) -> bool:
        """Try the asynchronous path for a fault that needs I/O; True if taken."""
        from .sdei import EVENT_ASYNC_PF
        reason = self._fallback_reason(gpn)
        host = self.host
        if reason is not None:
            self.fallbacks[reason] += 1
            self.last_fallback = reason
            host.trace.emit(host.now, "apf_fallback", gpn=gpn, reason=reason)
            return False
        self.last_fallback = None
        token = (self.next_id << 12) | self.vcpu_id
        self.next_id = (self.next_id + 1) & 0xFFFF
        if token in self.work:
            raise InvariantError(f"APF token {token:#x} is already outstanding")
        host.charge(host.costs.fault_ns, what="stage2_fault")
        done = host.stage2.start_page_in(gpn, host.now, host.rng)
        w = Work(token, gpn, host.now, done, task=host.current_task())
        self.work[token] = w
        host.schedule(done, "apf_page_in_done", lambda: self.page_in_done(w))
        self._write32(OFF_TOKEN, token)
        self._write32(OFF_REASON, PAGE_NOT_PRESENT)
        self.not_present_count += 1
        host.trace.emit(host.now, "apf_not_present", token=token, gpn=gpn, done_ns=done, task=w.task)
        if not host.sdei.raise_event(EVENT_ASYNC_PF):
            raise InvariantError("APF: the SDEI event was checked deliverable but was not dispatched")
        return True

    def page_in_done(self, w: Work) -> None:
        """The I/O finished: prefault the page in and queue the page-ready notice."""
        host = self.host
        if not (host.halted or host.stalling):
            host.charge(host.costs.kick_ns, what="kick")    # kvm_vcpu_kick: make the running vCPU exit
        if host.stage2.state(w.gpn) == PageState.INFLIGHT:
            host.stage2.finish_page_in(w.gpn)
        self._transition(w, "page_in_done")
        self.ready.append(w)
        host.trace.emit(host.now, "apf_page_in_done", token=w.token, gpn=w.gpn)
        self.poll()

    def poll(self) -> None:
        """Deliver the next "page ready" if the slot is free and nothing awaits an ack."""
        if not self.ready or self.notified is not None or not self.enabled:
            return
        if self.slot_busy():
            return
        w = self.ready.popleft()
        self._transition(w, "notify")
        self.notified = w
        self._write32(OFF_TOKEN, w.token)
        self._write32(OFF_REASON, PAGE_READY)
        self.page_ready_count += 1
        self.host.gic.set_line(APF_PPI, True)
        self.host.trace.emit(self.host.now, "apf_page_ready", token=w.token, gpn=w.gpn,
                             waited_ns=self.host.now - w.t_fault)

    def wants_poll(self) -> bool:
        return bool(self.ready) and self.notified is None

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
        """Send token all-ones: "wake every waiting task" (used when APF is turned off)."""
        w = Work(TOKEN_WAKE_ALL, -1, self.host.now, self.host.now, state=WorkState.READY)
        self.ready.append(w)
        self.wake_all_count += 1
        self.host.trace.emit(self.host.now, "apf_wake_all")
        self.poll()

    # ------------------------------------------------------------------ hypercalls
    def handle(self, call: Call) -> object:
        fid = call.fid
        if fid == VENDOR_HYP_KVM_FEATURES:
            return FEATURE_ASYNC_PF if self.allowed else 0
        if fid != VENDOR_HYP_KVM_ASYNC_PF:
            return SMCCC_NOT_SUPPORTED
        sub = call.arg(1)
        if sub == ASYNC_PF_IRQ_ACK:
            # Honoured even after the host withdrew the feature: a page ready (or the
            # wake-all sent on withdrawal) must still be acknowledgeable.
            return self.irq_ack()
        if not self.allowed:
            return SMCCC_NOT_SUPPORTED
        if sub == ASYNC_PF_VERSION:
            return APF_VERSION
        if sub == ASYNC_PF_SLOTS:
            return ASYNC_PF_PER_VCPU
        if sub == ASYNC_PF_SDEI:
            from .sdei import EVENT_ASYNC_PF
            return EVENT_ASYNC_PF
        if sub == ASYNC_PF_IRQ:
            return APF_PPI
        if sub == ASYNC_PF_ENABLE:
            return self._enable(call.arg(2), call.arg(3))
        return SMCCC_NOT_SUPPORTED

    def _enable(self, lo: int, hi: int) -> int:
        from .sdei import EVENT_ASYNC_PF
        if lo >> 32 or hi >> 32:
            return SMCCC_INVALID_PARAMETER
        control = lo | hi << 32
        host = self.host
        if control & APF_ENABLED:
            gpa = control & ~(APF_BLOCK_SIZE - 1)
            if control & 0x3C:
                return SMCCC_INVALID_PARAMETER     # reserved flag bits 2-5
            if not (host.stage2.in_ram(gpa) and host.stage2.in_ram(gpa + APF_BLOCK_SIZE - 1)):
                return SMCCC_INVALID_PARAMETER
            # Refused before the guest registered the "page not present" event.
            if not host.sdei.events[EVENT_ASYNC_PF].state & 1:
                return SMCCC_INVALID_PARAMETER
            self.control = control
            self._write32(OFF_REASON, 0)
            self._write32(OFF_TOKEN, 0)
            self._write32(OFF_ENABLED, 1)
            host.trace.emit(host.now, "apf_enable", gpa=gpa, send_always=bool(control & APF_SEND_ALWAYS))
            return SMCCC_SUCCESS
        was = self.enabled
        if was:
            self._write32(OFF_ENABLED, 0)
        self.control = control & ~APF_ENABLED
        host.trace.emit(host.now, "apf_disable", outstanding=len(self.work))
        return SMCCC_SUCCESS

    # ------------------------------------------------------------------ for widgets
    def snapshot(self) -> dict:
        return {
            "enabled": self.enabled, "allowed": self.allowed, "block_gpa": self.block_gpa,
            "send_always": bool(self.control & APF_SEND_ALWAYS),
            "outstanding": [{"token": w.token, "gpn": w.gpn, "state": w.state.value, "task": w.task,
                             "done_ns": w.t_done} for w in self.work.values()],
            "ready_queue": [w.token for w in self.ready],
            "notified": self.notified.token if self.notified else None,
            "not_present": self.not_present_count, "page_ready": self.page_ready_count,
            "fallbacks": dict(self.fallbacks),
        }
