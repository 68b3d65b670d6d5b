"""Lab 01: AArch64 on unicorn. Cells for labs/01-aarch64.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/01-aarch64.ipynb"
SOLUTION = "labs/solutions/01-aarch64.ipynb"

TEACH = [
    md("""# Lab 01 — AArch64 on unicorn

**Objectives.** By the end of this lab you can
1. name the exception levels (EL0, EL1, EL2) and say which part of apflab runs at each;
2. read the registers of the guest from Python: `x0`–`x30`, `sp`, `pc`, and PSTATE, and decode `CurrentEL` and PSTATE;
3. write, run and step a small guest program with loads, stores and a loop, and read its memory back with `m.read_u64`;
4. say what `brk #0` means in apflab, and read the error messages for a typo and for a runaway loop.

""" + expected_time(60, "predict a register (predict), read memory back (predict)")),
    md("""## Who runs where

An Arm CPU runs code at one of several *exception levels*. Higher levels are more privileged:
user programs at EL0, the operating-system kernel at EL1, a hypervisor at EL2 (EL3, secure
firmware, does not appear in apflab). A program moves *up* a level only by taking an
exception (a system call, an interrupt, a fault) and moves *down* with `eret`.

In apflab the guest's EL0 and EL1 instructions run on [unicorn](https://www.unicorn-engine.org/),
the CPU core of QEMU packaged as a library. There is no EL2 code: the hypervisor is the Python
package itself. Whenever the guest does something the hypervisor must see (a hypercall, a
fault on a page the host has taken away, a `brk #0`), unicorn stops and Python takes over.

![Exception levels in apflab and the PSTATE fields](../assets/lab01-exception-levels.svg)"""),
    md("""## The machine and its registers

`apflab.Machine(seed)` builds one vCPU with 16 MiB of guest RAM at `0x40000000` (where QEMU's
`virt` board puts it; kvmtool's arm64 guests have theirs at `0x80000000`, its
`ARM_MEMORY_AREA`). `load_asm` assembles a program and puts the PC on its
`_start` label, at EL1. The program below only reads system state into registers:
`CurrentEL` (the current exception level), `DAIF` (the interrupt masks) and the stack pointer."""),
    code("""import apflab

m = apflab.Machine(seed=0)
syms = m.load_asm('''
_start:
    mrs x0, CurrentEL           // which EL are we at?
    mrs x1, daif                // which interrupts are masked?
    mov x2, sp                  // the stack pointer the machine gave us
    brk #0                      // stop: hand control back to Python
''')
r = m.run()
print(f"CurrentEL = {m.reg('x0'):#x}  ->  EL{m.reg('x0') >> 2}")
print(f"DAIF      = {m.reg('x1'):#x}")
print(f"sp        = {m.reg('x2'):#x}  (the top of guest RAM)")
print(f"pstate    = {m.reg('pstate'):#x}")"""),
    md("""`CurrentEL` keeps the level in bits [3:2], so `0x4` means EL1. PSTATE `0x3c5` is the state
apflab starts a guest in — the value KVM gives a vCPU at reset (`VCPU_RESET_PSTATE_EL1` in
arch/arm64/kvm/reset.c), and the state after taking an exception to EL1h. It is not the
architectural reset state of a CPU, which comes out of reset in its highest implemented
exception level (EL3 or EL2), not EL1. In `0x3c5` the four mask bits
D, A, I and F (bits 9:6) are set, so no interrupt can arrive, and the mode field M[3:0] is
`0b0101`, **EL1h**: EL1 using its own stack pointer `SP_EL1` (the "h" is for "handler";
`EL1t` would use `SP_EL0`). Let us take the number apart in Python:"""),
    code("""pstate = m.reg("pstate")
mode = pstate & 0xF
print("N Z C V :", [(pstate >> b) & 1 for b in (31, 30, 29, 28)])
print("D A I F :", [(pstate >> b) & 1 for b in (9, 8, 7, 6)])
print("M[3:0]  :", f"{mode:#06b}", {0b0000: "EL0t", 0b0100: "EL1t", 0b0101: "EL1h"}[mode])"""),
    md("""`m.regs()` returns every register the machine exposes as a dict, and `m.reg(name)` one of
them; `m.set_reg(name, value)` writes one. Register names are lower case, as in the Arm ARM
(`x0`, `sp`, `pc`, `elr_el1`, `vbar_el1`, ...)."""),
    code("""regs = m.regs()
print(len(regs), "registers, for example:")
for name in ("x0", "x30", "sp", "pc", "vbar_el1"):
    print(f"  {name:9s} {regs[name]:#x}")"""),
    md("""## Your first guest program: a loop over memory

A guest program is GNU-as syntax. Useful pieces:

| syntax | meaning |
|---|---|
| `adr x1, table` | x1 = the address of the label `table` |
| `ldr x3, [x1], #8` | load 8 bytes from x1 into x3, **then** add 8 to x1 (post-index) |
| `str x0, [x4]` | store x0 to the address in x4 |
| `subs x2, x2, #1` | subtract and set the flags (Z is set when the result is 0) |
| `1:` ... `b.ne 1b` | a numeric local label, and a branch *back* (`b`) to the nearest `1:` while Z is clear |
| `.quad 10, 20` | 64-bit data words |

`load_asm` returns the symbol table: each label and its address."""),
    code("""m = apflab.Machine(seed=0)
syms = m.load_asm('''
_start:
    adr  x1, table              // x1 = address of the table
    mov  x2, #4                 // four entries
    mov  x0, #0                 // running sum
1:  ldr  x3, [x1], #8           // load one entry, then x1 += 8
    add  x0, x0, x3
    subs x2, x2, #1
    b.ne 1b
    adr  x4, total
    str  x0, [x4]               // store the sum to memory
    brk  #0
    .balign 8
table: .quad 10, 20, 30, 40
total: .quad 0
''')
print({name: hex(addr) for name, addr in syms.items()})"""),
    *predict("How many instructions does this program retire up to and including `brk #0`, and "
             "what will `total` hold?", "predicted", "(None, None)   # (instructions, total)"),
    md("""Before running it to the end, **step** it: `m.step(1)` runs one instruction.
`m.vcpu.disasm_at(pc)` shows the instruction at an address (capstone prints the resolved
address of `adr`)."""),
    code("""for _ in range(6):
    pc = m.reg("pc")
    insn = m.vcpu.disasm_at(pc)
    m.step(1)
    print(f"{pc:#x}  {insn:24s} x0={m.reg('x0'):<3d} x1={m.reg('x1'):#x} x2={m.reg('x2')} x3={m.reg('x3')}")"""),
    code("""r = m.run()                     # from where we are to the brk #0
print("sum in x0       :", m.reg("x0"))
print("total in memory :", m.read_u64(syms["total"]))
print("table[2]        :", m.read_u64(syms["table"] + 2 * 8))
print(f"{r.instructions} instructions, {r.elapsed_ns} ns of virtual time")"""),
    md("""Time in apflab is **virtual**: each instruction costs 1 ns (`ns_per_insn`), and host work
such as a hypercall adds a modelled cost (lab 03). The first access to a page of guest RAM,
even fetching an instruction from it, makes the host map that page: the trace counts it as a
`first_touch` (`m.trace.counts` below). Nothing depends on the speed of your computer, so
everyone gets the same numbers."""),
    code("""print(m.trace.counts)"""),
    md("""## What `brk #0` means

On real hardware `brk #imm` is a breakpoint: it takes a synchronous exception to EL1, where
a debugger would handle it. apflab reserves **`brk #0`** for one job: *stop the guest and
return to Python*. `m.run()` returns a `RunStop` with the PC of the `brk` (it stays on the
`brk`; to go on, move PC past it with `m.set_reg("pc", m.reg("pc") + 4)`, as lab 04 does).

Any other immediate is an ordinary guest exception. This guest has no exception vectors yet
(lab 02 installs some), so the machine cannot deliver it and says so, naming the PC, the
instruction and the decoded syndrome:"""),
    code("""m = apflab.Machine(seed=0)
m.load_asm('''
_start:
    nop
    brk #1                      // a real breakpoint, not the "stop" convention
''')
try:
    m.run()
except apflab.GuestFault as e:
    print("GuestFault:", e)"""),
    md("""## When things go wrong

A typo in the assembly raises `apflab.AsmError`, which names the line and its text. Lines
count from the start of the string, so the empty line right after the opening `'''` is line 1:"""),
    code("""m = apflab.Machine(seed=0)
try:
    m.load_asm('''
_start:
    mov x0, #1
    ad  x1, x0, #2              // typo: should be add
    brk #0
''')
except apflab.AsmError as e:
    print("AsmError:", e)
    print("line", e.line, "text", repr(e.text.strip()))"""),
    md("""A loop that never ends does not hang your notebook: `run` takes a budget,
`max_instructions` (a million by default), and raises `apflab.BudgetExceeded` with the PC and
the instruction it was at. Here the loop counter is never decremented:"""),
    code("""m = apflab.Machine(seed=0)
syms = m.load_asm('''
_start:
    mov  x2, #3
loop:
    add  x0, x0, #1
    cmp  x2, #0                 // oops: nothing ever changes x2
    b.ne loop
    brk  #0
''')
try:
    m.run(max_instructions=10_000)
except apflab.BudgetExceeded as e:
    print("BudgetExceeded:", e)
    print(f"e.pc = {e.pc:#x}; the loop label is at {syms['loop']:#x}")"""),
]

EX1_INTRO = [
    md("""## Exercise 1: predict a register

Put your own seed (for example your student number) in `SEED`. The exercise draws a small
program from it. Work out the value of `x0` on paper, then check it. In self-study,
`ex.answer()` computes the answer by running the same program on the machine; in a class it is
switched off and your instructor grades from your seed."""),
    code("""from apflab.exercises.lab01 import PredictRegister

SEED = 1234                      # <- your seed
ex = PredictRegister(SEED)
print(ex.question())"""),
]
EX1_STUDENT = [
    code("""my_answer = None                 # <- replace None with your value
ex.check(my_answer)"""),
    code("""# print(ex.hint())               # uncomment when you want a hint"""),
]
EX1_SOLUTION = [
    md("""**Worked solution.** Follow the loop in Python, one row per iteration, exactly as the
program does it; then compare with the machine."""),
    solution("lab01-register", "", """p = ex.params
x0, x1 = p["x0"], p["x1"]
for i in range(p["n"]):
    x0 = {"add": x0 + x1, "sub": x0 - x1, "eor": x0 ^ x1}[p["op"]]
    print(f"iteration {i}: {p['op']} with x1={x1} -> x0={x0}")
    x1 += p["step"]
my_answer = x0"""),
    graded("lab01-register-check", 1, "ex", "PredictRegister", "apflab.exercises.lab01", "my_answer"),
]

EX2_INTRO = [
    md("""## Exercise 2: read memory back

This time the loop writes into an array. Which value does a given slot hold after the run?
Watch the addressing mode — post-index `[x3], #d` and pre-index `[x3, #d]!` differ by one
store — and the stride `d`: with 16 every other slot is skipped."""),
    code("""from apflab.exercises.lab01 import FillArray

ex2 = FillArray(SEED)
print(ex2.question())"""),
]
EX2_STUDENT = [
    code("""my_answer2 = None                # <- replace None with your value
ex2.check(my_answer2)"""),
    code("""# print(ex2.hint())              # uncomment when you want a hint"""),
]
EX2_SOLUTION = [
    md("""**Worked solution.** Slot *i* of `buf` is at `buf + 8*i`. With post-index the store in
iteration *j* goes to `buf + d*j`; with pre-index to `buf + d*(j + 1)`. Slots no store reaches
stay 0."""),
    solution("lab01-memory", "", """p = ex2.params
per = p["stride"] // 8
slots = [0] * ((p["n"] + 1) * per)
for j in range(p["n"]):
    slots[(j if p["mode"] == "post" else j + 1) * per] = p["first"] + j * p["step"]
print(p["mode"], p["stride"], "slots:", slots)
my_answer2 = slots[p["k"]]"""),
    graded("lab01-memory-check", 1, "ex2", "FillArray", "apflab.exercises.lab01", "my_answer2"),
]

SUMMARY = [
    md("""## Summary

- EL0 runs user code, EL1 the kernel; in apflab EL2 is Python, and unicorn runs EL0 and EL1.
- `CurrentEL` holds the level in bits [3:2]; PSTATE holds the flags, the DAIF masks and the
  mode (EL1h = `0b0101`). The machine starts the guest at EL1h with every interrupt masked
  (as KVM starts a vCPU; a real CPU resets into its highest EL).
- `load_asm` returns the symbols; `run`, `step`, `reg`, `set_reg` and `read_u64` are how Python
  drives and inspects the guest.
- `brk #0` is apflab's "stop and return to Python"; other `brk` immediates are real exceptions.
- Errors name their place: `AsmError` the source line, `BudgetExceeded` and `GuestFault` the PC
  and the instruction.

Next, lab 02 gives the guest exception vectors: system calls from EL0 and a timer interrupt.
The solution notebook is `labs/solutions/01-aarch64.ipynb`."""),
]

CELLS = TEACH + EX1_INTRO + EX1_STUDENT + EX2_INTRO + EX2_STUDENT + SUMMARY
SOLUTION_CELLS = TEACH + EX1_INTRO + EX1_SOLUTION + EX2_INTRO + EX2_SOLUTION + SUMMARY
