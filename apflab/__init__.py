"""apflab: see a hypervisor keep a vCPU busy while the host fetches a missing page.

The public API (DESIGN.md "harness contract"):

    import apflab
    m = apflab.Machine(seed=0)
    syms = m.load_asm(source)
    m.run(max_instructions=1_000_000)
    m.reg("x0"), m.read_u64(addr)

and, for experiments, ``apflab.run_scenario(name, apf=..., delivery=..., seed=..., **params)``
and ``apflab.compare_designs(name, seed=..., **params)``.
"""

from .errors import (ApflabError, AsmError, BudgetExceeded, GuestError, GuestFault, HookError,
                     InvariantError, ParameterError, TraceFormatError)
from .machine import Machine, RAM_BASE
from .host import HostCosts
from .trace import Trace
from .sweep import sweep   # eager: the function, not the submodule, is ``apflab.sweep``

__version__ = "0.1.0"


def __getattr__(name):
    # Scenarios pull in the guest kernel; load them on first use.
    if name in ("run_scenario", "ScenarioResult", "SCENARIOS", "compare", "compare_designs", "build"):
        from . import scenarios
        return getattr(scenarios, name)
    raise AttributeError(f"module 'apflab' has no attribute {name!r}")


__all__ = ["Machine", "RAM_BASE", "HostCosts", "Trace", "ApflabError", "AsmError", "BudgetExceeded",
           "GuestError", "GuestFault", "HookError", "InvariantError", "ParameterError",
           "TraceFormatError", "run_scenario", "ScenarioResult", "SCENARIOS", "compare", "compare_designs",
           "build", "sweep"]
