"""Lab 11 exercises: several vCPUs, an overcommitted host, and a lock holder that stalls.

- ``OvercommitViews``: for a seeded ``overcommit`` run (two VMs on one physical CPU, A faults
  and computes, B computes), APF's gain as the guest sees it and as the host sees it.
- ``LockSpin``: for a seeded ``lock_holder`` run, the time the guest's vCPUs spend spinning
  on the kernel's lock while its holder stalls for a page (no paravirtual flag).
- ``PcpuSchedule`` (build it): the student writes the host scheduler's rule, who holds
  each physical CPU and how much steal time each vCPU accrues after a sequence of events.
  The grader never restates the rule: it plays each seeded sequence on the product's own
  ``pcpu.HostScheduler`` and compares.

Every answer is computed with the machinery the lab uses (the OSTEP ``-c`` mode).
"""

from __future__ import annotations

import random

from ..errors import ParameterError
from . import HINT_ON_REQUEST, CheckResult, Exercise, miss

TOLERANCE = 0.10           # relative, for measured ratios
SPIN_TOLERANCE = 0.20      # relative, for the spin time


def _rel_ok(got, want, tol) -> bool:
    return abs(got - want) <= tol * abs(want)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ---------------------------------------------------------------------- the guest's and the host's view

class OvercommitViews(Exercise):
    """APF's gain on a seeded overcommit run: guest view (VM A's work rate) and host view
    (both VMs' work per pCPU-ms), each APF on over APF off."""
    title = "The guest's view and the host's view"

    def _draw(self, rng):
        return {"pcpus": 1, "vcpus": 1, "duration_ns": 5_000_000, "npages": 64, "limit_pages": 16,
                "latency_ns": rng.choice((20_000, 50_000, 100_000)),
                "time_slice_ns": rng.choice((500_000, 1_000_000, 3_000_000))}

    def question(self) -> str:
        p = self.params
        return (f"[seed {self.seed}] overcommit: VMs A and B share {p['pcpus']} physical CPU for "
                f"{p['duration_ns'] / 1e6:g} ms of virtual time, host time slice "
                f"{p['time_slice_ns'] / 1e6:g} ms. A walks a {p['npages']}-page buffer in swap "
                f"({p['limit_pages']} frames, SSD median read {p['latency_ns'] / 1e3:g} µs) beside a "
                f"compute task; B only computes.\nGive APF's gain (APF on / APF off) as a dict "
                f"{{'guest_view': A's work rate ratio, 'host_view': both VMs' work per pCPU-ms ratio}}, "
                f"each within {TOLERANCE:.0%}.")

    def results(self):
        """(off, on): the two runs, computed once."""
        if getattr(self, "_results", None) is None:
            from ..scenarios import compare
            self._results = compare("overcommit", seed=self.seed, **self.params)
        return self._results

    def _solve(self) -> dict:
        from ..scenarios import overcommit_gains
        g = overcommit_gains(*self.results())
        return {"guest_view": g["guest_view"], "host_view": g["host_view"]}

    def check(self, value) -> CheckResult:
        if not isinstance(value, dict) or set(value) != {"guest_view", "host_view"} or \
                not all(_number(v) for v in value.values()):
            return CheckResult(False, "answer a dict {'guest_view': number, 'host_view': number} "
                                      f"(ratios APF on / APF off), not {value!r}.")
        want = self._expected()
        bad = [k for k in ("guest_view", "host_view") if not _rel_ok(value[k], want[k], TOLERANCE)]
        if not bad:
            return CheckResult(True, f"right: guest view {want['guest_view']:.3g}×, host view "
                                     f"{want['host_view']:.3g}×.")
        detail = "; ".join(f"{k} {'too high' if value[k] > want[k] else 'too low'}" for k in bad)
        return CheckResult(False, miss(f"not yet: {detail}.", f"not yet: {', '.join(bad)} off."))

    def hint(self) -> str:
        return ("The guest's view counts only VM A's work: with APF off its walker stalls and, as the "
                "host gives the pCPU to B meanwhile, A's compute task gets little. The host's view adds "
                "B's work and divides by the pCPU time, which is busy in both runs: what can APF add to "
                "a pCPU that was never idle? Then measure: ex.results() gives (off, on); "
                "scenarios.overcommit_gains(off, on) the two ratios.")


# ---------------------------------------------------------------------- the lock holder

class LockSpin(Exercise):
    """Spin time on the guest kernel's lock while its holder stalls (no paravirtual flag)."""
    title = "Spinning on a stalled lock holder"

    def _draw(self, rng):
        return {"vcpus": rng.choice((2, 3)), "npages": rng.choice((4, 8, 12)), "rounds": 2,
                "latency_ns": rng.choice((20_000, 50_000, 100_000)), "work": rng.choice((100, 400)),
                "limit_pages": 8}

    def question(self) -> str:
        p = self.params
        return (f"[seed {self.seed}] lock_holder: {p['vcpus']} vCPUs; on each, a task makes "
                f"{p['npages'] * p['rounds']} system calls that take the guest kernel's spinlock, "
                f"loop {p['work']} times and read a page that is in swap (SSD median read "
                f"{p['latency_ns'] / 1e3:g} µs) while holding it; a compute task runs beside each. "
                f"APF on (sdei), no paravirtual flag (pv_lock=False).\nHow long, in ms of virtual time "
                f"summed over the vCPUs, do the vCPUs spin waiting for the lock? Within "
                f"{SPIN_TOLERANCE:.0%}.")

    def result(self):
        if getattr(self, "_result", None) is None:
            from ..scenarios import run_scenario
            self._result = run_scenario("lock_holder", apf=True, seed=self.seed, pv_lock=False,
                                        **self.params)
        return self._result

    def _solve(self) -> float:
        return self.result().lock["spin_ns"] / 1e6

    def check(self, value) -> CheckResult:
        if not _number(value) or value < 0:
            return CheckResult(False, f"answer a number of ms (>= 0), not {value!r}.")
        want = self._expected()
        if _rel_ok(value, want, SPIN_TOLERANCE):
            return CheckResult(True, f"right: {want:.3f} ms of spinning.")
        way = "too high" if value > want else "too low"
        return CheckResult(False, miss(f"{value:g} ms is {way}.", f"{value:g} ms is not it."))

    def hint(self) -> str:
        return ("The fault is in kernel mode, under the lock: no design can make it asynchronous, so "
                "the holder's vCPU stalls for the whole read. Every other vCPU that wants the lock "
                "meanwhile spins. How many lock calls stall, for how long, and how many vCPUs wait "
                "each time? Then measure: ex.result().lock['spin_ns'].")


# ---------------------------------------------------------------------- build it: the host scheduler

EVENTS = {
    "runnable": "the vCPU needs a pCPU from t (it woke up, or its page came in)",
    "stop": "the vCPU stops needing its pCPU at t (it stalls for a page, or halts in WFI)",
    "turn": "the vCPU's turn at t while it holds a pCPU: if its time slice is over and another "
            "vCPU waits, it is preempted",
}


class _St:
    """What ``HostScheduler`` reads of a vCPU: its index and its clock."""
    __slots__ = ("index", "now")

    def __init__(self, index):
        self.index, self.now = index, 0


def play(pcpus: int, time_slice_ns: int, vcpus: int, events) -> dict:
    """Play ``events`` [(t, kind, vcpu)] on a real ``pcpu.HostScheduler``, as the host's run
    loop calls it; returns {"holders": [vCPU or None per pCPU], "steal": [ns per vCPU]}."""
    from ..pcpu import HostScheduler
    sched = HostScheduler(pcpus, time_slice_ns)
    sts = [_St(i) for i in range(vcpus)]
    steal = [0] * vcpus

    def account(st, t):                  # the host's _steal: waited until t
        if t > st.now:
            steal[st.index] += t - st.now
            st.now = t

    for t, kind, v in events:
        st = sts[v]
        if kind == "runnable":
            st.now = t
            sched.want(st, account)
        elif kind == "stop":
            st.now = t
            sched.release(st, t, account)
        elif kind == "turn":
            st.now = t
            if sched.expired(st):
                sched.release(st, t, account)
                sched.want(st, account)      # behind the vCPUs that waited
        else:
            raise ParameterError(f"unknown event kind {kind!r}; known: {', '.join(EVENTS)}")
    holders = [None if p.running is None else p.running.index for p in sched.pcpus]
    return {"holders": holders, "steal": steal}


def draw_events(rng: random.Random, pcpus: int, vcpus: int, slice_ns: int, n: int) -> list:
    """A sequence a host could produce: runnable only for a vCPU that needs no pCPU, stop and
    turn only for one that holds one; times increase."""
    from ..pcpu import HostScheduler
    sched = HostScheduler(pcpus, slice_ns)
    sts = [_St(i) for i in range(vcpus)]
    nop = lambda st, t: setattr(st, "now", max(st.now, t))
    idle = set(range(vcpus))
    t, out = 0, []
    for _ in range(n):
        t += rng.randrange(1, 8) * 100
        holding = [p.running.index for p in sched.pcpus if p.running is not None]
        choices = [("runnable", v) for v in sorted(idle)] + \
                  [(k, v) for v in holding for k in ("stop", "turn", "turn")]
        kind, v = rng.choice(choices)
        st = sts[v]
        st.now = t
        if kind == "runnable":
            sched.want(st, nop)
            idle.discard(v)
        elif kind == "stop":
            sched.release(st, t, nop)
            idle.add(v)
        elif sched.expired(st):
            sched.release(st, t, nop)
            sched.want(st, nop)
        out.append((t, kind, v))
    return out


def describe_events(events) -> str:
    return ", ".join(f"t={t} {kind} vCPU {v}" for t, kind, v in events)


class PcpuSchedule(Exercise):
    """Write ``schedule(pcpus, time_slice_ns, vcpus, events)``: who holds each pCPU at the end,
    and each vCPU's steal time."""
    title = "Build it: the host scheduler"
    CASES = 10

    def _draw(self, rng):
        return {"pcpus": rng.choice((1, 2)), "vcpus": rng.choice((3, 4)),
                "time_slice_ns": rng.choice((500, 1000, 2000)), "events_per_case": 12}

    def cases(self) -> list:
        """The catalogue: event sequences drawn from the seed."""
        rng = random.Random(self.seed * 7919 + 11)
        p = self.params
        return [draw_events(rng, p["pcpus"], p["vcpus"], p["time_slice_ns"], p["events_per_case"])
                for _ in range(self.CASES)]

    def question(self) -> str:
        p = self.params
        kinds = "\n".join(f"  {k!r}: {v}" for k, v in EVENTS.items())
        return (f"[seed {self.seed}] A host with {p['pcpus']} physical CPU(s), {p['vcpus']} vCPUs "
                f"(0..{p['vcpus'] - 1}), time slice {p['time_slice_ns']} ns; at the start every pCPU "
                f"is free and no vCPU needs one.\nWrite schedule(pcpus, time_slice_ns, vcpus, events) "
                f"-> {{'holders': [vCPU index or None, per pCPU], 'steal': [ns, per vCPU]}} after the "
                f"events, a list of (t_ns, kind, vcpu) in time order, kind one of:\n{kinds}\n"
                f"The grader plays {self.CASES} sequences drawn from your seed on apflab's host "
                f"scheduler and compares.")

    def _solve(self):
        p = self.params
        return [play(p["pcpus"], p["time_slice_ns"], p["vcpus"], ev) for ev in self.cases()]

    def check(self, fn) -> CheckResult:
        if not callable(fn):
            return CheckResult(False, f"pass your function schedule(pcpus, time_slice_ns, vcpus, events), "
                                      f"not {fn!r}.")
        p = self.params
        for k, (events, want) in enumerate(zip(self.cases(), self._expected())):
            try:
                got = fn(p["pcpus"], p["time_slice_ns"], p["vcpus"], list(events))
            except NotImplementedError:
                return CheckResult(False, "schedule() is not written yet.")
            except Exception as e:      # the student's code: say what it raised, on which case
                return CheckResult(False, f"case {k}: schedule raised {type(e).__name__}: {e}")
            if not isinstance(got, dict) or set(got) != {"holders", "steal"}:
                return CheckResult(False, f"case {k}: return {{'holders': [...], 'steal': [...]}}, not {got!r}.")
            got = {"holders": list(got["holders"]), "steal": list(got["steal"])}
            if got != want:
                what = "holders" if got["holders"] != want["holders"] else "steal"
                return CheckResult(False, miss(
                    f"case {k} ({describe_events(events)}): your {what} {got[what]}, the host's "
                    f"{want[what]}.", f"case {k} ({describe_events(events)}): your {what} differ "
                    f"from the host's."))
        return CheckResult(True, f"all {self.CASES} sequences agree with the host's scheduler.")

    def hint(self) -> str:
        return ("A runnable vCPU takes a free pCPU (the one free the longest; ties: the lowest "
                "index) or queues at the back. When a vCPU stops, its pCPU goes at once to the "
                "vCPU that has waited longest; that one's steal grows by how long it waited. A "
                "turn after the slice ends (start + slice) preempts only if someone waits (the "
                "preempted vCPU queues at the back); alone, its slice is renewed from that turn.")
