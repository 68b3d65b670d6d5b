"""Backing stores: where a non-resident guest page lives, and how long fetching it takes.

Two kinds, one shape:

- `SwapStore`: host swap on a block device.  The device has `channels` parallel servers
  (a hard disk has one head assembly; an NVMe SSD serves many reads at once).  A page-in
  waits for the earliest free server, then takes a service time drawn from a lognormal
  distribution around the device's median latency.
- `PostcopySource`: pages still on the migration source host during post-copy migration.
  One network link carries both a background stream that pushes every page in order and
  the on-demand fetches the destination asks for when the guest touches a missing page.

All times are virtual nanoseconds; all randomness comes from the `random.Random` passed in,
so the same seed gives the same numbers.  Nothing here knows about guest state: `Stage2`
decides when pages move, a store only keeps their bytes and prices the move.
"""

from __future__ import annotations

import heapq
import math
import random
import zlib
from collections import deque
from typing import Iterable

from apflab.errors import InvariantError, ParameterError

PAGE_SIZE = 4096

# --- Default figures, with where they come from -------------------------------------------
#
# SSD (NVMe, NAND flash), 4 KiB random read at queue depth 1: median 50 us.
#   A Samsung 9100 Pro reads ~80 MB/s of 4 KiB random reads at QD1, i.e. ~20k IOPS,
#   i.e. ~50 us a read (Hacker News thread 46335659, quoting ssd.userbenchmark.com);
#   nvme-storage.com's latency glossary gives 10-50 us for NVMe devices.
#   Jeff Dean's "numbers everyone should know" (2009) said 150 us for older SATA SSDs:
#   pass latency_ns=150_000 to model one.
SSD_LATENCY_NS = 50_000
# 32 channels: NVMe drives keep tens of reads in flight across their flash dies.  32 servers
#   of 50 us is ~640k IOPS, close to the ~550-600k 4 KiB IOPS at QD32 that Samsung rates its
#   970 EVO Plus for (KitGuru review).  A lab choice, not a measured queue model.
SSD_CHANNELS = 32
# Spread (lognormal sigma) 0.3: p99 ~2x the median.  A lab choice: flash read latency is
#   tight at QD1 with an occasional slow read behind garbage collection.
SSD_JITTER = 0.3

# HDD, 7200 rpm: median 13 ms = average seek ~9 ms ("most common desktop drives around 9 ms",
#   Wikipedia "Hard disk drive performance characteristics") + half a rotation,
#   60 s / 7200 / 2 = 4.17 ms; the 4 KiB transfer itself (~0.03 ms) is negligible.
HDD_LATENCY_NS = 13_000_000
# One channel: one actuator, reads are served one at a time.
HDD_CHANNELS = 1
# Spread 0.35: seek distance and rotational position vary read to read (rotation alone is
#   uniform over 0-8.3 ms).  A lab choice.
HDD_JITTER = 0.35

# Network round trip inside a data centre: median 200 us.  Evan Jones measured TCP echo
#   between VMs in one Google Cloud region in 2021 and found 500 us at about the 80th
#   percentile ("network-latencies-2021"); AppNeta reports 120-180 us application-to-
#   application on a tuned 1 GbE LAN.  200 us sits between the two for an untuned 10 GbE host.
NET_RTT_NS = 200_000
# 10 GbE = 1.25e9 bytes/s of payload (ignoring framing overhead, ~3%).
NET_BANDWIDTH_BYTES_PER_S = 1_250_000_000
# Spread of a demand fetch's round trip, 0.3.  A lab choice.
NET_JITTER = 0.3


def _check_number(name: str, value, lo, hi=None, *, integer: bool = True, strict_lo: bool = False):
    """Raise ParameterError naming `name` and its allowed range unless lo <= value (<= hi)."""
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool)
    if ok and not integer:
        ok = math.isfinite(value)
    if ok:
        ok = value > lo if strict_lo else value >= lo
        if ok and hi is not None:
            ok = value <= hi
    if not ok:
        what = "an int" if integer else "a number"
        rng = f"> {lo}" if strict_lo else f">= {lo}"
        if hi is not None:
            rng += f" and <= {hi}"
        raise ParameterError(f"{name} must be {what} {rng} (got {value!r})")
    return value


def draw_lognormal_ns(rng: random.Random, median_ns: int, sigma: float) -> int:
    """A service time around `median_ns` with lognormal spread `sigma`, clamped to >= 1 ns.

    sigma == 0 gives exactly the median and draws nothing from `rng`.
    """
    if sigma == 0 or median_ns == 0:
        return max(1, median_ns)
    return max(1, round(rng.lognormvariate(math.log(median_ns), sigma)))


class BackingStore:
    """Abstract store of page bytes keyed by guest page number (gpn).

    A page's bytes are in exactly one place: `put` of a page already held and `take` of a
    page not held are invariant errors, never silent overwrites or KeyErrors.
    """

    name: str = "store"
    kind: str = "abstract"

    def __init__(self) -> None:
        # Page bytes are kept zlib-compressed (like Linux's zswap): a 1 GiB guest's swap
        # then fits in host memory. The device latency model is separate and unchanged.
        self._pages: dict[int, bytes] = {}

    def put(self, gpn: int, data: bytes) -> None:
        """Store a page's bytes (page-out)."""
        if len(data) != PAGE_SIZE:
            raise InvariantError(f"{self.name}: page {gpn:#x} put with {len(data)} bytes, "
                                 f"expected {PAGE_SIZE}")
        if gpn in self._pages:
            raise InvariantError(f"{self.name}: page {gpn:#x} put twice (already held)")
        self._pages[gpn] = zlib.compress(data, 1)

    def take(self, gpn: int) -> bytes:
        """Remove and return a page's bytes (page-in)."""
        try:
            return zlib.decompress(self._pages.pop(gpn))
        except KeyError:
            raise InvariantError(f"{self.name}: page {gpn:#x} taken but not held") from None

    def peek(self, gpn: int) -> bytes:
        """A page's bytes without moving them (for checksums and widgets)."""
        try:
            return zlib.decompress(self._pages[gpn])
        except KeyError:
            raise InvariantError(f"{self.name}: page {gpn:#x} peeked but not held") from None

    def overwrite(self, gpn: int, data: bytes) -> None:
        """Replace a held page's bytes in place (the host writing guest memory that is out)."""
        if len(data) != PAGE_SIZE or gpn not in self._pages:
            raise InvariantError(f"{self.name}: overwrite of page {gpn:#x} "
                                 f"({len(data)} bytes, held={gpn in self._pages})")
        self._pages[gpn] = zlib.compress(data, 1)

    def holds(self, gpn: int) -> bool:
        return gpn in self._pages

    def __len__(self) -> int:
        return len(self._pages)

    def schedule_read(self, gpn: int, now_ns: int, rng: random.Random) -> int:
        """Completion time (ns) of a page-in of `gpn` started at `now_ns`."""
        raise NotImplementedError

    def write_cost_ns(self) -> int:
        """Host time a page-out of one page costs the vCPU that caused it."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The store's parameters, echoed into results and labs."""
        raise NotImplementedError

    def _require(self, gpn: int) -> None:
        if gpn not in self._pages:
            raise InvariantError(f"{self.name}: read of page {gpn:#x} scheduled but not held")


class SwapStore(BackingStore):
    """Host swap on a block device with `channels` parallel servers (FCFS multi-server queue).

    A read started at `now` goes to the server that frees first; it starts when that server is
    free and takes a lognormal service time around `latency_ns`.  So two concurrent reads on
    a one-channel disk finish one after the other.

    Writes (page-outs) cost the vCPU `write_ns`, 0 by default: Linux writes swap
    asynchronously (reclaim queues the write-back and maps nothing new until the read), so
    the faulting vCPU does not wait for it.  Departure: writes do not occupy the device's
    channels here, so they never delay reads.
    """

    kind = "swap"

    def __init__(self, latency_ns: int = SSD_LATENCY_NS, jitter: float = SSD_JITTER,
                 channels: int = SSD_CHANNELS, *, write_ns: int = 0, name: str = "swap"):
        super().__init__()
        self.latency_ns = _check_number("latency_ns", latency_ns, 0)
        self.jitter = _check_number("jitter", jitter, 0, 3, integer=False)
        self.channels = _check_number("channels", channels, 1, 4096)
        self.write_ns = _check_number("write_ns", write_ns, 0)
        self.name = name
        self._free_at = [0] * self.channels     # min-heap of the times each server frees
        self.reads = 0

    @classmethod
    def ssd(cls, **overrides) -> "SwapStore":
        """NVMe SSD swap: 50 us median 4 KiB read, 32 reads in flight (see module figures)."""
        params = dict(latency_ns=SSD_LATENCY_NS, jitter=SSD_JITTER, channels=SSD_CHANNELS,
                      name="ssd")
        params.update(overrides)
        return cls(**params)

    @classmethod
    def hdd(cls, **overrides) -> "SwapStore":
        """7200 rpm disk swap: 13 ms median (seek + half rotation), one read at a time."""
        params = dict(latency_ns=HDD_LATENCY_NS, jitter=HDD_JITTER, channels=HDD_CHANNELS,
                      name="hdd")
        params.update(overrides)
        return cls(**params)

    def schedule_read(self, gpn: int, now_ns: int, rng: random.Random) -> int:
        self._require(gpn)
        free = heapq.heappop(self._free_at)
        done = max(now_ns, free) + draw_lognormal_ns(rng, self.latency_ns, self.jitter)
        heapq.heappush(self._free_at, done)
        self.reads += 1
        return done

    def set_read_latency(self, latency_ns: int, jitter: float) -> None:
        """Future reads take ``latency_ns`` (median) with ``jitter``; reads already queued keep
        their times, and the channel count stays as built (queued reads hold channels)."""
        self.latency_ns = _check_number("latency_ns", latency_ns, 0)
        self.jitter = _check_number("jitter", jitter, 0, 3, integer=False)

    def write_cost_ns(self) -> int:
        return self.write_ns

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "latency_ns": self.latency_ns,
                "jitter": self.jitter, "channels": self.channels, "write_ns": self.write_ns}


class PostcopySource(BackingStore):
    """Pages still on the migration source, fetched over one shared link.

    Link model (serial, bandwidth-shared):
    - Sending one page occupies the link for `page_tx_ns = PAGE_SIZE / bandwidth`; a page
      arrives one-way latency (`rtt_ns / 2`) after its last byte is sent.
    - After `start_stream(t)`, the source pushes every page it holds in stream order
      (ascending gpn unless an order is given), back to back, whenever the link is idle.
    - An on-demand fetch requested at `now` reaches the source half a (jittered) round trip
      later and is sent next, ahead of the stream, as soon as the page being sent finishes:
      demand pages have priority but do not abort a page mid-send.  Each one delays the rest
      of the stream by one `page_tx_ns`.  This is how QEMU's source services postcopy page
      requests in-band (the request queue is checked before the next background page).
    - A page already sent by the stream when its demand arrives is not sent again: the fetch
      completes when that copy lands.

    The stream is computed lazily: a background page whose send starts before
    `t + rtt_ns / 2` is fixed once the host has asked anything at time `t`, because no request
    made at or after `t` can reach the source before then.  So results do not depend on how
    often the host polls, as long as its calls come in time order.

    Pages never go back to the source: `put` is only for setting up the migration (before the
    stream starts) and `write_cost_ns` is 0.
    """

    kind = "postcopy"

    def __init__(self, rtt_ns: int = NET_RTT_NS,
                 bandwidth_bytes_per_s: int = NET_BANDWIDTH_BYTES_PER_S,
                 jitter: float = NET_JITTER, *, name: str = "postcopy"):
        super().__init__()
        self.rtt_ns = _check_number("rtt_ns", rtt_ns, 0)
        self.bandwidth_bytes_per_s = _check_number(
            "bandwidth_bytes_per_s", bandwidth_bytes_per_s, 0, strict_lo=True)
        self.jitter = _check_number("jitter", jitter, 0, 3, integer=False)
        self.name = name
        self.page_tx_ns = max(1, -(-PAGE_SIZE * 1_000_000_000 // self.bandwidth_bytes_per_s))
        self._link_free_ns = 0           # the link finishes its last committed send then
        self._streaming = False
        self._order: deque[int] = deque()    # pages the stream has yet to send
        self._in_transit: deque[tuple[int, int]] = deque()   # (gpn, arrival_ns), sent by stream
        self._claimed: set[int] = set()  # demanded pages: the stream skips them
        self.demand_reads = 0
        self.pushed = 0

    # -- setup -----------------------------------------------------------------------------

    def put(self, gpn: int, data: bytes) -> None:
        if self._streaming:
            raise InvariantError(f"{self.name}: page {gpn:#x} moved to the source after the "
                                 "stream started")
        super().put(gpn, data)

    def start_stream(self, now_ns: int, order: Iterable[int] | None = None) -> None:
        """Begin pushing every held page, in `order` (default ascending gpn), from `now_ns`."""
        if self._streaming:
            raise InvariantError(f"{self.name}: stream started twice")
        pages = sorted(self._pages) if order is None else list(order)
        if sorted(pages) != sorted(self._pages):
            raise ParameterError("order must list every page on the source exactly once")
        self._order = deque(pages)
        self._streaming = True
        self._link_free_ns = max(self._link_free_ns, now_ns)

    @property
    def streaming(self) -> bool:
        return self._streaming

    # -- the link --------------------------------------------------------------------------

    def _commit_stream(self, before_ns: int) -> None:
        """Fix every background send that starts before `before_ns`."""
        if not self._streaming:
            return
        order, claimed, half = self._order, self._claimed, self.rtt_ns // 2
        while order and self._link_free_ns < before_ns:
            gpn = order.popleft()
            if gpn in claimed or gpn not in self._pages:
                continue
            self._link_free_ns += self.page_tx_ns
            self._in_transit.append((gpn, self._link_free_ns + half))

    def schedule_read(self, gpn: int, now_ns: int, rng: random.Random) -> int:
        self._require(gpn)
        if gpn in self._claimed:
            raise InvariantError(f"{self.name}: page {gpn:#x} demanded twice")
        rtt = draw_lognormal_ns(rng, self.rtt_ns, self.jitter) if self.rtt_ns else 0
        at_source = now_ns + rtt // 2
        self._commit_stream(at_source)
        self._claimed.add(gpn)
        self.demand_reads += 1
        for i, (sent, arrival) in enumerate(self._in_transit):
            if sent == gpn:              # the stream already sent it: wait for that copy
                del self._in_transit[i]
                return max(arrival, now_ns)
        start = max(at_source, self._link_free_ns)
        self._link_free_ns = start + self.page_tx_ns
        return self._link_free_ns + (rtt - rtt // 2)

    def take(self, gpn: int) -> bytes:
        self._claimed.discard(gpn)
        return super().take(gpn)

    def background_due(self, now_ns: int) -> list[tuple[int, int]]:
        """Stream pages that have arrived by `now_ns`, as (gpn, arrival_ns) in arrival order.

        Each is handed over once: the caller must take it (Stage2.deliver_background does).
        """
        self._commit_stream(now_ns + self.rtt_ns // 2)
        due = []
        transit = self._in_transit
        while transit and transit[0][1] <= now_ns:
            due.append(transit.popleft())
        self.pushed += len(due)
        return due

    def next_background_ns(self) -> int | None:
        """When the next stream page lands if no demand intervenes; None when the stream is done."""
        if self._in_transit:
            return self._in_transit[0][1]
        if not self._streaming:
            return None
        for gpn in self._order:
            if gpn not in self._claimed and gpn in self._pages:
                return self._link_free_ns + self.page_tx_ns + self.rtt_ns // 2
        return None

    def write_cost_ns(self) -> int:
        return 0

    def describe(self) -> dict:
        return {"kind": self.kind, "name": self.name, "rtt_ns": self.rtt_ns,
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s, "jitter": self.jitter,
                "page_tx_ns": self.page_tx_ns}


_KINDS = {
    "ssd": (SwapStore.ssd, {"latency_ns", "jitter", "channels", "write_ns"}),
    "hdd": (SwapStore.hdd, {"latency_ns", "jitter", "channels", "write_ns"}),
    "postcopy": (PostcopySource, {"rtt_ns", "bandwidth_bytes_per_s", "jitter"}),
}


def make_store(kind: str, **params) -> BackingStore:
    """A store by name: "ssd", "hdd" or "postcopy", with parameters overriding the defaults."""
    if kind not in _KINDS:
        raise ParameterError(f"store kind must be one of {sorted(_KINDS)} (got {kind!r})")
    factory, allowed = _KINDS[kind]
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ParameterError(f"unknown parameter {unknown[0]!r} for a {kind} store; "
                             f"allowed: {sorted(allowed)}")
    return factory(**params)
