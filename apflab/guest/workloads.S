// SPDX-License-Identifier: MIT
//
// apflab guest workloads: task bodies that run at EL0 under kernel.S.
//
// Each entry point takes x0 = its parameter block, 16 u64 filled by
// apflab.guest.build_source: inputs at slots 0-7, results the task writes
// back at slots 8-15 (the host reads them after the run).  A task talks to
// the kernel only through syscalls (svc #0, number in x8):
//
//     0 yield()   1 exit(code)   2 work_add(units)   3 gettime()
//     4 sleep(ns) 5 getpid()     6 peek(addr)      7 alloc_page(addr)
//     8 locked_touch(addr, work, flags)
//
// Syscalls preserve every register but x0, so the loops below keep their
// state in registers across them.

	.equ	P_OUT, 64		// byte offset of result slot 8

	.macro	syscall nr
	mov	x8, #\nr
	svc	#0
	.endm

// ---------------------------------------------------------------- memtouch
//
// Walk a buffer touching one u64 per page (every `stride` bytes), for
// `rounds` rounds.  In round r, page i holds
//
//     value(r, i) = 0xA5A5 << 48 | (tag & 0xff) << 40 | (r & 0xff) << 32 | i
//
// For each page: if r > 0, first read it back and compare with
// value(r - 1, i) (what the previous round left, across any eviction and
// page-in); then write value(r, i) and read it back.  Each difference counts
// as a mismatch.  The first access of a page in a round is the one that
// faults when the page was evicted: with APF the task is parked there.
// One work unit per page touched, reported every `batch` pages.
//
// params: 0 buf, 1 npages, 2 rounds, 3 batch, 4 stride, 5 tag,
//         6 first_round (rounds run first_round .. first_round+rounds-1;
//           with first_round > 0 the host pre-fills value(first_round-1, i)),
//         7 allocate: 1 = in round 0 each page is first allocated by the guest
//           kernel (syscall 7, alloc_page: it zeroes the page, as Linux's
//           anonymous-page fault does with clear_page) before it is written
// out:    8 mismatches, 9 rounds done, 10 pages touched

	.macro	mt_value dst, r, i	// dst = value(r, i); x25 = pattern base
	and	\dst, \r, #0xff
	orr	\dst, x25, \dst, lsl #32
	orr	\dst, \dst, \i
	.endm

memtouch:
	mov	x19, x0
	ldp	x20, x21, [x19, #0]		// buf, npages
	ldp	x22, x23, [x19, #16]		// rounds, batch
	ldp	x24, x25, [x19, #32]		// stride, tag
	ldr	x26, [x19, #48]			// r = first_round
	add	x22, x22, x26			// end round
	cmp	x23, #0
	csinc	x23, x23, xzr, ne		// batch 0 -> 1
	// pattern base: 0xA5A5 << 48 | (tag & 0xff) << 40
	and	x25, x25, #0xff
	lsl	x25, x25, #40
	movz	x9, #0xA5A5, lsl #48
	orr	x25, x25, x9
	mov	x28, #0				// units not yet reported
memtouch_round:
	cmp	x26, x22
	b.hs	memtouch_done
	mov	x27, #0				// i
	mov	x29, x20			// address of page i's word
memtouch_page:
	cmp	x27, x21
	b.hs	memtouch_round_end
	cbz	x26, memtouch_first		// round 0: nothing to check yet
	ldr	x10, [x29]			// may fault: page evicted since last round
	sub	x12, x26, #1
	mt_value x11, x12, x27
	cmp	x10, x11
	b.eq	memtouch_write
	ldr	x13, [x19, #(P_OUT + 0)]
	add	x13, x13, #1
	str	x13, [x19, #(P_OUT + 0)]
	b	memtouch_write
memtouch_first:
	ldr	x13, [x19, #56]			// allocate?
	cbz	x13, memtouch_write
	and	x0, x29, #~0xfff		// the page's start
	syscall	7				// alloc_page: the guest's own first-touch work
memtouch_write:
	mt_value x11, x26, x27
	str	x11, [x29]
	ldr	x10, [x29]
	cmp	x10, x11
	b.eq	memtouch_counted
	ldr	x13, [x19, #(P_OUT + 0)]
	add	x13, x13, #1
	str	x13, [x19, #(P_OUT + 0)]
memtouch_counted:
	ldr	x13, [x19, #(P_OUT + 16)]
	add	x13, x13, #1
	str	x13, [x19, #(P_OUT + 16)]
	add	x28, x28, #1
	cmp	x28, x23
	b.lo	memtouch_next
	mov	x0, x28
	syscall	2				// work_add(batch)
	mov	x28, #0
memtouch_next:
	add	x29, x29, x24
	add	x27, x27, #1
	b	memtouch_page
memtouch_round_end:
	ldr	x13, [x19, #(P_OUT + 8)]
	add	x13, x13, #1
	str	x13, [x19, #(P_OUT + 8)]
	add	x26, x26, #1
	b	memtouch_round
memtouch_done:
	cbz	x28, memtouch_exit
	mov	x0, x28
	syscall	2
memtouch_exit:
	mov	x0, #0
	syscall	1
	b	memtouch_exit

// ---------------------------------------------------------------- compute
//
// A busy loop: one work unit every `iters` iterations of an empty loop,
// reported every `report` units, until `limit` units (0 = for ever).
//
// params: 0 iters per unit, 1 report every (units), 2 limit (units, 0 = none)
// out:    8 units done (updated at each report)

compute:
	mov	x19, x0
	ldp	x20, x21, [x19, #0]		// iters, report
	ldr	x22, [x19, #16]			// limit
	cmp	x20, #0
	csinc	x20, x20, xzr, ne		// at least 1 iteration
	cmp	x21, #0
	csinc	x21, x21, xzr, ne		// report at least every unit
	mov	x23, #0				// units done
	mov	x24, #0				// units not yet reported
compute_unit:
	mov	x9, x20
compute_spin:
	subs	x9, x9, #1
	b.ne	compute_spin
	add	x23, x23, #1
	add	x24, x24, #1
	cmp	x24, x21
	b.lo	compute_check
	mov	x0, x24
	syscall	2				// work_add(report)
	mov	x24, #0
	str	x23, [x19, #(P_OUT + 0)]
compute_check:
	cbz	x22, compute_unit
	cmp	x23, x22
	b.lo	compute_unit
	cbz	x24, compute_exit
	mov	x0, x24
	syscall	2
compute_exit:
	str	x23, [x19, #(P_OUT + 0)]
	mov	x0, #0
	syscall	1
	b	compute_exit

// ---------------------------------------------------------------- yield_loop
//
// `count` times: one work unit, then yield.  With two of these and no tick
// the scheduler must alternate strictly between them.
//
// params: 0 count
// out:    8 iterations done, 9 own task index (getpid)

yield_loop:
	mov	x19, x0
	ldr	x20, [x19, #0]
	syscall	5				// getpid
	str	x0, [x19, #(P_OUT + 8)]
	mov	x21, #0
yield_loop_next:
	cmp	x21, x20
	b.hs	yield_loop_exit
	mov	x0, #1
	syscall	2
	syscall	0				// yield
	add	x21, x21, #1
	str	x21, [x19, #(P_OUT + 0)]
	b	yield_loop_next
yield_loop_exit:
	mov	x0, #0
	syscall	1
	b	yield_loop_exit

// ---------------------------------------------------------------- sleeper
//
// `count` times: sleep `ns` nanoseconds (the CPU idles meanwhile if nothing
// else runs), then report one work unit.
//
// params: 0 ns, 1 count
// out:    8 time before the first sleep, 9 time after the last, 10 sleeps done

sleeper:
	mov	x19, x0
	ldp	x20, x21, [x19, #0]
	syscall	3				// gettime
	str	x0, [x19, #(P_OUT + 0)]
	mov	x22, #0
sleeper_next:
	cmp	x22, x21
	b.hs	sleeper_exit
	mov	x0, x20
	syscall	4				// sleep(ns)
	mov	x0, #1
	syscall	2
	add	x22, x22, #1
	str	x22, [x19, #(P_OUT + 16)]
	b	sleeper_next
sleeper_exit:
	syscall	3
	str	x0, [x19, #(P_OUT + 8)]
	mov	x0, #0
	syscall	1
	b	sleeper_exit

// ---------------------------------------------------------------- sysread
//
// Read one u64 per page of a buffer the host filled with value(0, i) (the
// memtouch formula, round 0) and check it, `rounds` times.  Every
// `kernel_every`-th page (i % kernel_every == kernel_every - 1) is read by
// the kernel through peek(addr) (syscall 6): that first access is a
// kernel-mode access with IRQs masked, like copy_from_user in a system call.
// One work unit per page read, reported every 16 pages.
//
// params: 0 buf, 1 npages, 2 rounds, 3 kernel_every (0: never), 4 tag
// out:    8 mismatches, 9 rounds done, 10 pages read

sysread:
	mov	x19, x0
	ldp	x20, x21, [x19, #0]		// buf, npages
	ldp	x22, x23, [x19, #16]		// rounds, kernel_every
	ldr	x25, [x19, #32]			// tag
	and	x25, x25, #0xff
	lsl	x25, x25, #40
	movz	x9, #0xA5A5, lsl #48
	orr	x25, x25, x9			// value(0, i) = x25 | i
	mov	x26, #0				// rounds done
	mov	x28, #0				// units not yet reported
sysread_round:
	cmp	x26, x22
	b.hs	sysread_done
	mov	x27, #0				// i
	mov	x29, x20
	mov	x24, #1				// position in the kernel_every cycle
sysread_page:
	cmp	x27, x21
	b.hs	sysread_round_end
	cbz	x23, sysread_user
	cmp	x24, x23
	b.lo	sysread_user
	mov	x24, #0
	mov	x0, x29
	syscall	6				// peek(addr): the kernel reads it
	mov	x10, x0
	b	sysread_check
sysread_user:
	ldr	x10, [x29]			// may fault: the page is in swap
sysread_check:
	add	x24, x24, #1
	orr	x11, x25, x27
	cmp	x10, x11
	b.eq	sysread_counted
	ldr	x13, [x19, #(P_OUT + 0)]
	add	x13, x13, #1
	str	x13, [x19, #(P_OUT + 0)]
sysread_counted:
	ldr	x13, [x19, #(P_OUT + 16)]
	add	x13, x13, #1
	str	x13, [x19, #(P_OUT + 16)]
	add	x28, x28, #1
	cmp	x28, #16
	b.lo	sysread_next
	mov	x0, x28
	syscall	2				// work_add(16)
	mov	x28, #0
sysread_next:
	add	x29, x29, #4096
	add	x27, x27, #1
	b	sysread_page
sysread_round_end:
	add	x26, x26, #1
	str	x26, [x19, #(P_OUT + 8)]
	b	sysread_round
sysread_done:
	cbz	x28, sysread_exit
	mov	x0, x28
	syscall	2
sysread_exit:
	mov	x0, #0
	syscall	1
	b	sysread_exit

// ---------------------------------------------------------------- lockloop
//
// For each page i of a buffer the host filled with value(0, i), `rounds`
// times: locked_touch(buf + 4096 i, work, flags) (syscall 8: the kernel
// takes its lock, reads the page while holding it, bumps lock_counter,
// releases) and check the value; then report one work unit and think
// (`think` iterations of an empty loop in user mode).  buf = 0: no page,
// `npages` calls that only take the lock.
//
// params: 0 buf, 1 npages, 2 rounds, 3 work (iterations in the lock),
//         4 flags (bit 0: no lock, the racy control), 5 tag, 6 think
// out:    8 mismatches, 9 rounds done, 10 calls made

lockloop_nopage:
	str	xzr, [x0]			// buf = 0: take the lock, touch nothing
lockloop:
	mov	x19, x0
	ldp	x20, x21, [x19, #0]		// buf, npages
	ldp	x22, x23, [x19, #16]		// rounds, work
	ldp	x24, x25, [x19, #32]		// flags, tag
	ldr	x26, [x19, #48]			// think
	and	x25, x25, #0xff
	lsl	x25, x25, #40
	movz	x9, #0xA5A5, lsl #48
	orr	x25, x25, x9			// value(0, i) = x25 | i
	mov	x27, #0				// round
lockloop_round:
	cmp	x27, x22
	b.hs	lockloop_done
	mov	x28, #0				// i
lockloop_page:
	cmp	x28, x21
	b.hs	lockloop_round_end
	mov	x0, #0
	cbz	x20, lockloop_call
	add	x0, x20, x28, lsl #12
lockloop_call:
	mov	x1, x23
	mov	x2, x24
	syscall	8				// locked_touch(addr, work, flags)
	cbz	x20, lockloop_counted
	orr	x11, x25, x28
	cmp	x0, x11
	b.eq	lockloop_counted
	ldr	x13, [x19, #(P_OUT + 0)]
	add	x13, x13, #1
	str	x13, [x19, #(P_OUT + 0)]
lockloop_counted:
	ldr	x13, [x19, #(P_OUT + 16)]
	add	x13, x13, #1
	str	x13, [x19, #(P_OUT + 16)]
	mov	x0, #1
	syscall	2				// work_add(1)
	mov	x9, x26
lockloop_think:
	cbz	x9, lockloop_next
	sub	x9, x9, #1
	b	lockloop_think
lockloop_next:
	add	x28, x28, #1
	b	lockloop_page
lockloop_round_end:
	add	x27, x27, #1
	str	x27, [x19, #(P_OUT + 8)]
	b	lockloop_round
lockloop_done:
	mov	x0, #0
	syscall	1
	b	lockloop_done
