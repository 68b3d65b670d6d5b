"""The async-page-fault protocol from the guest's side (docs/REFERENCES.md ("APF protocol")).

Every expectation comes from docs/REFERENCES.md ("APF protocol"), not from apflab's own
tables: tokens ``(id++ << 12) | vcpu_id``, the shared block
``{u32 reason; u32 token; u8 pad[56]; u32 enabled}``, "page ready" only once the slot is
free and the previous one was acknowledged with IRQ_ACK, token ~0 = wake all, and the
list of cases in which the host falls back to a synchronous (stalling) fault.

Most tests run a small hand-written guest (``apf_guest``), not the mini-kernel, so
that each protocol step is visible: its SDEI handler copies {reason, token} from the
shared block into a log (kind 1), its page-ready IRQ handler does the same (kind 2),
and knobs decide whether each handler clears the slot, acknowledges, resumes the
faulting instruction or skips it. The EL0 part touches ``npages`` pages of a buffer
that the host filled and pushed out to swap before the run, so every first touch is
a stage-2 fault that needs I/O. ``brk #0`` checkpoints stop the run so the test can
look at the host in between.
"""

from __future__ import annotations

import struct

import pytest

from apflab import Machine
from apflab import guest
from apflab.apf import FALLBACKS
from apflab.guest import PAGE_SIZE, RAM_BASE
from apflab.scenarios import run_scenario
from guestlib import mov64

MASK64 = (1 << 64) - 1
BUF = RAM_BASE + 0x10_0000            # the EL0 buffer (pre-filled, then swapped out)
EXTRA = RAM_BASE + 0x20_0000          # pages touched at EL1 / in the handler
APF_PPI = 19                          # the lab's documented page-ready PPI
WAKE_ALL = 0xFFFF_FFFF
PAGE_NOT_PRESENT, PAGE_READY = 1, 2
OFF_REASON, OFF_TOKEN, OFF_ENABLED = 0, 4, 60

# Function IDs (docs/REFERENCES.md ("SDEI"))
SDEI_EVENT_REGISTER = 0xC400_0021
SDEI_EVENT_ENABLE = 0xC400_0022
SDEI_EVENT_DISABLE = 0xC400_0023
SDEI_EVENT_COMPLETE = 0xC400_0025
SDEI_EVENT_COMPLETE_AND_RESUME = 0xC400_0026
SDEI_PE_MASK = 0xC400_002B
SDEI_PE_UNMASK = 0xC400_002C
KVM_ASYNC_PF = 0x8600_0002
ASYNC_PF_ENABLE, ASYNC_PF_IRQ_ACK = 4, 5
EV_APF = 1                            # what ASYNC_PF SDEI returns on the lab platform
LOG_MAX = 256                         # log entries of 32 bytes


# ---------------------------------------------------------------------- the guest



def hvc(fid: int, *args: int) -> list[str]:
    out = mov64("x0", fid)
    for i, a in enumerate(args, 1):
        out += mov64(f"x{i}", a)
    return out + ["hvc #0"]


# x6 = the next log entry (32 bytes); once LOG_MAX are used, a scratch entry past the end.
LOG_SLOT = ["adr x4, log_len", "ldr x5, [x4]", "adr x6, log", f"mov x7, #{LOG_MAX}", "cmp x5, x7",
            "csel x8, x5, x7, lo", "cinc x5, x5, lo", "str x5, [x4]", "add x6, x6, x8, lsl #5"]


def touch(addr: int) -> list[str]:
    return mov64("x10", addr) + ["ldr x11, [x10]"]


def apf_guest(*, npages: int = 1, apf_enable: bool = True, send_always: bool = False,
              sdei_clear: bool = True, sdei_resume: str = "retry", handler_touch: int | None = None,
              irq_clear: bool = True, irq_ack: bool = True, el0_irqs: bool = True,
              el1_setup: list[str] = (), el0_tail: list[str] = ()) -> str:
    """Assembly for the protocol-test guest (see the module docstring).

    ``sdei_resume``: "retry" = EVENT_COMPLETE (the faulting load runs again), "skip" =
    COMPLETE_AND_RESUME to code that steps over it, so EL0 moves on to the next page.
    """
    assert sdei_resume in ("retry", "skip")
    vec = []
    for n in range(16):
        vec.append("    .balign 128")
        vec.append({8: "    b el0_sync", 9: "    b el0_irq"}.get(n, "    brk #0x99"))
    flags = 1 | (2 if send_always else 0)
    L = ["    .balign 2048", "vectors:", *vec, "    .balign 128", "_start:",
         "adr x0, vectors", "msr vbar_el1, x0",
         "mov x0, #0xff", "msr s3_0_c4_c6_0, x0",          # ICC_PMR_EL1
         "mov x0, #1", "msr s3_0_c12_c12_7, x0"]           # ICC_IGRPEN1_EL1
    L += mov64("x0", SDEI_EVENT_REGISTER) + [f"mov x1, #{EV_APF}", "adr x2, sdei_handler",
                                             "adr x3, apf_block", "mov x4, #0", "mov x5, #0", "hvc #0",
                                             "cbnz x0, setup_failed"]
    L += hvc(SDEI_EVENT_ENABLE, EV_APF) + ["cbnz x0, setup_failed"]
    L += hvc(SDEI_PE_UNMASK) + ["cbnz x0, setup_failed"]
    if apf_enable:
        L += ["adr x4, apf_block", f"orr x4, x4, #{flags}"] + mov64("x0", KVM_ASYNC_PF)
        L += [f"mov x1, #{ASYNC_PF_ENABLE}", "mov w2, w4", "lsr x3, x4, #32", "hvc #0",
              "cbnz x0, setup_failed"]
    L += list(el1_setup)
    L += ["adr x0, el0_main", "msr elr_el1, x0",
          f"mov x0, #{0 if el0_irqs else 0x80}", "msr spsr_el1, x0",   # EL0t, I as asked
          "adr x0, el0_stack_top", "msr sp_el0, x0"]
    L += mov64("x20", BUF) + ["mov x21, #0", f"mov x22, #{npages}", "eret"]
    L += ["setup_failed:", "brk #0x51"]

    # EL0: touch one u64 per page, then the tail, then stop.
    L += ["el0_main:", "cmp x21, x22", "b.hs el0_after", "el0_touch:", "ldr x0, [x20]",
          "add x20, x20, #4096", "add x21, x21, #1", "b el0_main", "el0_after:", *el0_tail,
          "el0_done:", "brk #0", "b el0_done"]

    # SDEI "page not present" handler: log {1, reason, token, interrupted pc}.
    L += ["sdei_handler:", *LOG_SLOT,
          "mov x7, #1", "ldr w8, [x1, #0]", "ldr w9, [x1, #4]",
          "stp x7, x8, [x6]", "stp x9, x2, [x6, #16]"]
    if handler_touch is not None:
        L += touch(handler_touch)
    if sdei_clear:
        L += ["str wzr, [x1, #4]", "str wzr, [x1, #0]"]
    if sdei_resume == "skip":
        L += mov64("x0", SDEI_EVENT_COMPLETE_AND_RESUME) + ["adr x1, skip_resume", "hvc #0"]
    else:
        L += mov64("x0", SDEI_EVENT_COMPLETE) + ["mov x1, #0", "hvc #0"]
    L += ["brk #0x52",                                   # COMPLETE returned: refused
          "skip_resume:",                                # as if an IRQ from the faulting load
          "mrs x9, elr_el1", "add x9, x9, #4", "msr elr_el1, x9", "eret"]

    # IRQ from EL0: page ready -> log {2, reason, token, intid}.
    L += ["el0_irq:", "mrs x9, s3_0_c12_c12_0",          # ICC_IAR1_EL1
          "cmp x9, #1023", "b.eq el0_irq_out",
          *LOG_SLOT,
          "adr x1, apf_block", "mov x7, #2", "ldr w8, [x1, #0]", "ldr w10, [x1, #4]",
          "stp x7, x8, [x6]", "stp x10, x9, [x6, #16]"]
    if irq_clear:
        L += ["str wzr, [x1, #4]", "str wzr, [x1, #0]"]
    if irq_ack:
        L += mov64("x0", KVM_ASYNC_PF) + [f"mov x1, #{ASYNC_PF_IRQ_ACK}", "hvc #0"]
    L += ["msr s3_0_c12_c12_1, x9",                       # ICC_EOIR1_EL1
          "el0_irq_out:", "eret"]

    # svc from EL0: issue IRQ_ACK for the guest (EL0 cannot hvc).
    L += ["el0_sync:"] + mov64("x0", KVM_ASYNC_PF) + [f"mov x1, #{ASYNC_PF_IRQ_ACK}", "hvc #0", "eret"]

    L += ["    .balign 64", "apf_block:",
          "    .word 0, 0", "    .byte " + ", ".join(["0x5a"] * 52), "    .word 0", "    .word 0",
          "    .balign 8", "log_len:", "    .quad 0", "log:", f"    .space {32 * (LOG_MAX + 1)}",
          "    .balign 16", "    .space 256", "el0_stack_top:", "    .quad 0"]
    return "\n".join(l if l.startswith("    ") or l.endswith(":") else "    " + l for l in L) + "\n"


def spin(iters: int) -> list[str]:
    """An EL0 busy loop of ~2 * iters instructions (virtual ns)."""
    return mov64("x23", iters) + ["1:", "subs x23, x23, #1", "b.ne 1b"]


def checkpoint(name: str) -> list[str]:
    return ["brk #0", f"{name}:"]


def boot(src: str, *, npages: int, **machine_kw):
    """A machine with the guest loaded and ``npages`` buffer pages swapped out."""
    m = Machine(seed=0, **machine_kw)
    syms = m.load_asm(src)
    for i in range(npages):
        m.write_u64(BUF + i * PAGE_SIZE, 0xB0B0_0000_0000_0000 | i)
        m.evict(BUF + i * PAGE_SIZE)
    return m, syms


def swap_out(m, addr: int, value: int = 0xC0FFEE) -> None:
    m.write_u64(addr, value)
    m.evict(addr)


def run_to(m, syms, label: str | None, budget: int = 2_000_000):
    """Run until the ``brk #0`` before ``label`` (None: the final one) and step past it."""
    stop = m.run(max_instructions=budget)
    want = syms["el0_done"] if label is None else syms[label] - 4
    assert stop.pc == want, f"stopped at {stop.pc:#x}, expected {want:#x}"
    if label is not None:
        m.set_reg("pc", stop.pc + 4)
    return stop


def read_log(m, syms) -> list[tuple[int, int, int, int]]:
    n = m.read_u64(syms["log_len"])
    out = []
    for k in range(n):
        kind, reason, token, aux = struct.unpack("<4Q", m.read(syms["log"] + 32 * k, 32))
        out.append((kind, reason, token, aux))
    return out


def block(m, syms) -> dict:
    b = syms["apf_block"]
    return {"reason": m.read_u32(b + OFF_REASON), "token": m.read_u32(b + OFF_TOKEN),
            "enabled": m.read_u32(b + OFF_ENABLED)}


def tokens(m, kind: str) -> list[int]:
    return [r.get("token") for r in m.trace.select(kind)]


def gpn(m, addr: int) -> int:
    return m.stage2.gpn_of(addr)


# ---------------------------------------------------------------------- 1. tokens

def test_tokens_count_up_per_notification_and_the_guest_sees_them():
    """Token = (id++ << 12) | vcpu_id, id from 0; each "page not present" is followed by a
    "page ready" with the same token; the guest's handlers saw exactly these values."""
    n = 4
    m, syms = boot(apf_guest(npages=n), npages=n)
    run_to(m, syms, None)
    expected = [(i << 12) | 0 for i in range(n)]
    assert tokens(m, "apf_not_present") == expected
    assert [r.get("gpn") for r in m.trace.select("apf_not_present")] == \
        [gpn(m, BUF + i * PAGE_SIZE) for i in range(n)]
    assert tokens(m, "apf_page_ready") == expected
    # The guest's view, in the order it ran: not-present(t) then page-ready(t), per page.
    log = read_log(m, syms)
    want = []
    for i, t in enumerate(expected):
        want.append((1, PAGE_NOT_PRESENT, t, syms["el0_touch"]))   # interrupted PC = the load
        want.append((2, PAGE_READY, t, APF_PPI))
    assert log == want
    assert all(t & 0xFFF == 0 for t in expected)                   # vcpu_id 0
    # The faulting load was retried while its page-in ran: that is a repeated fault.
    assert dict(m.apf.fallbacks) == {"repeated_fault": n}
    assert m.apf.work == {} and block(m, syms)["reason"] == 0
    for i in range(n):                                               # contents came back
        assert m.read_u64(BUF + i * PAGE_SIZE) == 0xB0B0_0000_0000_0000 | i


def test_token_id_is_16_bits_and_wraps():
    m, syms = boot(apf_guest(npages=3), npages=3)
    m.apf.next_id = 0xFFFE
    run_to(m, syms, None)
    assert tokens(m, "apf_not_present") == [0xFFFE << 12, 0xFFFF << 12, 0]
    assert [e[2] for e in read_log(m, syms) if e[0] == 1] == [0xFFFE << 12, 0xFFFF << 12, 0]


# ---------------------------------------------------------------------- 2. the shared block

def test_enable_writes_enabled_word_and_leaves_the_pad_alone():
    src = apf_guest(npages=0, el1_setup=checkpoint("after_enable"))
    m, syms = boot(src, npages=0)
    assert block(m, syms)["enabled"] == 0
    run_to(m, syms, "after_enable")
    b = syms["apf_block"]
    assert syms["apf_block"] % 64 == 0
    assert m.read_u32(b + OFF_ENABLED) == 1
    assert m.read(b + 8, 52) == b"\x5a" * 52                       # pad untouched
    assert m.apf.enabled and m.apf.block_gpa == b


def test_enable_is_refused_before_the_event_is_registered_and_checks_its_argument():
    """ENABLE before EVENT_REGISTER, with a reserved flag bit, or with a block outside RAM is
    refused (a negative SMCCC code) and changes nothing; a good ENABLE succeeds; ENABLE with
    bit 0 clear turns APF off again, after which a fault is synchronous (apf_disabled)."""
    def enable(word: int) -> list[str]:
        return (mov64("x0", KVM_ASYNC_PF) + [f"mov x1, #{ASYNC_PF_ENABLE}"] + mov64("x2", word & 0xFFFF_FFFF)
                + mov64("x3", word >> 32) + ["hvc #0", "str x0, [x20], #8"])
    block_addr = RAM_BASE + 0x3000
    outside = RAM_BASE + (16 << 20)
    src = "\n".join([
        "    .balign 2048", "vectors:", "    .space 2048", "_start:", "    adr x0, vectors", "    msr vbar_el1, x0",
        "    adr x20, results", *("    " + l for l in enable(block_addr | 1)),
        *("    " + l for l in mov64("x0", SDEI_EVENT_REGISTER)), "    mov x1, #1", "    adr x2, vectors",
        "    mov x3, #0", "    mov x4, #0", "    mov x5, #0", "    hvc #0", "    str x0, [x20], #8",
        *("    " + l for l in enable(block_addr | 1 | 4)),
        *("    " + l for l in enable(block_addr | 1 | (1 << 32))),
        *("    " + l for l in enable(outside | 1)),
        "    brk #0", "refused:",
        *("    " + l for l in enable(block_addr | 1)),
        "    brk #0", "enabled:",
        *("    " + l for l in enable(block_addr)),
        "    brk #0", "disabled:",
        *("    " + l for l in mov64("x10", BUF)), "    ldr x11, [x10]",
        "    brk #0", "el0_done:",
        "    .balign 8", "results:", "    .space 128", ""])
    m = Machine(seed=0)
    syms = m.load_asm(src)
    swap_out(m, BUF)
    res = lambda n: [m.read_u64(syms["results"] + 8 * i) for i in range(n)]
    neg = lambda v: v >> 63 == 1
    run_to(m, syms, "refused")
    r = res(5)
    assert neg(r[0]) and r[1] == 0 and neg(r[2]) and neg(r[3]) and neg(r[4]), [hex(v) for v in r]
    assert not m.apf.enabled and m.read_u32(block_addr + OFF_ENABLED) == 0
    assert m.trace.select("apf_enable") == []
    run_to(m, syms, "enabled")
    assert res(6)[5] == 0 and m.apf.enabled and m.apf.block_gpa == block_addr
    assert m.read_u32(block_addr + OFF_ENABLED) == 1
    run_to(m, syms, "disabled")
    assert res(7)[6] == 0 and not m.apf.enabled
    m.run()                                          # the load: APF is off, so it stalls
    assert dict(m.apf.fallbacks) == {"apf_disabled": 1}
    assert m.apf.not_present_count == 0


def test_page_ready_waits_for_the_guest_to_free_the_slot():
    """The SDEI handler does not clear the slot. The page-in finishes (the page is mapped),
    but "page ready" is not written while reason != 0; once EL0 clears it, the host
    delivers page ready for the same token into the same slot.

    The host notices the guest's store at its next look at the vCPU (any exit or the
    end of a run slice, at most 200k instructions): the EL0 spin after the store is
    long enough for that."""
    tail = spin(100_000) + checkpoint("cp_busy") + ["str wzr, [x24]"] + spin(150_000) + checkpoint("cp_free")
    src = apf_guest(npages=1, sdei_clear=False, sdei_resume="skip",
                    el1_setup=["adr x24, apf_block"], el0_tail=tail)
    m, syms = boot(src, npages=1)
    run_to(m, syms, "cp_busy")
    tok = tokens(m, "apf_not_present")
    assert tok == [0]
    assert m.trace.select("apf_page_in_done")                       # the I/O is over ...
    assert m.page_state(BUF).name == "RESIDENT"
    assert m.trace.select("apf_page_ready") == []                   # ... but the slot is busy
    assert block(m, syms)["reason"] == PAGE_NOT_PRESENT and block(m, syms)["token"] == tok[0]
    assert not m.host.gic.line[APF_PPI]
    run_to(m, syms, "cp_free")
    assert tokens(m, "apf_page_ready") == tok
    assert read_log(m, syms) == [(1, PAGE_NOT_PRESENT, tok[0], syms["el0_touch"]),
                                 (2, PAGE_READY, tok[0], APF_PPI)]


def test_unacknowledged_slot_makes_the_next_fault_fall_back_slot_busy():
    """While reason != 0 a second fault is synchronous and writes nothing to the slot."""
    src = apf_guest(npages=2, sdei_clear=False, sdei_resume="skip")
    m, syms = boot(src, npages=2)
    run_to(m, syms, None)
    assert tokens(m, "apf_not_present") == [0]                      # one notification only
    assert m.sdei.dispatch_count == 1
    assert [e[:3] for e in read_log(m, syms)] == [(1, PAGE_NOT_PRESENT, 0)]
    assert block(m, syms)["reason"] == PAGE_NOT_PRESENT and block(m, syms)["token"] == 0
    assert dict(m.apf.fallbacks) == {"slot_busy": 1}
    stalls = m.trace.select("stall")
    assert [s.get("reason") for s in stalls] == ["slot_busy"] and stalls[0].get("ns") > 0
    assert m.page_state(BUF + PAGE_SIZE).name == "RESIDENT"


# ---------------------------------------------------------------------- 3. IRQ_ACK

def test_page_ready_ppi_stays_pending_until_irq_ack_and_gates_the_next():
    """Two outstanding page-ins, EL0 IRQs masked. The first "page ready" raises PPI 19;
    freeing the slot is not enough for the second: only IRQ_ACK lowers the line and
    lets the host deliver the next one."""
    tail = (spin(100_000) + checkpoint("cp_first")
            + ["str wzr, [x24, #4]", "str wzr, [x24]"] + spin(50_000) + checkpoint("cp_cleared")
            + ["svc #0"] + spin(1_000) + checkpoint("cp_acked"))
    src = apf_guest(npages=2, sdei_resume="skip", el0_irqs=False,
                    el1_setup=["adr x24, apf_block"], el0_tail=tail)
    m, syms = boot(src, npages=2)
    run_to(m, syms, "cp_first")
    t0, t1 = tokens(m, "apf_not_present")
    assert (t0, t1) == (0, 1 << 12)
    assert len(m.trace.select("apf_page_in_done")) == 2             # both pages are in
    assert tokens(m, "apf_page_ready") == [t0]
    assert m.host.gic.line[APF_PPI] and m.host.gic.is_pending(APF_PPI)
    assert block(m, syms) == {"reason": PAGE_READY, "token": t0, "enabled": 1}

    run_to(m, syms, "cp_cleared")                                   # slot free, no ack yet
    assert tokens(m, "apf_page_ready") == [t0]
    assert m.host.gic.line[APF_PPI]
    assert block(m, syms)["reason"] == 0

    run_to(m, syms, "cp_acked")                                     # IRQ_ACK from the svc
    assert tokens(m, "apf_ack") == [t0]
    assert tokens(m, "apf_page_ready") == [t0, t1]
    kinds = [r.kind for r in m.trace.records if r.kind in ("apf_ack", "apf_page_ready")]
    assert kinds == ["apf_page_ready", "apf_ack", "apf_page_ready"]
    assert m.host.gic.line[APF_PPI]                                 # raised again, for t1
    assert block(m, syms) == {"reason": PAGE_READY, "token": t1, "enabled": 1}
    assert set(m.apf.work) == {t1}


def test_handler_that_never_acks_gets_no_second_page_ready():
    """The IRQ handler frees the slot and EOIs but never IRQ_ACKs: the line stays high
    (the level PPI is taken again and again) and the second page ready never comes.

    The level PPI is re-taken at every return to EL0, before the task's next
    instruction (as on hardware): an interrupt storm, so the task never finishes."""
    src = apf_guest(npages=2, sdei_resume="skip", irq_ack=False, el0_tail=spin(100_000))
    m, syms = boot(src, npages=2)
    assert m.host.run(500_000, budget_error=False) is None
    assert tokens(m, "apf_page_ready") == [0]
    assert m.host.gic.line[APF_PPI]
    log = read_log(m, syms)
    assert log[:3] == [(1, 1, 0, syms["el0_touch"]), (1, 1, 1 << 12, syms["el0_touch"]),
                       (2, PAGE_READY, 0, APF_PPI)]
    assert len(log) > 3 and all(e == (2, 0, 0, APF_PPI) for e in log[3:])   # re-taken, slot empty


# ---------------------------------------------------------------------- 4. wake all

def test_wake_all_token_wakes_every_waiting_task():
    tasks = [guest.memtouch(4, rounds=1, first_round=1, tag=1), guest.memtouch(4, rounds=1, first_round=1, tag=2)]
    m = Machine(seed=0)
    syms = m.load_asm(guest.build_source(tasks, tick_ns=100_000))
    guest.pin_kernel(m, syms)
    guest.attach(m, syms)
    for t, buf in enumerate(guest.task_buffers(tasks)):
        for i, addr in enumerate(buf):
            m.write_u64(addr, guest.memtouch_value(t + 1, 0, i))
            m.evict(addr)
    state = lambda: guest.read_kernel_state(m, syms)
    assert m.host.run(10_000_000, until=lambda: [t["state"] for t in state()["tasks"]] == ["apf_wait"] * 2) is None
    assert len(state()["apf"]["table"]) == 2
    m.apf.wake_all()
    assert m.host.run(10_000_000, until=lambda: state()["apf"]["wake_all"] == 1) is None
    st = state()
    assert [t["state"] for t in st["tasks"]] == ["runnable", "runnable"]
    assert [t["wakeups"] for t in st["tasks"]] == [1, 1]
    assert tokens(m, "apf_page_ready")[-1] == WAKE_ALL
    assert m.host.run(30_000_000) is not None
    st = state()
    assert all(t["exited"] and t["mismatches"] == 0 for t in st["tasks"])
    assert all(t["parked"] == t["wakeups"] for t in st["tasks"])
    assert WAKE_ALL in tokens(m, "apf_ack")
    assert m.apf.work == {} and m.apf.wake_all_count == 1


def test_wake_all_after_the_host_turns_apf_off_releases_the_waiters():
    """docs/REFERENCES.md ("APF protocol"): IRQ_ACK lowers the PPI; token ~0 wakes every waiting task. Switching
    APF off at the host with a task parked, then sending wake-all, must let the task run
    on (its later faults synchronous) and finish."""
    tasks = [guest.memtouch(8, rounds=1, first_round=1), guest.compute(iters=40, report=8, measured=False)]
    m = Machine(seed=0)
    syms = m.load_asm(guest.build_source(tasks, tick_ns=100_000))
    guest.pin_kernel(m, syms)
    guest.attach(m, syms)
    for i, addr in enumerate(guest.task_buffers(tasks)[0]):
        m.write_u64(addr, guest.memtouch_value(0, 0, i))
        m.evict(addr)
    state = lambda: guest.read_kernel_state(m, syms)
    assert m.host.run(10_000_000, until=lambda: state()["tasks"][0]["state"] == "apf_wait") is None
    m.apf.allowed = False
    m.apf.wake_all()
    bad_ready = syms["apf_bad_ready"]
    # Stop early if the guest is stuck re-taking an unacknowledgeable page-ready PPI.
    stop = m.host.run(2_000_000, budget_error=False, until=lambda: m.read_u64(bad_ready) > 100)
    st = state()
    assert st["apf"]["bad_ready"] == 0
    assert stop is not None and st["stop_reason"] == "stop_mask tasks exited"
    mt = st["tasks"][0]
    assert mt["exited"] and mt["mismatches"] == 0 and mt["parked"] == mt["wakeups"] == 1
    assert WAKE_ALL in tokens(m, "apf_ack")
    assert not m.host.gic.line[APF_PPI]
    assert m.apf.fallbacks["apf_disabled"] > 0          # faults after the switch-off stall


# ---------------------------------------------------------------------- 5. fallbacks

def _fallback_case(reason: str):
    """(guest source, machine kwargs, host action at checkpoint 'cp', expected fallbacks)."""
    if reason == "apf_disabled":
        return apf_guest(apf_enable=False), {}, None, {"apf_disabled": 1}
    if reason == "kernel_mode":
        return apf_guest(npages=0, el1_setup=touch(EXTRA)), {}, None, {"kernel_mode": 1}
    if reason == "in_handler":
        return (apf_guest(send_always=True, handler_touch=EXTRA), {}, None,
                {"in_handler": 1})
    if reason == "event_pending":
        setup = hvc(SDEI_PE_MASK) + checkpoint("cp")
        return apf_guest(el1_setup=setup), {}, "raise", {"event_pending": 1}
    if reason == "pe_masked":
        return apf_guest(el1_setup=hvc(SDEI_PE_MASK)), {}, None, {"pe_masked": 1}
    if reason == "event_disabled":
        return (apf_guest(el1_setup=hvc(SDEI_EVENT_DISABLE, EV_APF) + ["cbnz x0, setup_failed"]), {}, None,
                {"event_disabled": 1})
    if reason == "slot_busy":
        return apf_guest(npages=2, sdei_clear=False, sdei_resume="skip"), {}, None, {"slot_busy": 1}
    if reason == "queue_full":
        # 65 distinct pages, each skipped after its notification, no page-ready ack (IRQs
        # masked at EL0), a slow disk: the 65th finds 64 outstanding.
        return (apf_guest(npages=65, sdei_resume="skip", el0_irqs=False), {"store": "hdd"}, None,
                {"queue_full": 1})
    if reason == "repeated_fault":
        return apf_guest(npages=1), {}, None, {"repeated_fault": 1}
    raise AssertionError(reason)


@pytest.mark.parametrize("reason", [r for r in FALLBACKS if r not in ("prefault", "irq_masked")])   # sdei design; irq_masked: test_designs.py
def test_each_fallback_reason_stalls_the_vcpu(reason):
    src, kw, action, expected = _fallback_case(reason)
    npages = 65 if reason == "queue_full" else 2 if reason == "slot_busy" else 1
    m, syms = boot(src, npages=npages, **kw)
    if reason in ("kernel_mode", "in_handler"):
        swap_out(m, EXTRA)
    if action == "raise":
        run_to(m, syms, "cp")
        assert m.sdei.raise_event(EV_APF) is False                 # masked: stays pending
        assert m.sdei.snapshot()["events"][EV_APF]["pending"]
    run_to(m, syms, None, budget=5_000_000)
    assert dict(m.apf.fallbacks) == expected
    assert "prefault" not in m.apf.fallbacks
    stalls = [s for s in m.trace.select("stall") if s.get("reason") == reason]
    assert len(stalls) == expected[reason] and all(s.get("ns") > 0 for s in stalls)
    assert m.trace.breakdown()["stalled"] >= sum(s.get("ns") for s in stalls) > 0
    fb = m.trace.select("apf_fallback", reason=reason)
    assert len(fb) == expected[reason]
    if reason == "kernel_mode":
        assert m.trace.select("stage2_fault", gpn=gpn(m, EXTRA))[0].get("el") == 1
        assert m.apf.not_present_count == 0
    if reason == "in_handler":
        f = m.trace.select("stage2_fault", gpn=gpn(m, EXTRA))[0]
        assert f.get("el") == 1 and fb[0].get("gpn") == gpn(m, EXTRA)
    if reason in ("apf_disabled", "kernel_mode", "event_pending", "pe_masked", "event_disabled"):
        assert m.apf.not_present_count == 0 and m.sdei.dispatch_count == 0
        assert m.page_state(BUF if reason != "kernel_mode" else EXTRA).name == "RESIDENT"
    if reason == "queue_full":
        assert m.apf.not_present_count == 64
        assert len(m.trace.select("apf_not_present")) == 64
        assert fb[0].get("gpn") == gpn(m, BUF + 64 * PAGE_SIZE)   # the 65th page
        assert m.trace.select("apf_ack") == []


def test_kernel_mode_fault_with_send_always_is_asynchronous():
    """SEND_ALWAYS lifts the user-mode-only rule: the EL1 fault is notified, not stalled."""
    m, syms = boot(apf_guest(npages=0, send_always=True, el1_setup=touch(EXTRA)), npages=0)
    swap_out(m, EXTRA)
    run_to(m, syms, None)
    assert "kernel_mode" not in m.apf.fallbacks
    assert [r.get("gpn") for r in m.trace.select("apf_not_present")] == [gpn(m, EXTRA)]


def test_prefault_is_a_listed_reason_that_is_never_counted():
    assert "prefault" in FALLBACKS
    m, syms = boot(apf_guest(npages=6, sdei_resume="skip", el0_tail=spin(100_000)), npages=6)
    run_to(m, syms, None)
    assert m.apf.not_present_count == m.apf.page_ready_count == 6
    assert m.apf.fallbacks.get("prefault", 0) == 0
    assert m.trace.select("apf_fallback", reason="prefault") == []


# ---------------------------------------------------------------------- 6. no lost wake-ups

def test_mini_kernel_loses_no_wakeups_under_memory_pressure():
    n, rounds = 24, 3
    tasks = [guest.memtouch(n, rounds=rounds, batch=4, tag=t + 1, first_round=1) for t in range(3)]
    tasks.append(guest.compute(iters=40, report=8, measured=False))
    m = Machine(seed=1)
    syms = m.load_asm(guest.build_source(tasks, tick_ns=50_000))
    guest.pin_kernel(m, syms)
    guest.attach(m, syms)
    bufs = guest.task_buffers(tasks)
    for t in range(3):
        for i, addr in enumerate(bufs[t]):
            m.write_u64(addr, guest.memtouch_value(t + 1, 0, i))
            m.evict(addr)
    m.stage2.limit_pages = len(guest.kernel_pages(syms)) + 20     # 72 buffer pages, 20 frames
    m.run(max_instructions=60_000_000)
    st = guest.read_kernel_state(m, syms)
    assert st["panic"] is None and st["stop_reason"] == "stop_mask tasks exited"
    mts = st["tasks"][:3]
    for t in mts:
        assert t["exited"] and t["mismatches"] == 0 and t["rounds_done"] == rounds
        assert t["parked"] == t["wakeups"] > 0
    a = st["apf"]
    assert sum(t["parked"] for t in mts) == a["not_present"] == a["page_ready"] == m.apf.not_present_count
    assert a["not_present"] > 3 * n                               # pages came back more than once
    assert a["table"] == [] and a["table_full"] == a["bad_ready"] == 0
    assert m.apf.work == {} and not m.apf.ready and m.apf.notified is None
    assert st["tasks"][3]["work"] > 0
    for t in range(3):                                            # bytes intact, wherever they are
        for i, addr in enumerate(bufs[t]):
            assert m.read_u64(addr) == guest.memtouch_value(t + 1, rounds, i)


# ---------------------------------------------------------------------- 7. determinism

def test_same_seed_same_trace_and_a_different_seed_differs():
    kw = dict(npages=64, limit_pages=16)
    a = run_scenario("memtouch", apf=True, seed=3, **kw)
    b = run_scenario("memtouch", apf=True, seed=3, **kw)
    assert a.trace.digest() == b.trace.digest()
    assert a.summary() == b.summary()
    c = run_scenario("memtouch", apf=True, seed=4, **kw)
    assert c.trace.digest() != a.trace.digest()
    assert c.summary() != a.summary()
