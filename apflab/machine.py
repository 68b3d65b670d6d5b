"""``Machine``: the harness contract (DESIGN.md) as a thin facade.

    m = apflab.Machine(seed=0)
    syms = m.load_asm(source)           # {label: address}; entry label `_start`
    r = m.run(max_instructions=10**6)   # from `_start` at EL1h until `brk #0`
    m.reg("x0"); m.read_u64(addr)

``Machine(vcpus=N)`` has N vCPUs over one guest RAM (``smp.py``): vCPU 0 starts at
``_start``, the others are off until the guest starts them with PSCI CPU_ON;
``run`` returns when vCPU 0 executes ``brk #0``; ``reg(name, vcpu=i)``.

The layers stay reachable as read-only properties (``host``, ``vcpu``,
``stage2``, ``trace``, ``sdei``, ``apf``) for labs and widgets.
"""

from __future__ import annotations

import struct

from .asm import Program, assemble
from .backing import BackingStore, make_store
from .cpu import PSTATE_EL1H_MASKED, Vcpu
from .errors import AsmError, ParameterError
from .host import Host, HostCosts, RunStop
from .smp import MAX_VCPUS, SMP_QUANTUM
from .stage2 import PageState, Stage2
from .trace import Trace

RAM_BASE = 0x4000_0000        # where QEMU's and kvmtool's "virt" boards put RAM
DEFAULT_RAM = 16 << 20
MAX_RAM = 16 << 30            # guest RAM is one host mapping; keep requests sane


def _check_int(name: str, value) -> None:
    # bool is an int in Python; True as a seed or a size is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ParameterError(f"{name} must be an int, got {value!r}")


class Machine:
    """The vCPUs, guest RAM, and the host services (PSCI; SDEI and APF when installed)."""

    def __init__(self, seed: int = 0, *, ram_size: int = DEFAULT_RAM, memory_limit: int | None = None,
                 store: str | BackingStore = "ssd", ns_per_insn: int = 1,
                 costs: HostCosts | None = None, policy: str = "fifo", sdei: bool = True,
                 apf: bool = True, profile: str = "lab", keep_records: bool = True,
                 postcopy: dict | None = None, delivery: str = "sdei", irq_window: str | None = None,
                 vcpus: int = 1, quantum: int = SMP_QUANTUM, cpu_model: str = "cortex-a72",
                 pcpus=None, time_slice_ns: int | None = None, pv_lock: str | None = None):
        _check_int("seed", seed)
        _check_int("vcpus", vcpus)
        if not 1 <= vcpus <= MAX_VCPUS:
            raise ParameterError(f"vcpus must be between 1 and {MAX_VCPUS}, got {vcpus!r}")
        from .cpu import CPU_MODELS
        if cpu_model not in CPU_MODELS:
            raise ParameterError(f"cpu_model must be one of {', '.join(CPU_MODELS)} "
                                 f"('max' has the LSE atomics), got {cpu_model!r}")
        from .pcpu import HostScheduler
        if pcpus is not None and not isinstance(pcpus, HostScheduler):
            _check_int("pcpus", pcpus)   # an int, or a HostScheduler shared with other VMs
        if time_slice_ns is not None:
            _check_int("time_slice_ns", time_slice_ns)
        _check_int("quantum", quantum)
        if quantum < 1:
            raise ParameterError(f"quantum must be at least 1 instruction, got {quantum!r}")
        _check_int("ram_size", ram_size)
        if ram_size < 64 * 1024 or ram_size % 4096:
            raise ParameterError(f"ram_size must be a multiple of 4096 and at least 64 KiB, got {ram_size!r}")
        if ram_size > MAX_RAM:
            raise ParameterError(f"ram_size must be at most {MAX_RAM >> 30} GiB, got {ram_size!r}")
        if not isinstance(store, (str, BackingStore)):
            raise ParameterError(f"store must be 'ssd', 'hdd' or a BackingStore, got {store!r}")
        if costs is not None and not isinstance(costs, HostCosts):
            raise ParameterError(f"costs must be a HostCosts or None, got {costs!r}")
        if postcopy is not None and not isinstance(postcopy, dict):
            raise ParameterError(f"postcopy must be None or a dict of PostcopySource parameters "
                                 f"(rtt_ns, bandwidth_bytes_per_s, jitter), got {postcopy!r}")
        from .sdei import PROFILES
        if profile not in PROFILES:
            raise ParameterError(f"unknown SDEI profile {profile!r}; choose one of {PROFILES}")
        for name, flag in (("sdei", sdei), ("apf", apf), ("keep_records", keep_records)):
            if not isinstance(flag, bool):
                raise ParameterError(f"{name} must be True or False, got {flag!r}")
        _check_int("ns_per_insn", ns_per_insn)
        self.seed = seed
        self._vcpu = Vcpu(RAM_BASE, ram_size, cpu_model=cpu_model)
        # Every further vCPU is its own engine over the same host mapping of guest RAM.
        self._vcpus = [self._vcpu] + [Vcpu(RAM_BASE, ram_size, ram=self._vcpu.ram, cpu_model=cpu_model)
                                      for _ in range(vcpus - 1)]
        self._store = make_store(store) if isinstance(store, str) else store
        # ``postcopy``: pages may also live on a migration source (rtt_ns, bandwidth_bytes_per_s).
        remote = None if postcopy is None else make_store("postcopy", **postcopy)
        self._stage2 = Stage2(self._vcpu.ram, RAM_BASE, ram_size, store=self._store,
                              limit_bytes=memory_limit, policy=policy, remote=remote)
        self._host = Host(self._vcpus if vcpus > 1 else self._vcpu, self._stage2, seed=seed,
                          ns_per_insn=ns_per_insn, costs=costs, trace=Trace(keep_records=keep_records),
                          quantum=quantum, pcpus=pcpus, time_slice_ns=time_slice_ns)
        # PSCI only with several vCPUs: a one-vCPU machine stays exactly as before (where,
        # e.g., lab 3 teaches that nobody answers PSCI function IDs).
        self._psci = None
        if vcpus > 1:
            from .psci import PsciService
            self._psci = PsciService.install(self._host)
        from .delivery import DESIGNS
        if delivery not in DESIGNS:
            raise ParameterError(f"unknown delivery design {delivery!r}; choose one of {', '.join(DESIGNS)}")
        if irq_window is not None and delivery != "irq":
            raise ParameterError(f"irq_window applies to delivery='irq' only (got delivery={delivery!r})")
        self.delivery = delivery
        self._sdei = None
        self._apf = None
        self._sdeis: list = []
        self._apfs: list = []
        if sdei:
            from .sdei import SdeiService
            if vcpus == 1:
                self._sdeis = [SdeiService.install(self._host, profile=profile)]
            else:   # SDEI state is per PE: one dispatcher per vCPU (private events; none shared)
                self._sdeis = self._host.install_per_vcpu(
                    lambda k: SdeiService.install(self._host, profile=profile))
                for pe in self._sdeis:
                    pe.peers = self._sdeis            # EVENT_SIGNAL to another PE
            self._sdei = self._sdeis[0]
        if apf:
            from .apf import ApfService
            options = {} if irq_window is None else {"irq_window": irq_window}
            if vcpus == 1:
                self._apfs = [ApfService.install(self._host, delivery, **options)]
            else:   # APF is per vCPU, as in KVM: its own shared block, queue and tokens
                self._apfs = self._host.install_per_vcpu(
                    lambda k: ApfService.install(self._host, delivery, **options))
                for k, svc in enumerate(self._apfs):
                    svc.vcpu_id = k                   # token = (id << 12) | vcpu_id, as KVM's
            self._apf = self._apfs[0]
        # pv_lock: the paravirtual "vCPU preempted" flag (pvlock.py): None (off, the calls
        # answer NOT_SUPPORTED), "preempted" (KVM's meaning) or "preempted+stalled" (the
        # lab's extension: also while stalled in a synchronous page-in). The host keeps the
        # last page of RAM for it; the boot stack starts below that page.
        self._pv_lock = None
        if pv_lock is not None:
            from .pvlock import PvLockService
            self._pv_lock = PvLockService.install(self._host, pv_lock)
        self.program: Program | None = None
        self.symbols: dict[str, int] = {}

    # ------------------------------------------------------------------ layers
    host = property(lambda self: self._host)
    vcpu = property(lambda self: self._vcpu)
    stage2 = property(lambda self: self._stage2)
    trace = property(lambda self: self._host.trace)
    sdei = property(lambda self: self._sdei)
    psci = property(lambda self: self._psci)
    pv_lock = property(lambda self: self._pv_lock)

    def cpu_report(self) -> dict:
        """Where each vCPU's time went (run, stall, steal, idle) and, with ``pcpus``, each
        physical CPU's utilisation: the host's view next to the guest's."""
        return self._host.cpu_report()

    def sdei_of(self, vcpu: int):
        """vCPU ``vcpu``'s SDEI dispatcher (``sdei`` is vCPU 0's), or None without SDEI."""
        self._vcpu_at(vcpu)
        return self._sdeis[vcpu] if self._sdeis else None

    def apf_of(self, vcpu: int):
        """vCPU ``vcpu``'s APF service (``apf`` is vCPU 0's), or None without APF."""
        self._vcpu_at(vcpu)
        return self._apfs[vcpu] if self._apfs else None
    vcpus = property(lambda self: tuple(self._vcpus))   # vCPU i has MPIDR_EL1.Aff0 = i
    apf = property(lambda self: self._apf)
    now_ns = property(lambda self: self._host.now)
    ram_base = RAM_BASE
    ram_size = property(lambda self: self._vcpu.ram_size)

    # ------------------------------------------------------------------ loading and running
    def load_asm(self, source: str, *, base: int | None = None) -> dict[str, int]:
        """Assemble ``source`` and load it at ``base`` (default: start of RAM)."""
        base = RAM_BASE if base is None else base
        prog = assemble(source, base)
        if "_start" not in prog.symbols:
            raise AsmError("no `_start` label: the machine starts the guest there")
        if not self._stage2.in_ram(base) or not self._stage2.in_ram(base + max(len(prog.code), 1) - 1):
            raise ParameterError(f"program [{base:#x}, +{len(prog.code):#x}) does not fit in guest RAM "
                                 f"[{RAM_BASE:#x}, {RAM_BASE + self.ram_size:#x})")
        if self._pv_lock is not None:
            self._pv_lock.check_free(base, base + len(prog.code), what="program")
        self.write(base, prog.code)
        for vcpu in self._vcpus:
            vcpu.watch_code(base, prog.code)    # erets and IRQ-unmasking instructions
        self.program = prog
        self.symbols = dict(prog.symbols)
        self._vcpu.pc = prog.symbols["_start"]
        self._vcpu.set_pstate(PSTATE_EL1H_MASKED)
        top = RAM_BASE + self.ram_size if self._pv_lock is None else self._pv_lock.base
        self._vcpu.set_reg("sp", top)
        return dict(prog.symbols)

    def run(self, max_instructions: int = 1_000_000) -> RunStop:
        """Run from the current PC (``_start`` after loading) until ``brk #0``."""
        if self.program is None:
            raise ParameterError("nothing loaded: call load_asm(source) first")
        return self._host_run(max_instructions)

    def _host_run(self, max_instructions: int, **options):
        """Run the host loop; afterwards ``host.vcpu``/``now`` name vCPU 0 again."""
        try:
            return self._host.run(max_instructions, **options)
        finally:
            self._host.select_boot()

    def step(self, instructions: int = 1) -> RunStop | None:
        """Run at most ``instructions`` guest instructions; a RunStop if ``brk #0`` was reached."""
        if self.program is None:
            raise ParameterError("nothing loaded: call load_asm(source) first")
        return self._host_run(instructions, budget_error=False)

    def run_until(self, kinds, max_instructions: int = 1_000_000):
        """Run until the trace records one of ``kinds`` (e.g. "stage2_fault", "sdei_dispatch",
        "irq", "apf_page_ready"); returns that record, or a RunStop at ``brk #0``, or None
        if ``max_instructions`` ran out first."""
        if isinstance(kinds, str):
            kinds = (kinds,)
        trace = self._host.trace
        before = {k: trace.counts.get(k, 0) for k in kinds}
        hit = lambda: any(trace.counts.get(k, 0) != before[k] for k in kinds)
        stop = self._host_run(max_instructions, budget_error=False, until=hit)
        if stop is not None or not hit():
            return stop
        for rec in reversed(trace.records):
            if rec.kind in kinds:
                return rec
        return None

    # ------------------------------------------------------------------ registers
    def _vcpu_at(self, vcpu: int):
        if not isinstance(vcpu, int) or isinstance(vcpu, bool) or not 0 <= vcpu < len(self._vcpus):
            raise ParameterError(f"vcpu must be an index in [0, {len(self._vcpus)}), got {vcpu!r}")
        return self._vcpus[vcpu]

    def reg(self, name: str, vcpu: int = 0) -> int:
        return self._vcpu_at(vcpu).reg(name)

    def set_reg(self, name: str, value: int, vcpu: int = 0) -> None:
        self._vcpu_at(vcpu).set_reg(name, value)

    def regs(self, vcpu: int = 0) -> dict[str, int]:
        return self._vcpu_at(vcpu).regs()

    def disasm(self, addr: int | None = None, count: int = 1) -> list[tuple[int, str]]:
        """Disassemble ``count`` instructions from ``addr`` (default: the PC)."""
        addr = self._vcpu.pc if addr is None else addr
        return [(a, self._vcpu.disasm_at(a)) for a in range(addr, addr + 4 * count, 4)]

    # ------------------------------------------------------------------ memory (wherever the page is)
    def read(self, addr: int, size: int) -> bytes:
        return self._stage2.read(addr, size)

    def write(self, addr: int, data: bytes) -> None:
        self._stage2.write(addr, data)

    def read_u64(self, addr: int) -> int:
        return struct.unpack("<Q", self.read(addr, 8))[0]

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<Q", value & (1 << 64) - 1))

    def read_u32(self, addr: int) -> int:
        return struct.unpack("<I", self.read(addr, 4))[0]

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, struct.pack("<I", value & 0xFFFFFFFF))

    # ------------------------------------------------------------------ host actions (labs, widgets)
    def evict(self, addr: int) -> None:
        """Push the page holding ``addr`` out to the backing store."""
        self._stage2.evict(self._stage2.gpn_of(addr))

    def page_state(self, addr: int) -> PageState:
        return self._stage2.state(self._stage2.gpn_of(addr))
