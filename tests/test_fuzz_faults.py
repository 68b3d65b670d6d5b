"""Seeded fault-schedule fuzzing: every delivery design, 1-4 vCPUs, host-side injections.

Each seed draws a design ("sync" = APF off, "sdei", "irq", "abort", "halt"), a machine and a
schedule of injections that the host carries out at random virtual times through the
services' seams (``Host.schedule``): page evictions (``Stage2.evict``), swap latencies
(``SwapStore.set_read_latency``), memory limits (``Stage2.set_limit``), APF withdrawn and
offered again (``ApfService.set_allowed``), the SDEI PE masked and unmasked from the host
(``SdeiService.set_pe_masked``), the APF queue held and given back
(``fill_queue``/``release_queue``).

- one vCPU: the mini-kernel (``scenarios.build("memtouch", ...)``, 8-24 pages, 1-2 rounds);
- 2-4 vCPUs, one case in five: the SMP guest kernel (``scenarios.build("smp_memtouch", ...)``,
  a walker of 4-8 pages on every vCPU, a compute task beside each or not);
- 2-4 vCPUs otherwise: a small assembly guest (``smp_guest``) in which every vCPU walks its own
  pages at EL1, checks the value each page had and writes the next; for sdei, irq and
  abort every vCPU is an APF client of its own (not-present handler, page-ready IRQ with
  IRQ_ACK); "halt" needs nothing from the guest.

Invariants (docs/ROBUSTNESS.md): no design loses a wake-up (every parked task is woken,
nothing is left queued, held or awaiting an ack, no page-in is left running); no token is
outstanding twice; every page is intact (the guest's own checks, a SHA-256 spy on every
page-out/page-in, and every buffer page's final bytes); each vCPU's time breakdown sums to
its elapsed time, in the trace and in ``cpu_report()``; the same seed gives the same trace
digest (one seed in four runs twice).
"""

from __future__ import annotations

import hashlib
import os
import random
import struct

import pytest

from apflab import Machine, guest, psci, scenarios
from apflab.stage2 import PageState
from fuzzlib import chunks, report, seeds
from guestlib import mov64
from test_properties import DigestSpy, check_time

FAULT_SCHEDULES = 500            # per CI run (docs/ROBUSTNESS.md); x10 with APFLAB_FUZZ=long
TWICE_EVERY = 4                  # one seed in four runs twice: same seed, same digest
SEEDS = seeds(ci_base=0, long_base=2_000_000, n=FAULT_SCHEDULES)
DESIGNS = ("sync", "sdei", "irq", "abort", "halt")
PAGE = guest.PAGE_SIZE


# ---------------------------------------------------------------------------------- drawing

def draw_case(seed: int):
    """(config, injections) for ``seed``; an injection is (time_ns, action, argument...)."""
    rng = random.Random(seed)
    design = DESIGNS[seed % len(DESIGNS)]               # every design equally often
    vcpus = rng.choice((1, 1, 2, 3, 4))
    cfg = {"design": design, "vcpus": vcpus, "seed": rng.getrandbits(32),
           "latency_ns": rng.choice((1_000, 5_000, 20_000, 60_000)),
           "store": rng.choice(("ssd", "hdd"))}
    if vcpus == 1:
        n = rng.randint(8, 24)
        cfg.update(npages=n, rounds=rng.randint(1, 2), limit_pages=rng.randint(4, n + 4),
                   tick_ns=rng.choice((20_000, 50_000, 100_000)), calc_thread=rng.random() < 0.5)
    else:
        smp_kernel = rng.random() < 0.2   # the SMP guest kernel's smp_memtouch, a walker per vCPU
        n = rng.randint(4, 8) if smp_kernel else rng.randint(2, 6)
        cfg.update(npages=n, rounds=rng.randint(1, 2), limit_pages=rng.randint(2 * vcpus, n * vcpus + 4),
                   smp_kernel=smp_kernel)
        if smp_kernel:
            cfg.update(tick_ns=rng.choice((20_000, 50_000, 100_000)),
                       calc_thread=vcpus <= 4 and rng.random() < 0.5)
    horizon = 300_000 * cfg["rounds"] + 10 * cfg["latency_ns"] * n
    inj = []
    for _ in range(rng.randint(0, 8)):
        t = rng.randint(20_000, horizon)
        what = rng.choice(("evict", "evict", "latency", "limit", "allow", "mask", "fill"))
        if what == "evict":
            inj.append((t, "evict", rng.randrange(n * vcpus)))
        elif what == "latency":
            inj.append((t, "latency", rng.choice((1_000, 10_000, 100_000))))
        elif what == "limit":
            inj.append((t, "limit", rng.randint(2 * vcpus if vcpus > 1 else 2, n * vcpus + 4)))
        else:                          # paired: switched off at t, back on later
            inj.append((t, what, t + rng.randint(1_000, 200_000)))
    return cfg, inj


# ---------------------------------------------------------------------------------- machines

CPU_ON = psci.CPU_ON_64


def smp_value(v: int, rnd: int, i: int) -> int:
    return (0xA5 << 56) | (v << 48) | (rnd << 32) | i


KVM_ASYNC_PF, ASYNC_PF_ENABLE, ASYNC_PF_IRQ_ACK = 0x8600_0002, 4, 5
SDEI_REGISTER, SDEI_ENABLE, SDEI_COMPLETE, SDEI_PE_UNMASK = 0xC4000021, 0xC4000022, 0xC4000025, 0xC400002C
DESIGN_FLAG = {"sdei": 0, "irq": 1 << 2, "abort": 2 << 2}      # ENABLE control word bits [3:2]
NP_PPI, READY_PPI = 20, 19


def smp_guest(vcpus: int, npages: int, rounds: int, design: str) -> str:
    """vCPU v walks pages [v*npages, (v+1)*npages) of ``buf`` ``rounds`` times at EL1: checks
    the u64 each holds (round r-1's value; ``bad`` counts mismatches) and writes round r's.

    For sdei, irq and abort it is an APF client of its own block (ENABLE with SEND_ALWAYS,
    since it faults at EL1): "not present" (the SDEI handler, the PPI 20 IRQ or the data
    abort) counts the notice and frees the slot, and the faulting load runs again (a refault
    while the page-in runs: the host's repeated-fault path); "page ready" (PPI 19) counts,
    frees the slot and acknowledges with IRQ_ACK. A vCPU is done when its walk is over and
    it has had a page ready for every not present; vCPU 0 stops (brk #0) once every vCPU is
    done, or at once if one of them took an exception it does not expect (``bad``)."""
    apf = design in DESIGN_FLAG
    start = []
    for i in range(1, vcpus):
        start += mov64("x0", CPU_ON) + [f"mov x1, #{i}", "adr x2, secondary", f"mov x3, #{i}", "hvc #0",
                                        "cbnz x0, fail"]
    whoami = ["mrs x9, mpidr_el1", "and x9, x9, #0xff", "adr x1, apf_blocks", "add x1, x1, x9, lsl #6",
              "adr x2, counts", "add x2, x2, x9, lsl #4"]            # x1 = my block, x2 = my counts

    def notice(reason: int, off: int) -> list[str]:
        return ["ldr w10, [x1]", f"cmp w10, #{reason}", "b.ne bad_notice",
                f"ldr x11, [x2, #{off}]", "add x11, x11, #1", f"str x11, [x2, #{off}]",
                "str wzr, [x1, #4]", "str wzr, [x1]"]               # free the slot: token, reason

    save = ["stp x0, x1, [sp, #-16]!", "stp x2, x3, [sp, #-16]!", "stp x9, x10, [sp, #-16]!",
            "stp x11, x12, [sp, #-16]!"]
    restore = ["ldp x11, x12, [sp], #16", "ldp x9, x10, [sp], #16", "ldp x2, x3, [sp], #16",
               "ldp x0, x1, [sp], #16"]
    vectors = []
    for n in range(16):
        vectors += [".balign 128"] + [{4: "b sync_entry", 5: "b irq_entry"}.get(n, "b bad_notice")]
    setup = ["setup:", "adr x9, stacks", "add x10, x19, #1", "add x9, x9, x10, lsl #12", "mov sp, x9",
             "adr x0, vectors", "msr vbar_el1, x0",
             "mov x0, #0xff", "msr s3_0_c4_c6_0, x0",               # ICC_PMR_EL1
             "mov x0, #1", "msr s3_0_c12_c12_7, x0"]                # ICC_IGRPEN1_EL1
    if design == "sdei":
        setup += mov64("x0", SDEI_REGISTER) + ["mov x1, #1", "adr x2, sdei_entry", "mov x3, #0", "mov x4, #0",
                                               "mov x5, #0", "hvc #0", "cbnz x0, fail"]
        setup += mov64("x0", SDEI_ENABLE) + ["mov x1, #1", "hvc #0", "cbnz x0, fail"]
        setup += mov64("x0", SDEI_PE_UNMASK) + ["hvc #0"]
    if apf:
        setup += ["adr x4, apf_blocks", "add x4, x4, x19, lsl #6", f"mov x5, #{3 | DESIGN_FLAG[design]}",
                  "orr x4, x4, x5"]
        setup += mov64("x0", KVM_ASYNC_PF) + [f"mov x1, #{ASYNC_PF_ENABLE}", "mov w2, w4", "lsr x3, x4, #32",
                                              "hvc #0", "cbnz x0, fail"]
    setup += ["msr daifclr, #2", "ret"]
    wait_ready = (["mrs x9, mpidr_el1", "and x9, x9, #0xff", "adr x2, counts", "add x2, x2, x9, lsl #4",
                   "5: ldr x10, [x2]", "ldr x11, [x2, #8]", "cmp x10, x11", "b.ne 5b"] if apf else [])
    src = [".balign 2048", "vectors:", *vectors, ".balign 128",
           "_start:", *start, "mov x19, #0", "b worker",
           "secondary:", "mov x19, x0",
           "worker:", "bl setup",
           "adr x20, buf", f"mov x9, #{npages * PAGE}", "madd x20, x19, x9, x20",
           "mov x21, #1",                   # round
           "round:", "mov x22, #0", "mov x23, x20",
           "page:",
           # expected = 0xA5<<56 | v<<48 | (round-1)<<32 | i
           "mov x10, #0xA5", "lsl x10, x10, #56", "orr x10, x10, x19, lsl #48",
           "sub x11, x21, #1", "orr x10, x10, x11, lsl #32", "orr x10, x10, x22",
           "ldr x12, [x23]", "cmp x12, x10", "b.eq 1f",
           "adr x13, bad", "2: ldaxr x14, [x13]", "add x14, x14, #1", "stlxr w15, x14, [x13]", "cbnz w15, 2b",
           "1: mov x10, #0xA5", "lsl x10, x10, #56", "orr x10, x10, x19, lsl #48",
           "orr x10, x10, x21, lsl #32", "orr x10, x10, x22", "str x10, [x23]",
           "add x23, x23, #4096", "add x22, x22, #1", f"cmp x22, #{npages}", "b.lo page",
           "add x21, x21, #1", f"cmp x21, #{rounds}", "b.ls round",
           *wait_ready,
           "adr x13, done", "3: ldaxr x14, [x13]", "add x14, x14, #1", "stlxr w15, x14, [x13]", "cbnz w15, 3b",
           "cbnz x19, park",
           "adr x15, bad",
           "4: ldar x14, [x15]", "cbnz x14, 6f", "ldar x14, [x13]", f"cmp x14, #{vcpus}", "b.ne 4b",
           "6: brk #0",
           "park: wfi", "b park",
           "fail: brk #2",
           *setup,
           # SDEI "page not present": x0-x17 are the handler's (COMPLETE restores them)
           "sdei_entry:", *whoami, *notice(1, 0), *mov64("x0", SDEI_COMPLETE), "hvc #0",
           # the data abort of the abort design (EC 0x25, from EL1): the load runs again on eret
           "sync_entry:", *save, "mrs x9, esr_el1", "lsr x9, x9, #26", "cmp x9, #0x25", "b.ne bad_notice",
           *whoami, *notice(1, 0), *restore, "eret",
           "irq_entry:", *save, "mrs x12, s3_0_c12_c12_0",      # ICC_IAR1_EL1
           "cmp x12, #1023", "b.eq 9f", *whoami,
           f"cmp x12, #{NP_PPI}", "b.ne 7f", *notice(1, 0), "b 8f",
           f"7: cmp x12, #{READY_PPI}", "b.ne 8f", *notice(2, 8),
           *mov64("x0", KVM_ASYNC_PF), f"mov x1, #{ASYNC_PF_IRQ_ACK}", "hvc #0",
           "8: msr s3_0_c12_c12_1, x12",                           # ICC_EOIR1_EL1
           "9:", *restore, "eret",
           "bad_notice:", "adr x9, bad", "mov x10, #1000", "str x10, [x9]", "10: wfi", "b 10b",
           ".balign 64", f"apf_blocks: .space {64 * vcpus}",
           f"counts: .space {16 * vcpus}",
           ".balign 8", "done: .quad 0", "bad: .quad 0",
           ".balign 4096", f"stacks: .space {4096 * vcpus}",
           ".balign 4096", "buf:"]
    return "\n".join(l if l.endswith(":") else "    " + l for l in src) + "\n"


def filler(tag: int, i: int) -> bytes:
    return (hashlib.sha256(f"fuzz {tag} page {i}".encode()).digest() * (PAGE // 32))[8:]


class Run:
    """One machine set up for a case: the buffer pages, their expected final bytes."""

    def __init__(self, cfg: dict):
        d = cfg["design"]
        apf, delivery = d != "sync", ("sdei" if d == "sync" else d)
        self.cfg = cfg
        if cfg["vcpus"] == 1 or cfg.get("smp_kernel"):
            v = cfg["vcpus"]
            kw = {} if v == 1 else {"vcpus": v}
            setup = scenarios.build("memtouch" if v == 1 else "smp_memtouch", apf=apf, delivery=delivery,
                                    seed=cfg["seed"], npages=cfg["npages"], rounds=cfg["rounds"],
                                    limit_pages=cfg["limit_pages"], tick_ns=cfg["tick_ns"],
                                    calc_thread=cfg["calc_thread"], store=cfg["store"],
                                    latency_ns=cfg["latency_ns"], ram_mib=4, **kw)
            self.setup, self.m = setup, setup.machine
            self.walkers = [i for i, t in enumerate(setup.tasks) if t.entry == "memtouch"]
            self.pages, self.final = [], []
            for i in self.walkers:       # walker i (tag i + 1) ends with its last round's values
                buf = list(setup.buffers[i])
                self.pages += buf
                self.final += [struct.pack("<Q", guest.memtouch_value(i + 1, cfg["rounds"], j))
                               for j in range(len(buf))]
            self.pinned = len(self.m.stage2.pinned)
            self.rest = [None] * len(self.pages)        # the scenario fills only the first u64
        else:
            from apflab.backing import make_store
            n, v = cfg["npages"], cfg["vcpus"]
            m = Machine(seed=cfg["seed"], vcpus=v, ram_size=1 << 20, delivery=delivery,
                        store=make_store(cfg["store"], latency_ns=cfg["latency_ns"]), quantum=2_000)
            syms = m.load_asm(smp_guest(v, n, cfg["rounds"], d))
            self.setup, self.m, self.syms = None, m, syms
            if not apf:
                for svc in [m.apf_of(k) for k in range(v)]:
                    svc.set_allowed(False)
            self.pages = [syms["buf"] + PAGE * j for j in range(n * v)]
            for j, addr in enumerate(self.pages):
                m.write(addr, struct.pack("<Q", smp_value(j // n, 0, j % n)) + filler(j // n, j % n))
                m.evict(addr)
            self.final = [struct.pack("<Q", smp_value(j // n, cfg["rounds"], j % n)) for j in range(n * v)]
            self.rest = [filler(j // n, j % n) for j in range(n * v)]
            # code, handlers' stacks and APF blocks stay in (as a kernel pins its own)
            for addr in range(m.ram_base, syms["buf"], PAGE):
                m.stage2.pin(m.stage2.gpn_of(addr))
            self.pinned = len(m.stage2.pinned)
            m.stage2.set_limit(self.pinned + cfg["limit_pages"])
        self.spy = DigestSpy(self.m.stage2)

    # the seams the injections go through
    def inject(self, inj: list) -> None:
        m, host = self.m, self.m.host
        s2 = m.stage2
        v = self.cfg["vcpus"]
        apfs = [m.apf_of(k) for k in range(v)]
        sdeis = [m.sdei_of(k) for k in range(v)]

        def evict(j):
            gpn = s2.gpn_of(self.pages[j % len(self.pages)])
            if s2.state(gpn) == PageState.RESIDENT and gpn not in s2.pinned:
                s2.evict(gpn)

        def limit(pages):
            s2.set_limit(self.pinned + pages)

        def toggle(fn_off, fn_on, t_on):
            def off():
                fn_off()
                host.schedule(max(t_on, host.now), "fuzz_on", fn_on)
            return off

        offer = self.cfg["design"] != "sync"
        for t, what, arg in inj:
            if what == "evict":
                fn = lambda j=arg: evict(j)
            elif what == "latency":
                fn = lambda ns=arg: s2.swap.set_read_latency(ns, s2.swap.jitter)
            elif what == "limit":
                fn = lambda p=arg: limit(p)
            elif what == "allow":
                fn = toggle(lambda: [a.set_allowed(False) for a in apfs],
                            lambda: [a.set_allowed(offer) for a in apfs], arg)
            elif what == "mask":
                fn = toggle(lambda: [s.set_pe_masked(True) for s in sdeis],
                            lambda: [s.set_pe_masked(False) for s in sdeis], arg)
            else:
                fn = toggle(lambda: [a.fill_queue() for a in apfs], lambda: [a.release_queue() for a in apfs], arg)
            host.schedule(t, f"fuzz_{what}", fn)

    def go(self):
        if self.setup is not None:
            return self.m.run(max_instructions=self.setup.params["max_instructions"])
        return self.m.run(max_instructions=20_000_000)


def check_tokens(trace, design: str) -> None:
    """A token is never issued while outstanding; every one issued is retired: by its
    IRQ_ACK, or (halt) by the vCPU's release."""
    out = {}
    done_kind = "apf_release" if design == "halt" else "apf_ack"
    for rec in trace.records:
        tok = rec.get("token")
        if rec.kind == "apf_not_present":
            assert tok not in out, f"token {tok:#x} issued at t={rec.t_ns} while outstanding"
            out[tok] = rec.t_ns
        elif rec.kind == done_kind and tok != 0xFFFFFFFF:
            assert out.pop(tok, None) is not None, f"{done_kind} of token {tok:#x}, not outstanding"
    assert out == {}, f"tokens never retired: {sorted(out)}"


def check_run(r: Run) -> None:
    m, cfg = r.m, r.cfg
    tr = m.trace
    assert tr.dropped == 0
    v = cfg["vcpus"]
    # no design loses a wake-up: nothing queued, held or awaiting an ack; no page-in left running
    for k in range(v):
        a = m.apf_of(k)
        assert a.work == {} and not a.ready and a.notified is None, f"vCPU {k}: APF work left {a.snapshot()}"
        assert getattr(a.delivery, "held", None) is None, f"vCPU {k} still held in the host"
        assert m.sdei_of(k).pe.running == [], f"vCPU {k}: an SDEI handler never completed"
    assert m.stage2.inflight_pages == 0, "a page-in never completed"
    check_tokens(tr, cfg["design"])
    if cfg["design"] == "sync":
        assert tr.counts.get("apf_not_present", 0) == 0
    if r.setup is not None:              # a guest kernel: single-CPU, or SMP (smp_memtouch)
        ks = guest.read_kernel_state(m, r.setup.symbols)
        assert ks["panic"] is None
        for t in ks["tasks"]:
            assert t["parked"] == t["wakeups"], f"task {t['index']}: parked {t['parked']} != woken {t['wakeups']}"
        for i in r.walkers:
            mt = ks["tasks"][i]
            assert mt["exited"] and mt["mismatches"] == 0 and mt["rounds_done"] == cfg["rounds"], f"walker {i}"
        if cfg["design"] not in ("sync", "halt"):
            assert ks["apf"]["table"] == [] and ks["apf"]["bad_ready"] == 0 and ks["apf"]["table_full"] == 0
        if v == 1:
            check_time(tr)
    else:
        assert m.read_u64(r.syms["bad"]) == 0 and m.read_u64(r.syms["done"]) == v
        for k in range(v):       # every "not present" the guest took was followed by a "page ready"
            np_, ready = struct.unpack("<2Q", m.read(r.syms["counts"] + 16 * k, 16))
            assert np_ == ready, f"vCPU {k}: {np_} not present, {ready} page ready"
    # pages intact: every return equals its departure, every page ends as the guest left it
    assert r.spy.mismatches == [], f"pages changed while out: {r.spy.mismatches}"
    m.stage2.check()
    for j, addr in enumerate(r.pages):
        got = m.read(addr, PAGE)
        assert got[:8] == r.final[j], f"page {j}: {got[:8].hex()} != {r.final[j].hex()}"
        if r.rest[j] is not None:
            assert got[8:] == r.rest[j], f"page {j}: bytes 8.. changed"
    # time: every vCPU's lane tiles and sums; cpu_report agrees
    rep = m.cpu_report()
    for k in range(v):
        spans, modes = tr.lane(k) if v > 1 else (tr.spans, tr.breakdown())
        if not spans:
            continue
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), f"vCPU {k}: lane has gaps"
        assert sum(modes.values()) == spans[-1][1] - spans[0][0], f"vCPU {k}: modes do not sum"
        c = rep["vcpus"][k]
        assert c["run_ns"] + c["stall_ns"] + c["steal_ns"] + c["idle_ns"] == sum(modes.values()), f"vCPU {k}"


def slow_path_exists() -> bool:
    """The host's fast path (issue 14) comes with a switch, ``APFLAB_SLOW_PATH=1`` read when a
    Host is made (``apflab.host.fast_path_default``); before it lands there is one path."""
    from apflab import host
    return hasattr(host, "fast_path_default")


def make_run(cfg: dict, inj: list, slow: bool = False) -> Run:
    old = os.environ.get("APFLAB_SLOW_PATH")
    if slow:
        os.environ["APFLAB_SLOW_PATH"] = "1"
    try:
        r = Run(cfg)
    finally:
        if slow:
            if old is None:
                del os.environ["APFLAB_SLOW_PATH"]
            else:
                os.environ["APFLAB_SLOW_PATH"] = old
    r.inject(inj)
    return r


def run_case(cfg: dict, inj: list, twice: bool = False) -> str:
    """Run, check every invariant; ``twice``: run again (on the slow path, if there is one)
    and require the same trace digest."""
    r = make_run(cfg, inj)
    stop = r.go()
    assert stop is not None and stop.reason == "brk"
    check_run(r)
    digest = r.m.trace.digest()
    if twice:
        slow = slow_path_exists()
        again = make_run(cfg, inj, slow=slow)
        again.go()
        assert again.m.trace.digest() == digest, \
            "same seed, different trace" + (" on the slow path" if slow else "")
    return digest


@pytest.mark.parametrize("batch", chunks(SEEDS, 50), ids=lambda b: f"seeds{b[0]}-{b[-1]}" if b else "none")
def test_fault_schedules_keep_every_invariant(batch):
    for seed in batch:
        cfg, inj = draw_case(seed)
        twice = seed % TWICE_EVERY == 0
        runner = lambda steps, cfg=cfg, twice=twice: run_case(cfg, steps, twice)
        try:
            runner(inj)
        except Exception:
            pytest.fail(report("tests/test_fuzz_faults.py", seed,
                               f"fault schedule {cfg}", runner, inj), pytrace=False)


def _first_failing_seed(limit: int = 100):
    for seed in range(limit):
        cfg, inj = draw_case(seed)
        try:
            run_case(cfg, inj)
        except Exception:
            return seed
    return None


def test_the_fuzzer_notices_a_lost_page_ready(monkeypatch):
    """The checks can fail: a host that forgets every third "page ready" (the page is
    mapped, the guest is never told) is caught within the first CI seeds."""
    from apflab.apf import ApfService
    real = ApfService.page_in_done
    calls = {"n": 0}

    def forgetful(self, w):
        calls["n"] += 1
        if calls["n"] % 3 == 0 and self.delivery.notifies_ready:
            self.host.stage2.finish_page_in(w.gpn)
            return
        real(self, w)
    monkeypatch.setattr(ApfService, "page_in_done", forgetful)
    assert _first_failing_seed() is not None


def test_the_fuzzer_notices_a_page_corrupted_on_its_way_back(monkeypatch):
    """...and a page-in that flips one byte past the u64 memtouch checks."""
    from apflab.stage2 import Stage2
    real = Stage2.finish_page_in

    def flip(self, gpn):
        real(self, gpn)
        frame = self._frame(gpn)
        self.ram[frame.start + 100] ^= 0xFF
    monkeypatch.setattr(Stage2, "finish_page_in", flip)
    assert _first_failing_seed() is not None


def test_robustness_doc_quotes_the_fuzzer_counts():
    """docs/ROBUSTNESS.md states how many cases each fuzzer runs in CI: keep it true."""
    import re
    from pathlib import Path
    from test_fuzz_sdei import SDEI_SEQUENCES
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ROBUSTNESS.md").read_text()
    for name, n in (("SDEI_SEQUENCES", SDEI_SEQUENCES), ("FAULT_SCHEDULES", FAULT_SCHEDULES)):
        quoted = re.findall(rf"\| `{name}` \| (\d+)", doc)
        assert quoted == [str(n)], f"{name}: doc says {quoted}, tests use {n}"
