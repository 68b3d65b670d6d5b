"""Seeds, scale and shrinking shared by the seeded fuzzers (``test_fuzz_*.py``).

Each fuzzer draws one case from ``random.Random(seed)``; the seeds come from a fixed
list, so every run is the same run (docs/ROBUSTNESS.md, "Fuzzers"):

- CI (``make test``): ``range(ci_base, ci_base + n)``;
- ``make fuzz`` (``APFLAB_FUZZ=long``): ten times as many, from another fixed base;
- ``APFLAB_FUZZ_SEEDS=17,42``: just those seeds (the replay command a failure prints).

A failing case is shrunk (greedy: drop one step at a time while it still fails) and
reported with its seed, the shrunk steps and the command that replays it.
"""

from __future__ import annotations

import os
import traceback

LONG = os.environ.get("APFLAB_FUZZ", "") == "long"
SCALE = 10 if LONG else 1


def seeds(ci_base: int, long_base: int, n: int) -> list[int]:
    """The fixed seed list for this run (``n`` in CI, ``10 n`` with APFLAB_FUZZ=long)."""
    chosen = os.environ.get("APFLAB_FUZZ_SEEDS")
    if chosen:
        return [int(s, 0) for s in chosen.replace(",", " ").split()]
    return list(range(long_base, long_base + SCALE * n)) if LONG else list(range(ci_base, ci_base + n))


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def failure(run, steps: list):
    """``run(steps)`` raises on failure: the exception, or None if it passes."""
    try:
        run(steps)
    except Exception as e:       # any exception is a finding: the product must not raise
        return e
    return None


def shrink(run, steps: list, budget: int = 300) -> list:
    """Greedily drop steps while ``run`` still fails with the same exception type."""
    first = failure(run, steps)
    if first is None:
        return steps
    kind = type(first)
    i = 0
    while i < len(steps) and budget > 0:
        trial = steps[:i] + steps[i + 1:]
        budget -= 1
        e = failure(run, trial)
        if e is not None and type(e) is kind:
            steps = trial
        else:
            i += 1
    return steps


def report(test_file: str, seed: int, what: str, run, steps: list) -> str:
    """The failure message: seed, shrunk steps, the error they give, the replay command."""
    small = shrink(run, steps)
    err = failure(run, small) or failure(run, steps)
    lines = [f"{what} failed for seed {seed} ({len(steps)} steps; shrunk to {len(small)}):"]
    lines += [f"    {s!r}" for s in small]
    if err is not None:
        lines.append("error: " + "".join(traceback.format_exception_only(type(err), err)).strip())
    lines.append(f"replay: APFLAB_FUZZ_SEEDS={seed} .venv/bin/python -m pytest {test_file} "
                 f"-p no:cacheprovider -q")
    return "\n".join(lines)
