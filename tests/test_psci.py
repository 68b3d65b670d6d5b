"""PSCI (DEN0022) as the guest sees it: results and error codes, from guest assembly."""

import pytest

import apflab
from apflab import psci
from apflab.smccc import to_s64, to_u64

from guestlib import mov64

RESULTS = 0x4000_8000     # the guest stores its x0 results here, one quad each


def call(fid: int, *args: int) -> list[str]:
    out = mov64("x0", fid)
    for i, a in enumerate(args, start=1):
        out += mov64(f"x{i}", a)
    return out + ["hvc #0"]


def store(slot: int) -> list[str]:
    return mov64("x10", RESULTS + 8 * slot) + ["str x0, [x10]"]


def guest(lines: list[str], secondary: list[str] | None = None) -> str:
    body = ["_start:"] + ["  " + l for l in lines] + ["  brk #0"]
    body += ["secondary:"] + ["  " + l for l in (secondary or ["b ."])]
    return "\n".join(body) + "\n"


def results(m: apflab.Machine, n: int) -> list[int]:
    return [to_s64(m.read_u64(RESULTS + 8 * i)) for i in range(n)]


def machine(vcpus: int = 2, **kw) -> apflab.Machine:
    return apflab.Machine(seed=0, vcpus=vcpus, **kw)


def test_function_ids_and_error_codes_are_den0022s():
    assert (psci.PSCI_VERSION, psci.CPU_OFF, psci.CPU_ON_64, psci.AFFINITY_INFO_64, psci.SYSTEM_OFF) == \
        (0x84000000, 0x84000002, 0xC4000003, 0xC4000004, 0x84000008)
    assert (psci.NOT_SUPPORTED, psci.INVALID_PARAMETERS, psci.DENIED, psci.ALREADY_ON, psci.ON_PENDING,
            psci.INTERNAL_FAILURE, psci.NOT_PRESENT, psci.DISABLED, psci.INVALID_ADDRESS) == \
        (-1, -2, -3, -4, -5, -6, -7, -8, -9)


def test_version_and_features():
    m = machine()
    m.load_asm(guest(call(psci.PSCI_VERSION) + store(0)
                     + call(psci.PSCI_FEATURES, psci.CPU_ON_64) + store(1)
                     + call(psci.PSCI_FEATURES, psci.SYSTEM_RESET) + store(2)
                     + call(psci.SYSTEM_RESET) + store(3)))
    m.run(100_000)
    assert results(m, 4) == [0x10001, 0, -1, -1]


def test_cpu_on_error_codes_in_den0022_order():
    """Unknown MPIDR -> INVALID_PARAMETERS (before the entry is looked at); entry outside RAM or
    misaligned -> INVALID_ADDRESS; the boot vCPU itself -> ALREADY_ON; a started one still
    pending -> ON_PENDING."""
    m = machine(vcpus=2)
    lines = (["adr x12, secondary"]
             + call(psci.CPU_ON_64, 2, 0) + store(0)                       # no vCPU 2 on a 2-vCPU machine
             + call(psci.CPU_ON_64, 1 << 8, 0) + store(1)                  # Aff1 = 1: no such cluster
             + call(psci.CPU_ON_64, 1, 0x1000) + store(2)                  # entry below RAM
             + call(psci.CPU_ON_64, 1, 0x4000_0002) + store(3)             # misaligned
             + call(psci.CPU_ON_64, 1, 0x4000_0000 + (16 << 20)) + store(4)   # first byte past RAM
             + call(psci.CPU_ON_64, 0, 0x4000_0000) + store(5)             # the caller: already on
             + mov64("x0", psci.CPU_ON_64) + ["mov x1, #1", "mov x2, x12", "mov x3, #7", "hvc #0"] + store(6)
             + mov64("x0", psci.CPU_ON_64) + ["mov x1, #1", "mov x2, x12", "hvc #0"] + store(7))
    m.load_asm(guest(lines, ["b ."]))
    m.run(100_000)
    assert results(m, 8) == [-2, -2, -9, -9, -9, -4, 0, -5]


def test_secondary_starts_at_el1h_masked_with_the_context_id_in_x0():
    m = machine(vcpus=2)
    lines = (["adr x12, secondary"] + mov64("x0", psci.CPU_ON_64)
             + ["mov x1, #1", "mov x2, x12"] + mov64("x3", 0xFEED_F00D_1234) + ["hvc #0"] + store(0)
             + ["adr x5, flag", "1: ldr x6, [x5]", "cbz x6, 1b"])
    sec = (["mov x20, x0", "mrs x21, currentel", "mrs x22, daif", "mrs x23, spsel", "mrs x24, mpidr_el1",
            "adr x5, flag", "mov x6, #1", "str x6, [x5]", "2: b 2b"])
    src = guest(lines, sec) + ".balign 8\nflag: .quad 0\n"
    m.load_asm(src)
    m.run(100_000)
    assert results(m, 1) == [0]
    assert m.reg("x20", vcpu=1) == 0xFEED_F00D_1234
    assert m.reg("x21", vcpu=1) == 1 << 2                    # CurrentEL = EL1
    assert m.reg("x22", vcpu=1) == 0xF << 6                  # D, A, I, F masked
    assert m.reg("x23", vcpu=1) == 1                         # SP_EL1 (EL1h)
    assert m.reg("x24", vcpu=1) == (1 << 31) | 1             # MPIDR: RES1 bit 31, Aff0 = 1


def test_affinity_info_follows_cpu_on_and_cpu_off():
    m = machine(vcpus=3)
    lines = (call(psci.AFFINITY_INFO_64, 1, 0) + store(0)                  # off
             + call(psci.AFFINITY_INFO_64, 0, 0) + store(1)                # the caller: on
             + call(psci.AFFINITY_INFO_64, 7, 0) + store(2)                # no such vCPU
             + call(psci.AFFINITY_INFO_64, 1, 1) + store(3)                # level 1: not supported here
             + ["adr x12, secondary"] + mov64("x0", psci.CPU_ON_64) + ["mov x1, #1", "mov x2, x12", "hvc #0"]
             + call(psci.AFFINITY_INFO_64, 1, 0) + store(4)                # on pending: it has not run yet
             + ["adr x5, flag", "1: ldr x6, [x5]", "cbz x6, 1b"]
             + call(psci.AFFINITY_INFO_64, 1, 0) + store(5)                # it ran: on, or already off
             + ["3: "] + call(psci.AFFINITY_INFO_64, 1, 0) + ["cmp x0, #1", "b.ne 3b"] + store(6))
    sec = ["adr x5, flag", "mov x6, #1", "str x6, [x5]"] + call(psci.CPU_OFF) + ["brk #1"]
    m.load_asm(guest(lines, sec) + ".balign 8\nflag: .quad 0\n")
    m.run(200_000)
    r = results(m, 7)
    assert r[:5] == [1, 0, -2, -2, 2]
    assert r[5] in (0, 1) and r[6] == 1
    assert m.trace.select("hvc", vcpu=1, fid=psci.CPU_OFF)   # CPU_OFF did not return (no brk #1 taken)
    assert not m.trace.select("exception", vcpu=1)


def test_cpu_on_after_cpu_off_starts_it_again():
    m = machine(vcpus=2)
    start = ["adr x12, secondary"] + mov64("x0", psci.CPU_ON_64) + ["mov x1, #1", "mov x2, x12", "hvc #0"]
    lines = (start + ["adr x5, flag", "1: ldr x6, [x5]", "cmp x6, #1", "b.ne 1b"]
             + ["3: "] + call(psci.AFFINITY_INFO_64, 1, 0) + ["cmp x0, #1", "b.ne 3b"]
             + start + store(0) + ["4: ldr x6, [x5]", "cmp x6, #2", "b.ne 4b"])
    sec = ["adr x5, flag", "ldr x6, [x5]", "add x6, x6, #1", "str x6, [x5]"] + call(psci.CPU_OFF)
    m.load_asm(guest(lines, sec) + ".balign 8\nflag: .quad 0\n")
    m.run(200_000)
    assert results(m, 1) == [0]
    assert m.read_u64(m.symbols["flag"]) == 2


def test_system_off_stops_the_run():
    m = machine(vcpus=2)
    m.load_asm(guest(["mov x7, #42"] + call(psci.SYSTEM_OFF) + ["mov x7, #1"]))
    r = m.run(100_000)
    assert r.reason == "system_off"
    assert m.reg("x7") == 42


def test_cpu_off_of_every_vcpu_is_a_clear_error():
    m = machine(vcpus=2)
    m.load_asm(guest(call(psci.CPU_OFF)))
    with pytest.raises(apflab.GuestError, match="every vCPU is off"):
        m.run(100_000)


def test_psci_is_only_there_with_several_vcpus():
    """One vCPU behaves as before: nobody answers PSCI function IDs (lab 3 teaches that)."""
    m = apflab.Machine(seed=0)
    m.load_asm(guest(call(psci.PSCI_VERSION) + store(0)))
    m.run(10_000)
    assert results(m, 1) == [-1]
    assert m.psci is None


def test_smc32_cpu_on_uses_the_low_32_bits():
    m = machine(vcpus=2)
    lines = (["adr x12, secondary"] + mov64("x0", psci.CPU_ON_32)
             + mov64("x1", (0xDEAD << 32) | 1) + ["mov x2, x12"] + mov64("x3", (0xBEEF << 32) | 5) + ["hvc #0"]
             + store(0) + ["adr x5, flag", "1: ldr x6, [x5]", "cbz x6, 1b"])
    sec = ["mov x20, x0", "adr x5, flag", "mov x6, #1", "str x6, [x5]", "2: b 2b"]
    m.load_asm(guest(lines, sec) + ".balign 8\nflag: .quad 0\n")
    m.run(100_000)
    assert results(m, 1) == [0]
    assert m.reg("x20", vcpu=1) == 5


def test_result_codes_are_negative_in_x0():
    assert to_u64(psci.INVALID_ADDRESS) == (1 << 64) - 9
