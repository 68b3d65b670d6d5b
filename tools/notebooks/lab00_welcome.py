"""Lab 00: welcome. Cells for labs/00-welcome.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/00-welcome.ipynb"
SOLUTION = "labs/solutions/00-welcome.ipynb"

CELLS = [
    md("""# Lab 00 — Welcome to apflab

**Objectives.** By the end of this lab you can
1. run a guest program on the apflab machine and read its registers;
2. say in one sentence what an *asynchronous page fault* is for;
3. use the exercise cells: your seed, the check function, the hint, and the "compute the answer" mode.

**How to use the labs.** Run the cells from top to bottom (Shift-Enter). Every number you
see comes from a deterministic run: the same seed gives the same trace, byte for byte, so
your results match your classmates' when you use the same seed, and differ when you use
your own.

The notebooks come without outputs: before each key experiment a **Predict:** cell asks you
to write down what you expect. Do that first, then run, then explain the difference.

""" + expected_time(30, "count the instructions (predict)")),
    md("""## The story in one picture

A guest task touches a page the host has swapped out. Without APF the host freezes the
whole vCPU until the page is back. With APF the host says "page not present" through an SDEI
event, the guest kernel runs another task meanwhile, and a "page ready" interrupt wakes
the first task later.

![The APF sequence between guest and host](../assets/apf-sequence.svg)"""),
    md("""## Your first guest

The machine is one AArch64 vCPU under a small hypervisor written in Python. `load_asm`
assembles a program (entry label `_start`); `run` starts it at EL1 and stops at `brk #0`.
Here the guest asks the hypervisor which SDEI version it offers, with a hypercall."""),
    code("""import apflab

m = apflab.Machine(seed=0)
syms = m.load_asm('''
_start:
    movz x0, #0xC400, lsl #16
    add  x0, x0, #0x20          // SDEI_VERSION (0xC4000020)
    hvc  #0                     // trap to the hypervisor; the result comes back in x0
    brk  #0                     // stop
''')
r = m.run(max_instructions=1_000)
v = m.reg("x0")
print(f"SDEI version {v >> 48 & 0x7fff}.{v >> 32 & 0xffff}, vendor {v & 0xffffffff:#x}")
print(f"{r.instructions} instructions retired, {r.elapsed_ns} ns of virtual time")"""),
    md("""Four instructions took about a microsecond of *virtual* time: most of it is the modelled
cost of the hypercall (an exit to the host and back). Time in apflab is never wall-clock."""),
    md("""## A first measurement

`run_scenario` runs a whole experiment: a guest kernel with a task that walks a buffer
larger than the host's memory limit, next to a compute task. Compare APF off and on."""),
    *predict("With APF on, will the walk finish sooner, later, or at the same time? And will the "
             "compute task get more work done, less, or the same?", "predicted",
             '("sooner/later/same", "more/less/same")'),
    code("""off, on = apflab.compare("memtouch", seed=0, calc_thread=True, npages=128, limit_pages=32)
for r in (off, on):
    print(f"APF {'on ' if r.apf else 'off'}: walk took {r.elapsed_ns/1e6:6.2f} ms, "
          f"vCPU stalled {r.stall_ns/1e6:6.2f} ms, compute work {r.work['compute']}")"""),
    md("""With APF off the vCPU sits stalled in the host for every page-in; with APF on the compute
task uses that time. Labs 05–08 take this apart; lab 09 weighs it against the arguments of
the 2022 review."""),
    md("""## Exercise: count the instructions

Put your own seed (for example your student number) in `SEED`. The exercise draws its own
loop from it. Work out the answer by reading the code, then check it."""),
    code("""from apflab.exercises import CountInstructions

SEED = 1234                      # <- your seed
ex = CountInstructions(SEED)
print(ex.question())"""),
    code("""my_answer = None                 # <- replace None with your number
ex.check(my_answer)"""),
    md("""Stuck? `ex.hint()` gives a hint (only when you ask). In self-study, `ex.answer()` computes
the answer by running the guest, like the OSTEP simulators' `-c` flag; in a class your
instructor switches that off (classroom mode) and grades from your seed with nbgrader.
The solution notebook is `labs/solutions/00-welcome.ipynb`."""),
    code("""# ex.hint()                      # uncomment when you want a hint"""),
    md("""## Summary

- The machine runs real AArch64 code; the hypervisor is Python you can read.
- Time is virtual and deterministic: seeds make runs repeatable.
- APF turns host stall time into guest run time, when the guest has something else to run."""),
]

SOLUTION_CELLS = CELLS[:11] + [
    code("""from apflab.exercises import CountInstructions

SEED = 1234
ex = CountInstructions(SEED)
print(ex.question())"""),
    solution("lab00-count", "", """n, body = ex.params["n"], ex.params["body"]
my_answer = 2 + n * (body + 2) + 1      # set-up, iterations, brk
print(n, body, my_answer)"""),
    graded("lab00-count-check", 1, "ex", "CountInstructions", "apflab.exercises", "my_answer"),
]


