"""Lab 10 exercises: answers come from the runs, checks accept the answer and reject wrong ones,
the obvious rule of thumb fails for most seeds, and the fallback-predicate grader agrees with
the host, says what is missing for a skeleton and names the case a wrong predicate gets wrong."""

import pytest

import apflab
from apflab.delivery.irq import IrqDelivery
from apflab.errors import ParameterError
from apflab.exercises.lab10 import (CLEAR_STATE, DESIGNS, FallbackCount, FallbackPredicate, FastestDesign,
                                    catalogue, describe_case, grade_predicate, host_decision, kernel_reads)

RULE_SEEDS = range(50)


def variants(cls, seeds=range(12)):
    return {repr(sorted(cls(s).params.items())) for s in seeds}


@pytest.mark.parametrize("cls", [FastestDesign, FallbackCount, FallbackPredicate])
def test_seeds_draw_different_variants_and_repeat(cls):
    assert len(variants(cls)) >= 4
    assert cls(42).params == cls(42).params
    assert str(cls(42).seed) in cls(42).question()


@pytest.mark.parametrize("cls", [FastestDesign, FallbackCount, FallbackPredicate])
def test_seed_must_be_an_int(cls):
    with pytest.raises(ParameterError):
        cls("1234")


# ---------------------------------------------------------------------- which design finishes first

def test_fastest_design_is_the_smallest_elapsed_time_of_compare_designs():
    ex = FastestDesign(3)
    res = apflab.compare_designs("syscall_read", seed=3, **ex.scenario_params())
    best = min(r.elapsed_ns for r in res.values())
    assert res[ex.answer()].elapsed_ns == best
    assert ex.check(ex.answer())
    for d in FastestDesign.CHOICES:
        assert bool(ex.check(d)) == (res[d].elapsed_ns == best)
    assert not ex.check(None) and not ex.check("SDEI") and not ex.check(3)
    assert "one of" in ex.check("fastest").message


def test_fastest_design_accepts_every_design_of_an_exact_tie():
    # Every page read by the kernel with IRQs masked: halt falls back exactly as sync stalls.
    seed = next(s for s in range(200) if FastestDesign(s).params["kernel_every"] == 1
                and not FastestDesign(s).params["send_always"])
    ex = FastestDesign(seed)
    res = ex.results()
    assert res["sync"].elapsed_ns == res["halt"].elapsed_ns
    assert ex.answer() == "sync" and ex.check("sync") and ex.check("halt")
    assert "tied with halt" in ex.check("sync").message


# ---------------------------------------------------------------------- count the fallbacks

def test_fallback_count_is_the_runs_tally():
    for seed in (0, 5):
        ex = FallbackCount(seed)
        r = apflab.run_scenario("syscall_read", apf=True, delivery=ex.params["design"], seed=seed,
                                **ex.scenario_params())
        expected = {k: v for k, v in r.fallbacks.items() if v}
        assert ex.answer() == expected
        assert ex.check(dict(expected)) and ex.check({**expected, "queue_full": 0})
        reason, n = next(iter(expected.items()))
        assert "wrong counts" in ex.check({**expected, reason: n + 1}).message
        assert "reasons differ" in ex.check({**expected, "pe_masked": 1}).message
        for bad in (None, 5, [reason, n], {reason: "3"}, {reason: True}):
            assert "dict" in ex.check(bad).message


# ---------------------------------------------------------------------- the rules of thumb fail

@pytest.fixture(scope="module")
def rule_runs():
    """For 50 seeds: FastestDesign's five runs; FallbackCount draws the same scenario from the
    same seed, so its answer and the sdei tally are read off those runs (checked for a few)."""
    out = []
    for seed in RULE_SEEDS:
        fd, fc = FastestDesign(seed), FallbackCount(seed)
        assert fc.scenario_params() == fd.scenario_params()
        res = fd.results()
        tally = {d: {k: v for k, v in r.fallbacks.items() if v} for d, r in res.items()}
        if seed < 3:
            assert fc.answer() == tally[fc.params["design"]]
        out.append((fd, fc, tally))
    return out


def test_always_sdei_and_every_single_design_fail_for_most_seeds(rule_runs):
    n = len(rule_runs)
    for guess in FastestDesign.CHOICES:
        right = sum(bool(fd.check(guess)) for fd, _fc, _t in rule_runs)
        assert right < n / 2, (guess, right)
    assert sum(bool(fd.check("sdei")) for fd, _fc, _t in rule_runs) < n / 4


def test_kernel_mode_for_every_kernel_read_fails_for_most_seeds(rule_runs):
    n = len(rule_runs)
    naive = sum({"kernel_mode": kernel_reads(fc.params)} == t[fc.params["design"]] for _fd, fc, t in rule_runs)
    assert naive < n / 2, naive


def test_the_same_tally_as_sdei_fails_for_most_seeds(rule_runs):
    n = len(rule_runs)
    same = sum(t["sdei"] == t[fc.params["design"]] for _fd, fc, t in rule_runs)
    assert same < n / 2, same


# ---------------------------------------------------------------------- the fallback predicate

def reference(design, state):
    """The host's decision, written out for the test (the grader itself never states it)."""
    needs_guest = design != "halt"
    if not state["host_offers_apf"] or (needs_guest and not state["apf_enabled"]):
        return "apf_disabled"
    if needs_guest and state["el"] != 0 and not state["send_always"]:
        return "kernel_mode"
    if design == "sdei":
        for key, reason in (("sdei_handler_running", "in_handler"), ("sdei_event_pending", "event_pending"),
                            ("pe_masked", "pe_masked")):
            if state[key]:
                return reason
        if not state["event_enabled"]:
            return "event_disabled"
    if design in ("irq", "halt") and state["pstate_i"]:
        return "irq_masked"
    if state["page_inflight"]:
        return "repeated_fault"
    if needs_guest and state["slot_busy"]:
        return "slot_busy"
    if state["outstanding"] >= 64:
        return "queue_full"
    return None


@pytest.mark.parametrize("seed", [0, 1234])
def test_a_correct_predicate_passes(seed):
    result = FallbackPredicate(seed).check(reference)
    assert result, result.message
    assert "agree with the host" in result.message


@pytest.mark.parametrize("seed", [0, 7, 99])
def test_the_catalogue_reaches_every_reason_of_every_design(seed):
    cases = catalogue(seed)
    core = {"apf_disabled", "repeated_fault", "queue_full"}
    for design in DESIGNS:
        seen = {a for d, _s, a in cases if d == design}
        own = set(apflab.delivery.describe(design)["reasons"])
        expected = core | own | {None} | ({"kernel_mode", "slot_busy"} if design != "halt" else set())
        assert seen == expected, (design, seen ^ expected)


def test_the_answers_come_from_the_product_not_from_the_grader(monkeypatch):
    state = {**CLEAR_STATE, "el": 1, "pstate_i": True, "send_always": True}
    assert host_decision("irq", state) == "irq_masked"
    monkeypatch.setattr(IrqDelivery, "why_not", lambda self, vcpu, el: None)
    assert host_decision("irq", state) is None


def test_the_empty_skeleton_gets_what_is_missing():
    ex = FallbackPredicate(3)

    def raises(design, state):
        raise NotImplementedError

    def returns_none(design, state):
        return None

    r = ex.check(raises)
    assert not r and "skeleton" in r.message and "missing" in r.message
    r = ex.check(returns_none)
    assert not r and "every case" in r.message and "missing" in r.message


def test_a_subtly_wrong_predicate_is_told_the_case():
    def forgets_pstate_i_for_irq(design, state):
        right = reference(design, state)
        return None if design == "irq" and right == "irq_masked" else right

    r = FallbackPredicate(3).check(forgets_pstate_i_for_irq)
    assert not r
    assert r.message.startswith("design irq, kernel mode with SEND_ALWAYS and IRQs masked: you said None, "
                                "the host falls back with irq_masked")

    def kernel_mode_for_halt_too(design, state):
        right = reference(design, state)
        return "kernel_mode" if design == "halt" and state["el"] == 1 and right is None else right

    r = FallbackPredicate(3).check(kernel_mode_for_halt_too)
    assert not r
    assert r.message.startswith("design halt, kernel mode, nothing else in the way: you said 'kernel_mode', "
                                "the host can deliver it asynchronously (None)")


def test_a_crashing_or_odd_predicate_gets_a_message_not_a_crash():
    ex = FallbackPredicate(3)
    r = ex.check(lambda d, s: s["no_such_key"])
    assert not r and "KeyError" in r.message and r.message.startswith("design sdei, user mode")
    r = ex.check(lambda d, s: "irq-masked")
    assert not r and "'irq-masked'" in r.message and "irq_masked" in r.message
    assert "pass your function" in ex.check("can_be_async").message


def test_the_student_cannot_change_the_grader_s_cases():
    ex = FallbackPredicate(3)
    before = ex.cases()

    def mutates(design, state):
        state["el"] = 1
        return reference(design, state)

    ex.check(mutates)
    assert ex.cases() == before


def test_inconsistent_states_are_refused():
    with pytest.raises(ParameterError, match="user mode"):
        host_decision("sdei", {**CLEAR_STATE, "pstate_i": True})
    with pytest.raises(ParameterError, match="dispatched"):
        host_decision("sdei", {**CLEAR_STATE, "sdei_event_pending": True})
    with pytest.raises(ParameterError, match="halt"):
        host_decision("halt", {**CLEAR_STATE})
    with pytest.raises(ParameterError, match="missing"):
        host_decision("irq", {"el": 0})


def test_case_words():
    s = {**CLEAR_STATE, "el": 1, "pstate_i": True, "send_always": True}
    assert describe_case("irq", s) == "design irq, kernel mode with SEND_ALWAYS and IRQs masked"
    assert describe_case("sdei", CLEAR_STATE) == "design sdei, user mode, nothing else in the way"
    assert describe_case("sdei", {**CLEAR_STATE, "outstanding": 1}).endswith("1 async fault outstanding")


def test_the_diagram_shows_what_the_host_decides():
    """assets/lab10-designs.svg is drawn by hand; its cells must be the host's answers."""
    import re
    from pathlib import Path
    svg = (Path(__file__).resolve().parent.parent / "assets" / "lab10-designs.svg").read_text()
    cells = dict(re.findall(r'id="cell-(\w+-\d)"[^>]*>([^<]+)<', svg))
    rows = [{}, {"el": 1}, {"el": 1, "pstate_i": True}, {"el": 1, "pstate_i": True, "send_always": True}]
    assert len(cells) == len(rows) * len(DESIGNS)
    for i, change in enumerate(rows):
        for design in DESIGNS:
            state = {**CLEAR_STATE, **change}
            if design == "halt":
                state.update(apf_enabled=False, send_always=False)
            expected = host_decision(design, state) or "async"
            assert cells[f"{design}-{i}"] == expected, (design, change)
