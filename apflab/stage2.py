"""Stage-2 memory: guest RAM as 4 KiB pages that really move between RAM and backing stores.

The vCPU executes straight out of `ram`, so a page that is not RESIDENT has its frame
zeroed and its bytes held by exactly one store: swap (SWAPPED) or the migration source
(REMOTE).  While a page-in runs (INFLIGHT) the bytes stay in the store; `finish_page_in`
copies them back.  Nothing is ever in two places or in none.

Lifecycle, named after KVM's (virt/kvm/async_pf.c: a fault finds the page not present, the
page-in is queued, the page becomes ready and is mapped):

    ABSENT --first_touch--> RESIDENT --evict--> SWAPPED --start_page_in--> INFLIGHT
                               ^                                             |
                               +-------------- finish_page_in --------------+
    ABSENT/RESIDENT --make_remote--> REMOTE --start_page_in--> INFLIGHT
                                     REMOTE --push (post-copy stream)--> RESIDENT

Like a memory cgroup, `limit_bytes` caps RESIDENT + INFLIGHT pages: a frame is reserved when
a page-in starts, evicting a victim chosen by the policy if needed ("fifo": order of becoming
resident; "clock": second chance on the referenced bit the host sets on TLB refills).
INFLIGHT pages are never victims; pinned pages (the guest kernel's own) must not be either.
"""

from __future__ import annotations

import enum
import hashlib
import mmap
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from apflab.backing import PAGE_SIZE, BackingStore, PostcopySource
from apflab.errors import InvariantError, ParameterError

PAGE_SHIFT = 12
_ZERO_PAGE = bytes(PAGE_SIZE)


class PageState(enum.IntEnum):
    ABSENT = 0      # never touched: reads as the zero page, no backing
    RESIDENT = 1    # bytes in guest RAM, mapped at stage 2
    SWAPPED = 2     # bytes in the swap store
    REMOTE = 3      # bytes on the post-copy migration source
    INFLIGHT = 4    # a page-in is running; bytes still in the store, frame reserved

    def __str__(self) -> str:   # "RESIDENT", not "1" (IntEnum's str on 3.11)
        return self.name


@dataclass(frozen=True)
class Forbidden:
    """A (state, action) pair that is an apflab bug if it happens; `why` says why."""
    why: str


ACTIONS = ("first_touch", "evict", "start_page_in", "finish_page_in", "make_remote", "push")

_S = PageState
# The whole page lifecycle: every (state, action) pair is either a new state or Forbidden.
LIFECYCLE: dict[tuple[PageState, str], PageState | Forbidden] = {
    # ABSENT: a fresh frame of zeros.
    (_S.ABSENT, "first_touch"): _S.RESIDENT,       # KVM maps a zero page on first fault
    (_S.ABSENT, "evict"): Forbidden("an untouched page holds no frame to evict"),
    (_S.ABSENT, "start_page_in"): Forbidden("an untouched page has no backing to read"),
    (_S.ABSENT, "finish_page_in"): Forbidden("no page-in was started"),
    (_S.ABSENT, "make_remote"): _S.REMOTE,         # the source holds its zeros (lab choice)
    (_S.ABSENT, "push"): Forbidden("the stream only pushes pages on the source"),
    # RESIDENT: mapped; only leaves RAM by eviction or by setting up a migration.
    (_S.RESIDENT, "first_touch"): Forbidden("already resident"),
    (_S.RESIDENT, "evict"): _S.SWAPPED,
    (_S.RESIDENT, "start_page_in"): Forbidden("already resident"),
    (_S.RESIDENT, "finish_page_in"): Forbidden("no page-in was started"),
    (_S.RESIDENT, "make_remote"): _S.REMOTE,
    (_S.RESIDENT, "push"): Forbidden("already resident"),
    # SWAPPED: comes back only through a page-in.
    (_S.SWAPPED, "first_touch"): Forbidden("has been touched; its bytes are in swap"),
    (_S.SWAPPED, "evict"): Forbidden("not resident"),
    (_S.SWAPPED, "start_page_in"): _S.INFLIGHT,    # KVM: page_not_present
    (_S.SWAPPED, "finish_page_in"): Forbidden("no page-in was started"),
    (_S.SWAPPED, "make_remote"): Forbidden("swap pages are not migrated in this lab"),
    (_S.SWAPPED, "push"): Forbidden("not on the source"),
    # REMOTE: comes back by demand fetch or by the background stream.
    (_S.REMOTE, "first_touch"): Forbidden("has been touched; its bytes are on the source"),
    (_S.REMOTE, "evict"): Forbidden("not resident"),
    (_S.REMOTE, "start_page_in"): _S.INFLIGHT,     # post-copy demand fetch
    (_S.REMOTE, "finish_page_in"): Forbidden("no page-in was started"),
    (_S.REMOTE, "make_remote"): Forbidden("already on the source"),
    (_S.REMOTE, "push"): _S.RESIDENT,              # post-copy background page lands
    # INFLIGHT: only completion moves it; never a victim.
    (_S.INFLIGHT, "first_touch"): Forbidden("a page-in is running"),
    (_S.INFLIGHT, "evict"): Forbidden("a page-in is running; in-flight pages are never evicted"),
    (_S.INFLIGHT, "start_page_in"): Forbidden("a page-in is already running"),
    (_S.INFLIGHT, "finish_page_in"): _S.RESIDENT,  # KVM: page_ready, then page_present
    (_S.INFLIGHT, "make_remote"): Forbidden("a page-in is running"),
    (_S.INFLIGHT, "push"): Forbidden("demanded pages are not pushed again"),
}

POLICIES = ("fifo", "clock")


@dataclass
class Stage2Counters:
    """What moved and what faulted, for results and plots."""
    first_touches: int = 0
    page_ins: int = 0
    page_outs: int = 0
    pushes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


class Stage2:
    """Guest physical RAM at [ram_base, ram_base + ram_size) in pages with a lifecycle each.

    `store` holds swapped-out pages; a `PostcopySource` passed as `store` or as `remote`
    holds REMOTE pages.  `on_unmap()` runs after pages leave RAM (the host flushes the vCPU's
    TLB there); `on_event(kind, fields)` runs for every page move so the host can trace it.
    """

    def __init__(self, ram, ram_base: int, ram_size: int, *, store: BackingStore,
                 limit_bytes: int | None = None, policy: str = "fifo",
                 on_unmap: Callable[[], None] = lambda: None,
                 on_event: Callable[[str, dict], None] | None = None,
                 remote: PostcopySource | None = None):
        if ram_size <= 0 or ram_size % PAGE_SIZE or ram_base % PAGE_SIZE:
            raise ParameterError("ram_base and ram_size must be multiples of 4096, "
                                 f"ram_size > 0 (got base={ram_base:#x}, size={ram_size:#x})")
        if len(ram) != ram_size:
            raise ParameterError(f"ram buffer is {len(ram)} bytes, ram_size is {ram_size}")
        if policy not in POLICIES:
            raise ParameterError(f"policy must be one of {POLICIES} (got {policy!r})")
        if isinstance(store, PostcopySource):
            if remote is not None and remote is not store:
                raise ParameterError("two post-copy sources given (store and remote)")
            remote, swap = store, None
        else:
            swap = store
        if limit_bytes is not None:
            if not isinstance(limit_bytes, int) or limit_bytes < 2 * PAGE_SIZE:
                raise ParameterError(f"limit_bytes must be None or an int >= {2 * PAGE_SIZE} "
                                     f"(two pages) (got {limit_bytes!r})")
            if swap is None:
                raise ParameterError("limit_bytes needs a swap store to evict to "
                                     "(store is a post-copy source)")
        self.ram = ram
        self.ram_base = ram_base
        self.ram_size = ram_size
        self.swap = swap
        self.remote = remote
        self.policy = policy
        self.limit_pages = None if limit_bytes is None else limit_bytes // PAGE_SIZE
        self.on_unmap = on_unmap
        self.on_event = on_event
        self.counters = Stage2Counters()
        self.npages = ram_size // PAGE_SIZE
        self._states = bytearray(self.npages)          # PageState per gpn: the fast path
        self._queue: OrderedDict[int, int] = OrderedDict()  # evictable residents -> ref bit
        self._pinned: set[int] = set()
        self._inflight_from: dict[int, BackingStore] = {}
        self._inflight_done: dict[int, int] = {}
        self.resident_pages = 0
        # How to hand a zeroed frame's host memory back: MADV_REMOVE for a shared anonymous
        # mmap, MADV_DONTNEED for a private one; found on first use.  Only when our pages are
        # whole host pages (not on 16K/64K-page hosts) and the buffer can madvise at all.
        can = hasattr(ram, "madvise") and mmap.PAGESIZE == PAGE_SIZE
        self._release_advice = ([getattr(mmap, a) for a in ("MADV_REMOVE", "MADV_DONTNEED")
                                 if hasattr(mmap, a)] if can else [])

    # -- fast queries ----------------------------------------------------------------------

    def is_mapped(self, ipa: int) -> bool:
        """True when `ipa` is in guest RAM and its page is RESIDENT (TLB-fill hot path)."""
        off = ipa - self.ram_base
        return 0 <= off < self.ram_size and self._states[off >> PAGE_SHIFT] == 1

    def in_ram(self, ipa: int) -> bool:
        return 0 <= ipa - self.ram_base < self.ram_size

    def gpn_of(self, ipa: int) -> int:
        if not self.in_ram(ipa):
            raise ParameterError(f"address {ipa:#x} is outside guest RAM "
                                 f"[{self.ram_base:#x}, {self.ram_base + self.ram_size:#x})")
        return (ipa - self.ram_base) >> PAGE_SHIFT

    def ipa_of(self, gpn: int) -> int:
        return self.ram_base + (gpn << PAGE_SHIFT)

    def state(self, gpn: int) -> PageState:
        if not 0 <= gpn < self.npages:
            raise InvariantError(f"page {gpn:#x} is outside guest RAM ({self.npages} pages)")
        return PageState(self._states[gpn])

    def count(self, state: PageState) -> int:
        return self._states.count(state)

    @property
    def inflight_pages(self) -> int:
        return len(self._inflight_from)

    @property
    def pinned(self) -> frozenset[int]:
        return frozenset(self._pinned)

    # -- the one place transitions happen ---------------------------------------------------

    def _check(self, gpn: int, action: str) -> PageState:
        """The state `action` takes `gpn` to, per LIFECYCLE; illegal -> InvariantError."""
        if not 0 <= gpn < self.npages:
            raise InvariantError(f"page {gpn:#x}: {action} outside guest RAM "
                                 f"({self.npages} pages)")
        old = PageState(self._states[gpn])
        new = LIFECYCLE[(old, action)]
        if isinstance(new, Forbidden):
            raise InvariantError(f"page {gpn:#x}: {action} in state {old.name} is forbidden "
                                 f"({new.why})")
        return new

    def _transition(self, gpn: int, action: str) -> PageState:
        """Check (state, action) against LIFECYCLE and apply it, keeping the books."""
        new = self._check(gpn, action)
        old = self._states[gpn]
        self._states[gpn] = new
        if old == PageState.RESIDENT:
            self.resident_pages -= 1
            self._queue.pop(gpn, None)
        if new == PageState.RESIDENT:
            self.resident_pages += 1
            if gpn not in self._pinned:
                self._queue[gpn] = 0    # enters with its referenced bit clear (see referenced)
        return new

    def _event(self, kind: str, **fields) -> None:
        if self.on_event is not None:
            self.on_event(kind, fields)

    # -- frames ----------------------------------------------------------------------------

    def _frame(self, gpn: int) -> slice:
        off = gpn << PAGE_SHIFT
        return slice(off, off + PAGE_SIZE)

    def _release_frame(self, gpn: int) -> None:
        """Zero the frame and hand its host memory back: the bytes now live elsewhere."""
        off = gpn << PAGE_SHIFT
        # Zeroing first keeps this correct whatever the mapping; the advice only frees memory.
        self.ram[off:off + PAGE_SIZE] = _ZERO_PAGE
        advice = self._release_advice
        while advice:
            try:
                self.ram.madvise(advice[0], off, PAGE_SIZE)
                return
            except (OSError, ValueError):
                advice.pop(0)           # not supported for this mapping: try the next one

    def _reserve_frame(self) -> None:
        """Evict until one more page fits under the limit (resident + inflight)."""
        if self.limit_pages is None:
            return
        evicted = False
        try:
            while self.resident_pages + len(self._inflight_from) >= self.limit_pages:
                self._evict(self._victim())
                evicted = True
        finally:
            if evicted:                 # flush even when the limit is then found too small
                self.on_unmap()

    def _victim(self) -> int:
        queue = self._queue
        if not queue:
            raise ParameterError("memory limit too small for the pinned pages "
                                 f"({len(self._pinned)} pinned, limit {self.limit_pages} pages, "
                                 f"{len(self._inflight_from)} page-ins running)")
        if self.policy == "fifo":
            return next(iter(queue))
        while True:                     # clock: clear and pass over referenced pages once
            gpn, ref = next(iter(queue.items()))
            if not ref:
                return gpn
            queue[gpn] = 0
            queue.move_to_end(gpn)

    def _evict(self, gpn: int) -> None:
        self._check(gpn, "evict")
        if gpn in self._pinned:
            raise InvariantError(f"page {gpn:#x}: evict in state RESIDENT is forbidden "
                                 "(the page is pinned)")
        if self.swap is None:
            raise InvariantError(f"page {gpn:#x}: evict with no swap store")
        self._transition(gpn, "evict")
        frame = self._frame(gpn)
        self.swap.put(gpn, self.ram[frame])
        self._release_frame(gpn)
        self.counters.page_outs += 1
        self.counters.bytes_out += PAGE_SIZE
        self._event("page_out", gpn=gpn, to=self.swap.name, cost_ns=self.swap.write_cost_ns())

    # -- lifecycle -------------------------------------------------------------------------

    def first_touch(self, gpn: int) -> None:
        """ABSENT -> RESIDENT.  The frame keeps its bytes: zeros, or what a loader put there."""
        self._check(gpn, "first_touch")
        self._reserve_frame()
        self._transition(gpn, "first_touch")
        self.counters.first_touches += 1
        self._event("first_touch", gpn=gpn)

    def touch_range(self, ipa: int, size: int) -> None:
        """first_touch every ABSENT page overlapping [ipa, ipa + size), e.g. a loaded image."""
        if size <= 0:
            return
        for gpn in range(self.gpn_of(ipa), self.gpn_of(ipa + size - 1) + 1):
            if self._states[gpn] == PageState.ABSENT:
                self.first_touch(gpn)

    def start_page_in(self, gpn: int, now_ns: int, rng: random.Random) -> int:
        """SWAPPED/REMOTE -> INFLIGHT; reserves a frame and returns the page-in's done time."""
        self._check(gpn, "start_page_in")
        store = self.swap if self._states[gpn] == PageState.SWAPPED else self.remote
        self._reserve_frame()
        done_ns = store.schedule_read(gpn, now_ns, rng)
        self._transition(gpn, "start_page_in")
        self._inflight_from[gpn] = store
        self._inflight_done[gpn] = done_ns
        self._event("page_in_start", gpn=gpn, src=store.name, done_ns=done_ns)
        return done_ns

    def finish_page_in(self, gpn: int) -> None:
        """INFLIGHT -> RESIDENT: the page's bytes come back from the store into its frame."""
        self._transition(gpn, "finish_page_in")
        store = self._inflight_from.pop(gpn)
        del self._inflight_done[gpn]
        self.ram[self._frame(gpn)] = store.take(gpn)
        self.counters.page_ins += 1
        self.counters.bytes_in += PAGE_SIZE
        self._event("page_in_done", gpn=gpn, src=store.name)

    def evict(self, gpn: int) -> None:
        """RESIDENT -> SWAPPED: bytes to swap, frame zeroed and released, TLB flushed."""
        self._evict(gpn)
        self.on_unmap()

    def make_remote(self, gpns: Iterable[int]) -> None:
        """Move these pages' bytes to the post-copy source (state REMOTE), as at switch-over."""
        if self.remote is None:
            raise ParameterError("make_remote needs a PostcopySource (as store or remote)")
        moved = False
        for gpn in gpns:
            self._transition(gpn, "make_remote")
            frame = self._frame(gpn)
            self.remote.put(gpn, self.ram[frame])
            self._release_frame(gpn)
            self.counters.bytes_out += PAGE_SIZE
            self._event("page_out", gpn=gpn, to=self.remote.name, cost_ns=0)
            moved = True
        if moved:
            self.on_unmap()

    def receive_push(self, gpn: int) -> None:
        """REMOTE -> RESIDENT: a page the post-copy stream pushed has landed."""
        self._check(gpn, "push")
        self._reserve_frame()
        self._transition(gpn, "push")
        self.ram[self._frame(gpn)] = self.remote.take(gpn)
        self.counters.pushes += 1
        self.counters.bytes_in += PAGE_SIZE
        self._event("page_in_done", gpn=gpn, src="stream")

    def deliver_background(self, now_ns: int) -> list[int]:
        """Land every stream page that has arrived by `now_ns`; returns their gpns in order."""
        if self.remote is None:
            return []
        landed = []
        for gpn, _arrival in self.remote.background_due(now_ns):
            self.receive_push(gpn)
            landed.append(gpn)
        return landed

    def set_limit(self, pages: int | None) -> None:
        """Set the host memory limit (resident + page-ins running), evicting down to it now.

        None lifts it. The pinned pages count against it, and at least one frame must be
        left for everything else, or no fault could ever be resolved.
        """
        if pages is None:
            self.limit_pages = None
            return
        if not isinstance(pages, int) or isinstance(pages, bool):
            raise ParameterError(f"memory limit must be an int number of pages or None, got {pages!r}")
        if pages <= len(self._pinned):
            raise ParameterError(f"memory limit of {pages} pages leaves no frame beside the "
                                 f"{len(self._pinned)} pinned pages")
        if self.swap is None and self.resident_pages > pages:
            raise ParameterError("lowering the memory limit below the resident pages needs a swap store")
        self.limit_pages = pages
        moved = 0
        while self.resident_pages + len(self._inflight_from) > pages and self._queue:
            self._evict(self._victim())
            moved += 1
        if moved:
            self.on_unmap()

    def swap_out_all_but(self, n: int) -> int:
        """Evict policy victims until at most `n` pages stay resident; returns how many moved.

        Pinned pages stay, so fewer than requested may move.  For setting up experiments.
        """
        if self.swap is None:
            raise ParameterError("swap_out_all_but needs a swap store")
        moved = 0
        while self.resident_pages > n and self._queue:
            self._evict(self._victim())
            moved += 1
        if moved:
            self.on_unmap()
        return moved

    def inflight_done_ns(self, gpn: int) -> int:
        """When the running page-in of `gpn` completes (as its store scheduled it)."""
        try:
            return self._inflight_done[gpn]
        except KeyError:
            raise InvariantError(f"page {gpn:#x}: no page-in is running "
                                 f"(state {self.state(gpn).name})") from None

    # -- host access to guest memory, wherever each page is ---------------------------------

    def _pieces(self, ipa: int, size: int):
        """(gpn, offset in page, length) for each page [ipa, ipa + size) touches."""
        if size < 0 or not (self.in_ram(ipa) and (size == 0 or self.in_ram(ipa + size - 1))):
            raise ParameterError(f"[{ipa:#x}, +{size:#x}) is outside guest RAM "
                                 f"[{self.ram_base:#x}, {self.ram_base + self.ram_size:#x})")
        off = ipa - self.ram_base
        end = off + size
        while off < end:
            gpn, in_page = divmod(off, PAGE_SIZE)
            n = min(PAGE_SIZE - in_page, end - off)
            yield gpn, in_page, n
            off += n

    def read(self, ipa: int, size: int) -> bytes:
        """Read guest memory without moving any page (from RAM, swap or the source)."""
        out = bytearray()
        for gpn, in_page, n in self._pieces(ipa, size):
            if self._states[gpn] <= PageState.RESIDENT:      # ABSENT or RESIDENT: the frame
                base = gpn << PAGE_SHIFT
                out += self.ram[base + in_page:base + in_page + n]
            else:
                out += self.page_bytes(gpn)[in_page:in_page + n]
        return bytes(out)

    def write(self, ipa: int, data: bytes) -> None:
        """Write guest memory where each page's bytes are; an untouched page is touched first.

        The loader and host services (the APF shared block) write through here, so a page that
        is out is updated in its store rather than brought in.
        """
        pos = 0
        for gpn, in_page, n in self._pieces(ipa, len(data)):
            chunk = data[pos:pos + n]
            pos += n
            if self._states[gpn] == PageState.ABSENT:
                self.first_touch(gpn)
            if self._states[gpn] == PageState.RESIDENT:
                base = gpn << PAGE_SHIFT
                self.ram[base + in_page:base + in_page + n] = chunk
                continue
            store = self._store_of(gpn)
            page = bytearray(store.peek(gpn))
            page[in_page:in_page + n] = chunk
            store.overwrite(gpn, bytes(page))

    def _store_of(self, gpn: int) -> BackingStore:
        state = self._states[gpn]
        if state == PageState.SWAPPED:
            return self.swap
        if state == PageState.REMOTE:
            return self.remote
        return self._inflight_from[gpn]

    # -- policy inputs ---------------------------------------------------------------------

    def referenced(self, gpn: int) -> None:
        """The host saw an access to `gpn` (e.g. a TLB refill): set its clock bit."""
        if gpn in self._queue:
            self._queue[gpn] = 1

    def pin(self, gpn: int) -> None:
        """Never evict `gpn` (the guest kernel's code, data and stacks in experiments)."""
        if not 0 <= gpn < self.npages:
            raise ParameterError(f"pin: page {gpn:#x} is outside guest RAM")
        self._pinned.add(gpn)
        self._queue.pop(gpn, None)

    def unpin(self, gpn: int) -> None:
        if gpn in self._pinned:
            self._pinned.discard(gpn)
            if self._states[gpn] == PageState.RESIDENT:
                self._queue[gpn] = 0

    # -- inspection ------------------------------------------------------------------------

    def page_bytes(self, gpn: int) -> bytes:
        """The page's bytes wherever they are, without moving them."""
        state = self.state(gpn)
        if state in (PageState.ABSENT, PageState.RESIDENT):
            return bytes(self.ram[self._frame(gpn)])
        return self._store_of(gpn).peek(gpn)

    def page_digest(self, gpn: int) -> bytes:
        """SHA-256 of the page's bytes wherever they are (for tests of 'nothing is lost')."""
        return hashlib.sha256(self.page_bytes(gpn)).digest()

    def check(self) -> None:
        """Re-derive the bookkeeping from the state array; InvariantError on any mismatch."""
        resident = self._states.count(PageState.RESIDENT)
        inflight = self._states.count(PageState.INFLIGHT)
        if resident != self.resident_pages or inflight != len(self._inflight_from):
            raise InvariantError(f"counts drifted: {resident} resident vs {self.resident_pages}, "
                                 f"{inflight} inflight vs {len(self._inflight_from)}")
        if self.limit_pages is not None and resident + inflight > self.limit_pages:
            raise InvariantError(f"limit broken: {resident} resident + {inflight} inflight > "
                                 f"{self.limit_pages}")
        for gpn, s in enumerate(self._states):
            if s == PageState.SWAPPED and not self.swap.holds(gpn):
                raise InvariantError(f"page {gpn:#x} SWAPPED but not in swap")
            if s == PageState.REMOTE and not self.remote.holds(gpn):
                raise InvariantError(f"page {gpn:#x} REMOTE but not on the source")
            if s in (PageState.SWAPPED, PageState.REMOTE, PageState.INFLIGHT):
                if self.ram[self._frame(gpn)] != _ZERO_PAGE:
                    raise InvariantError(f"page {gpn:#x} not resident but its frame is dirty")

    def describe(self) -> dict:
        return {"ram_base": self.ram_base, "ram_size": self.ram_size, "policy": self.policy,
                "limit_pages": self.limit_pages,
                "swap": None if self.swap is None else self.swap.describe(),
                "remote": None if self.remote is None else self.remote.describe()}
