"""Named experiments: a workload + parameters -> a ``ScenarioResult``.

    r = apflab.run_scenario("memtouch", apf=True, calc_thread=True, seed=0)
    print(r.table())

Each scenario echoes every parameter it used (OSTEP style), so a result can
be reproduced from its own record. The three shapes come from the published
measurements in docs/REFERENCES.md ("Published figures"):

- ``memtouch``: one task walks a buffer larger than the host memory limit
  (the arm64 APF v2/v3 test), optionally with a compute task beside it;
  measured: virtual time until the walk finishes.
- ``gleb2010``: page-faulting tasks and compute tasks for a fixed run length
  (Natapov's 2010 x86 benchmark); measured: compute work done.
- ``postcopy``: all of the buffer starts on the migration source; pages are
  fetched on demand while a background stream pushes the rest; measured:
  work done until migration completes.
- ``smp_memtouch``: the memtouch walk on several vCPUs, one walker per vCPU (and
  optionally a compute task beside each); measured: virtual time until every walk
  finishes, and each vCPU's run/stall/idle time.
- ``lock_holder``: on each vCPU a task calls a system call that takes the guest
  kernel's spinlock and reads a swapped page while holding it (a kernel-mode fault no
  delivery design can make asynchronous), beside a compute task; the other vCPUs wait
  for the lock. Measured: time spent spinning, with and without the paravirtual
  "vCPU preempted" flag (``pv_lock``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from . import guest
from .errors import GuestError, ParameterError
from .host import HostCosts
from .machine import Machine
from .stage2 import PageState
from .trace import Trace

PAGE = 4096


@dataclass
class ScenarioResult:
    """What one run measured. Every figure comes from the trace or the guest's counters."""
    name: str
    apf: bool
    seed: int
    params: dict
    elapsed_ns: int
    stall_ns: int
    work: dict                     # task name -> units, plus "total" and "compute"
    faults: int                    # stage-2 faults that needed I/O (swap or migration source)
    apf_not_present: int
    apf_page_ready: int
    fallbacks: dict
    breakdown: dict                # ns per mode: el0, el1, handler, halted, stalled, host
    trace: Trace = field(repr=False)
    kernel: dict = field(repr=False, default_factory=dict)
    instructions: int = 0
    delivery: str = "sdei"         # the design; "sync" when APF is off
    vcpus: list = field(default_factory=list)   # several vCPUs: per vCPU run/stall/steal/idle ns
    lock: dict = field(default_factory=dict)    # lock_holder: spin time, blocked waiters, counter

    @property
    def compute_rate(self) -> float:
        """Compute tasks' work per ms of virtual time (the cover letters' calculation rate)."""
        return self.work.get("compute", 0) / (self.elapsed_ns / 1e6) if self.elapsed_ns else 0.0

    def summary(self) -> dict:
        """The headline numbers as plain values (JSON-ready)."""
        return {"scenario": self.name, "apf": self.apf, "delivery": self.delivery, "seed": self.seed,
                "params": self.params,
                "elapsed_ns": self.elapsed_ns, "stall_ns": self.stall_ns, "work": self.work,
                "compute_rate_per_ms": round(self.compute_rate, 3),
                "faults": self.faults, "apf_not_present": self.apf_not_present,
                "apf_page_ready": self.apf_page_ready, "fallbacks": self.fallbacks,
                "breakdown": self.breakdown, "instructions": self.instructions,
                "trace_digest": self.trace.digest(),
                **({"vcpus": self.vcpus} if self.vcpus else {}), **({"lock": self.lock} if self.lock else {})}

    def row(self) -> dict:
        """One flat row (parameters, headline numbers, fallbacks, time by mode) for CSV/pandas."""
        row = {"scenario": self.name, "apf": self.apf, "delivery": self.delivery, "seed": self.seed,
               **{f"param.{k}": v for k, v in self.params.items()},
               "elapsed_ns": self.elapsed_ns, "stall_ns": self.stall_ns,
               "work_total": self.work.get("total"), "work_compute": self.work.get("compute"),
               "compute_rate_per_ms": round(self.compute_rate, 3),
               "faults": self.faults, "apf_not_present": self.apf_not_present,
               "apf_page_ready": self.apf_page_ready, "trace_digest": self.trace.digest()}
        row.update({f"fallback.{k}": v for k, v in self.fallbacks.items()})
        row.update({f"time.{k}": v for k, v in self.breakdown.items()})
        for v in self.vcpus:
            row.update({f"vcpu{v['vcpu']}.{k}": x for k, x in v.items() if k != "vcpu"})
        if self.lock:
            row.update({f"lock.{k}": x for k, x in self.lock.items() if not isinstance(x, (list, dict))})
        return row

    def to_json(self) -> str:
        return json.dumps(self.summary(), sort_keys=True)

    def table(self) -> str:
        """A small text table for terminals and notebooks."""
        rows = [("scenario", self.name), ("apf", f"on ({self.delivery})" if self.apf else "off"),
                ("seed", self.seed),
                ("elapsed", _ms(self.elapsed_ns)), ("stalled", _ms(self.stall_ns)),
                ("work (total)", self.work.get("total")), ("work (compute)", self.work.get("compute")),
                ("compute rate", f"{self.compute_rate:.1f} units/ms"),
                ("faults needing I/O", self.faults), ("page not present", self.apf_not_present),
                ("page ready", self.apf_page_ready),
                ("fallbacks", ", ".join(f"{k}={v}" for k, v in sorted(self.fallbacks.items())) or "-")]
        rows += [(f"time {k}", _ms(v)) for k, v in self.breakdown.items()]
        for v in self.vcpus:
            rows.append((f"vCPU {v['vcpu']}", f"run {_ms(v['run_ns'])}, stall {_ms(v['stall_ns'])}, "
                                              f"steal {_ms(v['steal_ns'])}, idle {_ms(v['idle_ns'])}"))
        if self.lock:
            rows += [("lock spin (total)", _ms(self.lock["spin_ns"])),
                     ("lock spin per vCPU", ", ".join(_ms(x) for x in self.lock["spin_ns_per_vcpu"])),
                     ("waiters blocked", self.lock["waiters_blocked"])]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms"


# ---------------------------------------------------------------------- parameters

def _check(params: dict, spec: dict) -> dict:
    """Fill defaults, reject unknown names and out-of-range values, echo the result."""
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ParameterError(f"unknown parameter {unknown[0]!r}; known: {', '.join(sorted(spec))}")
    out = {}
    for name, (default, check, why) in spec.items():
        value = params.get(name, default)
        if not check(value):
            raise ParameterError(f"{name}={value!r}: {why}")
        out[name] = value
    return out


def _int_range(lo, hi=None):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo and (hi is None or v <= hi)


_STORES = ("ssd", "hdd")
_COST_FIELDS = set(HostCosts.__dataclass_fields__)
_COMMON = {
    "store": ("ssd", lambda v: v in _STORES, f"must be one of {_STORES}"),
    "latency_ns": (None, lambda v: v is None or _int_range(1)(v), "must be None (store default) or an int >= 1 ns"),
    "tick_ns": (guest.DEFAULT_TICK_NS, _int_range(1_000), "must be an int >= 1000 ns"),
    "ns_per_insn": (1, _int_range(1, 1000), "must be an int in [1, 1000] (virtual ns per guest instruction)"),
    "host_costs": (None, lambda v: v is None or (isinstance(v, dict) and set(v) <= _COST_FIELDS
                                                 and all(_int_range(0)(x) for x in v.values())),
                   f"must be None or a dict of HostCosts fields ({', '.join(HostCosts.__dataclass_fields__)}) "
                   "with int values >= 0"),
    "keep_records": (True, lambda v: isinstance(v, bool),
                     "must be True or False (False: count trace records without keeping them, for huge runs)"),
    "irq_window": (None, lambda v: v is None or v in ("before_retry", "after_retry"),
                   "must be None, 'before_retry' or 'after_retry' (delivery='irq' only: is the "
                   "not-present IRQ taken before the faulting instruction is retried?)"),
}


def _store(p: dict) -> dict:
    return {} if p["latency_ns"] is None else {"latency_ns": p["latency_ns"]}


@dataclass
class Setup:
    """A machine booted and set up for one scenario, not yet run.

    ``build`` makes it; ``run_scenario``, the explorer and the dashboard all start
    from one, so what a student steps through is exactly what a scenario measures.
    """
    name: str
    machine: Machine
    symbols: dict
    params: dict
    apf: bool
    delivery: str
    seed: int
    tasks: list
    task_names: list
    buffers: list                  # per task: range of buffer addresses (one per page) or None

    @property
    def buffer(self) -> range | None:
        """The first task's buffer (the one the explorer's page map shows)."""
        return next((b for b in self.buffers if b is not None), None)

    def run(self) -> "ScenarioResult":
        """Run to the scenario's end and measure."""
        fn = SCENARIOS[self.name].measure
        return fn(self)


def _machine(p: dict, seed: int, apf: bool, delivery: str, ram_mib: int, postcopy=None, **smp) -> Machine:
    """``smp``: Machine keywords of the several-vCPU scenarios (vcpus, pv_lock, pcpus, ...)."""
    from .backing import make_store
    store = make_store(p["store"], **_store(p))
    costs = None if p["host_costs"] is None else HostCosts(**p["host_costs"])
    return Machine(seed=seed, ram_size=ram_mib << 20, store=store, postcopy=postcopy,
                   keep_records=p["keep_records"], ns_per_insn=p["ns_per_insn"], costs=costs,
                   apf=True, delivery=delivery, irq_window=p["irq_window"], **smp)


def _boot(m: Machine, tasks, p: dict, apf: bool, delivery: str, **build):
    """Load the kernel built for ``delivery``; ``apf=False``: the host does not offer APF at all."""
    src = guest.build_source(tasks, tick_ns=p["tick_ns"], apf_enable=delivery != "halt",
                             delivery=delivery, send_always=p.get("send_always", False),
                             ram_size=m.ram_size, **build)
    syms = m.load_asm(src)
    guest.pin_kernel(m, syms)
    guest.attach(m, syms)
    for k in range(len(m.vcpus)):
        m.apf_of(k).set_allowed(apf)      # APF is per vCPU
    return syms


def _prefill_and_swap(m: Machine, buf: range, tag: int = 0) -> None:
    """Write round-0 values into every buffer page, then push them all to swap.

    The guest checks them on its first round: page contents are verified
    after every trip through the backing store.
    """
    for i, addr in enumerate(buf):
        m.write_u64(addr, guest.memtouch_value(tag, 0, i))
    for addr in buf:
        gpn = m.stage2.gpn_of(addr)
        if m.stage2.state(gpn) == PageState.RESIDENT:
            m.stage2.evict(gpn)


def _result(setup: Setup, elapsed_ns: int) -> ScenarioResult:
    m, syms, name = setup.machine, setup.symbols, setup.name
    guest.check_no_panic(m, syms)
    ks = guest.read_kernel_state(m, syms)
    tr = m.trace
    task_names = setup.task_names
    per = [t["work"] for t in ks["tasks"]]
    work = {task_names[i]: per[i] for i in range(len(per))}
    work["total"] = sum(per)
    work["compute"] = sum(per[i] for i, n in enumerate(task_names) if n.startswith("compute"))
    mismatches = sum(t.get("mismatches", 0) for t in ks["tasks"])
    if mismatches:
        raise GuestError(f"{name}: memtouch found {mismatches} corrupted page(s)")
    by_state = tr.tally("stage2_fault")
    faults = sum(by_state.get(k, 0) for k in ("swapped", "remote", "inflight"))
    bd = tr.breakdown()
    return ScenarioResult(
        name=name, apf=setup.apf, seed=setup.seed, params=setup.params, elapsed_ns=elapsed_ns,
        stall_ns=bd["stalled"], work=work, faults=faults,
        apf_not_present=tr.counts.get("apf_not_present", 0),
        apf_page_ready=tr.counts.get("apf_page_ready", 0),
        fallbacks=tr.tally("apf_fallback"), breakdown=bd, trace=tr, kernel=ks,
        instructions=m.host.retired, delivery=setup.delivery if setup.apf else "sync")


# ---------------------------------------------------------------------- the scenarios

MEMTOUCH = {
    **_COMMON,
    "calc_thread": (False, lambda v: isinstance(v, bool), "must be True or False"),
    "npages": (512, _int_range(4, 1 << 18), "must be an int in [4, 262144] (buffer pages)"),
    "rounds": (2, _int_range(1, 1000), "must be an int in [1, 1000]"),
    "allocate": (False, lambda v: isinstance(v, bool),
                 "must be True or False. False (default): the buffer starts in host swap and every "
                 "round reads then writes it (the swap-in phase). True: the walk starts with the "
                 "allocation, as the arm64 cover letters' test writes all memory: in round 0 the guest "
                 "kernel zeroes each fresh page (clear_page) before it is written, while the host "
                 "memory limit pushes earlier pages to swap"),
    "limit_pages": (128, _int_range(2), "must be an int >= 2 (host memory limit for the buffer, pages)"),
    "ram_mib": (16, _int_range(4, 4096), "must be an int in [4, 4096] (guest RAM, MiB)"),
    "max_instructions": (200_000_000, _int_range(1), "must be a positive int"),
}


def _walker_setup(name: str, walker, p: dict, seed: int, apf: bool, delivery: str) -> Setup:
    """One task walking a swapped buffer (``walker``), optionally a compute task beside it,
    under the host memory limit: memtouch and syscall_read."""
    tasks, names = [walker], [walker.entry]
    if p["calc_thread"]:
        tasks.append(guest.compute(measured=False))
        names.append("compute")
    _need_ram(p["npages"], p["ram_mib"])
    m = _machine(p, seed, apf, delivery, p["ram_mib"])
    syms = _boot(m, tasks, p, apf, delivery)
    bufs = guest.task_buffers(tasks)
    if not p.get("allocate", False):
        _prefill_and_swap(m, bufs[0], tag=1)     # else the buffer is fresh: ABSENT pages
    _set_limit(m, syms, p["limit_pages"])
    return Setup(name, m, syms, p, apf, delivery, seed, tasks, names, bufs)


def _build_memtouch(p: dict, seed: int, apf: bool, delivery: str) -> Setup:
    if p["allocate"]:
        walker = guest.memtouch(p["npages"], p["rounds"], tag=1, first_round=0, allocate=True)
    else:
        walker = guest.memtouch(p["npages"], p["rounds"], tag=1, first_round=1)
    return _walker_setup("memtouch", walker, p, seed, apf, delivery)


def _measure_memtouch(setup: Setup) -> ScenarioResult:
    m = setup.machine
    m.run(max_instructions=setup.params["max_instructions"])
    ks = guest.read_kernel_state(m, setup.symbols)
    return _result(setup, ks["tasks"][0]["exit_ns"])


GLEB2010 = {
    **_COMMON,
    # 100 µs per swap-in: fitted, not derived. Natapov's 2010 cover letter names no swap
    # device, so this was picked near where the model reaches his x2 compute work; lab 09
    # sweeps latency_ns, marks the published point and prints the latency it implies.
    "latency_ns": (100_000, lambda v: v is None or _int_range(1)(v), "must be None (store default) or an int >= 1 ns"),
    "fault_tasks": (4, _int_range(1, 4), "must be an int in [1, 4]"),
    "compute_tasks": (4, _int_range(0, 4), "must be an int in [0, 4]"),
    "npages": (96, _int_range(4, 1 << 16), "must be an int in [4, 65536] (pages per faulting task)"),
    "limit_pages": (192, _int_range(2), "must be an int >= 2 (host memory limit for the buffers, pages)"),
    "duration_ns": (50_000_000, _int_range(1_000_000), "must be an int >= 1 ms of virtual time"),
    "ram_mib": (16, _int_range(4, 4096), "must be an int in [4, 4096] (guest RAM, MiB)"),
    "max_instructions": (400_000_000, _int_range(1), "must be a positive int"),
}




def _build_gleb2010(p: dict, seed: int, apf: bool, delivery: str) -> Setup:
    tasks, names = [], []
    for i in range(p["fault_tasks"]):
        tasks.append(guest.memtouch(p["npages"], 1_000_000, tag=i + 1, first_round=1, measured=False))
        names.append(f"memtouch{i}")
    for i in range(p["compute_tasks"]):
        tasks.append(guest.compute(measured=False))
        names.append(f"compute{i}")
    _need_ram(p["npages"] * p["fault_tasks"], p["ram_mib"])
    m = _machine(p, seed, apf, delivery, p["ram_mib"])
    syms = _boot(m, tasks, p, apf, delivery)
    bufs = guest.task_buffers(tasks)
    for i, buf in enumerate(bufs):
        if buf is not None:
            _prefill_and_swap(m, buf, tag=i + 1)
    _set_limit(m, syms, p["limit_pages"])
    return Setup("gleb2010", m, syms, p, apf, delivery, seed, tasks, names, bufs)


def _measure_gleb2010(setup: Setup) -> ScenarioResult:
    m, p = setup.machine, setup.params
    stop = m.host.run(p["max_instructions"], until_ns=p["duration_ns"])
    if stop is not None:
        raise GuestError("gleb2010: the guest stopped before the run length was up")
    return _result(setup, m.now_ns)


POSTCOPY = {
    **_COMMON,
    "calc_thread": (True, lambda v: isinstance(v, bool), "must be True or False"),
    "npages": (512, _int_range(4, 1 << 18), "must be an int in [4, 262144] (buffer pages on the source)"),
    "rtt_ns": (200_000, _int_range(0), "must be an int >= 0 ns"),
    "bandwidth_bytes_per_s": (125_000_000, _int_range(1), "must be an int >= 1 byte/s"),
    "ram_mib": (16, _int_range(4, 4096), "must be an int in [4, 4096] (guest RAM, MiB)"),
    "max_instructions": (400_000_000, _int_range(1), "must be a positive int"),
}


def _build_postcopy(p: dict, seed: int, apf: bool, delivery: str) -> Setup:
    tasks = [guest.memtouch(p["npages"], 1_000_000, tag=1, first_round=1, measured=False)]
    names = ["memtouch"]
    if p["calc_thread"]:
        tasks.append(guest.compute(measured=False))
        names.append("compute")
    _need_ram(p["npages"], p["ram_mib"])
    m = _machine(p, seed, apf, delivery, p["ram_mib"],
                 postcopy={"rtt_ns": p["rtt_ns"], "bandwidth_bytes_per_s": p["bandwidth_bytes_per_s"]})
    syms = _boot(m, tasks, p, apf, delivery)
    bufs = guest.task_buffers(tasks)
    for i, addr in enumerate(bufs[0]):
        m.write_u64(addr, guest.memtouch_value(1, 0, i))
    gpns = [m.stage2.gpn_of(a) for a in bufs[0]]
    m.stage2.make_remote(gpns)          # switch-over: the destination runs, the source holds these
    m.stage2.remote.start_stream(m.now_ns, order=gpns)
    return Setup("postcopy", m, syms, p, apf, delivery, seed, tasks, names, bufs)


def _measure_postcopy(setup: Setup) -> ScenarioResult:
    m = setup.machine
    s2 = m.stage2

    def migrated() -> bool:
        return s2.count(PageState.REMOTE) == 0 and s2.count(PageState.INFLIGHT) == 0
    stop = m.host.run(setup.params["max_instructions"], until=migrated)
    if stop is not None:
        raise GuestError("postcopy: the guest stopped before migration completed")
    return _result(setup, m.now_ns)


SYSCALL_READ = {
    **_COMMON,
    "calc_thread": (True, lambda v: isinstance(v, bool), "must be True or False"),
    "npages": (256, _int_range(4, 1 << 16), "must be an int in [4, 65536] (buffer pages)"),
    "kernel_every": (2, _int_range(1, 1 << 16),
                     "must be an int >= 1: every n-th page is read by the kernel (a system call), "
                     "the others by the task itself"),
    "send_always": (False, lambda v: isinstance(v, bool),
                    "must be True or False: the guest asks for notices in kernel mode too (SEND_ALWAYS)"),
    "rounds": (1, _int_range(1, 1000), "must be an int in [1, 1000]"),
    "limit_pages": (64, _int_range(2), "must be an int >= 2 (host memory limit for the buffer, pages)"),
    "ram_mib": (16, _int_range(4, 4096), "must be an int in [4, 4096] (guest RAM, MiB)"),
    "max_instructions": (200_000_000, _int_range(1), "must be a positive int"),
}


def _build_syscall_read(p: dict, seed: int, apf: bool, delivery: str) -> Setup:
    walker = guest.sysread(p["npages"], p["rounds"], kernel_every=p["kernel_every"], tag=1)
    return _walker_setup("syscall_read", walker, p, seed, apf, delivery)


# ---------------------------------------------------------------------- several vCPUs

def _pcpus_ok(v) -> bool:
    return v is None or _int_range(1, 8)(v)


_SMP = {
    "pcpus": (None, _pcpus_ok, "must be None (a physical CPU per vCPU) or an int in [1, 8] "
                               "(physical CPUs the host has for this VM: fewer than vcpus is overcommit)"),
    "time_slice_ns": (None, lambda v: v is None or _int_range(1_000)(v),
                      "must be None (the host scheduler's default) or an int >= 1000 ns; needs pcpus"),
}

SMP_MEMTOUCH = {
    **_COMMON, **_SMP,
    "vcpus": (2, _int_range(1, 8), "must be an int in [1, 8] (vCPUs; one walker task on each)"),
    "calc_thread": (False, lambda v: isinstance(v, bool),
                    "must be True or False: a compute task beside each walker (then vcpus <= 4, "
                    "the kernel has 8 task slots)"),
    "npages": (64, _int_range(4, 1 << 16), "must be an int in [4, 65536] (buffer pages per walker)"),
    "rounds": (2, _int_range(1, 1000), "must be an int in [1, 1000]"),
    "limit_pages": (64, _int_range(2), "must be an int >= 2 (host memory limit for all the buffers, pages)"),
    "ram_mib": (16, _int_range(4, 4096), "must be an int in [4, 4096] (guest RAM, MiB)"),
    "max_instructions": (200_000_000, _int_range(1), "must be a positive int (all vCPUs together)"),
}


def _smp_machine(p: dict, seed: int, apf: bool, delivery: str, **more) -> Machine:
    if p["time_slice_ns"] is not None and p["pcpus"] is None:
        raise ParameterError("time_slice_ns needs pcpus (the number of physical CPUs)")
    return _machine(p, seed, apf, delivery, p["ram_mib"], vcpus=p["vcpus"], pcpus=p["pcpus"],
                    time_slice_ns=p["time_slice_ns"], **more)


def _build_smp_memtouch(p: dict, seed: int, apf: bool, delivery: str) -> Setup:
    n = p["vcpus"]
    if p["calc_thread"] and 2 * n > guest.TASK_MAX:
        raise ParameterError(f"calc_thread=True with vcpus={n} needs {2 * n} tasks; the guest kernel "
                             f"has {guest.TASK_MAX} task slots (use vcpus <= {guest.TASK_MAX // 2})")
    tasks = [guest.memtouch(p["npages"], p["rounds"], tag=i + 1, first_round=1) for i in range(n)]
    names = [f"memtouch{i}" for i in range(n)]
    if p["calc_thread"]:
        tasks += [guest.compute(measured=False) for _ in range(n)]   # task n + i runs on vCPU i
        names += [f"compute{i}" for i in range(n)]
    _need_ram(p["npages"] * n, p["ram_mib"])
    m = _smp_machine(p, seed, apf, delivery)
    syms = _boot(m, tasks, p, apf, delivery, vcpus=n)
    bufs = guest.task_buffers(tasks)
    for i in range(n):
        _prefill_and_swap(m, bufs[i], tag=i + 1)
    _set_limit(m, syms, p["limit_pages"])
    return Setup("smp_memtouch", m, syms, p, apf, delivery, seed, tasks, names, bufs)


def _smp_result(setup: Setup, elapsed_ns: int) -> ScenarioResult:
    """_result with the time of every vCPU: stall and breakdown summed over the vCPUs."""
    r = _result(setup, elapsed_ns)
    report = setup.machine.cpu_report()
    r.vcpus = report["vcpus"]
    if len(setup.machine.vcpus) > 1:
        tr = setup.machine.trace
        lanes = [tr.breakdown(vcpu=k) for k in range(len(setup.machine.vcpus))]
        r.breakdown = {mode: sum(b.get(mode, 0) for b in lanes) for mode in lanes[0]}
        r.stall_ns = r.breakdown["stalled"]
    return r


def _measure_smp(setup: Setup) -> ScenarioResult:
    m = setup.machine
    m.run(max_instructions=setup.params["max_instructions"])
    ks = guest.read_kernel_state(m, setup.symbols)
    measured = [t for t, spec in zip(ks["tasks"], setup.tasks) if spec.measured]
    return _smp_result(setup, max(t["exit_ns"] for t in measured))


LOCK_HOLDER = {
    **_COMMON, **_SMP,
    "vcpus": (2, _int_range(2, 4), "must be an int in [2, 4] (vCPUs; each runs a lock task and a "
                                   "compute task, and the kernel has 8 task slots)"),
    "npages": (16, _int_range(1, 4096), "must be an int in [1, 4096] (pages each lock task reads "
                                        "under the lock, per round)"),
    "rounds": (2, _int_range(1, 100), "must be an int in [1, 100]"),
    "work": (200, _int_range(0, 1 << 20), "must be an int in [0, 1048576] (loop iterations inside "
                                          "the critical section)"),
    "think": (2000, _int_range(0, 1 << 24), "must be an int in [0, 16777216] (loop iterations in user "
                                            "mode between two lock calls)"),
    "calc_thread": (True, lambda v: isinstance(v, bool),
                    "must be True or False: a compute task on each vCPU (what a blocked waiter's "
                    "vCPU runs instead)"),
    "pv_lock": (False, lambda v: isinstance(v, bool),
                "must be True or False: the host publishes each vCPU's 'preempted' flag "
                "(PV_LOCK_PREEMPTED) and the guest's lock waiters block instead of spinning "
                "while the holder's flag is set"),
    "pv_flag": ("preempted+stalled", lambda v: v in ("preempted", "preempted+stalled"),
                "must be 'preempted' (KVM's meaning: the vCPU lost its physical CPU; needs pcpus "
                "< vcpus to ever be set) or 'preempted+stalled' (the lab's extension, beyond KVM: "
                "also while the vCPU stalls in a synchronous page-in)"),
    "limit_pages": (8, _int_range(2), "must be an int >= 2 (host memory limit for the buffers, pages)"),
    "ram_mib": (16, _int_range(4, 4096), "must be an int in [4, 4096] (guest RAM, MiB)"),
    "max_instructions": (200_000_000, _int_range(1), "must be a positive int (all vCPUs together)"),
}


def _build_lock_holder(p: dict, seed: int, apf: bool, delivery: str) -> Setup:
    n = p["vcpus"]
    tasks = [guest.lockloop(p["npages"], p["rounds"], work=p["work"], think=p["think"], tag=i + 1)
             for i in range(n)]
    names = [f"lock{i}" for i in range(n)]
    if p["calc_thread"]:
        tasks += [guest.compute(measured=False) for _ in range(n)]   # task n + i runs on vCPU i
        names += [f"compute{i}" for i in range(n)]
    _need_ram(p["npages"] * n, p["ram_mib"])
    m = _smp_machine(p, seed, apf, delivery, pv_lock=p["pv_flag"] if p["pv_lock"] else None)
    bufs = guest.task_buffers(tasks)
    if m.pv_lock is not None:
        for b in bufs[:n]:
            m.pv_lock.check_free(b.start, b.stop)
    syms = _boot(m, tasks, p, apf, delivery, vcpus=n, pv_lock=p["pv_lock"])
    for i in range(n):
        _prefill_and_swap(m, bufs[i], tag=i + 1)
    _set_limit(m, syms, p["limit_pages"])
    return Setup("lock_holder", m, syms, p, apf, delivery, seed, tasks, names, bufs)


def _measure_lock_holder(setup: Setup) -> ScenarioResult:
    m, p = setup.machine, setup.params
    m.run(max_instructions=p["max_instructions"])
    ks = guest.read_kernel_state(m, setup.symbols)
    n = p["vcpus"]
    calls = sum(t["calls"] for t in ks["tasks"][:n])
    if ks["lock"]["counter"] != calls or calls != n * p["npages"] * p["rounds"]:
        raise GuestError(f"lock_holder: {calls} lock calls made, lock_counter says "
                         f"{ks['lock']['counter']}: the lock did not exclude")
    r = _smp_result(setup, max(t["exit_ns"] for t in ks["tasks"][:n]))
    cpus = ks["cpus"]
    r.lock = {"spin_ns": sum(c["spin_ns"] for c in cpus),
              "spin_ns_per_vcpu": [c["spin_ns"] for c in cpus],
              "acquired": sum(c["lock_acquired"] for c in cpus),
              "contended": sum(c["lock_contended"] for c in cpus),
              "waiters_blocked": sum(c["lock_blocked"] for c in cpus),
              "wakeup_ipis": sum(c["ipi_sent"] for c in cpus),
              "counter": ks["lock"]["counter"],
              "pv_published": [c["pvlock_state"] >= 0 for c in cpus]}
    return r


def _need_ram(buffer_pages: int, ram_mib: int) -> None:
    need = guest.DEFAULT_BUF_BASE - guest.RAM_BASE + buffer_pages * PAGE
    if need > ram_mib << 20:
        raise ParameterError(f"ram_mib={ram_mib} is too small for {buffer_pages} buffer pages "
                             f"(needs at least {-(-need // (1 << 20))} MiB)")


def _set_limit(m: Machine, syms, limit_pages: int) -> None:
    """A cgroup-like limit: the pinned kernel plus ``limit_pages`` for everything else."""
    m.stage2.set_limit(len(guest.kernel_pages(syms)) + limit_pages)


# ---------------------------------------------------------------------- overcommit: two tenants

OVERCOMMIT = {
    **_COMMON,
    "pcpus": (1, _int_range(1, 8), "must be an int in [1, 8] (physical CPUs the two VMs share)"),
    "vcpus": (1, _int_range(1, 4), "must be an int in [1, 4] (vCPUs of each VM: A runs a walker and a compute "
                                   "task on each, B a compute task on each; the kernel has 8 task slots)"),
    "time_slice_ns": (3_000_000, _int_range(1_000),
                      "must be an int >= 1000 ns (the host scheduler's slice; default 3 ms, CFS's base slice)"),
    "npages": (256, _int_range(4, 1 << 16), "must be an int in [4, 65536] (each of VM A's walker buffers, pages)"),
    "limit_pages": (64, _int_range(2), "must be an int >= 2 (VM A's host memory limit for its buffers, pages)"),
    "duration_ns": (20_000_000, _int_range(1_000_000), "must be an int >= 1 ms of virtual time (the run length)"),
    "ram_mib": (16, _int_range(4, 4096), "must be an int in [4, 4096] (guest RAM of each VM, MiB)"),
    "max_instructions": (400_000_000, _int_range(1), "must be a positive int (both VMs together)"),
}


@dataclass
class TenantsSetup(Setup):
    """``machine`` is VM A (the faulting one, what the explorer shows); ``tenants`` lists
    every VM sharing the host's physical CPUs, A first."""
    tenants: list = field(default_factory=list)


@dataclass
class OvercommitResult(ScenarioResult):
    """A ``ScenarioResult`` for VM A plus the host's view: per VM work, per vCPU time, per
    pCPU utilisation (``pcpu.tenant_report``)."""
    vms: list = field(default_factory=list)
    pcpus: list = field(default_factory=list)
    duration_ns: int = 0
    preemptions: int = 0

    @property
    def guest_rate(self) -> float:
        """VM A's work units per ms of the run: what the guest sees."""
        return self.vms[0]["work"]["total"] / (self.duration_ns / 1e6)

    @property
    def host_rate(self) -> float:
        """Both VMs' work units per pCPU-ms: what the host sells."""
        return sum(v["work"]["total"] for v in self.vms) / (len(self.pcpus) * self.duration_ns / 1e6)

    @property
    def host_rate_instructions(self) -> float:
        """Both VMs' guest instructions per pCPU-ms (counts APF's own guest code as work)."""
        return sum(v["instructions"] for v in self.vms) / (len(self.pcpus) * self.duration_ns / 1e6)

    def table(self) -> str:
        """VM A's table, then one line per VM and per pCPU (the host's view)."""
        lines = [super().table(), ""]
        for v in self.vms:
            c = v["vcpus"][0] if len(v["vcpus"]) == 1 else None
            times = "" if c is None else (f"  run {_ms(c['run_ns'])}, stall {_ms(c['stall_ns'])}, "
                                          f"steal {_ms(c['steal_ns'])}, idle {_ms(c['idle_ns'])}")
            lines.append(f"VM {v['vm']}: work {v['work']['total']} units, {v['instructions']:,} insns{times}")
        lines += [f"pCPU {p['pcpu']}: utilisation {p['utilisation']:.1%}" for p in self.pcpus]
        return "\n".join(lines)

    def summary(self) -> dict:
        out = super().summary()
        out.update({"vms": self.vms, "pcpus": self.pcpus, "duration_ns": self.duration_ns,
                    "preemptions": self.preemptions, "guest_rate_per_ms": round(self.guest_rate, 3),
                    "host_rate_per_pcpu_ms": round(self.host_rate, 3),
                    "host_rate_instructions_per_pcpu_ms": round(self.host_rate_instructions, 1)})
        return out


def overcommit_gains(off: "OvercommitResult", on: "OvercommitResult") -> dict:
    """APF's gain seen two ways, on over off: the guest's (VM A's work per ms) and the host's
    (both VMs' work per pCPU-ms; also in guest instructions)."""
    for r in (off, on):
        if not isinstance(r, OvercommitResult):
            raise ParameterError(f"overcommit_gains takes two overcommit results, got {type(r).__name__}")
    if off.apf or not on.apf:
        raise ParameterError("overcommit_gains(off, on): the first run with APF off, the second with it on")
    ratio = lambda a, b: round(a / b, 4) if b else None     # None: nothing done with APF off
    return {"guest_view": ratio(on.guest_rate, off.guest_rate),
            "host_view": ratio(on.host_rate, off.host_rate),
            "host_view_instructions": ratio(on.host_rate_instructions, off.host_rate_instructions)}


def _tenant(p: dict, seed: int, apf: bool, delivery: str, sched, tasks) -> tuple[Machine, dict]:
    n = p["vcpus"]
    from .backing import make_store
    store = make_store(p["store"], **_store(p))
    costs = None if p["host_costs"] is None else HostCosts(**p["host_costs"])
    m = Machine(seed=seed, ram_size=p["ram_mib"] << 20, store=store, keep_records=p["keep_records"],
                ns_per_insn=p["ns_per_insn"], costs=costs, apf=True, delivery=delivery,
                irq_window=p["irq_window"], pcpus=sched, vcpus=n)
    return m, _boot(m, tasks, p, apf, delivery, vcpus=n)   # task i runs on vCPU i mod n


def _build_overcommit(p: dict, seed: int, apf: bool, delivery: str) -> Setup:
    """VM A: on each of its ``vcpus`` vCPUs a memtouch walker over its own swapped buffer and a
    compute task; VM B: a compute task on each vCPU. They share ``pcpus`` physical CPUs."""
    from .pcpu import HostScheduler
    n = p["vcpus"]
    sched = HostScheduler(p["pcpus"], p["time_slice_ns"])
    _need_ram(p["npages"] * n, p["ram_mib"])
    tasks_a = ([guest.memtouch(p["npages"], 1_000_000, tag=i + 1, first_round=1, measured=False)
                for i in range(n)] + [guest.compute(measured=False) for _ in range(n)])
    names_a = ["memtouch", "compute"] if n == 1 else ([f"memtouch{i}" for i in range(n)]
                                                       + [f"compute{i}" for i in range(n)])
    a, syms_a = _tenant(p, seed, apf, delivery, sched, tasks_a)
    bufs = guest.task_buffers(tasks_a)
    for i in range(n):
        _prefill_and_swap(a, bufs[i], tag=i + 1)
    _set_limit(a, syms_a, p["limit_pages"])
    tasks_b = [guest.compute(measured=False) for _ in range(n)]
    names_b = ["compute"] if n == 1 else [f"compute{i}" for i in range(n)]
    b, syms_b = _tenant(p, seed + 1, apf, delivery, sched, tasks_b)   # its own device jitter
    setup = TenantsSetup("overcommit", a, syms_a, p, apf, delivery, seed, tasks_a, names_a, bufs)
    setup.tenants = [(a, syms_a, names_a), (b, syms_b, names_b)]
    return setup


def _measure_overcommit(setup: Setup) -> ScenarioResult:
    from .pcpu import run_tenants
    p = setup.params
    machines = [m for m, _, _ in setup.tenants]
    rep = run_tenants(machines, p["max_instructions"], until_ns=p["duration_ns"])
    vms = []
    for (m, syms, names), vm in zip(setup.tenants, rep["vms"]):
        guest.check_no_panic(m, syms)
        ks = guest.read_kernel_state(m, syms)
        if any(t.get("mismatches", 0) for t in ks["tasks"]):
            raise GuestError("overcommit: memtouch found corrupted pages")
        work = {names[i]: t["work"] for i, t in enumerate(ks["tasks"])}
        work["total"] = sum(t["work"] for t in ks["tasks"])
        for c in vm["vcpus"]:            # the span each vCPU's times cover: power-on to its clock
            spans, _ = m.trace.lane(c["vcpu"])
            c["start_ns"] = spans[0][0] if spans else None     # None: spans not kept
            c["end_ns"] = m.host.cpus[c["vcpu"]].now
        vms.append({"vm": "AB"[vm["vm"]], "instructions": vm["instructions"], "work": work,
                    "elapsed_ns": vm["elapsed_ns"], "vcpus": vm["vcpus"], "trace_digest": m.trace.digest(),
                    "faults": sum(m.trace.tally("stage2_fault").get(k, 0) for k in ("swapped", "inflight"))})
    base = _result(setup, setup.machine.now_ns)
    fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
    return OvercommitResult(**fields, vms=vms, pcpus=rep["pcpus"], duration_ns=p["duration_ns"],
                            preemptions=rep["preemptions"])


@dataclass(frozen=True)
class ScenarioDef:
    spec: dict
    build: object            # (params, seed, apf, delivery) -> Setup
    measure: object          # Setup -> ScenarioResult
    summary: str


SCENARIOS = {
    "memtouch": ScenarioDef(MEMTOUCH, _build_memtouch, _measure_memtouch,
                            "one task walks a buffer larger than the host memory limit"),
    "gleb2010": ScenarioDef(GLEB2010, _build_gleb2010, _measure_gleb2010,
                            "page-faulting and compute tasks for a fixed run length"),
    "postcopy": ScenarioDef(POSTCOPY, _build_postcopy, _measure_postcopy,
                            "the buffer starts on the migration source"),
    "syscall_read": ScenarioDef(SYSCALL_READ, _build_syscall_read, _measure_memtouch,
                                "a task reads a swapped buffer, every n-th page through a system call "
                                "(kernel mode, IRQs masked)"),
    "overcommit": ScenarioDef(OVERCOMMIT, _build_overcommit, _measure_overcommit,
                              "two VMs share the physical CPUs: A faults (and computes), B computes"),
    "smp_memtouch": ScenarioDef(SMP_MEMTOUCH, _build_smp_memtouch, _measure_smp,
                                "one walker per vCPU, each over its own swapped buffer"),
    "lock_holder": ScenarioDef(LOCK_HOLDER, _build_lock_holder, _measure_lock_holder,
                               "tasks read swapped pages while holding the guest kernel's spinlock; "
                               "the other vCPUs wait for it"),
}
DESIGNS = ("sync", "sdei", "irq", "abort", "halt")


def _common_checks(name, apf, seed, delivery) -> None:
    if not isinstance(name, str) or name not in SCENARIOS:
        raise ParameterError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    if not isinstance(apf, bool):
        raise ParameterError(f"apf must be True or False, got {apf!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ParameterError(f"seed must be an int, got {seed!r}")
    if delivery not in DESIGNS[1:]:
        raise ParameterError(f"unknown delivery design {delivery!r}; choose one of {', '.join(DESIGNS[1:])} "
                             f"(apf=False is the synchronous stall)")


def build(name: str, *, apf: bool = True, delivery: str = "sdei", seed: int = 0, **params) -> Setup:
    """Boot the machine for scenario ``name`` and set it up, without running it."""
    _common_checks(name, apf, seed, delivery)
    sc = SCENARIOS[name]
    p = _check(params, sc.spec)
    if p["irq_window"] is not None and delivery != "irq":
        raise ParameterError(f"irq_window={p['irq_window']!r} applies to delivery='irq' only "
                             f"(got delivery={delivery!r})")
    return sc.build(p, seed, apf, delivery)


def run_scenario(name: str, *, apf: bool, seed: int = 0, delivery: str = "sdei", **params) -> ScenarioResult:
    """Run a named scenario with APF on or off (and, on, a delivery design); see ``parameters(name)``."""
    return build(name, apf=apf, delivery=delivery, seed=seed, **params).run()


def compare(name: str, *, seed: int = 0, delivery: str = "sdei", **params) -> tuple[ScenarioResult, ScenarioResult]:
    """The same scenario with APF off and on: (off, on)."""
    return (run_scenario(name, apf=False, seed=seed, delivery=delivery, **params),
            run_scenario(name, apf=True, seed=seed, delivery=delivery, **params))


def compare_designs(name: str, *, seed: int = 0, designs=DESIGNS, **params) -> dict[str, ScenarioResult]:
    """The same scenario under each design: "sync" (APF off) and the four delivery designs.

    ``irq_window`` is passed to the "irq" design only.
    """
    unknown = [d for d in designs if d not in DESIGNS]
    if unknown or not designs:
        raise ParameterError(f"designs must be a non-empty subset of {DESIGNS}, got {designs!r}")
    out = {}
    for d in designs:
        p = dict(params)
        if d != "irq":
            p.pop("irq_window", None)
        if d == "sync":
            out[d] = run_scenario(name, apf=False, seed=seed, **p)
        else:
            out[d] = run_scenario(name, apf=True, seed=seed, delivery=d, **p)
    return out


def parameters(name: str) -> dict:
    """Each parameter of a scenario with its default and its rule (for --help and widgets)."""
    if name not in SCENARIOS:
        raise ParameterError(f"unknown scenario {name!r}; choose one of {', '.join(SCENARIOS)}")
    return {k: {"default": d, "rule": why} for k, (d, _c, why) in SCENARIOS[name].spec.items()}
