"""``python -m benchmarks``: speed of apflab against bare unicorn, measured in one process.

Wall-clock time is used here and only here: these are measurements of the
simulator, never results of a simulation. Each figure is the best of
``--repeat`` runs, printed as JSON with its ratio to the target.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

from . import faults, interactive, resident, scale, smp


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is kept")
    ap.add_argument("--iterations", type=int, default=4_000_000, help="guest loop iterations (6 insns each)")
    ap.add_argument("--fault-pages", type=int, default=1024, help="memtouch buffer pages for faults/s")
    ap.add_argument("--scale", action="store_true",
                    help="also run the 1 GiB guest / 512 MiB limit memory benchmark (minutes)")
    ap.add_argument("--scale-pages", type=int, default=192 * 1024, help="memtouch buffer pages for --scale")
    args = ap.parse_args(argv)
    out = {"python": platform.python_version(), "machine": platform.machine(),
           "resident_loop": resident.measure(args.iterations, args.repeat),
           "fault_handling": faults.measure(args.fault_pages, args.repeat),
           "interactivity": interactive.measure(),
           "smp": smp.measure(args.iterations, args.repeat)}
    if args.scale:
        out["scale"] = scale.measure(args.scale_pages, 128 * 1024)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
