"""Exercises done with the widgets: the machine ``Explorer`` (lab 06) and the ``StallDashboard``
(lab 07). Each names the widget settings and clicks to make, and ``answer()`` replays exactly
those on a fresh widget (the same seed gives the same machine), so a value read off the
widget checks, and a guess does not.
"""

from __future__ import annotations

from . import HINT_ON_REQUEST, CheckResult, Exercise

OUTCOMES = ("async", "pe_masked", "apf_disabled")


def _int(v):
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            return None
    return v if isinstance(v, int) and not isinstance(v, bool) else None


class FirstFault(Exercise):
    """Explorer: after warming the buffer and evicting two pages, which page faults first, at
    which instruction, and what does the host do with the fault?"""
    title = "Find the fault (Explorer)"
    NPAGES = 8

    def _draw(self, rng):
        pages = sorted(rng.sample(range(self.NPAGES), 2))
        return {"evict": pages, "steps": rng.choice((100, 300, 700, 1500)),
                "outcome": rng.choice(OUTCOMES)}

    def explorer_params(self) -> dict:
        return {"npages": self.NPAGES, "limit_pages": 32}

    def actions(self) -> list[str]:
        """What to do in the explorer, as method calls (each is also a button)."""
        p = self.params
        acts = ['run_until("ready")'] * self.NPAGES + [f"step({p['steps']})"]
        acts += [f"evict({i})" for i in p["evict"]]
        if p["outcome"] == "pe_masked":
            acts.append("mask_pe(True)")
        elif p["outcome"] == "apf_disabled":
            acts.append("set_apf(False)")
        return acts + ['run_until("fault")']

    def question(self) -> str:
        steps = "\n".join(f"  explorer.{a}" for a in self.actions())
        return (f"[seed {self.seed}] Make explorer = Explorer(seed={self.seed}, npages={self.NPAGES}, "
                f"limit_pages=32) and do (with the buttons, or these calls):\n{steps}\n"
                f"The first 8 page-readies bring the whole buffer in; then two pages go back to "
                f"swap. Which buffer page (index 0-{self.NPAGES - 1}) faults first, at which "
                f"instruction (its pc), and what does the host do: \"async\" (page not present "
                f"sent) or the fallback reason? Answer (page, pc, outcome).")

    def replay(self):
        from ..widgets import Explorer
        ex = Explorer(seed=self.seed, **self.explorer_params())
        for a in self.actions():
            eval(f"ex.{a}", {"ex": ex})         # our own fixed call strings, not user input
        return ex

    def _solve(self):
        ex = self.replay()
        rec = ex.stopped_at
        records = ex.machine.trace.records
        page = (rec.get("ipa") - ex.setup.buffer.start) // 4096
        # the host decides in the same exit: the records after the fault say what it did
        outcome = None
        for r in records[records.index(rec):]:
            if r.kind == "apf_not_present":
                outcome = "async"
                break
            if r.kind == "apf_fallback":
                outcome = r.get("reason")
                break
        return (page, rec.get("pc"), outcome)

    def check(self, value) -> CheckResult:
        if not (isinstance(value, (list, tuple)) and len(value) == 3):
            return CheckResult(False, f"answer with (page, pc, outcome), not {value!r}.")
        page, pc, outcome = _int(value[0]), _int(value[1]), value[2]
        want = self._expected()
        wrong = []
        if page != want[0]:
            wrong.append(f"page {value[0]!r} is not the first to fault")
        if pc != want[1]:
            wrong.append(f"pc {value[1]!r} is not the faulting instruction")
        if outcome != want[2]:
            wrong.append(f"the host does not answer {outcome!r}")
        if wrong:
            return CheckResult(False, "; ".join(wrong) + ". " + HINT_ON_REQUEST)
        return CheckResult(True, f"page {page} faults first, at {pc:#x}; the host: {outcome}.")

    def hint(self) -> str:
        return ("The walker goes through its buffer in order and starts again at page 0: where is it "
                "when you evict? The log's stage2_fault line has gpn and pc; the line after it says "
                "apf_not_present or apf_fallback with its reason.")


class FirstPageReady(Exercise):
    """Explorer: run to the first page ready; its token and the virtual time it arrived."""
    title = "The first page ready (Explorer)"

    def _draw(self, rng):
        return {"npages": rng.choice((8, 16, 24)), "limit_pages": rng.choice((4, 8, 16)),
                "calc_thread": rng.random() < 0.5, "faults_first": rng.randrange(1, 4)}

    def explorer_params(self) -> dict:
        p = self.params
        return {"npages": p["npages"], "limit_pages": p["limit_pages"], "calc_thread": p["calc_thread"]}

    def question(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self.explorer_params().items())
        return (f"[seed {self.seed}] Make explorer = Explorer(seed={self.seed}, {ps}). Press "
                f"\"ready\" {self.params['faults_first']} time(s) (explorer.run_until(\"ready\")). "
                f"What token does the last of those page-ready notices carry, and at which virtual "
                f"time (ns) was it sent? Answer (token, t_ns).")

    def _solve(self):
        from ..widgets import Explorer
        ex = Explorer(seed=self.seed, **self.explorer_params())
        for _ in range(self.params["faults_first"]):
            ex.run_until("ready")
        rec = ex.stopped_at
        return (rec.get("token"), rec.t_ns)

    def check(self, value) -> CheckResult:
        if not (isinstance(value, (list, tuple)) and len(value) == 2):
            return CheckResult(False, f"answer with (token, t_ns), not {value!r}.")
        token, t = _int(value[0]), _int(value[1])
        want = self._expected()
        if token == want[0] and t == want[1]:
            return CheckResult(True, f"token {token:#x} at {t:,} ns is right.")
        part = "the token" if token != want[0] else "the time"
        return CheckResult(False, f"{part} is not it. " + HINT_ON_REQUEST)

    def hint(self) -> str:
        return ("The status bar says when the explorer stopped (t=... ns); the log's apf_page_ready "
                "line has the token. Tokens are (id << 12) | vcpu_id, id counting async faults.")


class DashboardSaving(Exercise):
    """StallDashboard: how many ms sooner does the walk finish with APF on, for a seeded configuration?"""
    title = "Read the dashboard"
    TOLERANCE = 0.02

    def _draw(self, rng):
        from ..widgets.dashboard import LATENCIES
        lat = rng.choice([v for _, v in LATENCIES if 0 < v <= 150_000])
        return {"npages": rng.choice((64, 96, 128)), "limit": rng.choice((16, 32, 48)),
                "latency_ns": lat, "mix": rng.choice(("memtouch + compute", "memtouch only")),
                "dashboard_seed": rng.randrange(100)}

    def settings(self) -> dict:
        p = self.params
        return {"scenario": "memtouch", "mix": p["mix"], "seed": p["dashboard_seed"],
                "latency": p["latency_ns"], "limit": p["limit"], "npages": p["npages"]}

    def question(self) -> str:
        s = self.settings()
        return (f"[seed {self.seed}] On a StallDashboard() set: scenario memtouch, task mix "
                f"\"{s['mix']}\", seed {s['seed']}, swap store ssd, latency {s['latency'] // 1000} µs, "
                f"memory limit {s['limit']}, buffer pages {s['npages']}; press \"run APF off and "
                f"on\". How many milliseconds sooner does the walk finish with APF on than with it off "
                f"(negative if later)? (within {self.TOLERANCE:.0%}, or 0.01 ms)")

    def dashboard(self):
        """A dashboard set as the question says, not yet run."""
        from ..widgets import StallDashboard
        d = StallDashboard()
        s = self.settings()
        d.scenario.value = s["scenario"]
        d.mix.value = s["mix"]
        d.seed.value = s["seed"]
        d.store.value = "ssd"
        d.latency.value = s["latency"]
        d.limit.value = s["limit"]
        d.npages.value = s["npages"]
        return d

    def _solve(self) -> float:
        d = self.dashboard()
        off, on = d.run()
        return round((off.elapsed_ns - on.elapsed_ns) / 1e6, 4)

    def check(self, value) -> CheckResult:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return CheckResult(False, f"give a number of milliseconds, not {value!r}.")
        want = self._expected()
        if abs(value - want) <= max(self.TOLERANCE * abs(want), 0.01):
            return CheckResult(True, f"{value:g} ms is right (measured {want:g} ms).")
        return CheckResult(False, f"{value:g} ms is not it. " + HINT_ON_REQUEST)

    def hint(self) -> str:
        return ("The headline shows the time to finish of each run. APF on turns the stall into "
                "something else (another task's run time, or idle time): it is not all saved. "
                "dashboard.last holds the (off, on) results: their elapsed_ns fields are in ns.")
