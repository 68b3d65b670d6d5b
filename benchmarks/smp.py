"""Several vCPUs: aggregate guest speed with 4 vCPUs against 1, and memory per added vCPU.

The same amount of guest work (the resident loop's iterations) is done by one vCPU, or split
over four: vCPU 0 starts vCPUs 1-3 with PSCI CPU_ON, each runs its share of the loop on its
own counter, and vCPU 0 waits for their "done" flags before ``brk #0``. Target (issue 11):
at least 0.8x the one-vCPU instructions per second (the four-vCPU count includes vCPU 0's
short wait for the others). Memory: resident set size after
building machines with 1 and 4 vCPUs (each vCPU is one unicorn engine over the shared RAM).

Faults per second with 4 vCPUs (APF off): a small guest whose vCPUs each store once into
every page of their own part of a buffer of absent pages, so every store is a stage-2 fault
(first touch: the host maps a zero page; no I/O, no stall). The same pages touched by one
vCPU give the 1-vCPU rate; bare unicorn's emu_start rate (one exit costs at least one
emu_start) is the bound both are printed against. APF on with 4 vCPUs needs the SMP guest
kernel's ``smp_memtouch`` scenario: reported as missing when that scenario is absent.
"""

from __future__ import annotations

import gc
import time

import apflab
from apflab.psci import CPU_ON_64

TARGET = 0.8


def _harness(n: int, body: str, code: list[str], data: list[str]) -> str:
    """vCPU 0 starts vCPUs 1..n-1 (CPU_ON, context id = index), every vCPU calls ``body`` (in
    ``code``) with x0 = its index, the secondaries count themselves into ``done`` and park;
    vCPU 0 waits for them and stops with ``brk #0``. ``data`` follows ``done``."""
    lines = ["_start:"]
    for i in range(1, n):
        lines += [f"    movz x0, #{CPU_ON_64 >> 16:#x}, lsl #16", f"    movk x0, #{CPU_ON_64 & 0xFFFF:#x}",
                  f"    mov x1, #{i}", "    adr x2, worker", f"    mov x3, #{i}", "    hvc #0",
                  "    cbnz x0, failed"]
    lines += ["    mov x0, #0", f"    bl {body}",                   # vCPU 0 does its share too
              "    adr x5, done", f"    mov x6, #{n - 1}",
              "wait:", "    ldr x7, [x5]", "    cmp x7, x6", "    b.ne wait", "    brk #0",
              "failed:", "    brk #0x51",
              "worker:", f"    bl {body}",
              "    adr x5, done",                                  # done += 1 (exclusives)
              "1:  ldxr x7, [x5]", "    add x7, x7, #1", "    stxr w8, x7, [x5]", "    cbnz w8, 1b",
              "park:", "    wfe", "    b park"]
    return "\n".join(lines + code + ["    .balign 64", "done: .quad 0"] + data) + "\n"


def _source(n: int) -> str:
    # work: x0 = vCPU index; its own counter, x4 iterations
    return _harness(n, "work", [
        "work:", "    adr x2, counters", "    add x2, x2, x0, lsl #6", "    mov x1, #0",
        "    adr x4, share", "    ldr x4, [x4]",
        "2:  ldr x3, [x2]", "    add x3, x3, #1", "    str x3, [x2]", "    add x1, x1, #1",
        "    cmp x1, x4", "    b.ne 2b", "    ret"],
        ["share: .quad 0", "    .balign 64", "counters: .space 512"])


def _run(n: int, iterations: int) -> tuple[float, int]:
    m = apflab.Machine(seed=0, vcpus=n)
    syms = m.load_asm(_source(n))
    m.write_u64(syms["share"], iterations // n)          # each vCPU's part of the loop
    t = time.perf_counter()
    r = m.run(max_instructions=20 * iterations + 10_000)
    dt = time.perf_counter() - t
    if m.read_u64(syms["done"]) != n - 1:
        raise RuntimeError(f"{n} vCPUs: not every secondary finished")
    return dt, r.instructions


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _memory_per_vcpu() -> float:
    """MiB of resident memory each vCPU beyond the first adds (its engine and state)."""
    gc.collect()
    base = _rss_kib()
    one = apflab.Machine(seed=0, vcpus=1)
    d1 = _rss_kib() - base
    base = _rss_kib()
    four = apflab.Machine(seed=0, vcpus=4)
    d4 = _rss_kib() - base
    del one, four
    gc.collect()
    return round((d4 - d1) / 3 / 1024, 2)


def _fault_source(n: int) -> str:
    # touch: x0 = vCPU index; one store into each page of its part of the buffer
    return _harness(n, "touch", [
        "touch:", "    adr x4, share", "    ldr x4, [x4]", "    adr x2, base", "    ldr x2, [x2]",
        "    mul x3, x0, x4", "    add x2, x2, x3, lsl #12",
        "2:  str x4, [x2]", "    add x2, x2, #4096", "    subs x4, x4, #1", "    b.ne 2b", "    ret"],
        ["share: .quad 0", "base: .quad 0"])


def _run_faults(n: int, npages: int) -> tuple[float, int]:
    """Wall seconds and stage-2 faults for ``n`` vCPUs storing into ``npages`` absent pages."""
    ram = (npages + 256) * 4096
    m = apflab.Machine(seed=0, vcpus=n, ram_size=ram, keep_records=False)
    syms = m.load_asm(_fault_source(n))
    base = m.ram_base + (1 << 20)
    m.write_u64(syms["share"], npages // n)
    m.write_u64(syms["base"], base)
    t = time.perf_counter()
    m.run(max_instructions=20 * npages + 100_000)
    dt = time.perf_counter() - t
    faults = m.host.faults.get("absent", 0)
    if faults < npages // n * n:
        raise RuntimeError(f"{n} vCPUs: {faults} faults for {npages} pages")
    return dt, faults


def faults_per_s(npages: int, repeat: int) -> dict:
    from .faults import _emu_start_cost
    from apflab import scenarios
    one = min(_run_faults(1, npages) for _ in range(repeat))
    four = min(_run_faults(4, npages) for _ in range(repeat))
    bare = 1 / _emu_start_cost()
    f1, f4 = one[1] / one[0], four[1] / four[0]
    out = {"apf_off_faults": four[1], "faults_per_s_1_vcpu": round(f1), "faults_per_s_4_vcpus": round(f4),
           "ratio_4_to_1_vcpu": round(f4 / f1, 3), "bare_emu_start_per_s": round(bare),
           "ratio_1_vcpu_to_bare": round(f1 / bare, 4), "ratio_4_vcpus_to_bare": round(f4 / bare, 4)}
    if "smp_memtouch" in scenarios.SCENARIOS:
        # The same pages (npages // 8 in all, two rounds) walked by one vCPU or split over four.
        rates = {}
        for n in (1, 4):
            best = None
            for _ in range(repeat):
                t = time.perf_counter()
                r = scenarios.run_scenario("smp_memtouch", apf=True, seed=0, vcpus=n, npages=npages // 8 // n,
                                           rounds=2, limit_pages=npages // 32)
                dt = time.perf_counter() - t
                best = dt if best is None else min(best, dt)
            rates[n] = (r.faults, r.faults / best)
        out["apf_on"] = {"faults": rates[4][0], "faults_per_s_1_vcpu": round(rates[1][1]),
                         "faults_per_s_4_vcpus": round(rates[4][1]),
                         "ratio_4_to_1_vcpu": round(rates[4][1] / rates[1][1], 3),
                         "ratio_4_vcpus_to_bare": round(rates[4][1] / bare, 4)}
    else:
        out["apf_on"] = "missing: no smp_memtouch scenario (the SMP guest kernel) in this tree"
    return out


def measure(iterations: int, repeat: int) -> dict:
    one = min(_run(1, iterations) for _ in range(repeat))
    four = min(_run(4, iterations) for _ in range(repeat))
    ips1, ips4 = one[1] / one[0], four[1] / four[0]
    ratio = ips4 / ips1
    return {"guest_instructions_1_vcpu": one[1], "guest_instructions_4_vcpus": four[1],
            "ips_1_vcpu": round(ips1), "ips_4_vcpus": round(ips4),
            "ratio_per_instruction": round(ratio, 3), "target": TARGET, "meets_target": ratio >= TARGET,
            "rss_mib_per_added_vcpu": _memory_per_vcpu(),
            "faults_4_vcpus": faults_per_s(4096, repeat)}
