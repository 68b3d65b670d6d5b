"""Several vCPUs: what each one owns, and which one the host runs next.

Each vCPU has its own unicorn engine (registers, exclusive monitor, TLB), its own
clock, GIC redistributor/CPU interface and virtual timer; guest RAM is one host
mapping that every engine maps (``cpu.Vcpu(ram=...)``). Only one engine runs at a
time, for one slice; ``pick`` chooses it, deterministically in virtual time:

- a vCPU that runs is keyed by its clock;
- a halted vCPU (WFI) by the time something could wake it: now if an interrupt is
  signalled, else its own timer or the next host event (its clock is brought up to
  that time, as halted time, when it is picked);
- the smallest key wins; ties go to the lower vCPU index.

So the same seed and program give the same interleaving and the same trace for any N.
A vCPU that is off (never started, or CPU_OFF) is never picked.

The vCPU index is MPIDR_EL1.Aff0 (Aff1-3 are 0), as on QEMU's and kvmtool's virt boards
for up to 8 CPUs; MPIDR_EL1 reads are trapped and answered from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .irq import GicCpu
from .timer import TIMER_PPI, VirtualTimer

MAX_VCPUS = 8                  # Aff0 only, and an SGI target list of 16 bits covers it
SMP_QUANTUM = 10_000           # instructions per slice while another vCPU could run: a vCPU
                               # sees another's action at most this many instructions late
                               # (10 µs at 1 ns/insn, against a 4 ms guest tick); shorter
                               # slices cost speed (python -m benchmarks: 4 vCPUs vs 1)
MPIDR_EL1 = (3, 0, 0, 0, 5)
MPIDR_RES1 = 1 << 31           # MPIDR_EL1 bit 31 is RES1 (Arm ARM D17.2.101)
MPIDR_U = 1 << 30              # "uniprocessor": set only when there is one PE


class Power(Enum):
    """PSCI's view of a vCPU (DEN0022 5.1.5 AFFINITY_INFO: ON 0, OFF 1, ON_PENDING 2)."""
    ON = 0
    OFF = 1
    ON_PENDING = 2


@dataclass(eq=False)
class VcpuState:
    """Everything the host keeps per vCPU; the host's ``vcpu``/``gic``/``timer``/``now``
    name the current one's."""
    index: int
    vcpu: object                   # cpu.Vcpu
    gic: GicCpu
    timer: VirtualTimer
    now: int = 0
    retired: int = 0
    halted: bool = False
    power: Power = Power.OFF
    host: object = None            # the Host it belongs to (physical CPUs may be shared by VMs)

    @property
    def mpidr(self) -> int:
        return MPIDR_RES1 | self.index


def sgi_targets(value: int, sender: int, count: int) -> list[int]:
    """The vCPUs an ICC_SGI1R_EL1 write reaches (IHI0069 12.2.21).

    Bits [15:0] are a target list of Aff0 values within the cluster named by
    Aff3.Aff2.Aff1 ([55:48].[39:32].[23:16]); IRM (bit 40) set means every PE but the
    sender. RS ([47:44]) selects Aff0 16*RS..16*RS+15. Targets that do not exist are
    ignored, as a GIC ignores them.
    """
    if value >> 40 & 1:
        return [i for i in range(count) if i != sender]
    aff1, aff2, aff3 = value >> 16 & 0xFF, value >> 32 & 0xFF, value >> 48 & 0xFF
    if aff1 or aff2 or aff3:
        return []
    rs = value >> 44 & 0xF
    return [16 * rs + b for b in range(16) if value >> b & 1 and 16 * rs + b < count]


def wake_time(st: VcpuState, next_host_event: int | None, can_wake) -> int | None:
    """When a halted vCPU should next be looked at, or None if nothing could wake it."""
    if can_wake(st) or (st.timer.output() and not st.gic.line[TIMER_PPI]):
        return st.now                         # (the timer line rises when it is next looked at)
    times = [t for t in (st.timer.next_fire_ns(), next_host_event) if t is not None]
    return max(st.now, min(times)) if times else None


def pick(states: list[VcpuState], next_host_event: int | None, can_wake,
         waiting=None) -> VcpuState | None:
    """The vCPU to run next (see the module docstring), or None if every one that is on
    is halted with nothing that could ever wake it. ``waiting(st)``: True for a vCPU
    queued for a physical CPU (``pcpu.py``), which cannot run until one is handed to it."""
    return earliest(states, next_host_event, can_wake, waiting)[0]


def earliest(states: list[VcpuState], next_host_event: int | None, can_wake,
             waiting=None) -> tuple[VcpuState | None, int | None]:
    """``pick``'s choice and its key (the virtual time of its turn)."""
    best, best_key = None, None
    for st in states:
        if st.power is Power.OFF or (waiting is not None and waiting(st)):
            continue
        t = wake_time(st, next_host_event, can_wake) if st.halted else st.now
        if t is None:
            continue
        if best_key is None or t < best_key:    # strict: ties keep the lower index
            best, best_key = st, t
    return best, best_key
