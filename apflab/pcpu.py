"""Physical CPUs: a host with P CPUs running a VM's N vCPUs (N > P is overcommit).

A vCPU advances only while it holds a physical CPU (pCPU). It is in one of three states:
- running: holds a pCPU, for at most ``time_slice_ns`` at a time while others wait;
- waiting: runnable but every pCPU is taken; the time until it gets one is *steal time*
  (KVM's steal time: runnable, not running);
- idle: halted in WFI, stalled in a synchronous page-in, held by the host, or off: it needs
  no pCPU, so the one it had goes to the vCPU that has waited longest (FIFO), as a host
  scheduler would run another thread while this one sleeps.

Decisions are made in virtual time from the vCPUs' clocks, so they are deterministic.
A pCPU freed at time t serves a waiting vCPU from max(t, its clock). Utilisation of a
pCPU is the time it ran vCPUs over the elapsed time.

Other tenants: several VMs (``Machine(pcpus=sched)`` with one shared ``HostScheduler``)
share the pCPUs; ``run_tenants`` runs them interleaved in virtual time, each VM running
until its next turn comes after another VM's or all its runnable vCPUs wait for a pCPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ParameterError

DEFAULT_TIME_SLICE_NS = 3_000_000     # CFS's base slice is 3 ms (sched_base_slice_ns, Linux 6.6)


@dataclass(eq=False)
class Pcpu:
    index: int
    running: object = None        # the VcpuState holding it, or None
    since: int = 0                # when it was taken (running) or freed (free)
    slice_end: int = 0            # when the running vCPU's time slice ends
    busy_ns: int = 0              # time spent running vCPUs

    def utilisation(self, elapsed_ns: int) -> float:
        return self.busy_ns / elapsed_ns if elapsed_ns else 0.0


class HostScheduler:
    """Which vCPU holds which pCPU; the host asks it at the top of every loop turn."""

    def __init__(self, pcpus: int, time_slice_ns: int = DEFAULT_TIME_SLICE_NS):
        if not isinstance(pcpus, int) or isinstance(pcpus, bool) or pcpus < 1:
            raise ParameterError(f"pcpus must be an int >= 1, got {pcpus!r}")
        if not isinstance(time_slice_ns, int) or isinstance(time_slice_ns, bool) or time_slice_ns < 1:
            raise ParameterError(f"time_slice_ns must be an int >= 1, got {time_slice_ns!r}")
        self.pcpus = [Pcpu(i) for i in range(pcpus)]
        self.time_slice_ns = time_slice_ns
        self.waiting: list = []        # VcpuStates, longest waiting first
        self.preemptions = 0

    def pcpu_of(self, st) -> Pcpu | None:
        for p in self.pcpus:
            if p.running is st:
                return p
        return None

    def is_waiting(self, st) -> bool:
        return st in self.waiting

    def want(self, st, steal) -> bool:
        """``st`` is runnable: take a free pCPU (True) or queue (False). ``steal(st, t)``
        accounts the wait up to ``t`` and moves its clock there."""
        if self.pcpu_of(st) is not None:
            return True
        if st in self.waiting:
            return False
        free = [p for p in self.pcpus if p.running is None]
        if not free:
            self.waiting.append(st)
            return False
        p = min(free, key=lambda q: (q.since, q.index))
        self._take(p, st, steal)
        return True

    def release(self, st, at: int, steal) -> None:
        """``st`` stops needing its pCPU at ``at``; the longest waiter gets it."""
        p = self.pcpu_of(st)
        if p is None:
            if st in self.waiting:
                self.waiting.remove(st)
            return
        at = max(at, p.since)
        p.busy_ns += at - p.since
        p.running, p.since = None, at
        if self.waiting:
            self._take(p, self.waiting.pop(0), steal)

    def expired(self, st) -> bool:
        """At ``st``'s turn: its slice is over. With others waiting it is preempted (it
        queues behind them); alone, its slice is renewed."""
        p = self.pcpu_of(st)
        if p is None or st.now < p.slice_end:
            return False
        if not self.waiting:
            p.slice_end = st.now + self.time_slice_ns
            return False
        self.preemptions += 1
        return True

    def budget_ns(self, st) -> int | None:
        p = self.pcpu_of(st)
        return None if p is None else max(1, p.slice_end - st.now)

    def _take(self, p: Pcpu, st, steal) -> None:
        start = max(p.since, st.now)
        steal(st, start)
        p.running, p.since, p.slice_end = st, start, start + self.time_slice_ns

    def close(self, now_of) -> None:
        """At the end of a run: count the running vCPUs' time up to their clocks."""
        for p in self.pcpus:
            if p.running is not None:
                t = now_of(p.running)
                if t > p.since:
                    p.busy_ns += t - p.since
                    p.since = t


def run_tenants(machines: list, max_instructions: int, *, until_ns: int | None = None) -> dict:
    """Run VMs that share one ``HostScheduler`` until each one's vCPU 0 executes ``brk #0``
    (or SYSTEM_OFF), or with ``until_ns`` until each VM's next turn is at or past that virtual
    time (a fixed run length, as the ``overcommit`` scenario measures). The VM whose next turn is earliest in virtual time runs (ties: the
    earlier in ``machines``) until its next turn would come after another VM's (a vCPU
    takes a free pCPU only at its own turn, so turns must go in time order). ``max_instructions`` counts
    every vCPU of every VM. Returns ``tenant_report``."""
    from .errors import BudgetExceeded, GuestError
    if not machines:
        raise ParameterError("run_tenants needs at least one Machine")
    scheds = {id(m.host.sched) for m in machines}
    if len(scheds) != 1 or machines[0].host.sched is None:
        raise ParameterError("the machines must share one HostScheduler (Machine(pcpus=sched))")
    if not isinstance(max_instructions, int) or isinstance(max_instructions, bool) or max_instructions <= 0:
        raise ParameterError(f"max_instructions must be a positive int, got {max_instructions!r}")
    if until_ns is not None and (not isinstance(until_ns, int) or isinstance(until_ns, bool) or until_ns <= 0):
        raise ParameterError(f"until_ns must be None or a positive int (virtual ns), got {until_ns!r}")
    for m in machines:
        if m.program is None:
            raise ParameterError("every machine needs a program: call load_asm first")
    start = sum(m.host.retired for m in machines)
    stops: dict[int, object] = {}
    while len(stops) < len(machines):
        live = [(i, m) for i, m in enumerate(machines) if i not in stops]
        turns = [(m.host.next_turn_ns(), i, m) for i, m in live]
        ready = [t for t in turns if t[0] is not None]
        if not ready:
            raise GuestError("no VM can run: every vCPU is halted with nothing to wake it or "
                             "waits for a physical CPU")
        _, i, m = min(ready, key=lambda t: (t[0], t[1]))
        others = [x for k, x in live if x is not m]
        left = max_instructions - (sum(x.host.retired for x in machines) - start)
        if left <= 0:
            where = "; ".join(f"VM {k}: {x.host.describe_vcpus()}" for k, x in live)
            raise BudgetExceeded(f"the VMs ran past max_instructions={max_instructions} "
                                 f"(all VMs together): {where}")
        host = m.host
        # It yields before a turn later than another VM's next one (asked at every turn:
        # a pCPU it hands over can make another VM runnable).
        host.horizon = lambda others=others: min(
            (t for t in (x.host.next_turn_ns() for x in others) if t is not None), default=None)
        try:
            stop = host.run(left, budget_error=False, until_ns=until_ns)
        finally:
            host.horizon = None
            host.select_boot()
        if stop is None and until_ns is not None:
            turn = host.next_turn_ns()
            if turn is None or turn >= until_ns:
                stop = "until_ns"           # its run length is up
        if stop is not None and getattr(stop, "reason", None) not in ("waiting_for_pcpu", "yield"):
            stops[i] = stop
            if until_ns is not None:
                _close_lanes(host, until_ns)
            host.leave_pcpus()
    return tenant_report(machines)


def _close_lanes(host, t: int) -> None:
    """A fixed-length run ends at ``t`` for every vCPU that is on: one still queued for a pCPU
    waited (steal) until then, a halted one idled; so each lane covers the whole run."""
    from .smp import Power
    for st in host.cpus:
        if st.power is Power.OFF or st.now >= t:
            continue
        if host.sched.is_waiting(st):
            host._steal(st, t)
        elif st.halted:
            here = host._cur
            host._select(st)
            host.trace.account(st.now, t, "halted", host.current_task())
            st.now = t
            host._select(here)


def tenant_report(machines: list) -> dict:
    """Per VM: work done (instructions), its vCPUs' run/stall/steal/idle; per pCPU of the
    shared scheduler: utilisation over the latest clock of any VM."""
    sched = machines[0].host.sched
    end = max(st.now for m in machines for st in m.host.cpus)
    sched.close(lambda st: st.now)
    vms = []
    for i, m in enumerate(machines):
        rep = m.cpu_report()
        vms.append({"vm": i, "instructions": m.host.retired, "elapsed_ns": rep["elapsed_ns"],
                    "vcpus": rep["vcpus"]})
    return {"elapsed_ns": end, "vms": vms, "preemptions": sched.preemptions,
            "time_slice_ns": sched.time_slice_ns,
            "pcpus": [{"pcpu": p.index, "busy_ns": p.busy_ns, "utilisation": round(p.utilisation(end), 4)}
                      for p in sched.pcpus]}
