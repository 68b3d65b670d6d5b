"""Interactivity: wall time of one explorer step (the widget's "step 1" and "→ fault" buttons).

Target (issue 6): median of one explorer step under 50 ms. Measured on the
default explorer guest, including the widget's view refresh.
"""

from __future__ import annotations

import statistics
import time

TARGET_MS = 50.0


def measure(steps: int = 60) -> dict:
    from apflab.widgets import Explorer
    ex = Explorer(seed=0)
    one, fault = [], []
    for i in range(steps):
        t = time.perf_counter()
        ex.buttons["step1"].click()
        one.append((time.perf_counter() - t) * 1e3)
    for i in range(max(5, steps // 6)):
        t = time.perf_counter()
        ex.buttons["fault"].click()
        fault.append((time.perf_counter() - t) * 1e3)
    med = statistics.median(one)
    return {"step_1_median_ms": round(med, 2), "run_to_fault_median_ms": round(statistics.median(fault), 2),
            "target_ms": TARGET_MS, "ratio_to_target": round(med / TARGET_MS, 3), "meets_target": med < TARGET_MS}
