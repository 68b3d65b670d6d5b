"""``python -m benchmarks``: speed of apflab against bare unicorn, measured in one process.

Wall-clock time is used here and only here: these are measurements of the
simulator, never results of a simulation. Each figure is the best of
``--repeat`` runs, printed as JSON with its ratio to the target; a profile summary of one
fault (engine entries, register accesses, trace records, hook calls, host µs by phase) and
one line per target go to stderr. ``APFLAB_SLOW_PATH=1`` measures the slow path.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from . import faults, interactive, profile, resident, scale, smp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    ap.add_argument("--iterations", type=int, default=4_000_000, help="guest loop iterations (6 insns each)")
    ap.add_argument("--fault-pages", type=int, default=1024, help="memtouch buffer pages for faults/s")
    ap.add_argument("--scale", action="store_true",
                    help="also run the 1 GiB guest / 512 MiB limit memory benchmark (minutes)")
    ap.add_argument("--scale-pages", type=int, default=192 * 1024, help="memtouch buffer pages for --scale")
    ap.add_argument("--profile-pages", type=int, default=256, help="memtouch buffer pages for the profile")
    args = ap.parse_args(argv)
    out = {"python": platform.python_version(), "machine": platform.machine(),
           "resident_loop": resident.measure(args.iterations, args.repeat),
           "fault_handling": faults.measure(args.fault_pages, args.repeat),
           "interactivity": interactive.measure(),
           "smp": smp.measure(args.iterations, args.repeat),
           "profile": profile.measure(args.profile_pages)}
    if args.scale:
        out["scale"] = scale.measure(args.scale_pages, 128 * 1024)
    json.dump(out, sys.stdout, indent=2)
    print()
    print(profile.summary(out["profile"]), file=sys.stderr)
    print(targets(out), file=sys.stderr)
    return 0


def targets(out: dict) -> str:
    """One line per target: the figure, the target, the ratio, met or not."""
    f, r, i = out["fault_handling"], out["resident_loop"], out["interactivity"]
    rows = [("faults/s, APF on (sdei)", f["apf_on"]["faults_per_s"], f["target_faults_per_s"], f["ratio_to_target"], f["meets_target"]),
            ("faults/s, APF off", f["apf_off"]["faults_per_s"], f["target_off_faults_per_s"], f["off_ratio_to_target"], f["off_meets_target"]),
            ("resident loop / bare unicorn", r["ratio"], r["target"], r["ratio_to_target"], r["meets_target"]),
            ("explorer step ms (lower is better)", i["step_1_median_ms"], i["target_ms"], i["ratio_to_target"], i["meets_target"])]
    for d, v in f["designs"].items():
        if d == "sdei":
            continue                     # the first row
        rows.append((f"faults/s, APF on ({d})", v["faults_per_s"], f["target_faults_per_s"],
                     round(v["faults_per_s"] / f["target_faults_per_s"], 3), v["faults_per_s"] >= f["target_faults_per_s"]))
    if "scale" in out:
        s = out["scale"]
        rows += [("scale run s (lower is better)", s["seconds"], s["target_seconds"], s["seconds_ratio_to_target"], s["meets_seconds_target"]),
                 ("scale peak RSS bytes (lower is better)", s["peak_rss_bytes"], s["target_peak_bytes"], s["ratio_to_target"], s["meets_target"])]
    lines = ["targets:"]
    for name, value, target, ratio, met in rows:
        lines.append(f"  {name}: {value} (target {target}, ratio {ratio}) {'met' if met else 'NOT met'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
