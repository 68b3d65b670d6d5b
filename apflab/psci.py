"""PSCI: the Power State Coordination Interface (Arm DEN0022, PSCI 1.1) for the guest.

A host service reached by ``hvc #0`` (SMCCC): the guest starts and stops its vCPUs
with it, as Linux does with ``enable-method = "psci"``. Implemented: PSCI_VERSION,
CPU_ON, CPU_OFF, AFFINITY_INFO, SYSTEM_OFF and PSCI_FEATURES (for those); every other
PSCI function returns NOT_SUPPORTED.

Rules, with where they come from:
- CPU_ON (DEN0022 5.1.4): x1 is the target's MPIDR (here Aff0 = vCPU index, Aff1-3 = 0);
  a target that does not exist -> INVALID_PARAMETERS; an entry point x2 outside guest
  RAM or not 4-byte aligned -> INVALID_ADDRESS (PSCI 1.0 on; earlier versions said
  INVALID_PARAMETERS); a target already on -> ALREADY_ON, one being started ->
  ON_PENDING. The checks run in that order, as Trusted Firmware-A's ``psci_cpu_on``
  does. The target starts at x2 in EL1h with DAIF masked, x0 = the context id x3
  (5.1.4 and 6.4.3.3 "the context ID is in x0"), at the caller's virtual time; it is
  ON_PENDING until it first runs.
- CPU_OFF (5.1.3): does not return on success; the vCPU stays off until CPU_ON.
- AFFINITY_INFO (5.1.5): returns ON 0, OFF 1, ON_PENDING 2 for the target;
  lowest affinity level other than 0 -> INVALID_PARAMETERS (levels above 0 are
  optional; this platform has one cluster).
- SYSTEM_OFF (5.1.9): does not return; ``Machine.run`` returns with reason "system_off".
"""

from __future__ import annotations

from .smp import Power
from .smccc import NO_RETURN, Call

# Function IDs (DEN0022 5.1, table 5-1: SMC32 in 0x84000000.., SMC64 in 0xC4000000..).
PSCI_VERSION = 0x84000000
CPU_SUSPEND_32, CPU_SUSPEND_64 = 0x84000001, 0xC4000001
CPU_OFF = 0x84000002
CPU_ON_32, CPU_ON_64 = 0x84000003, 0xC4000003
AFFINITY_INFO_32, AFFINITY_INFO_64 = 0x84000004, 0xC4000004
SYSTEM_OFF = 0x84000008
SYSTEM_RESET = 0x84000009
PSCI_FEATURES = 0x8400000A
PSCI_FIRST_32, PSCI_LAST_32 = 0x84000000, 0x8400001F
PSCI_FIRST_64, PSCI_LAST_64 = 0xC4000000, 0xC400001F

# Return codes (DEN0022 5.2.2, table 5-2).
SUCCESS = 0
NOT_SUPPORTED = -1
INVALID_PARAMETERS = -2
DENIED = -3
ALREADY_ON = -4
ON_PENDING = -5
INTERNAL_FAILURE = -6
NOT_PRESENT = -7
DISABLED = -8
INVALID_ADDRESS = -9

VERSION_1_1 = (1 << 16) | 1        # [31:16] major, [15:0] minor: what KVM reports today

NAMES = {PSCI_VERSION: "PSCI_VERSION", CPU_OFF: "CPU_OFF", CPU_ON_32: "CPU_ON", CPU_ON_64: "CPU_ON",
         AFFINITY_INFO_32: "AFFINITY_INFO", AFFINITY_INFO_64: "AFFINITY_INFO",
         SYSTEM_OFF: "SYSTEM_OFF", PSCI_FEATURES: "PSCI_FEATURES"}


class PsciService:
    """Power on and off the host's vCPUs on the guest's request."""
    name = "psci"

    def __init__(self, host):
        self.host = host

    @classmethod
    def install(cls, host) -> "PsciService":
        from .host import Registration
        svc = cls(host)
        # Two ranges (SMC32 and SMC64 IDs); the SDEI range starts at 0xC4000020.
        host.register(Registration("psci", svc, fids=(PSCI_FIRST_64, PSCI_LAST_64), per_vcpu=True))
        host.router.register(PSCI_FIRST_32, PSCI_LAST_32, svc)
        return svc

    def handle(self, vcpu, call: Call) -> object:
        fid = call.fid
        if fid == PSCI_VERSION:
            return VERSION_1_1
        if fid in (CPU_ON_32, CPU_ON_64):
            return self.cpu_on(call.arg(1), call.arg(2), call.arg(3), smc32=fid == CPU_ON_32)
        if fid == CPU_OFF:
            return self.cpu_off(vcpu)
        if fid in (AFFINITY_INFO_32, AFFINITY_INFO_64):
            return self.affinity_info(call.arg(1), call.arg(2))
        if fid == SYSTEM_OFF:
            self.host.system_off = True
            return NO_RETURN
        if fid == PSCI_FEATURES:
            # 5.1.14: 0 for an implemented function, NOT_SUPPORTED otherwise.
            return 0 if call.arg(1) & 0xFFFFFFFF in NAMES else NOT_SUPPORTED
        return NOT_SUPPORTED

    def _target(self, mpidr: int):
        """The vCPU an MPIDR value names, or None. Aff0 [7:0], Aff1 [15:8], Aff2 [23:16],
        Aff3 [39:32]; other bits are ignored."""
        aff = mpidr & 0xFF_00FF_FFFF
        if aff >= len(self.host.cpus):
            return None
        return self.host.cpus[aff]

    def cpu_on(self, mpidr: int, entry: int, context_id: int, *, smc32: bool = False) -> int:
        if smc32:
            mpidr, entry, context_id = mpidr & 0xFFFFFFFF, entry & 0xFFFFFFFF, context_id & 0xFFFFFFFF
        st = self._target(mpidr)
        if st is None:
            return INVALID_PARAMETERS
        if entry % 4 or not self.host.stage2.in_ram(entry):
            return INVALID_ADDRESS
        if st.power is Power.ON:
            return ALREADY_ON
        if st.power is Power.ON_PENDING:
            return ON_PENDING
        self.host.power_on(st, entry, context_id)
        return SUCCESS

    def cpu_off(self, vcpu) -> object:
        st = next(s for s in self.host.cpus if s.vcpu is vcpu)
        self.host.power_off(st)
        return NO_RETURN

    def affinity_info(self, mpidr: int, lowest_level: int) -> int:
        if lowest_level != 0:
            return INVALID_PARAMETERS
        st = self._target(mpidr)
        if st is None:
            return INVALID_PARAMETERS
        return st.power.value
