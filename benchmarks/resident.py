"""Resident loop: the same guest loop under bare unicorn (no hooks) and under ``apflab.Machine``.

Target (issue 14; issue 2 asked for 50%): apflab runs at least 75% of bare unicorn's
guest instructions per second when every page is resident.
"""

from __future__ import annotations

import time

from unicorn import UC_ARCH_ARM64, UC_MODE_ARM, Uc
from unicorn import arm64_const as A

import apflab
from apflab.asm import assemble

TARGET = 0.75
INSNS_PER_ITER = 6

LOOP = """
_start:
    adr x2, counter
    mov x1, #0
1:  ldr x3, [x2]
    add x3, x3, #1
    str x3, [x2]
    add x1, x1, #1
    cmp x1, x4
    b.ne 1b
done:
    brk #0
    .balign 8
counter: .quad 0
"""


def _bare(iterations: int) -> tuple[float, int]:
    prog = assemble(LOOP, apflab.RAM_BASE)
    uc = Uc(UC_ARCH_ARM64, UC_MODE_ARM)
    uc.mem_map(apflab.RAM_BASE, 1 << 20)
    uc.mem_write(apflab.RAM_BASE, prog.code)
    uc.reg_write(A.UC_ARM64_REG_X4, iterations)
    t = time.perf_counter()
    uc.emu_start(prog.symbols["_start"], prog.symbols["done"])
    dt = time.perf_counter() - t
    if uc.reg_read(A.UC_ARM64_REG_X1) != iterations:
        raise RuntimeError("bare unicorn loop did not finish")
    return dt, 2 + INSNS_PER_ITER * iterations


def _apflab(iterations: int) -> tuple[float, int]:
    m = apflab.Machine(seed=0)
    m.load_asm(LOOP)
    m.set_reg("x4", iterations)
    t = time.perf_counter()
    r = m.run(max_instructions=10 * iterations + 100)
    dt = time.perf_counter() - t
    if m.reg("x1") != iterations:
        raise RuntimeError("apflab loop did not finish")
    return dt, r.instructions


def measure(iterations: int, repeat: int) -> dict:
    bare = min(_bare(iterations)[0] for _ in range(repeat))
    runs = [_apflab(iterations) for _ in range(repeat)]
    ours = min(dt for dt, _ in runs)
    insns = runs[0][1]
    bare_ips = (2 + INSNS_PER_ITER * iterations) / bare
    ours_ips = insns / ours
    ratio = ours_ips / bare_ips
    return {"guest_instructions": insns, "bare_unicorn_ips": round(bare_ips),
            "apflab_ips": round(ours_ips), "ratio": round(ratio, 3), "target": TARGET,
            "ratio_to_target": round(ratio / TARGET, 3),
            "meets_target": ratio >= TARGET}
