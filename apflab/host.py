"""The host ("KVM"): the vCPUs, their run loop, the virtual clocks and event queue.

The loop reads like kvmtool's ``kvm_cpu__start``: deliver what is due, run the
vCPU for a slice, switch on why it exited, hand the exit to the service that
owns it, account the time. Time is virtual: instructions retired times
``ns_per_insn`` plus modelled host costs (``HostCosts``); never wall-clock.

With several vCPUs (``smp.py``) each has its own clock, GIC CPU interface and timer;
``vcpu``, ``gic``, ``timer``, ``now`` and ``halted`` name the current one's, so the loop
below reads the same for one vCPU or eight. At the top of each turn ``_next_vcpu``
picks which vCPU the turn is for (a no-op with one vCPU).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field, asdict
from typing import Callable

from . import cpu as C
from .cpu import ExitKind, Vcpu, decode_esr
from .errors import BudgetExceeded, GuestError, GuestFault, InvariantError, ParameterError
from .irq import ICC_SGI1R_EL1, GicCpu
from .pcpu import DEFAULT_TIME_SLICE_NS, HostScheduler
from .smp import MPIDR_EL1, SMP_QUANTUM, Power, VcpuState, earliest, pick, sgi_targets
from .smccc import NO_RETURN, Call, Router, to_u64
from .stage2 import PageState, Stage2
from .timer import TIMER_PPI, VirtualTimer
from .trace import Trace

MAX_SLICE = 200_000          # instructions per emu_start when nothing is due sooner


@dataclass(frozen=True)
class HostCosts:
    """Modelled host-side costs in virtual ns, each charged to the vCPU.

    Sources (orders of magnitude, not a particular machine):
    - ``hvc_ns``: a hypercall round trip. Dall et al., "ARM Virtualization:
      Performance and Architectural Implications" (ISCA 2016) measured ~6,400
      cycles on KVM/arm (non-VHE, 2.4 GHz X-Gene); VHE brings it near 1,000
      cycles. 1 µs sits between. Every SMCCC call pays it: SDEI's EVENT_CONTEXT
      and COMPLETE_AND_RESUME, ASYNC_PF IRQ_ACK.
    - ``exit_ns``: any other trap to the host and back (a WFI exit). The GIC CPU
      interface and the virtual timer are emulated through sysreg traps here, but
      on hardware with a GICv3 and the generic timer those accesses do not exit,
      so they are charged nothing (except ``sgi_ns``).
    - ``fault_ns``: a stage-2 fault resolved without I/O (map a zero page or a
      page already in host memory): KVM's user_mem_abort plus the exit, a few µs.
    - ``inject_ns``: building an SDEI/IRQ injection on the way back in.
    - ``sgi_ns``: a write to ICC_SGI1R_EL1, which does trap with a GICv3: KVM
      emulates it (arch/arm64/kvm/sys_regs.c, access_gic_sgi ->
      vgic_v3_dispatch_sgi). The arm64 APF guest sends itself a reschedule IPI
      this way from its SDEI handler. An exit round trip, like ``exit_ns``.
    - ``kick_ns``: the page-in finished on a host worker while the vCPU runs:
      KVM kicks it (virt/kvm/kvm_main.c kvm_vcpu_kick, an IPI to its physical
      CPU) so that it exits and re-enters with the page-ready PPI pending.
      An exit round trip, like ``exit_ns``; not charged when the vCPU is halted.
    """
    hvc_ns: int = 1_000
    exit_ns: int = 700
    fault_ns: int = 2_500
    inject_ns: int = 300
    sgi_ns: int = 700
    kick_ns: int = 700

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 0:
                raise ParameterError(f"HostCosts.{name} must be a non-negative int (ns), got {value!r}")


@dataclass(frozen=True)
class Fault:
    """A stage-2 fault that needs I/O, as the APF service sees it."""
    gpn: int
    ipa: int
    access: str          # "read" / "write" / "fetch"
    pc: int              # the faulting instruction
    el: int              # the EL it ran at


@dataclass(frozen=True)
class Registration:
    """How a service plugs into the host, once (as a kvmtool device registers itself).

    Every hook is optional; the run loop calls them without knowing which service it is.
    - ``fids``: the SMCCC function-ID range the service owns (its ``handle(vcpu, call)``).
    - ``before_entry(vcpu)``: deliver what the service owes the vCPU before it runs again
      (a page-ready notice, an SDEI dispatch); called in registration order.
    - ``wakes(vcpu)``: True when the service has something that ends a WFI halt.
    - ``in_handler()``: True while guest time belongs to a handler the service entered.
    - ``holds(vcpu)``: True while the service keeps the vCPU in the host (the "halt" design
      waiting for a page); checked after interrupts had their chance to be taken.
    - ``page_not_present(vcpu, fault)``: the asynchronous path for a stage-2 fault needing
      I/O; returns None when it took the fault, else the fallback reason.
    """
    name: str
    service: object
    fids: tuple[int, int] | None = None
    per_vcpu: bool = False      # True: the service serves every vCPU itself (PSCI). False: it
                                # models one PE; with several vCPUs install it once per vCPU
                                # (``install_per_vcpu``), registering it directly is refused
    before_entry: Callable[[Vcpu], None] | None = None
    wakes: Callable[[Vcpu], bool] | None = None
    in_handler: Callable[[], bool] | None = None
    holds: Callable[[Vcpu], bool] | None = None
    page_not_present: Callable[[Vcpu, Fault], str | None] | None = None


@dataclass
class RunStop:
    """How ``Host.run`` ended: vCPU 0 executed ``brk #0`` (or PSCI SYSTEM_OFF)."""
    pc: int
    instructions: int
    elapsed_ns: int
    reason: str = "brk"


class _PerVcpu:
    """One instance of a one-PE service per vCPU; a hypercall goes to the caller's."""

    def __init__(self, name: str, instances: list, index: dict[int, int]):
        self.name = name
        self.instances = instances
        self._index = index

    def handle(self, vcpu, call: Call) -> object:
        return self.instances[self._index[id(vcpu)]].handle(vcpu, call)


@dataclass(order=True)
class _Event:
    t_ns: int
    seq: int
    name: str = field(compare=False)
    fn: Callable[[], None] = field(compare=False)
    cpu: VcpuState | None = field(default=None, compare=False)   # the vCPU it is done for


class Host:
    """Owns the virtual clock, the event queue and the exit dispatch."""

    def __init__(self, vcpu: Vcpu | list[Vcpu], stage2: Stage2, *, seed: int = 0, ns_per_insn: int = 1,
                 costs: HostCosts | None = None, trace: Trace | None = None, quantum: int = SMP_QUANTUM,
                 pcpus: int | HostScheduler | None = None, time_slice_ns: int | None = None):
        if not isinstance(ns_per_insn, int) or isinstance(ns_per_insn, bool) or ns_per_insn < 1:
            raise ParameterError(f"ns_per_insn must be an int >= 1, got {ns_per_insn!r}")
        if not isinstance(quantum, int) or isinstance(quantum, bool) or quantum < 1:
            raise ParameterError(f"quantum must be an int >= 1 (instructions), got {quantum!r}")
        vcpus = [vcpu] if isinstance(vcpu, Vcpu) else list(vcpu)
        self.quantum = quantum
        self.stage2 = stage2
        self.rng = random.Random(seed)
        self.seed = seed
        self.ns_per_insn = ns_per_insn
        self.costs = costs or HostCosts()
        self.trace = trace or Trace()
        self.retired = 0             # instructions retired by every vCPU together
        self._events: list[_Event] = []
        self._seq = 0
        self.router = Router()
        self.system_off = False
        self._capture: list | None = None
        self.current_task: Callable[[], int | None] = lambda: None
        self.services: dict[str, Registration] = {}
        self._before_entry: list[Callable[[Vcpu], None]] = []
        self._wakers: list[Callable[[Vcpu], bool]] = []
        self._in_handler: list[Callable[[], bool]] = []
        self._page_not_present: Callable[[Vcpu, Fault], str | None] | None = None
        self._slice_t0 = 0
        self._holders: list[Callable[[Vcpu], bool]] = []
        self.stalling = False     # inside stall_until: the vCPU thread waits in the host
        # pvlock.py: told when a vCPU is about to run guest code ("running"), loses its pCPU
        # at the end of a slice ("preempted"), or waits in the host ("stalled").
        self.on_run_state: Callable[[VcpuState, str], None] | None = None

        self.cpus = [self._attach(i, v, len(vcpus)) for i, v in enumerate(vcpus)]
        self.cpus[0].power = Power.ON          # the boot vCPU; the others wait for PSCI CPU_ON
        self._cur = self.cpus[0]
        if len(self.cpus) > 1:
            self.trace.select_lane(0, tag=True)   # every record names its vCPU from the start
        # Physical CPUs (pcpu.py): only when asked for; None keeps vCPUs always on a CPU.
        # A HostScheduler instance is shared with other VMs (pcpu.run_tenants).
        self.sched: HostScheduler | None = None
        self.horizon: Callable[[], int | None] | None = None   # run_tenants: the other VMs'
                                            # next turn; this VM yields rather than go past it
        if isinstance(pcpus, HostScheduler):
            if time_slice_ns is not None:
                raise ParameterError("time_slice_ns belongs to the shared HostScheduler")
            self.sched = pcpus
            self.trace.enable_steal()
        elif pcpus is not None:
            self.sched = HostScheduler(pcpus, DEFAULT_TIME_SLICE_NS if time_slice_ns is None else time_slice_ns)
            self.trace.enable_steal()
        elif time_slice_ns is not None:
            raise ParameterError("time_slice_ns needs pcpus (the number of physical CPUs)")
        stage2.on_unmap = self._flush_tlbs     # stage-2 changes reach every vCPU's TLB
        stage2.on_event = self._trace_event

    def _attach(self, index: int, vcpu: Vcpu, count: int) -> VcpuState:
        """Give a vCPU its own GIC CPU interface and timer, and wire its traps."""
        st = VcpuState(index, vcpu, GicCpu(), None, host=self)
        st.timer = VirtualTimer(now=lambda: st.now)
        st.gic.on_event = self._trace_event
        reads, writes = {}, {}
        for dev in (st.gic, st.timer):
            r, w = dev.sysreg_handlers()
            reads.update(r)
            writes.update(w)
        if count > 1:
            # Several vCPUs: MPIDR_EL1 says which one this is (Aff0 = index), and an SGI
            # goes to the vCPUs its ICC_SGI1R_EL1 value names. One vCPU keeps the engine's
            # own MPIDR and SGIs to itself, as before.
            reads[MPIDR_EL1] = lambda: st.mpidr
            writes[ICC_SGI1R_EL1] = lambda value: self._send_sgi(st, value)
        vcpu.sysreg_read = reads
        vcpu.sysreg_write = writes
        vcpu.is_mapped = self.stage2.is_mapped
        vcpu.clock_at_retired = self._clock_mid_slice
        if self.stage2.policy == "clock":
            # The referenced bit: a TLB fill is the engine's only sign of an access (every
            # eviction flushes the whole TLB, so a bit means "used since the last eviction").
            stage2 = self.stage2
            vcpu.on_tlb_fill = lambda ipa: stage2.referenced(stage2.gpn_of(ipa))
        return st

    # The current vCPU's state, under the names the one-vCPU host always used.
    vcpu = property(lambda self: self._cur.vcpu)
    gic = property(lambda self: self._cur.gic)
    timer = property(lambda self: self._cur.timer)

    @property
    def now(self) -> int:
        return self._cur.now

    @now.setter
    def now(self, value: int) -> None:
        self._cur.now = value

    @property
    def halted(self) -> bool:
        return self._cur.halted

    @halted.setter
    def halted(self, value: bool) -> None:
        self._cur.halted = value

    @property
    def smp(self) -> bool:
        return len(self.cpus) > 1

    def _flush_tlbs(self) -> None:
        for st in self.cpus:
            st.vcpu.flush_tlb()

    # ------------------------------------------------------------------ services
    def register(self, reg: Registration) -> None:
        """Plug a service in: its hypercalls, its run-loop hooks, its fault path."""
        if not isinstance(reg, Registration):
            raise InvariantError(f"register() takes a Registration, got {reg!r}")
        if reg.name in self.services:
            raise InvariantError(f"a service named {reg.name!r} is already registered")
        if self._capture is not None:
            self._capture.append(reg)      # inside install_per_vcpu
            return
        if self.smp and not reg.per_vcpu:
            raise InvariantError(f"service {reg.name!r} models one PE: on a machine with several "
                                 f"vCPUs install it with install_per_vcpu")
        if reg.fids is not None:
            self.router.register(reg.fids[0], reg.fids[1], reg.service)
        if reg.page_not_present is not None:
            if self._page_not_present is not None:
                raise InvariantError("only one service may own the page-not-present path")
            self._page_not_present = reg.page_not_present
        for hook, hooks in ((reg.before_entry, self._before_entry), (reg.wakes, self._wakers),
                            (reg.in_handler, self._in_handler), (reg.holds, self._holders)):
            if hook is not None:
                hooks.append(hook)
        self.services[reg.name] = reg

    def service(self, name: str):
        """The registered service called ``name``, or None."""
        reg = self.services.get(name)
        if reg is None:
            return None
        if isinstance(reg.service, _PerVcpu):
            return reg.service.instances[self._cur.index]   # the current vCPU's instance
        return reg.service

    def install_per_vcpu(self, make: Callable[[int], object]) -> list:
        """Install a one-PE service (SDEI, APF) once per vCPU: ``make(index)`` runs with that
        vCPU current and registers as usual. A hypercall, hook or host event then reaches the
        instance of the vCPU it concerns, and ``service(name)`` answers the current vCPU's.
        Returns the instances, by vCPU index."""
        here, captured = self._cur, []
        self._capture = captured
        try:
            for st in self.cpus:
                if self.smp:
                    self._select(st)
                make(st.index)
                if len(captured) != st.index + 1:
                    raise InvariantError("install_per_vcpu: make() must register exactly one service")
        finally:
            self._capture = None
            if self.smp:
                self._select(here)
        first = captured[0]
        index = {id(st.vcpu): st.index for st in self.cpus}
        mine = lambda v: captured[index[id(v)]]
        hooks = {}
        if first.before_entry is not None:
            hooks["before_entry"] = lambda v: mine(v).before_entry(v)
        if first.wakes is not None:
            hooks["wakes"] = lambda v: mine(v).wakes(v)
        if first.holds is not None:
            hooks["holds"] = lambda v: mine(v).holds(v)
        if first.page_not_present is not None:
            hooks["page_not_present"] = lambda v, f: mine(v).page_not_present(v, f)
        if first.in_handler is not None:
            hooks["in_handler"] = lambda: captured[self._cur.index].in_handler()
        instances = [reg.service for reg in captured]
        self.register(Registration(first.name, _PerVcpu(first.service.name, instances, index),
                                   fids=first.fids, per_vcpu=True, **hooks))
        return instances

    def handler_running(self) -> bool:
        return any(f() for f in self._in_handler)

    @property
    def faults(self) -> dict[str, int]:
        """Stage-2 faults by the page's state when taken (read from the trace)."""
        return self.trace.tally("stage2_fault")

    # ------------------------------------------------------------------ clock and events
    def schedule(self, t_ns: int, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` at virtual time ``t_ns`` (host work: page-in done, ...)."""
        if t_ns < self.now:
            raise InvariantError(f"event {name} scheduled in the past ({t_ns} < {self.now})")
        self._seq += 1
        heapq.heappush(self._events, _Event(t_ns, self._seq, name, fn, self._cur))

    def next_event_ns(self) -> int | None:
        remote = self.stage2.remote
        times = [e for e in (self._events[0].t_ns if self._events else None,
                             self.timer.next_fire_ns(),
                             remote.next_background_ns() if remote is not None else None)
                 if e is not None]
        return min(times) if times else None

    def _deliver_due(self) -> None:
        while self._events and self._events[0].t_ns <= self.now:
            ev = heapq.heappop(self._events)
            self._run_event(ev)
        if self.stage2.remote is not None:
            self.stage2.deliver_background(self.now)   # post-copy stream pages that have landed
        self.gic.set_line(TIMER_PPI, self.timer.output())

    def _run_event(self, ev: _Event) -> None:
        """Do host work for the vCPU it was scheduled for (services name ``host.vcpu``).

        With several vCPUs that may be another vCPU than the current one: it is made
        current for the event, its clock first brought up to the event's time if it was
        halted behind it (a running vCPU is never behind: the loop runs the earliest).
        """
        owner = ev.cpu
        if owner is None or owner is self._cur:
            ev.fn()
            return
        here = self._cur
        self._select(owner)
        if owner.power is Power.ON and owner.halted and owner.now < ev.t_ns:
            self.trace.account(owner.now, ev.t_ns, "halted", self.current_task())
            owner.now = ev.t_ns
        try:
            ev.fn()
        finally:
            self._select(here)

    def _select(self, st: VcpuState) -> None:
        """Make ``st`` the current vCPU: the one ``vcpu``/``gic``/``now`` name."""
        self._cur = st
        self.trace.select_lane(st.index, tag=True)

    # ------------------------------------------------------------------ several vCPUs
    def _next_vcpu(self) -> RunStop | None:
        """Pick the vCPU this turn of the loop is for (``smp.pick``); a RunStop when the
        guest switched the system off. One vCPU: nothing to pick."""
        if self.system_off:
            boot = self.cpus[0]
            if self._cur is not boot:
                self._select(boot)
            return RunStop(boot.vcpu.pc, self.retired, boot.now, reason="system_off")
        if self.sched is not None:
            return self._next_vcpu_on_pcpus()
        if len(self.cpus) == 1 and self._cur.power is not Power.OFF:
            return None
        nxt = pick(self.cpus, self._events[0].t_ns if self._events else None, self._can_wake)
        return self._switch_to(nxt)

    def _next_vcpu_on_pcpus(self) -> RunStop | None:
        """``_next_vcpu`` with physical CPUs: the vCPU that just ran gives its pCPU up if it
        halted or went off; the one picked must hold a pCPU (or get one, or queue and let
        another be picked); a slice that is over with others waiting is preempted."""
        sched, cur = self.sched, self._cur
        if sched.pcpu_of(cur) is not None and (cur.halted or cur.power is Power.OFF):
            sched.release(cur, cur.now, self._steal)
        nxt_event = self._events[0].t_ns if self._events else None
        while True:
            nxt, key = earliest(self.cpus, nxt_event, self._can_wake, sched.is_waiting)
            limit = self.horizon() if self.horizon is not None else None
            if limit is not None and key is not None and key > limit:
                # another VM sharing the pCPUs has an earlier turn (pcpu.run_tenants)
                return RunStop(self.cpus[0].vcpu.pc, self.retired, self.cpus[0].now, reason="yield")
            if nxt is None and any(sched.is_waiting(st) for st in self.cpus):
                # every vCPU that could run waits for a pCPU another VM holds
                return RunStop(self.cpus[0].vcpu.pc, self.retired, self.cpus[0].now,
                               reason="waiting_for_pcpu")
            if nxt is None or nxt.halted or self._held(nxt):
                break
            if sched.pcpu_of(nxt) is None:
                if sched.want(nxt, self._steal):
                    break
                continue                    # queued for a pCPU: another vCPU's turn
            if sched.expired(nxt):
                if self.on_run_state is not None:
                    self.on_run_state(nxt, "preempted")
                sched.release(nxt, nxt.now, self._steal)
                sched.want(nxt, self._steal)   # behind the vCPUs that waited
                continue
            break
        return self._switch_to(nxt)

    def cpu_report(self) -> dict:
        """Per vCPU: run, stall, steal and idle ns (from its lane); per physical CPU: busy
        ns and utilisation over the elapsed time (the latest vCPU clock); preemptions."""
        end = max(st.now for st in self.cpus)
        vcpus = []
        for st in self.cpus:
            modes = self.trace.breakdown(vcpu=st.index) if self.smp else self.trace.breakdown()
            vcpus.append({"vcpu": st.index,
                          "run_ns": modes["el0"] + modes["el1"] + modes["handler"] + modes["host"],
                          "stall_ns": modes["stalled"], "steal_ns": modes.get("steal", 0),
                          "idle_ns": modes["halted"]})
        out = {"elapsed_ns": end, "vcpus": vcpus}
        if self.sched is not None:
            self.sched.close(lambda st: st.now)
            out["pcpus"] = [{"pcpu": p.index, "busy_ns": p.busy_ns,
                             "utilisation": round(p.utilisation(end), 4)} for p in self.sched.pcpus]
            out["preemptions"] = self.sched.preemptions
            out["time_slice_ns"] = self.sched.time_slice_ns
        return out

    def _held(self, st: VcpuState) -> bool:
        return self.holds(st.vcpu)

    def holds(self, vcpu: Vcpu) -> bool:
        """A service keeps ``vcpu`` in the host (the "halt" design waiting for a page)."""
        return any(h(vcpu) for h in self._holders)

    def next_turn_ns(self) -> int | None:
        """The virtual time of this VM's next turn (None: it cannot run until another VM
        hands it a physical CPU, or never)."""
        waiting = self.sched.is_waiting if self.sched is not None else None
        return earliest(self.cpus, self._events[0].t_ns if self._events else None,
                        self._can_wake, waiting)[1]

    def leave_pcpus(self) -> None:
        """The VM stops (its run is over): its vCPUs give their physical CPUs up."""
        if self.sched is not None:
            for st in self.cpus:
                self.sched.release(st, st.now, self._steal)

    def _steal(self, st: VcpuState, t: int) -> None:
        """``st`` waited for a physical CPU until ``t``: steal time in its lane."""
        if st.host is not self:
            st.host._steal(st, t)           # a vCPU of another VM sharing the pCPUs
            return
        if t <= st.now:
            return
        here = self._cur
        self._select(st)
        self.trace.account(st.now, t, "steal", self.current_task())
        st.now = t
        self._select(here)

    def has_pcpu(self) -> bool:
        """The current vCPU holds a physical CPU (always true without ``pcpus``)."""
        return self.sched is None or self.sched.pcpu_of(self._cur) is not None

    def release_pcpu(self) -> None:
        """The current vCPU stops needing a physical CPU (a stall, a hold in the host)."""
        if self.sched is not None:
            self.sched.release(self._cur, self.now, self._steal)

    def _switch_to(self, nxt: VcpuState | None) -> None:
        if nxt is None:
            on = [st for st in self.cpus if st.power is not Power.OFF]
            if not on:
                raise GuestError("every vCPU is off (PSCI CPU_OFF) and the guest did not call "
                                 "SYSTEM_OFF: nothing can run")
            raise GuestError("every vCPU is halted in wfi with nothing that could ever wake it "
                             "(no timer armed, no host work pending): " + self.describe_vcpus())
        if nxt is not self._cur:
            # Quirk: each engine keeps its own exclusive monitor, and a store-exclusive
            # succeeds there when the address and the *value* still match (QEMU's
            # target/arm: exclusive_addr/exclusive_val). A store by another vCPU of the same
            # value would go unseen, so the monitor of the vCPU leaving the CPU is cleared
            # (as an exception return does, Arm ARM D1.7); its STXR then fails and retries.
            self._cur.vcpu.clear_exclusive()
            self._select(nxt)
        if nxt.power is Power.ON_PENDING:
            nxt.power = Power.ON
        return None

    def select_boot(self) -> None:
        """After a run: ``vcpu``/``gic``/``now`` name vCPU 0 again (what the harness reads)."""
        if self._cur is not self.cpus[0]:
            self._select(self.cpus[0])

    def _can_wake(self, st: VcpuState) -> bool:
        if st.gic.signalling():
            return True
        if not self._wakers:
            return False
        here = self._cur
        self._select(st)                  # services read host.gic/host.now: st's
        try:
            return any(w(st.vcpu) for w in self._wakers)
        finally:
            self._select(here)

    def power_on(self, st: VcpuState, entry: int, context_id: int) -> None:
        """PSCI CPU_ON: ``st`` starts at ``entry`` in EL1h with DAIF masked, x0 = context id,
        at the caller's time."""
        from .cpu import PSTATE_EL1H_MASKED
        st.vcpu.enter_handler(entry, PSTATE_EL1H_MASKED, [context_id], zero_to=29)   # x1-x28 zeroed (UNKNOWN in DEN0022)
        caller = self._cur
        if st.now < caller.now:
            if st.retired:
                # Off since CPU_OFF: its lane shows the time off as halted (idle, as a KVM
                # vCPU that is powered off waits blocked), so the lane still tiles.
                self._select(st)
                self.trace.account(st.now, caller.now, "halted", self.current_task())
                self._select(caller)
            st.now = caller.now
        st.halted = False
        st.power = Power.ON_PENDING

    def power_off(self, st: VcpuState) -> None:
        """PSCI CPU_OFF: ``st`` stops; only CPU_ON starts it again."""
        st.power = Power.OFF
        st.halted = False
        if self.sched is not None:
            self.sched.release(st, st.now, self._steal)

    def describe_vcpus(self) -> str:
        """Where each vCPU that is on stands: for budget errors and halts."""
        parts = []
        for st in self.cpus:
            if st.power is Power.OFF:
                continue
            pc = st.vcpu.pc
            state = "halted in wfi" if st.halted else "running"
            parts.append(f"vCPU {st.index} {state} at pc={pc:#x} ({st.vcpu.disasm_at(pc)})")
        return "; ".join(parts)

    def _send_sgi(self, sender: VcpuState, value: int) -> None:
        """ICC_SGI1R_EL1 written by ``sender``: the SGI becomes pending at each target.

        A halted target's clock is brought up to the sender's, as halted time, so it
        takes the SGI after it was sent.
        """
        intid = value >> 24 & 0xF
        for i in sgi_targets(value, sender.index, len(self.cpus)):
            st = self.cpus[i]
            if st is sender:
                st.gic.send_sgi(intid)
                continue
            self.kick(i)
            self._select(st)                 # its GIC's trace records name it
            st.gic.send_sgi(intid)
            self._select(sender)

    def kick(self, index: int) -> None:
        """Another vCPU sends vCPU ``index`` something that may wake it (an SGI, an SDEI
        signal): if it is halted behind the sender's clock, bring it up, as halted time."""
        st, sender = self.cpus[index], self._cur
        if st is sender or st.power is not Power.ON or not st.halted or st.now >= sender.now:
            return
        self._select(st)
        self.trace.account(st.now, sender.now, "halted", self.current_task())
        st.now = sender.now
        self._select(sender)

    def _clock_mid_slice(self, retired: int) -> None:
        # A trapped sysreg inside a slice sees the time after ``retired`` instructions.
        self.now = self._slice_t0 + retired * self.ns_per_insn

    def charge(self, ns: int, mode: str = "host", what: str | None = None, **fields) -> None:
        """Advance the clock by host work done on the vCPU's time.

        ``what`` names the work in a "cost" trace record (apflab.costs adds them up).
        """
        if what is not None:
            self.trace.emit(self.now, "cost", what=what, ns=ns, **fields)
        if ns:
            self.trace.account(self.now, self.now + ns, mode, self.current_task())
            self.now += ns

    def stall_until(self, t_ns: int, reason: str) -> None:
        """The vCPU waits in the host (synchronous page-in): accounted as stalled.

        Host events that fall due meanwhile (other page-ins) are processed;
        the guest sees none of them until it runs again. With several vCPUs they are
        not: the other vCPUs run meanwhile and the loop delivers events in time order.
        """
        t0 = self.now
        self.release_pcpu()      # physical CPUs: another vCPU may use this one meanwhile
        if self.on_run_state is not None:
            self.on_run_state(self._cur, "stalled")
        self.stalling = True
        try:
            while len(self.cpus) == 1 and self._events and self._events[0].t_ns <= t_ns:
                ev = heapq.heappop(self._events)
                if ev.t_ns > self.now:
                    self.trace.account(self.now, ev.t_ns, "stalled", self.current_task())
                    self.now = ev.t_ns
                self._run_event(ev)
        finally:
            self.stalling = False
        if t_ns > self.now:
            self.trace.account(self.now, t_ns, "stalled", self.current_task())
            self.now = t_ns
        self.trace.emit(self.now, "stall", reason=reason, ns=self.now - t0)

    # ------------------------------------------------------------------ the run loop
    def run(self, max_instructions: int, *, stop_at_brk0: bool = True, budget_error: bool = True,
            until_ns: int | None = None, until: Callable[[], bool] | None = None) -> RunStop | None:
        """Run the guest until vCPU 0's ``brk #0``; None if ``until``/``until_ns`` stopped it first.

        Running out of ``max_instructions`` (all vCPUs together) raises ``BudgetExceeded``
        naming the PC (with several vCPUs: every vCPU's), or with ``budget_error=False``
        (stepping) just returns None.
        """
        if not isinstance(max_instructions, int) or isinstance(max_instructions, bool) or max_instructions <= 0:
            raise ParameterError(f"max_instructions must be a positive int, got {max_instructions!r}")
        budget_end = self.retired + max_instructions
        while True:
            stop = self._next_vcpu()       # several vCPUs: whose turn it is (smp.pick)
            if stop is not None:
                return stop
            vcpu = self.vcpu
            self._deliver_due()
            if until is not None and until():
                return None
            if until_ns is not None and self.now >= until_ns:
                return None
            if self.halted:
                self._halt_until_event()
                continue
            for hook in self._before_entry:
                hook(vcpu)                 # page-ready notices, SDEI dispatch (not masked by PSTATE.I)
            self._maybe_take_irq()
            if self._holders and self.holds(vcpu):
                self._hold_until_event()   # e.g. the "halt" design: the vCPU waits in the host
                continue
            left = budget_end - self.retired
            if left <= 0:
                if not budget_error:
                    return None
                pc = vcpu.pc
                if self.smp:
                    raise BudgetExceeded(f"guest ran past max_instructions={max_instructions} "
                                         f"(all vCPUs together): {self.describe_vcpus()}",
                                         pc=pc, insn=vcpu.disasm_at(pc))
                raise BudgetExceeded(f"guest ran past max_instructions={max_instructions}",
                                     pc=pc, insn=vcpu.disasm_at(pc))
            count = min(MAX_SLICE, left)
            nxt = self.next_event_ns()
            if until_ns is not None:
                nxt = until_ns if nxt is None else min(nxt, until_ns)
            if nxt is not None:
                count = min(count, max(1, -(-(nxt - self.now) // self.ns_per_insn)))
            # Pending but masked by PSTATE.I: the run ends right after the instruction
            # that unmasks it (eret, msr daifclr/daif), where the IRQ is then taken.
            vcpu.irq_waiting = self.gic.signalling()
            if self.smp:
                count = min(count, self.quantum)   # then the next vCPU's turn
            if self.sched is not None:             # ...and not past its pCPU time slice
                budget = self.sched.budget_ns(self._cur)
                if budget is None:
                    continue      # released its pCPU while held in the host: ask again
                count = min(count, -(-budget // self.ns_per_insn))

            if self.on_run_state is not None:
                self.on_run_state(self._cur, "running")
            el0 = vcpu.el
            self._slice_t0 = self.now
            ex = vcpu.run(count)
            self._account_slice(ex, el0)

            match ex.kind:
                case ExitKind.SLICE_END:
                    pass
                case ExitKind.SYSREG:
                    if ex.sysreg == ICC_SGI1R_EL1:      # the one GIC register that traps on hardware
                        self.charge(self.costs.sgi_ns, what="sgi_trap")
                case ExitKind.HVC:
                    self._hypercall(ex)
                case ExitKind.SVC | ExitKind.SMC:
                    ec = C.EC_SVC64 if ex.kind is ExitKind.SVC else 0x17
                    self._guest_sync(ec, ex.imm, return_pc=ex.pc, what=ex.kind.value)
                case ExitKind.BRK:
                    if ex.imm == 0 and stop_at_brk0 and self._cur is self.cpus[0]:
                        self.trace.emit(self.now, "stop", pc=ex.pc)
                        return RunStop(ex.pc, self.retired, self.now)
                    self._guest_sync(C.EC_BRK64, ex.imm, return_pc=ex.pc, what="brk")
                case ExitKind.UNDEF:
                    self._guest_sync(C.EC_UNKNOWN, 0, return_pc=ex.pc, what="undefined instruction")
                case ExitKind.WFI:
                    self.charge(self.costs.exit_ns, what="wfi_exit")
                    if not self.gic.signalling():
                        self.halted = True
                        self.trace.emit(self.now, "halt", pc=ex.pc)
                case ExitKind.STAGE2_ABORT:
                    self._stage2_abort(ex)
                case _:
                    raise InvariantError(f"unhandled exit {ex.kind}")

    def _account_slice(self, ex: C.Exit, el_at_start: int) -> None:
        """Turn retired instructions into time spans, split where an eret changed EL."""
        done = 0
        el = el_at_start
        t = self._slice_t0
        task = self.current_task()
        for at, new_el in ex.segments:
            n = at - done  # instructions up to and including the eret
            if n > 0:
                self.trace.account(t, t + n * self.ns_per_insn, self._mode(el), task)
                t += n * self.ns_per_insn
                done = at
            el = new_el
        n = ex.retired - done
        if n > 0:
            self.trace.account(t, t + n * self.ns_per_insn, self._mode(el), task)
            t += n * self.ns_per_insn
        self.retired += ex.retired
        self._cur.retired += ex.retired
        self.now = t

    def _mode(self, el: int) -> str:
        if el == 0:
            return "el0"
        return "handler" if self.handler_running() else "el1"

    def _halt_until_event(self) -> None:
        vcpu = self.vcpu
        if self.gic.signalling() or any(w(vcpu) for w in self._wakers):
            self.halted = False
            self.trace.emit(self.now, "wake", intid=self.gic.highest_pending())
            return
        nxt = self.next_event_ns()
        if nxt is None:
            if self.smp:
                return      # another vCPU may wake it; ``_next_vcpu`` names a machine-wide halt
            pc = self.vcpu.pc - 4
            raise GuestError("vCPU halted in wfi with nothing that could ever wake it "
                             "(no timer armed, no host work pending)", pc=pc, insn=self.vcpu.disasm_at(pc))
        if nxt > self.now:
            self.trace.account(self.now, nxt, "halted", self.current_task())
            self.now = nxt

    def _hold_until_event(self) -> None:
        """The vCPU is held in the host (not by the guest): wait, as stalled time, for the
        next host event; an interrupt the guest can take ends the hold at the loop's top."""
        nxt = self.next_event_ns()
        if nxt is None:
            raise InvariantError("vCPU held in the host with no host event that could release it")
        self.release_pcpu()
        if self.on_run_state is not None:
            self.on_run_state(self._cur, "stalled")
        if nxt > self.now:
            self.trace.account(self.now, nxt, "stalled", self.current_task())
            self.now = nxt

    def _maybe_take_irq(self) -> None:
        if not self.gic.signalling() or self.vcpu.pstate & C.PSTATE_I:
            return
        self._require_vectors("IRQ")
        pc = self.vcpu.pc
        vector = self.vcpu.take_exception(C.VEC_IRQ, return_pc=pc)
        self.trace.emit(self.now, "irq", intid=self.gic.highest_pending(), pc=pc, vector=vector)
        self.charge(self.costs.inject_ns, what="irq_inject", intid=self.gic.highest_pending())

    # ------------------------------------------------------------------ exits
    def _hypercall(self, ex: C.Exit) -> None:
        vcpu = self.vcpu
        fid = vcpu.x(0) & 0xFFFFFFFF
        call = Call(fid, tuple(vcpu.x(i) for i in range(1, 6)), ex.pc)
        self.charge(self.costs.hvc_ns, what="hvc", fid=fid)
        result = self.router.dispatch(vcpu, call)
        if result is not NO_RETURN:
            vcpu.set_x(0, to_u64(result))
        self.trace.emit(self.now, "hvc", fid=fid, result=None if result is NO_RETURN else int(result))

    def _require_vectors(self, what: str) -> None:
        """An asynchronous exception (IRQ) needs vectors; it has no syndrome to show."""
        if self.vcpu.reg("vbar_el1") == 0:
            pc = self.vcpu.pc
            raise GuestFault(f"{what} with no exception vectors (VBAR_EL1 is 0)", pc=pc,
                             insn=self.vcpu.disasm_at(pc))

    def _guest_sync(self, ec: int, imm: int, *, return_pc: int, what: str) -> None:
        """A synchronous exception the guest takes at its own VBAR_EL1."""
        esr = (ec << 26) | C.ESR_IL | (imm & 0xFFFF)
        vcpu = self.vcpu
        if vcpu.reg("vbar_el1") == 0:
            insn_pc = return_pc - 4 if what in ("svc", "smc") else return_pc
            raise GuestFault(f"{what} with no exception vectors (VBAR_EL1 is 0)", pc=insn_pc,
                             insn=vcpu.disasm_at(insn_pc), syndrome=decode_esr(esr))
        from_el = vcpu.el
        target = vcpu.reg("vbar_el1") + vcpu.vector_base(from_el == 0) + C.VEC_SYNC
        if return_pc == target:
            # The vector's own first instruction faults: hardware would spin here forever.
            raise GuestFault(f"{what} at the exception vector itself (recursive exception)",
                             pc=return_pc, insn=vcpu.disasm_at(return_pc), syndrome=decode_esr(esr))
        vector = vcpu.take_exception(C.VEC_SYNC, return_pc=return_pc, esr=esr)
        self.trace.emit(self.now, "exception", what=what, esr=esr, from_el=from_el, vector=vector)

    def _stage2_abort(self, ex: C.Exit) -> None:
        s2 = self.stage2
        ipa = ex.ipa
        vcpu = self.vcpu
        if not s2.in_ram(ipa):
            ec = C.EC_IABT_CUR if ex.access == "fetch" else C.EC_DABT_CUR
            if vcpu.el == 0:
                ec -= 1
            esr = (ec << 26) | C.ESR_IL | ((1 << 6) if ex.access == "write" else 0)
            raise GuestFault(f"{ex.access} of {ipa:#x}, outside guest RAM "
                             f"[{s2.ram_base:#x}, {s2.ram_base + s2.ram_size:#x})",
                             pc=ex.pc, insn=vcpu.disasm_at(ex.pc), syndrome=decode_esr(esr))
        gpn = s2.gpn_of(ipa)
        state = s2.state(gpn)
        el = vcpu.el
        self.trace.emit(self.now, "stage2_fault", gpn=gpn, ipa=ipa, access=ex.access,
                        state=state.name.lower(), pc=ex.pc, el=el)
        if state == PageState.ABSENT:
            s2.first_touch(gpn)
            self.charge(self.costs.fault_ns, what="stage2_fault")
            return
        if state == PageState.RESIDENT:
            self.charge(self.costs.fault_ns, what="stage2_fault")   # stale TLB after a flush: just refill
            return
        reason = "apf_off"
        if self._page_not_present is not None:
            reason = self._page_not_present(vcpu, Fault(gpn, ipa, ex.access, ex.pc, el))
            if reason is None:
                return      # the async path took it: the vCPU does not wait here
        self.charge(self.costs.fault_ns, what="stage2_fault")
        self.sync_page_in(gpn, reason=reason)

    def sync_page_in(self, gpn: int, reason: str) -> None:
        """The synchronous path: block the vCPU until the page is in."""
        s2 = self.stage2
        state = s2.state(gpn)
        if state == PageState.INFLIGHT:
            done = s2.inflight_done_ns(gpn)
        else:
            done = s2.start_page_in(gpn, self.now, self.rng)
            self.schedule(done, "page_in_done", lambda g=gpn: self._finish_sync(g))
        self.stall_until(done, reason)

    def _finish_sync(self, gpn: int) -> None:
        if self.stage2.state(gpn) == PageState.INFLIGHT:
            self.stage2.finish_page_in(gpn)

    # ------------------------------------------------------------------ trace plumbing
    def _trace_event(self, kind: str, fields: dict) -> None:
        """The one sink the GIC and stage-2 report their events to."""
        self.trace.emit(self.now, kind, **fields)
