"""Lab 05: stage-2 faults. Cells for labs/05-stage2-faults.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/05-stage2-faults.ipynb"
SOLUTION = "labs/solutions/05-stage2-faults.ipynb"

TEACH = [
    md("""# Lab 05 — Stage-2 faults: when a guest page is not there

**Objectives.** By the end of this lab you can
1. say what a stage-2 fault is and who handles it;
2. follow one page from guest RAM to swap and back, in the page's state and in the trace
   (`stage2_fault`, `page_in_start`, `page_in_done`, `stall`);
3. explain why a missing page stops the whole vCPU when the host handles it synchronously;
4. measure how the stall per fault follows the swap device's latency, and how a host
   memory limit turns a working set that does not fit into a fault on every touch.

""" + expected_time(60, "predict the stall (predict)")),
    md("""## Two stages of translation

A guest kernel translates its virtual addresses to what it believes are physical addresses:
that is **stage 1**. On Arm those are really *intermediate* physical addresses (IPAs); the
hypervisor owns a second table, **stage 2**, from IPA to the host's real frames. When
stage 2 has no mapping for an IPA the access cannot complete: the CPU takes a *stage-2
abort* to the hypervisor (EL2), with the faulting IPA in hand.

Most stage-2 faults are cheap: the page was never touched (map a zero page) or the host
still has it (map it again). The expensive kind is a page the host pushed out to **swap**
to stay under a memory limit: it must be read back from a device first. Until it is, the
instruction that touched it cannot retire, and with the classic synchronous handling the
vCPU simply waits in the host: it is **stalled**.

In apflab every guest page has a state, and a page really moves: its bytes leave guest RAM
(the frame is zeroed) and live in the store until a page-in copies them back.

![Stage-2 translation and the page lifecycle](../assets/lab05-stage2.svg)"""),
    md("""## One page, out and back

A four-instruction guest loads a 64-bit value from the page at `0x4010_0000`. From Python
we act as the host: write the value, then evict the page to swap before the guest runs.
`m.read_u64` still sees the value: the host reads wherever the page lives."""),
    code("""import apflab
import plotly.io as pio
from apflab import plots

pio.renderers.default = "plotly_mimetype"   # figures as JSON, no copy of plotly.js per figure

DATA = apflab.RAM_BASE + 0x10_0000          # a page far past the program

m = apflab.Machine(seed=0)                  # swap on an SSD by default
m.load_asm('''
_start:
    movz x1, #0x4010, lsl #16   // x1 = 0x4010_0000 (DATA)
    ldr  x0, [x1]               // the load: is the page there?
    add  x0, x0, #1
    brk  #0
''')
m.write_u64(DATA, 41)
print("after the host's write:", m.page_state(DATA).name)
m.evict(DATA)
print("after evict:           ", m.page_state(DATA).name, "| the host still reads", m.read_u64(DATA))"""),
    md("""Now run the guest and print what the trace recorded. `show` is a small helper used
in the rest of the lab: one line per trace record, time in virtual nanoseconds."""),
    code("""ADDRESS_FIELDS = ("ipa", "pc", "gpa", "entry", "resume", "vector", "fid", "pstate", "esr", "token")   # shown in hex

def show(records):
    for rec in records:
        fields = ", ".join(f"{k}={v:#x}" if k in ADDRESS_FIELDS else f"{k}={v}" for k, v in rec.fields)
        print(f"{rec.t_ns:>9,} ns  {rec.kind:<17} {fields}")

start = len(m.trace.records)
r = m.run(max_instructions=100)
print(f"x0 = {m.reg('x0')}; the page is {m.page_state(DATA).name} again")
print(f"{r.instructions} instructions took {r.elapsed_ns:,} ns of virtual time\\n")
show(m.trace.records[start:])"""),
    md("""Read the records in order:

- `stage2_fault`: the load at `pc` touched IPA `0x40100000` (guest page number `gpn` 256),
  whose state was `swapped`; the guest was at EL1.
- `apf_fallback reason=apf_disabled`: the host would rather not stall, but this guest never
  enabled asynchronous page faults (lab 06), so it takes the synchronous path.
- `page_in_start`: the host charged its fault handling (2.5 µs) and started the read;
  `done_ns` is when the SSD will have it.
- `page_in_done`, then `stall`: the vCPU waited the whole read; `ns` says how long.
- `stop`: the load retried, hit, and the guest reached `brk #0`.

Where did the vCPU's time go? The trace charges every nanosecond to one mode:"""),
    code("""for mode, ns in m.trace.breakdown().items():
    print(f"{mode:<8} {ns:>7,} ns")"""),
    md("""Four instructions ran in 4 ns; almost everything else is `stalled`. That is the
point of this lab in one line: **a missing page stops the vCPU**, not just the task that
touched it. Whatever else the guest could have run on this vCPU (another task, the kernel's
own work) waits too, because the guest does not even know it is waiting: from its side
one load took 47 µs."""),
    md("""## Stall time per fault follows the device

The `memtouch` scenario boots the lab's guest kernel with one task that walks a buffer,
one load and one store per page; every page starts in swap. With APF off and nothing
else to run, each fault stalls the vCPU for one read. Let us try the stores apflab models
(`apflab.backing` documents where each figure comes from): an NVMe SSD (50 µs median,
lognormal spread σ = 0.3), the same SSD made faster or slower with `latency_ns`, and a
7200 rpm disk (13 ms median, σ = 0.35)."""),
    *predict("A 64-page walk, two rounds, 32 frames for the buffer, APF off: how many faults, and "
             "how long is the stall per fault on the default SSD (50 µs median): below, at or "
             "above 50 µs?", "predicted", "(None, None)   # (faults, µs per fault)"),
    code("""import math
from apflab import backing
from apflab.scenarios import run_scenario

STORES = [("ssd", 10_000), ("ssd", None), ("ssd", 150_000), ("ssd", 1_000_000), ("hdd", None)]
MEDIAN = {"ssd": backing.SSD_LATENCY_NS, "hdd": backing.HDD_LATENCY_NS}
SIGMA = {"ssd": backing.SSD_JITTER, "hdd": backing.HDD_JITTER}

by_store = {}
print(f"{'store':<5} {'median':>9} {'faults':>6} {'stalled':>12} {'per fault':>11} {'/ median':>8}"
      f" {'exp(σ²/2)':>9}")
for store, latency in STORES:
    r = run_scenario("memtouch", apf=False, seed=0, store=store, latency_ns=latency,
                     npages=64, limit_pages=32, calc_thread=False)
    median = latency or MEDIAN[store]
    per_fault = r.stall_ns / r.faults
    by_store[(store, median)] = r
    print(f"{store:<5} {median / 1e3:>7g}µs {r.faults:>6} {r.stall_ns / 1e6:>9.3f} ms "
          f"{per_fault / 1e3:>8.1f} µs {per_fault / median:>8.3f} {math.exp(SIGMA[store] ** 2 / 2):>9.3f}")"""),
    md("""The stall per fault is the device's latency, a little above the median: a
lognormal's mean is its median × exp(σ²/2), and APF off means one read at a time, so no
read ever waits behind another. The disk's row is the reason hypervisors swap as little as
they can: 128 faults cost 1.7 *seconds* of a vCPU that did nothing.

The histogram shows each stall's duration for three of the runs (the figure is drawn from
the same `stall` records)."""),
    code("""# NBVAL_IGNORE_OUTPUT
fig = plots.stall_histogram({"SSD 10 µs": by_store[("ssd", 10_000)],
                             "SSD 50 µs": by_store[("ssd", 50_000)],
                             "SSD 150 µs": by_store[("ssd", 150_000)]},
                            title="Stall durations, APF off")
fig.show()"""),
    md("""## The memory limit makes the faults

Why did a 64-page walk fault 128 times? The host's memory limit (like a memory cgroup)
left 32 frames for the buffer. Every page starts in swap, so the first round faults on all
64; bringing page 33 in evicts the oldest resident page (FIFO), and so on. When the second
round starts, page 0 is long gone again. Sweep the limit and count the faults of a
three-round walk."""),
    *predict("For a 3-round walk over 64 pages, how many faults with a limit of 48, 63 and 64 "
             "frames?", "predicted_faults", "{48: None, 63: None, 64: None}"),
    code("""from apflab.sweep import sweep

rows = sweep("memtouch", {"limit_pages": [16, 32, 48, 63, 64, 96]}, apf=(False,),
             workers=1, progress=False, npages=64, rounds=3, calc_thread=False)
print(f"{'limit':>5} {'faults':>6} {'stalled':>10}")
for row in rows:
    print(f"{row['param.limit_pages']:>5} {row['faults']:>6} {row['stall_ns'] / 1e6:>7.3f} ms")"""),
    code("""# NBVAL_IGNORE_OUTPUT
fig = plots.sweep_lines(rows, x="param.limit_pages", y="faults",
                        title="Faults of a 3-round walk over 64 pages, by memory limit")
fig.show()"""),
    md("""A cliff, not a slope: with 63 frames a sequential walk over 64 pages still faults on
every single touch (FIFO, like LRU, always evicts exactly the page the walk will need
soonest), and with 64 only the first round faults. Working sets just above a memory limit
are the worst case for a host, and the case APF was proposed for."""),
]

EXERCISE_INTRO = md("""## Exercise: predict the stall

Your seed draws a swap device, a buffer, a number of rounds and a memory limit. Predict the
total stall time before running anything: faults × the mean read time. The check accepts a
prediction within 20% of the measured value (reads are drawn from a seeded lognormal
spread, so the product is close, not exact).""")

CELLS = TEACH + [
    EXERCISE_INTRO,
    code("""from apflab.exercises.lab05 import PredictStall

SEED = 1234                      # <- your seed
ex = PredictStall(SEED)
print(ex.question())"""),
    code("""my_answer = None                 # <- your prediction, in ms
ex.check(my_answer)"""),
    md("""`ex.hint()` nudges when you ask; in self-study `ex.answer()` runs the scenario and gives
the measured value (switched off in classroom mode)."""),
    code("""# ex.hint()                      # uncomment when you want a hint"""),
    md("""## Summary

- A stage-2 fault is the hypervisor's page fault: the guest's IPA has no host frame.
- A page in swap costs one device read; handled synchronously, the whole vCPU stalls for it
  (`stall` records, the `stalled` mode), whatever else the guest had to run.
- Stall per fault ≈ the device's mean read time: ~52 µs on the default SSD, ~14 ms on a disk.
- A memory limit below the working set makes a sequential walk fault on every touch; one
  frame short is as bad as half.

Lab 06 lets the host tell the guest instead of freezing it."""),
]

SOLUTION_CELLS = TEACH + [
    EXERCISE_INTRO,
    code("""from apflab.exercises.lab05 import PredictStall

SEED = 1234
ex = PredictStall(SEED)
print(ex.question())"""),
    solution("lab05-stall", "", """p = ex.params
rounds_faulting = p["rounds"] if p["npages"] > p["limit_pages"] else 1   # fits: only round 1
faults = p["npages"] * rounds_faulting
mean_read_ns = p["latency_ns"] * math.exp(SIGMA[p["store"]] ** 2 / 2)
my_answer = faults * mean_read_ns / 1e6
print(f"{faults} faults x {mean_read_ns / 1e3:.1f} µs = {my_answer:.3f} ms")"""),
    graded("lab05-stall-check", 2, "ex", "PredictStall", "apflab.exercises.lab05", "my_answer"),
]
