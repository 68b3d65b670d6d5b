"""SDEI conformance from the guest's side: AArch64 code calls the host through ``hvc #0``.

Every expectation comes from DEN0054C, TF-A and the lab's documented choices
(docs/REFERENCES.md, "SDEI" and "Departures"; KVM v7's choices with
``profile="kvm-v7"``), through the independent model in
``sdei_ref.py``; none is read back from apflab's own SDEI tables. Most tests
are *scripts*: one list of operations that becomes both the guest program (here)
and the model's expected result log (``sdei_ref.expected_log``). The rest
(handler entry registers, exact context restore) are hand-written assembly.

Guest conventions: x20 walks the ``results`` log (``str x0, [x20], #8``);
handlers advance it too, on purpose, so the log shows the order in which code
ran. A handler that falls off its end hits ``brk #1``, which faults (no vectors).
"""

from __future__ import annotations

import pytest

import sdei_ref as R
from guestlib import mov64
from sdei_ref import (Call, Eret, HostRaise, Label, Mark, Once, Rec, Script, Set, UNKNOWN,
                      expected_log)

MASK64 = (1 << 64) - 1
PROFILES = ("lab", "kvm-v7")
LOG_SLOTS = 256


def machine(profile: str = "lab"):
    from apflab.machine import Machine
    return Machine(seed=0, profile=profile)


def s64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


# -- assembly generation -------------------------------------------------------------------------



def load(reg: str, value) -> list[str]:
    return [f"adr {reg}, {value}"] if isinstance(value, Label) else mov64(reg, value)


def hvc(fid: int, *args) -> list[str]:
    """x0 = fid, x1.. = args, hvc #0 (the SMCCC conduit)."""
    lines = mov64("x0", fid)
    for i, a in enumerate(args, 1):
        lines += load(f"x{i}", a)
    return lines + ["hvc #0"]


REC = "str x0, [x20], #8"


def emit(ops, out: list[str], onces: list[str]) -> None:
    for op in ops:
        if isinstance(op, Call):
            out += hvc(op.fid, *op.args)
            out.append(f"{op.label}:")
            if op.record:
                out.append(REC)
        elif isinstance(op, Mark):
            out += mov64("x9", op.value) + ["str x9, [x20], #8"]
        elif isinstance(op, Set):
            out += mov64(f"x{op.reg}", op.value)
        elif isinstance(op, Rec):
            out.append(f"str x{op.reg}, [x20], #8")
        elif isinstance(op, HostRaise):
            out += ["brk #0", f"{op.label}:"]
        elif isinstance(op, Once):
            onces.append(op.label)
            out += [f"adr x9, {op.label}_flag", "ldr x10, [x9]", f"cbnz x10, {op.label}_skip",
                    "mov x10, #1", "str x10, [x9]"]
            emit(op.ops, out, onces)
            out.append(f"{op.label}_skip:")
        elif isinstance(op, Eret):
            out.append("eret")
        else:
            raise TypeError(op)


def build(script: Script) -> str:
    out = ["_start:", "adr x20, results"]
    onces: list[str] = []
    emit(script.main, out, onces)
    out += ["done:", "brk #0"]
    for label, ops in list(script.handlers.items()) + list(script.targets.items()):
        out.append(f"{label}:")
        emit(ops, out, onces)
        out.append("brk #1")          # fell off the end: a guest fault, the test errors
    out.append(".balign 8")
    for label in onces:
        out += [f"{label}_flag:", ".quad 0"]
    out += ["results:", f".space {8 * LOG_SLOTS}"]
    return "\n".join(f"    {l}" if not l.endswith(":") else l for l in out) + "\n"


def host_raises(ops) -> list[HostRaise]:
    found = []
    for op in ops:
        if isinstance(op, HostRaise):
            found.append(op)
        elif isinstance(op, Once):
            found += host_raises(op.ops)
    return found


# -- running -------------------------------------------------------------------------------------

def read_log(m, syms) -> list[int]:
    n = (m.reg("x20") - syms["results"]) // 8
    assert 0 <= n <= LOG_SLOTS, f"x20 is off the results log ({n} entries)"
    return [s64(m.read_u64(syms["results"] + 8 * i)) for i in range(n)]


def run_guest(m, syms, raises: dict[int, int] | None = None, max_stops: int = 20) -> None:
    """Run to ``done``; at a ``brk #0`` listed in ``raises`` (address -> event) the host raises it."""
    raises = raises or {}
    for _ in range(max_stops):
        stop = m.run(max_instructions=200_000)
        if stop.pc == syms["done"]:
            return
        assert stop.pc in raises, f"guest stopped at unexpected brk #0, pc={stop.pc:#x}"
        # brk leaves PC on itself: step past it first, so the raise (which may be delivered at
        # once) interrupts the instruction after the brk.
        m.set_reg("pc", stop.pc + 4)
        m.sdei.raise_event(raises[stop.pc])
    raise AssertionError("guest never reached `done`")


def resolve(value, syms):
    if isinstance(value, Label):
        return syms[value]
    return value if value is UNKNOWN else s64(value)


def run_script(script: Script, profile: str = "lab") -> tuple[list, list, dict]:
    """Run the script in the guest and in the model; returns (got, expected, symbols)."""
    expected = expected_log(script, profile)          # first: Unspecified fails before any guest runs
    m = machine(profile)
    syms = m.load_asm(build(script))
    ops = list(script.main) + [op for ops in list(script.handlers.values()) + list(script.targets.values())
                               for op in ops]
    run_guest(m, syms, {syms[op.label] - 4: op.event for op in host_raises(ops)})
    got = read_log(m, syms)
    expected = [resolve(e, syms) for e in expected]
    # UNKNOWN (a value docs/REFERENCES.md does not fix) matches whatever the guest saw.
    expected = [g if e is UNKNOWN else e for g, e in zip(got, expected)] + expected[len(got):]
    return got, expected, syms


def check(script: Script, profile: str = "lab") -> list:
    got, expected, _ = run_script(script, profile)
    assert got == expected
    return got


# -- shorthands ----------------------------------------------------------------------------------

H0, H1, H2, T0 = Label("h0"), Label("h1"), Label("h2"), Label("t0")
ARG = {0: 0xA0A0_0000_0000_00E0, 1: 0xA1A1_0000_0000_00E1, 2: 0xA2A2_0000_0000_00E2}
ENTRY = {0: H0, 1: H1, 2: H2}


def register(ev, entry=None, arg=None, flags=0, aff=0):
    return Call(R.EVENT_REGISTER, ev, entry or ENTRY.get(ev, H0), ARG.get(ev, 0) if arg is None else arg,
                flags, aff)


def enable(ev):
    return Call(R.EVENT_ENABLE, ev)


def disable(ev):
    return Call(R.EVENT_DISABLE, ev)


def unregister(ev):
    return Call(R.EVENT_UNREGISTER, ev)


def status(ev):
    return Call(R.EVENT_STATUS, ev)


def context(param):
    return Call(R.EVENT_CONTEXT, param)


def complete(st=0):
    return Call(R.EVENT_COMPLETE, st)


def complete_and_resume(addr=T0):
    return Call(R.EVENT_COMPLETE_AND_RESUME, addr)


def signal(ev=0, pe=0):
    return Call(R.EVENT_SIGNAL, ev, pe)


def unmask():
    return Call(R.PE_UNMASK)


def mask():
    return Call(R.PE_MASK)


def get_info(ev, info):
    return Call(R.EVENT_GET_INFO, ev, info)


def distinct(i: int) -> int:
    """A value nobody else would put in x<i>."""
    return 0xC0DE_0000_0000_0000 | (i << 40) | (0x600D_0000 + i)


# -- 0. the reference model itself ---------------------------------------------------------------

def test_reference_table_covers_every_state_and_action():
    assert set(R.TABLE) == set(R.STATES)
    for state in R.STATES:
        assert set(R.TABLE[state]) == set(R.ACTIONS) | {R.DISPATCH}
        for action in R.ACTIONS:
            code, new = R.step(state, action)
            assert new in R.STATES and code in (R.SUCCESS, R.DENIED, R.PENDING)
    # Spot checks against the printed table.
    assert R.step(7, R.UNREGISTER) == (R.PENDING, 4)
    assert R.step(4, R.UNREGISTER) == (R.PENDING, 4)
    assert R.step(5, R.ENABLE) == (R.SUCCESS, 7)
    assert R.step(1, R.DISABLE) == (R.SUCCESS, 1)
    assert R.step(0, R.ENABLE) == (R.DENIED, 0)


# -- 1. the state table, from the guest ----------------------------------------------------------

RUNNING_SETUP = {7: [], 5: [disable(0)], 4: [unregister(0)]}
IDLE_SETUP = {0: [], 1: [register(0)], 3: [register(0), enable(0)]}
ACTION_CALLS = {
    "REGISTER": lambda: register(0),
    "ENABLE": lambda: enable(0),
    "DISABLE": lambda: disable(0),
    "UNREGISTER": lambda: unregister(0),
    "CONTEXT": lambda: context(9),
    "COMPLETE": lambda: complete(0),
    "COMPLETE_AND_RESUME": lambda: complete_and_resume(T0),
}
CTX9 = 0x5EED_0000_0000_0009


@pytest.mark.parametrize("action", list(ACTION_CALLS))
@pytest.mark.parametrize("state", R.STATES)
def test_state_table(state, action):
    """docs/REFERENCES.md ("SDEI") "Per-event state": each call in each state (event 0), result and new STATUS."""
    call = ACTION_CALLS[action]()
    targets = {T0: [status(0), Eret()]}
    if state in IDLE_SETUP:
        setup = IDLE_SETUP[state]
        script = Script(main=[Set(9, CTX9), *setup, status(0), call, status(0)],
                        handlers={H0: [Mark(0xBAD0), complete()]}, targets=targets)
        before_at = len(setup)
    else:
        # The handler reaches state 7/5/4 and makes the call under test inside it.
        prefix = RUNNING_SETUP[state]
        script = Script(main=[Set(9, CTX9), register(0), enable(0), unmask(), signal(0), status(0)],
                        handlers={H0: [*prefix, status(0), call, status(0), complete()]},
                        targets=targets)
        before_at = 3 + len(prefix)
    got, expected, _ = run_script(script)
    assert expected[before_at] == state, "the script did not reach the state under test (model)"
    assert got == expected


# -- 2. handler entry ----------------------------------------------------------------------------

INTERRUPTED_NZCV = 0x6000_0000        # Z and C
INTERRUPTED_DAIF = 0x280              # D and I (daifclr #5 clears A and F)
EL1H = 0x5


@pytest.mark.parametrize("profile", PROFILES)
def test_handler_entry_registers(profile):
    """Dispatch: x0 event, x1 ep_arg, x2 interrupted PC, x3 interrupted PSTATE, x4-x17 zero
    (lab default, and KVM v7's), EL1h with DAIF all set."""
    src = ["_start:", "adr x20, results"]
    src += hvc(R.EVENT_REGISTER, 0, H0, ARG[0], 0, 0) + [REC]
    src += hvc(R.EVENT_ENABLE, 0) + [REC]
    src += hvc(R.PE_UNMASK) + [REC]
    src += ["msr daifclr, #5"] + mov64("x9", INTERRUPTED_NZCV) + ["msr nzcv, x9"]
    for i in range(3, 18):
        src += mov64(f"x{i}", distinct(i))
    src += hvc(R.EVENT_SIGNAL, 0, 0) + ["sig_ret:", REC, "done:", "brk #0"]
    src += ["h0:"] + [f"str x{i}, [x20], #8" for i in range(18)]
    for sysreg in ("daif", "CurrentEL", "spsel"):
        src += [f"mrs x9, {sysreg}", "str x9, [x20], #8"]
    src += hvc(R.EVENT_COMPLETE, 0) + ["brk #1", ".balign 8", "results:", f".space {8 * LOG_SLOTS}"]
    m = machine(profile)
    syms = m.load_asm("\n".join(src) + "\n")
    run_guest(m, syms)
    got = read_log(m, syms)
    assert got[:3] == [0, 0, 0]
    entry = got[3:21]
    assert entry[0] == 0, "x0 = event number"
    assert entry[1] == s64(ARG[0]), "x1 = ep_arg"
    assert entry[2] == syms["sig_ret"], "x2 = PC after the hvc that made the event deliverable"
    assert entry[3] == INTERRUPTED_NZCV | INTERRUPTED_DAIF | EL1H, "x3 = interrupted PSTATE"
    assert entry[4:] == [0] * 14, "x4-x17 zeroed (lab default)"
    assert got[21:24] == [0x3C0, 1 << 2, 1], "handler: DAIF all set, EL1, SP_EL1 (EL1h)"
    assert got[24:] == [0], "SIGNAL's result, logged after the handler completed"


# -- 3. EVENT_CONTEXT ----------------------------------------------------------------------------

def context_probe():
    return [context(i) for i in range(18)] + [context(18), context(0x1_0000_0000), complete()]


@pytest.mark.parametrize("profile", PROFILES)
def test_context_reads_interrupted_registers_host_raised(profile):
    """CONTEXT(i) = interrupted x<i> for 0..17; >= 18 INVALID. Event 1 raised by the host at a brk,
    so every one of x0-x17 holds a chosen value."""
    script = Script(main=[register(1), enable(1), unmask(), *[Set(i, distinct(i)) for i in range(18)],
                          HostRaise(1), Mark(0xD0)],
                    handlers={H1: context_probe()})
    got = check(script, profile)
    assert got[3:21] == [s64(distinct(i)) for i in range(18)]
    assert got[21:23] == [R.INVALID, R.INVALID]


def test_context_after_pending_signal_unmasked():
    """SIGNAL while masked, then x1-x17 set, then PE_UNMASK delivers: CONTEXT sees x0 = 0 (the
    UNMASK result) and x4-x17 as set (x1-x3 may carry SMCCC results: not checked)."""
    script = Script(main=[register(0), enable(0), signal(0), *[Set(i, distinct(i)) for i in range(1, 18)],
                          unmask(), Mark(0xD0)],
                    handlers={H0: context_probe()})
    got = check(script)
    assert got[3] == 0 and got[7:21] == [s64(distinct(i)) for i in range(4, 18)]


@pytest.mark.parametrize("profile", PROFILES)
def test_context_outside_handler(profile):
    """Outside a handler: DENIED; param >= 18 is INVALID under the lab default, DENIED under kvm-v7."""
    got = check(Script(main=[context(0), context(17), context(18), register(0), enable(0), context(18)],
                       handlers={H0: [complete()]}), profile)
    want18 = R.INVALID if profile == "lab" else R.DENIED
    assert got == [R.DENIED, R.DENIED, want18, 0, 0, want18]


# -- 4. EVENT_COMPLETE / COMPLETE_AND_RESUME restore ---------------------------------------------

MAIN_NZCV = 0x9000_0000               # N and V
MAIN_PSTATE = MAIN_NZCV | INTERRUPTED_DAIF | EL1H


def restore_program(finish: list[str], target: list[str]) -> str:
    """Main sets x0-x17, NZCV and DAIF, stops at a brk where the host raises event 1; the
    handler scribbles on everything, then ``finish`` (COMPLETE or COMPLETE_AND_RESUME)."""
    src = ["_start:", "adr x20, results"]
    src += hvc(R.EVENT_REGISTER, 1, H1, ARG[1], 0, 0) + [REC]
    src += hvc(R.EVENT_ENABLE, 1) + [REC]
    src += hvc(R.PE_UNMASK) + [REC]
    src += ["msr daifclr, #5"] + mov64("x9", MAIN_NZCV) + ["msr nzcv, x9"]
    for i in range(18):
        src += mov64(f"x{i}", distinct(i))
    src += ["raise_pt:", "brk #0", "resume_pt:"] + [f"str x{i}, [x20], #8" for i in range(18)]
    for sysreg in ("nzcv", "daif", "CurrentEL", "spsel"):
        src += [f"mrs x9, {sysreg}", "str x9, [x20], #8"]
    src += ["done:", "brk #0"]
    src += ["h1:", "adr x9, seen_pc", "str x2, [x9]"]
    for i in range(18):
        src += mov64(f"x{i}", 0xBAD0_0000 + i)
    src += mov64("x9", 0x4000_0000) + ["msr nzcv, x9"] + finish + ["brk #1"]
    src += target
    src += [".balign 8", "seen_pc:", ".quad 0", "results:", f".space {8 * LOG_SLOTS}"]
    return "\n".join(src) + "\n"


def test_complete_restores_registers_pc_and_pstate():
    """EVENT_COMPLETE: x0-x17, PC and PSTATE exactly as interrupted; the interrupted code resumes."""
    m = machine()
    syms = m.load_asm(restore_program(hvc(R.EVENT_COMPLETE, 0), []))
    run_guest(m, syms, {syms["raise_pt"]: 1})
    got = read_log(m, syms)
    assert m.read_u64(syms["seen_pc"]) == syms["resume_pt"], "handler x2 = PC after the brk"
    assert got[:3] == [0, 0, 0]
    assert got[3:21] == [s64(distinct(i)) for i in range(18)], "x0-x17 restored"
    assert got[21:] == [MAIN_NZCV, INTERRUPTED_DAIF, 1 << 2, 1], "NZCV, DAIF, EL1, SPSel restored"


def test_complete_and_resume_enters_target_like_an_exception():
    """COMPLETE_AND_RESUME(addr): x0-x17 restored, ELR_EL1 = interrupted PC, SPSR_EL1 =
    interrupted PSTATE, addr entered at EL1h with DAIF set; its eret returns to the interrupted code."""
    target = ["t0:"] + [f"str x{i}, [x20], #8" for i in range(18)]
    for sysreg in ("elr_el1", "spsr_el1", "daif", "CurrentEL", "spsel"):
        target += [f"mrs x21, {sysreg}", "str x21, [x20], #8"]
    target += ["eret"]
    m = machine()
    syms = m.load_asm(restore_program(hvc(R.EVENT_COMPLETE_AND_RESUME, T0), target))
    run_guest(m, syms, {syms["raise_pt"]: 1})
    got = read_log(m, syms)
    regs = [s64(distinct(i)) for i in range(18)]
    assert got[:3] == [0, 0, 0]
    assert got[3:21] == regs, "x0-x17 restored on entry to the resume address"
    assert got[21:26] == [syms["resume_pt"], MAIN_PSTATE, 0x3C0, 1 << 2, 1], \
        "ELR_EL1, SPSR_EL1, DAIF all set, EL1, EL1h"
    assert got[26:44] == regs, "after eret the interrupted code sees its registers"
    assert got[44:] == [MAIN_NZCV, INTERRUPTED_DAIF, 1 << 2, 1]


def test_complete_and_resume_to_an_invalid_address_is_denied_and_the_handler_goes_on():
    """TF-A validates the resume address like an entry point: DENIED, the event still running."""
    check(Script(main=[register(0), enable(0), unmask(), signal(0), status(0)],
                 handlers={H0: [complete_and_resume(0x10), status(0), complete_and_resume(0x4000_0002),
                                complete()]}))


# -- 5. pending until unmask / enable; PE_MASK -------------------------------------------------------

def test_signal_while_masked_waits_for_unmask():
    """A PE starts masked; SIGNAL returns 0 and the handler runs only after PE_UNMASK."""
    unmask_call = unmask()
    script = Script(main=[register(0), enable(0), signal(0), Mark(0x51), status(0), unmask_call,
                          status(0), Mark(0x52)],
                    handlers={H0: [Mark(0xA0), Rec(2), complete()]})
    got, expected, syms = run_script(script)
    assert got == expected
    assert got[2:5] == [0, 0x51, 3], "SIGNAL accepted, nothing delivered while masked"
    assert got[5:7] == [0xA0, syms[unmask_call.label]], "delivered right after PE_UNMASK"


def test_signal_while_disabled_waits_for_enable():
    """Lab default: SIGNAL of a disabled event stays pending and is delivered at ENABLE."""
    enable_call = enable(0)
    script = Script(main=[unmask(), register(0), signal(0), Mark(0x51), status(0), enable_call,
                          status(0), Mark(0x52)],
                    handlers={H0: [Mark(0xA0), Rec(2), complete()]})
    got, expected, syms = run_script(script)
    assert got == expected
    assert got[2:5] == [0, 0x51, 1]
    assert got[5:7] == [0xA0, syms[enable_call.label]]


@pytest.mark.parametrize("profile", PROFILES)
def test_pe_mask_result(profile):
    """PE_MASK: 1 if this call masked the PE, 0 if already masked (lab); always 0 (kvm-v7)."""
    got = check(Script(main=[mask(), unmask(), mask(), mask(), unmask(), unmask(), mask()]), profile)
    assert got == ([0, 0, 1, 0, 0, 0, 1] if profile == "lab" else [0] * 7)


def test_pe_mask_defers_delivery():
    """Masking again after an unmask holds a new SIGNAL back until the next PE_UNMASK."""
    check(Script(main=[register(0), enable(0), unmask(), mask(), signal(0), status(0), Mark(0x51),
                       unmask(), Mark(0x52)],
                 handlers={H0: [Mark(0xA0), complete()]}))


@pytest.mark.parametrize("profile", PROFILES)
def test_any_state_calls_work_inside_a_handler(profile):
    """VERSION, STATUS, PE_MASK, PE_UNMASK, SIGNAL, FEATURES work with a handler running; a PE
    masked inside the handler holds the re-signalled event back until the next PE_UNMASK."""
    got = check(Script(
        main=[Call(R.FEATURES, 0), register(0), enable(0), unmask(), signal(0), status(0), Mark(0x51),
              unmask(), Mark(0x52)],
        handlers={H0: [Once([Call(R.VERSION), Call(R.FEATURES, 0), status(0), mask(), mask(), unmask(),
                             mask(), signal(0)]),
                       Mark(0xA0), complete()]}), profile)
    assert got[4] == R.LAB_VERSION and got[5] == got[0], "VERSION and FEATURES as outside"
    assert got[12:] == [0xA0, 0, 3, 0x51, 0xA0, 0, 0x52], "pending until PE_UNMASK, then delivered"


# -- 6. UNREGISTER while running -----------------------------------------------------------------

def test_unregister_while_running_is_pending_until_complete():
    got = check(Script(main=[register(0), enable(0), unmask(), signal(0), status(0), register(0),
                             status(0)],
                       handlers={H0: [Mark(0xA0), unregister(0), status(0), unregister(0), status(0),
                                      complete()]}))
    assert got[3:8] == [0xA0, R.PENDING, 4, R.PENDING, 4]
    assert got[8:] == [0, 0, 0, 1], "after COMPLETE: unregistered, and registrable again"


# -- 7. resets -----------------------------------------------------------------------------------

def test_resets_outside_and_inside_a_handler():
    got = check(Script(
        main=[register(0), register(1), enable(0), Call(R.PRIVATE_RESET), status(0), status(1),
              register(0), Call(R.SHARED_RESET), status(0),
              enable(0), unmask(), signal(0), status(0)],
        handlers={H0: [Call(R.PRIVATE_RESET), Call(R.SHARED_RESET), status(0), complete()],
                  H1: [complete()]}))
    assert got[3:6] == [0, 0, 0], "PRIVATE_RESET succeeds and unregisters registered events"
    assert got[6:9] == [0, 0, 1], "SHARED_RESET succeeds and leaves private event 0 alone"
    assert got[11:14] == [R.DENIED, R.DENIED, 7], "both DENIED while a handler runs, state kept"


# -- 8. error codes ------------------------------------------------------------------------------

BAD = 12345
ERROR_CASES = {
    "register_undefined_event": ([], register(BAD, entry=H0)),
    "enable_undefined_event": ([], enable(BAD)),
    "disable_undefined_event": ([], disable(BAD)),
    "unregister_undefined_event": ([], unregister(BAD)),
    "status_undefined_event": ([], status(BAD)),
    "status_event_above_32_bits": ([], status(1 << 32)),
    "get_info_undefined_event": ([], get_info(BAD, R.INFO_TYPE)),
    "get_info_info_5": ([], get_info(0, 5)),
    "signal_event_1": ([register(1), enable(1)], signal(1)),
    "signal_event_2": ([register(2), enable(2)], signal(2)),
    "signal_undefined_event": ([], signal(BAD)),
    "features_unknown": ([], Call(R.FEATURES, 2)),
    "unknown_sdei_0x33": ([], Call(0xC4000033)),
    "unknown_sdei_0x3f": ([], Call(0xC400003F)),
    "smc32_sdei_version": ([], Call(0x84000020)),
    "unknown_smccc_owner": ([], Call(0xC7000001)),
    "register_reserved_flag_bit2": ([], register(0, flags=1 << 2)),
    "register_reserved_flag_bit63": ([], register(0, flags=1 << 63)),
    "bind_sgi_3": ([], Call(R.INTERRUPT_BIND, 3)),
    "bind_sgi_0": ([], Call(R.INTERRUPT_BIND, 0)),
    "complete_outside_handler": ([register(0), enable(0)], complete()),
    "complete_and_resume_outside_handler": ([register(0), enable(0)], complete_and_resume()),
}
LITERAL = {"unknown_sdei_0x33": R.NOT_SUPPORTED, "unknown_sdei_0x3f": R.NOT_SUPPORTED,
           "smc32_sdei_version": R.NOT_SUPPORTED, "unknown_smccc_owner": R.NOT_SUPPORTED,
           "complete_outside_handler": R.DENIED, "complete_and_resume_outside_handler": R.DENIED}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_code(case):
    """The call returns the documented error and changes nothing (STATUS of events 0 and 1 after)."""
    setup, call = ERROR_CASES[case]
    got = check(Script(main=[*setup, call, status(0), status(1)], handlers={H0: [complete()],
                                                                          H1: [complete()],
                                                                          H2: [complete()]},
                       targets={T0: [Eret()]}))
    assert got[len(setup)] == LITERAL.get(case, R.INVALID)


def test_complete_outside_handler_kvm_v7_leaves_x0():
    """KVM v7: COMPLETE with nothing running leaves x0 (the function ID) untouched."""
    got = check(Script(main=[complete(1), Rec(1)]), "kvm-v7")
    assert got[0] == R.EVENT_COMPLETE


def bind_program() -> str:
    src = ["_start:", "adr x20, results"] + hvc(R.FEATURES, 0) + [REC]
    src += ["and x19, x0, #0xffff", "add x19, x19, #1", "mov x21, #16", "bind_loop:"]
    src += mov64("x0", R.INTERRUPT_BIND) + ["mov x1, x21", "hvc #0", REC, "add x21, x21, #1",
                                             "subs x19, x19, #1", "b.ne bind_loop", "done:", "brk #0",
                                             ".balign 8", "results:", f".space {8 * LOG_SLOTS}"]
    return "\n".join(src) + "\n"


def test_bind_beyond_slots_is_out_of_resource():
    """INTERRUPT_BIND of PPIs 16, 17, ...: as many as FEATURES(BIND_SLOTS)[15:0] succeed with
    distinct event numbers; the next is OUT_OF_RESOURCE."""
    m = machine()
    syms = m.load_asm(bind_program())
    run_guest(m, syms)
    got = read_log(m, syms)
    slots = got[0] & 0xFFFF
    assert got[0] >= 0 and slots < 16
    binds = got[1:]
    assert len(binds) == slots + 1
    assert all(b >= 0 for b in binds[:-1]) and len(set(binds[:-1])) == slots
    assert binds[-1] == R.OUT_OF_RESOURCE


# -- 9. VERSION and GET_INFO ---------------------------------------------------------------------

@pytest.mark.parametrize("profile", PROFILES)
def test_version_and_event_info(profile):
    queries = [(0, R.INFO_TYPE), (0, R.INFO_SIGNALED), (0, R.INFO_PRIORITY),
               (1, R.INFO_TYPE), (1, R.INFO_SIGNALED), (1, R.INFO_PRIORITY),
               (2, R.INFO_SIGNALED), (2, R.INFO_PRIORITY)]
    got = check(Script(main=[Call(R.VERSION), *[get_info(ev, info) for ev, info in queries]]), profile)
    assert got[0] == 0x0001_0001_004B_564D, "bit63 0, major 1, minor 1, vendor 'KVM'"
    assert got[1:] == [0, 1, 0, 0, 0, 0, 0, 1]


# -- 10. priorities ------------------------------------------------------------------------------

def both_registered():
    return [register(0), register(2), enable(0), enable(2), unmask()]


def test_critical_preempts_normal_handler():
    brk = HostRaise(2)
    got, expected, syms = run_script(Script(
        main=[*both_registered(), signal(0), status(0), status(2), Mark(0xEE)],
        handlers={H0: [Mark(0xA0), brk, Mark(0xA1), status(0), status(2), complete()],
                  H2: [Mark(0xC0), Rec(0), Rec(2), status(0), status(2), complete()]}))
    assert got == expected
    assert got[5:10] == [0xA0, 0xC0, 2, syms[brk.label], 7], "critical ran inside the normal handler"
    assert got[10:14] == [7, 0xA1, 7, 3]


def test_normal_waits_for_critical_to_complete():
    brk = HostRaise(2)
    got, expected, syms = run_script(Script(
        main=[*both_registered(), brk, Mark(0xEE), status(0)],
        handlers={H2: [Mark(0xC0), signal(0), status(0), Mark(0xC1), complete()],
                  H0: [Mark(0xA0), Rec(2), complete()]}))
    assert got == expected
    assert got[5:11] == [0xC0, 0, 3, 0xC1, 0xA0, syms[brk.label]], \
        "normal event pending while critical ran, delivered at its completion"


def test_same_priority_normal_events_never_nest():
    brk = HostRaise(1)
    got, expected, syms = run_script(Script(
        main=[register(0), register(1), enable(0), enable(1), unmask(), signal(0), Mark(0xEE)],
        handlers={H0: [Mark(0xA0), brk, status(1), Mark(0xA1), complete()],
                  H1: [Mark(0xB0), Rec(2), status(0), complete()]}))
    assert got == expected
    assert got[5:9] == [0xA0, 3, 0xA1, 0xB0], "event 1 waited for event 0's handler"


def test_resignalled_event_runs_again_after_complete_not_nested():
    got = check(Script(
        main=[register(0), enable(0), unmask(), signal(0), Mark(0xEE)],
        handlers={H0: [Mark(0xA0), Once([signal(0), status(0), Mark(0xA1)]), complete()]}))
    assert got[3:] == [0xA0, 0, 7, 0xA1, 0xA0, 0, 0xEE]


def test_critical_never_nests_in_critical():
    got = check(Script(
        main=[register(2), enable(2), unmask(), HostRaise(2), Mark(0xEE)],
        handlers={H2: [Mark(0xC0), Once([HostRaise(2), status(2), Mark(0xC1)]), complete()]}))
    assert got[3:] == [0xC0, 7, 0xC1, 0xC0, 0xEE]


# -- 11. the Linux client's probe ----------------------------------------------------------------

def test_linux_probe_sequence():
    linux_arg = 0xFFFF_8000_1234_5678
    got = check(Script(
        main=[Call(R.VERSION), Call(R.PRIVATE_RESET), Call(R.SHARED_RESET),
              get_info(0, R.INFO_PRIORITY), get_info(0, R.INFO_TYPE),
              register(0, entry=H0, arg=linux_arg), enable(0), unmask(), signal(0), status(0)],
        handlers={H0: [Rec(0), Rec(1), complete(0)]}))
    assert (got[0] >> 48) & 0x7FFF == 1 and got[0] >= 0
    assert got[1:8] == [0] * 7
    assert got[8:] == [0, s64(linux_arg), 0, 3], "handled: x0 event 0, x1 the arg; SIGNAL 0; idle again"
