"""Lab 10: five ways to say "page not present". Cells for labs/10-designs.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import graded, solution

LAB = "labs/10-designs.ipynb"
SOLUTION = "labs/solutions/10-designs.ipynb"

TEACH = [
    md("""# Lab 10 — Five ways to say "page not present"

**Objectives.** By the end of this lab you can
1. name the four ways a host can tell a guest "page not present" (SDEI event, interrupt,
   synchronous abort, halting the vCPU) and what each needs from the guest;
2. predict, for a workload, which design takes which faults asynchronously and which
   fall back to a stall, and with which reason;
3. answer, with measurements, the question put to the arm64 series: *why does the notice
   need SDEI rather than an interrupt?*;
4. write the host's fallback decision yourself and have it checked against the host.

**Expected time:** 60–75 minutes. Running every cell takes well under a minute: the
scenarios are kept small on purpose (64-page buffers, 32 frames), so the absolute
numbers are small; the comparisons between designs are what matters."""),
    md("""## Four designs (and "sync")

The APF protocol is the same in every design: tokens, the shared 64-byte block, at most 64
faults outstanding, "page ready" as PPI 19 acknowledged with `ASYNC_PF IRQ_ACK`. What differs
is **how "page not present" reaches the guest**:

| design | "page not present" is… | the guest needs | it cannot be delivered when… |
|---|---|---|---|
| `sdei` | an SDEI event (the arm64 series) | an SDEI client + the APF client | a handler runs, the event is pending or disabled, the PE is masked |
| `irq` | a PPI, taken as an ordinary IRQ | an IRQ handler + the APF client | PSTATE.I is set (`irq_masked`) |
| `abort` | a synchronous abort at the faulting instruction (x86's #PF style) | an abort handler + the APF client | — (no reason of its own) |
| `halt` | nothing: the vCPU halts in the host until the page is in | nothing at all | PSTATE.I is set: no interrupt could end the halt |
| `sync` | APF off: the vCPU stalls | nothing | always |

For the three paravirtual designs the host also checks, before the design's own rule: is APF
enabled, and is the fault in **user mode** (or did the guest ask for kernel-mode notices with
`SEND_ALWAYS`)? After it: is this page's read already running (`repeated_fault`), is the shared
slot still full (`slot_busy`), are 64 faults outstanding (`queue_full`)? `halt` has no guest
side, so "enabled" and "user mode" do not apply to it.

![The host's first failing check, per design and situation](../assets/lab10-designs.svg)

**The question from the review (2020).** James Morse of Arm, reviewing the first version of
the series ([23 October 2020](https://lore.kernel.org/all/4dcaea7a-a4d1-9bf3-eb95-ea9d8826ad99@arm.com/);
lab 09 quotes him and the answer he got), asked why the notice needs SDEI.
SDEI events are not masked by PSTATE.I; that is their point. But the arm64 series sent "page not present" only for user-mode faults, and user
mode runs with IRQs unmasked. So why not an ordinary interrupt? The lab answers with
measurements: where does SDEI's reach (IRQ-masked kernel code) buy anything?

**The architectural catch of `irq`.** An interrupt is not an exception *at* the faulting
instruction. The architecture only promises that a pending, unmasked interrupt is taken "in
finite time", not before the next instruction. After the host re-enters the guest at the
faulting instruction, the CPU may retry that instruction first, fault again on the same
page, and exit again. A host must recognise that second fault and re-enter without stalling;
`irq_window="after_retry"` models that case (trace kind `apf_refault`). `sdei` and `abort`
do not have it: both change the PC before the guest runs another instruction."""),
    code("""import apflab
import plotly.graph_objects as go
import plotly.io as pio
from apflab import designs, plots
from apflab.delivery import describe

pio.renderers.default = "plotly_mimetype"   # figures as JSON, no copy of plotly.js per figure

for name in ("sync", "sdei", "irq", "abort", "halt"):
    d = describe(name)
    print(f"{name:<6} reasons of its own: {', '.join(d['reasons']) or '-':<46} "
          f"state to migrate: {len(d['migration_state'])} item(s)")"""),
    md("""## 1. A walker and a compute task

`memtouch`: one task walks a 64-page buffer twice with 32 frames under the memory limit (128
faults, all in user mode); a compute task runs beside it. SSD swap, 50 µs median read.

**Predict:** which designs make the walk faster than `sync`, and by roughly how much? Do
`sdei`, `irq` and `abort` differ? Does `halt`, which needs no guest support, help the walk,
the compute task, or neither? Write your guesses down before running the cell."""),
    code("""memtouch = apflab.compare_designs("memtouch", seed=0, npages=64, limit_pages=32, calc_thread=True)
rows = designs.table(memtouch)
print(designs.text(rows))"""),
    code("""# NBVAL_IGNORE_OUTPUT
fig = plots.breakdown_bar(memtouch, title="memtouch + compute: where the vCPU's time went, per design")
fig.show()"""),
    md("""What the rows say:

- `sdei`, `irq` and `abort` take every fault asynchronously and finish the walk in about
  two thirds of the `sync` time; the compute task gets about half as much work again. They
  differ in the cost of each notice (`exits / async fault`: the SDEI design pays one more
  hypercall, `COMPLETE_AND_RESUME`), a microsecond or so that hides inside a 50 µs wait.
- `halt` finishes the walk no sooner than `sync`. It is not an improvement for the faulting
  task; it lets *other* tasks run, and only when an interrupt (here the 100 µs tick)
  arrives during the wait: the guest takes it, may schedule the compute task, and the
  walker halts again when it comes back too early. More compute work, less `stalled`, the
  same elapsed time.
- `vCPU µs / async fault` divides the guest kernel's and host's time by the async faults:
  it includes the kernel's own scheduling work, so compare designs on the same scenario
  only (a model metric, not a mechanism's price). `guest lines needed` counts the lab's
  mini-kernel's lines for each design: an order of magnitude, not Linux's."""),
    md("""## 2. Reading through a system call

`syscall_read`: a task reads a 64-page buffer that starts in swap; every 2nd page is read by
the kernel through a system call (a kernel-mode access with IRQs masked, as `copy_from_user`
in a `read()`), the others by the task itself. A compute task runs beside it. The guest asks
for notices in user mode only (no `SEND_ALWAYS`).

**Predict:** for each design, how many of the 64 faults are asynchronous, and with which
reason do the others fall back? Which design finishes first?"""),
    code("""SMALL = dict(npages=64, limit_pages=32)
user_only = apflab.compare_designs("syscall_read", seed=0, **SMALL)
print(designs.text(designs.table(user_only)))"""),
    code("""def fallback_bars(results, title):
    \"\"\"Stacked bars per design: async faults, then fallbacks by reason.\"\"\"
    rows = designs.table(results)
    reasons = sorted({r for row in rows for r in row["fallbacks"]})
    names = [row["design"] for row in rows]
    fig = go.Figure([go.Bar(name="asynchronous", x=names, y=[row["async_faults"] for row in rows])])
    for reason in reasons:
        fig.add_bar(name=f"fallback: {reason}", x=names, y=[row["fallbacks"].get(reason, 0) for row in rows])
    fig.update_layout(barmode="stack", title=title, yaxis_title="faults needing I/O")
    return fig"""),
    code("""# NBVAL_IGNORE_OUTPUT
fallback_bars(user_only, "syscall_read, user-mode notices only: what happened to each fault").show()"""),
    md("""Without `SEND_ALWAYS`, `sdei`, `irq` and `abort` behave alike: the 32 user-mode reads are
asynchronous, the 32 kernel reads fall back with `kernel_mode`, before any design-specific
rule is asked. `halt` has no guest side, so `kernel_mode` does not apply; it stops at its own
rule instead: the system call runs with IRQs masked, nothing could end the halt, so
`irq_masked`. Same count, different reason."""),
    md("""## 3. The same, with `SEND_ALWAYS`

Now the guest asks for notices in kernel mode too. This is where SDEI's reach should show:
an SDEI event gets through IRQ-masked code, an interrupt does not.

**Predict:** which designs now notify the kernel-mode reads? What can the guest kernel do
with a "page not present" in the middle of a system call with IRQs masked (it cannot sleep
there)? Which design finishes first now, and what happens to the compute task's work?"""),
    code("""send_always = apflab.compare_designs("syscall_read", seed=0, send_always=True, **SMALL)
print(designs.text(designs.table(send_always)))"""),
    code("""# NBVAL_IGNORE_OUTPUT
fallback_bars(send_always, "syscall_read with SEND_ALWAYS: what happened to each fault").show()"""),
    code("""for name in ("sdei", "irq", "abort"):
    a, b = user_only[name], send_always[name]
    print(f"{name:<6} compute work {a.work['compute']:>5} -> {b.work['compute']:<5} "
          f"stalled {a.stall_ns / 1e6:.3f} -> {b.stall_ns / 1e6:.3f} ms   fallbacks {dict(b.fallbacks)}")"""),
    md("""- `irq` is unchanged: the kernel reads run with IRQs masked, so the host does not send the
  notice (`irq_masked`) and the fault stalls, as before.
- `sdei` (and `abort`, which is synchronous and ignores PSTATE.I) do deliver it. The guest
  kernel cannot park a task in the middle of a system call: it forgets the token, frees the
  slot and retries the access. The retry finds the page still in flight (`repeated_fault`):
  a stall anyway, now after a notice, a handler and an exit.
- Compare the compute task's work under each design with `sync`: a wasted notice costs the
  vCPU an exit, a handler and a retry, and that time is not the compute task's either.

So SDEI's reach buys something only if the guest can *use* a notice in IRQ-masked code, and a
kernel that cannot sleep there cannot. That is the substance of the review's question. The
`repeated_fault` stall and the ordering of the host's checks are the protocol's; how much the
rest costs comes from the lab's mini-kernel and the emulator, as said above."""),
    md("""## 4. The catch of the `irq` design

Same walker and compute task as in part 1, `irq` design only, with the interrupt taken
before the retry (`before_retry`) or after it (`after_retry`).

**Predict:** with `after_retry`, how many exits does each async fault cost, and what happens
to the walk's time? (The tick is set to 5 ms here, for a reason given below.)"""),
    code("""CATCH = dict(npages=64, limit_pages=32, calc_thread=True, tick_ns=5_000_000)
window = {w: apflab.run_scenario("memtouch", apf=True, delivery="irq", irq_window=w, seed=0, **CATCH)
          for w in ("before_retry", "after_retry")}
window["sdei"] = apflab.run_scenario("memtouch", apf=True, delivery="sdei", seed=0, **CATCH)
print(f"{'':<13} {'elapsed':>9} {'async':>5} {'refaults':>8} {'exits/fault':>11} {'vCPU µs/fault':>13} {'compute':>7}")
for label, r in window.items():
    row = designs.row(r.delivery, r)
    print(f"{label:<13} {row['elapsed_ms']:>6.3f} ms {row['async_faults']:>5} "
          f"{r.trace.counts.get('apf_refault', 0):>8} {row['exits_per_async_fault']:>11} "
          f"{row['vcpu_us_per_async_fault']:>13} {row['work_compute']:>7}")"""),
    code("""# NBVAL_IGNORE_OUTPUT
labels = list(window)
fig = go.Figure(go.Bar(x=labels, y=[designs.row(window[k].delivery, window[k])["exits_per_async_fault"]
                                    for k in labels]))
fig.update_layout(title="memtouch: vCPU exits per async fault", yaxis_title="exits")
fig.show()"""),
    md("""With `after_retry` every async fault costs one more exit (the refault the host must
recognise: 128 `apf_refault`s) and a few µs more vCPU time, taken from the compute task. The
walk's time does not move: the extra exit overlaps the page-in. A host that did *not*
recognise the refault would count a `repeated_fault` and stall: APF would lose its point.

Two effects here come from the model, not from the mechanism:

- The not-present PPI is given a higher GIC priority than the tick and the page-ready PPI, so
  it is taken before anything can switch away from the faulting task. A guest could order
  its priorities differently.
- `after_retry` is modelled by raising the PPI only at the second fault. If another interrupt
  is taken first (the tick, at its default 100 µs) and the task is switched away until its
  page is in, the notice is never raised and the shared slot stays occupied, so every later
  fault falls back with `slot_busy`. A real host would have the PPI pending already. That is
  why this part uses a 5 ms tick; with the default tick the `after_retry` run is dominated by
  this shortcut."""),
    md("""## What the model decides, and what it does not

- `exits / async fault` counts stage-2 faults and the APF/SDEI hypercalls after the first
  notice: a property of each protocol.
- `vCPU µs / async fault` includes the guest kernel's scheduling work: compare designs on one
  scenario only.
- `halt` helps only when an interrupt arrives during the wait; here that is the timer tick,
  so its benefit depends on the tick: 100 µs in this lab, 1–4 ms in Linux (250–1000 Hz).
  With Linux's tick and a 50 µs read, most waits would end before the next tick.
- The not-present PPI's GIC priority (above the tick) is the lab's choice.
- What a guest does with a kernel-mode notice is the lab's mini-kernel's choice (it drops the
  token and retries).
- An interrupt left pending while IRQs are masked is taken right after the instruction that
  unmasks them (the host watches for it), as on hardware."""),
]

EX1_INTRO = md("""## Exercise 1: which design finishes first?

Your seed draws a `syscall_read`: buffer size, how often the kernel reads a page, whether the
guest asks for `SEND_ALWAYS`, whether a compute task runs, the swap latency. Predict first,
then run `ex1.results()` (all five designs) and check.""")

EX2_INTRO = md("""## Exercise 2: count the fallbacks

Same kind of scenario; now for one design (`irq` or `halt`): which faults fall back, with
which reason, how many? Predict from the host's checks, then run `ex2.result()`.""")

EX3_INTRO = md("""## Exercise 3 (build it): the host's fallback predicate

Write the host's decision: `can_be_async(design, state)` returns the reason the host falls
back to a synchronous fault, or `None` when the fault can be asynchronous. `state` is a plain
dict (the question lists its keys). The grader puts a real machine in each state of a
catalogue drawn from your seed and asks the host (`ApfService.fallback_reason`): when your
answer differs, it tells you the case in words.""")

PREDICATE_SKELETON = code('''def can_be_async(design, state):
    """The host's decision for a fault that needs I/O: a fallback reason, or None (asynchronous).

    design: "sdei", "irq", "abort" or "halt"; state: a dict (ex3.question() lists the keys).
    """
    # TODO: the core's checks first (is APF offered and enabled? user mode, unless SEND_ALWAYS?),
    #       then the design's own (SDEI's masks; PSTATE.I for irq and halt; nothing for abort),
    #       then: the page's read already running, the shared slot busy, 64 faults outstanding.
    raise NotImplementedError

ex3.check(can_be_async)''')

PREDICATE_SOLUTION = solution("lab10-predicate", "", '''def can_be_async(design, state):
    """The host's decision for a fault that needs I/O: a fallback reason, or None (asynchronous)."""
    needs_guest = design != "halt"           # halt has no guest side
    if not state["host_offers_apf"] or (needs_guest and not state["apf_enabled"]):
        return "apf_disabled"
    if needs_guest and state["el"] != 0 and not state["send_always"]:
        return "kernel_mode"
    if design == "sdei":                      # same-priority handlers never nest (DEN0054C 6.2.1)
        if state["sdei_handler_running"]:
            return "in_handler"
        if state["sdei_event_pending"]:
            return "event_pending"
        if state["pe_masked"]:
            return "pe_masked"
        if not state["event_enabled"]:
            return "event_disabled"
    if design in ("irq", "halt") and state["pstate_i"]:
        return "irq_masked"                   # nothing could be taken: no notice, no end of halt
    if state["page_inflight"]:
        return "repeated_fault"
    if needs_guest and state["slot_busy"]:    # halt uses no shared slot
        return "slot_busy"
    if state["outstanding"] >= 64:            # ASYNC_PF_PER_VCPU
        return "queue_full"
    return None

''')

SUMMARY = md("""## Summary

- All four designs share the protocol; they differ in how "page not present" gets in and what
  blocks it. `abort` and `sdei` change the PC at once; `irq` may see the instruction retried
  first (one more exit a fault); `halt` needs no guest and only helps when an interrupt ends
  the wait.
- User-mode faults: `sdei`, `irq` and `abort` do the same work; `sdei` costs one more
  hypercall a fault.
- IRQ-masked kernel code: only `sdei` and `abort` get a notice through, and a kernel that
  cannot sleep there turns it into a stall plus overhead. The review's question has a
  measured answer in this model: for what the series delivered (user-mode faults), an
  interrupt would have done.""")

CELLS = TEACH + [
    EX1_INTRO,
    code("""from apflab.exercises.lab10 import FallbackCount, FallbackPredicate, FastestDesign

SEED = 1234                      # <- your seed
ex1 = FastestDesign(SEED)
print(ex1.question())"""),
    code("""my_answer = None                 # <- "sync", "sdei", "irq", "abort" or "halt"
ex1.check(my_answer)"""),
    md("""`ex1.hint()` nudges; `designs.text(designs.table(ex1.results()))` shows the five runs."""),
    EX2_INTRO,
    code("""ex2 = FallbackCount(SEED)
print(ex2.question())"""),
    code("""my_answer = None                 # <- e.g. {"kernel_mode": 5}
ex2.check(my_answer)"""),
    md("""`ex2.hint()` nudges; `ex2.result().fallbacks` is the measurement."""),
    EX3_INTRO,
    code("""ex3 = FallbackPredicate(SEED)
print(ex3.question())"""),
    PREDICATE_SKELETON,
    md("""`ex3.hint()` nudges; `ex3.cases()` lists the catalogue with the host's answers (self-study; off in classroom mode)."""),
    SUMMARY,
]

SOLUTION_CELLS = TEACH + [
    EX1_INTRO,
    code("""from apflab.exercises.lab10 import FallbackCount, FallbackPredicate, FastestDesign, kernel_reads

SEED = 1234
ex1 = FastestDesign(SEED)
print(ex1.question())"""),
    md("""Reason from parts 1–3: with no compute task, an async fault has nothing to hand the wait
to, so the paravirtual designs only add their cost and `halt` (no notice at all) or `sync`
wins. With a compute task and some user-mode reads, a paravirtual design wins; with
`SEND_ALWAYS` the kernel-mode notices of `sdei` and `abort` are wasted, so `irq` wins; without
it `abort` is a hair cheaper per fault than `irq`, and `sdei` is the most expensive. If every
read goes through the kernel, nothing can be asynchronous and `sync` (tied with `halt`) wins."""),
    solution("lab10-fastest", "", """p = ex1.params
if p["kernel_every"] == 1:
    guess = "sync"
elif not p["calc_thread"]:
    guess = "halt"
else:
    guess = "irq" if p["send_always"] else "abort"
res = ex1.results()                  # then run all five and read the fastest off the table
print(designs.text(designs.table(res)))
measured = min(res, key=lambda d: res[d].elapsed_ns)
print("predicted:", guess, " measured:", measured)
my_answer = measured"""),
    graded("lab10-fastest-check", 1, "ex1", "FastestDesign", "apflab.exercises.lab10", "my_answer"),
    md("""The rule above is right for most seeds, not all: the paravirtual designs are a few µs
apart, and with a 24-page buffer and `SEND_ALWAYS` the mini-kernel's scheduling can favour
`abort`. The measurement decides."""),
    EX2_INTRO,
    code("""ex2 = FallbackCount(SEED)
print(ex2.question())"""),
    solution("lab10-fallbacks", "", """p = ex2.params
n = kernel_reads(p)              # the kernel-mode reads: the only faults at risk here
if p["design"] == "halt":
    guess = {"irq_masked": n}    # no guest side: kernel_mode does not apply; IRQs are masked
elif p["send_always"]:
    guess = {"irq_masked": n}    # the kernel asked for them, but an IRQ cannot be taken there
else:
    guess = {"kernel_mode": n}   # user-mode notices only
print("predicted:", guess, " measured:", dict(ex2.result().fallbacks))
my_fallbacks = guess"""),
    graded("lab10-fallbacks-check", 1, "ex2", "FallbackCount", "apflab.exercises.lab10", "my_fallbacks"),
    EX3_INTRO,
    code("""ex3 = FallbackPredicate(SEED)
print(ex3.question())"""),
    PREDICATE_SOLUTION,
    graded("lab10-predicate-check", 3, "ex3", "FallbackPredicate", "apflab.exercises.lab10", "can_be_async"),
    SUMMARY,
]
