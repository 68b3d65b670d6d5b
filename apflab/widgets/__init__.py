"""ipywidgets front ends built on apflab's public API (never on unicorn).

- ``Explorer``: step one guest through async page faults, run to the next fault / SDEI /
  interrupt / page-ready, step back by deterministic replay, inject faults.
- ``StallDashboard``: run a scenario with APF off and on and compare where the time went.
"""

from .dashboard import StallDashboard, headline
from .explorer import (DEFAULTS, Explorer, GuestSetup, build_guest, fill_apf_slots,
                       release_apf_slots, set_pe_masked, set_swap_latency)

__all__ = ["Explorer", "StallDashboard", "GuestSetup", "build_guest", "DEFAULTS", "headline",
           "set_pe_masked", "fill_apf_slots", "release_apf_slots", "set_swap_latency"]
