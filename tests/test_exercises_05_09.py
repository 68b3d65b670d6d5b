"""Exercises of labs 05-08 (lab 09: tests/test_lab09.py): answers agree with an independent
computation, checks accept the answer and reject a wrong one, and seeds give different variants."""

import math

import pytest

from apflab import backing
from apflab.errors import ParameterError
from apflab.exercises.lab05 import PredictStall
from apflab.exercises.lab06 import FirstToken, WhileTask0Waits
from apflab.exercises.lab07 import TOLERANCE_POINTS, ApfPayoff
from apflab.exercises.lab08 import MigrationTime

SEEDS = (0, 1, 7, 1234)


def variants(cls, seeds=range(12)):
    return {repr(sorted(cls(s).params.items())) for s in seeds}


@pytest.mark.parametrize("cls", [PredictStall, WhileTask0Waits, FirstToken, ApfPayoff,
                                 MigrationTime])
def test_seeds_draw_different_variants_and_repeat(cls):
    assert len(variants(cls)) >= 4
    assert cls(42).params == cls(42).params
    assert str(cls(42).seed) in cls(42).question()


@pytest.mark.parametrize("cls", [PredictStall, WhileTask0Waits, FirstToken, ApfPayoff,
                                 MigrationTime])
def test_seed_must_be_an_int(cls):
    with pytest.raises(ParameterError):
        cls("1234")


# ---------------------------------------------------------------------- lab 05

def predicted_stall_ms(p) -> float:
    """faults x mean read time; FIFO + a sequential walk: every round faults unless it fits."""
    faults = p["npages"] * (p["rounds"] if p["npages"] > p["limit_pages"] else 1)
    sigma = backing.SSD_JITTER if p["store"] == "ssd" else backing.HDD_JITTER
    return faults * p["latency_ns"] * math.exp(sigma ** 2 / 2) / 1e6


@pytest.mark.parametrize("seed", SEEDS)
def test_stall_answer_matches_faults_times_latency(seed):
    ex = PredictStall(seed)
    expected = ex.answer()
    guess = predicted_stall_ms(ex.params)
    assert abs(guess - expected) / expected < 0.12
    assert ex.check(guess)
    assert ex.check(expected)
    assert not ex.check(expected * 1.5)
    assert not ex.check(expected / 2)          # e.g. forgetting the rounds that fault again
    assert not ex.check(None) and not ex.check("3 ms") and not ex.check(True)


def test_stall_check_states_its_tolerance():
    ex = PredictStall(3)
    assert "20%" in ex.question()
    assert ex.check(ex.answer() * 1.19) and not ex.check(ex.answer() * 1.21)


# ---------------------------------------------------------------------- lab 06

def ran_while_task0_waits(kinds):
    out = []
    for i in range(1, len(kinds)):
        out.append(i)
        if kinds[i] == "compute":
            break
    return out


def first_token(kinds, target, nth=1):
    """Round robin by hand: walkers fault and park (every touch faults: all pages are in swap),
    compute runs until the oldest page is ready; the token of ``target``'s ``nth`` fault."""
    runnable = [True] * len(kinds)
    parked, cursor, faults, mine = [], -1, 0, 0
    while True:
        order = [(cursor + k) % len(kinds) for k in range(1, len(kinds) + 1)]
        pick = next((i for i in order if runnable[i]), None)
        if pick is None:
            runnable[parked.pop(0)] = True
            continue
        cursor = pick
        if kinds[pick] == "memtouch":
            if pick == target:
                mine += 1
                if mine == nth:
                    return faults << 12
            faults += 1
            runnable[pick] = False
            parked.append(pick)
        elif parked:
            runnable[parked.pop(0)] = True


@pytest.mark.parametrize("seed", SEEDS + (4, 9))
def test_while_task0_waits_matches_round_robin(seed):
    ex = WhileTask0Waits(seed)
    answer = ex.answer()
    assert answer == ran_while_task0_waits(ex.params["tasks"])
    assert ex.check(answer) and ex.check(tuple(answer))
    assert not ex.check(answer + [0]) and not ex.check([]) and not ex.check("1, 2")


@pytest.mark.parametrize("seed", SEEDS + (4, 9))
def test_first_token_matches_round_robin(seed):
    ex = FirstToken(seed)
    token = ex.answer()
    assert token & 0xFFF == 0                   # vcpu 0
    first = first_token(ex.params["tasks"], ex.params["task"])
    if ex.params["nth"] == 1:
        assert token == first
    else:
        # the second fault depends on which jittered page-in completes first: only its bounds
        n_faults_before = first >> 12
        assert token > first and (token >> 12) <= n_faults_before + len(ex.params["tasks"]) * 2
    assert ex.check(token) and ex.check(hex(token))
    assert not ex.check(token + 0x1000) and not ex.check(token >> 12 or 5) and not ex.check(None)


def test_first_token_asks_about_a_walker_after_a_compute_task():
    for seed in range(20):
        p = FirstToken(seed).params
        assert p["task"] != 0 and p["tasks"][p["task"]] == "memtouch"
        assert "compute" in p["tasks"][:p["task"]]


# ---------------------------------------------------------------------- lab 07

@pytest.mark.parametrize("seed", SEEDS)
def test_payoff_sign_follows_the_compute_task(seed):
    ex = ApfPayoff(seed)
    change = ex.answer()
    if ex.params["calc_thread"] and ex.params["latency_ns"] >= 20_000:
        assert -45 < change < -3        # the compute task fills the waits
    elif not ex.params["calc_thread"]:
        assert 0 < change < 45          # alone, the walker has nothing to overlap
    # with a compute task and a 5-10 µs device the sign depends on the ~12 µs an async
    # fault costs the vCPU (apflab.costs): either way is a correct answer to compute
    tol = TOLERANCE_POINTS
    assert ex.check(change) and ex.check(change + 0.9 * tol)
    assert not ex.check(change + 1.1 * tol) and not ex.check(change - 1.1 * tol)
    assert not ex.check(-change) and not ex.check(None)


def test_payoff_wrong_direction_is_rejected_even_when_close():
    for seed in range(30):
        ex = ApfPayoff(seed)
        if not ex.params["calc_thread"] and ex.answer() >= 2:
            assert not ex.check(-0.5)
            assert "wrong way" in ex.check(-0.5).message
            return
    pytest.fail("no seed without a compute task and a change >= 2%")


# ---------------------------------------------------------------------- lab 08

@pytest.mark.parametrize("seed", SEEDS)
def test_migration_time_is_pages_times_page_tx_plus_half_rtt(seed):
    ex = MigrationTime(seed)
    p = ex.params
    predicted = (p["npages"] * 4096 * 1e9 / p["bandwidth_bytes_per_s"] + p["rtt_ns"] / 2) / 1e6
    expected = ex.answer()
    assert abs(predicted - expected) / expected < 0.01
    assert ex.check(predicted)
    assert not ex.check(predicted + p["rtt_ns"] / 2e6 + 0.1 * expected)   # a whole round trip, and more
    assert not ex.check(expected * 1.06) and not ex.check("fast")
