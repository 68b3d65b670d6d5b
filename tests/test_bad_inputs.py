"""The bad-input catalogue: every way a student, an instructor or a guest can get it wrong.

Each case checks the error's type and its message (or, for a guest's bad hypercall, the
spec's error code in x0 and no Python exception at all: STYLE, "spec error codes for guest
mistakes, exceptions for ours"). Nothing here may crash the process, hang, or return a
silently wrong result. docs/ROBUSTNESS.md tabulates the same catalogue.

Where apflab does not yet meet that bar the test states the correct behaviour and is
marked ``xfail(strict=True, reason="product bug: ...")``: it starts passing (and so
failing as XPASS) the day the bug is fixed.
"""

from __future__ import annotations

import json

import pytest

from apflab import (AsmError, BudgetExceeded, GuestError, GuestFault, HostCosts, Machine,
                    ParameterError, Trace, TraceFormatError)
from apflab import guest
from apflab.machine import RAM_BASE
from apflab.scenarios import compare, parameters, run_scenario
from guestlib import mov64

MASK64 = (1 << 64) - 1
RAM = 1 << 20                 # the machines here: 1 MiB of guest RAM
RAM_END = RAM_BASE + RAM
BIG = 1 << 63                 # "huge" 64-bit arguments
ALL_ONES = MASK64


NOT_RAISED = pytest.fail.Exception          # pytest.raises(...) saw no exception: "DID NOT RAISE"


def product_bug(raises, reason: str):
    """The test states the correct behaviour; today the product fails it with ``raises``."""
    return pytest.mark.xfail(strict=True, raises=raises, reason=reason)


def machine(**kw) -> Machine:
    kw.setdefault("ram_size", RAM)
    return Machine(seed=0, **kw)


def s64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v




# ====================================================================== assembly

@pytest.mark.parametrize("source, line, words", [
    ("_start:\n  mov x0, #1\n  frob x1, x2\n  brk #0\n", 3, "invalid mnemonic `frob`"),
    ("_start:\n  mov x99, #1\n", 2, "invalid operand"),
    ("_start:\n  nop\n  b nowhere\n", 3, "undefined symbol `nowhere`"),
    ("_start:\n  adr x0, missing_table\n", 2, "undefined symbol `missing_table`"),
    ("_start:\n  nop\n  .quad no_such_label\n", 3, "undefined symbol `no_such_label`"),
    ("_start: nop\nloop: nop\nloop: nop\n", 3, "already defined on line 2"),
    ("_start:\n  ldr x0, [x1, #3, lsl #2]\n", 2, "invalid operand"),
    ("_start:\n  nop\n  .foo 3\n", 3, "unknown or unsupported directive `.foo`"),
    ("_start:\n  nop\n  .ascii \"abc\n", 3, "unterminated string"),
    ("_start:\n  nop\n  b 1b\n", 3, "no local label 1 before this line"),
])
def test_malformed_assembly_names_the_line(source, line, words):
    with pytest.raises(AsmError) as e:
        machine().load_asm(source)
    assert e.value.line == line, str(e.value)
    assert str(e.value).startswith(f"line {line}: ")
    assert e.value.text.strip() == source.splitlines()[line - 1].strip()
    assert words in e.value.message


@pytest.mark.parametrize("source", ["", "   \n\t\n", "// only a comment\n", "/* block */\n", "label_only:\n"])
def test_empty_assembly_is_an_error(source):
    with pytest.raises(AsmError, match="empty program"):
        machine().load_asm(source)


def test_program_without_start_label():
    with pytest.raises(AsmError, match="no `_start` label"):
        machine().load_asm("main:\n  nop\n")


@pytest.mark.parametrize("source, kind", [(b"_start: nop\n", "bytes"), (None, "NoneType"), (["nop"], "list")])
def test_assembly_source_of_the_wrong_type(source, kind):
    with pytest.raises(TypeError, match=f"source must be str, not {kind}"):
        machine().load_asm(source)


# ====================================================================== code outside guest RAM

@pytest.mark.parametrize("base, words", [
    (0x1000, "does not fit in guest RAM"),                        # below RAM
    (0, "does not fit in guest RAM"),
    (RAM_END, "does not fit in guest RAM"),                       # just past the end
    (RAM_END - 4, "does not fit in guest RAM"),                   # first word fits, second not
    (RAM_BASE + 2, "4-byte aligned"),
])
def test_load_outside_ram_is_a_parameter_error(base, words):
    with pytest.raises(ParameterError, match=words) as e:
        machine().load_asm("_start:\n  nop\n  brk #0\n", base=base)
    if "fit" in words:
        assert f"{base:#x}" in str(e.value) and f"{RAM_BASE:#x}" in str(e.value)


def test_load_base_of_the_wrong_type():
    with pytest.raises(TypeError, match="base must be int"):
        machine().load_asm("_start: nop\n", base="0x40000000")


def test_program_larger_than_ram():
    with pytest.raises(ParameterError, match=r"\+0x20004\) does not fit in guest RAM"):
        machine(ram_size=64 * 1024).load_asm("_start: nop\n  .space 0x20000\n")


@pytest.mark.parametrize("target", [0x1000, 0, RAM_END, ALL_ONES & ~3])
def test_branch_outside_ram_is_a_guest_fault_naming_the_pc(target):
    m = machine()
    m.load_asm("_start:\n" + "\n".join(mov64("x0", target)) + "\n  br x0\n")
    with pytest.raises(GuestFault) as e:
        m.run()
    assert e.value.pc == target and f"at pc={target:#x}" in str(e.value)
    # The engine reports the page of the refused access (see the xfail below for data).
    assert f"fetch of {target & ~0xFFF:#x}, outside guest RAM" in str(e.value)
    assert e.value.insn == "<not in guest RAM>"
    assert "EC=0x21: instruction abort from the current EL" in e.value.syndrome


def test_running_off_the_end_of_ram():
    m = machine(ram_size=64 * 1024)
    m.load_asm("_start:\n  b last\n  .space 0xfff8\nlast:\n  nop\n")
    with pytest.raises(GuestFault, match=f"fetch of {RAM_BASE + 0x10000:#x}, outside guest RAM"):
        m.run()


@pytest.mark.parametrize("insn, access, ec", [("ldr x0, [x1]", "read", "EC=0x25"),
                                              ("str x0, [x1]", "write", "EC=0x25")])
def test_data_access_outside_ram_names_pc_and_instruction(insn, access, ec):
    m = machine()
    syms = m.load_asm(f"_start:\n  mov x1, #0x1000\nbad:\n  {insn}\n  brk #0\n")
    with pytest.raises(GuestFault) as e:
        m.run()
    assert e.value.pc == syms["bad"] and e.value.insn == insn
    assert f"{access} of 0x1000, outside guest RAM" in str(e.value)
    assert ec in e.value.syndrome and access in e.value.syndrome


@product_bug(AssertionError, "product bug: the message names the page of the access "
              "(\"read of 0x1000\") instead of the address the guest used (0x1008), as "
                   "FAR_EL1 would: the TLB-fill hook only sees the page-aligned address")
def test_data_access_outside_ram_names_the_exact_address():
    m = machine()
    m.load_asm("_start:\n  mov x1, #0x1008\n  ldr x0, [x1]\n  brk #0\n")
    with pytest.raises(GuestFault, match="read of 0x1008, outside guest RAM"):
        m.run()


# ====================================================================== guests that never stop / fault

def test_guest_that_loops_forever_stops_at_the_budget():
    m = machine()
    syms = m.load_asm("_start:\nspin:\n  add x1, x1, #1\n  b spin\n")
    with pytest.raises(BudgetExceeded) as e:
        m.run(max_instructions=10_000)
    assert e.value.pc in (syms["spin"], syms["spin"] + 4)
    assert e.value.insn in ("add x1, x1, #1", f"b {syms['spin']:#x}")
    assert "max_instructions=10000" in str(e.value) and f"pc={e.value.pc:#x}" in str(e.value)
    assert isinstance(e.value, GuestError)


def test_guest_that_sleeps_forever_is_an_error():
    m = machine()
    syms = m.load_asm("_start:\n  wfi\n  brk #0\n")
    with pytest.raises(GuestError, match="nothing that could ever wake it") as e:
        m.run()
    assert e.value.pc == syms["_start"] and e.value.insn == "wfi"


@pytest.mark.parametrize("insn, what, syndrome", [
    ("svc #3", "svc", "EC=0x15: SVC from AArch64, imm=0x3"),
    ("brk #5", "brk", "EC=0x3c: BRK from AArch64, imm=0x5"),
    (".word 0", "undefined instruction", "EC=0x0: unknown reason (undefined instruction)"),
    ("smc #0", "smc", "EC=0x17: SMC from AArch64"),
])
def test_el1_fault_without_vectors_names_pc_insn_and_syndrome(insn, what, syndrome):
    m = machine()
    syms = m.load_asm(f"_start:\n  nop\nbad:\n  {insn}\n  brk #0\n")
    with pytest.raises(GuestFault) as e:
        m.run()
    assert e.value.pc == syms["bad"]
    assert f"{what} with no exception vectors (VBAR_EL1 is 0)" in str(e.value)
    assert syndrome in e.value.syndrome
    assert e.value.insn == ("udf #0" if insn == ".word 0" else insn)


def test_irq_without_vectors():
    m = machine()
    m.load_asm("_start:\n  mov x0, #0xff\n  msr s3_0_c4_c6_0, x0\n  mov x0, #1\n"
               "  msr s3_0_c12_c12_7, x0\n  msr daifclr, #2\nspin:\n  b spin\n")
    m.host.gic.set_line(19, True)
    with pytest.raises(GuestFault, match=r"IRQ with no exception vectors \(VBAR_EL1 is 0\)"):
        m.run(max_instructions=100_000)


def test_fault_in_the_vector_itself_is_reported_not_looped():
    m = machine()
    syms = m.load_asm("_start:\n  adr x0, vec\n  msr vbar_el1, x0\n  .word 0\n  brk #0\n"
                      "  .balign 2048\nvec:\n  .space 0x200\nsync:\n  .word 0\n")
    with pytest.raises(GuestFault, match="at the exception vector itself") as e:
        m.run()
    assert e.value.pc == syms["sync"] and "EC=0x0" in e.value.syndrome


# ====================================================================== hypercalls with bad arguments

SDEI = dict(VERSION=0xC4000020, REGISTER=0xC4000021, ENABLE=0xC4000022, DISABLE=0xC4000023,
            CONTEXT=0xC4000024, COMPLETE=0xC4000025, COMPLETE_AND_RESUME=0xC4000026,
            UNREGISTER=0xC4000027, STATUS=0xC4000028, GET_INFO=0xC4000029, ROUTING_SET=0xC400002A,
            PE_MASK=0xC400002B, PE_UNMASK=0xC400002C, BIND=0xC400002D, RELEASE=0xC400002E,
            SIGNAL=0xC400002F, FEATURES=0xC4000030, PRIVATE_RESET=0xC4000031, SHARED_RESET=0xC4000032)
KVM_FEATURES, KVM_ASYNC_PF = 0x86000000, 0x86000002
NOT_SUPPORTED, INVALID, DENIED = -1, -2, -3
SMCCC_INVALID = -3            # ASYNC_PF: SMCCC INVALID_PARAMETER
H = "handler"                 # an argument that stands for the handler's address
BLK = "apf_block"             # ... for the 64-byte aligned APF block


def reg_h(ev=0):
    return (SDEI["REGISTER"], ev, H, 0, 0, 0)


def apf_enable(gpa, flags=1, hi=None):
    ctl = f"{gpa}+{flags}" if isinstance(gpa, str) else gpa | flags
    return (KVM_ASYNC_PF, 4, ctl, 0 if hi is None else hi)


# label -> (setup calls, the call, expected x0)
HYPERCALLS = {
    # SDEI: event numbers the platform does not define, however large
    "register event 2**63": ([], (SDEI["REGISTER"], BIG, H, 0, 0, 0), INVALID),
    "register event all ones": ([], (SDEI["REGISTER"], ALL_ONES, H, 0, 0, 0), INVALID),
    "register event 2**32 (not event 0)": ([], (SDEI["REGISTER"], 1 << 32, H, 0, 0, 0), INVALID),
    "register event 2**32+1 (not event 1)": ([], (SDEI["REGISTER"], (1 << 32) + 1, H, 0, 0, 0), INVALID),
    "enable event 2**63": ([], (SDEI["ENABLE"], BIG), INVALID),
    "disable event all ones": ([], (SDEI["DISABLE"], ALL_ONES), INVALID),
    "unregister event 2**63": ([], (SDEI["UNREGISTER"], BIG), INVALID),
    "status event 2**63": ([], (SDEI["STATUS"], BIG), INVALID),
    "get_info event 2**63": ([], (SDEI["GET_INFO"], BIG, 0), INVALID),
    "get_info info 2**63": ([], (SDEI["GET_INFO"], 0, BIG), INVALID),
    "routing_set event 2**63": ([], (SDEI["ROUTING_SET"], BIG, 0, 0), INVALID),
    "routing_set on a private event": ([reg_h(0)], (SDEI["ROUTING_SET"], 0, 1, 0), INVALID),
    "signal event 2**63": ([], (SDEI["SIGNAL"], BIG, 0), INVALID),
    "signal to PE 2**63": ([reg_h(0)], (SDEI["SIGNAL"], 0, BIG), INVALID),
    "bind intid 2**63": ([], (SDEI["BIND"], BIG), INVALID),
    "bind intid 1020": ([], (SDEI["BIND"], 1020), INVALID),
    "release event 2**63": ([], (SDEI["RELEASE"], BIG), INVALID),
    "features 2**63": ([], (SDEI["FEATURES"], BIG), INVALID),
    "context 2**63 outside a handler": ([], (SDEI["CONTEXT"], BIG), INVALID),
    # SDEI: entry points that are not code in guest RAM
    "register entry 0": ([], (SDEI["REGISTER"], 0, 0, 0, 0, 0), INVALID),
    "register entry below RAM": ([], (SDEI["REGISTER"], 0, 0x1000, 0, 0, 0), INVALID),
    "register entry at end of RAM": ([], (SDEI["REGISTER"], 0, RAM_END, 0, 0, 0), INVALID),
    "register entry all ones & ~3": ([], (SDEI["REGISTER"], 0, ALL_ONES & ~3, 0, 0, 0), INVALID),
    "register entry misaligned +2": ([], (SDEI["REGISTER"], 0, "handler+2", 0, 0, 0), INVALID),
    "register entry misaligned +1": ([], (SDEI["REGISTER"], 1, "handler+1", 0, 0, 0), INVALID),
    "register reserved flag bit 63": ([], (SDEI["REGISTER"], 0, H, 0, BIG, 0), INVALID),
    "register relative mode (unsupported)": ([], (SDEI["REGISTER"], 0, H, 0, 2, 0), INVALID),
    # SDEI: calls only legal inside a handler
    "complete outside a handler": ([reg_h(0)], (SDEI["COMPLETE"], 0), DENIED),
    "complete_and_resume outside a handler, addr outside RAM": ([], (SDEI["COMPLETE_AND_RESUME"], 0x1000), DENIED),
    "context 0 outside a handler": ([], (SDEI["CONTEXT"], 0), DENIED),
    # SDEI: function IDs nobody owns
    "SDEI 0xC4000033 (unassigned)": ([], (0xC4000033,), NOT_SUPPORTED),
    "SDEI 0xC400003F (unassigned)": ([], (0xC400003F,), NOT_SUPPORTED),
    "SMC32 mirror of EVENT_REGISTER": ([], (0x84000021, 0, H, 0, 0, 0), NOT_SUPPORTED),
    # APF (KVM vendor service)
    "ASYNC_PF enable before the SDEI event is registered": ([], apf_enable(BLK), SMCCC_INVALID),
    "ASYNC_PF enable, block misaligned by 4": ([reg_h(1)], apf_enable("apf_block+4"), SMCCC_INVALID),
    "ASYNC_PF enable, block misaligned by 32": ([reg_h(1)], apf_enable("apf_block+32"), SMCCC_INVALID),
    "ASYNC_PF enable, block below RAM": ([reg_h(1)], apf_enable(0x1000), SMCCC_INVALID),
    "ASYNC_PF enable, block at end of RAM": ([reg_h(1)], apf_enable(RAM_END), SMCCC_INVALID),
    "ASYNC_PF enable, block above 4 GiB": ([reg_h(1)], apf_enable(0x40, hi=0xFFFF), SMCCC_INVALID),
    "ASYNC_PF enable, x2 wider than 32 bits": ([reg_h(1)], (KVM_ASYNC_PF, 4, (1 << 32) | 1, 0), SMCCC_INVALID),
    "ASYNC_PF enable, x3 wider than 32 bits": ([reg_h(1)], (KVM_ASYNC_PF, 4, f"{BLK}+1", 1 << 32), SMCCC_INVALID),
    "ASYNC_PF sub-function 6": ([], (KVM_ASYNC_PF, 6), NOT_SUPPORTED),
    "ASYNC_PF sub-function 2**63": ([], (KVM_ASYNC_PF, BIG), NOT_SUPPORTED),
    "ASYNC_PF sub-function 2**32 (not VERSION)": ([], (KVM_ASYNC_PF, 1 << 32), NOT_SUPPORTED),
    "vendor function 0x86000003": ([], (0x86000003,), NOT_SUPPORTED),
    "vendor function 0x8600FFFF": ([], (0x8600FFFF,), NOT_SUPPORTED),
    # SMCCC: owners nobody implements
    "SMCCC owner 7 (reserved)": ([], (0xC7000001,), NOT_SUPPORTED),
    "function ID 0": ([], (0,), NOT_SUPPORTED),
    "function ID 0xFFFFFFFF": ([], (0xFFFFFFFF,), NOT_SUPPORTED),
}
# Calls that are not errors but must still be harmless with junk arguments.
HARMLESS = {
    "ASYNC_PF IRQ_ACK with nothing to acknowledge": ([], (KVM_ASYNC_PF, 5, ALL_ONES, ALL_ONES), 0),
    "ASYNC_PF enable, well formed (control case)": ([reg_h(1)], apf_enable(BLK), 0),
    "SDEI VERSION with junk in x1-x5": ([], (SDEI["VERSION"], ALL_ONES, BIG, 1, 2, 3), 0x0001_0001_004B_564D),
}


def hypercall_program(calls) -> str:
    """Each call: x0-x5 loaded, ``hvc #0``, x0 stored to ``results``; then STATUS of events
    0-2 and ``brk #0``. A handler (never dispatched here) and a 64-byte aligned APF block."""
    lines = ["_start:", "adr x20, results"]
    for call in list(calls) + [(SDEI["STATUS"], ev) for ev in (0, 1, 2)]:
        for i, a in enumerate(call):
            lines += [f"adr x{i}, {a}"] if isinstance(a, str) else mov64(f"x{i}", a)
        lines += ["hvc #0", "str x0, [x20], #8"]
    lines += ["done:", "brk #0", "handler:", "brk #1", ".balign 64", "apf_block:", ".space 64",
              ".balign 8", "results:", f".space {8 * (len(calls) + 8)}"]
    return "\n".join(lines) + "\n"


def run_calls(calls):
    m = machine()
    syms = m.load_asm(hypercall_program(calls))
    stop = m.run(max_instructions=100_000)
    assert stop.pc == syms["done"]
    n = len(calls) + 3
    return m, [s64(m.read_u64(syms["results"] + 8 * i)) for i in range(n)]


@pytest.mark.parametrize("case", list(HYPERCALLS) + list(HARMLESS))
def test_bad_hypercall_gets_an_error_code_in_x0_and_changes_nothing(case):
    setup, call, want = {**HYPERCALLS, **HARMLESS}[case]
    m, got = run_calls(setup + [call])
    assert got[len(setup)] == want, f"{case}: x0 = {got[len(setup)]}"
    # Only the set-up changed anything: a REGISTER of event N in it leaves STATUS(N) = 1.
    registered = {c[1] for c in setup if c[0] == SDEI["REGISTER"]}
    assert got[-3:] == [1 if ev in registered else 0 for ev in (0, 1, 2)]
    assert m.apf.enabled == (case == "ASYNC_PF enable, well formed (control case)")
    assert not m.sdei.pe.running and m.sdei.pe.masked
    assert sum(m.trace.breakdown().values()) == m.trace.elapsed_ns


def test_upper_half_of_x0_is_ignored_as_smccc_says():
    """SMCCC: the function ID is W0; x0's upper 32 bits do not make another call."""
    _, got = run_calls([(0xFFFF_FFFF_0000_0000 | SDEI["VERSION"],)])
    assert got[0] == 0x0001_0001_004B_564D


def test_host_raise_of_an_undefined_event_is_a_parameter_error():
    m = machine()
    m.load_asm("_start:\n  brk #0\n")
    with pytest.raises(ParameterError, match="SDEI event 7 does not exist"):
        m.sdei.raise_event(7)


# ====================================================================== scenario parameters

@pytest.mark.parametrize("name, kw, words", [
    ("memtouch", dict(latency_ns=-1), "latency_ns=-1: must be None (store default) or an int >= 1 ns"),
    ("memtouch", dict(latency_ns=0), "latency_ns=0"),
    ("memtouch", dict(latency_ns=1.5), "latency_ns=1.5"),
    ("memtouch", dict(latency_ns=True), "latency_ns=True"),
    ("gleb2010", dict(latency_ns=-50_000), "latency_ns=-50000"),
    ("memtouch", dict(limit_pages=0), "limit_pages=0: must be an int >= 2"),
    ("gleb2010", dict(limit_pages=0), "limit_pages=0"),
    ("memtouch", dict(limit_pages=-8), "limit_pages=-8"),
    ("memtouch", dict(npages="64"), "npages='64': must be an int in [4, 262144]"),
    ("memtouch", dict(npages=64.0), "npages=64.0"),
    ("memtouch", dict(npages=True), "npages=True"),
    ("memtouch", dict(npages=3), "npages=3"),
    ("memtouch", dict(rounds=0), "rounds=0"),
    ("memtouch", dict(store="tape"), "store='tape': must be one of ('ssd', 'hdd')"),
    ("memtouch", dict(tick_ns=999), "tick_ns=999: must be an int >= 1000 ns"),
    ("memtouch", dict(calc_thread="yes"), "calc_thread='yes': must be True or False"),
    ("memtouch", dict(calc_thread=1), "calc_thread=1"),
    ("memtouch", dict(ram_mib=8192), "ram_mib=8192: must be an int in [4, 4096]"),
    ("memtouch", dict(ram_mib=4, npages=1024), "ram_mib=4 is too small for 1024 buffer pages"),
    ("memtouch", dict(max_instructions=0), "max_instructions=0: must be a positive int"),
    ("gleb2010", dict(fault_tasks=5), "fault_tasks=5: must be an int in [1, 4]"),
    ("gleb2010", dict(fault_tasks=0), "fault_tasks=0"),
    # 4 + 5 = 9 tasks: more than the kernel's 8
    ("gleb2010", dict(fault_tasks=4, compute_tasks=5), "compute_tasks=5: must be an int in [0, 4]"),
    ("gleb2010", dict(duration_ns=999_999), "duration_ns=999999: must be an int >= 1 ms"),
    ("postcopy", dict(rtt_ns=-1), "rtt_ns=-1: must be an int >= 0 ns"),
    ("postcopy", dict(bandwidth_bytes_per_s=1.25e9), "bandwidth_bytes_per_s=1250000000.0"),
    ("memtouch", dict(frobnicate=1), "unknown parameter 'frobnicate'; known: allocate, calc_thread"),
    ("memtouch", dict(Npages=16), "unknown parameter 'Npages'"),
    ("postcopy", dict(limit_pages=8), "unknown parameter 'limit_pages'"),
])
def test_bad_scenario_parameter_is_named_with_its_rule(name, kw, words):
    with pytest.raises(ParameterError) as e:
        run_scenario(name, apf=True, seed=0, **kw)
    assert words in str(e.value)


@pytest.mark.parametrize("call, words", [
    (lambda: run_scenario("nope", apf=True),
     "unknown scenario 'nope'; choose one of memtouch, gleb2010, postcopy"),
    (lambda: run_scenario(None, apf=True), "unknown scenario None"),
    (lambda: run_scenario("memtouch", apf=1), "apf must be True or False, got 1"),
    (lambda: run_scenario("memtouch", apf=None), "apf must be True or False, got None"),
    (lambda: run_scenario("memtouch", apf=True, seed=True), "seed must be an int, got True"),
    (lambda: run_scenario("memtouch", apf=True, seed="1"), "seed must be an int, got '1'"),
    (lambda: parameters("nope"), "unknown scenario 'nope'"),
    (lambda: compare("memtouch", npages=-1), "npages=-1"),
])
def test_bad_scenario_name_flag_or_seed(call, words):
    with pytest.raises(ParameterError) as e:
        call()
    assert words in str(e.value)


def test_scenario_name_of_an_unhashable_type():
    with pytest.raises(ParameterError, match="unknown scenario"):
        run_scenario(["memtouch"], apf=True)


def test_scenario_budget_too_small_names_the_pc():
    with pytest.raises(BudgetExceeded, match="max_instructions=1000") as e:
        run_scenario("memtouch", apf=True, seed=0, npages=16, limit_pages=8, max_instructions=1000)
    assert e.value.pc is not None and e.value.insn


@pytest.mark.parametrize("tasks, kw, exc, words", [
    ([guest.compute()] * 9, {}, ValueError, "between 1 and 8 tasks, got 9"),
    ([], {}, ValueError, "between 1 and 8 tasks, got 0"),
    ([guest.TaskSpec("nope")], {}, ValueError, "unknown entry 'nope'"),
    ([guest.memtouch(10**6)], {}, ValueError, "is outside [buf_base"),
    ([guest.compute()], dict(tick_ns=-1), ValueError, "tick_ns must be an int >= 0, got -1"),
    ([guest.TaskSpec("compute", list(range(9)))], {}, ValueError, "at most 8 parameters"),
])
def test_bad_kernel_build(tasks, kw, exc, words):
    with pytest.raises(exc) as e:
        guest.build_source(tasks, **kw)
    assert words in str(e.value)


def test_kernel_task_that_is_not_a_taskspec():
    with pytest.raises(ParameterError, match="task 0 is not a TaskSpec"):
        guest.build_source(["compute"])


# ====================================================================== Machine parameters

@pytest.mark.parametrize("kw, words", [
    (dict(seed="0"), "seed must be an int, got '0'"),
    (dict(seed=1.5), "seed must be an int, got 1.5"),
    (dict(seed=None), "seed must be an int, got None"),
    (dict(ram_size=1000), "ram_size must be a multiple of 4096 and at least 64 KiB, got 1000"),
    (dict(ram_size=0), "got 0"),
    (dict(ram_size=-4096), "got -4096"),
    (dict(ram_size=65536 + 16), "got 65552"),
    (dict(ram_size="16M"), "got '16M'"),
    (dict(ram_size=float(16 << 20)), "got 16777216.0"),
    (dict(memory_limit=0), "limit_bytes must be None or an int >= 8192 (two pages) (got 0)"),
    (dict(memory_limit=-1), "(got -1)"),
    (dict(memory_limit=4096), "(got 4096)"),
    (dict(memory_limit="1M"), "(got '1M')"),
    (dict(memory_limit=8192.0), "(got 8192.0)"),
    (dict(store="tape"), "store kind must be one of ['hdd', 'postcopy', 'ssd'] (got 'tape')"),
    (dict(store="postcopy", memory_limit=1 << 20), "limit_bytes needs a swap store"),
    (dict(ns_per_insn=0), "ns_per_insn must be an int >= 1, got 0"),
    (dict(ns_per_insn=1.5), "got 1.5"),
    (dict(policy="lru"), "policy must be one of ('fifo', 'clock') (got 'lru')"),
    (dict(profile="tf-a"), "unknown SDEI profile 'tf-a'; choose one of ('lab', 'kvm-v7')"),
    (dict(postcopy={"rtt_ns": -1}), "rtt_ns must be an int >= 0 (got -1)"),
    (dict(postcopy={"bogus": 1}), "unknown parameter 'bogus' for a postcopy store"),
])
def test_bad_machine_parameter_is_a_parameter_error(kw, words):
    with pytest.raises(ParameterError) as e:
        Machine(**{"ram_size": RAM, **kw})
    assert words in str(e.value)


@pytest.mark.parametrize("kw, words", [
    (dict(hvc_ns=-1), "HostCosts.hvc_ns must be a non-negative int (ns), got -1"),
    (dict(fault_ns=2.5), "HostCosts.fault_ns"),
    (dict(exit_ns="700"), "HostCosts.exit_ns"),
])
def test_bad_host_costs(kw, words):
    with pytest.raises(ParameterError) as e:
        HostCosts(**kw)
    assert words in str(e.value)



@pytest.mark.parametrize("kw, words", [
    pytest.param(dict(store=42), "store", id="store=42"),
    pytest.param(dict(costs="cheap"), "costs", id="costs='cheap'"),
    pytest.param(dict(postcopy="fast"), "postcopy", id="postcopy='fast'"),
    pytest.param(dict(profile="tf-a", sdei=False), "profile", id="profile='tf-a',sdei=False"),
    pytest.param(dict(seed=True), "seed", id="seed=True"),
    pytest.param(dict(ns_per_insn=True), "ns_per_insn", id="ns_per_insn=True"),
    pytest.param(dict(store=None), "store", id="store=None"),
    pytest.param(dict(keep_records="no"), "keep_records", id="keep_records='no'"),
    pytest.param(dict(ram_size=1 << 48), "ram_size", id="ram_size=2**48"),
])
def test_machine_parameter_of_the_wrong_type_is_refused_at_once(kw, words):
    with pytest.raises(ParameterError, match=words):
        m = Machine(**{"ram_size": RAM, **kw})
        # If the constructor let it through, the error must not wait for first use either.
        m.load_asm("_start:\n  hvc #0\n  brk #0\nbuf:\n  .quad 1\n")
        m.run()
        m.evict(RAM_BASE)


def test_run_budget_of_type_bool():
    m = machine()
    m.load_asm("_start:\n  brk #0\n")
    with pytest.raises(ParameterError, match="max_instructions"):
        m.run(max_instructions=True)


@pytest.mark.parametrize("budget", [0, -1, 1.5, "10", None])
def test_run_budget_must_be_a_positive_int(budget):
    m = machine()
    m.load_asm("_start:\n  brk #0\n")
    with pytest.raises(ParameterError, match=f"max_instructions must be a positive int, got {budget!r}"):
        m.run(max_instructions=budget)


def test_run_or_step_before_loading():
    m = machine()
    with pytest.raises(ParameterError, match=r"nothing loaded: call load_asm\(source\) first"):
        m.run()
    with pytest.raises(ParameterError, match="nothing loaded"):
        m.step()


def test_ram_larger_than_the_host_can_map_fails_cleanly():
    """256 TiB of guest RAM: the host cannot map it; a clean exception, not a crash."""
    with pytest.raises((OSError, MemoryError, ParameterError)):
        Machine(seed=0, ram_size=1 << 48)


@pytest.mark.parametrize("call, words", [
    (lambda m: m.read(RAM_BASE - 8, 8), "is outside guest RAM"),
    (lambda m: m.write(RAM_END - 4, b"12345678"), "is outside guest RAM"),
    (lambda m: m.read(RAM_BASE, -1), "is outside guest RAM"),
    (lambda m: m.evict(0x1000), "address 0x1000 is outside guest RAM"),
    (lambda m: m.page_state(RAM_END), "is outside guest RAM"),
])
def test_host_access_outside_ram_is_a_parameter_error(call, words):
    m = machine()
    with pytest.raises(ParameterError, match=words):
        call(m)


# ====================================================================== saved traces

@pytest.fixture(scope="module")
def saved_trace(tmp_path_factory):
    """A real run's trace (faults, page-ins, hypercalls), saved to a file."""
    m = machine(memory_limit=4 * 4096)
    syms = m.load_asm("_start:\n  adr x1, buf\n  mov x2, #8\nloop:\n  str x2, [x1]\n"
                      "  add x1, x1, #4096\n  subs x2, x2, #1\n  b.ne loop\n"
                      "  movz x0, #0xC400, lsl #16\n  hvc #0\n  brk #0\n  .balign 4096\nbuf:\n")
    for i in range(8):
        m.write_u64(syms["buf"] + 4096 * i, i)
        m.evict(syms["buf"] + 4096 * i)
    m.run()
    path = tmp_path_factory.mktemp("trace") / "run.json"
    m.trace.save_json(path)
    assert Trace.load_json(path).digest() == m.trace.digest()
    return path


def _edit(path, tmp_path, edit):
    obj = json.loads(path.read_text())
    edit(obj)
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(obj))
    return out


def _first(obj, kind):
    return next(r for r in obj["records"] if r[1] == kind)


TRACE_EDITS = [
    ("wrong tag", lambda o: o.update(format="apflab-result"),
     "not an apflab trace (format tag is 'apflab-result')"),
    ("no tag", lambda o: o.pop("format"), "format tag missing"),
    ("wrong version", lambda o: o.update(version=1), "unsupported trace version 1 (this apflab reads version 2)"),
    ("version as string", lambda o: o.update(version="1"), "unsupported trace version '1'"),
    ("missing key", lambda o: o.pop("records"), "key 'records' missing"),
    ("t_ns as string", lambda o: o["records"][0].__setitem__(0, "0"), "record 0: t_ns is not an int"),
    ("field as float", lambda o: _first(o, "stage2_fault")[2].update(gpn=1.0), "field 'gpn' is a float"),
    ("field as list", lambda o: _first(o, "hvc")[2].update(fid=[1]), "field 'fid' is a list"),
    ("kind empty", lambda o: o["records"][0].__setitem__(1, ""), "record 0: kind is not a non-empty string"),
    ("records not a list", lambda o: o.update(records={}), "records is not a list"),
    ("keep_records not bool", lambda o: o.update(keep_records=1), "keep_records is not a boolean"),
    ("dropped negative", lambda o: o.update(dropped=-1), "dropped is not an int >= 0"),
    ("counts disagree", lambda o: o["counts"].update(hvc=99), "counts total"),
    ("span mode unknown", lambda o: o["spans"][0].__setitem__(2, "idle"), "span 0: mode 'idle' is not one of"),
    ("span gap", lambda o: o["spans"][1].__setitem__(0, o["spans"][1][0] + 1), "span 1: starts at"),
    ("span reversed", lambda o: o["spans"][0].__setitem__(1, -5), "span 0: empty or reversed"),
    ("top level list", lambda o: None, None),                   # written below as a list
]


@pytest.mark.parametrize("label, edit, words", TRACE_EDITS, ids=[t[0] for t in TRACE_EDITS])
def test_edited_trace_file_is_rejected_with_the_reason(saved_trace, tmp_path, label, edit, words):
    if words is None:
        path = tmp_path / "list.json"
        path.write_text("[1, 2, 3]")
        words = "not an apflab trace (top level is a list, expected an object)"
    else:
        path = _edit(saved_trace, tmp_path, edit)
    with pytest.raises(TraceFormatError) as e:
        Trace.load_json(path)
    assert words in str(e.value)


@pytest.mark.parametrize("cut", [1, 2, 0.1, 0.5, 0.9, -3])
def test_truncated_trace_file(saved_trace, tmp_path, cut):
    text = saved_trace.read_text()
    n = int(len(text) * cut) if isinstance(cut, float) else cut % len(text)
    path = tmp_path / "cut.json"
    path.write_text(text[:n])
    with pytest.raises(TraceFormatError, match=r"truncated JSON at char \d+"):
        Trace.load_json(path)


@pytest.mark.parametrize("content, words", [
    (b"", "empty file"),
    (b"  \n\n\t", "empty file"),
    (b"not json at all", "invalid JSON at line 1 column 1"),
    (b"{'format': 'apflab-trace'}", "invalid JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8 text (byte 0)"),
    (b"\x89PNG\r\n\x1a\n", "not UTF-8"),
    (b"null", "top level is a NoneType"),
    (b"[" * 100_000, "nested too deeply"),
])
def test_non_trace_files(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(TraceFormatError) as e:
        Trace.load_json(path)
    assert words in str(e.value)


def test_missing_trace_file_is_the_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        Trace.load_json(tmp_path / "no-such.json")
