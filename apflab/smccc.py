"""The SMCCC conduit: ``hvc #0`` from the guest, routed by function ID.

ARM DEN0028 (SMC Calling Convention): function ID in w0, arguments in x1-x17
(we pass x1-x5), result in x0. An ID no service owns returns NOT_SUPPORTED (-1).
A service is one object with ``handle(vcpu, call) -> int | NO_RETURN`` registered with
the range of IDs it owns (as a kvmtool device registers itself): every handler is
told which vCPU called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

NOT_SUPPORTED = -1
NO_RETURN = object()   # the service set the vCPU's registers and PC itself

# Standard Arm architecture calls (DEN0028 7.2).
SMCCC_VERSION = 0x80000000
SMCCC_ARCH_FEATURES = 0x80000001
SMCCC_VERSION_1_1 = 0x10001


@dataclass(frozen=True)
class Call:
    fid: int
    args: tuple[int, int, int, int, int]   # x1..x5
    pc: int                                 # address just past the hvc

    def arg(self, i: int) -> int:
        """x<i>, 1-based as the spec numbers them."""
        return self.args[i - 1]


class Service(Protocol):
    name: str

    def handle(self, vcpu, call: Call) -> object: ...


def to_u64(value: int) -> int:
    """A signed SMCCC result as the 64-bit register value."""
    return value & (1 << 64) - 1


def to_s64(value: int) -> int:
    value &= (1 << 64) - 1
    return value - (1 << 64) if value & (1 << 63) else value


class ArchService:
    """SMCCC_VERSION and ARCH_FEATURES, so guests can probe the conduit."""
    name = "arch"

    def __init__(self, router: "Router"):
        self.router = router
        # Function IDs ARCH_FEATURES answers SUCCESS for. A service may add its discovery
        # call, as KVM answers ARCH_FEATURES for PV_TIME_FEATURES (DEN0057) and the arm64
        # PV-lock series for PV_LOCK_FEATURES (pvlock.py).
        self.features = {SMCCC_VERSION, SMCCC_ARCH_FEATURES}

    def handle(self, vcpu, call: Call) -> object:
        if call.fid == SMCCC_VERSION:
            return SMCCC_VERSION_1_1
        if call.fid == SMCCC_ARCH_FEATURES:
            # DEN0028 7.3: this queries Arm architecture calls; of those, this platform
            # implements SMCCC_VERSION and SMCCC_ARCH_FEATURES itself (plus ``features``).
            return 0 if call.arg(1) & 0xFFFFFFFF in self.features else NOT_SUPPORTED
        return NOT_SUPPORTED


class Router:
    """Function-ID ranges to services; the host calls ``dispatch`` on every HVC."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int, Service]] = []
        self.arch = ArchService(self)
        self.register(SMCCC_VERSION, SMCCC_ARCH_FEATURES, self.arch)

    def register(self, lo: int, hi: int, service: Service) -> None:
        for a, b, s in self._ranges:
            if lo <= b and a <= hi:
                raise ValueError(f"{service.name} [{lo:#x}, {hi:#x}] overlaps {s.name} [{a:#x}, {b:#x}]")
        self._ranges.append((lo, hi, service))

    def owner(self, fid: int) -> Service | None:
        for lo, hi, service in self._ranges:
            if lo <= fid <= hi:
                return service
        return None

    def dispatch(self, vcpu, call: Call) -> object:
        """Hand ``call`` from ``vcpu`` to the service owning its function ID."""
        service = self.owner(call.fid)
        if service is None:
            return NOT_SUPPORTED
        return service.handle(vcpu, call)
