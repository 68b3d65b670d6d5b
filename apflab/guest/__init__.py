"""The guest: an AArch64 mini-kernel with an SDEI + async-page-fault client, and its workloads.

``build_source`` glues ``kernel.S`` + ``workloads.S`` + a generated configuration
(task table, parameter blocks) into one assembly source for ``Machine.load_asm``::

    from apflab import Machine
    from apflab import guest

    tasks = [guest.memtouch(npages=64, rounds=3), guest.compute(iters=200)]
    src = guest.build_source(tasks, tick_ns=100_000)
    m = Machine(seed=0, memory_limit=48 * 4096)
    syms = m.load_asm(src)
    guest.pin_kernel(m, syms)           # the kernel's pages never leave RAM
    guest.attach(m, syms)               # the host attributes time to current_task
    m.run(max_instructions=20_000_000)  # until the kernel's brk #0
    state = guest.read_kernel_state(m, syms)

Several CPUs (``build_source(vcpus=N)``, on ``Machine(vcpus=N)``): CPU 0 boots, sets up
the tasks and starts CPUs 1..N-1 with PSCI CPU_ON; each CPU brings up its own GIC CPU
interface, APF and SDEI clients, paravirtual lock state and timer tick, and schedules the
tasks of its own run queue (task i on CPU i mod N unless ``TaskSpec.cpu`` says otherwise).
Per-CPU variables live in one block per CPU (TPIDR_EL1 points at it): CPU 0's at the labels
below, CPU c's at ``percpu_addr(symbols, name, c)``. ``read_kernel_state(m, syms, cpu=c)``
reads CPU c's; its ``cpus`` entry lists every CPU's counters (``read_cpu_state``).

Memory map (guest RAM starts at 0x4000_0000; the image is loaded there)::

    0x4000_0000  vectors (2 KiB), kernel text, workload text
                 shared kernel data: globals, the kernel lock, per-task arrays,
                 struct task[8], task stacks (8 x 4 KiB)
    percpu0      CPU 0's per-CPU block (PERCPU_SIZE = 8 KiB): apf_data (the 64-byte
                 shared APF block), per-CPU counters, apf_table, sched_log, kstack
                 config_* values, config_task_cpu, task_table, taskN_params (16 u64 each)
    percpu_more  the per-CPU blocks of CPUs 1..N-1 (none with one CPU)
    kernel_end   page aligned: [RAM_BASE, kernel_end) is the kernel (pin it)
    buf_base     workload buffers (default 0x4010_0000), page aligned, laid out in
                 task order; they start ABSENT and are evicted independently

Symbols the host can read (all u64 unless noted; arrays have TASK_MAX = 8 entries;
per-CPU ones are CPU 0's copy):

    current_task        index of the running task, 0xffff_ffff_ffff_ffff (-1) while idle
    need_resched, rr_cursor, exited_mask, stop_reason (1 all exited, 2 stop_mask done)
    wake_next           the task a "page ready" woke, which schedule picks first (-1: none)
    boot_ns, stop_ns    CNTVCT when scheduling began / at the final brk #0
    total_work, ticks, ctx_switches, idle_entries
    irq_entries, irq_spurious (IAR = 1023), irq_unknown, irq_stale_timer
    irq_resched         reschedule IPIs (SGI 0) the SDEI handler sent itself and took
    kernel_panic        0, or 1 unexpected exception, 2 bad EL0 sync, 3 image overlaps
                        the buffers, 4 IRQ at EL1 outside idle; then panic_vector,
                        panic_esr, panic_elr, panic_spsr, panic_far, panic_task
    sdei_version        raw SDEI VERSION result
    sdei_probe_done     bit per successful probe step (SDEI_STEPS order)
    sdei_results        u64[8], raw result of each probe step
    sdei_event          the event registered (-1 if none)
    sdei_dispatches, sdei_bad
    sdei_context        u64[4]: x0-x3 of the last interrupted context, read with EVENT_CONTEXT
    apf_features        VENDOR_HYP_KVM_FEATURES bitmap
    apf_version, apf_slots, apf_sdei_event, apf_irq, apf_enable_ret, apf_enabled
    apf_not_present, apf_page_ready_count, apf_wake_all, apf_dummies, apf_dummy_hits,
    apf_not_parked, apf_table_full, apf_bad_ready
    apf_data            the shared block {u32 reason; u32 token; ...; u32 enabled @60}
    apf_table           128 x {u32 token; u32 kind (0 free, 1 waiter, 2 dummy); u64 task}
    task_state[]        TASK_STATES
    task_work[]         units reported with work_add
    task_parked[]       times parked by "page not present"
    task_wakeups[]      times woken by "page ready"
    task_switches[]     times switched in
    task_syscalls[], task_exit_ns[], task_exit_code[], task_wake_ns[]
    sched_log_len, sched_log   u8 per switch (task index; 0xff = idle), 1024 max
    tasks               struct task[8]: x0..x30, sp_el0, elr, spsr (272 bytes each)
    task_cpu[], task_lock_blocks[]   each task's CPU; times it blocked on the kernel lock
    cpu_id, cur_task_ptr (per CPU); cpus_online (bit per CPU), cpu_on_ret[8] (CPU_ON results)
    klock_next, klock_owner  the ticket spinlock; klock_holder (CPU, -1 free); lock_counter;
                        lock_waiters (bit per task blocked on it, pv_lock); pvlock_state[8]
                        (each CPU's pvlock_vcpu_state IPA, -1 none)
    lock_acquired, lock_contended, spin_ns, spin_loops, lock_blocked, lock_wakeups,
    ipi_sent, pv_features_ret   per-CPU lock statistics (spin_ns: CNTVCT from asking
                        for the lock to getting it, or to blocking)
    kernel_end, config_*, task_table, task<N>_params

Syscall ABI (``svc #0`` from EL0; number in x8, arguments from x0, result in x0; every
other register preserved)::

    0 yield()          -> 0
    1 exit(code)       does not return
    2 work_add(units)  -> 0; task_work[self] += units
    3 gettime()        -> CNTVCT_EL0 (1 GHz: virtual ns)
    4 sleep(ns)        -> 0 after >= ns (tick granularity); -1 at once if there is no tick
    5 getpid()         -> task index
    6 peek(addr)       -> the u64 at addr, read by the kernel (kernel-mode access); -14 if not in the buffers
    7 alloc_page(addr) -> 0 after the kernel zeroed the page (clear_page); -14 if not a buffer page
    8 locked_touch(addr, work, flags) -> the u64 at addr (0: none), read while holding the
                       kernel lock; lock_counter += 1 by a load and a store `work` loop
                       iterations apart; flags bit 0: no lock (racy control); -14 bad addr
    other              -> -38 (ENOSYS)

Configuration (``build_source`` keywords, emitted as ``config_*`` quads)::

    tick_ns       timer tick period (0: no tick, tasks switch on yield/sleep/APF only)
    apf_enable    1: discover and enable APF when the host offers it
    sdei_enable   1: run the SDEI probe at all
    stop_mask     brk #0 once every task in this bit mask has exited (default: the
                  measured tasks); brk #0 also when every task has exited
    buf_base      where workload buffers start
    wake_resched  1: a "page ready" wake-up asks for a reschedule (the woken task runs
                  at the next return to user space rather than at the next tick)
    vcpus         CPUs the kernel brings up (1-8; the machine needs as many vCPUs)
    pv_lock       1: lock waiters block while the holder's vCPU is flagged preempted
    wake_preempt  1 (default, needs wake_resched): the woken task is the one that runs
                  then, before the other runnable tasks, as with Linux's wake-up
                  preemption; the task it preempted runs next after it. 0: the woken
                  task waits for its round-robin turn
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ParameterError

RAM_BASE = 0x4000_0000
PAGE_SIZE = 4096
TASK_MAX = 8
CPU_MAX = 8                        # the kernel's CPU_MAX (MPIDR_EL1.Aff0 0-7, apflab.smp.MAX_VCPUS)
PERCPU_SIZE = 0x2000               # one per-CPU block of kernel.S (percpu0 .. percpu0_end)
PARAMS_QUADS = 16                  # per-task parameter block: inputs 0-7, results 8-15
PARAMS_OUT = 8
DEFAULT_BUF_BASE = RAM_BASE + 0x10_0000
DEFAULT_TICK_NS = 100_000          # 100 us: 10 kHz (Linux uses 250-1000 Hz; emulated time is dear)
DEFAULT_RAM_SIZE = 16 << 20
T_SIZE = 272

TASK_STATES = {0: "unused", 1: "runnable", 2: "apf_wait", 3: "exited", 4: "sleeping", 5: "lock_wait"}
SDEI_STEPS = ("version", "private_reset", "shared_reset", "get_info_priority", "get_info_type",
              "register", "enable", "pe_unmask")
PANIC_REASONS = {1: "unexpected exception", 2: "bad synchronous exception from EL0",
                 3: "kernel image overlaps the workload buffers", 4: "IRQ at EL1 outside the idle loop",
                 5: "a secondary CPU did not come up (PSCI CPU_ON)"}
STOP_REASONS = {0: None, 1: "all tasks exited", 2: "stop_mask tasks exited"}

# Parameter and result slots of each workload (see workloads.S).
WORKLOADS = {
    "memtouch": (("buf", "npages", "rounds", "batch", "stride", "tag", "first_round", "allocate"),
                 ("mismatches", "rounds_done", "touches")),
    "compute": (("iters", "report", "limit"), ("units",)),
    "yield_loop": (("count",), ("done", "pid")),
    "sleeper": (("ns", "count"), ("t_start", "t_end", "sleeps")),
    "sysread": (("buf", "npages", "rounds", "kernel_every", "tag"), ("mismatches", "rounds_done", "touches")),
    "lockloop": (("buf", "npages", "rounds", "work", "flags", "tag", "think"), ("mismatches", "rounds_done", "calls")),
    "lockloop_nopage": (("buf", "npages", "rounds", "work", "flags", "tag", "think"),
                        ("mismatches", "rounds_done", "calls")),
}
_BUFFERED = {"memtouch": 4, "sysread": None, "lockloop": None}     # entry -> index of its stride parameter (None: a page)

# Delivery designs the kernel can be built for (config_apf_delivery); "halt" needs no support.
DELIVERY_IDS = {"sdei": 0, "irq": 1, "abort": 2, "halt": 3}

_HERE = Path(__file__).resolve().parent
_U64 = (1 << 64) - 1


@dataclass
class TaskSpec:
    """One task: the label of its entry point and its parameter block (inputs, up to 8)."""
    entry: str
    params: list[int] = field(default_factory=list)
    measured: bool = True
    cpu: int | None = None         # the CPU whose run queue holds it (None: task index mod vcpus)


# ---------------------------------------------------------------------- task constructors

def memtouch(npages: int, rounds: int = 1, *, buf: int = 0, batch: int = 16, stride: int = PAGE_SIZE,
             tag: int = 0, first_round: int = 0, allocate: bool = False, measured: bool = True) -> TaskSpec:
    """Touch one u64 per page of an ``npages`` buffer, ``rounds`` times; ``buf=0``: laid out by the builder.

    ``allocate``: in round 0 the guest kernel first zeroes each page (syscall alloc_page), the
    work a first touch of fresh anonymous memory costs a Linux guest."""
    return TaskSpec("memtouch", [buf, npages, rounds, batch, stride, tag, first_round, int(allocate)],
                    measured)


def compute(iters: int = 1000, report: int = 16, limit: int = 0, *, measured: bool = True) -> TaskSpec:
    """Busy loop: a work unit per ``iters`` iterations, reported every ``report``; ``limit=0``: for ever."""
    return TaskSpec("compute", [iters, report, limit], measured)


def yield_loop(count: int, *, measured: bool = True) -> TaskSpec:
    return TaskSpec("yield_loop", [count], measured)


def sleeper(ns: int, count: int = 1, *, measured: bool = True) -> TaskSpec:
    return TaskSpec("sleeper", [ns, count], measured)


def sysread(npages: int, rounds: int = 1, *, kernel_every: int = 2, buf: int = 0, tag: int = 0,
            measured: bool = True) -> TaskSpec:
    """Read one u64 per page of a buffer, every ``kernel_every``-th page through the ``peek``
    system call (a kernel-mode access with IRQs masked), the others directly; the values must
    be ``memtouch_value(tag, 0, i)``."""
    return TaskSpec("sysread", [buf, npages, rounds, kernel_every, tag], measured)


def lockloop(npages: int, rounds: int = 1, *, work: int = 200, think: int = 2000, touch: bool = True,
             nolock: bool = False, buf: int = 0, tag: int = 0, measured: bool = True,
             cpu: int | None = None) -> TaskSpec:
    """``npages`` x ``rounds`` calls of locked_touch: the kernel takes its lock, reads page i of
    the buffer while holding it (``touch=False``: no buffer, the lock only), does ``work``
    iterations between a load and a store of ``lock_counter``, releases; then ``think``
    iterations in user mode. ``nolock``: skip the lock (the racy control). The pages must hold
    ``memtouch_value(tag, 0, i)``."""
    entry = "lockloop" if touch else "lockloop_nopage"
    return TaskSpec(entry, [buf if touch else 0, npages, rounds, work, int(bool(nolock)), tag, think],
                    measured, cpu)


def memtouch_value(tag: int, rnd: int, i: int) -> int:
    """What memtouch leaves in page ``i`` after round ``rnd`` (the workloads.S formula)."""
    return (0xA5A5 << 48) | ((tag & 0xFF) << 40) | ((rnd & 0xFF) << 32) | (i & 0xFFFFFFFF)


# ---------------------------------------------------------------------- building

def task_cpus(tasks: list[TaskSpec], vcpus: int) -> list[int]:
    """The CPU of each task: its ``cpu``, or its index mod ``vcpus``."""
    out = []
    for i, t in enumerate(tasks):
        c = i % vcpus if t.cpu is None else t.cpu
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < vcpus:
            raise ParameterError(f"task {i} ({t.entry}): cpu must be an int in [0, {vcpus}), got {c!r}")
        out.append(c)
    return out


def _pages(nbytes: int) -> int:
    return -(-nbytes // PAGE_SIZE)


def resolve_tasks(tasks: list[TaskSpec], buf_base: int = DEFAULT_BUF_BASE) -> list[TaskSpec]:
    """Copies of ``tasks`` with every automatic (``buf == 0``) memtouch buffer given an address.

    Buffers are laid out in task order from ``buf_base``, each starting on a page.
    """
    if buf_base % PAGE_SIZE:
        raise ParameterError(f"buf_base must be page aligned, got {buf_base:#x}")
    out, cursor = [], buf_base
    for t in tasks:
        if t.entry in _BUFFERED and t.params and t.params[0] == 0:
            params = list(t.params)
            params[0] = cursor
            k = _BUFFERED[t.entry]
            npages, stride = params[1], params[k] if k is not None and len(params) > k else PAGE_SIZE
            cursor += _pages(max(1, npages * stride)) * PAGE_SIZE
            t = replace(t, params=params)
        out.append(t)
    return out


def task_buffers(tasks: list[TaskSpec], buf_base: int = DEFAULT_BUF_BASE) -> list[range | None]:
    """Each task's buffer as a range of addresses (step 1 page), or None."""
    out = []
    for t in resolve_tasks(tasks, buf_base):
        if t.entry in _BUFFERED:
            k = _BUFFERED[t.entry]
            buf, npages, stride = t.params[0], t.params[1], PAGE_SIZE if k is None else t.params[k]
            out.append(range(buf, buf + _pages(max(1, npages * stride)) * PAGE_SIZE, PAGE_SIZE))
        else:
            out.append(None)
    return out


def kernel_source() -> str:
    return (_HERE / "kernel.S").read_text()


def workloads_source() -> str:
    return (_HERE / "workloads.S").read_text()


def build_source(tasks: list[TaskSpec], *, tick_ns: int = DEFAULT_TICK_NS, apf_enable: bool = True,
                 sdei_enable: bool = True, stop_mask: int | None = None,
                 buf_base: int = DEFAULT_BUF_BASE, wake_resched: bool = True, wake_preempt: bool = True,
                 ram_size: int = DEFAULT_RAM_SIZE, extra_source: str = "", delivery: str = "sdei",
                 send_always: bool = False, vcpus: int = 1, pv_lock: bool = False) -> str:
    """One assembly source: kernel + workloads + ``extra_source`` + generated config and tasks.

    ``stop_mask`` defaults to the measured tasks: the run stops (``brk #0``) when all of them
    have exited (and in any case when every task has).  ``extra_source`` may define more
    workload entry points for ``TaskSpec.entry``.

    ``vcpus``: the CPUs the kernel brings up (CPU 0 starts the others with PSCI CPU_ON; the
    machine needs as many vCPUs). Task i runs on CPU ``TaskSpec.cpu``, by default i mod
    ``vcpus``; a CPU without tasks idles. ``pv_lock``: the kernel lock's waiters look for the
    host's paravirtual "vCPU preempted" flag and block instead of spinning while it is set.
    """
    if not isinstance(vcpus, int) or isinstance(vcpus, bool) or not 1 <= vcpus <= CPU_MAX:
        raise ParameterError(f"vcpus must be an int in [1, {CPU_MAX}], got {vcpus!r}")
    if delivery not in DELIVERY_IDS:
        raise ParameterError(f"unknown delivery design {delivery!r}; choose one of {', '.join(DELIVERY_IDS)}")
    if not 1 <= len(tasks) <= TASK_MAX:
        raise ParameterError(f"between 1 and {TASK_MAX} tasks, got {len(tasks)}")
    if not isinstance(tick_ns, int) or tick_ns < 0:
        raise ParameterError(f"tick_ns must be an int >= 0, got {tick_ns!r}")
    for i, t in enumerate(tasks):
        if not isinstance(t, TaskSpec):
            raise ParameterError(f"task {i} is not a TaskSpec: {t!r} (use guest.memtouch(...), guest.compute(...))")
    tasks = resolve_tasks(tasks, buf_base)
    for i, t in enumerate(tasks):
        if len(t.params) > PARAMS_OUT:
            raise ParameterError(f"task {i} ({t.entry}): at most {PARAMS_OUT} parameters")
        if t.entry not in WORKLOADS and t.entry not in extra_source:
            raise ParameterError(f"task {i}: unknown entry {t.entry!r}; known: {', '.join(WORKLOADS)}")
    end = RAM_BASE + ram_size
    for i, rng in enumerate(task_buffers(tasks, buf_base)):
        if rng is not None and not (buf_base <= rng.start and rng.stop <= end):
            raise ParameterError(f"task {i}: buffer [{rng.start:#x}, {rng.stop:#x}) is outside "
                             f"[buf_base {buf_base:#x}, end of RAM {end:#x})")
    if stop_mask is None:
        stop_mask = sum(1 << i for i, t in enumerate(tasks) if t.measured)
    cpus = task_cpus(tasks, vcpus)

    lines = ["", "// ---- generated by apflab.guest.build_source ----", "\t.balign\t8"]
    config = [("config_nr_tasks", len(tasks)), ("config_tick_ns", tick_ns),
              ("config_apf_enable", int(bool(apf_enable))), ("config_sdei_enable", int(bool(sdei_enable))),
              ("config_stop_mask", stop_mask & _U64), ("config_buf_base", buf_base),
              ("config_wake_resched", int(bool(wake_resched))),
              ("config_wake_preempt", int(bool(wake_preempt))),
              ("config_apf_delivery", DELIVERY_IDS[delivery]),
              ("config_apf_send_always", int(bool(send_always))),
              ("config_ram_end", RAM_BASE + ram_size),
              ("config_nr_cpus", vcpus), ("config_pv_lock", int(bool(pv_lock)))]
    for name, value in config:
        lines.append(f"{name}:\t.quad\t{value:#x}")
    lines.append("config_task_cpu:\t// run queue of each task")
    lines.append("\t.quad\t" + ", ".join(str(c) for c in cpus + [0] * (TASK_MAX - len(cpus))))
    lines.append("task_table:")
    for i, t in enumerate(tasks):
        lines.append(f"\t.quad\t{t.entry}, task{i}_params")
    for i, t in enumerate(tasks):
        vals = [int(v) & _U64 for v in t.params] + [0] * (PARAMS_QUADS - len(t.params))
        lines.append(f"task{i}_params:\t// {t.entry}")
        for k in range(0, PARAMS_QUADS, 4):
            lines.append("\t.quad\t" + ", ".join(f"{v:#x}" for v in vals[k:k + 4]))
    # the per-CPU blocks of CPUs 1 .. vcpus-1 (CPU 0's is percpu0 in kernel.S)
    lines += ["\t.balign\t4096", "percpu_more:"]
    if vcpus > 1:
        lines.append(f"\t.space\t{(vcpus - 1) * PERCPU_SIZE:#x}")
    lines += ["\t.balign\t4096", "kernel_end:", "\t.quad\t0", ""]
    return "\n".join([kernel_source(), workloads_source(), extra_source] + lines)


# ---------------------------------------------------------------------- design support, counted

_DESIGN_MARK = re.compile(r"^\s*//\s*DESIGN-(BEGIN|END)\s+([\w,]+)")
_STATEMENT = re.compile(r"^\s*(?:[\w.]+:\s*)*([a-z_][\w.]*)\b")


def design_lines() -> dict[str, int]:
    """Assembly statements (instructions and macro uses; not labels, comments or
    directives) of the kernel inside each ``// DESIGN-BEGIN name`` ... ``// DESIGN-END name``
    region; a region may name several designs ("irq,abort") and counts for each."""
    counts: dict[str, int] = {}
    active: list[str] = []
    for line in kernel_source().splitlines():
        mark = _DESIGN_MARK.match(line)
        if mark:
            names = mark.group(2).split(",")
            if mark.group(1) == "BEGIN":
                active.extend(names)
            else:
                for n in names:
                    active.remove(n)
            continue
        code = line.split("//")[0]
        m = _STATEMENT.match(code)
        if m and not m.group(1).startswith(".") and active:
            for n in set(active):
                counts[n] = counts.get(n, 0) + 1
    return counts


def guest_support_lines(design: str) -> int:
    """Kernel statements a design needs: its own regions plus the APF client (for PV designs)."""
    c = design_lines()
    if design in ("sync", "halt"):
        return 0
    return c.get(design, 0) + c.get("apf", 0)


# ---------------------------------------------------------------------- after loading

def kernel_pages(symbols: dict[str, int]) -> range:
    """Addresses (one per page) of everything before the workload buffers: pin these."""
    return range(RAM_BASE, symbols["kernel_end"], PAGE_SIZE)


def pin_kernel(machine, symbols: dict[str, int]) -> None:
    for addr in kernel_pages(symbols):
        machine.stage2.pin(machine.stage2.gpn_of(addr))


def nr_cpus(machine, symbols: dict[str, int]) -> int:
    """The CPUs the loaded kernel was built for (``build_source(vcpus=)``)."""
    return machine.read_u64(symbols["config_nr_cpus"])


def percpu_offset(symbols: dict[str, int], cpu: int) -> int:
    """Where CPU ``cpu``'s copy of a per-CPU variable lies, relative to CPU 0's (its label)."""
    if cpu == 0:
        return 0
    return symbols["percpu_more"] + (cpu - 1) * PERCPU_SIZE - symbols["percpu0"]


def percpu_addr(symbols: dict[str, int], name: str, cpu: int) -> int:
    """The address of CPU ``cpu``'s ``name`` (a label between percpu0 and percpu0_end)."""
    if not symbols["percpu0"] <= symbols[name] < symbols["percpu0_end"]:
        raise ParameterError(f"{name!r} is not a per-CPU variable of the kernel")
    return symbols[name] + percpu_offset(symbols, cpu)


def current_task_probe(machine, symbols: dict[str, int]):
    """A callable giving the running task's index on the vCPU the host runs, or None while it
    idles (for ``Host.current_task``)."""
    ram, is_mapped, host = machine.vcpu.ram, machine.stage2.is_mapped, machine.host
    n, ncpu = len(host.cpus), nr_cpus(machine, symbols)
    addrs = [symbols["current_task"] + (percpu_offset(symbols, c) if c < ncpu else 0) for c in range(n)]
    which = {id(st.vcpu): st.index for st in host.cpus}

    def current() -> int | None:
        addr = addrs[which[id(host.vcpu)]] if n > 1 else addrs[0]
        if is_mapped(addr):                  # the usual case: the kernel is pinned
            v = struct.unpack_from("<Q", ram, addr - RAM_BASE)[0]
        else:
            v = machine.read_u64(addr)
        return None if v >> 63 else v
    return current


def attach(machine, symbols: dict[str, int]) -> None:
    """Let the host attribute time and APF work items to the guest's tasks (on every vCPU)."""
    machine.host.current_task = current_task_probe(machine, symbols)


def _s64(v: int) -> int:
    return v - (1 << 64) if v >> 63 else v


_CPU_COUNTERS = ("ticks", "ctx_switches", "idle_entries", "irq_entries", "irq_spurious", "irq_resched",
                 "irq_unknown", "irq_stale_timer", "lock_acquired", "lock_contended", "spin_ns",
                 "spin_loops", "lock_blocked", "lock_wakeups", "ipi_sent")


def read_cpu_state(machine, symbols: dict[str, int], cpu: int) -> dict:
    """CPU ``cpu``'s scheduler, lock and APF counters (its per-CPU variables)."""
    def g(name):
        return machine.read_u64(percpu_addr(symbols, name, cpu))
    cur = g("current_task")
    return {"cpu": cpu, "cpu_id": g("cpu_id"), "current_task": None if cur >> 63 else cur,
            **{k: g(k) for k in _CPU_COUNTERS},
            "pv_features_ret": _s64(g("pv_features_ret")),
            "pvlock_state": _s64(machine.read_u64(symbols["pvlock_state"] + 8 * cpu)),
            "apf_enabled": bool(g("apf_enabled")), "apf_not_present": g("apf_not_present"),
            "apf_page_ready": g("apf_page_ready_count"), "sdei_dispatches": g("sdei_dispatches")}


def read_kernel_state(machine, symbols: dict[str, int], cpu: int = 0) -> dict:
    """Everything the kernel counts, as plain Python values (works before, during, after a run).

    Per-CPU counters (scheduler, IRQs, SDEI and APF client, sched_log) are CPU ``cpu``'s;
    ``cpus`` lists every CPU's scheduler and lock counters, ``lock`` the shared lock."""
    rd = machine.read_u64
    ncpu = nr_cpus(machine, symbols)
    if not isinstance(cpu, int) or isinstance(cpu, bool) or not 0 <= cpu < max(1, ncpu):
        raise ParameterError(f"cpu must be an int in [0, {ncpu}) (the kernel's CPUs), got {cpu!r}")
    off = percpu_offset(symbols, cpu)
    lo, hi = symbols["percpu0"], symbols["percpu0_end"]

    def at(name):
        a = symbols[name]
        return a + off if lo <= a < hi else a

    def g(name):
        return rd(at(name))

    def arr(name, n):
        return [rd(at(name) + 8 * i) for i in range(n)]

    nr = min(g("config_nr_tasks"), TASK_MAX)
    addr_to_label = {}
    for name, addr in symbols.items():       # workload names win over other labels there
        if name in WORKLOADS or addr not in addr_to_label:
            addr_to_label[addr] = name
    tasks = []
    per = {k: arr(k, nr) for k in ("task_state", "task_work", "task_parked", "task_wakeups",
                                   "task_switches", "task_syscalls", "task_exit_ns", "task_exit_code",
                                   "task_cpu", "task_lock_blocks")}
    for i in range(nr):
        entry_addr = rd(symbols["task_table"] + 16 * i)
        params = rd(symbols["task_table"] + 16 * i + 8)
        entry = addr_to_label.get(entry_addr, hex(entry_addr))
        inputs = [rd(params + 8 * k) for k in range(PARAMS_OUT)]
        out = [rd(params + 8 * (PARAMS_OUT + k)) for k in range(PARAMS_QUADS - PARAMS_OUT)]
        t = {"index": i, "entry": entry, "params_addr": params, "inputs": inputs, "out": out,
             "state": TASK_STATES.get(per["task_state"][i], per["task_state"][i]),
             "exited": per["task_state"][i] == 3, "work": per["task_work"][i],
             "parked": per["task_parked"][i], "wakeups": per["task_wakeups"][i],
             "switches": per["task_switches"][i], "syscalls": per["task_syscalls"][i],
             "exit_ns": per["task_exit_ns"][i], "exit_code": _s64(per["task_exit_code"][i]),
             "cpu": per["task_cpu"][i], "lock_blocks": per["task_lock_blocks"][i]}
        if entry in WORKLOADS:
            names_in, names_out = WORKLOADS[entry]
            t["params"] = dict(zip(names_in, inputs))
            t.update(zip(names_out, out))
            if entry in _BUFFERED:
                k = _BUFFERED[entry]
                buf, npages, stride = inputs[0], inputs[1], PAGE_SIZE if k is None else inputs[k]
                t["buffer"] = range(buf, buf + _pages(max(1, npages * stride)) * PAGE_SIZE, PAGE_SIZE)
        tasks.append(t)

    version = g("sdei_version")
    done = g("sdei_probe_done")
    results = arr("sdei_results", len(SDEI_STEPS))
    sdei = {"version": version, "major": (version >> 48) & 0x7FFF, "minor": (version >> 32) & 0xFFFF,
            "vendor": version & 0xFFFFFFFF, "probe_done": done,
            "steps": {s: bool(done >> k & 1) for k, s in enumerate(SDEI_STEPS)},
            "results": {s: _s64(results[k]) for k, s in enumerate(SDEI_STEPS)},
            "event": _s64(g("sdei_event")), "dispatches": g("sdei_dispatches"), "bad": g("sdei_bad")}

    table = []
    base = at("apf_table")
    for k in range(128):
        token, kind = struct.unpack("<II", machine.read(base + 16 * k, 8))
        if kind:
            table.append({"token": token, "kind": {1: "waiter", 2: "dummy"}.get(kind, kind),
                          "task": _s64(rd(base + 16 * k + 8))})
    apf = {"features": _s64(g("apf_features")), "version": g("apf_version"), "slots": g("apf_slots"),
           "sdei_event": _s64(g("apf_sdei_event")), "irq": _s64(g("apf_irq")),
           "enable_ret": _s64(g("apf_enable_ret")), "enabled": bool(g("apf_enabled")),
           "not_present": g("apf_not_present"), "page_ready": g("apf_page_ready_count"),
           "wake_all": g("apf_wake_all"), "dummies": g("apf_dummies"), "dummy_hits": g("apf_dummy_hits"),
           "not_parked": g("apf_not_parked"), "table_full": g("apf_table_full"),
           "bad_ready": g("apf_bad_ready"), "table": table,
           "shared": dict(zip(("reason", "token"), struct.unpack("<II", machine.read(at("apf_data"), 8))))}

    panic = g("kernel_panic")
    panic_info = None
    if panic:
        panic_info = {"reason": PANIC_REASONS.get(panic, panic), "vector": _s64(g("panic_vector")),
                      "esr": g("panic_esr"), "elr": g("panic_elr"), "spsr": g("panic_spsr"),
                      "far": g("panic_far"), "task": _s64(g("panic_task")), "cpu": g("panic_cpu")}
    cur = g("current_task")
    log_len = min(g("sched_log_len"), 1024)
    return {
        "nr_tasks": nr, "current_task": None if cur >> 63 else cur,
        "stop_reason": STOP_REASONS.get(g("stop_reason"), g("stop_reason")),
        "boot_ns": g("boot_ns"), "stop_ns": g("stop_ns"), "total_work": g("total_work"),
        "ticks": g("ticks"), "ctx_switches": g("ctx_switches"), "idle_entries": g("idle_entries"),
        "irq_entries": g("irq_entries"), "irq_spurious": g("irq_spurious"),
        "irq_unknown": g("irq_unknown"), "irq_stale_timer": g("irq_stale_timer"),
        "irq_resched": g("irq_resched"),
        "exited_mask": g("exited_mask"), "panic": panic_info, "sdei": sdei, "apf": apf, "tasks": tasks,
        "sched_log": list(machine.read(at("sched_log"), log_len)),
        "cpu": cpu, "nr_cpus": ncpu, "cpus_online": g("cpus_online"),
        "cpus": [read_cpu_state(machine, symbols, c) for c in range(ncpu)],
        "lock": {"counter": g("lock_counter"), "next": g("klock_next"), "owner": g("klock_owner"),
                 "holder": _s64(g("klock_holder")), "waiters": g("lock_waiters"),
                 "spin_ns": sum(read_cpu_state(machine, symbols, c)["spin_ns"] for c in range(ncpu))},
    }


def check_no_panic(machine, symbols: dict[str, int]) -> None:
    """Raise GuestError when the kernel recorded a panic."""
    from ..errors import GuestError
    panic = read_kernel_state(machine, symbols)["panic"]
    if panic:
        raise GuestError(f"guest kernel panic: {panic['reason']} (vector {panic['vector']}, "
                         f"ESR={panic['esr']:#x}, ELR={panic['elr']:#x}, FAR={panic['far']:#x})",
                         pc=panic["elr"], insn=machine.vcpu.disasm_at(panic["elr"]))


__all__ = ["TaskSpec", "memtouch", "compute", "yield_loop", "sleeper", "memtouch_value", "resolve_tasks",
           "task_buffers", "build_source", "kernel_source", "workloads_source", "kernel_pages", "pin_kernel",
           "current_task_probe", "attach", "read_kernel_state", "read_cpu_state", "percpu_addr",
           "percpu_offset", "nr_cpus", "task_cpus", "lockloop", "CPU_MAX", "check_no_panic", "RAM_BASE", "PAGE_SIZE",
           "TASK_MAX", "DEFAULT_BUF_BASE", "DEFAULT_TICK_NS", "TASK_STATES", "SDEI_STEPS", "WORKLOADS"]
