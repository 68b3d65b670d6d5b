"""Lab 11 exercises: answers come from the runs, checks accept them and reject wrong ones, and
the host-scheduler grader agrees with the product's HostScheduler, rejects plausible wrong
rules, and says what a skeleton lacks."""

import random

import pytest

from apflab import scenarios
from apflab.errors import ParameterError
from apflab.exercises.lab11 import LockSpin, OvercommitViews, PcpuSchedule, draw_events, play


def variants(cls, seeds=range(12)):
    return {repr(sorted(cls(s).params.items())) for s in seeds}


@pytest.mark.parametrize("cls", [OvercommitViews, LockSpin, PcpuSchedule])
def test_seeds_draw_different_variants_and_repeat(cls):
    assert len(variants(cls)) >= 3
    assert cls(42).params == cls(42).params
    assert str(cls(42).seed) in cls(42).question()
    with pytest.raises(ParameterError):
        cls("42")


def test_overcommit_views_come_from_the_two_runs_and_discriminate():
    ex = OvercommitViews(2)
    off, on = scenarios.compare("overcommit", seed=2, **ex.params)
    g = scenarios.overcommit_gains(off, on)
    want = ex.answer()
    assert want == {"guest_view": g["guest_view"], "host_view": g["host_view"]}
    assert want["guest_view"] > 1.5 and want["host_view"] < 1          # the lab's point
    assert ex.check(want)
    assert ex.check({k: v * 1.05 for k, v in want.items()})           # within 10%
    assert not ex.check({"guest_view": want["guest_view"], "host_view": want["guest_view"]})
    assert not ex.check({"guest_view": want["host_view"], "host_view": want["host_view"]})
    assert not ex.check({"guest_view": 1.0, "host_view": 1.0})
    assert "dict" in ex.check(None).message and not ex.check({"guest_view": 2})


def test_lock_spin_is_the_measured_spin_and_discriminates():
    ex = LockSpin(1)
    r = scenarios.run_scenario("lock_holder", apf=True, seed=1, pv_lock=False, **ex.params)
    want = r.lock["spin_ns"] / 1e6
    assert ex.answer() == want > 0
    assert ex.check(want) and ex.check(want * 1.15)
    assert not ex.check(want * 1.5) and not ex.check(want / 2) and not ex.check(0)
    assert not ex.check("1 ms") and not ex.check(-1)


# ---------------------------------------------------------------------- build it: the scheduler

def _shipped_solution() -> str:
    """The solution cell the lab ships (tools/notebooks), renamed ``reference``: the grader must
    accept it, and the mutations below start from its source."""
    import importlib
    import pathlib
    import sys
    tools = str(pathlib.Path(__file__).resolve().parent.parent / "tools")
    sys.path.insert(0, tools)
    try:
        src = importlib.import_module("notebooks.lab11_smp_overcommit").SCHEDULE_SOLUTION.source
    finally:
        sys.path.remove(tools)
    body = src.split("### BEGIN SOLUTION\n", 1)[1].split("### END SOLUTION", 1)[0]
    return body.replace("def schedule(", "def reference(")


REFERENCE_SRC = _shipped_solution()
_ns: dict = {}
exec(REFERENCE_SRC, _ns)
reference = _ns["reference"]


def test_the_grader_plays_the_real_scheduler_and_the_stated_rule_passes():
    for seed in range(40):
        assert PcpuSchedule(seed).check(reference), seed


def test_catalogues_exercise_waiting_and_preemption():
    waits = preempts = 0
    for seed in range(20):
        ex = PcpuSchedule(seed)
        for want in ex.answer():
            waits += any(want["steal"])
        for ev in ex.cases():
            ts = ex.params["time_slice_ns"]
            preempts += any(k == "turn" for _, k, _ in ev) and any(reference(ex.params["pcpus"], ts,
                                                                         ex.params["vcpus"], ev)["steal"])
    assert waits > 50 and preempts > 50


@pytest.mark.parametrize("bug, old, new", [
    ("lowest index", "min(free, key=lambda p: (since[p], p))", "min(free)"),
    ("no preemption", "if t >= slice_end[p]:", "if False:"),
    ("LIFO queue", "waiting.pop(0)", "waiting.pop()"),
    ("no steal", "steal[v] += start - ready", "pass"),
])
def test_plausible_wrong_rules_fail_for_most_seeds(bug, old, new):
    src = REFERENCE_SRC
    assert old in src
    ns = {}
    exec(src.replace(old, new), ns)
    failed = sum(not PcpuSchedule(s).check(ns["reference"]) for s in range(30))
    assert failed >= 10, bug


def test_skeleton_and_bad_returns_get_words():
    ex = PcpuSchedule(3)

    def skeleton(*a):
        raise NotImplementedError
    assert "not written" in ex.check(skeleton).message
    assert "return" in ex.check(lambda *a: [1]).message
    assert "raised ZeroDivisionError" in ex.check(lambda *a: 1 / 0).message
    assert not ex.check(None)
    msg = ex.check(lambda p, ts, n, ev: {"holders": [None] * p, "steal": [0] * n}).message
    assert "case" in msg and "runnable" in msg


def test_drawn_sequences_are_what_a_host_produces():
    rng = random.Random(5)
    for _ in range(20):
        ev = draw_events(rng, 2, 4, 1000, 12)
        assert [t for t, _, _ in ev] == sorted(t for t, _, _ in ev)
        out = play(2, 1000, 4, ev)
        assert len(out["holders"]) == 2 and len(out["steal"]) == 4
    with pytest.raises(ParameterError, match="event kind"):
        play(1, 1000, 2, [(0, "wake", 0)])


def test_classroom_mode_refuses_answer_but_checks(monkeypatch):
    monkeypatch.setenv("APFLAB_CLASSROOM", "1")
    ex = PcpuSchedule(1)
    from apflab.exercises import ClassroomModeError
    with pytest.raises(ClassroomModeError):
        ex.answer()
    assert ex.check(reference)
    from apflab.exercises import grading
    assert grading.verify(PcpuSchedule, 1, reference)


def test_lab11_notebooks_as_shipped():
    """Student lab without outputs, predicting first; solution with outputs, graded cells
    that pass, and the model's choices said where the figures are shown."""
    from pathlib import Path
    import nbformat
    root = Path(__file__).resolve().parent.parent
    lab = nbformat.read(root / "labs" / "11-smp-overcommit.ipynb", 4)
    sol = nbformat.read(root / "labs" / "solutions" / "11-smp-overcommit.ipynb", 4)
    assert all(not c.outputs for c in lab.cells if c.cell_type == "code")
    text = "\n".join(c.source for c in lab.cells)
    assert "**Predict:**" in text and "**Expected time:**" in text
    assert "model's choice" in text and "docs/REFERENCES.md" in text and "beyond KVM" in text
    graded = [c for c in sol.cells if c.metadata.get("nbgrader", {}).get("grade")]
    assert len(graded) == 3
    for c in graded:
        assert "grading.verify" in c.source
        assert "correct:" in "".join(o.get("text", "") for o in c.outputs)
    outputs = "".join(o.get("text", "") for c in sol.cells if c.cell_type == "code" for o in c.outputs)
    assert "over 5 seeds" in outputs and "(5 seeds)" in outputs
