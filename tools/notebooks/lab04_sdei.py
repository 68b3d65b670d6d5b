"""Lab 04: SDEI. Cells for labs/04-sdei.ipynb and its solution."""

from nbformat.v4 import new_code_cell as code, new_markdown_cell as md

from notebooks.common import expected_time, graded, predict, solution

LAB = "labs/04-sdei.ipynb"
SOLUTION = "labs/solutions/04-sdei.ipynb"

TEACH = [
    md("""# Lab 04 — SDEI: events from the hypervisor

**Objectives.** By the end of this lab you can
1. register, enable and unmask an SDEI event, signal it, handle it and complete it, and
   follow the event's state through each step;
2. read the per-event state table (`apflab.sdei.TRANSITIONS`) and predict what a call
   returns in a given state;
3. explain masking and pending: an event signalled while the PE is masked is delivered at
   `PE_UNMASK`;
4. tell `EVENT_COMPLETE` from `EVENT_COMPLETE_AND_RESUME`;
5. show a critical event preempting a normal handler, and a normal one waiting.

Async page faults deliver "page not present" as SDEI event 1, so all of this is the
machinery of the next labs.

""" + expected_time(75, "follow an SDEI event (predict)")),
    md("""## What SDEI is

The **Software Delegated Exception Interface** (Arm DEN0054C) lets firmware — or, here, a
hypervisor — deliver *events* into a kernel. To the kernel an event is not an interrupt:
PSTATE.I does not mask it, and the kernel (the SDEI *client*) never touches the GIC for it.
Underneath, firmware's events usually *are* GIC interrupts: a shared or private interrupt
bound to an event with `SDEI_INTERRUPT_BIND`, or event 0, which Trusted Firmware-A raises as
an SGI; firmware takes them at EL3 and turns them into events. In apflab the hypervisor
raises its events directly (and lab 09 asks why the APF notice needs SDEI rather than an
interrupt). The kernel registers a handler address for an event
number with hypercalls; when the event fires, the hypervisor saves the interrupted `x0`–`x17`,
PC and PSTATE and enters the handler directly at EL1 with every interrupt masked:
`x0` = event number, `x1` = the argument given at registration, `x2` = interrupted PC,
`x3` = interrupted PSTATE. The handler ends with a hypercall, `EVENT_COMPLETE`, which
restores what was saved.

Each event has a state, and the `EVENT_STATUS` call returns it as three bits: 1 registered,
2 enabled, 4 running. The **PE** (the vCPU) has a mask of its own, separate from DAIF, and it
**starts masked**.

Events of the lab platform: **0**, the software-signalled event (the guest may signal it
to itself with `EVENT_SIGNAL`); **1**, async page fault "page not present" (host only);
**2**, a critical-priority host event for the nesting part of this lab.

![SDEI event states](../assets/lab04-sdei-states.svg)

And what happens when an event is delivered, from the trigger to one of the two completions:

![SDEI dispatch](../assets/sdei-dispatch.svg)"""),
    md("""apflab keeps the whole lifecycle in one table, indexed by (state, action), like Trusted
Firmware-A's `sdei_state.c`. Here it is, printed from the code: `→n` moves to state n,
`ok` is allowed without a change, `DENIED` and `PENDING` are what the call returns
without changing anything, `-` never happens."""),
    code("""from apflab import sdei
from apflab.sdei import TRANSITIONS, STATES, Action, NA, NOP

CODES = {sdei.SUCCESS: "", sdei.DENIED: "DENIED", sdei.PENDING: "PENDING"}
print("state | " + " | ".join(f"{a.name:10s}" for a in Action))
for s in STATES:
    cells = []
    for a in Action:
        rule = TRANSITIONS[(s, a)]
        if rule == NA:
            cells.append("-")
        else:
            code_, new = rule
            cells.append(CODES[code_] or ("ok" if new is NOP else f"→{new}"))
            if code_ == sdei.PENDING and new is not NOP:
                cells[-1] = f"PENDING →{new}"
    print(f"{s:5d} | " + " | ".join(f"{c:10s}" for c in cells))"""),
    md("""## A walk through the life of an event

The guest below makes each call of a normal client in turn, with a `brk #0` after each so
Python can look at the SDEI service between calls (`m.sdei.snapshot()`). The handler logs
its four entry registers, asks `EVENT_CONTEXT(7)` for the interrupted `x7`, stops once
so we can look from inside, and completes."""),
    code("""import apflab
from apflab.smccc import to_s64

WALK = r'''
_start:
    adr  x20, log
    // EVENT_REGISTER(event 0, entry = handler, ep_arg = 0x55, flags 0, affinity 0)
    ldr  x0, =0xC4000021
    mov  x1, #0
    adr  x2, handler
    mov  x3, #0x55
    mov  x4, #0
    mov  x5, #0
    hvc  #0
    brk  #0
    // EVENT_ENABLE(0)
    ldr  x0, =0xC4000022
    mov  x1, #0
    hvc  #0
    brk  #0
    // PE_UNMASK
    ldr  x0, =0xC400002C
    hvc  #0
    brk  #0
    // EVENT_SIGNAL(event 0, to PE 0: ourselves)
    mov  x7, #77                // something for the handler to find
    ldr  x0, =0xC400002F
    mov  x1, #0
    mov  x2, #0
    hvc  #0
signalled:
    brk  #0
    // EVENT_STATUS(0)
    ldr  x0, =0xC4000028
    mov  x1, #0
    hvc  #0
    brk  #0

handler:                        // x0 = event, x1 = ep_arg, x2 = interrupted PC, x3 = its PSTATE
    str  x0, [x20], #8
    str  x1, [x20], #8
    str  x2, [x20], #8
    str  x3, [x20], #8
    ldr  x0, =0xC4000024        // EVENT_CONTEXT(7): the interrupted x7
    mov  x1, #7
    hvc  #0
    str  x0, [x20], #8
    brk  #0                     // stop inside the handler, to look around
    ldr  x0, =0xC4000025        // EVENT_COMPLETE(0: handled)
    mov  x1, #0
    hvc  #0                     // does not return: the interrupted code resumes

    .balign 8
log: .space 64
'''

def show(m, step):
    s = m.sdei.snapshot()
    e = s["events"][0]
    print(f"{step:24s} x0={to_s64(m.reg('x0')):3d} | PE {'masked  ' if s['masked'] else 'unmasked'} "
          f"running={str(s['running']):6s} | event 0: state {e['state']} pending={e['pending']}")

m = apflab.Machine(seed=0)
syms = m.load_asm(WALK)
show(m, "start")
for step in ("EVENT_REGISTER", "EVENT_ENABLE", "PE_UNMASK", "EVENT_SIGNAL -> handler",
             "EVENT_COMPLETE -> back", "EVENT_STATUS"):
    stop = m.run()                       # to the next brk #0
    show(m, step)
    m.set_reg("pc", stop.pc + 4)         # step over the brk"""),
    md("""Read it row by row: REGISTER takes event 0 from state 0 to 1, ENABLE to 3, and
PE_UNMASK opens the PE. The SIGNAL is delivered at once: the next stop is already *inside*
the handler, with state 7 (running) and `running=[0]` on the PE. There `x0` is 77, the answer
of `EVENT_CONTEXT(7)`. COMPLETE brings the state back to 3 and resumes the main program
right after its `hvc`, with `x0` = 0, the result of SIGNAL, restored as if nothing had
happened. The final `EVENT_STATUS` returns 3: registered and enabled.

What did the handler find in its entry registers?"""),
    code("""log = [m.read_u64(syms["log"] + 8 * i) for i in range(5)]
print(f"x0 event number        : {log[0]}")
print(f"x1 ep_arg              : {log[1]:#x}")
print(f"x2 interrupted PC      : {log[2]:#x}  (the label 'signalled' is {syms['signalled']:#x})")
print(f"x3 interrupted PSTATE  : {log[3]:#x}  (EL1h, DAIF masked: how the machine starts)")
print(f"EVENT_CONTEXT(7) -> x7 : {log[4]}")"""),
    md("""The host logged every call, every state change, the dispatch and the completion:"""),
    code("""for rec in m.trace.records:
    if rec.kind.startswith("sdei"):
        f = dict(rec.fields)
        for k in ("pc", "entry", "pstate", "resume", "fid"):     # addresses and PSTATE in hex
            if k in f and f[k] is not None:
                f[k] = hex(f[k])
        print(f"t={rec.t_ns:5d}  {rec.kind:13s} {f}")"""),
    md("""## Masking and pending

What if the event is signalled while the PE is masked? SIGNAL still succeeds, and the
event stays **pending** (the lab's model). TF-A's `sdei_signal` also returns success: it
raises the SGI bound to event 0 and leaves the rest to its dispatcher. The pending event is
delivered the moment the PE is unmasked — inside the `PE_UNMASK` call, before the
instruction after it runs. This guest counts its handler's runs."""),
    *predict("The guest signals event 0 while the PE is masked, stops, then unmasks. What does "
             "EVENT_SIGNAL return, and when does the handler run: never, at once, or at the "
             "unmask?", "predicted", "(None, None)   # (SIGNAL's result, when)"),
    code("""PENDING_DEMO = r'''
_start:
    ldr  x0, =0xC4000021        // EVENT_REGISTER(0, handler)
    mov  x1, #0
    adr  x2, handler
    mov  x3, #0
    mov  x4, #0
    mov  x5, #0
    hvc  #0
    ldr  x0, =0xC4000022        // EVENT_ENABLE(0)
    mov  x1, #0
    hvc  #0
    ldr  x0, =0xC400002F        // EVENT_SIGNAL(0, PE 0) while the PE is still masked
    mov  x1, #0
    mov  x2, #0
    hvc  #0
    brk  #0
    ldr  x0, =0xC400002C        // PE_UNMASK
    hvc  #0
    brk  #0

handler:
    adr  x9, handled
    ldr  x10, [x9]
    add  x10, x10, #1
    str  x10, [x9]
    ldr  x0, =0xC4000025        // EVENT_COMPLETE
    mov  x1, #0
    hvc  #0

    .balign 8
handled: .quad 0
'''
m = apflab.Machine(seed=0)
syms = m.load_asm(PENDING_DEMO)
for step in ("SIGNAL while masked", "PE_UNMASK"):
    stop = m.run()
    show(m, step)
    print(f"{'':24s} handler runs so far: {m.read_u64(syms['handled'])}")
    m.set_reg("pc", stop.pc + 4)"""),
    md("""The same holds for a *disabled* event: signalled while disabled, it waits for
`EVENT_ENABLE`. And `EVENT_UNREGISTER` throws a pending signal away. (This is why APF needs
care: the host must not count on delivering "page not present" while the guest has the PE
masked; it falls back to a synchronous fault instead.)"""),
    md("""## COMPLETE or COMPLETE_AND_RESUME

`EVENT_COMPLETE` returns to the interrupted code exactly where it was.
`EVENT_COMPLETE_AND_RESUME(addr)` restores `x0`–`x17` too, but then enters `addr` *as if an
exception had been taken* from the interrupted code: `ELR_EL1` = interrupted PC, `SPSR_EL1`
= interrupted PSTATE, PSTATE = EL1h with DAIF set. Linux passes its own IRQ vector
(`VBAR_EL1 + 0x280` from EL1): on the way out of that "interrupt" the kernel checks whether
to reschedule, which is exactly what the APF guest needs after parking a task.

The guest below is the same for both runs except for the handler's last call. The code at
the IRQ vector counts its runs, records ELR and SPSR, and `eret`s."""),
    code("""def resume_demo(call):
    m = apflab.Machine(seed=0)
    syms = m.load_asm(rf'''
_start:
    adr  x0, vectors
    msr  vbar_el1, x0
    ldr  x0, =0xC4000021        // EVENT_REGISTER(0, handler)
    mov  x1, #0
    adr  x2, handler
    mov  x3, #0
    mov  x4, #0
    mov  x5, #0
    hvc  #0
    ldr  x0, =0xC4000022        // EVENT_ENABLE(0)
    mov  x1, #0
    hvc  #0
    ldr  x0, =0xC400002C        // PE_UNMASK
    hvc  #0
    ldr  x0, =0xC400002F        // EVENT_SIGNAL(0, PE 0)
    mov  x1, #0
    mov  x2, #0
    hvc  #0
after_signal:
    brk  #0

handler:
    {call}

    .balign 2048
vectors:
    .space 0x280
irq_el1h:                       // VBAR_EL1 + 0x280
    adr  x9, irq_runs
    ldr  x10, [x9]
    add  x10, x10, #1
    str  x10, [x9]
    mrs  x11, elr_el1
    mrs  x12, spsr_el1
    eret                        // back to the interrupted code
    .balign 8
irq_runs: .quad 0
''')
    m.run()
    print(f"  stopped at after_signal: {m.reg('pc') == syms['after_signal']}; "
          f"IRQ-vector code ran {m.read_u64(syms['irq_runs'])} time(s)", end="")
    if m.read_u64(syms["irq_runs"]):
        print(f"; it saw ELR_EL1={m.reg('x11'):#x} (after_signal) SPSR_EL1={m.reg('x12'):#x}")
    else:
        print()
    (done,) = m.trace.select("sdei_complete")
    print(f"  trace: sdei_complete resume={done.get('resume') and hex(done.get('resume'))}")

print("EVENT_COMPLETE:")
resume_demo("ldr  x0, =0xC4000025\\n    mov  x1, #0\\n    hvc  #0")
print("EVENT_COMPLETE_AND_RESUME(irq_el1h):")
resume_demo("ldr  x0, =0xC4000026\\n    adr  x1, irq_el1h\\n    hvc  #0")"""),
    md("""## Priorities: a critical event preempts a normal handler

Event 2 is a *critical* event. DEN0054C's rule: a critical event may interrupt a normal
handler; nothing interrupts a critical handler; events of the same priority never nest —
a second one waits, pending, until the running handler completes.

The guest registers and enables events 0 (normal) and 2 (critical), unmasks, and signals
event 0. Its handler logs "h0 start", stops with `brk #0`, then logs "h0 end" and
completes. At that stop, Python plays the host: it moves PC past the `brk` **first** (the
raise dispatches at once, and saves the PC as the place to come back to), then raises
event 2. (The handlers advance `x20`, the log pointer, on purpose so the log shows the
order; a real handler must preserve `x18`–`x30`.)"""),
    *predict("A normal handler is running when the critical event 2 and another normal event "
             "arrive. In which order do the three handlers finish?", "predicted_order", "None"),
    code("""NESTING = r'''
_start:
    adr  x20, log
    ldr  x0, =0xC4000021        // EVENT_REGISTER(0, handler0)
    mov  x1, #0
    adr  x2, handler0
    mov  x3, #0
    mov  x4, #0
    mov  x5, #0
    hvc  #0
    ldr  x0, =0xC4000022        // EVENT_ENABLE(0)
    mov  x1, #0
    hvc  #0
    ldr  x0, =0xC4000021        // EVENT_REGISTER(2, handler2)
    mov  x1, #2
    adr  x2, handler2
    mov  x3, #0
    mov  x4, #0
    mov  x5, #0
    hvc  #0
    ldr  x0, =0xC4000022        // EVENT_ENABLE(2)
    mov  x1, #2
    hvc  #0
    ldr  x0, =0xC400002C        // PE_UNMASK
    hvc  #0
    ldr  x0, =0xC400002F        // EVENT_SIGNAL(0, PE 0)
    mov  x1, #0
    mov  x2, #0
    hvc  #0
    mov  x9, #0xAA              // "main" goes on
    str  x9, [x20], #8
    brk  #0

handler0:
    mov  x9, #0x10              // "h0 start"
    str  x9, [x20], #8
    brk  #0                     // Python raises an event here
    mov  x9, #0x11              // "h0 end"
    str  x9, [x20], #8
    ldr  x0, =0xC4000025        // EVENT_COMPLETE
    mov  x1, #0
    hvc  #0

handler2:
    mov  x9, #0x20              // "h2"
    str  x9, [x20], #8
    ldr  x0, =0xC4000025        // EVENT_COMPLETE
    mov  x1, #0
    hvc  #0

    .balign 8
log: .space 64
'''
NAMES = {0x10: "h0 start", 0x11: "h0 end", 0x20: "h2", 0xAA: "main"}

def nesting(raise_at_stop):
    m = apflab.Machine(seed=0)
    syms = m.load_asm(NESTING)
    stop = m.run()                              # stops at the brk inside handler0
    print(f"  in handler0: running={m.sdei.snapshot()['running']}")
    m.set_reg("pc", stop.pc + 4)                # past the brk BEFORE raising
    now = m.sdei.raise_event(raise_at_stop)
    s = m.sdei.snapshot()
    print(f"  raise_event({raise_at_stop}) dispatched now: {now}; running={s['running']}, "
          f"event {raise_at_stop} pending={s['events'][raise_at_stop]['pending']}")
    while True:
        stop = m.run()
        if (m.reg("x20") - syms["log"]) // 8 and m.read_u64(m.reg("x20") - 8) == 0xAA:
            break                               # main's brk: done
        m.set_reg("pc", stop.pc + 4)            # handler0's brk on a second run: go on
    n = (m.reg("x20") - syms["log"]) // 8
    print("  order:", " -> ".join(NAMES[m.read_u64(syms["log"] + 8 * i)] for i in range(n)))

print("critical event 2 raised while handler0 runs:")
nesting(2)
print("normal event 0 raised again while handler0 runs:")
nesting(0)"""),
    md("""With event 2 the order is *h0 start → h2 → h0 end*: the critical handler ran in the middle
of the normal one, and its COMPLETE returned into handler0. With event 0 itself the raise
is not delivered (same priority, and event 0 is running); it stays pending and runs as soon
as handler0 completes — the handler runs twice in a row, before main goes on."""),
]

EX_INTRO = [
    md("""## Exercise: follow an SDEI event

Your seed draws six SDEI calls on event 0, made in order by a fresh guest, then
`EVENT_STATUS(0)`. The handler counts its runs and completes. Predict each call's result,
the final status, and how many times the handler ran. Use the table above; remember the PE
starts masked and a signal may wait."""),
    code("""from apflab.exercises.lab04 import SdeiSequence

SEED = 1234                      # <- your seed
ex = SdeiSequence(SEED)
print(ex.question())"""),
]
EX_STUDENT = [
    code("""my_answer = None                 # <- ([r1, r2, r3, r4, r5, r6], status, handled)
ex.check(my_answer)"""),
    code("""# print(ex.hint())               # uncomment when you want a hint"""),
    md("""Want to see the guest? `print(ex.source())` shows the assembly the check runs."""),
]
EX_SOLUTION = [
    md("""**Worked solution.** Walk the sequence with three pieces of state: the event's state
(from the table), the PE mask, and whether a signal is pending. After every call, deliver
the pending signal if the event is enabled (state 3) and the PE unmasked; the handler's
COMPLETE takes the event from 7 back to 3."""),
    solution("lab04-sequence", "", """state, masked, pending, handled = 0, True, False, 0
results = []
for call in ex.params["sequence"]:
    if call.startswith("EVENT_REGISTER"):
        r, state = (0, 1) if state == 0 else (-3, state)
    elif call == "EVENT_ENABLE(0)":
        r, state = (-3, state) if state == 0 else (0, 3)
    elif call == "EVENT_DISABLE(0)":
        r, state = (-3, state) if state == 0 else (0, 1)
    elif call == "EVENT_UNREGISTER(0)":
        r, state, pending = ((-3, state, pending) if state == 0 else (0, 0, False))
    elif call.startswith("EVENT_SIGNAL"):
        r, pending = ((-3, pending) if state == 0 else (0, True))
    elif call == "PE_MASK":
        r, masked = (0 if masked else 1), True
    elif call == "PE_UNMASK":
        r, masked = 0, False
    results.append(r)
    if pending and state == 3 and not masked:    # dispatch, handler runs, COMPLETE: 3 -> 7 -> 3
        pending, handled = False, handled + 1
    print(f"{call:28s} -> {r:3d}   state={state} masked={masked} pending={pending}")
my_answer = (results, state, handled)
print(my_answer)"""),
    graded("lab04-sequence-check", 2, "ex", "SdeiSequence", "apflab.exercises.lab04", "my_answer"),
]

SUMMARY = [
    md("""## Summary

- An SDEI client registers a handler for an event, enables it and unmasks the PE; the PE starts
  masked. The handler is entered at EL1 with DAIF set and `x0`–`x3` = event, argument,
  interrupted PC and PSTATE, and must end with a COMPLETE call.
- Each event's state is the EVENT_STATUS bits (1 registered, 2 enabled, 4 running), and one
  table says what every call does in every state; forbidden calls return DENIED (-3).
- A signal that cannot be delivered (PE masked, event disabled, a handler of the same priority
  running) waits, pending, and is delivered when the obstacle goes.
- `EVENT_COMPLETE` resumes the interrupted code; `EVENT_COMPLETE_AND_RESUME(addr)` turns the
  return into an exception entry at `addr`, which Linux uses to reschedule.
- A critical event preempts a normal handler; nothing preempts a critical one.

Next: the APF labs, where the host raises event 1 when a guest task touches a page that is
not there. The solution notebook is `labs/solutions/04-sdei.ipynb`."""),
]

CELLS = TEACH + EX_INTRO + EX_STUDENT + SUMMARY
SOLUTION_CELLS = TEACH + EX_INTRO + EX_SOLUTION + SUMMARY
