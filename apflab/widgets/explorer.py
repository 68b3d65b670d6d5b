"""``Explorer``: step one guest through async page faults, and step back again.

    from apflab.widgets import Explorer
    ex = Explorer()             # mini-kernel: memtouch + compute, buffer in swap, APF on
    ex                          # (in a notebook) buttons, views, fault injection
    ex.run_until("stage2_fault"); ex.step_back(); ex.state()

How stepping back works (deterministic replay): every button press is an *action*
appended to ``actions``.  To go back, the explorer builds a fresh machine from the same seed
and replays every action but the last.  The same seed gives the same trace byte for byte, so
the replayed machine is exactly where the student was one action ago; the explorer proves it
by comparing the trace digest, PC, clock and instruction count with the fingerprint it took
after that action, and raises ``InvariantError`` if they differ.  Fault injection (evict a
page, change the swap latency, APF off, mask the PE, fill the APF queue) goes through the
same action list, so it is replayed too.

Several vCPUs: a selector picks the vCPU whose registers, PC/disassembly, clock, SDEI PE
and APF queue are shown (and which the host-side injections act on: those actions carry
the vCPU); the trace view can show only its records. Selecting is a view choice, not an
action: stepping still steps the whole machine (every vCPU, interleaved in virtual time).

The explorer reads the machine only through apflab's public surface (``Machine``, the
trace, ``sdei.snapshot()``, ``apf.snapshot()``, ``stage2`` queries) and injects only through
the owning services' methods (``stage2.evict``, the swap store's ``set_read_latency``,
``apf.set_allowed``, ``sdei.set_pe_masked``, ``apf.fill_queue``/``release_queue``,
``apf.wake_all``); it never touches unicorn. Its guest is built by ``apflab.scenarios.build``,
so what a student steps through is exactly what the "memtouch" scenario measures.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Callable

import ipywidgets as W

from .. import guest
from ..apf import ASYNC_PF_PER_VCPU
from ..backing import make_store
from ..errors import ApflabError, InvariantError, ParameterError
from ..host import RunStop
from ..machine import Machine
from ..scenarios import Setup, build
from ..stage2 import PageState
from ..trace import Record

PAGE = guest.PAGE_SIZE
STOP_KINDS = {"fault": "stage2_fault", "sdei": "sdei_dispatch", "irq": "irq",
              "ready": "apf_page_ready"}
PAGE_COLORS = {PageState.ABSENT: "#E0E0E0", PageState.RESIDENT: "#4C78A8",
               PageState.SWAPPED: "#F58518", PageState.REMOTE: "#B279A2",
               PageState.INFLIGHT: "#EECA3B"}
KIND_COLORS = {"stage2_fault": "#C0392B", "stall": "#C0392B", "apf_fallback": "#C0392B",
               "apf_not_present": "#2F8F2A", "apf_page_ready": "#2F8F2A", "apf_page_in_done": "#2F8F2A",
               "apf_ack": "#2F8F2A", "sdei_dispatch": "#8E44AD", "sdei_complete": "#8E44AD",
               "irq": "#1F618D", "stop": "#000000"}
LOG_LINES = 15

DEFAULTS = {
    "npages": 32,            # memtouch buffer pages
    "rounds": 1000,          # passes over the buffer (many: the walk never ends while exploring)
    "limit_pages": 16,       # host memory limit for everything but the pinned kernel
    "store": "ssd",          # "ssd" or "hdd" swap
    "latency_ns": None,      # None: the store's median read latency
    "tick_ns": guest.DEFAULT_TICK_NS,
    "calc_thread": True,     # a compute task beside memtouch
    "apf": True,             # the host offers APF
    "delivery": "sdei",      # how "page not present" reaches the guest (sdei, irq, abort, halt)
    "ram_mib": 16,
}


GuestSetup = Setup      # the explorer's guest is a scenario Setup (kept under its old name)


def build_guest(seed: int = 0, **params) -> Setup:
    """The "memtouch" scenario's machine (memtouch + a compute task, buffer in swap, under the
    host memory limit), built by ``apflab.scenarios.build`` and not yet run.

    Keys of ``DEFAULTS``; ``apf`` and ``delivery`` choose the design ("sync" is ``apf=False``).
    """
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise ParameterError(f"unknown parameter {unknown[0]!r}; known: {', '.join(DEFAULTS)}")
    p = {**DEFAULTS, **params}
    apf, delivery = bool(p.pop("apf")), p.pop("delivery")
    return build("memtouch", apf=apf, delivery=delivery, seed=seed, **p)


# ---------------------------------------------------------------------- host-side injections
# Thin front-end helpers: each is one call to the owning service's method.

def set_pe_masked(m: Machine, masked: bool, vcpu: int = 0) -> None:
    """What SDEI_PE_MASK / PE_UNMASK do to vCPU ``vcpu``'s PE, done from the host side."""
    m.sdei_of(vcpu).set_pe_masked(masked)


def fill_apf_slots(m: Machine, vcpu: int = 0) -> int:
    """Hold every slot of vCPU ``vcpu``'s APF queue until ``release_apf_slots``: its next
    faults that need I/O fall back with "queue_full" (KVM's ASYNC_PF_PER_VCPU cap, per vCPU).
    Returns the slots held."""
    return m.apf_of(vcpu).fill_queue()


def release_apf_slots(m: Machine, vcpu: int = 0) -> int:
    """Give back the slots ``fill_apf_slots`` held; returns how many."""
    return m.apf_of(vcpu).release_queue()


def set_swap_latency(m: Machine, kind: str, latency_ns: int | None) -> dict:
    """Future page-ins read at ``kind``'s median latency and spread (or ``latency_ns``).

    The swap device's number of parallel channels cannot change under a running machine
    (reads already queued hold them): it stays as built.  Returns the store's description.
    """
    ref = make_store(kind, **({} if latency_ns is None else {"latency_ns": latency_ns}))
    swap = m.stage2.swap
    if swap is None:
        raise ParameterError("this machine has no swap store")
    swap.set_read_latency(ref.latency_ns, ref.jitter)
    return swap.describe()


def _bare_setup(m: Machine, seed: int) -> Setup:
    """A factory's plain Machine, seen as a Setup with no scenario parameters."""
    return Setup("custom", m, dict(m.symbols), {}, m.apf is not None and m.apf.allowed,
                 m.delivery, seed, [], [], [])


# ---------------------------------------------------------------------- the explorer

class Explorer:
    """A machine explorer for one guest: step, run to the next event, step back, inject.

    ``factory``: ``factory(seed)`` returns a ready ``Machine`` or a ``GuestSetup``; it must
    build the same machine for the same seed (step-back replays on a fresh one).  Without
    it, ``build_guest(seed, **params)`` (keys of ``DEFAULTS``).
    """

    def __init__(self, factory: Callable[[int], Machine | GuestSetup] | None = None, *,
                 seed: int = 0, max_instructions: int = 5_000_000, **params):
        if factory is not None and params:
            raise ParameterError("pass either a factory or guest parameters, not both")
        self.seed = seed
        self.params = params
        self.max_instructions = max_instructions
        self._factory = factory
        self.actions: list[tuple] = []
        self._marks: list[dict] = []        # fingerprint after 0, 1, ... len(actions) actions
        self.status = ""
        self.stopped_at: Record | None = None
        self.guest_stopped = False
        self._prev_regs: dict[int, dict[str, int]] = {}
        self._syncing = False
        self.vcpu = 0                       # the vCPU shown (several vCPUs only)
        self.own_records = False            # trace view: only the shown vCPU's records
        self._build_widgets()
        self._fresh()
        self._marks = [self._fingerprint()]
        self.refresh()

    # ------------------------------------------------------------------ building and replay
    def _fresh(self) -> None:
        made = (self._factory or (lambda s: build_guest(s, **self.params)))(self.seed)
        setup = made if isinstance(made, Setup) else _bare_setup(made, self.seed)
        self.setup = setup
        self.machine = setup.machine
        self.stopped_at = None
        self.guest_stopped = False
        self._labels = {}
        for name, addr in sorted(setup.symbols.items()):
            if not name.startswith((".", "L")):
                self._labels.setdefault(addr, name)
        n = len(self.machine.vcpus)
        if self.vcpu >= n:
            self.vcpu = 0
        options = [(f"vCPU {i}", i) for i in range(n)]
        if list(self.vcpu_picker.options) != options:
            self._syncing = True
            self.vcpu_picker.options = options
            self.vcpu_picker.value = self.vcpu
            self._syncing = False
        shown = n > 1
        self.vcpu_box.layout.display = None if shown else "none"

    def _fingerprint(self) -> dict:
        m = self.machine
        return {"pc": m.vcpu.pc, "now_ns": m.now_ns, "retired": m.host.retired,
                "digest": m.trace.digest()}

    def _apply(self, action: tuple) -> str:
        """Do one action on the machine; returns a line for the status bar."""
        m = self.machine
        kind = action[0]
        if kind == "step":
            stop = m.step(action[1])
            self.stopped_at = None
            return self._after_run(stop, f"stepped {action[1]}")
        if kind == "run_until":
            got = m.run_until(action[1], self.max_instructions)
            if isinstance(got, Record):
                self.stopped_at = got
                return f"stopped at {got.kind} (t={got.t_ns} ns)"
            self.stopped_at = None
            return self._after_run(got, f"no {action[1]} within {self.max_instructions:,} instructions")
        if kind == "evict":
            m.stage2.evict(action[1])
            return f"evicted page {action[1]:#x} to swap"
        if kind == "store":
            desc = set_swap_latency(m, action[1], action[2])
            return (f"swap reads from now on: median {desc['latency_ns']:,} ns, jitter "
                    f"{desc['jitter']} ({desc['channels']} channel(s), as built)")
        # Host-side injections name their vCPU last; without it they act on vCPU 0.
        at = {"apf": 2, "mask": 2, "fill_slots": 1, "release_slots": 1, "wake_all": 1}.get(kind)
        vcpu = action[at] if at is not None and len(action) > at else 0
        apf = m.apf_of(vcpu) if m.apf is not None else None
        on = f" (vCPU {vcpu})" if len(m.vcpus) > 1 else ""
        if kind == "apf":
            apf.set_allowed(action[1])
            line = f"APF {'allowed' if action[1] else 'not allowed'}: future faults " + \
                ("may be asynchronous" if action[1] else "stall (reason apf_disabled)")
            real = list(apf.work.values())
            if real and not action[1]:
                line += (f"; {len(real)} async page-in(s) still outstanding: watch how their "
                         "page-ready notices and the guest's IRQ_ACK fare")
            return line + on
        if kind == "mask":
            set_pe_masked(m, action[1], vcpu)
            return ("PE masked: SDEI events wait, faults stall (pe_masked)" if action[1]
                    else "PE unmasked") + on
        if kind == "fill_slots":
            return (f"holding all {fill_apf_slots(m, vcpu)} APF slots until released: the next "
                    "faults that need I/O fall back (queue_full)" + on)
        if kind == "release_slots":
            return f"released {release_apf_slots(m, vcpu)} held slot(s)" + on
        if kind == "wake_all":
            apf.wake_all()
            return "queued a wake-all (token 0xffffffff)" + on
        raise InvariantError(f"unknown explorer action {action!r}")

    def _after_run(self, stop, what: str) -> str:
        if isinstance(stop, RunStop):
            self.guest_stopped = True
            return f"guest executed brk #0 at {stop.pc:#x}: it has finished"
        return what

    def do(self, *action) -> str:
        """Record and apply one action (what every button does)."""
        action = tuple(action)
        self.actions.append(action)
        try:
            self.status = self._apply(action)
        except ApflabError as e:
            # The machine may have moved before the error: keep the action so replay
            # reproduces it (it raises the same way again).
            self.status = f"error: {e}"
        self._marks.append(self._fingerprint())
        self.refresh()
        return self.status

    def step_back(self) -> str:
        """Undo the last action by replaying all the others on a fresh machine."""
        if not self.actions:
            self.status = "nothing to undo: this is the fresh machine"
            self.refresh()
            return self.status
        undone = self.actions.pop()
        self._marks.pop()
        self._replay(self.actions)
        self.status = (f"stepped back over {_describe(undone)}: replayed {len(self.actions)} "
                       "action(s) on a fresh machine; pc, clock and trace digest match")
        self.refresh()
        return self.status

    def _replay(self, actions: list[tuple]) -> None:
        self._fresh()
        status = ""
        for a in actions:
            try:
                status = self._apply(a)
            except ApflabError as e:
                status = f"error: {e}"
        now = self._fingerprint()
        want = self._marks[-1]
        if now != want:
            raise InvariantError(f"replay diverged: expected {want}, got {now} "
                                 "(the same seed and actions must give the same trace)")
        self._last_replay_status = status

    def reset(self, **params) -> str:
        """A fresh machine; ``params`` (guest parameters) replace the current ones."""
        if params:
            if self._factory is not None:
                raise ParameterError("this explorer uses a factory: it has no guest parameters")
            self.params = {**self.params, **params}
        self.actions = []
        self._fresh()
        self._marks = [self._fingerprint()]
        self.status = "fresh machine" + (f" with {params}" if params else "")
        self.refresh()
        return self.status

    # ------------------------------------------------------------------ actions by name
    def step(self, n: int = 1) -> str:
        return self.do("step", int(n))

    def run_until(self, kind: str) -> str:
        return self.do("run_until", STOP_KINDS.get(kind, kind))

    def evict(self, page) -> str:
        """Evict a buffer page (index into the buffer) or the page of a guest address."""
        try:
            gpn = self._gpn_of(page)
        except (ValueError, ApflabError) as e:
            self.status = f"cannot evict {page!r}: {e}"
            self.refresh()
            return self.status
        s2 = self.machine.stage2
        state = s2.state(gpn)
        if gpn in s2.pinned or state != PageState.RESIDENT:
            why = "it is pinned (kernel)" if gpn in s2.pinned else f"it is {state.name.lower()}"
            self.status = f"cannot evict page {gpn:#x}: {why}; only resident pages can be evicted"
            self.refresh()
            return self.status
        return self.do("evict", gpn)

    def set_store(self, kind: str, latency_ns: int | None = None) -> str:
        return self.do("store", kind, latency_ns if latency_ns else None)

    # Injections act on the vCPU shown; on vCPU 0 the actions keep their one-vCPU form.
    def _on(self) -> tuple:
        return (self.vcpu,) if self.vcpu else ()

    def set_apf(self, allowed: bool) -> str:
        return self.do("apf", bool(allowed), *self._on())

    def mask_pe(self, masked: bool = True) -> str:
        return self.do("mask", bool(masked), *self._on())

    def fill_slots(self) -> str:
        return self.do("fill_slots", *self._on())

    def release_slots(self) -> str:
        return self.do("release_slots", *self._on())

    def wake_all(self) -> str:
        return self.do("wake_all", *self._on())

    def select_vcpu(self, vcpu: int) -> None:
        """Show vCPU ``vcpu`` (registers, PC, clock, SDEI PE, APF queue); not an action."""
        n = len(self.machine.vcpus)
        if not isinstance(vcpu, int) or isinstance(vcpu, bool) or not 0 <= vcpu < n:
            raise ParameterError(f"vcpu must be an index in [0, {n}), got {vcpu!r}")
        self.vcpu = vcpu
        if self.vcpu_picker.value != vcpu:
            self._syncing = True
            self.vcpu_picker.value = vcpu
            self._syncing = False
        self.refresh()

    def show_own_records(self, only: bool = True) -> None:
        """Trace view: only the shown vCPU's records (True) or every record (False)."""
        self.own_records = bool(only)
        if self.own_filter.value != self.own_records:
            self._syncing = True
            self.own_filter.value = self.own_records
            self._syncing = False
        self.refresh()

    def _recent(self) -> list[Record]:
        recs = self.machine.trace.records
        if not (self.own_records and len(self.machine.vcpus) > 1):
            return recs[-LOG_LINES:]
        out = []
        for r in reversed(recs):
            if r.get("vcpu") == self.vcpu:
                out.append(r)
                if len(out) == LOG_LINES:
                    break
        return out[::-1]

    def _gpn_of(self, page) -> int:
        s2 = self.machine.stage2
        buf = self.setup.buffer
        if isinstance(page, str):
            text = page.strip().replace("_", "")
            if not text:
                raise ValueError("empty input")
            page = int(text, 0)
        if not isinstance(page, int) or page < 0:
            raise ValueError("a page index or a guest address")
        if buf is not None and page < len(buf):
            return s2.gpn_of(buf[page])
        if not s2.in_ram(page):
            raise ValueError(f"{page:#x} is neither a buffer page index nor a guest RAM address")
        return s2.gpn_of(page)

    # ------------------------------------------------------------------ state for tests
    def buffer_gpns(self) -> list[int]:
        s2 = self.machine.stage2
        buf = self.setup.buffer
        if buf is not None:
            return [s2.gpn_of(a) for a in buf]
        pinned = s2.pinned
        used = [g for g in range(s2.npages) if g not in pinned and s2.state(g) != PageState.ABSENT]
        return used[:1024]

    def state(self) -> dict:
        """Plain values: where the machine is, what happened last, and the action list."""
        m = self.machine
        tr = m.trace
        states = [m.stage2.state(g) for g in self.buffer_gpns()]
        summary = {s.name.lower(): 0 for s in PageState}
        for s in states:
            summary[s.name.lower()] += 1
        i = self.vcpu
        apf = m.apf_of(i).snapshot() if m.apf is not None else {}
        sdei = m.sdei_of(i).snapshot() if m.sdei is not None else {}
        v = m.vcpus[i]
        return {
            "vcpu": i, "pc": v.pc, "el": v.el, "now_ns": m.now_ns, "retired": m.host.retired,
            "vcpus": [self._vcpu_state(k) for k in range(len(m.vcpus))],
            "digest": tr.digest(),
            "last_record": tr.records[-1].kind if tr.records else None,
            "stopped_at": self.stopped_at.as_dict() if self.stopped_at else None,
            "guest_stopped": self.guest_stopped,
            "counts": dict(tr.counts),
            "pages": summary, "page_states": [s.name.lower() for s in states],
            "recent": [r.as_dict() for r in self._recent()],
            "apf": {"allowed": apf.get("allowed"), "enabled": apf.get("enabled"),
                    "outstanding": len(apf.get("outstanding", ())), "held": apf.get("reserved", 0),
                    "fallbacks": apf.get("fallbacks", {})},
            "sdei": {"masked": sdei.get("masked"), "running": sdei.get("running", [])},
            "actions": list(self.actions), "status": self.status,
        }

    def _vcpu_state(self, k: int) -> dict:
        st = self.machine.host.cpus[k]
        v = self.machine.vcpus[k]
        return {"vcpu": k, "pc": v.pc, "el": v.el, "now_ns": st.now, "retired": st.retired,
                "power": st.power.name.lower(), "halted": st.halted}

    # ------------------------------------------------------------------ widgets
    def _build_widgets(self) -> None:
        B = W.Button
        lay = W.Layout(width="auto")
        self.buttons = {
            "step1": B(description="step 1", tooltip="one guest instruction", layout=lay),
            "step100": B(description="step 100", tooltip="100 guest instructions", layout=lay),
            "fault": B(description="→ fault", tooltip="run to the next stage-2 fault", layout=lay),
            "sdei": B(description="→ SDEI", tooltip="run to the next SDEI dispatch", layout=lay),
            "irq": B(description="→ IRQ", tooltip="run to the next interrupt taken", layout=lay),
            "ready": B(description="→ page ready", tooltip="run to the next APF page-ready notice",
                       layout=lay),
            "back": B(description="◀ step back", tooltip="undo the last action (replays the others)",
                      button_style="warning", layout=lay),
            "reset": B(description="reset", tooltip="a fresh machine; forgets every action", layout=lay),
            "evict": B(description="evict page", button_style="danger", layout=lay),
            "store_apply": B(description="apply to future page-ins", layout=lay),
            "store_rebuild": B(description="rebuild with this store", layout=lay),
            "apf": B(description="APF: allowed", tooltip="the host offers async page faults", layout=lay),
            "mask": B(description="PE: unmasked", tooltip="SDEI PE mask, set from the host", layout=lay),
            "fill": B(description="fill APF slots", layout=lay,
                      tooltip=f"occupy all {ASYNC_PF_PER_VCPU} work slots: next faults fall back (queue_full)"),
            "release": B(description="release slots", layout=lay),
            "wake_all": B(description="wake all", tooltip="send token 0xffffffff (wake every waiter)",
                          layout=lay),
        }
        b = self.buttons
        b["step1"].on_click(lambda _: self.step(1))
        b["step100"].on_click(lambda _: self.step(100))
        for key in STOP_KINDS:
            b[key].on_click(lambda _, k=key: self.run_until(k))
        b["back"].on_click(lambda _: self._guard(self.step_back))
        b["reset"].on_click(lambda _: self.reset())
        b["evict"].on_click(lambda _: self.evict(self.page_input.value))
        b["store_apply"].on_click(lambda _: self.set_store(self.store_input.value, self.latency_input.value))
        b["store_rebuild"].on_click(lambda _: self._rebuild_with_store())
        b["apf"].on_click(lambda _: self.set_apf(not self.machine.apf_of(self.vcpu).allowed))
        b["mask"].on_click(lambda _: self.mask_pe(not self.machine.sdei_of(self.vcpu).pe.masked))
        b["fill"].on_click(lambda _: self.fill_slots())
        b["release"].on_click(lambda _: self.release_slots())
        b["wake_all"].on_click(lambda _: self.wake_all())

        self.vcpu_picker = W.ToggleButtons(options=[("vCPU 0", 0)], value=0, description="show",
                                           tooltip="the vCPU whose registers, PC and services are shown")
        self.vcpu_picker.observe(self._on_pick, names="value")
        self.own_filter = W.Checkbox(value=False, description="trace: only this vCPU's records",
                                     indent=False)
        self.own_filter.observe(self._on_filter, names="value")
        self.vcpu_box = W.HBox([self.vcpu_picker, self.own_filter])
        self.page_input = W.Text(value="0", description="page", placeholder="index or 0x address",
                                 layout=W.Layout(width="240px"))
        self.store_input = W.Dropdown(options=["ssd", "hdd"], value=self.params.get("store", "ssd"),
                                      description="store", layout=W.Layout(width="160px"))
        self.latency_input = W.IntText(value=self.params.get("latency_ns") or 0, description="latency ns",
                                       tooltip="0: the store's median", layout=W.Layout(width="220px"))
        self.store_note = W.HTML(
            "<small>apply: median latency and jitter of future page-ins change now; the swap "
            "device's parallel channels stay as built (ssd 32, hdd 1). rebuild: a fresh machine "
            "with this store (forgets the actions).</small>")
        self.header = W.HTML()
        self.disasm_view = W.HTML()
        self.regs_view = W.HTML()
        self.sdei_view = W.HTML()
        self.apf_view = W.HTML()
        self.page_view = W.HTML()
        self.log_view = W.HTML()
        self.status_view = W.HTML()
        box = W.Layout(border="1px solid #ddd", padding="4px", margin="2px")
        self.widget = W.VBox([
            self.header,
            self.vcpu_box,
            W.HBox([b["step1"], b["step100"], b["fault"], b["sdei"], b["irq"], b["ready"],
                    b["back"], b["reset"]]),
            self.status_view,
            W.HBox([W.VBox([W.HTML("<b>disassembly</b>"), self.disasm_view], layout=box),
                    W.VBox([W.HTML("<b>registers</b>"), self.regs_view], layout=box)]),
            W.HBox([W.VBox([W.HTML("<b>SDEI</b>"), self.sdei_view], layout=box),
                    W.VBox([W.HTML("<b>APF</b>"), self.apf_view], layout=box)]),
            W.VBox([W.HTML("<b>stage-2 pages of the workload buffer</b>"), self.page_view], layout=box),
            W.VBox([W.HTML(f"<b>last {LOG_LINES} trace records</b> (with several vCPUs each names "
                           "its vCPU)"), self.log_view], layout=box),
            W.VBox([W.HTML("<b>fault injection</b> (recorded as actions: step back replays them)"),
                    W.HBox([self.page_input, b["evict"]]),
                    W.HBox([self.store_input, self.latency_input, b["store_apply"], b["store_rebuild"]]),
                    self.store_note,
                    W.HBox([b["apf"], b["mask"], b["fill"], b["release"], b["wake_all"]])], layout=box),
        ])

    def _on_pick(self, change) -> None:
        if not self._syncing:
            self.select_vcpu(change["new"])

    def _on_filter(self, change) -> None:
        if not self._syncing:
            self.show_own_records(change["new"])

    def _guard(self, fn) -> None:
        try:
            fn()
        except ApflabError as e:
            self.status = f"error: {e}"
            self.refresh()

    def _rebuild_with_store(self) -> None:
        if self._factory is not None:
            self.status = "this explorer uses a factory: rebuild is not available; use apply"
            self.refresh()
            return
        self.reset(store=self.store_input.value, latency_ns=self.latency_input.value or None)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ------------------------------------------------------------------ views
    def refresh(self) -> None:
        m = self.machine
        apf_on = m.apf is not None and m.apf_of(self.vcpu).allowed
        masked = m.sdei is not None and m.sdei_of(self.vcpu).pe.masked
        b = self.buttons
        b["apf"].description = "APF: allowed" if apf_on else "APF: off"
        b["apf"].button_style = "success" if apf_on else ""
        b["mask"].description = "PE: masked" if masked else "PE: unmasked"
        b["mask"].button_style = "danger" if masked else ""
        b["back"].disabled = not self.actions
        self.header.value = self._header_html()
        self.status_view.value = f"<code>{html.escape(self.status)}</code>" if self.status else ""
        self.disasm_view.value = self._disasm_html()
        self.regs_view.value = self._regs_html()
        self.sdei_view.value = self._sdei_html()
        self.apf_view.value = self._apf_html()
        self.page_view.value = self._pages_html()
        self.log_view.value = self._log_html()

    def _current_task(self):
        addr = self.setup.symbols.get("current_task")
        if addr is None:
            return None
        v = self.machine.read_u64(addr)
        return None if v >> 63 else v

    def _header_html(self) -> str:
        m = self.machine
        task = self._current_task()
        where = "idle/kernel" if task is None else f"task {task}"
        done = " — <b>guest finished (brk #0)</b>" if self.guest_stopped else ""
        rec = self.stopped_at
        if rec is not None and rec.get("pc") is not None:
            # The run stops after the host handled the event (an SDEI may already be
            # dispatched), so the PC below can be the handler's: show where it happened.
            done += f"<br>stopped at <b>{rec.kind}</b> raised at pc {rec.get('pc'):#x}"
        v = m.vcpus[self.vcpu]
        line = (f"<b>pc</b> {v.pc:#x} &nbsp; <b>EL</b>{v.el} &nbsp; <b>t</b> = "
                f"{m.now_ns:,} ns &nbsp; <b>retired</b> {m.host.retired:,} &nbsp; <b>running</b> "
                f"{where} &nbsp; <b>actions</b> {len(self.actions)} &nbsp; <b>seed</b> {self.seed}{done}")
        if len(m.vcpus) > 1:
            per = []
            for s in (self._vcpu_state(k) for k in range(len(m.vcpus))):
                state = "halted" if s["halted"] and s["power"] == "on" else s["power"]
                text = (f"vCPU {s['vcpu']}: {state}, pc {s['pc']:#x}, t = {s['now_ns']:,} ns, "
                        f"{s['retired']:,} insns")
                per.append(f"<b>{text}</b>" if s["vcpu"] == self.vcpu else text)
            line = (f"<b>showing vCPU {self.vcpu}</b> (t, retired: the machine's) &nbsp; " + line
                    + "<br><small>" + "<br>".join(per) + "</small>")
        return line

    def _disasm_html(self) -> str:
        m = self.machine
        v = m.vcpus[self.vcpu]
        pc = v.pc
        lines = m.program.lines if m.program is not None else {}
        out = []
        for addr in range(pc - 20, pc + 24, 4):
            if addr in self._labels:
                out.append(f"<span style='color:#888'>{html.escape(self._labels[addr])}:</span>")
            insn = v.disasm_at(addr).replace("\t", " ")
            src = lines.get(addr)
            note = f"  <span style='color:#888'>// line {src[0]}</span>" if src else ""
            text = f"{'▶' if addr == pc else ' '} {addr:#010x}  {html.escape(insn)}{note}"
            out.append(f"<b style='background:#FFF3B0'>{text}</b>" if addr == pc else text)
        return "<pre style='margin:0;font-size:12px'>" + "\n".join(out) + "</pre>"

    def _regs_html(self) -> str:
        regs = self.machine.regs(vcpu=self.vcpu)
        prev = self._prev_regs.get(self.vcpu)
        self._prev_regs[self.vcpu] = regs

        def cell(name):
            v = regs[name]
            text = f"{name:>6} {v:016x}"
            return f"<b style='color:#C0392B'>{text}</b>" if prev and prev.get(name) != v else text
        names = [f"x{i}" for i in range(31)] + ["sp", "pc", "pstate"]
        rows = [" ".join(cell(n) for n in names[i:i + 3]) for i in range(0, len(names), 3)]
        ps = regs["pstate"]
        flags = "".join(c if ps >> bit & 1 else "-" for c, bit in
                        (("N", 31), ("Z", 30), ("C", 29), ("V", 28), ("D", 9), ("A", 8), ("I", 7), ("F", 6)))
        rows.append(f"  EL{(ps >> 2) & 3}{'h' if ps & 1 else 't'}  flags {flags}")
        return "<pre style='margin:0;font-size:12px'>" + "\n".join(rows) + "</pre>"

    def _sdei_html(self) -> str:
        if self.machine.sdei is None:
            return "<i>no SDEI service</i>"
        s = self.machine.sdei_of(self.vcpu).snapshot()
        rows = "".join(
            f"<tr><td>{n}</td><td>{html.escape(e['name'])}</td><td>{e['priority']}</td>"
            f"<td>{'✓' if e['registered'] else ''}</td><td>{'✓' if e['enabled'] else ''}</td>"
            f"<td>{'✓' if e['running'] else ''}</td><td>{'✓' if e['pending'] else ''}</td>"
            f"<td>{e['entry']:#x}</td></tr>" for n, e in s["events"].items())
        running = ", ".join(map(str, s["running"])) or "none"
        return (f"PE <b>{'masked' if s['masked'] else 'unmasked'}</b>; handlers running: {running}"
                "<table style='font-size:12px'><tr><th>#</th><th>event</th><th>prio</th><th>reg</th>"
                f"<th>en</th><th>run</th><th>pend</th><th>entry</th></tr>{rows}</table>")

    def _apf_html(self) -> str:
        if self.machine.apf is None:
            return "<i>no APF service</i>"
        a = self.machine.apf_of(self.vcpu).snapshot()
        out = a["outstanding"]
        rows = "".join(
            f"<tr><td>{w['token']:#x}</td><td>{'placeholder' if w['gpn'] < 0 else hex(w['gpn'])}</td>"
            f"<td>{w['state']}</td><td>{'' if w['task'] is None else w['task']}</td>"
            f"<td>{w['done_ns']:,}</td></tr>" for w in out[:8])
        more = f"<tr><td colspan=5>… {len(out) - 8} more</td></tr>" if len(out) > 8 else ""
        fb = ", ".join(f"{k}={v}" for k, v in sorted(a["fallbacks"].items())) or "none"
        notified = "none" if a["notified"] is None else hex(a["notified"])
        return (f"guest enabled <b>{a['enabled']}</b>, host allows <b>{a['allowed']}</b><br>"
                f"slots used {len(out)}/{ASYNC_PF_PER_VCPU}; page-ready awaiting ack: {notified}; "
                f"ready queue: {len(a['ready_queue'])}<br>"
                f"not present {a['not_present']}, page ready {a['page_ready']}; fallbacks: {fb}"
                "<table style='font-size:12px'><tr><th>token</th><th>gpn</th><th>state</th>"
                f"<th>task</th><th>done at ns</th></tr>{rows}{more}</table>")

    def _pages_html(self) -> str:
        s2 = self.machine.stage2
        gpns = self.buffer_gpns()
        cells = []
        counts = dict.fromkeys(PageState, 0)
        for i, g in enumerate(gpns):
            st = s2.state(g)
            counts[st] += 1
            cells.append(f"<div title='page {i}: gpn {g:#x} ({s2.ipa_of(g):#x}) {st.name.lower()}' "
                         f"style='width:12px;height:12px;background:{PAGE_COLORS[st]};"
                         "display:inline-block;margin:1px'></div>")
        legend = " ".join(f"<span style='color:{PAGE_COLORS[s]}'>■</span> {s.name.lower()} {counts[s]}"
                          for s in PageState)
        limit = s2.limit_pages
        return (f"<div style='line-height:10px'>{''.join(cells)}</div><small>{legend}; host frames "
                f"{s2.resident_pages}/{'∞' if limit is None else limit}</small>")

    def _log_html(self) -> str:
        recs = self._recent()
        lines = []
        for r in recs:
            fields = " ".join(f"{k}={_fmt(k, v)}" for k, v in r.fields)
            color = KIND_COLORS.get(r.kind, "#333")
            lines.append(f"{r.t_ns:>12,}  <b style='color:{color}'>{r.kind:<18}</b> {html.escape(fields)}")
        return "<pre style='margin:0;font-size:12px'>" + "\n".join(lines) + "</pre>"


_HEX_FIELDS = frozenset({"gpn", "ipa", "pc", "token", "entry", "gpa", "esr", "vector", "fid",
                         "pstate", "elr", "far"})


def _fmt(key: str, v) -> str:
    if key in _HEX_FIELDS and isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return hex(v)
    return str(v)


def _describe(action: tuple) -> str:
    return action[0] + ("(" + ", ".join(map(repr, action[1:])) + ")" if len(action) > 1 else "")
