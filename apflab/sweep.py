"""Parameter sweeps: every point of a grid, APF off and on, over local cores or a Dask cluster.

    rows = apflab.sweep("memtouch", {"latency_ns": [20_000, 50_000, 100_000],
                                     "calc_thread": [False, True]})

Each row is ``ScenarioResult.row()``: parameters echoed, headline numbers, time by
mode, the trace digest. Results do not depend on how many workers ran them: each
point is its own deterministic run.
"""

from __future__ import annotations

import itertools
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed

from .errors import ParameterError


def _run_point(point: tuple) -> dict:
    name, apf, seed, params = point
    from .scenarios import run_scenario
    return run_scenario(name, apf=apf, seed=seed, **params).row()


def points(name: str, grid: dict, *, apf=(False, True), seeds=(0,), **fixed) -> list[tuple]:
    """The runs a sweep makes, in a fixed order: grid (in key order) x apf x seed."""
    from .scenarios import SCENARIOS
    if name not in SCENARIOS:
        raise ParameterError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    if not isinstance(grid, dict) or any(not isinstance(v, (list, tuple)) or not v for v in grid.values()):
        raise ParameterError("grid must map parameter names to non-empty lists of values")
    known = SCENARIOS[name].spec
    for k in list(grid) + list(fixed):
        if k not in known:
            raise ParameterError(f"unknown parameter {k!r} for {name}; known: {', '.join(sorted(known))}")
    keys = list(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = {**fixed, **dict(zip(keys, values))}
        for a in apf:
            for s in seeds:
                out.append((name, bool(a), int(s), params))
    return out


class _Progress:
    """A one-line text progress bar on stderr (no extra dependency)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled = total, 0, enabled
        self._draw()

    def step(self) -> None:
        self.done += 1
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * self.done // max(1, self.total)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def sweep(name: str, grid: dict, *, apf=(False, True), seeds=(0,), workers: int | None = None,
          progress: bool = True, client=None, **fixed) -> list[dict]:
    """Run the grid; rows come back in ``points`` order whatever finished first.

    ``workers``: local processes (default: every core). ``client``: a
    ``dask.distributed.Client`` to run the same points on a cluster instead
    (install the ``dask`` extra); rows are identical either way.
    """
    pts = points(name, grid, apf=apf, seeds=seeds, **fixed)
    bar = _Progress(len(pts), progress)
    rows: list[dict | None] = [None] * len(pts)
    if client is not None:
        futures = client.map(_run_point, pts, pure=True)
        index = {f.key: i for i, f in enumerate(futures)}
        from dask.distributed import as_completed as dask_completed
        for fut in dask_completed(futures):
            rows[index[fut.key]] = fut.result()
            bar.step()
        return rows
    workers = workers or os.cpu_count() or 1
    if workers < 1:
        raise ParameterError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(pts) == 1:
        for i, p in enumerate(pts):
            rows[i] = _run_point(p)
            bar.step()
        return rows
    with ProcessPoolExecutor(max_workers=min(workers, len(pts))) as pool:
        futs = {pool.submit(_run_point, p): i for i, p in enumerate(pts)}
        for f in as_completed(futs):
            rows[futs[f]] = f.result()
            bar.step()
    return rows
