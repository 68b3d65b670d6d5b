"""A second, minimal SDEI model, written from the specification (DEN0054C), TF-A's
``sdei_state.c`` and the lab's documented choices (docs/REFERENCES.md, "SDEI" and
"Departures"), never from apflab's own ``sdei.py``.

The guest-level tests (``test_sdei_guest.py``) compute what the guest should
observe with this model instead of trusting apflab's own ``sdei.py``. It has
three parts:

- ``TABLE``/``step``: the per-event state table in TF-A's ``sdei_state.c`` layout
  (X = DENIED, NOP = allowed, no change).
- ``RefSdei``: one PE's SDEI dispatcher (calls, masking, pending triggers,
  priorities, the saved context, bound interrupts), lab defaults or
  ``profile="kvm-v7"``; ``ref_platform(n)``: n PEs that can SIGNAL each other
  (``test_fuzz_sdei.py``).
- ``expected_log``: runs a small guest script (``Call``, ``Mark``, ``Set``,
  ``Rec``, ``HostRaise``, ``Once``, ``Eret``) against the model and returns the
  values the guest's result log should hold. The tests turn the same script
  into AArch64 assembly, so script and expectation cannot drift apart.

Whatever those sources leave open raises ``Unspecified``: a test that strays
there fails loudly instead of pinning down an accident of the product.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

# -- SMCCC / SDEI numbers (docs/REFERENCES.md ("SMCCC")) -------------------------------------------------

SUCCESS = 0
NOT_SUPPORTED = -1
INVALID = -2              # INVALID_PARAMETERS
DENIED = -3
PENDING = -5
OUT_OF_RESOURCE = -10

VERSION = 0xC4000020
EVENT_REGISTER = 0xC4000021
EVENT_ENABLE = 0xC4000022
EVENT_DISABLE = 0xC4000023
EVENT_CONTEXT = 0xC4000024
EVENT_COMPLETE = 0xC4000025
EVENT_COMPLETE_AND_RESUME = 0xC4000026
EVENT_UNREGISTER = 0xC4000027
EVENT_STATUS = 0xC4000028
EVENT_GET_INFO = 0xC4000029
EVENT_ROUTING_SET = 0xC400002A
PE_MASK = 0xC400002B
PE_UNMASK = 0xC400002C
INTERRUPT_BIND = 0xC400002D
INTERRUPT_RELEASE = 0xC400002E
EVENT_SIGNAL = 0xC400002F
FEATURES = 0xC4000030
PRIVATE_RESET = 0xC4000031
SHARED_RESET = 0xC4000032
SDEI_RANGE = range(0xC4000020, 0xC4000040)       # owned by SDEI; the IDs above 0x32 are unknown
SMC32_MIRROR = range(0x84000020, 0x84000040)     # "there are no SMC32 SDEI IDs"

LAB_VERSION = (1 << 48) | (1 << 32) | 0x4B564D    # 1.1, vendor "KVM"

INFO_TYPE, INFO_SIGNALED, INFO_PRIORITY, INFO_ROUTING_MODE, INFO_ROUTING_AFF = range(5)
CONTEXT_REGS = 18                                  # x0..x17

# The lab platform's events. Event 2's TYPE is not documented: None = unspecified.
EVENTS = {
    0: {"type": 0, "signaled": 1, "priority": 0},      # software-signalled, private, normal
    1: {"type": 0, "signaled": 0, "priority": 0},      # APF "page not present", host-raised only
    2: {"type": None, "signaled": 0, "priority": 1},   # the critical host event
}

# -- the per-event state table ---------------------------------------------------------------------

REGISTER, ENABLE, DISABLE, UNREGISTER, CONTEXT, COMPLETE, DISPATCH = (
    "REGISTER", "ENABLE", "DISABLE", "UNREGISTER", "CONTEXT", "COMPLETE", "DISPATCH")
ACTIONS = (REGISTER, ENABLE, DISABLE, UNREGISTER, CONTEXT, COMPLETE)    # the guest's calls
STATES = (0, 1, 3, 4, 5, 7)
X = "X"          # DENIED, state kept
NOP = "NOP"      # allowed, state kept
NEVER = "-"      # the dispatcher never does this

# state -> action -> X | NOP | new state | (code, new state or NOP). docs/REFERENCES.md ("SDEI"), "Per-event state".
TABLE = {
    0: {REGISTER: 1, ENABLE: X, DISABLE: X, UNREGISTER: X, CONTEXT: X, COMPLETE: X, DISPATCH: NEVER},
    1: {REGISTER: X, ENABLE: 3, DISABLE: NOP, UNREGISTER: 0, CONTEXT: X, COMPLETE: X, DISPATCH: NEVER},
    3: {REGISTER: X, ENABLE: NOP, DISABLE: 1, UNREGISTER: 0, CONTEXT: X, COMPLETE: X, DISPATCH: 7},
    4: {REGISTER: X, ENABLE: X, DISABLE: X, UNREGISTER: (PENDING, NOP), CONTEXT: NOP, COMPLETE: 0,
        DISPATCH: NEVER},
    5: {REGISTER: X, ENABLE: 7, DISABLE: NOP, UNREGISTER: (PENDING, 4), CONTEXT: NOP, COMPLETE: 1,
        DISPATCH: NEVER},
    7: {REGISTER: X, ENABLE: NOP, DISABLE: 5, UNREGISTER: (PENDING, 4), CONTEXT: NOP, COMPLETE: 3,
        DISPATCH: NEVER},
}


class Unspecified(Exception):
    """docs/REFERENCES.md does not say what happens here: a test must not depend on it."""


class ModelError(Exception):
    """The script itself is wrong (a handler that never completes, a stray eret)."""


def step(state: int, action: str) -> tuple[int, int]:
    """(result code, new state) for one action; CONTEXT's SUCCESS stands for "the saved value"."""
    rule = TABLE[state][action]
    if rule == NEVER:
        raise ModelError(f"{action} cannot happen in state {state}")
    if rule == X:
        return DENIED, state
    if rule == NOP:
        return SUCCESS, state
    if isinstance(rule, tuple):
        code, new = rule
        return code, state if new == NOP else new
    return SUCCESS, rule


# -- one PE's dispatcher -----------------------------------------------------------------------------

class _Unknown:
    """A register value the model cannot know (SMCCC lets x1-x3 hold results; scratch registers)."""

    def __repr__(self):
        return "?"

    def __deepcopy__(self, memo):
        return self          # one UNKNOWN: tests compare with ``is``


UNKNOWN = _Unknown()
STALE = "stale"          # a trigger left on an event that got unregistered: its fate is unspecified


class Label(str):
    """A guest address known by its assembly label (resolved by the test after assembling)."""


@dataclass
class Ctx:
    event: int
    regs: dict
    pc: object


@dataclass
class Completed:
    ctx: Ctx


@dataclass
class Resumed:
    ctx: Ctx
    addr: object


UNTOUCHED = object()     # kvm-v7's COMPLETE with nothing running: x0 keeps the function ID


RAM = (0x4000_0000, 0x4100_0000)     # the guest RAM the tests use by default: 16 MiB at 0x40000000
BOUND_BASE, BIND_SLOTS = 1000, 2     # docs/REFERENCES.md ("SDEI"): bound events numbered from 1000, 2 PPI slots
def target_pe(mpidr: int) -> int | None:
    """EVENT_SIGNAL's x2: an MPIDR (RES1 bit 31, U and MT may be set); PE i has Aff0 = i and
    Aff1-Aff3 = 0; any other bit set names no PE (None; TF-A would mask RES0 bits off)."""
    aff = mpidr & ~(1 << 31 | 1 << 30 | 1 << 24)
    return aff if aff <= 0xFF else None


BOUND = {"type": 0, "signaled": 0, "priority": 0}    # a bound PPI: private, normal, not signalable


class RefSdei:
    """One PE's dispatcher. ``peers`` (set by ``ref_platform``): every PE's, by MPIDR.Aff0,
    for EVENT_SIGNAL to another PE; None keeps the one-PE model (another target is then
    ``Unspecified``, as docs/REFERENCES.md's table says "only to this PE")."""

    def __init__(self, profile: str = "lab", ram: tuple[int, int] = RAM):
        assert profile in ("lab", "kvm-v7")
        self.profile = profile
        self.ram = ram
        self.peers: list | None = None
        self.defs = dict(EVENTS)             # the platform's events plus this PE's bound ones
        self.bound: dict[int, int] = {}      # bound event number -> INTID
        self.state = {n: 0 for n in EVENTS}
        self.entry: dict[int, object] = {}
        self.ep_arg: dict[int, object] = {}
        self.triggered: dict[int, object] = {n: False for n in EVENTS}
        self.masked = True                 # "A PE starts masked"
        self.running: list[Ctx] = []       # outermost first

    # ---------------------------------------------------------------- helpers
    def _apply(self, ev: int, action: str) -> int:
        code, new = step(self.state[ev], action)
        self.state[ev] = new
        if new == 0 and self.triggered[ev] is True:
            self.triggered[ev] = STALE
        return code

    def _prio(self, ev: int) -> int:
        return self.defs[ev]["priority"]

    def _valid_addr(self, addr) -> bool:
        # DEN0054C 5.1.2: the entry point must be a valid address; TF-A's
        # plat_sdei_validate_entry_point: inside the client's memory. Plus 4-byte aligned.
        return not isinstance(addr, int) or (self.ram[0] <= addr < self.ram[1] and addr % 4 == 0)

    # ---------------------------------------------------------------- calls
    def call(self, fid: int, args=()):
        a = list(args) + [0] * (5 - len(args))
        fn = self._CALLS.get(fid)
        if fn is None:
            owner = (fid >> 24) & 0x3F
            if fid in SDEI_RANGE or fid in SMC32_MIRROR or 7 <= owner <= 47:
                return NOT_SUPPORTED          # unknown SDEI call, "SMC32 SDEI", reserved owner
            raise Unspecified(f"function {fid:#x} belongs to a service this model does not cover")
        return fn(self, *a)

    def _version(self, *a):
        return LAB_VERSION

    def _register(self, ev, entry, arg, flags, aff):
        if ev not in self.defs:
            return INVALID
        if flags & ~3:
            if self.state[ev] == 0:
                return INVALID                # reserved flag bits
            raise Unspecified("reserved flags on a registered event: which check comes first?")
        if flags or aff:
            raise Unspecified("routing / relative-mode flags")
        if not self._valid_addr(entry):
            return INVALID                    # docs/ROBUSTNESS.md catalogue: entry 0, outside RAM, misaligned
        if self.triggered[ev] == STALE:
            raise Unspecified("re-registering an event whose trigger predates its unregister")
        code = self._apply(ev, REGISTER)
        if code == SUCCESS:
            self.entry[ev], self.ep_arg[ev] = entry, arg
        return code

    def _simple(action):
        def fn(self, ev, *a):
            return INVALID if ev not in self.defs else self._apply(ev, action)
        return fn

    _enable = _simple(ENABLE)
    _disable = _simple(DISABLE)
    _unregister = _simple(UNREGISTER)

    def _context(self, param, *a):
        if self.profile == "kvm-v7":
            if not self.running:
                return DENIED
            if param >= CONTEXT_REGS:
                return INVALID
        else:   # lab default (TF-A): the parameter is checked first
            if param >= CONTEXT_REGS:
                return INVALID
            if not self.running:
                return DENIED
        top = self.running[-1]
        code = self._apply(top.event, CONTEXT)
        return top.regs[param] if code == SUCCESS else code

    def _finish(self, resume):
        if not self.running:
            if self.profile == "kvm-v7":
                if resume is not None:
                    raise Unspecified("kvm-v7 COMPLETE_AND_RESUME with nothing running")
                return UNTOUCHED
            return DENIED
        top = self.running[-1]
        code = self._apply(top.event, COMPLETE)
        assert code == SUCCESS
        self.running.pop()
        return Completed(top) if resume is None else Resumed(top, resume)

    def _complete(self, status, *a):
        return self._finish(None)

    def _complete_and_resume(self, addr, *a):
        # TF-A validates the resume address as it does an entry point and refuses with
        # DENIED (the handler goes on): here, an int address that is not in the guest's
        # 16 MiB of RAM at 0x40000000 or not 4-aligned.
        if self.running and not self._valid_addr(addr):
            return DENIED
        return self._finish(addr)

    def _status(self, ev, *a):
        return INVALID if ev not in self.defs else self.state[ev]

    def _get_info(self, ev, info, *a):
        if ev not in self.defs or info > INFO_ROUTING_AFF:
            return INVALID
        key = {INFO_TYPE: "type", INFO_SIGNALED: "signaled", INFO_PRIORITY: "priority"}.get(info)
        value = self.defs[ev][key] if key else None
        if value is None:
            raise Unspecified(f"GET_INFO({ev}, {info})")
        return value

    def _pe_mask(self, *a):
        was = self.masked
        self.masked = True
        if self.profile == "kvm-v7":
            return 0
        return 0 if was else 1

    def _pe_unmask(self, *a):
        self.masked = False
        return SUCCESS

    def _interrupt_bind(self, intid, *a):
        if intid < 16:
            return INVALID                    # SGIs cannot be bound
        if intid >= 32:
            return INVALID                    # docs/ROBUSTNESS.md catalogue: no SPIs (BIND of INTID 1020)
        if intid in self.bound.values():
            raise Unspecified("binding an INTID that is already bound")
        if len(self.bound) >= BIND_SLOTS:
            return OUT_OF_RESOURCE            # DEN0054C: no free slot
        num = min(n for n in range(BOUND_BASE, BOUND_BASE + BIND_SLOTS) if n not in self.bound)
        self.bound[num] = intid
        self.defs[num] = BOUND
        self.state[num] = 0
        self.triggered[num] = False
        return num

    def _interrupt_release(self, num, *a):
        if num not in self.bound:
            return INVALID                    # not a bound event
        if self.state[num] != 0:
            return DENIED                     # DEN0054C: the event must be unregistered first
        del self.bound[num], self.defs[num], self.state[num], self.triggered[num]
        return SUCCESS

    def _routing_set(self, ev, mode, *a):
        if ev not in self.defs:
            return INVALID
        if self.defs[ev]["type"] is None:
            raise Unspecified(f"ROUTING_SET on event {ev}, whose type is undocumented")
        if self.defs[ev]["type"] == 0:
            return INVALID                    # private events have no routing (DEN0054C; ROBUSTNESS.md)
        raise Unspecified("shared events are not modelled")

    def _signal(self, ev, pe, *a):
        if ev != 0:
            return INVALID                    # event 0 is the only signalable event
        pe = target_pe(pe)
        if pe is None:
            return INVALID                    # Aff1-Aff3 name no PE of this machine
        peers = self.peers
        if peers is None:
            if pe != 0:
                raise Unspecified("SIGNAL to another PE")
            target = self
        elif pe >= len(peers):
            return INVALID                    # DEN0054C EVENT_SIGNAL: the target PE must exist
        else:
            target = peers[pe]
        if target.state[0] == 0:
            return DENIED                     # docs/REFERENCES.md Departures: lab choice
        if target.triggered[0] == STALE:
            raise Unspecified("re-signalling an event whose trigger predates its unregister")
        target.triggered[0] = True            # lab default: pending while masked or disabled
        return SUCCESS

    def _features(self, feature, *a):
        if feature > 1:
            return INVALID
        return UNKNOWN                        # BIND_SLOTS / RELATIVE_MODE values are the platform's

    def _reset(self, shared: bool):
        if self.running:
            return DENIED
        for ev, d in self.defs.items():
            if d["type"] is None:
                if self.state[ev] != 0:
                    raise Unspecified(f"reset with event {ev} (type undocumented) registered")
                continue
            if d["type"] == int(shared):
                self.state[ev] = 0
                if self.triggered[ev] is True:
                    self.triggered[ev] = STALE
        return SUCCESS

    def _private_reset(self, *a):
        return self._reset(shared=False)

    def _shared_reset(self, *a):
        return self._reset(shared=True)

    _CALLS = {
        VERSION: _version, EVENT_REGISTER: _register, EVENT_ENABLE: _enable, EVENT_DISABLE: _disable,
        EVENT_CONTEXT: _context, EVENT_COMPLETE: _complete,
        EVENT_COMPLETE_AND_RESUME: _complete_and_resume, EVENT_UNREGISTER: _unregister,
        EVENT_STATUS: _status, EVENT_GET_INFO: _get_info, EVENT_ROUTING_SET: _routing_set,
        PE_MASK: _pe_mask, PE_UNMASK: _pe_unmask, INTERRUPT_BIND: _interrupt_bind,
        INTERRUPT_RELEASE: _interrupt_release, EVENT_SIGNAL: _signal, FEATURES: _features,
        PRIVATE_RESET: _private_reset, SHARED_RESET: _shared_reset,
    }

    # ---------------------------------------------------------------- the host side
    def trigger(self, ev: int) -> None:
        """The host raises ``ev`` (APF, critical event)."""
        if self.state[ev] == 0:
            raise Unspecified("host raise of an unregistered event")
        self.triggered[ev] = True

    def deliverable(self):
        """docs/REFERENCES.md "Dispatch": triggered, enabled, PE unmasked, no same-or-higher handler running."""
        if self.masked:
            return None
        top = self._prio(self.running[-1].event) if self.running else -1
        cands = [ev for ev in self.defs
                 if self.triggered[ev] is True and self.state[ev] == 3 and self._prio(ev) > top]
        if not cands:
            return None
        best = max(self._prio(ev) for ev in cands)
        cands = [ev for ev in cands if self._prio(ev) == best]
        if len(cands) > 1:
            raise Unspecified(f"events {cands} of equal priority both deliverable: order not documented")
        return cands[0]

    def dispatch(self, ev: int, regs: dict, pc) -> tuple[object, object]:
        self._apply(ev, DISPATCH)
        self.triggered[ev] = False
        self.running.append(Ctx(ev, dict(regs), pc))
        return self.entry[ev], self.ep_arg[ev]


def ref_platform(n: int, profile: str = "lab", ram: tuple[int, int] = RAM) -> list[RefSdei]:
    """``n`` PEs, each its own dispatcher (SDEI state is per PE: every event here is
    private), that know each other for EVENT_SIGNAL."""
    pes = [RefSdei(profile, ram) for _ in range(n)]
    for pe in pes:
        pe.peers = pes
    return pes


# -- guest scripts ---------------------------------------------------------------------------------

_labels = itertools.count()


def _new_label() -> str:
    return f"L{next(_labels)}"


class Call:
    """x0 = fid, x1.. = args (ints or Labels), ``hvc #0``, then log x0 unless record=False."""

    def __init__(self, fid: int, *args, record: bool = True):
        self.fid, self.args, self.record = fid, args, record
        self.label = _new_label()          # placed right after the hvc

    def __repr__(self):
        return f"Call({self.fid:#x}, {', '.join(map(repr, self.args))})"


@dataclass
class Mark:
    """x9 = value; log it (shows that, and in which order, a piece of code ran)."""
    value: int


@dataclass
class Set:
    """x<reg> = value."""
    reg: int
    value: int


@dataclass
class Rec:
    """Log x<reg>."""
    reg: int


@dataclass
class HostRaise:
    """``brk #0``: the test's Python raises ``event`` on the host, then resumes after the brk."""
    event: int
    label: str = field(default_factory=_new_label)    # placed right after the brk


@dataclass
class Once:
    """Run ``ops`` the first time control gets here only (a flag word in guest memory; uses x9, x10)."""
    ops: list
    label: str = field(default_factory=_new_label)


@dataclass
class Eret:
    pass


@dataclass
class Script:
    main: list
    handlers: dict = field(default_factory=dict)      # entry label -> ops (must COMPLETE)
    targets: dict = field(default_factory=dict)       # COMPLETE_AND_RESUME label -> ops (end in Eret)


class _Done(Exception):
    def __init__(self, how):
        self.how = how


class _EretTaken(Exception):
    pass


class _Run:
    def __init__(self, script: Script, profile: str):
        self.script = script
        self.sdei = RefSdei(profile)
        self.regs = {i: UNKNOWN for i in range(31)}
        self.log: list = []
        self.flags: set[str] = set()

    def execute(self, ops) -> None:
        regs = self.regs
        for op in ops:
            if isinstance(op, Call):
                regs[0] = op.fid
                for i, a in enumerate(op.args, 1):
                    regs[i] = a
                res = self.sdei.call(op.fid, op.args)
                if isinstance(res, (Completed, Resumed)):
                    for i in range(CONTEXT_REGS):
                        regs[i] = res.ctx.regs[i]
                    raise _Done(res)
                if res is not UNTOUCHED:
                    regs[0] = res
                for i in (1, 2, 3):   # SMCCC: x1-x3 may carry results; nobody promised them
                    regs[i] = UNKNOWN
                self.settle(op.label)
                if op.record:
                    self.log.append(regs[0])
            elif isinstance(op, Mark):
                regs[9] = op.value
                self.log.append(op.value)
            elif isinstance(op, Set):
                regs[op.reg] = op.value
            elif isinstance(op, Rec):
                self.log.append(regs[op.reg])
            elif isinstance(op, HostRaise):
                self.sdei.trigger(op.event)
                self.settle(op.label)
            elif isinstance(op, Once):
                regs[9] = regs[10] = UNKNOWN
                if op.label not in self.flags:
                    self.flags.add(op.label)
                    self.execute(op.ops)
            elif isinstance(op, Eret):
                raise _EretTaken()
            else:
                raise ModelError(f"unknown op {op!r}")

    def settle(self, pc) -> None:
        """The host's check before the guest runs on at ``pc``: deliver what is deliverable."""
        while (ev := self.sdei.deliverable()) is not None:
            entry, arg = self.sdei.dispatch(ev, self.regs, Label(pc))
            self.regs[0], self.regs[1], self.regs[2], self.regs[3] = ev, arg, Label(pc), UNKNOWN
            for i in range(4, CONTEXT_REGS):
                self.regs[i] = 0                # lab default (and KVM v7): x4-x17 zeroed
            try:
                self.execute(self.script.handlers[entry])
                raise ModelError(f"handler {entry} ran off its end without completing")
            except _Done as done:
                if isinstance(done.how, Resumed):
                    target = done.how.addr
                    self.settle(target)
                    try:
                        self.execute(self.script.targets[target])
                        raise ModelError(f"resume target {target} does not end in eret")
                    except _EretTaken:
                        pass


def expected_log(script: Script, profile: str = "lab") -> list:
    """What the guest's result log must hold after running ``script`` to its end."""
    run = _Run(script, profile)
    try:
        run.execute(script.main)
    except (_Done, _EretTaken) as e:
        raise ModelError(f"main code ended abnormally: {e!r}")
    return run.log
