"""Lab 06: asynchronous page faults step by step. Cells for labs/06-apf-steps.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from apflab.exercises import holes
from apflab.exercises.build import PageNotPresentEntry, PageReadyHandler
from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/06-apf-steps.ipynb"
SOLUTION = "labs/solutions/06-apf-steps.ipynb"

TEACH = [
    md("""# Lab 06 — Asynchronous page faults, step by step

**Objectives.** By the end of this lab you can
1. name the pieces of the arm64 APF protocol: the KVM vendor hypercalls, the shared block
   {reason, token}, SDEI event 1 for "page not present", PPI 19 for "page ready", IRQ_ACK;
2. drive one fault through the lab's guest kernel with `run_until`, and read at each stop
   what the shared block, the kernel's task states and the host's work queue hold;
3. list the cases where the host falls back to the synchronous stall, and provoke two;
4. predict which task runs while a task waits for its page, and which token a fault gets;
5. write the guest's two APF handlers yourself — the "page ready" interrupt handler and the
   "page not present" SDEI entry — and have them graded by running the kernel with them.

""" + expected_time(150, "who runs while task 0 waits (predict), which token (predict / "
                    "measure), the page-ready handler (build), the page-not-present entry "
                    "(build), the first fault and the first page ready (Explorer, measure)")),
    md("""## The protocol (the lab's host: `apflab/apf.py`; docs/DESIGN.md)

**Discovery and set-up.** The guest asks the KVM vendor service (`hvc #0`, owner 6):

| call | x1 | returns |
|---|---|---|
| `0x86000000` VENDOR_HYP_KVM_FEATURES | – | bitmap; bit 2 = ASYNC_PF (the unmerged arm64 series' numbering; mainline Linux has no such bit) |
| `0x86000002` ASYNC_PF | 0 VERSION | `0x010000` |
| | 1 SLOTS | 64: outstanding faults per vCPU |
| | 2 SDEI | the SDEI event for "page not present" (1) |
| | 3 IRQ | the PPI for "page ready" (19 in the lab; 27 is the timer) |
| | 4 ENABLE | x2/x3 = address of the 64-byte shared block \\| flags (bit 0 ENABLED) |
| | 5 IRQ_ACK | the guest consumed a "page ready": lower the PPI, send the next |

The guest registers and enables SDEI event 1 *before* ENABLE (the host refuses otherwise).

**The shared block** `{u32 reason; u32 token; u8 pad[56]; u32 enabled}`: the host writes
reason (1 PAGE_NOT_PRESENT, 2 PAGE_READY) and token, the guest reads them and writes both
back to 0. A non-zero reason means "slot busy".

**A fault.** The host queues the page-in under a token `(id << 12) | vcpu_id`, writes
{1, token} and raises SDEI event 1: the guest's handler parks the current task on that
token and switches to another. When the page is in, the host maps it, writes {2, token}
and raises PPI 19; the guest's IRQ handler wakes the task and calls IRQ_ACK.

![The APF sequence between guest and host](../assets/apf-sequence.svg)

![The four stops of this lab](../assets/lab06-apf-steps.svg)"""),
    md("""## A guest to step through

`apflab.widgets.build_guest` sets up what the `memtouch` scenario runs: the lab's guest
kernel with task 0, a walker over 8 pages that all start in swap, and task 1, a compute
loop. We keep the machine and read it between stops. Two helpers read the guest's side:
the shared block, straight from guest memory, and each task's state from the kernel's own
arrays (`apflab.guest.read_kernel_state`)."""),
    code("""import struct
import apflab
import plotly.io as pio
from apflab import guest, plots
from apflab.widgets import build_guest

pio.renderers.default = "plotly_mimetype"   # figures as JSON, no copy of plotly.js per figure

g = build_guest(seed=0, npages=8, limit_pages=8)
m, syms = g.machine, g.symbols
code_labels = sorted((addr, name) for name, addr in syms.items() if addr < syms["kernel_end"])

def symbol_at(pc):              # the nearest label at or before pc, as label+offset
    addr, name = max((a, n) for a, n in code_labels if a <= pc)
    return name if addr == pc else f"{name}+{pc - addr:#x}"

ADDRESS_FIELDS = ("ipa", "pc", "gpa", "entry", "resume", "vector", "fid", "pstate", "esr", "token")   # shown in hex

def show(records):
    for rec in records:
        fields = ", ".join(f"{k}={v:#x}" if k in ADDRESS_FIELDS else f"{k}={v}" for k, v in rec.fields)
        print(f"{rec.t_ns:>9,} ns  {rec.kind:<17} {fields}")

def shared_block():
    reason, token = struct.unpack("<II", m.read(syms["apf_data"], 8))
    return f"reason={reason} token={token:#x}"

def task_states():
    ks = guest.read_kernel_state(m, syms)
    return ", ".join(f"task {t['index']} {t['state']}" for t in ks["tasks"])

def where():
    return f"vCPU at {symbol_at(m.vcpu.pc)}, EL{m.vcpu.el}"

rec = m.run_until("apf_enable")
apf = guest.read_kernel_state(m, syms)["apf"]
print(f"features {apf['features']:#x}  version {apf['version']:#x}  slots {apf['slots']}  "
      f"SDEI event {apf['sdei_event']}  page-ready PPI {apf['irq']}")
show([rec])
print("shared block:", shared_block())"""),
    md("""The kernel has discovered APF, registered event 1 and enabled the block (`gpa`). The
scheduler has not run yet. Each stop below runs the guest until the trace records one
kind of event, then prints the records since the previous stop and the state."""),
    md("""### Stop 1: `apf_not_present`"""),
    code("""start = len(m.trace.records)
rec = m.run_until("apf_not_present")
show(m.trace.records[start:])
print()
print("shared block:", shared_block())
print("tasks:       ", task_states())
print("host queue:  ", m.apf.snapshot()["outstanding"])
print(where())"""),
    md("""Task 0 loaded from its first page (`stage2_fault`, state `swapped`, `el=0`: user
mode). The host started the read, queued work item `token=0` (the first fault of this
vCPU: id 0, vcpu 0), wrote {1, 0} into the shared block and raised SDEI event 1, which was
dispatched in the same exit: the vCPU is already at the kernel's handler entry
`sdei_apf_entry`. No `stall` record: the vCPU does not wait. The kernel has not yet done
anything about it, so task 0 is still `runnable`."""),
    md("""### Stop 2: `sdei_complete`"""),
    code("""start = len(m.trace.records)
rec = m.run_until("sdei_complete")
show(m.trace.records[start:])
print()
print("shared block:", shared_block())
print("tasks:       ", task_states())
print("kernel table:", guest.read_kernel_state(m, syms)["apf"]["table"])
print(where())"""),
    md("""The handler recorded token 0 → task 0 in its table, marked task 0 `apf_wait`, freed
the slot (both words back to 0) and left with COMPLETE_AND_RESUME into its own IRQ vector
(`resume` = `vectors+0x480`, "IRQ from EL0"): the interrupted state of task 0 becomes an
IRQ exception from EL0, and that path reschedules. Task 0 will retry its load when it runs again."""),
    md("""### Stop 3: `apf_page_ready`"""),
    code("""start = len(m.trace.records)
rec = m.run_until("apf_page_ready")
show(m.trace.records[start:])
print()
print("shared block:", shared_block())
print("tasks:       ", task_states())
print("PPI 19 pending:", m.host.gic.is_pending(19))"""),
    md("""Meanwhile task 1 computed: each `exception what=svc` is its `work_add` system call.
About 47 µs after the fault the read finished: the host mapped the page
(`page_in_done`), wrote {2, 0} and raised the line of PPI 19 (`irq_line`). Task 0 is still
parked; `waited_ns` is how long its page took."""),
    md("""### Stop 4: `apf_ack`"""),
    code("""start = len(m.trace.records)
rec = m.run_until("apf_ack")
show(m.trace.records[start:])
print()
print("shared block:", shared_block())
print("tasks:       ", task_states())
print("host queue:  ", m.apf.snapshot()["outstanding"])"""),
    md("""The guest took the interrupt (`irq`, `irq_ack`: it read IAR), found token 0 in its
table, woke task 0, cleared the slot and made the IRQ_ACK hypercall: the host lowered the
line and retired the work item. Then the guest wrote EOI. Task 0 is `runnable` again and
the woken task asked for a reschedule, so it runs at the next return to user space.

What did the vCPU do between the fault and the acknowledgement? The trace's time spans
say, per mode and per task."""),
    *predict("Of the time between the fault and the IRQ_ACK, roughly what share went to task 1 at "
             "EL0, and what share to the protocol (SDEI handler, kernel, host)?", "predicted_share",
             '{"task 1": None, "protocol": None}   # fractions of the window'),
    code("""t0 = m.trace.select("apf_not_present")[0].t_ns
t1 = m.trace.select("apf_ack")[0].t_ns
spent = {}
for a, b, mode, task in m.trace.spans:
    a, b = max(a, t0), min(b, t1)
    if b > a:
        key = (mode, "idle/kernel" if task is None else f"task {task}")
        spent[key] = spent.get(key, 0) + b - a
print(f"from the fault ({t0:,} ns) to IRQ_ACK ({t1:,} ns): {t1 - t0:,} ns")
for (mode, who), ns in sorted(spent.items(), key=lambda kv: -kv[1]):
    print(f"  {mode:<8} {who:<12} {ns:>7,} ns")"""),
    md("""Nearly all of it is task 1 at EL0: the time APF off would have spent stalled. The
SDEI handler (`handler`), the kernel's switch and IRQ paths (`el1`) and the host's work
(`host`: the fault, two injections, hypercalls) are what the protocol costs.

The timeline shows the same window: one row per task, bars coloured by mode, markers for
"not present" and "page ready"."""),
    code("""# NBVAL_IGNORE_OUTPUT
fig = plots.timeline(m, t0=t0 - 2_000, t1=t1 + 2_000, title="One async page fault")
fig.show()"""),
    md("""## When the host falls back

APF is a best effort. Before it sends "page not present" the host checks, in this order
(`apflab.apf.FALLBACKS` names them; KVM's x86 conditions are in `kvm_can_do_async_pf`
and `kvm_arch_setup_async_pf`, arch/x86/kvm/x86.c):

| reason | meaning |
|---|---|
| `apf_disabled` | the guest did not enable APF, or the host does not offer it |
| `kernel_mode` | the fault was taken at EL1: without SEND_ALWAYS only user-mode faults are sent (x86 Linux set SEND_ALWAYS in preemptible kernels, `CONFIG_PREEMPT`/`CONFIG_PREEMPTION`, until 5.8 restricted async page faults to user space; the lab's guest never sets it) |
| `in_handler` | an SDEI handler is running: the event cannot be delivered now |
| `event_pending` | an earlier event 1 is still waiting to be dispatched |
| `pe_masked` | the guest masked SDEI on this PE (PE_MASK) |
| `event_disabled` | event 1 is disabled |
| `repeated_fault` | the page is already being read in |
| `slot_busy` | the shared block still holds an unconsumed reason |
| `queue_full` | 64 faults already outstanding |

Any of these means the synchronous path: the vCPU stalls. Two of them provoked from the
host side: first mask SDEI on the PE (what the guest's PE_MASK call does)…"""),
    code("""from apflab.widgets import set_pe_masked

set_pe_masked(m, True)
start = len(m.trace.records)
rec = m.run_until("stall")
set_pe_masked(m, False)
show([r for r in m.trace.records[start:] if r.kind in ("stage2_fault", "apf_fallback", "stall")])"""),
    md("""…then swap out a page of the guest *kernel* (a host cannot tell kernel pages from
user pages: it swaps whatever it thinks is coldest). Take the page that holds the SDEI
handler, which it shares with the kernel's IRQ entry path. The next time the kernel runs
code from it, the instruction fetch faults at EL1, and a fault in kernel mode is never
sent: `kernel_mode`, a stall."""),
    *predict("Which instruction faults first after that page is evicted (which kernel label), and "
             "how long does the vCPU stall?", "predicted_kernel_fault", '(None, None)   # (label, ns)'),
    code("""gpn = m.stage2.gpn_of(syms["sdei_apf_entry"])
m.stage2.unpin(gpn)          # the lab pins the kernel; a real host does not
m.stage2.evict(gpn)
start = len(m.trace.records)
rec = m.run_until("stall")
show([r for r in m.trace.records[start:] if r.kind in ("stage2_fault", "apf_fallback", "stall")])
print("the fetch was at", symbol_at(m.trace.select("stage2_fault")[-1].get("pc")))
print()
print("fallbacks so far:", dict(m.apf.fallbacks))
print("async faults so far:", m.apf.not_present_count)"""),
    md("""## Explore it yourself

The `Explorer` widget wraps the same machine: run to the next fault, SDEI dispatch,
interrupt or page-ready; step single instructions; step back (it replays every action but
the last on a fresh machine with the same seed); evict pages, mask the PE, fill the 64
slots or switch APF off, and watch the page map, the shared block and the trace log."""),
    code("""# NBVAL_IGNORE_OUTPUT
from apflab.widgets import Explorer

explorer = Explorer(seed=0, npages=8, limit_pages=8)
explorer"""),
    md("""Every button is also a method, so a cell can drive it (and its messages are
deterministic):"""),
    code("""print(explorer.run_until("fault"))
print(explorer.run_until("sdei"))
print(explorer.run_until("ready"))
print(explorer.step_back())
s = explorer.state()
print("pages:", s["pages"], "| outstanding:", s["apf"]["outstanding"], "| actions:", s["actions"])"""),
]

EXERCISE_INTRO = md("""## Exercises: follow the scheduler

Your seed draws a task list for the same kernel: task 0 is a walker whose buffer is in
swap, the others are walkers or compute loops. The kernel schedules round robin (the next
*runnable* task after the one that ran last), with a 100 µs tick, and a task woken by
"page ready" asks for a reschedule. Each first touch of a walker faults and is sent
asynchronously; a read takes about 50 µs.""")

EX12_SETUP = code("""from apflab.exercises.lab06 import FirstToken, WhileTask0Waits

SEED = 1234                      # <- your seed
ex1 = WhileTask0Waits(SEED)
print(ex1.question())""")

BUILD_INTRO = [
    md("""## Exercise 3 (build it): the "page ready" handler

Now write the guest's side yourself. `ex3.skeleton()` is the kernel's `apf_page_ready` with
holes: it assembles and runs, but no task is ever woken. Fill the TODOs in the string below.
`ex3.check(code)` puts your code into the lab's kernel in place of its own (between the
`// STUDENT-BEGIN page_ready_irq` and `// STUDENT-END page_ready_irq` markers in
`apflab/guest/kernel.S`), runs your seed's task mix on an instruction budget, and says in
words what went wrong: which task was never woken, which token woke the wrong task, whether
the slot was freed, IRQ_ACK made and the interrupt ended. An assembly error names *your* line.

The end of interrupt is yours too: `handle_irq` read `ICC_IAR1_EL1` into x19 and leaves the
page-ready interrupt active until your handler writes that INTID to `ICC_EOIR1_EL1`. Forget it
and the interrupt stays active: nothing of its priority or lower, the timer tick included, is
taken again."""),
    code("""from apflab.exercises.build import PageNotPresentEntry, PageReadyHandler

ex3 = PageReadyHandler(SEED)
print(ex3.question())"""),
]
BUILD_READY_STUDENT = [
    code('my_ready_handler = """\\\n' + PageReadyHandler(0).skeleton() + '"""\nex3.check(my_ready_handler)'),
    code("""# print(ex3.hint())              # uncomment when you want a hint"""),
]
BUILD_READY_SOLUTION = [
    md("""**Worked solution** (the kernel's own code): look the token up among the waiters, free the
entry and wake its task; otherwise remember the early "page ready" as a dummy; then free the
shared slot, IRQ_ACK and end the interrupt (EOIR)."""),
    solution("lab06-ready", "", 'my_ready_handler = """\\\n' + holes.reference("page_ready_irq") + '"""'),
    graded("lab06-ready-check", 4, "ex3", "PageReadyHandler", "apflab.exercises.build", "my_ready_handler"),
]
BUILD_NP_INTRO = [
    md("""## Exercise 4 (build it): the "page not present" entry

The other half: the SDEI handler the host enters on "page not present". It must record
token → task, park the task, free the shared slot and leave with `COMPLETE_AND_RESUME` into
the kernel's IRQ-from-EL0 vector, so the kernel saves the task and switches to another. It
runs on the interrupted task's registers: x0–x17 are restored by the dispatcher, x18–x30
and `sp` are the task's, and the grader compares them at the fault and at your COMPLETE."""),
    code("""ex4 = PageNotPresentEntry(SEED)
print(ex4.question())"""),
]
BUILD_NP_STUDENT = [
    code('my_np_entry = """\\\n' + PageNotPresentEntry(0).skeleton() + '"""\nex4.check(my_np_entry)'),
    code("""# print(ex4.hint())              # uncomment when you want a hint"""),
]
BUILD_NP_SOLUTION = [
    md("""**Worked solution** (the kernel's own code)."""),
    solution("lab06-np", "", 'my_np_entry = """\\\n' + holes.reference("page_not_present") + '"""'),
    graded("lab06-np-check", 4, "ex4", "PageNotPresentEntry", "apflab.exercises.build", "my_np_entry"),
]
EXPLORE_INTRO = [
    md("""## Exercises 5 and 6 (Explorer): find the fault, catch the first page ready

Do these with the `Explorer` (a new one for each, as the question says: the same seed gives
the same machine). Read the answer off its status bar and log."""),
    code("""from apflab.exercises.explore import FirstFault, FirstPageReady
from apflab.widgets import Explorer

ex5 = FirstFault(SEED)
print(ex5.question())"""),
]
EXPLORE_STUDENT = [
    code("""# NBVAL_IGNORE_OUTPUT
explorer5 = Explorer(seed=SEED, **ex5.explorer_params())
explorer5"""),
    code("""my_fault = None                  # <- (page, pc, outcome)
ex5.check(my_fault)"""),
    code("""ex6 = FirstPageReady(SEED)
print(ex6.question())"""),
    code("""my_ready = None                  # <- (token, t_ns)
ex6.check(my_ready)"""),
]
EXPLORE_SOLUTION = [
    md("""**Worked solution.** Drive the explorer with its methods (each is a button) and read the
stop and the log."""),
    solution("lab06-fault", "", """explorer5 = Explorer(seed=SEED, **ex5.explorer_params())
for action in ex5.actions():
    print(action, "->", eval("explorer5." + action))
stop = explorer5.state()["stopped_at"]
log = explorer5.state()["recent"]
after = log[[r["t_ns"] for r in log].index(stop["t_ns"]):]
what = next(r for r in after if r["kind"] in ("apf_not_present", "apf_fallback"))
my_fault = ((stop["ipa"] - explorer5.setup.buffer.start) // 4096, stop["pc"],
            "async" if what["kind"] == "apf_not_present" else what["reason"])
print(my_fault)"""),
    graded("lab06-fault-check", 1, "ex5", "FirstFault", "apflab.exercises.explore", "my_fault"),
    code("""ex6 = FirstPageReady(SEED)
print(ex6.question())"""),
    solution("lab06-first-ready", "", """explorer6 = Explorer(seed=SEED, **ex6.explorer_params())
for _ in range(ex6.params["faults_first"]):
    print(explorer6.run_until("ready"))
stop = explorer6.state()["stopped_at"]
my_ready = (stop["token"], stop["t_ns"])
print(hex(my_ready[0]), my_ready[1])"""),
    graded("lab06-first-ready-check", 1, "ex6", "FirstPageReady", "apflab.exercises.explore", "my_ready"),
]

SUMMARY = md("""## Summary

- The host tells the guest instead of freezing it: {reason 1, token} in the shared block
  and SDEI event 1, dispatched in the same exit as the fault.
- The guest parks the task on the token and runs another; "page ready" arrives later as
  PPI 19 with {reason 2, token}, and IRQ_ACK frees the host to send the next.
- Tokens are `(id << 12) | vcpu_id`, id counting the async faults sent.
- Whenever the event cannot be delivered at once — kernel mode, masked PE, busy slot, a
  handler running, 64 outstanding — the host falls back to the stall.
- You wrote both guest handlers: the kernel's behaviour (who is parked, who is woken, which
  token, which registers survive) is what the grader checked, by running it.

Lab 07 measures what all this buys, and what it costs.""")

CELLS = TEACH + [
    EXERCISE_INTRO,
    EX12_SETUP,
    code("""my_answer = None                 # <- a list of task indices
ex1.check(my_answer)"""),
    code("""ex2 = FirstToken(SEED)
print(ex2.question())"""),
    code("""my_token = None                  # <- an int; hex is fine
ex2.check(my_token)"""),
    code("""# print(ex1.hint()); print(ex2.hint())    # uncomment when you want a hint"""),
] + BUILD_INTRO + BUILD_READY_STUDENT + BUILD_NP_INTRO + BUILD_NP_STUDENT + EXPLORE_INTRO + EXPLORE_STUDENT + [SUMMARY]

SOLUTION_CELLS = TEACH + [
    EXERCISE_INTRO,
    EX12_SETUP,
    md("""Task 0 is parked at once; round robin then runs task 1, 2, … in order. A walker is
parked on its first touch and the kernel moves on; a compute task keeps the vCPU until
task 0's "page ready" wakes task 0 (which ends the window). So the list runs from task 1
up to and including the first compute task, or over every task when all are walkers (the
vCPU then idles until the page is back)."""),
    solution("lab06-window", "", """kinds = ex1.params["tasks"]
my_answer = []
for i in range(1, len(kinds)):
    my_answer.append(i)
    if kinds[i] == "compute":
        break
print(kinds, "->", my_answer)"""),
    graded("lab06-window-check", 1, "ex1", "WhileTask0Waits", "apflab.exercises.lab06", "my_answer"),
    code("""ex2 = FirstToken(SEED)
print(ex2.question())"""),
    md("""Replay the scheduler by hand, counting async faults. A walker that runs faults (its
first touch, or after waking, its next page: all are in swap) and is parked; a compute
task runs until the oldest parked walker's page is ready, which wakes that walker and
reschedules; with nothing runnable the vCPU idles until then. The k-th fault (from 0)
carries token `k << 12`. That predicts a task's *first* fault. Its second depends on which
of the outstanding page-ins finishes first, and their times are jittered: step the guest
and count."""),
    solution("lab06-token", "", """def first_token(kinds, target):
    runnable = [True] * len(kinds)
    parked = []                      # walkers waiting, oldest first
    cursor, faults = -1, 0
    while True:
        pick = next(((cursor + k) % len(kinds) for k in range(1, len(kinds) + 1)
                     if runnable[(cursor + k) % len(kinds)]), None)
        if pick is None:             # idle until the oldest page is ready
            runnable[parked.pop(0)] = True
            continue
        cursor = pick
        if kinds[pick] == "memtouch":
            if pick == target:
                return faults << 12 | 0          # vcpu_id 0
            faults += 1
            runnable[pick] = False
            parked.append(pick)
        elif parked:                 # compute runs until the oldest page is ready
            runnable[parked.pop(0)] = True

def measured_token(kinds, target, nth, seed):
    from apflab.exercises.lab06 import build_guest
    m, _ = build_guest(kinds, seed)
    seen = 0
    while True:
        rec = m.run_until("apf_not_present", 5_000_000)
        if rec.get("task") == target:
            seen += 1
            if seen == nth:
                return rec.get("token")

p = ex2.params
if p["nth"] == 1:
    my_token = first_token(p["tasks"], p["task"])
else:
    my_token = measured_token(p["tasks"], p["task"], p["nth"], ex2.seed)
print(p, "->", hex(my_token))"""),
    graded("lab06-token-check", 1, "ex2", "FirstToken", "apflab.exercises.lab06", "my_token"),
] + BUILD_INTRO + BUILD_READY_SOLUTION + BUILD_NP_INTRO + BUILD_NP_SOLUTION + EXPLORE_INTRO + EXPLORE_SOLUTION + [SUMMARY]
