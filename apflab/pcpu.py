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
pCPU is the time it ran vCPUs over the elapsed time. One VM only: several VMs sharing the
pCPUs (issue 11 item 2, "other tenants") are not modelled here.
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
