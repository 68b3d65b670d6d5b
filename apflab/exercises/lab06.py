"""Lab 06 exercises: follow async page faults through the guest kernel's scheduler.

Both exercises draw a task list from the seed: task 0 walks a buffer that starts in
swap, the others are more such walkers or compute loops. ``answer()`` boots exactly
that guest (APF on) and reads the answer from the trace: which tasks ran user code
while task 0 waited for its first page, or which token a task's first "page not
present" carried (the OSTEP ``-c`` mode).
"""

from __future__ import annotations

from .. import guest
from ..machine import Machine
from ..stage2 import PageState
from . import HINT_ON_REQUEST, CheckResult, Exercise

NPAGES = 8                 # pages per walker: every first touch faults
BUDGET = 5_000_000         # instructions: far more than the first faults need


def build_guest(kinds, seed: int, *, tick_ns: int = guest.DEFAULT_TICK_NS, npages: int = NPAGES,
                rounds: int = 1000, hole: tuple[str, str] | None = None):
    """Boot-ready machine for tasks ``kinds`` ("memtouch"/"compute"); returns (machine, symbols).

    Set up as the scenarios set up theirs: each walker's buffer holds its round-0 values and is
    pushed to SSD swap before the first instruction; the kernel is pinned; the host memory
    limit leaves room for every buffer (only first touches fault). With ``rounds`` small the
    walkers finish and the run stops when they have; ``hole=(region, code)`` puts student
    code in a marked region of the kernel (``apflab.exercises.holes``).
    """
    tasks = []
    for i, kind in enumerate(kinds):
        if kind == "memtouch":
            tasks.append(guest.memtouch(npages, rounds, tag=i + 1, first_round=1, measured=rounds < 1000))
        elif kind == "compute":
            tasks.append(guest.compute(measured=False))
        else:
            raise ValueError(f"task kind must be 'memtouch' or 'compute', got {kind!r}")
    m = Machine(seed=seed)
    # The puzzle is plain round robin: a woken task waits for its turn (no wake-up preemption).
    source = guest.build_source(tasks, tick_ns=tick_ns, apf_enable=True, wake_preempt=False)
    if hole is None:
        syms = m.load_asm(source)
    else:
        from . import holes
        syms = holes.load(m, source, *hole)
    guest.pin_kernel(m, syms)
    guest.attach(m, syms)
    for i, buf in enumerate(guest.task_buffers(tasks)):
        if buf is None:
            continue
        for k, addr in enumerate(buf):
            m.write_u64(addr, guest.memtouch_value(i + 1, 0, k))
        for addr in buf:
            if m.page_state(addr) == PageState.RESIDENT:
                m.evict(addr)
    m.stage2.limit_pages = len(guest.kernel_pages(syms)) + npages * len(kinds)
    return m, syms


def _draw_kinds(rng, n_memtouch_min: int = 1) -> list[str]:
    while True:
        n = rng.randrange(3, 5)
        kinds = ["memtouch"] + [rng.choice(("memtouch", "compute")) for _ in range(n - 1)]
        if kinds.count("memtouch") >= n_memtouch_min:
            return kinds


KIND_TEXT = {"memtouch": "walks a buffer in swap (faults on each first touch)",
             "compute": "compute loop (never faults)"}


def _table(kinds) -> str:
    return "\n".join(f"  task {i}: {KIND_TEXT[k]}" for i, k in enumerate(kinds))


def _as_int_list(value):
    if isinstance(value, (list, tuple)) and all(type(v) is int for v in value):
        return list(value)
    return None


class WhileTask0Waits(Exercise):
    """Which tasks run user code while task 0 waits for its first page?"""
    title = "Who runs while task 0 waits"

    def _draw(self, rng):
        return {"tasks": _draw_kinds(rng)}

    def question(self) -> str:
        return (f"[seed {self.seed}] The guest kernel runs these tasks round robin (a 100 µs tick; "
                f"a woken task asks for a reschedule), APF on, SSD swap (~50 µs a page):\n"
                f"{_table(self.params['tasks'])}\n"
                f"Task 0 runs first and faults at once. Which tasks run user code (EL0) between "
                f"task 0's \"page not present\" and its \"page ready\"? Answer with a list of task "
                f"indices (ints) in the order they first run.")

    def _solve(self) -> list[int]:
        m, _ = build_guest(self.params["tasks"], self.seed)
        np_rec = None
        while np_rec is None:
            rec = m.run_until("apf_not_present", BUDGET)
            if rec is None or not hasattr(rec, "kind"):
                raise RuntimeError("no page-not-present within the budget")
            if rec.get("task") == 0:
                np_rec = rec
        token = np_rec.get("token")
        while True:
            rec = m.run_until("apf_page_ready", BUDGET)
            if rec is None or not hasattr(rec, "kind"):
                raise RuntimeError("no page-ready within the budget")
            if rec.get("token") == token:
                break
        seen = []
        for t0, t1, mode, task in m.trace.spans:
            if t1 <= np_rec.t_ns or t0 >= rec.t_ns:
                continue
            if mode == "el0" and task not in (None, 0) and task not in seen:
                seen.append(task)
        return seen

    def check(self, value) -> CheckResult:
        got = _as_int_list(value)
        if got is None:
            return CheckResult(False, f"answer with a list of task indices (ints), not {value!r}.")
        return super().check(got)

    def hint(self) -> str:
        return ("Round robin picks the next *runnable* task after the one that ran last. A walker's "
                "first touch faults at once, so it is parked as soon as it runs; a compute task "
                "keeps the vCPU until something makes the kernel reschedule (the tick, or task 0's "
                "page-ready wake-up, which ends the window you are asked about).")


class FirstToken(Exercise):
    """Which token does a given task's first "page not present" carry?"""
    title = "Which token"

    def _draw(self, rng):
        # a compute task before the asked-about walker, so that "token = task << 12" is wrong
        # (that rule of thumb passed on 36 of 60 seeds when any walker could be asked about)
        while True:
            kinds = _draw_kinds(rng, n_memtouch_min=2)
            walkers = [i for i, k in enumerate(kinds) if k == "memtouch" and "compute" in kinds[:i]]
            if walkers:
                return {"tasks": kinds, "task": rng.choice(walkers), "nth": rng.choice((1, 2))}

    def question(self) -> str:
        return (f"[seed {self.seed}] Same guest kernel as before (round robin, 100 µs tick, a woken "
                f"task asks for a reschedule), APF on, SSD swap (~50 µs a page), one vCPU (id 0):\n"
                f"{_table(self.params['tasks'])}\n"
                f"Task 0 runs first. What token does the host put in the shared block with task "
                f"{self.params['task']}'s {('first', 'second')[self.params['nth'] - 1]} \"page not "
                f"present\"? (an int; hex is fine)"
                + ("" if self.params["nth"] == 1 else " Page-in times are jittered: predict, then "
                   "step the guest with run_until to check the order."))

    def _solve(self) -> int:
        m, _ = build_guest(self.params["tasks"], self.seed)
        seen = 0
        while True:
            rec = m.run_until("apf_not_present", BUDGET)
            if rec is None or not hasattr(rec, "kind"):
                raise RuntimeError("no page-not-present within the budget")
            if rec.get("task") == self.params["task"]:
                seen += 1
                if seen == self.params["nth"]:
                    return rec.get("token")

    def check(self, value) -> CheckResult:
        if isinstance(value, str):
            try:
                value = int(value, 0)
            except ValueError:
                return CheckResult(False, f"{value!r} is not a number.")
        if not isinstance(value, int) or isinstance(value, bool):
            return CheckResult(False, f"answer with an int (a token; hex like 0xN000 is fine), not {value!r}.")
        expected = self._expected()
        if value == expected:
            return CheckResult(True, f"{value:#x} is right.")
        return CheckResult(False, f"{value:#x} is not it. " + HINT_ON_REQUEST)

    def hint(self) -> str:
        return ("KVM's token is (id << 12) | vcpu_id, and id counts the async faults the host has "
                "sent so far (0 for the first). So list the faults in the order they happen: who "
                "runs first, who is parked, who runs next, and what runs when task 0's page is "
                "ready and its wake-up asks for a reschedule.")
