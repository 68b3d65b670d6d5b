"""Lab 02: exceptions and vectors. Cells for labs/02-exceptions.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from apflab.exercises.lab02 import PeriodicTick, tick_solution
from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/02-exceptions.ipynb"
SOLUTION = "labs/solutions/02-exceptions.ipynb"

TEACH = [
    md("""# Lab 02 — Exceptions and vectors

**Objectives.** By the end of this lab you can
1. find the entry of the EL1 vector table (`VBAR_EL1` + offset) for a given exception and origin;
2. drop from EL1 to EL0 with `eret`, make a system call with `svc`, and read `ESR_EL1`,
   `ELR_EL1` and `SPSR_EL1` in the handler;
3. take an interrupt from the virtual timer (PPI 27) through the GICv3 CPU interface:
   acknowledge it, end it, and stop it from firing again;
4. decode an exception syndrome by hand and with `apflab.cpu.decode_esr`.

These are the tools of every later lab: the SDEI events of lab 04 and the "page ready"
interrupt of the APF labs arrive the same way.

""" + expected_time(75, "decode a syndrome (predict), which vector (predict), build a periodic "
                    "tick handler (build)")),
    md("""## The vector table

When the CPU takes an exception to EL1 it jumps into a table whose base the kernel writes to
`VBAR_EL1`. The table has 16 entries of 0x80 bytes (room for 32 instructions each). *Which*
entry depends on two things: the **kind** of exception (synchronous — caused by the
instruction itself, like `svc` — or an asynchronous IRQ, FIQ or SError) and **where the
CPU was**: at EL1 on `SP_EL0` (EL1t), at EL1 on `SP_EL1` (EL1h), or at a lower EL.

Unicorn does not vector exceptions by itself, so apflab's Python host performs exception
entry exactly as the Arm architecture describes it (lower box of the figure); the guest's own
`eret` returns.

![The EL1 vector table and what exception entry does](../assets/lab02-vector-table.svg)"""),
    md("""## A system call from EL0

The guest below starts at EL1, installs its vectors, then *returns* to EL0 with `eret`: it
writes the EL0 entry point to `ELR_EL1` and the PSTATE it wants there to `SPSR_EL1` (0 means
EL0t with every interrupt unmasked). At EL0 it calls `svc #1` with an argument in `x0`.

The entry at `VBAR_EL1 + 0x400` (synchronous, from a lower EL) reads the three registers
exception entry filled in, implements "system call 1: double x0", and returns with `eret`."""),
    code("""import apflab
from apflab.cpu import decode_esr

SYSCALL = r'''
_start:
    adr  x0, vectors
    msr  vbar_el1, x0           // install the vector table
    adr  x0, user
    msr  elr_el1, x0            // where eret goes
    mov  x0, #0
    msr  spsr_el1, x0           // which PSTATE eret restores: EL0t, DAIF clear
    adr  x0, user_stack_top
    msr  sp_el0, x0             // EL0 has its own stack pointer
    eret                        // "return" to EL0

user:                           // EL0 from here on
    mov  x0, #21
    svc  #1                     // system call 1 with x0 = 21
    mov  x1, x0                 // the result
    brk  #0

    .balign 2048
vectors:
    .space 0x400
sync_lower:                     // VBAR_EL1 + 0x400: synchronous, from EL0
    mrs  x9, esr_el1            // why: the syndrome
    mrs  x10, elr_el1           // where to return
    mrs  x11, spsr_el1          // the PSTATE of the caller
    and  x12, x9, #0xffff       // ISS[15:0]: the svc immediate
    cmp  x12, #1
    b.ne 1f
    add  x0, x0, x0             // system call 1: double x0
1:  eret

    .balign 16
user_stack: .space 256
user_stack_top:
'''
m = apflab.Machine(seed=0)
syms = m.load_asm(SYSCALL)
m.run()
print("result x1  :", m.reg("x1"))
print(f"ESR_EL1    : {m.reg('x9'):#x}  ->  {decode_esr(m.reg('x9'))}")
print(f"ELR_EL1    : {m.reg('x10'):#x}  (svc at {syms['user'] + 4:#x}; ELR is the next instruction)")
print(f"SPSR_EL1   : {m.reg('x11'):#x}  (EL0t, nothing masked)")
print(f"stopped at : EL{(m.reg('pstate') >> 2) & 3}")"""),
    md("""The host writes a trace record for every exception it delivers. Its fields are the
syndrome, the EL it came from and the vector address (`vbar_el1 + 0x400` here):"""),
    code("""for rec in m.trace.select("exception"):
    f = rec.as_dict()
    print(f"t={f['t_ns']} ns  {f['what']}  esr={f['esr']:#x}  from EL{f['from_el']}  "
          f"vector=VBAR+{f['vector'] - syms['vectors']:#x}")"""),
    md("""Two details worth noticing. `ELR_EL1` points *after* the `svc`: a system call returns to
the next instruction. And the handler runs at EL1 on `SP_EL1` while the user code keeps its own
`SP_EL0`: the two stack pointers are banked, which is why the kernel set `sp_el0` before the
`eret`."""),
    md("""## An interrupt from the virtual timer

Interrupts reach the CPU through the **GIC** (generic interrupt controller). A GICv3 CPU
interface is programmed with system registers; the assembler knows them by their encodings:

| register | encoding | role |
|---|---|---|
| ICC_PMR_EL1 | `s3_0_c4_c6_0` | priority mask: only priorities *below* it get through (reset 0 masks all) |
| ICC_IGRPEN1_EL1 | `s3_0_c12_c12_7` | 1 = group-1 interrupts enabled |
| ICC_IAR1_EL1 | `s3_0_c12_c12_0` | read: acknowledge the highest pending interrupt, get its INTID |
| ICC_EOIR1_EL1 | `s3_0_c12_c12_1` | write the INTID: end of interrupt |

The EL1 **virtual timer** raises private peripheral interrupt (PPI) **27** when the virtual
count `CNTVCT_EL0` reaches `CNTV_CVAL_EL0` and `CNTV_CTL_EL0` has ENABLE set and IMASK clear.
In apflab one tick is one virtual nanosecond. The line is *level-sensitive*: it stays high
until the handler turns the timer off or moves the compare value, otherwise the interrupt
would fire again right after the EOI."""),
    code("""TIMER = r'''
_start:
    adr  x0, vectors
    msr  vbar_el1, x0
    mov  x0, #0xff
    msr  s3_0_c4_c6_0, x0       // ICC_PMR_EL1 = 0xff: let every priority through
    mov  x0, #1
    msr  s3_0_c12_c12_7, x0     // ICC_IGRPEN1_EL1 = 1: group-1 interrupts on
    mrs  x0, cntvct_el0         // the virtual count (1 tick = 1 ns)
    add  x0, x0, #500
    msr  cntv_cval_el0, x0      // fire 500 ns from now
    mov  x0, #1
    msr  cntv_ctl_el0, x0       // ENABLE = 1, IMASK = 0
    mov  x19, #0
    msr  daifclr, #2            // unmask IRQs: PSTATE.I = 0
1:  add  x19, x19, #1           // the "work": count loop iterations
    ldr  x1, ticks
    cbz  x1, 1b                 // until the handler has run
    brk  #0

    .balign 2048
vectors:
    .space 0x280
irq_el1h:                       // VBAR_EL1 + 0x280: IRQ, current EL with SP_EL1
    mrs  x9, s3_0_c12_c12_0     // ICC_IAR1_EL1: acknowledge, x9 = INTID
    mrs  x10, cntvct_el0        // the time now
    msr  cntv_ctl_el0, xzr      // timer off: its line goes low
    mrs  x11, elr_el1           // where the loop was interrupted
    adr  x12, ticks
    mov  x13, #1
    str  x13, [x12]
    msr  s3_0_c12_c12_1, x9     // ICC_EOIR1_EL1: end of interrupt
    eret

    .balign 8
ticks: .quad 0
'''
m = apflab.Machine(seed=0)
syms = m.load_asm(TIMER)
r = m.run()
print("INTID acknowledged   :", m.reg("x9"))
print("CNTVCT in the handler:", m.reg("x10"), "ns")
print(f"interrupted at       : {m.reg('x11'):#x} (inside the loop, {syms['_start']:#x} + {m.reg('x11') - syms['_start']:#x})")
print("loop iterations      :", m.reg("x19"))"""),
    md("""The trace shows the whole life of the interrupt: the timer line rises, the host enters the
IRQ vector (charging 300 ns of injection cost to the vCPU), the handler acknowledges, the
line falls when the timer is switched off, and the handler ends the interrupt."""),
    code("""for rec in m.trace.records:
    if rec.kind.startswith("irq"):
        shown = {k: hex(v) if k in ("pc", "vector") else v for k, v in rec.fields}
        print(f"t={rec.t_ns:4d} ns  {rec.kind:9s} {shown}")"""),
    md("""**What if the handler forgets to silence the timer?** Below, the main loop does a fixed
1000 iterations of work instead of waiting for `ticks`. With the `msr cntv_ctl_el0, xzr` line
deleted, the timer line stays high after the EOI, and the interrupt is taken again as soon as
the `eret` unmasks IRQs: an *interrupt storm*. Each entry costs injection time and handler
instructions."""),
    *predict("With the `msr cntv_ctl_el0, xzr` line deleted, how many IRQs does the guest take during "
             "1000 loop iterations (a few thousand nanoseconds)? One, a handful, or hundreds?",
             "predicted_irqs"),
    code("""work = TIMER.replace("    ldr  x1, ticks\\n    cbz  x1, 1b                 // until the handler has run\\n",
                     "    cmp  x19, #1000\\n    b.ne 1b                     // 1000 iterations of work\\n")
storm = work.replace("    msr  cntv_ctl_el0, xzr      // timer off: its line goes low\\n", "")
for name, src in (("timer silenced", work), ("timer left on", storm)):
    m = apflab.Machine(seed=0)
    m.load_asm(src)
    r = m.host.run(20_000, budget_error=False)      # stop after 20,000 instructions at most
    done = "finished" if r is not None else "never finished (stopped after 20,000 instructions)"
    print(f"{name:15s}: {m.trace.counts.get('irq', 0):4d} IRQs, loop iterations {m.reg('x19'):4d}, {done}")"""),
    md("""With the timer left on, the pending IRQ is taken right after each `eret`, exactly where the
architecture takes it (the host stops the vCPU on the instruction that clears PSTATE.I): the
loop never gets another instruction in. The guest is stuck in its handler for good."""),
    md("""## Decoding a syndrome

`ESR_EL1` = EC[31:26] (the exception class) | IL[25] (32-bit instruction) | ISS[24:0] (class-specific).
For `svc`, `hvc` and `brk`, ISS[15:0] is the instruction's immediate. For a data abort, ISS
bit 6 (WnR) says whether it was a write. `apflab.cpu.decode_esr` does this for error
messages; doing it by hand is three lines:"""),
    code("""def decode(esr):
    return (esr >> 26) & 0x3F, (esr >> 25) & 1, esr & 0x1FFFFFF

for esr in (0x56000001, 0xF2000005, 0x5A000000, 0x92000040, 0x02000000):
    ec, il, iss = decode(esr)
    print(f"{esr:#010x}: EC={ec:#04x} IL={il} ISS={iss:<#6x} {decode_esr(esr)}")"""),
]

EX1_INTRO = [
    md("""## Exercise 1: decode a syndrome

Your seed makes the guest execute one instruction (at EL0 or EL1) that traps to EL1; the
handler saves `ESR_EL1`. Decode it without `decode_esr`."""),
    code("""from apflab.exercises.lab02 import DecodeSyndrome

SEED = 1234                      # <- your seed
ex = DecodeSyndrome(SEED)
print(ex.question())"""),
]
EX1_STUDENT = [
    code("""my_answer = None                 # <- a tuple (ec, imm)
ex.check(my_answer)"""),
    code("""# print(ex.hint())               # uncomment when you want a hint"""),
]
EX1_SOLUTION = [
    md("""**Worked solution.** Shift and mask; then name the class with `decode_esr` to be sure."""),
    solution("lab02-syndrome", "", """esr = ex.esr()
my_answer = ((esr >> 26) & 0x3F, esr & 0xFFFF)
print(f"EC={my_answer[0]:#x} imm={my_answer[1]:#x}  ({decode_esr(esr)})")"""),
    graded("lab02-syndrome-check", 1, "ex", "DecodeSyndrome", "apflab.exercises.lab02", "my_answer"),
]

EX2_INTRO = [
    md("""## Exercise 2: which vector?

Your seed picks an exception kind (an `svc`, or a timer IRQ) and where the CPU is when it
happens (EL0, EL1t or EL1h). Which offset from `VBAR_EL1` does it enter? The answer is
computed by a guest whose sixteen vector entries each report their own offset."""),
    code("""from apflab.exercises.lab02 import WhichVector

ex2 = WhichVector(SEED)
print(ex2.question())"""),
]
EX2_STUDENT = [
    code("""my_answer2 = None                # <- an offset such as 0x80
ex2.check(my_answer2)"""),
    code("""# print(ex2.hint())              # uncomment when you want a hint"""),
]
EX2_SOLUTION = [
    md("""**Worked solution.** Pick the group of four from the origin, then the entry from the kind."""),
    solution("lab02-vector", "", """group = {"el1t": 0x000, "el1h": 0x200, "el0": 0x400}[ex2.params["origin"]]
entry = {"sync": 0x000, "irq": 0x080}[ex2.params["kind"]]
my_answer2 = group + entry
print(ex2.describe(), "->", hex(my_answer2))"""),
    graded("lab02-vector-check", 1, "ex2", "WhichVector", "apflab.exercises.lab02", "my_answer2"),
]

EX3_INTRO = [
    md("""## Exercise 3 (build it): a periodic tick

The timer guest above stopped the timer after one interrupt. A kernel wants a *periodic* tick:
every `period` nanoseconds, for ever. Write the IRQ handler at `VBAR_EL1 + 0x280` for it. The
grader puts your code after the label `irq_el1h` of a guest whose main loop runs until `ticks`
reaches your seed's count, runs it on virtual time with an instruction budget, and tells you
what went wrong: no acknowledge, no end of interrupt, a storm, a deadline that drifts.

Start from the skeleton: it assembles and runs (and fails the check, saying why). Edit the
string in the next cell: fill the TODOs with instructions."""),
    code("""from apflab.exercises.lab02 import PeriodicTick

ex3 = PeriodicTick(SEED)
print(ex3.question())
print(ex3.skeleton())"""),
]
EX3_STUDENT = [
    code('my_handler = """\\\n' + PeriodicTick(0).skeleton() + '"""\nex3.check(my_handler)'),
    code("""# print(ex3.hint())              # uncomment when you want a hint"""),
]
EX3_SOLUTION = [
    md("""**Worked solution.** Acknowledge, move the deadline on *from the previous deadline* (from
`CNTVCT_EL0` it would drift by the handler's latency every tick), count, end the interrupt."""),
    solution("lab02-tick", "", 'my_handler = """\\\n' + tick_solution() + '"""'),
    graded("lab02-tick-check", 3, "ex3", "PeriodicTick", "apflab.exercises.lab02", "my_handler"),
]

SUMMARY = [
    md("""## Summary

- `VBAR_EL1` points at 16 entries of 0x80 bytes: {EL1t, EL1h, lower EL AArch64, lower EL AArch32}
  × {synchronous, IRQ, FIQ, SError}. A system call from EL0 enters at +0x400, a timer IRQ
  at EL1h at +0x280.
- Exception entry saves the return address in `ELR_EL1`, the old PSTATE in `SPSR_EL1` and, for
  synchronous exceptions, the cause in `ESR_EL1`; `eret` undoes it. Setting `ELR_EL1` and
  `SPSR_EL1` by hand and executing `eret` is how a kernel enters user space.
- An interrupt needs the whole chain: the timer (CVAL, CTL), the GIC (PMR, IGRPEN1), PSTATE.I,
  then acknowledge (IAR1) and end (EOIR1) in the handler, and a line that goes low.
- In apflab unicorn executes the instructions; the Python host delivers the exceptions and
  records each in the trace.

Next, lab 03 looks at the exception that goes *up* to the hypervisor: `hvc #0`.
The solution notebook is `labs/solutions/02-exceptions.ipynb`."""),
]

CELLS = TEACH + EX1_INTRO + EX1_STUDENT + EX2_INTRO + EX2_STUDENT + EX3_INTRO + EX3_STUDENT + SUMMARY
SOLUTION_CELLS = (TEACH + EX1_INTRO + EX1_SOLUTION + EX2_INTRO + EX2_SOLUTION + EX3_INTRO + EX3_SOLUTION
                  + SUMMARY)
