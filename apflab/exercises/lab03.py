"""Lab 03 exercises: SMCCC function IDs and what the hypervisor answers.

``WhoAnswers`` asks which of the lab hypervisor's services owns each of four
seeded function IDs; the answer asks the machine's own SMCCC router.
``PredictResults`` asks what ``x0`` holds after each of four seeded
hypercalls; the answer runs them in a guest, in order, and reads back the
values the guest stored.
"""

from __future__ import annotations

from ..machine import Machine
from ..smccc import to_s64
from . import CheckResult, Exercise

# Function IDs to classify: (id, what it is in the SMCCC world). The label is for the
# worked solution only; the question shows the number alone.
ID_POOL = (
    (0x80000000, "SMCCC_VERSION (Arm architecture service)"),
    (0x80000001, "SMCCC_ARCH_FEATURES (Arm architecture service)"),
    (0xC4000020, "SDEI_VERSION"),
    (0xC4000021, "SDEI_EVENT_REGISTER"),
    (0xC4000028, "SDEI_EVENT_STATUS"),
    (0xC400002F, "SDEI_EVENT_SIGNAL"),
    (0xC4000032, "SDEI_SHARED_RESET"),
    (0x86000000, "KVM vendor: HYP_KVM_FEATURES"),
    (0x86000002, "KVM vendor: ASYNC_PF"),
    (0x84000000, "PSCI_VERSION: standard secure service, but PSCI, not SDEI"),
    (0xC4000003, "PSCI_CPU_ON (SMC64): below the SDEI range"),
    (0x84000020, "the SMC32 twin of SDEI_VERSION: SDEI has no SMC32 IDs"),
    (0xC6000000, "the SMC64 twin of HYP_KVM_FEATURES: the KVM service is SMC32"),
    (0x82000000, "a SiP (silicon vendor) service ID"),
    (0xC5000000, "a standard hypervisor service ID"),
)
SERVICE_LABELS = {"arch": "arch", "sdei": "sdei", "kvm-vendor": "kvm"}
CHOICES = ("arch", "sdei", "kvm", "none")


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


class WhoAnswers(Exercise):
    """Classify seeded function IDs by the lab service that handles them."""
    title = "Who answers this hypercall?"

    def _draw(self, rng):
        return {"fids": [fid for fid, _ in rng.sample(ID_POOL, 4)]}

    def question(self) -> str:
        ids = ", ".join(f"{fid:#010x}" for fid in self.params["fids"])
        return (f"[seed {self.seed}] The guest puts each of these function IDs in w0 and executes "
                f"hvc #0: {ids}.\nWhich service of the lab hypervisor answers each one? Answer "
                f"with a list of four strings from {CHOICES} ('none': nobody owns it, x0 = -1).")

    def _solve(self) -> tuple[str, ...]:
        router = Machine(seed=self.seed).host.router
        out = []
        for fid in self.params["fids"]:
            service = router.owner(fid)
            out.append("none" if service is None else SERVICE_LABELS[service.name])
        return tuple(out)

    def check(self, value) -> CheckResult:
        return super().check(_as_tuple(value))

    def hint(self) -> str:
        return ("Read the ID in binary: bit 31 fast call, bit 30 SMC64, bits [29:24] the owner "
                "(0 Arm architecture, 2 SiP, 4 standard secure service, 5 standard hypervisor, "
                "6 vendor hypervisor), bits [15:0] the function. SDEI is 0xC4000020-0xC400003F "
                "(SMC64 only); KVM's vendor service starts at 0x86000000 (SMC32).")


# Calls whose result the student predicts: (name, function ID, x1, x2).
CALL_POOL = (
    ("SMCCC_VERSION", 0x80000000, 0, 0),
    ("SMCCC_ARCH_FEATURES(SMCCC_VERSION)", 0x80000001, 0x80000000, 0),
    ("SMCCC_ARCH_FEATURES(0x80008000)", 0x80000001, 0x80008000, 0),
    ("KVM HYP_KVM_FEATURES", 0x86000000, 0, 0),
    ("KVM ASYNC_PF VERSION", 0x86000002, 0, 0),
    ("KVM ASYNC_PF SLOTS", 0x86000002, 1, 0),
    ("KVM ASYNC_PF SDEI", 0x86000002, 2, 0),
    ("KVM ASYNC_PF IRQ", 0x86000002, 3, 0),
    ("SDEI_EVENT_STATUS(0)", 0xC4000028, 0, 0),
    ("SDEI_EVENT_STATUS(7)", 0xC4000028, 7, 0),
    ("SDEI_EVENT_ENABLE(0)", 0xC4000022, 0, 0),
    ("SDEI_EVENT_GET_INFO(2, PRIORITY)", 0xC4000029, 2, 2),
    ("SDEI_PE_MASK", 0xC400002B, 0, 0),
    ("SDEI_PE_UNMASK", 0xC400002C, 0, 0),
    ("0x82000000 (SiP)", 0x82000000, 0, 0),
    ("0xC6000000", 0xC6000000, 0, 0),
)


class PredictResults(Exercise):
    """What does x0 hold after each of four seeded hypercalls, run in order?"""
    title = "Predict hypercall results"

    def _draw(self, rng):
        calls = rng.sample(CALL_POOL, 4)
        return {"calls": [name for name, *_ in calls]}

    def calls(self) -> list[tuple[str, int, int, int]]:
        by_name = {c[0]: c for c in CALL_POOL}
        return [by_name[name] for name in self.params["calls"]]

    def source(self) -> str:
        lines = ["_start:", "    adr  x20, results"]
        for name, fid, x1, x2 in self.calls():
            lines += [f"    // {name}", f"    ldr  x0, ={fid:#x}", f"    ldr  x1, ={x1:#x}",
                      f"    ldr  x2, ={x2:#x}", "    hvc  #0", "    str  x0, [x20], #8"]
        lines += ["    brk  #0", "    .balign 8", "results: .space 32"]
        return "\n".join(lines) + "\n"

    def question(self) -> str:
        listing = "\n".join(f"  {i + 1}. {name:36s} w0={fid:#010x} x1={x1:#x} x2={x2:#x}"
                            for i, (name, fid, x1, x2) in enumerate(self.calls()))
        return (f"[seed {self.seed}] A fresh guest (SDEI PE masked, nothing registered) makes these "
                f"hypercalls in this order:\n{listing}\nWhat does x0 hold after each? Answer with "
                f"a list of four signed ints (-1 for NOT_SUPPORTED, and so on).")

    def _solve(self) -> tuple[int, ...]:
        m = Machine(seed=self.seed)
        syms = m.load_asm(self.source())
        m.run(max_instructions=1_000)
        return tuple(to_s64(m.read_u64(syms["results"] + 8 * i)) for i in range(4))

    def check(self, value) -> CheckResult:
        value = _as_tuple(value)
        if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            value = tuple(to_s64(v) for v in value)      # accept 0xFFFF...FF for -1
        return super().check(value)

    def hint(self) -> str:
        return ("Nobody owns the ID -> -1. SMCCC_VERSION is 1.1 = 0x10001; SMCCC_ARCH_FEATURES(id) is "
                "0 if that architecture call is implemented, else -1. HYP_KVM_FEATURES is a "
                "bitmap (bit 2 = ASYNC_PF). SDEI: status bits registered/enabled/running, DENIED = -3, "
                "INVALID_PARAMETERS = -2 for an event that does not exist; the PE starts masked, and "
                "PE_MASK returns 1 only when it was the call that masked it.")
