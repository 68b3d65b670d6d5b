"""Build-it exercises of lab 06: the student writes a piece of the guest kernel's APF client.

``PageReadyHandler`` is the "page ready" interrupt handler (find the token's waiter, wake
it, free the shared slot, IRQ_ACK); ``PageNotPresentEntry`` is the SDEI handler for "page
not present" (record token -> task, park the task, free the slot, COMPLETE_AND_RESUME so
the kernel switches). Each takes a seed that draws the task mix the grader runs, gives a
``skeleton()`` with TODO holes that assembles and runs, and ``check(code)`` boots the
lab's kernel with the student's code in the marked region (``holes``), runs it on an
instruction budget and says what went wrong in words: which task was never woken, which
token was recorded wrongly, which register was clobbered. Time is virtual throughout.
"""

from __future__ import annotations

import struct

from .. import guest
from ..apf import APF_PPI
from ..errors import ApflabError, AsmError
from . import CheckResult, Exercise, refuse_in_classroom
from . import holes
from .lab06 import build_guest

BUDGET = 3_000_000            # instructions for one graded run; the reference needs at most ~0.8 M
CHUNK = 250_000              # run in chunks, so that a storm of interrupts is cut short
STORM = 2_000                # interrupts in one chunk without a page ready or a fault: a storm
NPAGES = 4                    # pages per walker: every first touch faults
WATCH = ("apf_not_present", "sdei_dispatch", "sdei_complete", "apf_page_ready", "apf_ack",
         "apf_fallback")


def _draw_mix(rng) -> list[str]:
    n = rng.randrange(3, 5)
    kinds = ["memtouch", "memtouch"] + [rng.choice(("memtouch", "compute")) for _ in range(n - 2)]
    rng.shuffle(kinds)
    if "compute" not in kinds:
        kinds[rng.randrange(n)] = "compute"     # something to run while the walkers wait
    return kinds


def _states(m, syms, n) -> list[str]:
    return [guest.TASK_STATES.get(m.read_u64(syms["task_state"] + 8 * i), "?") for i in range(n)]


class _KernelHole(Exercise):
    """Common part: draw a task mix, run the kernel with student code, report in words."""
    region = ""
    skeleton_text = ""

    def _draw(self, rng):
        return {"tasks": _draw_mix(rng), "tick_ns": rng.choice((50_000, 100_000, 200_000))}

    def skeleton(self) -> str:
        """The code to start from: it assembles and runs, with TODO holes to fill."""
        return self.skeleton_text

    def _solve(self) -> str:
        return holes.reference(self.region)

    def answer(self) -> str:
        """The kernel's own code for this region (a complete solution); refuses in classroom mode."""
        refuse_in_classroom("ex.answer()")
        return self._solve()

    def question(self) -> str:
        kinds = ", ".join(f"task {i}: {k}" for i, k in enumerate(self.params["tasks"]))
        return (f"[seed {self.seed}] Fill the TODOs of ex.skeleton() ({self.title.lower()}). "
                f"ex.check(code) boots the lab's kernel with your code and runs {kinds} "
                f"(each walker touches {NPAGES} pages that start in swap; tick "
                f"{self.params['tick_ns'] // 1000} µs) and says what went wrong.")

    # -- running -----------------------------------------------------------------------------
    def run(self, code: str) -> dict:
        """Boot and run the kernel with ``code`` in the region; what happened, as plain values.

        Raises ``AsmError`` (naming your line) when the code does not assemble."""
        kinds = self.params["tasks"]
        m, syms = build_guest(kinds, self.seed, tick_ns=self.params["tick_ns"], npages=NPAGES,
                              rounds=2, hole=(self.region, code))
        out = {"problems": [], "events": [], "finished": False, "panic": None}
        self._observe(m, syms, out)
        state = guest.read_kernel_state(m, syms)
        out["state"] = state
        out["panic"] = state["panic"]
        out["counts"] = dict(m.trace.counts)
        out["trace"] = m.trace
        return out

    def _observe(self, m, syms, out) -> None:
        """Run to each watched trace record and hand it to ``on_event``, on an instruction budget.

        The host checks ``run_until``'s condition between exits, so one step may add several
        records (an SDEI dispatch and the handler's COMPLETE): every new one is handed on, in order.
        """
        host, trace = m.host, m.trace
        end = host.retired + BUDGET
        seen = len(trace.records)
        while host.retired < end:
            irqs_before = trace.counts.get("irq", 0)
            try:
                stop = m.run_until(WATCH, min(CHUNK, end - host.retired))
            except ApflabError as err:          # a guest fault the host could not handle
                out["problems"].append(f"the guest crashed: {err}")
                return
            watched = [rec for rec in trace.records[seen:] if rec.kind in WATCH]
            for rec in watched:
                self.on_event(m, syms, rec, out)
            seen = len(trace.records)
            if stop is not None and not hasattr(stop, "kind"):      # a RunStop: brk #0
                out["finished"] = True
                return
            if not watched and trace.counts.get("irq", 0) - irqs_before > STORM:
                out["storm"] = True               # no progress, only interrupts: stop here
                break
            if len(out["problems"]) > 3:
                return
        out["budget"] = True

    def on_event(self, m, syms, rec, out) -> None:
        out["events"].append(rec)

    # -- grading -----------------------------------------------------------------------------
    def check(self, code) -> CheckResult:
        if not isinstance(code, str):
            return CheckResult(False, f"give your assembly as a string, not {type(code).__name__}.")
        try:
            out = self.run(code)
        except AsmError as err:
            return CheckResult(False, f"does not assemble: {err}")
        problems = list(out["problems"]) + self.diagnose(out)
        if out["panic"]:
            p = out["panic"]
            problems.append(f"the kernel panicked ({p['reason']}, vector {p['vector']}, "
                            f"ELR={p['elr']:#x}).")
        if out.get("storm") and not any("storm" in x for x in problems):
            problems.append(f"an interrupt storm: more than {STORM:,} interrupts in {CHUNK:,} "
                            f"instructions with nothing else happening.")
        if not out["finished"] and not problems:
            problems.append(f"the walkers did not finish within {BUDGET:,} instructions.")
        if problems:
            return CheckResult(False, " ".join(dict.fromkeys(problems)))
        st = out["state"]
        return CheckResult(True, f"works: {st['apf']['not_present']} faults parked and woken, "
                                 f"{st['ctx_switches']} context switches, every walker finished "
                                 f"at {st['stop_ns'] / 1e6:.3f} ms of virtual time.")

    def diagnose(self, out) -> list[str]:
        return []

    def _waiters_never_woken(self, out) -> list[str]:
        st = out["state"]
        msgs = []
        parked = {}
        for rec in out["events"]:
            if rec.kind == "apf_not_present":
                parked[rec.get("task")] = rec.get("token")
        for t in st["tasks"]:
            if t["state"] == "apf_wait":
                token = parked.get(t["index"])
                tok = f" on token {token:#x}" if token is not None else ""
                msgs.append(f"task {t['index']} was parked{tok} and never woken.")
        return msgs


class PageReadyHandler(_KernelHole):
    """Write ``apf_page_ready``: the guest's "page ready" interrupt handler."""
    title = "Build the page-ready handler"
    region = "page_ready_irq"
    skeleton_text = """\
// apf_page_ready: handle_irq calls it (bl) when ICC_IAR1_EL1 gave the
// page-ready PPI (INTID in x19); ending the interrupt is this handler's job.
// Any register but sp, x19 and x29/x30 (saved here) may be used.
apf_page_ready:
	stp	x29, x30, [sp, #-16]!
	adr	x20, apf_data			// the shared block {u32 reason; u32 token; ...}
	ldr	w21, [x20, #APF_REASON]
	cmp	w21, #APF_PAGE_READY
	b.ne	apf_page_ready_bad
	ldr	w22, [x20, #APF_TOKEN]		// w22 = the token whose page is ready
	inc_l	apf_page_ready_count, x0, x1
	cmn	w22, #1
	b.eq	apf_page_ready_all		// token ~0: wake every waiter (done for you)

	// TODO 1: find the waiter of token w22 in apf_table: w9 = token,
	//         x10 = APF_KIND_WAITER, bl apf_table_find -> x11 = its entry, or 0.
	//         No waiter yet (x11 == 0)? Then b apf_page_ready_early.
	// TODO 2: wake it: x0 = the task, from [x11, #APF_E_TASK]; free the entry
	//         (its kind back to APF_KIND_FREE, which is 0); bl apf_wake_task.
	b	apf_page_ready_ack

apf_page_ready_early:
	// "page ready" before its "page not present": leave a dummy entry.
	mov	x10, #APF_KIND_FREE
	bl	apf_table_find
	cbz	x11, apf_page_ready_full
	str	w22, [x11, #APF_E_TOKEN]
	mov	x0, #-1
	str	x0, [x11, #APF_E_TASK]
	mov	w10, #APF_KIND_DUMMY
	str	w10, [x11, #APF_E_KIND]
	inc_l	apf_dummies, x0, x1
	b	apf_page_ready_ack
apf_page_ready_full:
	inc_l	apf_table_full, x0, x1
	b	apf_page_ready_ack

apf_page_ready_all:
	inc_l	apf_wake_all, x0, x1
	adr	x23, apf_table
	add	x24, x23, #(APF_TABLE_ENTRIES * APF_E_SIZE)
apf_page_ready_all_loop:
	ldr	w25, [x23, #APF_E_KIND]
	str	wzr, [x23, #APF_E_KIND]
	cmp	w25, #APF_KIND_WAITER
	b.ne	apf_page_ready_all_next
	ldr	x0, [x23, #APF_E_TASK]
	bl	apf_wake_task
apf_page_ready_all_next:
	add	x23, x23, #APF_E_SIZE
	cmp	x23, x24
	b.lo	apf_page_ready_all_loop

apf_page_ready_ack:
	// TODO 3: free the shared slot: token, then reason, back to 0 (a non-zero
	//         reason tells the host the slot is still busy).
apf_page_ready_irq_ack:
	// TODO 4: tell the host this "page ready" is consumed: hvc #0 with
	//         x0 = the KVM ASYNC_PF function (kvm_fid x0, KVM_ASYNC_PF) and
	//         x1 = ASYNC_PF_IRQ_ACK. The host then lowers the PPI and may send the next.
	// TODO 5: end the interrupt: write the INTID (x19) to ICC_EOIR1_EL1
	//         (msr s3_0_c12_c12_1, x19), or it stays active and blocks the tick.
	ldp	x29, x30, [sp], #16
	ret
apf_page_ready_bad:
	inc_l	apf_bad_ready, x0, x1
	b	apf_page_ready_irq_ack
"""

    def on_event(self, m, syms, rec, out) -> None:
        super().on_event(m, syms, rec, out)
        n = len(self.params["tasks"])
        if rec.kind == "apf_page_ready":
            out["_before"] = (rec.get("token"), _states(m, syms, n))
        elif rec.kind == "apf_ack" and "_before" in out:
            token, before = out.pop("_before")
            after = _states(m, syms, n)
            waiter = next((r.get("task") for r in reversed(out["events"])
                           if r.kind == "apf_not_present" and r.get("token") == token), None)
            woken = [i for i in range(n) if before[i] == "apf_wait" and after[i] == "runnable"]
            if waiter is not None and before[waiter] == "apf_wait" and waiter not in woken:
                out["problems"].append(f"page ready for token {token:#x}: task {waiter} waits for it "
                                       f"but was not woken.")
            wrong = [i for i in woken if i != waiter]
            if wrong:
                out["problems"].append(f"page ready for token {token:#x} woke task(s) {wrong}, "
                                       f"which wait for other tokens (token {token:#x} is task "
                                       f"{waiter}'s).")
            reason, slot_token = struct.unpack("<II", m.read(syms["apf_data"], 8))
            if reason and slot_token == token:        # (a new notification may already be there)
                out["problems"].append(f"after your handler acknowledged token {token:#x} the shared "
                                       f"block's reason was still non-zero: free the slot (token, "
                                       f"then reason) before IRQ_ACK.")

    def diagnose(self, out) -> list[str]:
        msgs = []
        counts = out["counts"]
        ready, acks = counts.get("apf_page_ready", 0), counts.get("apf_ack", 0)
        if ready and not acks:
            msgs.append(f"the host sent {ready} page ready and never got IRQ_ACK: without it the PPI "
                        f"stays raised and no further page ready can come.")
        tr = out["trace"]
        acked = sum(1 for r in tr.select("irq_ack") if r.get("intid") == APF_PPI)
        ended = sum(1 for r in tr.select("irq_eoi") if r.get("intid") == APF_PPI)
        if acked and not ended:
            msgs.append(f"ICC_EOIR1_EL1 was never written for the page-ready interrupt (INTID "
                        f"{APF_PPI}): it stays active, so no interrupt of its priority or lower, "
                        f"the timer tick included, is taken again.")
        irqs = counts.get("irq", 0)
        if ready and irqs > 20 * max(acks, 1) + 100:
            msgs.append(f"{irqs} interrupts were taken for {ready} page ready: an interrupt storm "
                        f"(is IRQ_ACK called?).")
        return msgs + self._waiters_never_woken(out)

    def hint(self) -> str:
        return ("Read the reference steps in the comment above apf_page_ready in kernel.S: the "
                "token is the key of apf_table; apf_table_find keeps x20-x22, apf_wake_task "
                "clobbers x1-x3 only. Free the shared slot with `str wzr, [x20, #APF_TOKEN]` and "
                "`str wzr, [x20, #APF_REASON]`; the ack is the same hypercall as any KVM call.")


class PageNotPresentEntry(_KernelHole):
    """Write ``sdei_apf_entry``: the SDEI handler for "page not present"."""
    title = "Build the page-not-present entry"
    region = "page_not_present"
    skeleton_text = """\
// sdei_apf_entry: the host enters it at EL1h with DAIF masked: x0 = event,
// x1 = ep_arg, x2 = interrupted PC, x3 = interrupted PSTATE. x0-x17 are yours
// (the dispatcher restores them); x18-x30 and sp must survive: x30 is kept
// in x17 around calls.
sdei_apf_entry:
	mov	x17, x30
	inc_l	sdei_dispatches, x4, x5
	ldr_l	x4, apf_sdei_event
	cmp	x0, x4
	b.ne	sdei_apf_bad
	adr	x4, apf_data			// the shared block {u32 reason; u32 token; ...}
	ldr	w5, [x4, #APF_REASON]
	cmp	w5, #APF_PAGE_NOT_PRESENT
	b.ne	sdei_apf_bad
	ldr	w6, [x4, #APF_TOKEN]		// w6 = the token of the missing page
	inc_l	apf_not_present, x7, x8
	and	x7, x3, #0xf			// interrupted at EL0t? Only a task can park
	cbnz	x7, sdei_apf_no_park
	ldr_l	x7, current_task		// x7 = the task to park
	tbnz	x7, #63, sdei_apf_no_park
	mov	w9, w6
	mov	x10, #APF_KIND_DUMMY
	bl	apf_table_find
	cbnz	x11, sdei_apf_dummy_hit		// its "page ready" came first: don't park

	// TODO 1: remember token -> task: a free entry (x10 = APF_KIND_FREE,
	//         bl apf_table_find; x11 == 0: b sdei_apf_table_full); store the
	//         token (w6) at APF_E_TOKEN, the task (x7) at APF_E_TASK, then
	//         kind = APF_KIND_WAITER (a w register) at APF_E_KIND.
	// TODO 2: park the task: task_state[x7] = TS_APF_WAIT (adr x9, task_state;
	//         str x8, [x9, x7, lsl #3]); inc_task task_parked, x7, x9, x10;
	//         need_resched = 1 (str_l x8, need_resched, x9).
	// TODO 3: free the shared slot: token, then reason, back to 0.
	// TODO 4: complete and switch: x30 back from x17; x1 = VBAR_EL1 + 0x480
	//         (IRQ from a lower EL: the kernel's IRQ path then switches tasks);
	//         sdei_fid x0, SDEI_EVENT_COMPLETE_AND_RESUME; hvc #0.
	b	sdei_apf_returned

sdei_apf_dummy_hit:
	str	wzr, [x11, #APF_E_KIND]
	inc_l	apf_dummy_hits, x9, x10
	b	sdei_apf_release
sdei_apf_table_full:
	inc_l	apf_table_full, x9, x10
	b	sdei_apf_release
sdei_apf_no_park:
	inc_l	apf_not_parked, x9, x10
sdei_apf_release:
	str	wzr, [x4, #APF_TOKEN]
	str	wzr, [x4, #APF_REASON]
	mov	x30, x17
	sdei_fid x0, SDEI_EVENT_COMPLETE
	mov	x1, #SDEI_EV_HANDLED
	hvc	#0
	b	sdei_apf_returned
sdei_apf_bad:
	inc_l	sdei_bad, x9, x10
	mov	x30, x17
	sdei_fid x0, SDEI_EVENT_COMPLETE
	mov	x1, #SDEI_EV_FAILED
	hvc	#0
sdei_apf_returned:
	// COMPLETE never returns: getting here means no COMPLETE was made, or it was refused.
	mov	x0, #PANIC_UNEXPECTED
	mov	x1, #-2
	b	panic
"""
    KEEP = tuple(f"x{i}" for i in range(18, 31)) + ("sp",)

    def on_event(self, m, syms, rec, out) -> None:
        super().on_event(m, syms, rec, out)
        if rec.kind == "apf_not_present":
            # run_until stops before the dispatch: these are still the faulting task's registers
            out["_fault"] = (rec.get("task"), rec.get("token"))
            out["_regs"] = {r: m.reg(r) for r in self.KEEP}
        elif rec.kind == "sdei_complete":
            kept = out.pop("_regs", None)
            if kept:
                for r, v in kept.items():
                    now = m.reg(r)
                    if now != v:
                        out["problems"].append(f"register {r} was clobbered: {v:#x} when the event "
                                               f"faulted, {now:#x} at the event's COMPLETE (x18-x30 "
                                               f"and sp belong to the interrupted task).")
            fault = out.pop("_fault", None)
            if fault is None:
                return
            task, token = fault
            n = len(self.params["tasks"])
            state = _states(m, syms, n)[task] if task is not None and task < n else None
            table = guest.read_kernel_state(m, syms)["apf"]
            mine = [e for e in table["table"] if e["kind"] == "waiter" and e["task"] == task]
            if table["shared"]["reason"] != 0 and table["shared"]["token"] == token:
                out["problems"].append(f"after your handler completed token {token:#x} the shared "
                                       f"block still said reason={table['shared']['reason']}: the "
                                       f"host finds the slot busy and falls back to a synchronous "
                                       f"fault.")
            if state == "runnable" and table["dummy_hits"] == 0:
                out["problems"].append(f"task {task} faulted (token {token:#x}) but was not parked: "
                                       f"its state is still runnable.")
            if state == "apf_wait" and not mine:
                out["problems"].append(f"task {task} was parked but no table entry records it: "
                                       f"nothing can wake it when token {token:#x} is ready.")
            for e in mine:
                if e["token"] != token:
                    out["problems"].append(f"task {task} was recorded under token {e['token']:#x}, "
                                           f"but the host's token was {token:#x}.")

    def diagnose(self, out) -> list[str]:
        msgs = []
        counts = out["counts"]
        dispatched, completed = counts.get("sdei_dispatch", 0), counts.get("sdei_complete", 0)
        p = out["panic"]
        if p and p["vector"] == -2:
            msgs.append("your handler ran past its end into sdei_apf_returned: it never completed "
                        "the event (SDEI_EVENT_COMPLETE_AND_RESUME is missing, or the host refused it).")
        elif dispatched and not completed:
            msgs.append(f"the event was dispatched {dispatched} time(s) and never completed.")
        fallbacks = counts.get("apf_fallback", 0)
        if fallbacks and not out["finished"]:
            msgs.append(f"the host fell back to synchronous faults {fallbacks} time(s).")
        return msgs + self._waiters_never_woken(out)

    def hint(self) -> str:
        return ("Follow the numbered steps in the comment above sdei_apf_entry in kernel.S. The task "
                "index is in x7 and the token in w6; keep to x0-x17 (x17 holds your return address). "
                "COMPLETE_AND_RESUME takes the resume address in x1: VBAR_EL1 + 0x480 enters the "
                "kernel's IRQ-from-EL0 vector as if the task had been interrupted, so the kernel "
                "saves it and schedules another task.")
