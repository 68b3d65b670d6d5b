"""Lab 08: post-copy live migration. Cells for labs/08-postcopy.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/08-postcopy.ipynb"
SOLUTION = "labs/solutions/08-postcopy.ipynb"

TEACH = [
    md("""# Lab 08 — Post-copy live migration: the other source of missing pages

**Objectives.** By the end of this lab you can
1. describe post-copy migration: the guest runs on the destination while its pages are
   still on the source, fetched on demand and pushed by a background stream;
2. compute how long the post-copy phase lasts from the number of pages, the link's
   bandwidth and the round trip;
3. measure the guest's work until migration completes with APF off and on, and compare it
   with what the arm64 series' cover letters report, and say what Google's published
   scheme is (and what it does not say).

""" + expected_time(60, "how long does post-copy take (predict)")),
    md("""## Pre-copy, post-copy

Live migration moves a running VM to another host. **Pre-copy** sends memory first while
the guest keeps running (and dirtying pages), then pauses it briefly to send the rest and
switch. **Post-copy** switches first: the guest resumes on the destination at once, and
every page it has not received yet is fetched from the source when touched, while a
background stream pushes the rest. The switch is quick and each page crosses the network
once, but until the last page arrives every touch of a missing page is a stage-2 fault
that waits a network round trip. That is the same problem as swap, on a network, and the
arm64 APF series measured migration too. Its v3 cover letter (Gavin Shan, 7 May 2021,
"[PATCH v3 00/15] Support Asynchronous Page Fault", message-id
`20210507084053.44407-1-gshan@redhat.com` on lore.kernel.org) reports the calculation
thread's speed 68% and 69.3% higher with APF during a live migration of a guest that
writes all its memory (the letter does not say whether QEMU used post-copy). Its v4 cover
letter (15 Aug 2021, `20210815005947.83699-1-gshan@redhat.com`) measured a short migration
(~1.6 s, ~100 async faults): the test's time 3–7% shorter with a calculation thread, ~14%
longer without one.

In apflab the `postcopy` scenario moves every page of a walker's buffer to the source at
switch-over (`REMOTE`), starts the stream, and runs until no page is left there. One link
carries the stream and the demand fetches: a demanded page is sent next, ahead of the
stream; a page is never sent twice.

![Post-copy: one link, a stream and demand fetches](../assets/lab08-postcopy.svg)"""),
    md("""## One migration, APF off and on

128 pages (512 KiB), a 1 GbE link (125,000,000 bytes/s), 200 µs round trip; a walker
goes through the buffer over and over, and a compute task runs beside it. The scenario
measures the work both tasks did until the migration completed."""),
    *predict("With APF on, will the migration finish sooner? Will the vCPU stall less? Will the "
             "walker or the compute task do more work, and how many of the 128 pages will be "
             "demand-faulted rather than streamed, APF off and on?", "predicted",
             '{"sooner": None, "stall": None, "more work": None, "faults off/on": None}'),
    code("""import apflab
import plotly.io as pio
from apflab import plots
from apflab.scenarios import compare
from apflab.sweep import sweep

pio.renderers.default = "plotly_mimetype"   # figures as JSON, no copy of plotly.js per figure

off, on = compare("postcopy", seed=0, npages=128)
print(f"{'':<8} {'migration':>10} {'faults':>6} {'stalled':>10} {'walk':>5} {'compute':>7} {'total':>6}")
for r in (off, on):
    print(f"APF {'on ' if r.apf else 'off'} {r.elapsed_ns / 1e6:>7.3f} ms {r.faults:>6} "
          f"{r.stall_ns / 1e6:>7.3f} ms {r.work['memtouch']:>5} {r.work['compute']:>7} {r.work['total']:>6}")
print(f"work done until migration completed: {on.work['total'] / off.work['total'] - 1:+.0%} with APF")"""),
    md("""- The migration took exactly as long either way: the link decides that, not the guest.
- APF off, the vCPU spent more than half of the migration stalled on demand faults.
  APF on it never stalled, and the compute task did twice the work. The walker itself did
  not get further (112 units both times): it waits for pages either way.
- APF on, *every* page was demand-faulted, against 85 of 128 with APF off. Stalled, the
  vCPU lets the stream run ahead of the walker; with APF the walker keeps running into
  the stream's frontier and asks for each page itself.

The breakdown and the first half millisecond of each timeline:"""),
    code("""modes = list(off.breakdown)
print(f"{'ms':<8}" + "".join(f"{m:>9}" for m in modes))
for r in (off, on):
    print(f"APF {'on ' if r.apf else 'off'} " + "".join(f"{r.breakdown[m] / 1e6:>9.3f}" for m in modes))"""),
    code("""# NBVAL_IGNORE_OUTPUT
plots.breakdown_bar({"APF off": off, "APF on": on}, title="Post-copy, 128 pages: where the vCPU's time went").show()
plots.timeline(off, t1=500_000, title="APF off: the first 0.5 ms").show()
plots.timeline(on, t1=500_000, title="APF on: the first 0.5 ms").show()"""),
    md("""## The link sets the clock

How does the migration time move with the round trip and the bandwidth? Two small sweeps
(APF off and on at each point; the compute task runs beside the walker)."""),
    *predict("Going from 100 µs to 2 ms of round trip, by how much does the migration time grow? "
             "And from 1 GbE to 10 GbE, by what factor does it shrink?", "predicted_link",
             "(None, None)   # (ms added, factor)"),
    code("""def pairs(rows, key):
    out = {}
    for row in rows:
        out.setdefault(row[f"param.{key}"], {})[row["apf"]] = row
    return out

rows = sweep("postcopy", {"rtt_ns": [100_000, 200_000, 500_000, 1_000_000, 2_000_000]},
             workers=1, progress=False, npages=128)
print(f"{'RTT':>8} {'migration':>10} {'stalled (off)':>13} {'work off':>8} {'work on':>7} {'gain':>5}")
for rtt, p in pairs(rows, "rtt_ns").items():
    a, b = p[False], p[True]
    print(f"{rtt / 1e3:>6g}µs {a['elapsed_ns'] / 1e6:>7.3f} ms {a['stall_ns'] / 1e6:>10.3f} ms "
          f"{a['work_total']:>8} {b['work_total']:>7} {b['work_total'] / a['work_total'] - 1:>+5.0%}")"""),
    code("""rows = sweep("postcopy", {"bandwidth_bytes_per_s": [125_000_000, 312_500_000, 1_250_000_000]},
             workers=1, progress=False, npages=128)
print(f"{'bytes/s':>13} {'migration':>10} {'faults off/on':>13} {'stalled (off)':>13} {'work off':>8} {'work on':>7}")
for bw, p in pairs(rows, "bandwidth_bytes_per_s").items():
    a, b = p[False], p[True]
    print(f"{bw:>13,} {a['elapsed_ns'] / 1e6:>7.3f} ms {a['faults']:>6}/{b['faults']:<6} "
          f"{a['stall_ns'] / 1e6:>10.3f} ms {a['work_total']:>8} {b['work_total']:>7}")"""),
    md("""Look at the differences, not the values. Going from 100 µs to 2 ms of round trip adds
exactly 0.95 ms, half of the 1.9 ms added to the round trip: only the *last* page's
journey to the destination is on the clock. And the bandwidth divides everything else:
ten times the bandwidth, ten times less link time per page.

The gain from APF grows with the round trip: each demand fault hides a longer wait. On a
faster link the whole migration is short (half a millisecond at 10 GbE), the walker
catches up with the stream less often, and the vCPU stalls less with APF off: there is
less to win. At these short run lengths the work counts (reported in batches of 16 units)
are coarse, so compare the stalled time rather than the percentages."""),
    md("""## At scale

Google's "VM Live Migration At Scale" (Ruprecht et al., VEE 2018) describes how Google
Compute Engine migrates VMs: pre-copy first, then post-copy for the pages still missing
after the switch-over — not post-copy alone. Its figures for migration counts and blackout
times are in the paper. Whether Google's hypervisor uses async page faults is not
something this lab has a source for, so it says nothing about it.

What would post-copy mean for a real guest in our link model? The last page of a 4 GiB
guest leaves the source after about"""),
    code("""PAGE = 4096
for gib, link, bw in [(4, "10 GbE", 1_250_000_000), (4, "25 GbE", 3_125_000_000), (64, "25 GbE", 3_125_000_000)]:
    pages = gib << 30 >> 12
    seconds = pages * PAGE / bw
    print(f"{gib:>3} GiB over {link}: {pages:>10,} pages, {seconds:5.1f} s of post-copy")"""),
    md("""seconds, not milliseconds: post-copy trades a short blackout for a long tail during
which any touch of a page not yet moved costs a round trip (or more, behind the stream).
In our run that tail cost the vCPU more than half its time without APF. APF does not
shorten the tail; it lets the guest do other work during it, which is why the arm64 series
reported post-copy alongside swap."""),
]

EXERCISE_INTRO = md("""## Exercise: how long does post-copy take?

Your seed draws a buffer size, a round trip and a link. Predict when the last page has
arrived (virtual ms after the switch-over). The check accepts a prediction within 5%.""")

CELLS = TEACH + [
    EXERCISE_INTRO,
    code("""from apflab.exercises.lab08 import MigrationTime

SEED = 1234                      # <- your seed
ex = MigrationTime(SEED)
print(ex.question())"""),
    code("""my_answer = None                 # <- your prediction, in ms
ex.check(my_answer)"""),
    md("""`ex.hint()` nudges when you ask; in self-study `ex.answer()` runs the scenario and gives
the measured time (switched off in classroom mode)."""),
    code("""# ex.hint()                      # uncomment when you want a hint"""),
    md("""## Summary

- Post-copy resumes the guest first and moves its memory afterwards: every touch of a page
  still on the source is a stage-2 fault that waits a round trip.
- The migration time is set by the link: pages × 4096 B / bandwidth + half a round trip
  for the last page. The guest cannot change it; APF does not either.
- What APF changes is the guest's work meanwhile: here +90% (1 GbE, 200 µs), more with a
  longer round trip; the arm64 series' v3 cover letter reports +68% calculation speed
  during a live migration (post-copy or not, it does not say).
- Google's published scheme (VEE 2018) is pre-copy followed by post-copy."""),
]

SOLUTION_CELLS = TEACH + [
    EXERCISE_INTRO,
    code("""from apflab.exercises.lab08 import MigrationTime

SEED = 1234
ex = MigrationTime(SEED)
print(ex.question())"""),
    solution("lab08-migration", "", """p = ex.params
page_tx_ns = 4096 * 1e9 / p["bandwidth_bytes_per_s"]     # one page on the wire
my_answer = (p["npages"] * page_tx_ns + p["rtt_ns"] / 2) / 1e6
print(f"{p['npages']} x {page_tx_ns:,.0f} ns + {p['rtt_ns'] // 2:,} ns = {my_answer:.4f} ms")"""),
    graded("lab08-migration-check", 2, "ex", "MigrationTime", "apflab.exercises.lab08", "my_answer"),
]
