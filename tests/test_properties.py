"""Property-based robustness tests: random inputs, fixed invariants.

Four families, each a bounded, reproducible hypothesis run
(``derandomize=True, database=None``: the same examples on every machine and
every run; the counts are the ``*_EXAMPLES`` constants below and are quoted
in docs/ROBUSTNESS.md):

1. **Random SDEI call sequences from guest code.** A random script of SDEI
   calls (REGISTER, ENABLE, DISABLE, UNREGISTER, STATUS, SIGNAL, PE_MASK,
   PE_UNMASK, CONTEXT, COMPLETE, COMPLETE_AND_RESUME, GET_INFO, FEATURES,
   VERSION, the resets, unknown IDs, bad event numbers), host-raised events,
   and handlers that run random sub-sequences of their own, becomes AArch64
   code run on the machine. Every value the guest logs must equal what the
   independent reference model ``sdei_ref.py`` (written from docs/REFERENCES.md,
   not from ``apflab/sdei.py``) predicts. Whatever docs/REFERENCES.md leaves open
   (``sdei_ref.Unspecified``) is dropped while the script is drawn. A second
   test proves the generator reaches every reachable (state, action) pair.

2. **Random fault schedules.** Seeds, memory limits, device latencies and
   kinds, eviction policies, tick rates, task mixes (1-3 memtouch tasks plus
   compute / yield / sleeper tasks), APF on and off, run through the
   mini-kernel and through ``run_scenario``. Invariants:

   - every parked task is woken (per task ``parked == wakeups``) and every
     measured task exits; the kernel's APF table ends empty;
   - no token is outstanding twice (a token in ``apf_not_present`` is not
     issued again before its ``apf_ack``) and every one issued is acknowledged;
   - page contents are intact after every eviction and return (memtouch's own
     mismatch count is 0; the SHA-256 of each page at page-in equals the one
     it had at page-out; every buffer page ends with exactly the expected bytes);
   - the time breakdown sums to the elapsed time;
   - the same seed and parameters give the same trace digest.

3. **Stage2 on its own**: random writes, evictions, page-ins and memory limits
   from the host side, against a plain dict of page bytes.

4. **Any hypercall, any arguments**: each is answered in x0, or the guest's
   own calls sent it somewhere bad and a GuestError names the PC; never
   another exception.
"""

from __future__ import annotations

import hashlib
import struct

from hypothesis import HealthCheck, given, settings, strategies as st

import sdei_ref as R
from sdei_ref import Call, Eret, HostRaise, Label, Mark, Once, Rec, Script, Set, UNKNOWN

from apflab import Machine, guest
from apflab.apf import TOKEN_WAKE_ALL
from apflab.backing import make_store
from apflab.scenarios import run_scenario
from apflab.stage2 import PageState
from guestlib import mov64 as _mov64

# How many random cases each property runs (quoted in docs/ROBUSTNESS.md).
SDEI_EXAMPLES = 200          # random SDEI scripts, "lab" and "kvm-v7" profiles drawn at random
KERNEL_EXAMPLES = 60         # random fault schedules through the mini-kernel
SCENARIO_EXAMPLES = 24       # random run_scenario parameter sets, each run twice (determinism)
STAGE2_EXAMPLES = 200        # random host-side page-movement sequences on Stage2
FUZZ_EXAMPLES = 200          # random hypercall sequences with random 64-bit arguments

MASK64 = (1 << 64) - 1
PAGE = guest.PAGE_SIZE


def _settings(n: int, **kw):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], **kw)


def s64(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


# ====================================================================== 1. SDEI sequences

H = {0: Label("h0"), 1: Label("h1"), 2: Label("h2")}
T0 = Label("t0")
ARG = {0: 0xA0A0_0000_0000_00E0, 1: 0xA1A1_0000_0000_00E1, 2: 0xA2A2_0000_0000_00E2}
LOG_SLOTS = 1024
LOG_LIMIT = 600              # scripts whose expected log is longer are cut while drawing
BAD_EVENTS = (3, 999, 1000, 1 << 31, 1 << 32, 1 << 63, MASK64)
# Event numbers as the guest passes them: mostly the platform's, now and then a bad one.
event_numbers = st.one_of(st.sampled_from((0, 0, 0, 1, 1, 2)), st.sampled_from(BAD_EVENTS))


def _register(ev, flags=0):
    return Call(R.EVENT_REGISTER, ev, H.get(ev, H[0]), ARG.get(ev, 0x1234), flags, 0)


def _op(kind: str, a: int, b: int):
    """One script operation from a drawn kind and two drawn integers."""
    if kind == "register":
        return _register(a, b)
    simple = {"enable": R.EVENT_ENABLE, "disable": R.EVENT_DISABLE,
              "unregister": R.EVENT_UNREGISTER, "status": R.EVENT_STATUS}
    if kind in simple:
        return Call(simple[kind], a)
    if kind == "context":
        return Call(R.EVENT_CONTEXT, a)
    if kind == "complete":
        return Call(R.EVENT_COMPLETE, a & 1)
    if kind == "complete_and_resume":
        return Call(R.EVENT_COMPLETE_AND_RESUME, T0)
    if kind == "signal":
        return Call(R.EVENT_SIGNAL, a, 0)
    if kind == "mask":
        return Call(R.PE_MASK)
    if kind == "unmask":
        return Call(R.PE_UNMASK)
    if kind == "version":
        return Call(R.VERSION)
    if kind == "features":
        return Call(R.FEATURES, a)
    if kind == "get_info":
        return Call(R.EVENT_GET_INFO, a, b)
    if kind == "private_reset":
        return Call(R.PRIVATE_RESET)
    if kind == "shared_reset":
        return Call(R.SHARED_RESET)
    if kind == "unknown":
        return Call(a)
    if kind == "mark":
        return Mark(0x4D00 + (a & 0xFF))
    if kind == "set":
        return Set(a, b)
    if kind == "rec":
        return Rec(a)
    if kind == "raise":
        return HostRaise(a)
    raise AssertionError(kind)


# (kind, strategy of its first and second integer)
_ANY = st.just(0)
OP_KINDS = {
    "register": (event_numbers, st.sampled_from((0, 0, 0, 0, 1 << 2, 1 << 63))),
    "enable": (event_numbers, _ANY),
    "disable": (event_numbers, _ANY),
    "unregister": (event_numbers, _ANY),
    "status": (event_numbers, _ANY),
    "context": (st.one_of(st.integers(0, 17), st.sampled_from((18, 1 << 32, 1 << 63))), _ANY),
    "complete": (st.integers(0, 1), _ANY),
    "complete_and_resume": (_ANY, _ANY),
    "signal": (st.sampled_from((0, 0, 0, 0, 1, 2, 1 << 63)), _ANY),
    "mask": (_ANY, _ANY),
    "unmask": (_ANY, _ANY),
    "version": (_ANY, _ANY),
    "features": (st.sampled_from((0, 1, 2, 1 << 63)), _ANY),
    "get_info": (st.sampled_from((0, 1, 2, 3, 1 << 63)), st.sampled_from((0, 1, 2, 5, 1 << 63))),
    "private_reset": (_ANY, _ANY),
    "shared_reset": (_ANY, _ANY),
    "unknown": (st.sampled_from((0xC4000033, 0xC400003F, 0x84000020, 0xC7000001)), _ANY),
    "mark": (st.integers(0, 255), _ANY),
    "set": (st.integers(4, 17), st.integers(0, MASK64)),
    "rec": (st.integers(0, 17), _ANY),
    "raise": (st.sampled_from((1, 2, 1, 2, 0)), _ANY),
}
# Main code leans towards the calls that move events through their states.
MAIN_WEIGHTS = ["signal", "raise", "unmask", "enable", "unregister", "disable", "register", "mask"] * 2 + [
    "register"] * 2 + list(OP_KINDS)


# Inside a handler: mostly calls on the handler's own event, which move it through the
# running states 7, 5 and 4 of the table.
HANDLER_WEIGHTS = ["status", "disable", "enable", "unregister", "context", "status", "register",
                   "signal", "raise", "complete", "complete_and_resume", "mask", "unmask"] + list(OP_KINDS)
EVENT_KINDS = ("register", "enable", "disable", "unregister", "status")


OWN_KINDS = ("disable", "enable", "unregister", "register", "context", "status")


@st.composite
def handler_body(draw, ev: int):
    """Calls on the handler's own event (each followed by its STATUS), then random extras."""
    body = []
    for kind in draw(st.lists(st.sampled_from(OWN_KINDS), min_size=2, max_size=6)):
        body.append(_op(kind, draw(st.integers(0, 17)) if kind == "context" else ev, 0))
        body.append(Call(R.EVENT_STATUS, ev))
    return body + draw(ops(HANDLER_WEIGHTS, max_size=4, own_event=ev))


def ops(kinds, min_size=0, max_size=8, own_event=None):
    def one(kind):
        first = OP_KINDS[kind][0]
        if own_event is not None and kind in EVENT_KINDS:
            first = st.one_of(st.just(own_event), first)
        return st.tuples(st.just(kind), first, OP_KINDS[kind][1])
    return st.lists(st.sampled_from(kinds).flatmap(one), min_size=min_size, max_size=max_size).map(
        lambda items: [_op(*item) for item in items])


class _Run(R._Run):
    """The reference model's script runner, noting which operation hit an unspecified case."""

    def execute(self, script_ops) -> None:
        for op in script_ops:
            try:
                super().execute([op])
            except R.Unspecified as e:
                if not hasattr(e, "op"):
                    e.op = op            # the innermost operation: a Once's body op, not the Once
                raise


def _model(script: Script, profile: str):
    """The reference model's run: (log, model state); may raise Unspecified or ModelError."""
    run = _Run(script, profile)
    run.execute(script.main)
    return run.log, run.sdei


def _remove(bodies, op) -> bool:
    """Take ``op`` out of whichever handler/target body (or Once inside one) holds it."""
    for body in bodies:
        for i, x in enumerate(body):
            if x is op:
                del body[i]
                return True
            if isinstance(x, Once) and _remove([x.ops], op):
                return True
    return False


@st.composite
def sdei_scripts(draw):
    """(profile, script) where every step has a documented answer in docs/REFERENCES.md.

    Handlers and the COMPLETE_AND_RESUME target get random bodies; the main calls are
    added one at a time and checked against the model: a call that leads somewhere the
    model calls unspecified is dropped, and so is a handler-body call that turns out to be
    unspecified when that handler first runs (the script is repaired, not rejected, so
    hypothesis never has to filter).
    """
    profile = draw(st.sampled_from(("lab", "kvm-v7")))
    handlers = {}
    for ev, label in H.items():
        # Once: a handler's own calls run on its first dispatch only (a handler that
        # re-signals its own event on every run would never stop).
        body = draw(handler_body(ev))
        finish = draw(st.sampled_from(("complete", "complete", "resume")))
        tail = Call(R.EVENT_COMPLETE, 0) if finish == "complete" else Call(R.EVENT_COMPLETE_AND_RESUME, T0)
        handlers[label] = [Mark(0xE0 + ev), Rec(0), Once(body), tail]
    target = [Mark(0x70), Once(draw(ops(list(OP_KINDS), max_size=4))), Eret()]
    bodies = list(handlers.values()) + [target]
    # A set-up that makes dispatches likely (some events registered and enabled, the PE
    # usually unmasked), then the random calls.
    setup = []
    # (Hypothesis leans to 0 and to the first choice: those are the busy ones here.)
    for ev in H:
        if draw(st.integers(0, 3)) < 3:
            setup.append(_register(ev))
            if draw(st.integers(0, 3)) < 3:
                setup.append(Call(R.EVENT_ENABLE, ev))
    if draw(st.integers(0, 4)) < 4:
        setup.append(Call(R.PE_UNMASK))
    candidates = setup + draw(ops(MAIN_WEIGHTS, min_size=3, max_size=20))
    kept: list = []
    for op in candidates:
        while True:
            trial = Script(main=kept + [op], handlers=handlers, targets={T0: target})
            try:
                log, _ = _model(trial, profile)
            except R.Unspecified as e:
                if e.op is not op and _remove(bodies, e.op):
                    continue             # repaired a body: try this main call again
                break
            except (R.ModelError, RecursionError):
                break
            if len(log) <= LOG_LIMIT:
                kept.append(op)
            break
    # Finish with the STATUS of every event: the end state is part of the log.
    kept += [Call(R.EVENT_STATUS, ev) for ev in H]
    return profile, Script(main=kept, handlers=handlers, targets={T0: target})




def _emit(script_ops, out: list[str], onces: list[str]) -> None:
    for op in script_ops:
        if isinstance(op, Call):
            out += _mov64("x0", op.fid)
            for i, a in enumerate(op.args, 1):
                out += [f"adr x{i}, {a}"] if isinstance(a, Label) else _mov64(f"x{i}", a)
            out += ["hvc #0", f"{op.label}:"]
            if op.record:
                out.append("str x0, [x20], #8")
        elif isinstance(op, Mark):
            out += _mov64("x9", op.value) + ["str x9, [x20], #8"]
        elif isinstance(op, Set):
            out += _mov64(f"x{op.reg}", op.value)
        elif isinstance(op, Rec):
            out.append(f"str x{op.reg}, [x20], #8")
        elif isinstance(op, HostRaise):
            out += ["brk #0", f"{op.label}:"]
        elif isinstance(op, Once):
            onces.append(op.label)
            out += [f"adr x9, {op.label}_flag", "ldr x10, [x9]", f"cbnz x10, {op.label}_skip",
                    "mov x10, #1", "str x10, [x9]"]
            _emit(op.ops, out, onces)
            out.append(f"{op.label}_skip:")
        elif isinstance(op, Eret):
            out.append("eret")
        else:
            raise TypeError(op)


def _walk(script_ops):
    for op in script_ops:
        yield op
        if isinstance(op, Once):
            yield from _walk(op.ops)


def build_guest(script: Script) -> str:
    out = ["_start:", "adr x20, results"]
    onces: list[str] = []
    _emit(script.main, out, onces)
    out += ["done:", "brk #0"]
    for label, body in list(script.handlers.items()) + list(script.targets.items()):
        out.append(f"{label}:")
        _emit(body, out, onces)
        out.append("brk #1")          # fell off the end: no vectors, so a GuestFault
    out.append(".balign 8")
    for label in onces:
        out += [f"{label}_flag:", ".quad 0"]
    out += ["results:", f".space {8 * LOG_SLOTS}"]
    return "\n".join(l if l.endswith(":") else f"    {l}" for l in out) + "\n"


def run_sdei_guest(script: Script, profile: str):
    m = Machine(seed=0, profile=profile, ram_size=1 << 20)
    syms = m.load_asm(build_guest(script))
    every = list(_walk(script.main)) + [op for body in list(script.handlers.values())
                                        + list(script.targets.values()) for op in _walk(body)]
    raises = {syms[op.label] - 4: op.event for op in every if isinstance(op, HostRaise)}
    for _ in range(len(raises) + 2):
        stop = m.run(max_instructions=500_000)
        if stop.pc == syms["done"]:
            break
        assert stop.pc in raises, f"guest stopped at an unexpected brk #0, pc={stop.pc:#x}"
        m.set_reg("pc", stop.pc + 4)
        m.sdei.raise_event(raises[stop.pc])
    else:
        raise AssertionError("the guest never reached `done`")
    n = (m.reg("x20") - syms["results"]) // 8
    assert 0 <= n <= LOG_SLOTS
    got = [s64(m.read_u64(syms["results"] + 8 * i)) for i in range(n)]
    return m, syms, got


@_settings(SDEI_EXAMPLES)
@given(sdei_scripts())
def test_random_sdei_sequences_match_the_reference_model(case):
    """Every value the guest logs (call results, CONTEXT reads, handler marks, x0 at handler
    entry, the final STATUS of each event) equals the reference model's prediction, in order."""
    profile, script = case
    log, model = _model(script, profile)
    m, syms, got = run_sdei_guest(script, profile)
    want = [g if e is UNKNOWN else (syms[e] if isinstance(e, Label) else s64(e))
            for g, e in zip(got, log)] + log[len(got):]
    assert got == want
    # The host agrees with the model on what the guest cannot see directly.
    assert m.sdei.pe.masked == model.masked
    assert [c.event for c in m.sdei.pe.running] == [c.event for c in model.running] == []
    assert sum(m.trace.breakdown().values()) == m.trace.elapsed_ns


REACHABLE = ([(state, action) for state in R.STATES
              for action in (R.REGISTER, R.ENABLE, R.DISABLE, R.UNREGISTER)]
             + [(3, R.DISPATCH)]
             + [(state, action) for state in (4, 5, 7) for action in (R.CONTEXT, R.COMPLETE)])


def test_random_sdei_scripts_reach_every_reachable_table_entry(monkeypatch):
    """The generator is worth its examples: over SDEI_EXAMPLES scripts the model passes through
    every (state, action) pair of the docs/REFERENCES.md table that a guest can reach (CONTEXT and
    COMPLETE act on the running event, so states 0, 1 and 3 meet them only as DENIED)."""
    seen: dict = {}
    step = R.step

    def counting_step(state, action):
        seen[(state, action)] = seen.get((state, action), 0) + 1
        return step(state, action)
    monkeypatch.setattr(R, "step", counting_step)

    @_settings(SDEI_EXAMPLES)
    @given(sdei_scripts())
    def generate(case):
        profile, script = case
        _model(script, profile)
    generate()
    assert [pair for pair in REACHABLE if not seen.get(pair)] == []


# ====================================================================== 2. fault schedules

WAKE_ALL = TOKEN_WAKE_ALL


def check_tokens(trace) -> dict:
    """Scan the APF records in order: a token is never issued while it is outstanding (from
    its ``apf_not_present`` until its ``apf_ack``), "page ready" and the ack only name
    outstanding tokens. Returns the tokens still outstanding at the end."""
    outstanding: dict[int, int] = {}
    for rec in trace.records:
        kind = rec.kind
        if kind == "apf_not_present":
            tok = rec.get("token")
            assert tok not in outstanding, (
                f"token {tok:#x} issued at t={rec.t_ns} while still outstanding "
                f"(issued at t={outstanding[tok]}, not yet acknowledged)")
            assert tok != WAKE_ALL, "the wake-all token was issued for a fault"
            outstanding[tok] = rec.t_ns
        elif kind in ("apf_page_ready", "apf_ack"):
            tok = rec.get("token")
            if tok != WAKE_ALL:
                assert tok in outstanding, f"{kind} for token {tok:#x}, which is not outstanding"
                if kind == "apf_ack":
                    del outstanding[tok]
    return outstanding


def check_time(trace) -> None:
    bd = trace.breakdown()
    assert sum(bd.values()) == trace.elapsed_ns, f"breakdown {bd} != elapsed {trace.elapsed_ns}"
    assert all(v >= 0 for v in bd.values())


def page_image(tag: int, rnd: int, i: int) -> bytes:
    """A whole page: memtouch's u64 at offset 0, then bytes unique to (tag, page)."""
    filler = hashlib.sha256(f"apflab tag {tag} page {i}".encode()).digest()
    return struct.pack("<Q", guest.memtouch_value(tag, rnd, i)) + (filler * (PAGE // 32))[8:]


class DigestSpy:
    """Wraps ``Stage2.on_event``: the SHA-256 of a page when it goes out must be the one it
    has when it comes back in (every byte, not just the u64 memtouch checks)."""

    def __init__(self, stage2):
        self.s2 = stage2
        self.out: dict[int, bytes] = {}
        self.returns = 0
        self.mismatches: list[int] = []
        self._inner = stage2.on_event
        stage2.on_event = self

    def __call__(self, kind: str, fields: dict) -> None:
        self._inner(kind, fields)
        gpn = fields.get("gpn")
        if kind == "page_out":
            self.out[gpn] = self.s2.page_digest(gpn)
        elif kind == "page_in_done" and gpn in self.out:
            self.returns += 1
            if self.s2.page_digest(gpn) != self.out.pop(gpn):
                self.mismatches.append(gpn)


@st.composite
def task_mixes(draw):
    """1-3 memtouch tasks (measured) plus up to three others, at most TASK_MAX in all."""
    n_mt = draw(st.integers(1, 3))
    total = draw(st.integers(16, 48))
    sizes = [max(4, total // n_mt)] * n_mt
    tasks = [guest.memtouch(sizes[t], draw(st.integers(1, 2)), batch=draw(st.integers(1, 16)),
                            tag=t + 1, first_round=1) for t in range(n_mt)]
    for kind in draw(st.lists(st.sampled_from(("compute", "yield_loop", "sleeper")), max_size=3)):
        if kind == "compute":
            tasks.append(guest.compute(iters=draw(st.integers(20, 200)), report=draw(st.integers(1, 16)),
                                       measured=False))
        elif kind == "yield_loop":
            tasks.append(guest.yield_loop(draw(st.integers(1, 40)), measured=draw(st.booleans())))
        else:
            tasks.append(guest.sleeper(draw(st.integers(5_000, 200_000)), draw(st.integers(1, 3)),
                                       measured=draw(st.booleans())))
    return tasks


@st.composite
def fault_schedules(draw):
    tasks = draw(task_mixes())
    n_mt = sum(t.entry == "memtouch" for t in tasks)
    buffer_pages = sum(t.params[1] for t in tasks if t.entry == "memtouch")
    kind = draw(st.sampled_from(("ssd", "hdd")))
    latency = draw(st.one_of(st.none(), st.integers(1_000, 40_000)) if kind == "ssd"
                   else st.integers(1_000, 40_000))
    return {
        "seed": draw(st.integers(0, 2**32 - 1)),
        "apf": draw(st.sampled_from((True, False))),
        "tasks": tasks,
        "store": kind,
        "latency_ns": latency,
        "channels": draw(st.sampled_from((None, 1, 4))),
        # frames for the buffers beside the pinned kernel: from a handful (thrashing, each
        # page evicted and brought back several times) to all of them
        "limit_pages": draw(st.integers(max(4, 2 * n_mt), buffer_pages + 4)),
        "policy": draw(st.sampled_from(("fifo", "clock"))),
        "tick_ns": draw(st.sampled_from((20_000, 50_000, 100_000))),
        "wake_resched": draw(st.booleans()),
    }


def run_schedule(s: dict):
    """Boot the mini-kernel with the schedule's tasks, swap every buffer page out, run to the end."""
    store_kw = {k: s[k] for k in ("latency_ns", "channels") if s[k] is not None}
    m = Machine(seed=s["seed"], ram_size=4 << 20, store=make_store(s["store"], **store_kw),
                policy=s["policy"])
    tasks = s["tasks"]
    syms = m.load_asm(guest.build_source(tasks, tick_ns=s["tick_ns"], wake_resched=s["wake_resched"],
                                         ram_size=m.ram_size))
    guest.pin_kernel(m, syms)
    guest.attach(m, syms)
    m.apf.allowed = s["apf"]
    spy = DigestSpy(m.stage2)
    bufs = guest.task_buffers(tasks)
    for t, buf in enumerate(bufs):
        if buf is not None:
            tag = tasks[t].params[5]
            for i, addr in enumerate(buf):
                m.write(addr, page_image(tag, 0, i))
                m.evict(addr)
    m.stage2.limit_pages = len(guest.kernel_pages(syms)) + s["limit_pages"]
    stop = m.run(max_instructions=40_000_000)
    return m, syms, spy, stop


def check_kernel_run(m, syms, spy, tasks) -> dict:
    st_ = guest.read_kernel_state(m, syms)
    assert st_["panic"] is None
    assert st_["stop_reason"] in ("stop_mask tasks exited", "all tasks exited")
    for spec, t in zip(tasks, st_["tasks"]):
        if spec.measured:
            assert t["exited"], f"measured task {t['index']} ({t['entry']}) did not exit: {t['state']}"
        assert t["parked"] == t["wakeups"], f"task {t['index']}: parked {t['parked']} != woken {t['wakeups']}"
        if spec.entry == "memtouch":
            assert t["mismatches"] == 0 and t["rounds_done"] == spec.params[2]
    a = st_["apf"]
    assert a["table"] == [] and a["table_full"] == 0 and a["bad_ready"] == 0
    assert sum(t["parked"] for t in st_["tasks"]) == a["not_present"]
    # Host side: every token acknowledged, nothing queued; the trace says the same.
    assert m.trace.dropped == 0
    assert check_tokens(m.trace) == {}
    assert m.apf.work == {} and not m.apf.ready and m.apf.notified is None
    assert m.apf.not_present_count == len(m.trace.select("apf_not_present"))
    check_time(m.trace)
    # Every byte of every page came back as it went out, and ends as memtouch left it.
    assert spy.mismatches == []
    m.stage2.check()
    for t, buf in enumerate(guest.task_buffers(tasks)):
        if buf is not None:
            spec = tasks[t]
            last = spec.params[6] + spec.params[2] - 1
            for i, addr in enumerate(buf):
                assert m.stage2.page_digest(m.stage2.gpn_of(addr)) == \
                    hashlib.sha256(page_image(spec.params[5], last, i)).digest(), f"task {t} page {i}"
    return st_


@_settings(KERNEL_EXAMPLES)
@given(fault_schedules())
def test_random_fault_schedules_keep_every_invariant(s):
    m, syms, spy, stop = run_schedule(s)
    assert stop is not None
    check_kernel_run(m, syms, spy, s["tasks"])
    if not s["apf"]:
        assert m.apf.not_present_count == 0 and m.trace.breakdown()["handler"] == 0
    # The schedule really moved pages: each was pushed out before the run and came back.
    assert spy.returns >= sum(t.params[1] for t in s["tasks"] if t.entry == "memtouch")


def _latency(kind):
    return st.integers(1_000, 40_000) if kind == "hdd" else st.one_of(st.none(), st.integers(1_000, 40_000))


@st.composite
def scenario_params(draw):
    """(name, apf, seed, params) for run_scenario, small enough to run in well under a second."""
    name = draw(st.sampled_from(("memtouch", "memtouch", "gleb2010", "postcopy")))
    common = {"tick_ns": draw(st.sampled_from((20_000, 50_000, 100_000)))}
    if name != "postcopy":
        store = draw(st.sampled_from(("ssd", "hdd")))
        common.update(store=store, latency_ns=draw(_latency(store)))
    if name == "memtouch":
        npages = draw(st.integers(16, 64))
        p = dict(npages=npages, rounds=draw(st.integers(1, 2)), limit_pages=draw(st.integers(8, npages + 8)),
                 calc_thread=draw(st.booleans()))
    elif name == "gleb2010":
        p = dict(fault_tasks=draw(st.integers(1, 4)), compute_tasks=draw(st.integers(0, 4)),
                 npages=draw(st.integers(8, 24)), limit_pages=draw(st.integers(8, 48)),
                 duration_ns=draw(st.integers(1_000_000, 2_000_000)))
    else:
        p = dict(npages=draw(st.integers(16, 64)), calc_thread=draw(st.booleans()),
                 rtt_ns=draw(st.integers(10_000, 300_000)),
                 bandwidth_bytes_per_s=draw(st.sampled_from((125_000_000, 1_250_000_000))))
    return name, draw(st.sampled_from((True, False))), draw(st.integers(0, 2**32 - 1)), {**common, **p}


@_settings(SCENARIO_EXAMPLES)
@given(scenario_params())
def test_random_scenarios_hold_their_invariants_and_repeat_exactly(case):
    """run_scenario with random parameters, twice: the same seed gives the same trace digest
    and summary; tokens are unique while outstanding; the breakdown tiles the run; every
    parked task was woken (a gleb2010 run is cut off at its length: at most one wake-up
    per task may still be owed then)."""
    name, apf, seed, params = case
    a = run_scenario(name, apf=apf, seed=seed, **params)
    b = run_scenario(name, apf=apf, seed=seed, **params)
    assert a.trace.digest() == b.trace.digest()
    assert a.summary() == b.summary()
    check_time(a.trace)
    assert a.breakdown == a.trace.breakdown() and a.stall_ns == a.breakdown["stalled"]
    outstanding = check_tokens(a.trace)
    tasks = a.kernel["tasks"]
    assert all(t["mismatches"] == 0 for t in tasks if t["entry"] == "memtouch")
    if name == "memtouch":
        assert outstanding == {}
        assert tasks[0]["exited"] and tasks[0]["rounds_done"] == params["rounds"]
        assert all(t["parked"] == t["wakeups"] for t in tasks)
    else:
        assert len(outstanding) <= 64
        assert all(t["wakeups"] <= t["parked"] <= t["wakeups"] + 1 for t in tasks)
    if not apf:
        assert a.apf_not_present == 0 and set(a.fallbacks) <= {"apf_disabled"}
    assert a.faults == a.apf_not_present + sum(a.fallbacks.values())


# ====================================================================== 3. Stage2 on its own

@st.composite
def page_programs(draw):
    """Host-side page movements on a small machine: writes, evictions, page-ins, limits."""
    npages = 16
    steps = draw(st.lists(st.tuples(st.sampled_from(("write", "write", "evict", "page_in", "finish",
                                                     "limit", "swap_out_all")),
                                    st.integers(0, npages - 1), st.integers(0, PAGE - 1),
                                    st.binary(min_size=1, max_size=64)),
                          min_size=1, max_size=60))
    return draw(st.integers(0, 2**16)), draw(st.sampled_from(("fifo", "clock"))), steps


@_settings(STAGE2_EXAMPLES)
@given(page_programs())
def test_page_bytes_survive_any_sequence_of_moves(prog):
    """Whatever the order of writes, evictions, page-ins and limit changes, each page's
    SHA-256 (wherever its bytes are) equals that of a plain model of its bytes, and the
    lifecycle bookkeeping re-derives (Stage2.check)."""
    import random
    seed, policy, steps = prog
    m = Machine(seed=seed, ram_size=32 * PAGE, policy=policy)
    s2 = m.stage2
    base = m.ram_base + 16 * PAGE                       # the upper 16 of 32 pages
    model = {}
    rng = random.Random(seed)
    for action, k, off, data in steps:
        addr = base + k * PAGE
        gpn = s2.gpn_of(addr)
        state = s2.state(gpn)
        if action == "write":
            data = data[:PAGE - off]
            m.write(addr + off, data)
            page = bytearray(model.get(k, bytes(PAGE)))
            page[off:off + len(data)] = data
            model[k] = bytes(page)
        elif action == "evict" and state == PageState.RESIDENT:
            s2.evict(gpn)
        elif action == "page_in" and state == PageState.SWAPPED:
            s2.start_page_in(gpn, m.now_ns, rng)
        elif action == "finish" and state == PageState.INFLIGHT:
            s2.finish_page_in(gpn)
        elif action == "limit":
            # A cgroup limit lowered at run time: reclaim down to it first.
            target = max(2, off % 24)
            s2.swap_out_all_but(max(0, target - s2.inflight_pages))
            s2.limit_pages = max(target, s2.resident_pages + s2.inflight_pages)
        elif action == "swap_out_all":
            s2.swap_out_all_but(off % 8)
        s2.check()
        for j, content in model.items():
            assert s2.page_digest(s2.gpn_of(base + j * PAGE)) == hashlib.sha256(content).digest(), \
                f"page {j} after {action}"
    for j, content in model.items():
        assert m.read(base + j * PAGE, PAGE) == content


# ====================================================================== 4. any hypercall, any arguments

INTERESTING = (0, 1, 2, 3, 5, 16, 17, 18, 31, 1000, 0xFFFF_FFFF, 1 << 32, 1 << 63, MASK64)
# Named calls first (hypothesis favours early choices): register/enable/unmask/signal chains
# do get drawn, so handlers are entered at whatever address the arguments named.
FIDS = st.one_of(
    st.sampled_from((R.EVENT_REGISTER, R.EVENT_ENABLE, R.PE_UNMASK, R.EVENT_SIGNAL,
                     R.EVENT_COMPLETE_AND_RESUME, R.EVENT_COMPLETE, R.EVENT_CONTEXT, 0x86000002)),
    st.integers(0xC4000020, 0xC400003F), st.integers(0x86000000, 0x86000003),
    st.sampled_from((0x80000000, 0x80000001, 0x84000020, 0xC7000001, 0, MASK64)))
SMALL = st.sampled_from((0, 0, 0, "code", 1, "block+1", 2, 4, "code+2", "block+5"))
ARGS = st.one_of(SMALL, SMALL, SMALL, st.sampled_from(INTERESTING), st.integers(0, MASK64),
                 st.integers(0x4000_0000, 0x4010_0000 - 1))                # guest RAM


# Events 0-2 registered at `code` and enabled, PE unmasked: random SIGNALs then dispatch.
PREAMBLE = [(fid, [ev, "code", 0, 0, 0]) for ev in (0, 1, 2) for fid in (R.EVENT_REGISTER, R.EVENT_ENABLE)] + [
    (R.PE_UNMASK, [0] * 5)]


# Well-formed calls mixed in, so that handlers do run and meet the junk.
WELL_FORMED = [(R.EVENT_SIGNAL, [0] * 5), (R.EVENT_COMPLETE, [0] * 5), (R.EVENT_CONTEXT, [3, 0, 0, 0, 0]),
               (R.EVENT_COMPLETE_AND_RESUME, ["code", 0, 0, 0, 0]), (R.EVENT_DISABLE, [0] * 5),
               (R.EVENT_UNREGISTER, [0] * 5), (R.PE_MASK, [0] * 5), (R.PE_UNMASK, [0] * 5),
               (0x86000002, [4, "block+1", 0, 0, 0]), (0x86000002, [5, 0, 0, 0, 0])]


@st.composite
def fuzz_calls(draw):
    random_call = st.tuples(FIDS, st.lists(ARGS, min_size=5, max_size=5))
    calls = draw(st.lists(st.one_of(random_call, st.sampled_from(WELL_FORMED)), min_size=1, max_size=16))
    return (PREAMBLE if draw(st.booleans()) else []) + calls


@_settings(FUZZ_EXAMPLES)
@given(fuzz_calls())
def test_any_hypercall_with_any_arguments_is_answered_or_is_a_guest_error(calls):
    """A guest that makes random hypercalls with random 64-bit arguments (SDEI, the KVM
    vendor service, SMCCC arch calls, unowned IDs) gets an answer in x0 for each, or, when
    its own calls sent it somewhere bad (a registered entry point full of zeros, say), a
    GuestError naming where. Never another Python exception, never an InvariantError.
    Half the cases first register events 0-2 at a small handler and unmask the PE, so that
    random SIGNAL, CONTEXT and COMPLETE calls meet running handlers too."""
    from apflab import GuestError
    lines = ["_start:", "adr x20, results"]
    for fid, args in calls:
        lines += _mov64("x0", fid)
        for i, a in enumerate(args, 1):
            if isinstance(a, str):
                label, _, off = a.partition("+")
                lines += [f"adr x{i}, {label}"] + ([f"add x{i}, x{i}, #{off}"] if off else [])
            else:
                lines += _mov64(f"x{i}", a)
        lines += ["hvc #0", "str x0, [x20], #8"]
    # `code`: a handler that stops at a brk (the test steps over it), then completes.
    lines += ["done:", "brk #0", "code:", "    brk #0"] + _mov64("x0", R.EVENT_COMPLETE) + [
        "    hvc #0", "    brk #1", ".balign 64", "block:", ".space 64",
              ".balign 8", "results:", f".space {8 * (len(calls) + 1)}"]
    m = Machine(seed=0, ram_size=1 << 20)
    syms = m.load_asm("\n".join(lines) + "\n")
    try:
        for _ in range(len(calls) + 2):
            stop = m.run(max_instructions=200_000)
            if stop.pc == syms["done"]:
                break
            m.set_reg("pc", stop.pc + 4)     # a handler's `brk #0` at `code`: step over it
    except GuestError as e:
        assert e.pc is not None and str(e)
    check_time(m.trace)
    m.stage2.check()


# ====================================================================== the figures in the docs

def test_robustness_doc_quotes_the_example_counts_used_here():
    """docs/ROBUSTNESS.md states how many random cases run: keep it true (STYLE: no hand-pasted
    figures that drift)."""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ROBUSTNESS.md").read_text()
    counts = {"SDEI_EXAMPLES": SDEI_EXAMPLES, "KERNEL_EXAMPLES": KERNEL_EXAMPLES,
              "SCENARIO_EXAMPLES": SCENARIO_EXAMPLES, "STAGE2_EXAMPLES": STAGE2_EXAMPLES,
              "FUZZ_EXAMPLES": FUZZ_EXAMPLES}
    for name, n in counts.items():
        quoted = re.findall(rf"\| `{name}` \| (\d+)", doc)
        assert quoted and all(int(q) == n for q in quoted), f"{name}: doc says {quoted}, tests use {n}"
    total = 2 * SDEI_EXAMPLES + KERNEL_EXAMPLES + SCENARIO_EXAMPLES + STAGE2_EXAMPLES + FUZZ_EXAMPLES
    assert f"In all: {total} random cases" in doc
    assert f"{SCENARIO_EXAMPLES} ({2 * SCENARIO_EXAMPLES} runs)" in doc
