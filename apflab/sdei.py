"""SDEI: the Software Delegated Exception Interface (Arm DEN0054C, v1.1) for the guest.

A host service reached by ``hvc #0`` (function IDs 0xC4000020-0xC4000032),
modelled on what Trusted Firmware-A's dispatcher and KVM's "SDEI
virtualization" v7 series do. Every rule cites DEN0054C; where sources
disagree the lab default of docs/REFERENCES.md ("SDEI") applies, and
``profile="kvm-v7"`` reproduces KVM's choices for comparison.

The per-event lifecycle is one table, ``TRANSITIONS``, indexed by (state,
action) like TF-A's ``sdei_state.c``; ``_transition`` is the only place an
event's state changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from .errors import InvariantError, ParameterError
from .smccc import NO_RETURN, Call
from .arch import PSTATE_EL1H_MASKED, PSTATE_NZCV

# Function IDs (DEN0054C 5.1, table 5-1). SMC64 only: there are no SMC32 SDEI IDs.
SDEI_VERSION = 0xC4000020
SDEI_EVENT_REGISTER = 0xC4000021
SDEI_EVENT_ENABLE = 0xC4000022
SDEI_EVENT_DISABLE = 0xC4000023
SDEI_EVENT_CONTEXT = 0xC4000024
SDEI_EVENT_COMPLETE = 0xC4000025
SDEI_EVENT_COMPLETE_AND_RESUME = 0xC4000026
SDEI_EVENT_UNREGISTER = 0xC4000027
SDEI_EVENT_STATUS = 0xC4000028
SDEI_EVENT_GET_INFO = 0xC4000029
SDEI_EVENT_ROUTING_SET = 0xC400002A
SDEI_PE_MASK = 0xC400002B
SDEI_PE_UNMASK = 0xC400002C
SDEI_INTERRUPT_BIND = 0xC400002D
SDEI_INTERRUPT_RELEASE = 0xC400002E
SDEI_EVENT_SIGNAL = 0xC400002F
MPIDR_FORMAT_BITS = 1 << 31 | 1 << 30 | 1 << 24   # RES1, U, MT: not part of the PE's name
SDEI_FEATURES = 0xC4000030
SDEI_PRIVATE_RESET = 0xC4000031
SDEI_SHARED_RESET = 0xC4000032
SDEI_FIRST, SDEI_LAST = SDEI_VERSION, SDEI_SHARED_RESET

# Return codes (DEN0054C 5.1.1, table 5-2).
SUCCESS = 0
NOT_SUPPORTED = -1
INVALID_PARAMETERS = -2
DENIED = -3
PENDING = -5
OUT_OF_RESOURCE = -10

# VERSION result: bit 63 zero, [62:48] major, [47:32] minor, [31:0] vendor ("KVM").
VERSION_MAJOR, VERSION_MINOR, VENDOR_KVM = 1, 1, 0x4B564D

# Event numbers of the lab platform.
EVENT_SW_SIGNAL = 0         # DEN0054C 4.3: the architectural software-signalled event
EVENT_ASYNC_PF = 1          # KVM v7's number for "page not present"; guests ask ASYNC_PF SDEI for it
EVENT_CRITICAL = 2          # lab's own: a critical-priority host event, for the nesting lesson
BOUND_EVENT_BASE = 1000     # events created by INTERRUPT_BIND (TF-A numbers dynamic events alike)
PRIVATE_BIND_SLOTS = 2      # PPIs that may be bound at once; SHARED: none (no SPIs modelled)

# EVENT_REGISTER flags (DEN0054C 5.1.2).
FLAG_RM_PE = 1 << 0
FLAG_RELATIVE = 1 << 1
# EVENT_GET_INFO info types (DEN0054C 5.1.10).
INFO_TYPE, INFO_SIGNALED, INFO_PRIORITY, INFO_ROUTING_MODE, INFO_ROUTING_AFF = range(5)
# FEATURES (DEN0054C 5.1.16).
FEATURE_BIND_SLOTS, FEATURE_RELATIVE_MODE = 0, 1

CONTEXT_REGS = 18           # x0-x17 are saved and readable through EVENT_CONTEXT

NAMES = {
    SDEI_VERSION: "VERSION", SDEI_EVENT_REGISTER: "EVENT_REGISTER", SDEI_EVENT_ENABLE: "EVENT_ENABLE",
    SDEI_EVENT_DISABLE: "EVENT_DISABLE", SDEI_EVENT_CONTEXT: "EVENT_CONTEXT",
    SDEI_EVENT_COMPLETE: "EVENT_COMPLETE", SDEI_EVENT_COMPLETE_AND_RESUME: "EVENT_COMPLETE_AND_RESUME",
    SDEI_EVENT_UNREGISTER: "EVENT_UNREGISTER", SDEI_EVENT_STATUS: "EVENT_STATUS",
    SDEI_EVENT_GET_INFO: "EVENT_GET_INFO", SDEI_EVENT_ROUTING_SET: "EVENT_ROUTING_SET",
    SDEI_PE_MASK: "PE_MASK", SDEI_PE_UNMASK: "PE_UNMASK", SDEI_INTERRUPT_BIND: "INTERRUPT_BIND",
    SDEI_INTERRUPT_RELEASE: "INTERRUPT_RELEASE", SDEI_EVENT_SIGNAL: "EVENT_SIGNAL",
    SDEI_FEATURES: "FEATURES", SDEI_PRIVATE_RESET: "PRIVATE_RESET", SDEI_SHARED_RESET: "SHARED_RESET",
}


class Priority(IntEnum):
    NORMAL = 0
    CRITICAL = 1


class Action(IntEnum):
    REGISTER = 0
    ENABLE = 1
    DISABLE = 2
    UNREGISTER = 3
    CONTEXT = 4
    COMPLETE = 5          # EVENT_COMPLETE and EVENT_COMPLETE_AND_RESUME alike
    DISPATCH = 6          # the host delivers the event


# Event states are the EVENT_STATUS bits: registered 1, enabled 2, running 4.
S_UNREGISTERED = 0
S_REGISTERED = 1
S_ENABLED = 3             # registered + enabled
S_UNREG_PENDING = 4       # running, UNREGISTER came while it ran
S_RUNNING_DISABLED = 5    # registered + running (disabled inside its handler)
S_RUNNING = 7             # registered + enabled + running
STATES = (S_UNREGISTERED, S_REGISTERED, S_ENABLED, S_UNREG_PENDING, S_RUNNING_DISABLED, S_RUNNING)

NOP = None                # allowed, state unchanged
NA = "not applicable"     # the host never attempts it (dispatch needs an enabled, idle event)

# (state, action) -> (return code, new state or NOP); DENIED rows keep the state.
# DEN0054C 6.1 (event states) and TF-A sdei_state.c; one comment per row.
TRANSITIONS: dict[tuple[int, Action], tuple[int, int | None] | str] = {
    # 0: unregistered - only REGISTER is legal.
    (S_UNREGISTERED, Action.REGISTER): (SUCCESS, S_REGISTERED),
    (S_UNREGISTERED, Action.ENABLE): (DENIED, NOP),
    (S_UNREGISTERED, Action.DISABLE): (DENIED, NOP),
    (S_UNREGISTERED, Action.UNREGISTER): (DENIED, NOP),
    (S_UNREGISTERED, Action.CONTEXT): (DENIED, NOP),
    (S_UNREGISTERED, Action.COMPLETE): (DENIED, NOP),
    (S_UNREGISTERED, Action.DISPATCH): NA,
    # 1: registered, disabled - enable it or unregister it; disabling again is a no-op.
    (S_REGISTERED, Action.REGISTER): (DENIED, NOP),
    (S_REGISTERED, Action.ENABLE): (SUCCESS, S_ENABLED),
    (S_REGISTERED, Action.DISABLE): (SUCCESS, NOP),
    (S_REGISTERED, Action.UNREGISTER): (SUCCESS, S_UNREGISTERED),
    (S_REGISTERED, Action.CONTEXT): (DENIED, NOP),
    (S_REGISTERED, Action.COMPLETE): (DENIED, NOP),
    (S_REGISTERED, Action.DISPATCH): NA,
    # 3: registered, enabled, idle - the only state an event is dispatched from.
    (S_ENABLED, Action.REGISTER): (DENIED, NOP),
    (S_ENABLED, Action.ENABLE): (SUCCESS, NOP),
    (S_ENABLED, Action.DISABLE): (SUCCESS, S_REGISTERED),
    (S_ENABLED, Action.UNREGISTER): (SUCCESS, S_UNREGISTERED),
    (S_ENABLED, Action.CONTEXT): (DENIED, NOP),
    (S_ENABLED, Action.COMPLETE): (DENIED, NOP),
    (S_ENABLED, Action.DISPATCH): (SUCCESS, S_RUNNING),
    # 4: handler running, unregister pending - completion finishes the unregister.
    (S_UNREG_PENDING, Action.REGISTER): (DENIED, NOP),
    (S_UNREG_PENDING, Action.ENABLE): (DENIED, NOP),
    (S_UNREG_PENDING, Action.DISABLE): (DENIED, NOP),
    (S_UNREG_PENDING, Action.UNREGISTER): (PENDING, NOP),
    (S_UNREG_PENDING, Action.CONTEXT): (SUCCESS, NOP),
    (S_UNREG_PENDING, Action.COMPLETE): (SUCCESS, S_UNREGISTERED),
    (S_UNREG_PENDING, Action.DISPATCH): NA,
    # 5: handler running, disabled inside it - re-enable or complete to "registered".
    (S_RUNNING_DISABLED, Action.REGISTER): (DENIED, NOP),
    (S_RUNNING_DISABLED, Action.ENABLE): (SUCCESS, S_RUNNING),
    (S_RUNNING_DISABLED, Action.DISABLE): (SUCCESS, NOP),
    (S_RUNNING_DISABLED, Action.UNREGISTER): (PENDING, S_UNREG_PENDING),
    (S_RUNNING_DISABLED, Action.CONTEXT): (SUCCESS, NOP),
    (S_RUNNING_DISABLED, Action.COMPLETE): (SUCCESS, S_REGISTERED),
    (S_RUNNING_DISABLED, Action.DISPATCH): NA,
    # 7: handler running - UNREGISTER is deferred (returns PENDING) until completion.
    (S_RUNNING, Action.REGISTER): (DENIED, NOP),
    (S_RUNNING, Action.ENABLE): (SUCCESS, NOP),
    (S_RUNNING, Action.DISABLE): (SUCCESS, S_RUNNING_DISABLED),
    (S_RUNNING, Action.UNREGISTER): (PENDING, S_UNREG_PENDING),
    (S_RUNNING, Action.CONTEXT): (SUCCESS, NOP),
    (S_RUNNING, Action.COMPLETE): (SUCCESS, S_ENABLED),
    (S_RUNNING, Action.DISPATCH): NA,
}


@dataclass
class EventDef:
    """What the platform says of an event (fixed, not guest state)."""
    number: int
    name: str
    priority: Priority = Priority.NORMAL
    signalable: bool = False
    shared: bool = False
    bound_intid: int | None = None


@dataclass
class Event:
    """One event's guest-visible state on this PE."""
    defn: EventDef
    state: int = S_UNREGISTERED
    entry: int = 0
    ep_arg: int = 0
    flags: int = 0
    affinity: int = 0
    triggered: bool = False        # raised/signalled, waiting to be dispatched

    @property
    def running(self) -> bool:
        return bool(self.state & 4)


@dataclass
class Context:
    """What dispatch saved: DEN0054C 6.2.2 (x0-x17, PC, PSTATE)."""
    event: int
    regs: list[int]
    pc: int
    pstate: int


@dataclass
class PeState:
    masked: bool = True                      # DEN0054C 6.1.4: a PE starts masked
    running: list[Context] = field(default_factory=list)   # outermost first


PROFILES = ("lab", "kvm-v7")


class SdeiService:
    """The SDEI dispatcher for one vCPU: plain state plus ``handle(call)``."""
    name = "sdei"

    def __init__(self, host, profile: str = "lab"):
        if profile not in PROFILES:
            raise ParameterError(f"unknown SDEI profile {profile!r}; choose one of {PROFILES}")
        self.host = host
        self.profile = profile
        self.pe = PeState()
        self.events: dict[int, Event] = {}
        for d in (EventDef(EVENT_SW_SIGNAL, "software signalled", signalable=True),
                  EventDef(EVENT_ASYNC_PF, "async page fault: page not present"),
                  EventDef(EVENT_CRITICAL, "host critical event", priority=Priority.CRITICAL)):
            self.events[d.number] = Event(d)
        self.bind_slots: dict[int, int] = {}      # event number -> INTID
        self.peers: list | None = None            # several vCPUs: every PE's dispatcher, by index
        self.dispatch_count = 0
        self._handlers = {
            SDEI_VERSION: self._version, SDEI_EVENT_REGISTER: self._register,
            SDEI_EVENT_ENABLE: self._enable, SDEI_EVENT_DISABLE: self._disable,
            SDEI_EVENT_CONTEXT: self._context, SDEI_EVENT_COMPLETE: self._complete,
            SDEI_EVENT_COMPLETE_AND_RESUME: self._complete_and_resume,
            SDEI_EVENT_UNREGISTER: self._unregister, SDEI_EVENT_STATUS: self._status,
            SDEI_EVENT_GET_INFO: self._get_info, SDEI_EVENT_ROUTING_SET: self._routing_set,
            SDEI_PE_MASK: self._pe_mask, SDEI_PE_UNMASK: self._pe_unmask,
            SDEI_INTERRUPT_BIND: self._interrupt_bind, SDEI_INTERRUPT_RELEASE: self._interrupt_release,
            SDEI_EVENT_SIGNAL: self._signal, SDEI_FEATURES: self._features,
            SDEI_PRIVATE_RESET: self._private_reset, SDEI_SHARED_RESET: self._shared_reset,
        }

    @classmethod
    def install(cls, host, profile: str = "lab") -> "SdeiService":
        from .host import Registration
        svc = cls(host, profile)
        host.register(Registration("sdei", svc, fids=(SDEI_FIRST, SDEI_LAST),
                                   before_entry=svc.before_entry, quiet=svc.quiet, wakes=svc.wakes,
                                   in_handler=svc.handler_running))
        return svc

    # ------------------------------------------------------------------ run-loop hooks
    def before_entry(self, vcpu) -> None:
        """Bound interrupts trigger their events; a deliverable event is dispatched."""
        if self.bind_slots:
            self.poll_bound()
        self.try_dispatch(vcpu)

    def quiet(self, vcpu) -> bool:
        """``before_entry`` would do nothing now: no bound line would trigger, nothing to dispatch."""
        if self.bind_slots:
            line = self.host.gic.line
            for num, intid in self.bind_slots.items():
                ev = self.events[num]
                if line[intid] and ev.state == S_ENABLED and not ev.triggered:
                    return False
        return self.deliverable() is None

    def wakes(self, vcpu) -> bool:
        """An event that would be dispatched ends a WFI halt."""
        if self.bind_slots:
            self.poll_bound()
        return self.deliverable() is not None

    # ------------------------------------------------------------------ injection (labs, tests)
    def set_pe_masked(self, masked: bool) -> None:
        """What PE_MASK / PE_UNMASK do, done from the host side (the explorer's "mask PE")."""
        self.pe.masked = bool(masked)
        self.host.trace.emit(self.host.now, "sdei_mask", masked=self.pe.masked)

    # ------------------------------------------------------------------ the table
    def _transition(self, ev: Event, action: Action) -> int:
        """Check and apply one (state, action) of ``TRANSITIONS``; returns the code."""
        rule = TRANSITIONS[(ev.state, action)]
        if rule == NA:
            raise InvariantError(f"SDEI: {action.name} attempted on event {ev.defn.number} in state {ev.state}")
        code, new = rule
        if new is not NOP:
            old, ev.state = ev.state, new
            self.host.trace.emit(self.host.now, "sdei_state", event=ev.defn.number,
                                 action=action.name, old=old, new=new)
        return code

    # ------------------------------------------------------------------ host-side API
    def raise_event(self, number: int) -> bool:
        """The host triggers an event (APF, critical); True if it was dispatched now."""
        ev = self.events.get(number)
        if ev is None:
            raise ParameterError(f"SDEI event {number} does not exist on this platform")
        ev.triggered = True
        self.host.trace.emit(self.host.now, "sdei_raise", event=number)
        return self.try_dispatch(self.host.vcpu) == number

    def poll_bound(self) -> None:
        """A bound interrupt whose line is high triggers its event (DEN0054C 4.2, bound events).

        Lines are level-sensitive: if the line is still high when the handler
        completes, the event triggers again.
        """
        line = self.host.gic.line
        for num, intid in self.bind_slots.items():
            ev = self.events[num]
            if line[intid] and ev.state == S_ENABLED and not ev.triggered:
                ev.triggered = True
                self.host.trace.emit(self.host.now, "sdei_raise", event=num, intid=intid)

    def can_dispatch_now(self, number: int) -> bool:
        """Would a raise of ``number`` be delivered at once (the APF fallback test)?"""
        ev = self.events.get(number)
        return (ev is not None and not self.pe.masked and ev.state == S_ENABLED
                and not ev.triggered and self._priority_allows(ev))

    def handler_running(self) -> bool:
        return bool(self.pe.running)

    def deliverable(self) -> Event | None:
        """The event dispatch would pick now, if any (highest priority, then lowest number)."""
        if self.pe.masked:
            return None
        best = None
        for num in sorted(self.events):
            ev = self.events[num]
            if ev.triggered and ev.state == S_ENABLED and self._priority_allows(ev):
                if best is None or ev.defn.priority > best.defn.priority:
                    best = ev
        return best

    def _priority_allows(self, ev: Event) -> bool:
        # DEN0054C 6.2.1: a critical event may preempt a normal handler; nothing
        # preempts a critical one; same-priority events never nest.
        if not self.pe.running:
            return True
        top = self.events[self.pe.running[-1].event].defn.priority
        return ev.defn.priority > top

    def try_dispatch(self, vcpu) -> int | None:
        """Deliver the deliverable event, if any: DEN0054C 6.2.2 dispatch."""
        ev = self.deliverable()
        if ev is None:
            return None
        regs, pc, pstate = vcpu.save_context(CONTEXT_REGS)
        ctx = Context(ev.defn.number, regs, pc, pstate)
        self._transition(ev, Action.DISPATCH)
        ev.triggered = False
        self.pe.running.append(ctx)
        self.dispatch_count += 1
        # Handler entry at the client's EL (EL1h), all of DAIF set; x0-x3 as the
        # spec says; x4-x17 zeroed (KVM v7; TF-A leaves them - lab default: zero).
        vcpu.enter_handler(ev.entry, (ctx.pstate & PSTATE_NZCV) | PSTATE_EL1H_MASKED,
                           [ev.defn.number, ev.ep_arg, ctx.pc, ctx.pstate], zero_to=CONTEXT_REGS)
        self.host.halted = False
        self.host.charge(self.host.costs.inject_ns, "host", what="sdei_inject")
        self.host.trace.emit(self.host.now, "sdei_dispatch", event=ev.defn.number, pc=ctx.pc,
                             pstate=ctx.pstate, entry=ev.entry)
        return ev.defn.number

    # ------------------------------------------------------------------ hypercalls
    def handle(self, vcpu, call: Call) -> object:
        fn = self._handlers.get(call.fid)
        if fn is None:
            return NOT_SUPPORTED
        result = fn(vcpu, call)
        if result is not NO_RETURN:
            self.host.trace.emit(self.host.now, "sdei_call", call=NAMES[call.fid],
                                 x1=call.arg(1), result=int(result))
        return result

    def _event(self, number: int) -> Event | None:
        return self.events.get(number if number < (1 << 32) else -1)

    def _version(self, vcpu, call: Call) -> int:
        return (VERSION_MAJOR << 48) | (VERSION_MINOR << 32) | VENDOR_KVM

    def _register(self, vcpu, call: Call) -> int:
        ev = self._event(call.arg(1))
        entry, ep_arg, flags, affinity = call.arg(2), call.arg(3), call.arg(4), call.arg(5)
        if ev is None or flags & ~(FLAG_RM_PE | FLAG_RELATIVE):
            return INVALID_PARAMETERS
        if flags & FLAG_RELATIVE:
            return INVALID_PARAMETERS     # FEATURES(RELATIVE_MODE) reports 0: not supported
        if entry % 4 or not self.host.stage2.in_ram(entry):
            return INVALID_PARAMETERS     # DEN0054C 5.1.2: entry must be a valid address
        if ev.defn.shared and flags & FLAG_RM_PE and affinity != 0:
            return INVALID_PARAMETERS
        code = self._transition(ev, Action.REGISTER)
        if code == SUCCESS:
            ev.entry, ev.ep_arg, ev.flags, ev.affinity = entry, ep_arg, flags, affinity
            ev.triggered = False
        return code

    def _enable(self, vcpu, call: Call) -> int:
        ev = self._event(call.arg(1))
        return INVALID_PARAMETERS if ev is None else self._transition(ev, Action.ENABLE)

    def _disable(self, vcpu, call: Call) -> int:
        ev = self._event(call.arg(1))
        return INVALID_PARAMETERS if ev is None else self._transition(ev, Action.DISABLE)

    def _unregister(self, vcpu, call: Call) -> int:
        ev = self._event(call.arg(1))
        if ev is None:
            return INVALID_PARAMETERS
        code = self._transition(ev, Action.UNREGISTER)
        if ev.state == S_UNREGISTERED:
            ev.triggered = False
        return code

    def _status(self, vcpu, call: Call) -> int:
        ev = self._event(call.arg(1))
        return INVALID_PARAMETERS if ev is None else ev.state

    def _get_info(self, vcpu, call: Call) -> int:
        ev = self._event(call.arg(1))
        info = call.arg(2)
        if ev is None or info > INFO_ROUTING_AFF:
            return INVALID_PARAMETERS
        if info == INFO_TYPE:
            return 1 if ev.defn.shared else 0
        if info == INFO_SIGNALED:
            return 1 if ev.defn.signalable else 0
        if info == INFO_PRIORITY:
            return int(ev.defn.priority)
        # Routing mode and affinity exist for shared events only (DEN0054C 5.1.10).
        if not ev.defn.shared:
            return INVALID_PARAMETERS
        if ev.state == S_UNREGISTERED:
            return DENIED
        return ev.flags & FLAG_RM_PE if info == INFO_ROUTING_MODE else ev.affinity

    def _routing_set(self, vcpu, call: Call) -> int:
        ev = self._event(call.arg(1))
        if ev is None or call.arg(2) & ~FLAG_RM_PE or not ev.defn.shared:
            return INVALID_PARAMETERS     # private events have no routing (DEN0054C 5.1.11)
        if ev.state != S_REGISTERED:
            return DENIED
        ev.flags = (ev.flags & ~FLAG_RM_PE) | call.arg(2)
        ev.affinity = call.arg(3)
        return SUCCESS

    def _running_event(self) -> Event | None:
        return self.events[self.pe.running[-1].event] if self.pe.running else None

    def _context(self, vcpu, call: Call) -> int:
        param = call.arg(1)
        running = self._running_event()
        if self.profile == "kvm-v7":
            if running is None:
                return DENIED
            if param >= CONTEXT_REGS:
                return INVALID_PARAMETERS
        else:
            # Lab default (TF-A): the parameter is checked before the state.
            if param >= CONTEXT_REGS:
                return INVALID_PARAMETERS
            if running is None:
                return DENIED
        code = self._transition(running, Action.CONTEXT)
        return self.pe.running[-1].regs[param] if code == SUCCESS else code

    def _finish(self, vcpu, call: Call, resume: int | None) -> object:
        """EVENT_COMPLETE / COMPLETE_AND_RESUME (DEN0054C 5.1.5-5.1.6)."""
        running = self._running_event()
        if running is None:
            if self.profile == "kvm-v7":
                return vcpu.x(0)              # KVM v7 leaves x0 as it was
            return DENIED
        if resume is not None and (resume % 4 or not self.host.stage2.in_ram(resume)):
            # TF-A checks the resume address like a registration's entry point
            # (plat_sdei_validate_entry_point) and refuses with DENIED: the handler goes on.
            return DENIED
        self._transition(running, Action.COMPLETE)
        ctx = self.pe.running.pop()
        if resume is None:
            vcpu.restore_context(ctx.regs, ctx.pc, ctx.pstate)
        else:
            # As if an exception had been taken from the interrupted context.
            vcpu.set_reg("elr_el1", ctx.pc)
            vcpu.set_reg("spsr_el1", ctx.pstate & 0xFFFFFFFF)
            vcpu.restore_context(ctx.regs, resume, (ctx.pstate & PSTATE_NZCV) | PSTATE_EL1H_MASKED)
        self.host.trace.emit(self.host.now, "sdei_complete", event=ctx.event,
                             status=call.arg(1) if resume is None else 0,
                             resume=resume, pc=ctx.pc)
        return NO_RETURN

    def _complete(self, vcpu, call: Call) -> object:
        return self._finish(vcpu, call, None)

    def _complete_and_resume(self, vcpu, call: Call) -> object:
        return self._finish(vcpu, call, call.arg(1))

    def _pe_mask(self, vcpu, call: Call) -> int:
        was = self.pe.masked
        self.pe.masked = True
        self.host.trace.emit(self.host.now, "sdei_mask", masked=True)
        if self.profile == "kvm-v7":
            return 0
        return 0 if was else 1

    def _pe_unmask(self, vcpu, call: Call) -> int:
        self.pe.masked = False
        self.host.trace.emit(self.host.now, "sdei_mask", masked=False)
        return SUCCESS

    def _interrupt_bind(self, vcpu, call: Call) -> int:
        intid = call.arg(1)
        if not 16 <= intid <= 31:
            return INVALID_PARAMETERS     # SGIs cannot be bound; SPIs are not modelled
        for num, bound in self.bind_slots.items():
            if bound == intid:
                return num
        if len(self.bind_slots) >= PRIVATE_BIND_SLOTS:
            return OUT_OF_RESOURCE
        num = next(n for n in range(BOUND_EVENT_BASE, BOUND_EVENT_BASE + PRIVATE_BIND_SLOTS)
                   if n not in self.bind_slots)
        self.bind_slots[num] = intid
        self.events[num] = Event(EventDef(num, f"bound to INTID {intid}", bound_intid=intid))
        self.host.gic.bound.add(intid)    # from now on the interrupt is delivered as this event
        return num

    def _interrupt_release(self, vcpu, call: Call) -> int:
        num = call.arg(1)
        if num not in self.bind_slots:
            return INVALID_PARAMETERS
        if self.events[num].state != S_UNREGISTERED:
            return DENIED                 # DEN0054C 5.1.14: unregister it first
        self.host.gic.bound.discard(self.bind_slots.pop(num))
        del self.events[num]
        return SUCCESS

    def _signal(self, vcpu, call: Call) -> int:
        ev = self._event(call.arg(1))
        # x2 is the target PE's MPIDR: its affinity fields name the PE, as in TF-A's
        # plat_core_pos_by_mpidr, and bits 31 (RES1), 30 (U) and 24 (MT) may be set, so a
        # value read from MPIDR_EL1 works. A RES0 bit set is INVALID_PARAMETERS here (TF-A
        # masks it off: docs/REFERENCES.md). vCPU i is Aff0 = i; ``peers`` are every PE's
        # dispatchers (one vCPU: just this one).
        peers = self.peers or [self]
        x2 = call.arg(2)
        target = x2 & 0xFF
        valid = x2 & ~MPIDR_FORMAT_BITS == target
        if ev is None or not ev.defn.signalable or not valid or target >= len(peers):
            return INVALID_PARAMETERS     # only event 0, only to a PE that exists
        pe = peers[target]
        tev = pe.events[ev.defn.number]   # event 0 is private: the target PE's own
        if tev.state == S_UNREGISTERED:
            return DENIED                 # lab choice: nobody could ever receive it
        # Lab default: stays pending while masked or disabled (TF-A would refuse).
        tev.triggered = True
        self.host.trace.emit(self.host.now, "sdei_raise", event=ev.defn.number)
        if pe is not self:
            self.host.kick(target)        # a halted target wakes after the signal, not before
        return SUCCESS

    def _features(self, vcpu, call: Call) -> int:
        feature = call.arg(1)
        if feature == FEATURE_BIND_SLOTS:
            return PRIVATE_BIND_SLOTS     # [31:16] shared slots: none
        if feature == FEATURE_RELATIVE_MODE:
            return 0
        return INVALID_PARAMETERS

    def _reset(self, shared: bool) -> int:
        if self.pe.running:
            return DENIED
        for num in list(self.events):
            ev = self.events[num]
            if ev.defn.shared == shared:
                ev.state = S_UNREGISTERED
                ev.triggered = False
        self.host.trace.emit(self.host.now, "sdei_reset", shared=shared)
        return SUCCESS

    def _private_reset(self, vcpu, call: Call) -> int:
        return self._reset(shared=False)

    def _shared_reset(self, vcpu, call: Call) -> int:
        return self._reset(shared=True)

    # ------------------------------------------------------------------ for widgets
    def snapshot(self) -> dict:
        """Plain view of PE and event state (for widgets and tests)."""
        return {
            "masked": self.pe.masked,
            "running": [c.event for c in self.pe.running],
            "events": {n: {"state": e.state, "registered": bool(e.state & 1), "enabled": bool(e.state & 2),
                           "running": bool(e.state & 4), "pending": e.triggered, "entry": e.entry,
                           "ep_arg": e.ep_arg, "priority": e.defn.priority.name.lower(), "name": e.defn.name}
                       for n, e in sorted(self.events.items())},
        }
