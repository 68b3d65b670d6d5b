"""``apflab``: run the lab's experiments from a terminal.

    apflab run memtouch --apf on --param calc_thread=true --json
    apflab compare gleb2010
    apflab designs syscall_read --param send_always=true
    apflab sweep memtouch --grid latency_ns=20000,50000,100000 --grid calc_thread=false,true
    apflab lab
    apflab check
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

from .errors import ApflabError, ParameterError


def _value(text: str):
    """Parse a --param value: ints (with _ or 0x), true/false, none, else the string."""
    low = text.strip().lower()
    if low in ("true", "on", "yes"):
        return True
    if low in ("false", "off", "no"):
        return False
    if low == "none":
        return None
    try:
        return int(text.replace("_", ""), 0)
    except ValueError:
        return text


def _params(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ParameterError(f"--param takes name=value, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = _value(v)
    return out


def _row(r) -> dict:
    return r.row()


def _emit(rows: list[dict], fmt: str, out) -> None:
    if fmt == "json":
        json.dump(rows if len(rows) != 1 else rows[0], out, indent=2, sort_keys=True)
        out.write("\n")
    elif fmt == "csv":
        keys = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        w = csv.DictWriter(out, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def cmd_run(args) -> int:
    from .scenarios import run_scenario
    r = run_scenario(args.scenario, apf=args.apf == "on", seed=args.seed, delivery=args.delivery,
                     **_params(args.param))
    costs = None
    if args.breakdown:
        from .costs import async_fault_costs, format_costs
        costs = async_fault_costs(r.trace)
    if args.format == "table":
        print(r.table())
        if costs is not None:
            print()
            print(format_costs(costs))
    else:
        row = _row(r)
        if costs is not None:
            n = costs["faults"] or 1
            row.update({f"cost_per_fault.{k}": v / n for k, v in costs["components"].items()})
            row["cost_per_fault.total"] = costs["per_fault_ns"]
        _emit([row], args.format, sys.stdout)
    return 0


def cmd_compare(args) -> int:
    from .scenarios import compare
    off, on = compare(args.scenario, seed=args.seed, **_params(args.param))
    if args.format != "table":
        _emit([_row(off), _row(on)], args.format, sys.stdout)
        return 0
    a, b = off.table().splitlines(), on.table().splitlines()
    w = max(len(x) for x in a)
    print(f"{'':<{w}}   |   APF on")
    for x, y in zip(a, b):
        print(f"{x:<{w}}   |   {y.split('  ', 1)[-1].strip()}")
    ratio = on.work.get("compute", 0) / off.work["compute"] if off.work.get("compute") else None
    print(f"\nelapsed on/off: {on.elapsed_ns / off.elapsed_ns:.3f}"
          + (f"   compute work on/off: {ratio:.2f}x" if ratio else ""))
    return 0


def cmd_designs(args) -> int:
    from . import designs
    from .scenarios import compare_designs
    rows = designs.table(compare_designs(args.scenario, seed=args.seed, **_params(args.param)))
    if args.format == "table":
        print(f"{args.scenario}, seed {args.seed}: the five designs ('sync' is APF off)\n")
        print(designs.text(rows))
    else:
        for r in rows:
            if args.format == "csv":
                r["fallbacks"] = ";".join(f"{k}={v}" for k, v in sorted(r["fallbacks"].items()))
                r["migration_state"] = ";".join(r["migration_state"])
        _emit(rows, args.format, sys.stdout)
    return 0


def cmd_sweep(args) -> int:
    from .sweep import sweep
    grid = {}
    for g in args.grid or []:
        if "=" not in g:
            raise ParameterError(f"--grid takes name=v1,v2,..., got {g!r}")
        k, vs = g.split("=", 1)
        grid[k.strip()] = [_value(v) for v in vs.split(",")]
    rows = sweep(args.scenario, grid, apf=[False, True] if args.apf == "both" else [args.apf == "on"],
                 seeds=list(range(args.seeds)), workers=args.workers, progress=not args.quiet,
                 **_params(args.param))
    _emit(rows, "csv" if args.format == "table" else args.format, sys.stdout)
    return 0


def cmd_lab(args) -> int:
    labs = Path(args.dir)
    first = sorted(labs.glob("00-*.ipynb"))
    target = str(first[0]) if first else str(labs)
    import os
    root = ["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    return subprocess.call([sys.executable, "-m", "jupyter", "lab", *root, target])


def cmd_check(args) -> int:
    """Verify the installation and say what is wrong, step by step."""
    ok = True

    def step(name, fn):
        nonlocal ok
        try:
            detail = fn()
            print(f"ok    {name}" + (f": {detail}" if detail else ""))
        except Exception as e:   # report, never crash: this is the diagnostic
            ok = False
            print(f"FAIL  {name}: {type(e).__name__}: {e}")

    def imports():
        import capstone
        import keystone  # noqa: F401
        import unicorn
        return f"unicorn {unicorn.__version__}, capstone {capstone.__version__}"

    def assembler():
        from .asm import assemble
        p = assemble("_start:\n 1: b 1b\n", 0x40000000)
        return f"{len(p.code)} bytes"

    def guest():
        from .machine import Machine
        m = Machine(seed=0)
        m.load_asm("_start:\n movz x0, #0xC400, lsl #16\n add x0, x0, #0x20\n hvc #0\n brk #0")
        m.run(max_instructions=100)
        if m.reg("x0") != 0x10001004B564D:
            raise RuntimeError(f"SDEI VERSION returned {m.reg('x0'):#x}")
        return "SDEI 1.1 answered"

    def kernel():
        from .scenarios import run_scenario
        r = run_scenario("memtouch", apf=True, seed=0, npages=16, limit_pages=8)
        return f"mini-kernel ran: {r.apf_not_present} async page faults"

    def widgets():
        import ipywidgets
        import plotly
        return f"ipywidgets {ipywidgets.__version__}, plotly {plotly.__version__}"

    for name, fn in (("imports", imports), ("assembler", assembler), ("tiny guest", guest),
                     ("guest kernel + APF", kernel), ("notebook libraries", widgets)):
        step(name, fn)
    print("apflab is ready." if ok else "apflab is NOT ready: see the FAIL lines above.")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    from .scenarios import SCENARIOS
    ap = argparse.ArgumentParser(prog="apflab", description="SDEI and async page faults on a simulated arm64 hypervisor.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, apf_choices=("on", "off")):
        p.add_argument("scenario", choices=sorted(SCENARIOS))
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--param", action="append", metavar="NAME=VALUE",
                       help="a scenario parameter (repeatable); see `apflab params SCENARIO`")
        fmt = p.add_mutually_exclusive_group()
        fmt.add_argument("--json", dest="format", action="store_const", const="json")
        fmt.add_argument("--csv", dest="format", action="store_const", const="csv")
        p.set_defaults(format="table")

    p = sub.add_parser("run", help="run one scenario and print its result")
    common(p)
    p.add_argument("--apf", choices=("on", "off"), required=True)
    p.add_argument("--delivery", choices=("sdei", "irq", "abort", "halt"), default="sdei",
                   help="how 'page not present' reaches the guest (with --apf on)")
    p.add_argument("--breakdown", action="store_true",
                   help="also print what one async page fault costs, component by component")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("compare", help="APF off and on side by side")
    common(p)
    p.set_defaults(fn=cmd_compare)

    p = sub.add_parser("designs", help="the five delivery designs (sync, sdei, irq, abort, halt) side by side")
    common(p)
    p.set_defaults(fn=cmd_designs)

    p = sub.add_parser("sweep", help="a parameter grid over local cores (CSV/JSON out)")
    common(p)
    p.add_argument("--grid", action="append", metavar="NAME=V1,V2,...", help="a swept parameter (repeatable)")
    p.add_argument("--apf", choices=("on", "off", "both"), default="both")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per grid point")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("params", help="list a scenario's parameters, defaults and rules")
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.set_defaults(fn=lambda a: _print_params(a.scenario))

    p = sub.add_parser("lab", help="open JupyterLab on the labs")
    p.add_argument("--dir", default="labs")
    p.set_defaults(fn=cmd_lab)

    p = sub.add_parser("check", help="verify the installation and say what is wrong")
    p.set_defaults(fn=cmd_check)
    return ap


def _print_params(name: str) -> int:
    from .scenarios import parameters
    for k, v in parameters(name).items():
        print(f"{k:<24} default {v['default']!r:<14} {v['rule']}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ApflabError as e:
        print(f"apflab: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
