"""Lab 11: several vCPUs, an overcommitted host, a lock holder that stalls.
Cells for labs/11-smp-overcommit.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import graded, solution

LAB = "labs/11-smp-overcommit.ipynb"
SOLUTION = "labs/solutions/11-smp-overcommit.ipynb"

TEACH = [
    md("""# Lab 11 — Several vCPUs, an overcommitted host, and a lock holder that stalls

**Objectives.** By the end of this lab you can
1. read a swim-lane plot of several vCPUs and of the physical CPUs (pCPUs) under them: run,
   stall, steal (runnable, waiting for a pCPU) and idle;
2. explain, with measurements, why APF's gain seen *by the guest* is much larger than its gain
   seen *by the host* that runs other tenants on the same pCPUs;
3. measure lock-holder preemption: a vCPU that stalls in a kernel-mode fault while holding a
   spinlock makes the other vCPUs spin, and a paravirtual "preempted" flag removes the spin;
4. write the host scheduler's rule yourself and have it checked against the host.

**Expected time:** 60–75 minutes. Running every cell takes under a minute: the runs are
short (5 ms of virtual time, 64-page buffers), so the absolute numbers are small; the
comparisons are what matters. Every number is in virtual time and is the same on every
machine for the same seed."""),
    md("""## The host's view and the guest's view

A synchronous stall looks like waste from inside the guest: the vCPU does nothing until its
page is in. But a host with other tenants does not leave the pCPU idle: the stalled vCPU
releases it and another vCPU (of this VM or another VM) runs there. So the *host* loses
little to the stall, and APF, which lets the *guest* run something else during the wait, can
win the guest a lot while winning the host little or nothing. A cloud host sells pCPU time,
so this is where lab 09's objections 3 and 4 (cloud vendors not asking for APF; no
performance data) meet a measurement.

apflab's host (`apflab.pcpu.HostScheduler`): P pCPUs; a runnable vCPU takes a free pCPU or
queues (FIFO); while it queues it accrues **steal** time (KVM's steal time: runnable, not
running); a vCPU that stalls or halts gives its pCPU to the vCPU that waited longest; the
holder keeps its pCPU until its **time slice** ends and someone waits. This FIFO rule is the
model's choice: Linux's scheduler may let a waking thread preempt the running one
(docs/REFERENCES.md, the "host scheduler" row). It matters below, where it is shown."""),
    code("""import apflab
import plotly.io as pio
from apflab import plots, scenarios

pio.renderers.default = "plotly_mimetype"   # figures as JSON, no copy of plotly.js per figure
SEEDS = range(5)"""),
    md("""## 1. Two vCPUs, one buffer each

`smp_memtouch`: two vCPUs, each with a walker over its own 64-page buffer in swap, a physical
CPU each (no overcommit). The swim lanes show one lane per vCPU."""),
    code("""smp = scenarios.build("smp_memtouch", apf=True, seed=0, vcpus=2, npages=64, limit_pages=64)
r = smp.run()
for v in r.vcpus:
    print(f"vCPU {v['vcpu']}: run {v['run_ns'] / 1e6:.3f} ms, stall {v['stall_ns'] / 1e6:.3f} ms, "
          f"steal {v['steal_ns'] / 1e6:.3f} ms, idle {v['idle_ns'] / 1e6:.3f} ms")"""),
    code("""# NBVAL_IGNORE_OUTPUT
plots.swimlanes(smp.machine, title="smp_memtouch, APF on: one lane per vCPU").show()"""),
    md("""Each vCPU's walker faults on its own pages; with APF on, "page ready" comes back to the
vCPU that faulted (each vCPU has its own APF queue, as in KVM). With nothing else to run, a
vCPU whose task waits halts (idle), it does not stall."""),
    md("""The `Explorer` (lab 06) steps the same machine; with several vCPUs it has a selector
(`show`): the registers, PC, clock, SDEI PE and APF queue shown are the chosen vCPU's, and the
trace log can show only its records. Stepping still steps the whole machine."""),
    code("""# NBVAL_IGNORE_OUTPUT
from apflab.widgets import Explorer

explorer = Explorer(lambda s: scenarios.build("smp_memtouch", apf=True, seed=s, vcpus=2, npages=16,
                                              limit_pages=16))
explorer"""),
    code("""print(explorer.run_until("fault"))
explorer.select_vcpu(1)                  # what clicking "vCPU 1" does
explorer.show_own_records(True)
for v in explorer.state()["vcpus"]:
    print(f"vCPU {v['vcpu']}: {v['power']}, EL{v['el']}, pc {v['pc']:#x}, t = {v['now_ns']:,} ns")
print("vCPU 1's last records:", [r["kind"] for r in explorer.state()["recent"]][-6:])"""),
    md("""## 2. Overcommit: the guest's view against the host's view

`overcommit`: VMs A and B share **one** pCPU for 5 ms. A runs a walker over a 64-page buffer
in swap (16 frames) and a compute task; B only computes. The guest's view of APF's gain is
A's work rate, APF on over APF off; the host's view is both VMs' work per pCPU-ms.

**Predict:** with APF off, who uses the pCPU while A's walker stalls? Will the host's view
of APF's gain be above 1, about 1, or below 1? And the guest's?"""),
    code("""OVER = dict(pcpus=1, vcpus=1, duration_ns=5_000_000, npages=64, limit_pages=16)
setup = scenarios.build("overcommit", apf=True, seed=0, **OVER)
on = setup.run()
print(on.table())"""),
    code("""# NBVAL_IGNORE_OUTPUT
plots.swimlanes(setup, title="overcommit, APF on: the guest's lanes and the host's pCPU").show()"""),
    code("""def gains(seeds, **params):
    \"\"\"overcommit_gains over seeds: one row per seed.\"\"\"
    rows = []
    for s in seeds:
        off, on = scenarios.compare("overcommit", seed=s, **params)
        g = scenarios.overcommit_gains(off, on)
        rows.append({"seed": s, **g, "work_off": [v["work"]["total"] for v in off.vms],
                     "work_on": [v["work"]["total"] for v in on.vms]})
    return rows

def spread(rows, key):
    xs = [r[key] for r in rows]
    return f"mean {sum(xs) / len(xs):.3f}, min {min(xs):.3f}, max {max(xs):.3f} over {len(xs)} seeds"

slices = {}
for slice_ns in (500_000, 3_000_000):
    slices[slice_ns] = gains(SEEDS, time_slice_ns=slice_ns, **OVER)
    print(f"time slice {slice_ns / 1e6:g} ms")
    print(f"  guest's view (A's work, on/off):     {spread(slices[slice_ns], 'guest_view')}")
    print(f"  host's view (work per pCPU-ms):      {spread(slices[slice_ns], 'host_view')}")
    print(f"  work [A, B] APF off -> on, seed 0:   {slices[slice_ns][0]['work_off']} -> {slices[slice_ns][0]['work_on']}")"""),
    code("""# NBVAL_IGNORE_OUTPUT
off0, on0 = scenarios.compare("overcommit", seed=0, time_slice_ns=3_000_000, **OVER)
plots.vm_work_bar({"APF off": off0, "APF on": on0}, "work.total",
                  title="overcommit, 3 ms slice: work per VM (the pCPU is busy in both runs)").show()
plots.cpu_breakdown_bar(off0, title="overcommit, APF off: where each vCPU's time went").show()"""),
    md("""What the numbers say:

- **The host's view is below 1** for every seed and both slices: the pCPU is busy in both
  runs (utilisation 100%), so APF cannot add pCPU time; it moves time from B to A, and its
  own exits, notices and handler take some. A synchronous stall was never waste *for the
  host*: B used the pCPU meanwhile.
- **The guest's view is large**, and how large depends on the time slice, a host parameter
  the guest cannot see: with APF off, A gets the pCPU back only when B's slice ends, so the
  longer the slice, the less A does, and the larger APF's gain looks. With the FIFO rule
  (the model's choice, see above) a long slice exaggerates this; a host that let the woken
  vCPU preempt would shrink it.
- Work units are the mini-kernel's (a loop count), so compare ratios, not the units."""),
    md("""## 3. The lock holder

`lock_holder`: on each vCPU a task makes system calls that take the guest kernel's spinlock
(a ticket lock) and read a page in swap while holding it, beside a compute task. That fault
is in kernel mode: no delivery design can make it asynchronous (the kernel cannot sleep
holding a spinlock), so the holder's vCPU stalls for the whole read, and every other vCPU
that wants the lock spins.

The remedy is paravirtual: the host publishes a per-vCPU "preempted" flag in guest memory
(the arm64 PV-lock calls, never merged, and x86's steal-time `preempted` field; sources in
docs/REFERENCES.md, "Paravirtual lock"), and a waiter whose lock holder is flagged blocks
instead of spinning. KVM's generic flag is set only when a vCPU loses its pCPU while still
runnable (`pv_flag="preempted"`); apflab's `pv_flag="preempted+stalled"` (the default of
`pv_lock=True`) also sets it while the vCPU stalls in a synchronous page-in. That extension is
the lab's, beyond KVM (the unmerged arm64 series wrote the flag at every sched-out of the vCPU
thread, which would include such a stall; apflab does not model that write).

**Predict:** with 2 vCPUs, 16 lock calls each, 50 µs reads: roughly how long do the vCPUs
spin in total without the flag? With KVM's meaning of the flag only (`pv_flag="preempted"`)
and a pCPU per vCPU, does the flag help?"""),
    code("""LOCK = dict(vcpus=2, npages=8, rounds=2)

def locks(seeds, **params):
    return [scenarios.run_scenario("lock_holder", apf=True, seed=s, **LOCK, **params).lock for s in seeds]

def spin_ms(seeds, **params):
    return [lk["spin_ns"] / 1e6 for lk in locks(seeds, **params)]

def show(label, lks):
    xs = [lk["spin_ns"] / 1e6 for lk in lks]
    print(f"{label:<42} spin mean {sum(xs) / len(xs):6.3f} ms, min {min(xs):6.3f}, max {max(xs):6.3f} "
          f"({len(xs)} seeds); waiters blocked {sum(lk['waiters_blocked'] for lk in lks)}")

show("no flag", locks(SEEDS, pv_lock=False))
show("flag, KVM's meaning (preempted)", locks(SEEDS, pv_lock=True, pv_flag="preempted"))
show("flag, lab's extension (preempted+stalled)", locks(SEEDS, pv_lock=True))"""),
    code("""for latency in (20_000, 50_000, 100_000):
    no = spin_ms([0], pv_lock=False, latency_ns=latency)[0]
    yes = spin_ms([0], pv_lock=True, latency_ns=latency)[0]
    print(f"swap read {latency / 1e3:5g} µs: spin {no:7.3f} ms without the flag, {yes:6.3f} ms with it")"""),
    code("""# NBVAL_IGNORE_OUTPUT
lock = scenarios.build("lock_holder", apf=True, seed=0, pv_lock=False, **LOCK)
res = lock.run()
print(res.lock)
plots.swimlanes(lock.machine, title="lock_holder, no flag: one vCPU stalls holding the lock, the other spins (el1)").show()"""),
    md("""- Without the flag the spin time grows with the swap latency: each stall under the lock
  is spent by the other vCPU spinning in the kernel (`el1` in its lane), time its compute task
  does not get.
- KVM's meaning of the flag never makes a waiter block here (0 blocked): with a pCPU per vCPU
  nobody is ever preempted, and a synchronous stall does not set KVM's generic flag. The spin that
  is left differs from the no-flag run seed by seed only because the waiters' extra check
  shifts the interleaving. Only the lab's extension, which also flags a stall, turns the spin
  into a block (the waiter sleeps and is woken by an IPI).
- That extension is what the lab adds; whether a real host should publish stalls this way
  is the kind of question the review left open."""),
]

EX1_INTRO = md("""## Exercise 1: the two views

Your seed draws an `overcommit` run (one pCPU, time slice and swap latency drawn). Predict
both ratios, then measure with `ex1.results()` (APF off, APF on) and
`scenarios.overcommit_gains`.""")

EX2_INTRO = md("""## Exercise 2: spinning on a stalled holder

Your seed draws a `lock_holder` run without the paravirtual flag. Predict the total spin
time, then measure with `ex2.result().lock`.""")

EX3_INTRO = md("""## Exercise 3 (build it): the host scheduler

Write `schedule(pcpus, time_slice_ns, vcpus, events)`: who holds each pCPU after a sequence
of events, and how much steal time each vCPU accrued. The grader plays sequences drawn from
your seed on apflab's own `HostScheduler` (the one every run above used) and compares; when
your answer differs it shows you the sequence.""")

SCHEDULE_SKELETON = code('''def schedule(pcpus, time_slice_ns, vcpus, events):
    """events: [(t_ns, kind, vcpu)], kind "runnable", "stop" or "turn" (ex3.question()).
    Returns {"holders": [vCPU or None per pCPU], "steal": [ns per vCPU]}."""
    # TODO: a runnable vCPU takes a free pCPU or queues; a stop hands the pCPU to the vCPU
    #       that waited longest (its steal: how long it waited); a turn after the slice
    #       preempts only if someone waits.
    raise NotImplementedError

ex3.check(schedule)''')

SCHEDULE_SOLUTION = solution("lab11-schedule", "", '''def schedule(pcpus, time_slice_ns, vcpus, events):
    """The host scheduler's rule (apflab.pcpu), from the lab's text."""
    holder = [None] * pcpus          # the vCPU on each pCPU
    since = [0] * pcpus              # when it was taken, or freed
    slice_end = [0] * pcpus
    waiting = []                     # (vCPU, waiting since), longest first
    steal = [0] * vcpus

    def take(p, v, t, ready):
        start = max(since[p], t)
        steal[v] += start - ready
        holder[p], since[p], slice_end[p] = v, start, start + time_slice_ns

    def release(p, t):
        holder[p], since[p] = None, max(t, since[p])
        if waiting:
            v, ready = waiting.pop(0)
            take(p, v, since[p], ready)

    for t, kind, v in events:
        if kind == "runnable":
            free = [p for p in range(pcpus) if holder[p] is None]
            if free:                 # the pCPU free the longest; ties: the lowest index
                take(min(free, key=lambda p: (since[p], p)), v, t, t)
            else:
                waiting.append((v, t))
        elif kind == "stop":
            release(holder.index(v), t)
        elif kind == "turn":
            p = holder.index(v)
            if t >= slice_end[p]:
                if waiting:          # preempted: behind the vCPUs that waited
                    release(p, t)
                    waiting.append((v, t))
                else:                # alone: the slice is renewed
                    slice_end[p] = t + time_slice_ns
    return {"holders": holder, "steal": steal}
''')

SUMMARY = md("""## Summary

- With several vCPUs and other tenants, a synchronous stall is not idle time for the host:
  the pCPU runs someone else. APF's gain for the guest can be large while the host's is
  below 1; how large the guest's is depends on the host's time slice.
- A kernel-mode fault under a spinlock cannot be made asynchronous by any design. The other
  vCPUs spin for the whole read; a paravirtual flag lets them block instead, but only if the
  host flags a stall, which KVM's generic "preempted" flag does not.
- The FIFO host scheduler and the "preempted+stalled" flag are the lab's choices
  (docs/REFERENCES.md); the comparisons, not the absolute numbers, are what carry over.""")

CELLS = TEACH + [
    EX1_INTRO,
    code("""from apflab.exercises.lab11 import LockSpin, OvercommitViews, PcpuSchedule

SEED = 1234                      # <- your seed
ex1 = OvercommitViews(SEED)
print(ex1.question())"""),
    code("""my_views = None                  # <- {"guest_view": ..., "host_view": ...}
ex1.check(my_views)"""),
    md("""`ex1.hint()` nudges."""),
    EX2_INTRO,
    code("""ex2 = LockSpin(SEED)
print(ex2.question())"""),
    code("""my_spin_ms = None                # <- a number of ms
ex2.check(my_spin_ms)"""),
    md("""`ex2.hint()` nudges."""),
    EX3_INTRO,
    code("""ex3 = PcpuSchedule(SEED)
print(ex3.question())"""),
    SCHEDULE_SKELETON,
    md("""`ex3.hint()` nudges; `ex3.cases()` lists the sequences (run them through your function)."""),
    SUMMARY,
]

SOLUTION_CELLS = TEACH + [
    EX1_INTRO,
    code("""from apflab.exercises.lab11 import LockSpin, OvercommitViews, PcpuSchedule

SEED = 1234
ex1 = OvercommitViews(SEED)
print(ex1.question())"""),
    md("""From part 2: the host's view is a little below 1 (the pCPU is busy either way); the
guest's view is large and grows with the slice. Then measure: the measurement decides."""),
    solution("lab11-views", "", """off, on = ex1.results()
g = scenarios.overcommit_gains(off, on)
print(g)
my_views = {"guest_view": g["guest_view"], "host_view": g["host_view"]}"""),
    graded("lab11-views-check", 1, "ex1", "OvercommitViews", "apflab.exercises.lab11", "my_views"),
    EX2_INTRO,
    code("""ex2 = LockSpin(SEED)
print(ex2.question())"""),
    md("""A rough estimate: each lock call stalls for about one read while holding the lock, and
some of the other vCPUs wait for the lock then. It ignores the queueing (a waiter can wait
for several holders in turn, so with three vCPUs it is well short). The measurement decides."""),
    solution("lab11-spin", "", """p = ex2.params
estimate = p["npages"] * p["rounds"] * p["vcpus"] * p["latency_ns"] / 1e6 * (p["vcpus"] - 1) / p["vcpus"]
measured = ex2.result().lock["spin_ns"] / 1e6
print(f"estimate {estimate:.3f} ms, measured {measured:.3f} ms")
my_spin_ms = measured"""),
    graded("lab11-spin-check", 1, "ex2", "LockSpin", "apflab.exercises.lab11", "my_spin_ms"),
    EX3_INTRO,
    code("""ex3 = PcpuSchedule(SEED)
print(ex3.question())"""),
    SCHEDULE_SOLUTION,
    graded("lab11-schedule-check", 3, "ex3", "PcpuSchedule", "apflab.exercises.lab11", "schedule"),
    SUMMARY,
]
