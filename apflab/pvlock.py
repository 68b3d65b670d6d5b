"""The paravirtual "vCPU preempted" flag: the host tells the guest which vCPUs are not running.

A guest spinlock (or mutex owner spinning, osq_lock) asks ``vcpu_is_preempted(cpu)`` before
it spins on a lock whose holder runs on ``cpu``: if that vCPU has lost its physical CPU,
spinning only burns time. Linux/x86 reads it from the steal-time page (``preempted``);
for arm64, Zengruan Ye's series (2019-2020, reposted with Usama Arif in 2022, never
merged: mainline arm64 ``vcpu_is_preempted`` returns false) defines two SMCCC calls
(docs/REFERENCES.md "Paravirtual lock"):

- ``PV_LOCK_FEATURES`` 0xC6000020 (fast, SMC64, vendor-specific hypervisor owner, 0x20):
  x1 = a function ID; returns SUCCESS (0) for PV_LOCK_FEATURES and PV_LOCK_PREEMPTED,
  NOT_SUPPORTED (-1) for anything else. ``SMCCC_ARCH_FEATURES(PV_LOCK_FEATURES)`` is
  SUCCESS too (the series answers it; the guest asks it first, as for PV time).
- ``PV_LOCK_PREEMPTED`` 0xC6000021: returns in x0 the IPA of the calling vCPU's
  ``struct pvlock_vcpu_state { __le64 preempted; u8 padding[56]; }`` (64-byte aligned,
  placed by the host), after zeroing it (the 2022 ``kvm_init_pvlock``).

These IDs are SMC64; apflab's APF calls are SMC32 vendor-hyp IDs 0x86000000-0x8600FFFF,
so they do not collide.

Where: the last page of guest RAM, one 64-byte structure per vCPU (vCPU i at +64*i), kept
resident (stage-2 pinned: never evicted, so a host write never waits for I/O and a guest
read never faults). The boot stack starts below it, and buffers must not overlap it
(``check_free``).

When the flag is 1 (``mode``):
- "preempted": the vCPU is runnable but lost its physical CPU to another vCPU at the end of
  its time slice (``pcpu.HostScheduler``), until it runs again. This is KVM's
  ``vcpu->preempted`` (``kvm_sched_out`` sets it only when the thread is still on the run
  queue), which x86 copies to steal time's ``preempted``: a vCPU thread sleeping in a
  synchronous page fault, or halted in WFI, is not flagged.
- "preempted+stalled": also while the vCPU is stalled in a synchronous page-in (or held in
  the host by the "halt" design). Beyond KVM/x86 -- the lab's extension. (The arm64 series
  writes 1 in every ``kvm_arch_vcpu_put``, so it would flag a sleeping vCPU too, and a
  halted one; this mode flags stalls, not WFI halts.)
It is 0 whenever the vCPU runs. Updates are host writes to guest memory: no guest exit.

With several vCPUs a store becomes visible to the others at their next instruction in
the interleaving, so a reader can be up to one slice (``Machine(quantum=)``) early or late.
"""

from __future__ import annotations

import struct

from .errors import ParameterError
from .smccc import NOT_SUPPORTED, Call

PV_LOCK_FEATURES = 0xC6000020
PV_LOCK_PREEMPTED = 0xC6000021
STATE_SIZE = 64                   # sizeof(struct pvlock_vcpu_state), its alignment too
PAGE = 4096
MODES = ("preempted", "preempted+stalled")
SUCCESS = 0


class PvLockService:
    """Publishes each vCPU's ``preempted`` flag in the reserved page; answers discovery."""
    name = "pv_lock"

    def __init__(self, host, base: int, mode: str):
        self.host = host
        self.base = base
        self.mode = mode
        self.flags = [0] * len(host.cpus)      # what the host last wrote, per vCPU
        self.writes = 0

    @classmethod
    def install(cls, host, mode: str) -> "PvLockService":
        if mode not in MODES:
            raise ParameterError(f"pv_lock must be None or one of {', '.join(MODES)}, got {mode!r}")
        from .host import Registration
        s2 = host.stage2
        base = s2.ram_base + s2.ram_size - PAGE
        svc = cls(host, base, mode)
        gpn = s2.gpn_of(base)
        s2.pin(gpn)                              # resident for good: host writes never wait
        s2.write(base, bytes(PAGE))              # touches it (ABSENT -> RESIDENT), all flags 0
        host.register(Registration("pv_lock", svc, fids=(PV_LOCK_FEATURES, PV_LOCK_PREEMPTED),
                                   per_vcpu=True))
        host.router.arch.features.add(PV_LOCK_FEATURES)
        host.on_run_state = svc.note
        return svc

    # ------------------------------------------------------------------ layout
    def address(self, vcpu: int) -> int:
        """The IPA of vCPU ``vcpu``'s ``struct pvlock_vcpu_state``."""
        return self.base + STATE_SIZE * vcpu

    @property
    def area(self) -> range:
        """The reserved bytes (the whole page)."""
        return range(self.base, self.base + PAGE)

    def check_free(self, lo: int, hi: int, what: str = "buffer") -> None:
        """ParameterError if [lo, hi) overlaps the reserved page (scenario builders call it)."""
        if lo < self.base + PAGE and self.base < hi:
            raise ParameterError(f"{what} [{lo:#x}, {hi:#x}) overlaps the page the host keeps for "
                                 f"the paravirtual preempted flags [{self.base:#x}, {self.base + PAGE:#x}) "
                                 f"(the last page of guest RAM): give the guest more RAM or a smaller buffer")

    # ------------------------------------------------------------------ hypercalls
    def handle(self, vcpu, call: Call) -> object:
        if call.fid == PV_LOCK_FEATURES:
            return SUCCESS if call.arg(1) & 0xFFFFFFFF in (PV_LOCK_FEATURES, PV_LOCK_PREEMPTED) else NOT_SUPPORTED
        if call.fid == PV_LOCK_PREEMPTED:
            index = next(st.index for st in self.host.cpus if st.vcpu is vcpu)
            addr = self.address(index)
            self.host.stage2.write(addr, bytes(STATE_SIZE))   # kvm_init_pvlock zeroes it
            self.flags[index] = 0
            return addr
        return NOT_SUPPORTED

    # ------------------------------------------------------------------ the flag
    def note(self, st, state: str) -> None:
        """The host's run loop reports ``st``: "running" (about to run guest code),
        "preempted" (slice over, queued behind others) or "stalled" (waits in the host)."""
        if state == "running":
            value = 0
        elif state == "preempted" or self.mode == "preempted+stalled":
            value = 1
        else:
            return
        if self.flags[st.index] == value:
            return
        self.flags[st.index] = value
        self.writes += 1
        self.host.stage2.write(self.address(st.index), struct.pack("<Q", value))
        host = self.host
        here = host._cur
        if here is not st:
            host._select(st)                 # the record goes in st's lane, at st's time
        try:
            host.trace.emit(st.now, "pv_preempted", value=value, why=state)
        finally:
            if here is not st:
                host._select(here)
