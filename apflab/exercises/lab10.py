"""Lab 10 exercises: the delivery designs side by side.

- ``FastestDesign``: for a seeded ``syscall_read``, which design finishes first?
- ``FallbackCount``: for a seeded ``syscall_read``, which faults does design Y (irq or halt)
  send down the synchronous path, with which reason, how many?
- ``FallbackPredicate``: the student writes the host's decision, ``can_be_async(design,
  state)``. The grader never restates the rules: it puts a real ``Machine`` in each
  state of a seeded catalogue (hypercalls the guest would make, SDEI dispatch, host-side
  injections) and asks the product's own ``ApfService.fallback_reason``.

Every answer is computed with the machinery the lab uses (the OSTEP ``-c`` mode).
"""

from __future__ import annotations

import random

from ..errors import ParameterError
from . import HINT_ON_REQUEST, CheckResult, Exercise, refuse_in_classroom

DESIGNS = ("sdei", "irq", "abort", "halt")

# ---------------------------------------------------------------------- the scenario exercises


def _draw_syscall_read(rng: random.Random) -> dict:
    """A small syscall_read variant (a run takes a fraction of a second)."""
    return {"npages": rng.choice((16, 24, 32)),
            "kernel_every": rng.choice((1, 2, 3, 4, 8)),
            "send_always": rng.random() < 0.5,
            "calc_thread": rng.random() < 0.75,
            "latency_ns": rng.choice((20_000, 50_000, 100_000)),
            "limit_pages": 16}


def kernel_reads(p: dict) -> int:
    """Pages the task reads through a system call: i % k == k - 1 (pages k-1, 2k-1, ...)."""
    return p["npages"] // p["kernel_every"]


def _describe_syscall_read(p: dict) -> str:
    kernel = ("every page through a system call (kernel mode, IRQs masked)" if p["kernel_every"] == 1
              else f"every {p['kernel_every']}th page through a system call (kernel mode, IRQs "
                   f"masked: {kernel_reads(p)} pages), the others directly")
    beside = "a compute task runs beside it" if p["calc_thread"] else "nothing else runs"
    sa = ("the guest asks for notices in kernel mode too (SEND_ALWAYS)" if p["send_always"]
          else "the guest asks for notices in user mode only (no SEND_ALWAYS)")
    return (f"syscall_read: a task reads a {p['npages']}-page buffer that starts in swap, {kernel}; "
            f"{beside}; {sa}. SSD swap, median read {p['latency_ns'] / 1e3:g} µs, "
            f"{p['limit_pages']} frames for the buffer")


def _scenario(p: dict) -> dict:
    return {k: p[k] for k in ("npages", "kernel_every", "send_always", "calc_thread", "latency_ns",
                              "limit_pages")}


class FastestDesign(Exercise):
    """Which design finishes a seeded syscall_read first?"""
    title = "Which design finishes first?"
    CHOICES = ("sync",) + DESIGNS

    def _draw(self, rng):
        return _draw_syscall_read(rng)

    def scenario_params(self) -> dict:
        return _scenario(self.params)

    def question(self) -> str:
        return (f"[seed {self.seed}] {_describe_syscall_read(self.params)}.\n"
                f"Which design finishes the read first: one of {', '.join(self.CHOICES)}? "
                f"(\"sync\" is APF off; when designs tie exactly, any of them counts.)")

    def results(self) -> dict:
        """The five runs (``compare_designs``), computed once."""
        if getattr(self, "_results", None) is None:
            from ..scenarios import compare_designs
            self._results = compare_designs("syscall_read", seed=self.seed, **self.scenario_params())
        return self._results

    def fastest(self) -> list[str]:
        """Every design with the smallest elapsed time (ties are exact, in virtual ns)."""
        res = self.results()
        best = min(r.elapsed_ns for r in res.values())
        return [d for d in self.CHOICES if res[d].elapsed_ns == best]

    def _solve(self) -> str:
        return self.fastest()[0]

    def check(self, value) -> CheckResult:
        if value not in self.CHOICES:
            return CheckResult(False, f"answer with one of {', '.join(self.CHOICES)}, not {value!r}.")
        res = self.results()
        best = self.fastest()
        if value in best:
            tie = f" (tied with {', '.join(d for d in best if d != value)})" if len(best) > 1 else ""
            return CheckResult(True, f"{value} is right: {res[value].elapsed_ns / 1e6:.3f} ms{tie}.")
        return CheckResult(False, f"{value!r} is not it. {HINT_ON_REQUEST}")

    def hint(self) -> str:
        return ("Ask which faults each design can take asynchronously. The kernel-mode reads run with "
                "IRQs masked: who can notify them, and can the guest do anything useful with such a "
                "notice? halt needs no guest support, so it also covers faults the paravirtual designs "
                "refuse. Without a compute task, what would an async fault give the time to? Among the "
                "paravirtual designs, count the exits and hypercalls each async fault costs.")


def _fallback_dict(value):
    """A student's {reason: count} without zero entries, or None if it is not one."""
    if not isinstance(value, dict):
        return None
    if not all(isinstance(k, str) and type(v) is int and v >= 0 for k, v in value.items()):
        return None
    return {k: v for k, v in value.items() if v}


class FallbackCount(Exercise):
    """Which fallbacks, and how many of each, does design Y have on a seeded syscall_read?"""
    title = "Count the fallbacks"
    ASKED = ("irq", "halt")    # the designs with a reason of their own that sdei and abort lack

    def _draw(self, rng):
        p = _draw_syscall_read(rng)
        p["design"] = rng.choice(self.ASKED)
        return p

    def scenario_params(self) -> dict:
        return _scenario(self.params)

    def question(self) -> str:
        p = self.params
        return (f"[seed {self.seed}] {_describe_syscall_read(p)}.\n"
                f"With the {p['design']!r} design, which faults fall back to the synchronous path, "
                f"and with which reason? Answer a dict {{reason: count}}, e.g. {{'kernel_mode': 5}} "
                f"({{}} if none do).")

    def result(self):
        from ..scenarios import run_scenario
        return run_scenario("syscall_read", apf=True, delivery=self.params["design"], seed=self.seed,
                            **self.scenario_params())

    def _solve(self) -> dict:
        return {k: v for k, v in sorted(self.result().fallbacks.items()) if v}

    def check(self, value) -> CheckResult:
        got = _fallback_dict(value)
        if got is None:
            return CheckResult(False, f"give a dict of reason -> count (ints), e.g. {{'kernel_mode': 5}}, "
                                      f"not {value!r}.")
        expected = self._expected()
        if got == expected:
            return CheckResult(True, f"{got} is right.")
        wrong = sorted(set(got) ^ set(expected))
        if wrong:
            return CheckResult(False, f"{got} is not it: the reasons differ ({', '.join(wrong)}). {HINT_ON_REQUEST}")
        return CheckResult(False, f"{got} is not it: right reasons, wrong counts. {HINT_ON_REQUEST}")

    def hint(self) -> str:
        return ("Count the reads the kernel does (pages k-1, 2k-1, ...: npages // kernel_every) and ask, for this "
                "design and this SEND_ALWAYS setting, which of the host's checks stops each of them "
                "first: apf_disabled, kernel_mode, then the design's own (irq_masked for irq and halt; "
                "none for abort), then repeated_fault and slot_busy. A notice the guest cannot act on in "
                "the kernel is retried: what does the host see then, and what is left in the shared slot? "
                "halt has no guest side, so it never says kernel_mode.")


# ---------------------------------------------------------------------- the fallback predicate

# The state a student's ``can_be_async(design, state)`` receives, with what each key means.
STATE_KEYS = {
    "host_offers_apf": "the host offers APF at all (KVM's feature bit; the lab's 'APF off' clears it)",
    "apf_enabled": "the guest enabled APF with ASYNC_PF ENABLE (never for halt: it has no guest side)",
    "send_always": "the guest enabled it with SEND_ALWAYS: notices in kernel mode too",
    "el": "the exception level of the faulting access: 0 (user) or 1 (kernel)",
    "pstate_i": "PSTATE.I is set at the fault: IRQs masked",
    "sdei_handler_running": "an SDEI handler is running on the vCPU",
    "sdei_event_pending": "the 'page not present' SDEI event was raised and still waits for dispatch",
    "pe_masked": "the PE is masked for SDEI (SDEI_PE_MASK)",
    "event_enabled": "the guest's 'page not present' SDEI event is registered and enabled",
    "page_inflight": "a page-in for the faulting page is already running",
    "slot_busy": "the shared block still holds a notice the guest has not consumed (reason != 0)",
    "outstanding": "async page faults outstanding (their page-in running or page ready not acked), 0-64",
}

CLEAR_STATE = {"host_offers_apf": True, "apf_enabled": True, "send_always": False, "el": 0,
               "pstate_i": False, "sdei_handler_running": False, "sdei_event_pending": False,
               "pe_masked": False, "event_enabled": True, "page_inflight": False, "slot_busy": False,
               "outstanding": 0}

# Words for a case: the facts that differ from ``CLEAR_STATE`` (plus the EL, always said).
_WORDS = {
    "host_offers_apf": {False: "the host does not offer APF"},
    "apf_enabled": {False: "APF not enabled by the guest"},
    "send_always": {True: "SEND_ALWAYS"},
    "pstate_i": {True: "IRQs masked"},
    "sdei_handler_running": {True: "an SDEI handler running"},
    "sdei_event_pending": {True: "the SDEI event still pending"},
    "pe_masked": {True: "the PE masked for SDEI"},
    "event_enabled": {False: "the SDEI event disabled"},
    "page_inflight": {True: "the page's page-in already running"},
    "slot_busy": {True: "the shared slot still busy"},
}


def describe_case(design: str, state: dict) -> str:
    """'design irq, kernel mode with SEND_ALWAYS and IRQs masked' for one case."""
    moot = ("apf_enabled", "send_always", "slot_busy") if design == "halt" else ()   # no guest side
    facts = [w[state[k]] for k, w in _WORDS.items() if state[k] in w and k not in moot]
    if state["outstanding"]:
        n = state["outstanding"]
        facts.append(f"{n} async fault{'s' if n != 1 else ''} outstanding")
    where = "kernel mode" if state["el"] else "user mode"
    if not facts:
        return f"design {design}, {where}, nothing else in the way"
    tail = facts[0] if len(facts) == 1 else ", ".join(facts[:-1]) + " and " + facts[-1]
    return f"design {design}, {where} with {tail}"


def _check_state(design: str, state: dict) -> dict:
    if design not in DESIGNS:
        raise ParameterError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    missing = set(CLEAR_STATE) - set(state)
    unknown = set(state) - set(CLEAR_STATE)
    if missing or unknown:
        raise ParameterError(f"state keys: missing {sorted(missing)}, unknown {sorted(unknown)}")
    s = dict(state)
    if s["el"] not in (0, 1) or not (isinstance(s["outstanding"], int) and 0 <= s["outstanding"] <= 64):
        raise ParameterError(f"el must be 0 or 1 and outstanding an int in 0..64: {state}")
    # States a running guest cannot be in (the builder refuses them rather than invent one).
    why = None
    if s["el"] == 0 and (s["pstate_i"] or s["sdei_handler_running"]):
        why = "user mode runs with IRQs unmasked and outside any SDEI handler"
    elif s["sdei_event_pending"] and not (s["pe_masked"] or s["sdei_handler_running"]
                                          or not s["event_enabled"]):
        why = "a pending event that nothing blocks is dispatched before the guest runs again"
    elif design == "halt" and (s["apf_enabled"] or s["send_always"] or s["slot_busy"]):
        why = "halt has no guest side: nothing to enable, no shared slot"
    elif not s["apf_enabled"] and (s["slot_busy"] or (s["outstanding"] and design != "halt")):
        why = "without APF enabled there is no shared slot and nothing outstanding"
    if why:
        raise ParameterError(f"inconsistent state for design {design}: {why}")
    return s


def machine_in_state(design: str, state: dict):
    """A ``Machine`` put in ``state`` the way a guest and host would get there.

    Returns ``(machine, gpn)``: the faulting page's number. The guest-side state is made by
    the calls a guest makes (SDEI EVENT_REGISTER/ENABLE/DISABLE, PE_MASK/UNMASK, ASYNC_PF
    ENABLE) and the host's own entry points (``page_not_present`` for outstanding faults,
    ``raise_event`` for SDEI, ``set_allowed``); nothing restates the fallback rules.
    """
    from ..apf import (APF_DELIVERY_SHIFT, APF_ENABLED, APF_SEND_ALWAYS, ASYNC_PF_ENABLE,
                       OFF_REASON, PAGE_NOT_PRESENT, VENDOR_HYP_KVM_ASYNC_PF)
    from ..arch import MODE_EL1H, PSTATE_I
    from ..host import Fault
    from ..machine import RAM_BASE, Machine
    from ..sdei import (EVENT_ASYNC_PF, SDEI_EVENT_COMPLETE, SDEI_EVENT_DISABLE, SDEI_EVENT_ENABLE,
                        SDEI_EVENT_REGISTER, SDEI_PE_MASK, SDEI_PE_UNMASK)
    from ..smccc import Call

    s = _check_state(design, state)
    m = Machine(seed=0, ram_size=1 << 20, delivery=design)
    vcpu, apf, sdei = m.vcpu, m.apf, m.sdei
    block, entry, fault_pc = RAM_BASE + 0x1000, RAM_BASE + 0x2000, RAM_BASE + 0x3000
    vcpu.set_reg("vbar_el1", RAM_BASE + 0x800)
    buf = [RAM_BASE + 0x10000 + i * 4096 for i in range(66)]   # 64 outstanding + the faulting page
    for a in buf:
        m.write_u64(a, a)
        m.evict(a)
    gpn = m.stage2.gpn_of(buf[-1])

    def hvc(service, fid, *args) -> int:
        args = (tuple(args) + (0,) * 5)[:5]
        return service.handle(vcpu, Call(fid, args, fault_pc))

    def must(result, what):
        if result != 0:
            raise ParameterError(f"setting up {describe_case(design, s)}: {what} returned {result!r}")

    # The guest's boot: register and enable the SDEI event, unmask the PE, enable APF.
    must(hvc(sdei, SDEI_EVENT_REGISTER, EVENT_ASYNC_PF, entry, 0, 0, 0), "SDEI EVENT_REGISTER")
    must(hvc(sdei, SDEI_EVENT_ENABLE, EVENT_ASYNC_PF), "SDEI EVENT_ENABLE")
    must(hvc(sdei, SDEI_PE_UNMASK), "SDEI PE_UNMASK")
    if s["apf_enabled"]:
        control = block | APF_ENABLED | (APF_SEND_ALWAYS if s["send_always"] else 0)
        control |= apf.delivery.guest_flag << APF_DELIVERY_SHIFT
        must(hvc(apf, VENDOR_HYP_KVM_ASYNC_PF, ASYNC_PF_ENABLE, control & 0xFFFFFFFF, control >> 32),
             "ASYNC_PF ENABLE")

    # Outstanding async faults: real user-mode faults on other pages, each notice consumed.
    for a in buf[:s["outstanding"]]:
        vcpu.set_pstate(0)                                     # EL0t, IRQs unmasked
        f = Fault(m.stage2.gpn_of(a), a, "read", fault_pc, 0)
        reason = apf.page_not_present(vcpu, f)
        if reason is not None:
            raise ParameterError(f"setting up {s['outstanding']} outstanding faults: fell back ({reason})")
        if sdei.handler_running():
            hvc(sdei, SDEI_EVENT_COMPLETE, 0)                  # the handler returns
        if apf.delivery.uses_block:
            apf.write_block(OFF_REASON, 0)                     # the guest consumed the notice

    # SDEI state, in the order a guest gets there.
    if s["sdei_handler_running"]:
        if not sdei.raise_event(EVENT_ASYNC_PF):
            raise ParameterError("setting up a running SDEI handler: the event was not dispatched")
    if not s["event_enabled"]:
        must(hvc(sdei, SDEI_EVENT_DISABLE, EVENT_ASYNC_PF), "SDEI EVENT_DISABLE")
    if s["pe_masked"]:
        hvc(sdei, SDEI_PE_MASK)
    if s["sdei_event_pending"]:
        if sdei.raise_event(EVENT_ASYNC_PF):
            raise ParameterError("setting up a pending SDEI event: it was dispatched at once")

    if s["page_inflight"]:
        # Its read already runs (started host-side here; in a guest, by an earlier async fault).
        m.stage2.start_page_in(gpn, m.now_ns, m.host.rng)
    if s["slot_busy"]:
        apf.write_block(OFF_REASON, PAGE_NOT_PRESENT)          # the guest has not consumed it yet
    if not s["host_offers_apf"]:
        apf.set_allowed(False)
    vcpu.set_pstate((MODE_EL1H if s["el"] else 0) | (PSTATE_I if s["pstate_i"] else 0))
    return m, gpn


def host_decision(design: str, state: dict) -> str | None:
    """What the product's host decides for ``state``: a fallback reason, or None (async)."""
    m, gpn = machine_in_state(design, state)
    return m.apf.fallback_reason(m.vcpu, gpn, state["el"])


# Facts that can block an async fault, as (key, value) changes from CLEAR_STATE.
_BLOCKERS = (("host_offers_apf", False), ("apf_enabled", False), ("el", 1), ("pstate_i", True),
             ("sdei_handler_running", True), ("sdei_event_pending", True), ("pe_masked", True),
             ("event_enabled", False), ("page_inflight", True), ("slot_busy", True),
             ("outstanding", 64))


def _random_state(design: str, rng: random.Random, blockers=None) -> dict:
    """A consistent state: the clear one with ``blockers`` (default: one to three drawn)."""
    s = dict(CLEAR_STATE)
    s["send_always"] = rng.random() < 0.5
    s["outstanding"] = rng.choice((0, 0, 1, 5, 63))
    if blockers is None:
        blockers = rng.sample(_BLOCKERS, rng.randint(1, 3))
    for key, value in blockers:
        s[key] = value
    if s["pstate_i"] or s["sdei_handler_running"]:
        s["el"] = 1
    if s["sdei_event_pending"] and not (s["pe_masked"] or s["sdei_handler_running"]
                                        or not s["event_enabled"]):
        blocker = rng.choice(("pe_masked", "event_enabled", "sdei_handler_running"))
        s[blocker] = blocker != "event_enabled"
        if blocker == "sdei_handler_running":
            s["el"] = 1
    if design == "halt":
        s.update(apf_enabled=False, send_always=False, slot_busy=False)
    elif not s["apf_enabled"]:
        s.update(slot_busy=False, outstanding=0)
    return s


# Cases every catalogue has: the clear state, and the lab's question (a system call: kernel
# mode, IRQs masked, with and without SEND_ALWAYS) for each design.
_LANDMARKS = ({}, {"el": 1, "pstate_i": True}, {"el": 1, "pstate_i": True, "send_always": True},
              {"el": 1})


def catalogue(seed: int, per_reason: int = 2, tries: int = 40) -> list[tuple[str, dict, str | None]]:
    """Seeded cases ``(design, state, host's answer)``: the landmark cases, each blocker on its
    own (so every reason a design has appears), then up to ``per_reason`` random ones with
    several blockers for each answer a design gives. Answers: ``host_decision``."""
    rng = random.Random(seed)
    cases = []
    for design in DESIGNS:
        states = []
        for change in _LANDMARKS:
            s = {**CLEAR_STATE, **change}
            if design == "halt":
                s.update(apf_enabled=False, send_always=False)
            states.append(s)
        for b in _BLOCKERS:      # a kernel-mode blocker alone: with SEND_ALWAYS, so that it shows
            kernel = b[0] in ("pstate_i", "sdei_handler_running")
            states.append(_random_state(design, rng, [b] + ([("send_always", True)] if kernel else [])))
        for s in states:
            if not any(s == c[1] and design == c[0] for c in cases):
                cases.append((design, s, host_decision(design, s)))
        seen: dict = {}
        for _ in range(tries):
            s = _random_state(design, rng)
            if any(s == c[1] and design == c[0] for c in cases):
                continue
            answer = host_decision(design, s)
            if seen.get(answer, 0) < per_reason:
                seen[answer] = seen.get(answer, 0) + 1
                cases.append((design, s, answer))
    return cases


def _said(v) -> str:
    return "None" if v is None else repr(v)


def grade_predicate(fn, cases) -> CheckResult:
    """Run ``fn(design, state)`` on every case; say which one is wrong, in words."""
    from ..apf import FALLBACKS
    if not callable(fn):
        return CheckResult(False, f"pass your function itself (can_be_async), not {fn!r}.")
    wrong = []
    for design, state, expected in cases:
        try:
            got = fn(design, dict(state))
        except NotImplementedError:
            return CheckResult(False, "can_be_async is still the skeleton (it raises NotImplementedError). "
                                      "What is missing: the host's checks, in KVM's order: is APF offered "
                                      "and enabled, is the fault in user mode (unless SEND_ALWAYS), can "
                                      "this design's notice get through now, is the page already on its "
                                      "way, is the shared slot free, is there room in the 64-slot queue.")
        except Exception as e:       # a student's bug must not crash the grader
            return CheckResult(False, f"{describe_case(design, state)}: your function raised "
                                      f"{type(e).__name__}: {e}")
        if got is not None and got not in FALLBACKS:
            return CheckResult(False, f"{describe_case(design, state)}: you returned {got!r}; return None "
                                      f"(async is possible) or one of the reasons "
                                      f"{', '.join(r for r in FALLBACKS if r != 'prefault')}.")
        if got != expected:
            wrong.append((design, state, got, expected))
    if not wrong:
        return CheckResult(True, f"all {len(cases)} cases agree with the host.")
    if all(got is None for _d, _s, got, _e in wrong) and len(wrong) == sum(e is not None for *_, e in cases):
        return CheckResult(False, f"can_be_async says None (asynchronous) for every case: nothing is "
                                  f"checked yet ({len(wrong)} of {len(cases)} cases fall back). What is "
                                  f"missing: the host's checks, in KVM's order (see ex.hint()).")
    design, state, got, expected = wrong[0]
    more = f" ({len(wrong) - 1} more case(s) wrong)" if len(wrong) > 1 else ""
    fb = "can deliver it asynchronously (None)" if expected is None else f"falls back with {expected}"
    return CheckResult(False, f"{describe_case(design, state)}: you said {_said(got)}, the host {fb}.{more}")


class FallbackPredicate(Exercise):
    """Build it: the host's decision whether a fault may be asynchronous."""
    title = "The host's fallback predicate"

    def _draw(self, rng):
        return {"cases_seed": rng.randrange(1 << 30)}

    def question(self) -> str:
        keys = "\n".join(f"  {k}: {v}" for k, v in STATE_KEYS.items())
        return (f"[seed {self.seed}] Write can_be_async(design, state) -> str | None: the reason the "
                f"host falls back to a synchronous fault, or None when the fault can be asynchronous. "
                f"design is one of {', '.join(DESIGNS)}; state is a dict:\n{keys}")

    def cases(self):
        """The catalogue with the host's answers (self-study); refuses in classroom mode."""
        refuse_in_classroom("ex3.cases()")
        return [(d, dict(s), a) for d, s, a in self._cases()]

    def _cases(self):
        if self._answer is None:
            self._answer = catalogue(self.params["cases_seed"])
        return self._answer

    def _solve(self):
        return self._cases()

    def check(self, fn) -> CheckResult:
        return grade_predicate(fn, self._cases())

    def hint(self) -> str:
        return ("Order matters: the first check that fails names the reason. The core's checks come "
                "first (offered and enabled, user mode unless SEND_ALWAYS), then the design's own "
                "(apflab.delivery.describe(design)['reasons'] lists them; for SDEI think of what blocks a "
                "dispatch), then the page, the slot and the queue. halt needs no guest, so neither "
                "'enabled' nor 'kernel mode' applies to it; abort has no reason of its own.")
