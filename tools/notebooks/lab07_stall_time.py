"""Lab 07: measuring stall time. Cells for labs/07-stall-time.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/07-stall-time.ipynb"
SOLUTION = "labs/solutions/07-stall-time.ipynb"

TEACH = [
    md("""# Lab 07 — Measuring stall time: when does APF pay off?

**Objectives.** By the end of this lab you can
1. run an experiment with APF off and on and read where the vCPU's time went (the time
   breakdown by mode);
2. explain why APF *costs* a few percent when the guest has nothing else to run, and why
   it *saves* about a third of the time when it has;
3. use parameter sweeps to see how the answer moves with the swap latency, the memory
   limit and the task mix;
4. predict, for a configuration you are given, whether APF helps and by roughly how much,
   then measure it.

""" + expected_time(75, "does APF pay off here (predict, then measure), read the dashboard "
                    "(dashboard, measure)")),
    md("""## What is measured

`memtouch` is the arm64 APF series' own test in miniature: a task walks a buffer larger
than the host's memory limit, so its pages keep going to swap and coming back. Its result
is the **time until the walk finishes** (`elapsed_ns`, from the kernel's exit timestamp of
the walker). Optionally a compute task runs beside it.

Every nanosecond of the vCPU is charged to one mode, and the modes add up to the elapsed
time: `el0` (user tasks), `el1` (kernel), `handler` (the SDEI handler), `halted` (WFI:
nothing runnable), `stalled` (waiting in the host for a page), `host` (exits and host work
charged to the vCPU).

![Where the vCPU's time goes, APF off and on](../assets/lab07-time-budget.svg)"""),
    md("""## Four runs: with and without a compute task, APF off and on

64 pages, 32 frames under the limit, two rounds, SSD swap (50 µs median): 128 faults."""),
    *predict("For the walker alone, and for the walker beside a compute task: does APF make the "
             "walk faster or slower, and by roughly how many percent?", "predicted",
             '{"walker alone": None, "walker + compute": None}   # percent change'),
    code("""import apflab
import plotly.io as pio
from apflab import plots
from apflab.scenarios import compare
from apflab.sweep import sweep

pio.renderers.default = "plotly_mimetype"   # figures as JSON, no copy of plotly.js per figure

BASE = dict(npages=64, limit_pages=32)
runs = {}
for calc in (False, True):
    off, on = compare("memtouch", seed=0, calc_thread=calc, **BASE)
    mix = "walker + compute" if calc else "walker alone"
    runs[f"{mix}, off"] = off
    runs[f"{mix}, on"] = on

print(f"{'run':<23} {'elapsed':>10} {'stalled':>10} {'faults':>6} {'async':>5} {'compute work':>12}")
for label, r in runs.items():
    print(f"{label:<23} {r.elapsed_ns / 1e6:>7.3f} ms {r.stall_ns / 1e6:>7.3f} ms {r.faults:>6} "
          f"{r.apf_not_present:>5} {r.work['compute']:>12}")
for mix in ("walker alone", "walker + compute"):
    off, on = runs[f"{mix}, off"], runs[f"{mix}, on"]
    print(f"{mix}: APF changes the walk's time by {on.elapsed_ns / off.elapsed_ns - 1:+.1%}")"""),
    md("""The two headline numbers of the arm64 APF discussion, reproduced: **without** a
compute task APF makes the walk slightly *slower*; **with** one, about a third faster, and
the compute task gets half as much work again. Where did the time go?"""),
    code("""modes = list(next(iter(runs.values())).breakdown)
print(f"{'ms':<23}" + "".join(f"{m:>9}" for m in modes))
for label, r in runs.items():
    print(f"{label:<23}" + "".join(f"{r.breakdown[m] / 1e6:>9.3f}" for m in modes))"""),
    code("""# NBVAL_IGNORE_OUTPUT
fig = plots.breakdown_bar(runs, title="memtouch, 128 faults: where the vCPU's time went")
fig.show()"""),
    md("""Read the rows in pairs.

- **Walker alone.** APF off: 6.7 ms `stalled`. APF on: no stall at all, but 6.2 ms
  `halted`: the walker is parked and there is nothing else to run, so the kernel idles in
  WFI until "page ready". The wait did not get shorter. What APF added is the `handler`,
  the extra `el1` work and more than twice the `host` time (the SDEI injection, the page-ready
  interrupt, IRQ_ACK and COMPLETE_AND_RESUME hypercalls): about 1.3 µs a fault here,
  +2.4% in total.
- **Walker + compute.** APF off: the same 6.7 ms stalled, *plus* 4.1 ms of compute time,
  because the round-robin scheduler hands the vCPU to the compute task at every tick and
  the walker waits for its turn. APF on: nothing stalled, and the elapsed time is about
  the walker-alone time: the compute task now runs *inside* the walker's waits (6.3 ms of
  `el0`), and a woken walker asks for a reschedule and gets the vCPU back at once.

So APF does not make a page arrive sooner. It gives the waiting time to someone else.
When there is no one else, it can only add its own overhead."""),
    md("""The stall histogram says the same per fault: APF off, every fault is a stall of the
device's latency (left); APF on, the same waits appear as "fault → page ready" times of
the parked task (right), while the vCPU did something else."""),
    code("""# NBVAL_IGNORE_OUTPUT
fig = plots.stall_histogram({"APF off": runs["walker + compute, off"],
                             "APF on": runs["walker + compute, on"]})
fig.show()"""),
    md("""## Sweep 1: the swap latency

`sweep` runs every point of a grid with APF off and on; each row is a flat record
(`param.*`, `elapsed_ns`, `stall_ns`, `time.*`, …). One worker keeps the notebook simple;
the rows do not depend on how many workers ran them."""),
    *predict("As the swap latency grows from 10 µs to 200 µs, does APF's gain with a compute task "
             "grow, shrink or stay put? And its cost without one?", "predicted_trend",
             '("grow/shrink/same", "grow/shrink/same")'),
    code("""rows = sweep("memtouch", {"latency_ns": [10_000, 20_000, 50_000, 100_000, 200_000],
                          "calc_thread": [False, True]}, workers=1, progress=False, **BASE)

def pairs(rows, *keys):
    \"\"\"{(param values...): {False: row_off, True: row_on}} from sweep rows.\"\"\"
    out = {}
    for row in rows:
        out.setdefault(tuple(row[f"param.{k}"] for k in keys), {})[row["apf"]] = row
    return out

changes = []
print(f"{'latency':>8} {'compute task':>12} {'APF off':>10} {'APF on':>10} {'change':>8}")
for (latency, calc), p in pairs(rows, "latency_ns", "calc_thread").items():
    change = 100 * (p[True]["elapsed_ns"] / p[False]["elapsed_ns"] - 1)
    changes.append({"latency_us": latency // 1000, "compute task": calc, "change_pct": round(change, 1)})
    print(f"{latency / 1e3:>6g}µs {str(calc):>12} {p[False]['elapsed_ns'] / 1e6:>7.3f} ms "
          f"{p[True]['elapsed_ns'] / 1e6:>7.3f} ms {change:>+7.1f}%")"""),
    code("""# NBVAL_IGNORE_OUTPUT
fig = plots.sweep_lines(changes, x="latency_us", y="change_pct", color="compute task", log_x=True,
                        title="APF's change to the walk's time (%), by swap latency (µs)")
fig.show()"""),
    md("""- Without a compute task the cost is a fixed overhead per fault, so it matters less as
  the wait grows: +11% at 10 µs, +0.5% at 200 µs.
- With one, the gain shrinks as latency grows (−40% → −25%). APF on, the walk takes about
  faults × latency either way; APF off, it takes that *plus* the compute task's turns, and
  those are a smaller share of a run dominated by long stalls.
- Very fast storage is another story: lab 09 looks at a few microseconds, where APF loses
  even with a compute task."""),
    md("""## Sweep 2: the memory limit"""),
    code("""rows = sweep("memtouch", {"limit_pages": [32, 63, 64, 96]}, workers=1, progress=False,
             npages=64, calc_thread=True)
print(f"{'limit':>5} {'faults':>6} {'APF off':>10} {'APF on':>10} {'saved':>9} {'change':>7}")
for (limit,), p in pairs(rows, "limit_pages").items():
    off_ns, on_ns = p[False]["elapsed_ns"], p[True]["elapsed_ns"]
    print(f"{limit:>5} {p[False]['faults']:>6} {off_ns / 1e6:>7.3f} ms {on_ns / 1e6:>7.3f} ms "
          f"{(off_ns - on_ns) / 1e6:>6.3f} ms {on_ns / off_ns - 1:>+7.1%}")"""),
    md("""The limit decides how many faults there are (the cliff of lab 05); APF decides what
each one costs. The time saved grows with the faults, the ratio stays put."""),
    md("""## Sweep 3: the task mix

The `gleb2010` scenario (Natapov's 2010 x86 benchmark, lab 09) runs several walkers and
several compute tasks for a fixed time and counts **work done**, which APF should raise.
Four mixes, 10 ms each, 32 pages per walker, 16 frames for all of them."""),
    *predict("Two walkers and no compute task: will APF raise the total work done, lower it, or "
             "leave it?", "predicted_two_walkers", "None"),
    code("""print(f"{'walkers':>7} {'compute':>7} {'walk units off→on':>18} {'compute units off→on':>21} {'total':>7}")
for walkers, computes in [(2, 0), (1, 1), (2, 2), (4, 4)]:
    off, on = compare("gleb2010", seed=0, fault_tasks=walkers, compute_tasks=computes,
                      npages=32, limit_pages=16, duration_ns=10_000_000)
    walk_off = off.work["total"] - off.work["compute"]
    walk_on = on.work["total"] - on.work["compute"]
    print(f"{walkers:>7} {computes:>7} {walk_off:>8} → {walk_on:<7} {off.work['compute']:>10} → "
          f"{on.work['compute']:<8} {on.work['total'] / off.work['total'] - 1:>+7.0%}")"""),
    md("""Two walkers and nothing else: APF helps a lot, although no compute task exists.
While one walker waits, the other runs into its *own* fault, and the SSD (32 channels)
reads both pages at once: APF turns one-at-a-time I/O into overlapped I/O. With compute
tasks, their work roughly doubles or triples. The single walker of the `memtouch` test
is the one mix where APF has nothing to overlap.

`StallDashboard` runs any of these comparisons from controls, with the breakdown chart:"""),
    code("""# NBVAL_IGNORE_OUTPUT
from apflab.widgets import StallDashboard

StallDashboard()"""),
]

EXERCISE_INTRO = md("""## Exercise 1: does APF pay off here?

Your seed draws a latency, a buffer, a memory limit, a number of rounds and whether a
compute task runs beside the walker. First *predict* the change in the walk's time with APF
on, in percent (negative = faster), from the runs and sweeps above, and write it down. Then
*measure* it: `compare("memtouch", seed=ex.seed, **ex.scenario_params())`. The check wants
the right direction and a value within 3 points, which a rule of thumb ("−30% with a compute
task, +5% without") does not reach for most seeds. Say in a sentence why your prediction
was off, if it was.""")

DASHBOARD = [
    md("""## Exercise 2 (dashboard): read the dashboard

Set a `StallDashboard` as your seed's question says, press the run button, and read the
answer off the headline."""),
    code("""from apflab.exercises.explore import DashboardSaving

ex2 = DashboardSaving(SEED)
print(ex2.question())"""),
]
DASHBOARD_STUDENT = [
    code("""# NBVAL_IGNORE_OUTPUT
dashboard = StallDashboard()
dashboard"""),
    code("""my_saving = None                 # <- ms sooner with APF on (negative: later)
ex2.check(my_saving)"""),
]
DASHBOARD_SOLUTION = [
    md("""**Worked solution.** Set the controls (here from code, as the buttons would), click run,
read the two runs' times to finish."""),
    solution("lab07-dashboard", "", """dashboard = StallDashboard()
s = ex2.settings()
dashboard.mix.value, dashboard.seed.value, dashboard.latency.value = s["mix"], s["seed"], s["latency"]
dashboard.limit.value, dashboard.npages.value = s["limit"], s["npages"]
dashboard.run_button.click()
off, on = dashboard.last
my_saving = (off.elapsed_ns - on.elapsed_ns) / 1e6
print(f"{off.elapsed_ns / 1e6:.3f} ms off, {on.elapsed_ns / 1e6:.3f} ms on: {my_saving:+.4f} ms")"""),
    graded("lab07-dashboard-check", 1, "ex2", "DashboardSaving", "apflab.exercises.explore", "my_saving"),
]

CELLS = TEACH + [
    EXERCISE_INTRO,
    code("""from apflab.exercises.lab07 import ApfPayoff

SEED = 1234                      # <- your seed
ex = ApfPayoff(SEED)
print(ex.question())"""),
    code("""my_prediction = None             # <- your prediction in percent, before measuring"""),
    code("""my_answer = None                 # <- the change you measured with compare(...), in percent
ex.check(my_answer)"""),
    code("""# ex.hint()                      # uncomment when you want a hint"""),
] + DASHBOARD + DASHBOARD_STUDENT + [
    md("""## Summary

- APF never shortens a wait; it hands it to another task. The time breakdown shows where
  it goes: `stalled` becomes `el0` of another task, or `halted` when there is none.
- Walker alone: APF costs its overhead, about 1.3 µs a fault (+2% at 50 µs, +11% at 10 µs).
- Walker + compute: −36% at 50 µs (−25% to −40% over 10–200 µs), with ~50% more compute work.
- More faulting tasks: APF overlaps their reads, a gain even with no compute task at all.
- The memory limit sets the number of faults; APF sets the price of each."""),
]

SOLUTION_CELLS = TEACH + [
    EXERCISE_INTRO,
    code("""from apflab.exercises.lab07 import ApfPayoff

SEED = 1234
ex = ApfPayoff(SEED)
print(ex.question())"""),
    md("""**Prediction.** Reason from the measurements above. Without a compute task APF adds about
1.3 µs of overhead per fault to a wait of about the latency (× 1.05 for the lognormal's
mean), so the change is roughly +1.3 µs / (latency + the few µs of the fault's own
handling), less when a buffer that fits makes later rounds fault-free. With a compute task,
read it off Sweep 1: about −40% at 10–20 µs, −36% at 50 µs, −28% at 100 µs, −25% at 200 µs,
and much less at 5 µs, where the page is nearly back before the switch is done."""),
    code("""p = ex.params
latency_us = p["latency_ns"] / 1e3
if p["calc_thread"]:
    table = {5: -7, 10: -40, 20: -39, 50: -36, 100: -28, 150: -27, 200: -25}
    my_prediction = table[min(table, key=lambda k: abs(k - latency_us))]
else:
    my_prediction = 100 * 1.3 / (1.05 * latency_us + 3)
print(p, "-> predicted", round(my_prediction, 1))"""),
    md("""**Measurement.** Then run it, and compare with the prediction."""),
    solution("lab07-payoff", "", """off, on = compare("memtouch", seed=ex.seed, **ex.scenario_params())
my_answer = round(100 * (on.elapsed_ns / off.elapsed_ns - 1), 1)
print(f"measured {my_answer:+.1f}%, predicted {my_prediction:+.1f}%")"""),
    graded("lab07-payoff-check", 2, "ex", "ApfPayoff", "apflab.exercises.lab07", "my_answer"),
] + DASHBOARD + DASHBOARD_SOLUTION
