"""``StallDashboard``: pick a scenario and its knobs, run it with APF off and on, compare.

    from apflab.widgets import StallDashboard
    d = StallDashboard()        # in a notebook: controls, a run button, headline numbers, a chart
    d.run(); off, on = d.last

Every run goes through ``apflab.scenarios.compare`` with the parameters shown (``params()``)
and the chosen delivery design, so a number on the dashboard can be reproduced from a cell
with the same call.
"""

from __future__ import annotations

import html
import json

import ipywidgets as W

from .. import scenarios
from ..errors import ApflabError, ParameterError
from .. import plots

# Latency choices: 0 = the store's own median (ssd 50 µs, hdd 13 ms; post-copy: 200 µs RTT).
LATENCIES = [("store default", 0), ("10 µs", 10_000), ("50 µs", 50_000), ("150 µs", 150_000),
             ("1 ms", 1_000_000), ("5 ms", 5_000_000), ("13 ms", 13_000_000)]

# Task mixes per scenario: label -> the parameters that set it.
MIXES = {
    "memtouch": {"memtouch + compute": {"calc_thread": True}, "memtouch only": {"calc_thread": False}},
    "gleb2010": {"4 faulting + 4 compute": {"fault_tasks": 4, "compute_tasks": 4},
                 "2 faulting + 2 compute": {"fault_tasks": 2, "compute_tasks": 2},
                 "1 faulting + 1 compute": {"fault_tasks": 1, "compute_tasks": 1},
                 "4 faulting, no compute": {"fault_tasks": 4, "compute_tasks": 0}},
    "postcopy": {"memtouch + compute": {"calc_thread": True}, "memtouch only": {"calc_thread": False}},
    "syscall_read": {"reader + compute": {"calc_thread": True},
                     "reader + compute, SEND_ALWAYS": {"calc_thread": True, "send_always": True},
                     "reader only": {"calc_thread": False}},
}
# Dashboard defaults, smaller than the scenarios' own so a run takes about a second.
QUICK = {"memtouch": {"npages": 128, "limit_pages": 64},
         "gleb2010": {"npages": 48, "limit_pages": 96, "duration_ns": 20_000_000},
         "postcopy": {"npages": 128},
         "syscall_read": {"npages": 128, "limit_pages": 64}}
# What each scenario measures (docs/REFERENCES.md, "Published figures"): time to finish, or
# work in a fixed time.
MEASURE = {"memtouch": "time", "gleb2010": "work", "postcopy": "work", "syscall_read": "time"}
DESIGNS = ("sdei", "irq", "abort", "halt")


class StallDashboard:
    """Controls for scenario, store, latency, memory limit, task mix and seed; a run button
    that runs APF off and on; a breakdown chart and the headline numbers.  ``last`` holds the
    latest (off, on) pair of ``ScenarioResult``."""

    def __init__(self, scenario: str = "memtouch", *, seed: int = 0, run: bool = False):
        if scenario not in scenarios.SCENARIOS:
            raise ParameterError(f"unknown scenario {scenario!r}; choose one of {', '.join(scenarios.SCENARIOS)}")
        self.last: tuple | None = None
        self.figure = None
        self.status = ""
        style = {"description_width": "110px"}
        wide = W.Layout(width="360px")
        self.scenario = W.Dropdown(options=list(scenarios.SCENARIOS), value=scenario,
                                   description="scenario", style=style, layout=wide)
        self.store = W.Dropdown(options=["ssd", "hdd"], value="ssd", description="swap store",
                                style=style, layout=wide)
        self.latency = W.SelectionSlider(options=LATENCIES, value=0, description="latency",
                                         style=style, layout=wide)
        self.limit = W.IntSlider(value=64, min=8, max=1024, step=8, description="memory limit",
                                 style=style, layout=wide, tooltip="host memory limit (pages)")
        self.npages = W.IntSlider(value=128, min=8, max=1024, step=8, description="buffer pages",
                                  style=style, layout=wide)
        self.mix = W.Dropdown(description="task mix", style=style, layout=wide)
        self.seed = W.IntText(value=seed, description="seed", style=style, layout=W.Layout(width="220px"))
        self.design = W.Dropdown(options=list(DESIGNS), value="sdei", description="APF design",
                                 style=style, layout=wide,
                                 tooltip="how 'page not present' reaches the guest in the APF-on run")
        self.run_button = W.Button(description="run APF off and on", button_style="primary",
                                   layout=W.Layout(width="auto"))
        self.headline = W.HTML()
        self.status_view = W.HTML()
        self.chart = W.Output()
        self.run_button.on_click(lambda _: self.run())
        self.scenario.observe(lambda _: self._scenario_changed(), names="value")
        self._scenario_changed()
        self.widget = W.VBox([
            W.HBox([W.VBox([self.scenario, self.mix, self.design, self.seed]),
                    W.VBox([self.store, self.latency, self.limit, self.npages])]),
            W.HBox([self.run_button, self.status_view]), self.headline, self.chart])
        if run:
            self.run()

    def _scenario_changed(self) -> None:
        name = self.scenario.value
        self.mix.options = list(MIXES[name])
        self.mix.value = list(MIXES[name])[0]
        quick = QUICK[name]
        self.npages.value = quick["npages"]
        has_limit = "limit_pages" in quick
        self.limit.disabled = not has_limit
        if has_limit:
            self.limit.value = quick["limit_pages"]
        postcopy = name == "postcopy"
        self.store.disabled = postcopy
        self.latency.description = "network RTT" if postcopy else "latency"
        rules = scenarios.parameters(name)
        self.npages.tooltip = rules["npages"]["rule"]

    def params(self) -> dict:
        """The scenario's parameters as the controls set them (what ``run`` passes to compare)."""
        name = self.scenario.value
        p = {k: v for k, v in QUICK[name].items() if k not in ("npages", "limit_pages")}
        p["npages"] = self.npages.value
        if not self.limit.disabled:
            p["limit_pages"] = self.limit.value
        p.update(MIXES[name][self.mix.value])
        if name == "postcopy":
            if self.latency.value:
                p["rtt_ns"] = self.latency.value
        else:
            p["store"] = self.store.value
            p["latency_ns"] = self.latency.value or None
        return p

    def run(self):
        """Run the scenario with APF off and on; update the chart and headline; return (off, on)."""
        name, seed, p = self.scenario.value, self.seed.value, self.params()
        design = self.design.value
        self.run_button.disabled = True
        self.status_view.value = "<i>running…</i>"
        try:
            off, on = scenarios.compare(name, seed=seed, delivery=design, **p)
        except ApflabError as e:
            self.status = f"error: {e}"
            self.status_view.value = f"<span style='color:#C0392B'>{html.escape(self.status)}</span>"
            return None
        finally:
            self.run_button.disabled = False
        self.last = (off, on)
        self.status = (f"{name}, seed {seed}, design {design}: "
                       + ", ".join(f"{k}={v}" for k, v in p.items()))
        self.status_view.value = f"<small>{html.escape(self.status)}</small>"
        self.headline.value = _headline(name, off, on)
        self.figure = plots.breakdown_bar({"APF off": off, f"APF on ({design})": on},
                                          title=f"{name}: where the vCPU's time went")
        self.chart.outputs = (figure_output(self.figure),)
        return self.last

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


def figure_output(fig) -> dict:
    """A display_data output for an ``Output`` widget: plotly's JSON mimetype (drawn by the
    jupyterlab-plotly renderer shipped with plotly), no plotly.js embedded."""
    spec = json.loads(fig.to_json())
    spec.setdefault("config", {"displaylogo": False})
    return {"output_type": "display_data", "metadata": {},
            "data": {"application/vnd.plotly.v1+json": spec,
                     "text/plain": f"<plotly figure: {fig.layout.title.text or 'untitled'}>"}}


def headline(name: str, off, on) -> dict:
    """The numbers the dashboard prints, as plain values."""
    def ratio(a, b):
        return b / a if a else None
    return {
        "measure": MEASURE[name],
        "elapsed_ns": (off.elapsed_ns, on.elapsed_ns), "time_ratio": ratio(off.elapsed_ns, on.elapsed_ns),
        "stall_ns": (off.stall_ns, on.stall_ns),
        "work_total": (off.work["total"], on.work["total"]),
        "work_ratio": ratio(off.work["total"], on.work["total"]),
        "faults": (off.faults, on.faults), "apf_not_present": on.apf_not_present,
        "fallbacks": on.fallbacks,
    }


def _headline(name: str, off, on) -> str:
    h = headline(name, off, on)

    def pct(r):
        return "n/a" if r is None else f"{r - 1:+.1%}"
    key = ("time to finish", pct(h["time_ratio"])) if h["measure"] == "time" else \
        ("work done", pct(h["work_ratio"]))
    fb = ", ".join(f"{k}={v}" for k, v in sorted(h["fallbacks"].items())) or "none"
    return (f"<div style='font-size:15px'><b>APF on vs off — {key[0]}: {key[1]}</b></div>"
            "<table style='font-size:13px'><tr><th></th><th>APF off</th><th>APF on</th></tr>"
            f"<tr><td>elapsed</td><td>{off.elapsed_ns / 1e6:.3f} ms</td><td>{on.elapsed_ns / 1e6:.3f} ms</td></tr>"
            f"<tr><td>stalled</td><td>{off.stall_ns / 1e6:.3f} ms</td><td>{on.stall_ns / 1e6:.3f} ms</td></tr>"
            f"<tr><td>work (total)</td><td>{off.work['total']}</td><td>{on.work['total']}</td></tr>"
            f"<tr><td>work (compute)</td><td>{off.work['compute']}</td><td>{on.work['compute']}</td></tr>"
            f"<tr><td>faults needing I/O</td><td>{off.faults}</td><td>{on.faults}</td></tr>"
            f"<tr><td>async (not present)</td><td>{off.apf_not_present}</td><td>{on.apf_not_present}</td></tr>"
            f"</table><small>APF-on fallbacks to a stall: {html.escape(fb)}</small>")
