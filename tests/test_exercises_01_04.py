"""Exercises of labs 01-04: each ``answer()`` (computed by running the guest) agrees with
an independent computation written here from the question and the specs; ``check``
accepts the answer in the forms a student would type and rejects a wrong one; the seed
decides the variant, and the same seed always gives the same one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from apflab.cpu import decode_esr
from apflab.exercises.lab01 import FillArray, PredictRegister
from apflab.exercises.lab02 import DecodeSyndrome, WhichVector
from apflab.exercises.lab03 import PredictResults, WhoAnswers
from apflab.exercises.lab04 import SdeiSequence
from apflab.errors import ParameterError

SEEDS = [0, 1, 2, 3, 7, 42, 1234, 99999]
MASK64 = (1 << 64) - 1


# -- independent models -----------------------------------------------------------------------

def expect_register(p) -> int:
    x0, x1 = p["x0"], p["x1"]
    for _ in range(p["n"]):
        if p["op"] == "add":
            x0 += x1
        elif p["op"] == "sub":
            x0 -= x1
        else:
            x0 ^= x1
        x1 += p["step"]
    return x0 & MASK64


def expect_fill(p) -> int:
    per = p["stride"] // 8                      # slots between two stores
    slots = [0] * ((p["n"] + 1) * per)
    for j in range(p["n"]):
        slots[(j + (p["mode"] == "pre")) * per] = p["first"] + j * p["step"]
    return slots[p["k"]]


EC = {"svc": 0x15, "brk": 0x3C, "udf": 0x00}        # Arm ARM ESR_ELx.EC


def expect_syndrome(p) -> tuple[int, int]:
    return EC[p["kind"]], 0 if p["kind"] == "udf" else p["imm"]


def expect_vector(p) -> int:
    group = {"el1t": 0x000, "el1h": 0x200, "el0": 0x400}[p["origin"]]
    return group + {"sync": 0x000, "irq": 0x080}[p["kind"]]


def expect_owner(fid: int) -> str:
    # SMCCC (DEN0028) owner ranges and the arch calls apflab implements.
    if fid in (0x80000000, 0x80000001):
        return "arch"
    if 0xC4000020 <= fid <= 0xC400003F:
        return "sdei"
    if 0x86000000 <= fid <= 0x8600FFFF:
        return "kvm"
    return "none"


FIXED_RESULTS = {
    "SMCCC_VERSION": 0x10001,
    "SMCCC_ARCH_FEATURES(SMCCC_VERSION)": 0,
    "SMCCC_ARCH_FEATURES(0x80008000)": -1,
    "KVM HYP_KVM_FEATURES": 1 << 2,                  # bit 2 ASYNC_PF
    "KVM ASYNC_PF VERSION": 0x010000,
    "KVM ASYNC_PF SLOTS": 64,
    "KVM ASYNC_PF SDEI": 1,                          # event 1: page not present
    "KVM ASYNC_PF IRQ": 19,                          # docs/DESIGN.md: the page-ready PPI
    "SDEI_EVENT_STATUS(0)": 0,
    "SDEI_EVENT_STATUS(7)": -2,                      # no such event: INVALID_PARAMETERS
    "SDEI_EVENT_ENABLE(0)": -3,                      # unregistered: DENIED
    "SDEI_EVENT_GET_INFO(2, PRIORITY)": 1,           # critical
    "0x82000000 (SiP)": -1,
    "0xC6000000": -1,
}


def expect_results(names) -> tuple[int, ...]:
    masked, out = True, []
    for name in names:
        if name == "SDEI_PE_MASK":
            out.append(0 if masked else 1)
            masked = True
        elif name == "SDEI_PE_UNMASK":
            out.append(0)
            masked = False
        else:
            out.append(FIXED_RESULTS[name])
    return tuple(out)


def expect_sdei(seq):
    """DEN0054C event states for event 0 with a handler that only completes."""
    state, masked, pending, handled, results = 0, True, False, 0, []
    for call in seq:
        if call.startswith("EVENT_REGISTER"):
            r, state = (0, 1) if state == 0 else (-3, state)
        elif call == "EVENT_ENABLE(0)":
            r, state = (-3, 0) if state == 0 else (0, 3)
        elif call == "EVENT_DISABLE(0)":
            r, state = (-3, 0) if state == 0 else (0, 1)
        elif call == "EVENT_UNREGISTER(0)":
            r = -3 if state == 0 else 0
            state, pending = 0, False
        elif call.startswith("EVENT_SIGNAL"):
            r = -3 if state == 0 else 0                 # lab choice: DENIED when unregistered
            pending = pending or r == 0
        elif call == "PE_MASK":
            r, masked = (0 if masked else 1), True
        elif call == "PE_UNMASK":
            r, masked = 0, False
        else:
            raise AssertionError(call)
        results.append(r)
        if pending and state == 3 and not masked:
            pending, handled = False, handled + 1
    return tuple(results), state, handled


# -- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_lab01_answers(seed):
    ex = PredictRegister(seed)
    assert ex.answer() == expect_register(ex.params)
    assert ex.check(ex.answer()) and not ex.check(ex.answer() + 1)
    assert f"x0, #{ex.params['x0']}" in ex.question()
    ex2 = FillArray(seed)
    assert ex2.answer() == expect_fill(ex2.params)
    assert ex2.check(ex2.answer()) and not ex2.check(ex2.answer() + ex2.params["step"] + 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_lab02_answers(seed):
    ex = DecodeSyndrome(seed)
    ec, imm = expect_syndrome(ex.params)
    assert ex.answer() == (ec, imm)
    assert f"EC={ec:#x}" in decode_esr(ex.esr())
    assert f"{ex.esr():#010x}" in ex.question()
    assert ex.check((ec, imm)) and ex.check([ec, imm])
    assert not ex.check((ec, imm ^ 1)) and not ex.check(ec)
    ex2 = WhichVector(seed)
    assert ex2.answer() == expect_vector(ex2.params)
    assert ex2.check(ex2.answer()) and not ex2.check(ex2.answer() + 0x80)


@pytest.mark.parametrize("seed", SEEDS)
def test_lab03_answers(seed):
    ex = WhoAnswers(seed)
    expected = tuple(expect_owner(f) for f in ex.params["fids"])
    assert ex.answer() == expected
    assert ex.check(list(expected)) and ex.check(expected)
    wrong = ("arch" if expected[0] != "arch" else "none",) + expected[1:]
    assert not ex.check(wrong)
    ex2 = PredictResults(seed)
    expected = expect_results(ex2.params["calls"])
    assert ex2.answer() == expected
    assert ex2.check(list(expected))
    assert ex2.check([v & MASK64 for v in expected])     # -1 typed as 0xFFFF_FFFF_FFFF_FFFF
    assert not ex2.check(list(expected[:3]) + [expected[3] + 1])


@pytest.mark.parametrize("seed", SEEDS)
def test_lab04_answers(seed):
    ex = SdeiSequence(seed)
    results, status, handled = expect_sdei(ex.params["sequence"])
    assert ex.answer() == (results, status, handled)
    assert ex.check((list(results), status, handled)) and ex.check([results, status, handled])
    assert not ex.check((results, status, handled + 1))
    assert not ex.check((results[:-1] + (results[-1] - 1,), status, handled))


def test_sdei_sequences_exercise_delivery():
    # The generator must make the handler run for a fair share of students, and not always.
    handled = [SdeiSequence(s).answer()[2] for s in range(40)]
    assert 8 <= sum(1 for h in handled if h) <= 36


EXERCISES = [PredictRegister, FillArray, DecodeSyndrome, WhichVector, WhoAnswers, PredictResults,
             SdeiSequence]


@pytest.mark.parametrize("cls", EXERCISES, ids=lambda c: c.__name__)
def test_seed_decides_the_variant(cls):
    variants = {repr(cls(seed).params) for seed in range(20)}
    assert len(variants) >= 5, f"{cls.__name__}: only {len(variants)} variants in 20 seeds"
    a, b = cls(31337), cls(31337)
    assert a.params == b.params and a.question() == b.question() and a.answer() == b.answer()
    assert a.hint() and not a.check(None)
    with pytest.raises(ParameterError):
        cls("1234")


def test_sdei_diagram_matches_the_table():
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
    try:
        import make_diagrams_01_04 as d
    finally:
        sys.path.pop(0)
    assert set(d.EDGES) == d.table_edges()
