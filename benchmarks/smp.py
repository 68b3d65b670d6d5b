"""Several vCPUs: aggregate guest speed with 4 vCPUs against 1, and memory per added vCPU.

The same amount of guest work (the resident loop's iterations) is done by one vCPU, or split
over four: vCPU 0 starts vCPUs 1-3 with PSCI CPU_ON, each runs its share of the loop on its
own counter, and vCPU 0 waits for their "done" flags before ``brk #0``. Target (issue 11):
at least 0.8x the one-vCPU instructions per second (the four-vCPU count includes vCPU 0's
short wait for the others). Memory: resident set size after
building machines with 1 and 4 vCPUs (each vCPU is one unicorn engine over the shared RAM).
"""

from __future__ import annotations

import gc
import time

import apflab
from apflab.psci import CPU_ON_64

TARGET = 0.8


def _source(n: int) -> str:
    lines = ["_start:"]
    for i in range(1, n):
        lines += [f"    movz x0, #{CPU_ON_64 >> 16:#x}, lsl #16", f"    movk x0, #{CPU_ON_64 & 0xFFFF:#x}",
                  f"    mov x1, #{i}", "    adr x2, worker", f"    mov x3, #{i}", "    hvc #0",
                  "    cbnz x0, failed"]
    lines += ["    mov x0, #0", "    bl work",                      # vCPU 0 does its share too
              "    adr x5, done", f"    mov x6, #{n - 1}",
              "wait:", "    ldr x7, [x5]", "    cmp x7, x6", "    b.ne wait", "    brk #0",
              "failed:", "    brk #0x51",
              "worker:", "    bl work",
              "    adr x5, done",                                  # done += 1 (exclusives)
              "1:  ldxr x7, [x5]", "    add x7, x7, #1", "    stxr w8, x7, [x5]", "    cbnz w8, 1b",
              "park:", "    wfe", "    b park",
              # work: x0 = vCPU index; its own counter, x4 iterations
              "work:", "    adr x2, counters", "    add x2, x2, x0, lsl #6", "    mov x1, #0",
              "    adr x4, share", "    ldr x4, [x4]",
              "2:  ldr x3, [x2]", "    add x3, x3, #1", "    str x3, [x2]", "    add x1, x1, #1",
              "    cmp x1, x4", "    b.ne 2b", "    ret",
              "    .balign 64", "done: .quad 0", "share: .quad 0", "    .balign 64", "counters: .space 512"]
    return "\n".join(lines) + "\n"


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


def measure(iterations: int, repeat: int) -> dict:
    one = min(_run(1, iterations) for _ in range(repeat))
    four = min(_run(4, iterations) for _ in range(repeat))
    ips1, ips4 = one[1] / one[0], four[1] / four[0]
    ratio = ips4 / ips1
    return {"guest_instructions_1_vcpu": one[1], "guest_instructions_4_vcpus": four[1],
            "ips_1_vcpu": round(ips1), "ips_4_vcpus": round(ips4),
            "ratio_per_instruction": round(ratio, 3), "target": TARGET, "meets_target": ratio >= TARGET,
            "rss_mib_per_added_vcpu": _memory_per_vcpu()}
