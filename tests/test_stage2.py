"""Stage-2 memory: the page lifecycle table, real byte movement, the limit and its policies."""

import itertools
import mmap
import random

import pytest
from hypothesis import given, settings, strategies as st

from apflab.backing import PAGE_SIZE, PostcopySource, SwapStore
from apflab.errors import InvariantError, ParameterError
from apflab.stage2 import ACTIONS, LIFECYCLE, Forbidden, PageState, Stage2

BASE = 0x4000_0000
S = PageState


def machine(npages=8, *, limit=None, policy="fifo", ram=None, store=None, **kw):
    ram = bytearray(npages * PAGE_SIZE) if ram is None else ram
    store = SwapStore(latency_ns=1000, jitter=0, channels=1) if store is None else store
    events, unmaps = [], []
    s2 = Stage2(ram, BASE, npages * PAGE_SIZE, store=store,
                limit_bytes=None if limit is None else limit * PAGE_SIZE, policy=policy,
                on_unmap=lambda: unmaps.append(1),
                on_event=lambda kind, fields: events.append((kind, fields)), **kw)
    s2.events, s2.unmaps = events, unmaps
    return s2


def write(s2, gpn, data: bytes):
    """What the guest does: store into a resident page."""
    assert s2.state(gpn) == S.RESIDENT
    off = gpn * PAGE_SIZE
    s2.ram[off:off + len(data)] = data


def frame(s2, gpn):
    return bytes(s2.ram[gpn * PAGE_SIZE:(gpn + 1) * PAGE_SIZE])


def page_in(s2, gpn, now=0):
    s2.start_page_in(gpn, now, random.Random(0))
    s2.finish_page_in(gpn)


# -- the table --------------------------------------------------------------------------------

def test_lifecycle_table_covers_every_state_and_action():
    assert set(LIFECYCLE) == set(itertools.product(PageState, ACTIONS))
    for (state, action), outcome in LIFECYCLE.items():
        assert isinstance(outcome, (PageState, Forbidden)), (state, action)
        if isinstance(outcome, Forbidden):
            assert outcome.why


def test_every_forbidden_pair_raises_naming_page_state_and_action():
    """Drive a page into each state, try each forbidden action: InvariantError, no change."""
    def in_state(state):
        s2 = machine(4, store=SwapStore(jitter=0), remote=PostcopySource(jitter=0))
        if state != S.ABSENT:
            s2.first_touch(2)
        if state == S.SWAPPED:
            s2.evict(2)
        if state == S.REMOTE:
            s2.make_remote([2])
        if state == S.INFLIGHT:
            s2.evict(2)
            s2.start_page_in(2, 0, random.Random(0))
        assert s2.state(2) == state
        return s2
    calls = {"first_touch": lambda s2: s2.first_touch(2), "evict": lambda s2: s2.evict(2),
             "start_page_in": lambda s2: s2.start_page_in(2, 0, random.Random(0)),
             "finish_page_in": lambda s2: s2.finish_page_in(2),
             "make_remote": lambda s2: s2.make_remote([2]),
             "push": lambda s2: s2.receive_push(2)}
    assert set(calls) == set(ACTIONS)
    for (state, action), outcome in LIFECYCLE.items():
        s2 = in_state(state)
        if isinstance(outcome, Forbidden):
            with pytest.raises(InvariantError) as e:
                calls[action](s2)
            assert "0x2" in str(e.value) and state.name in str(e.value) and action in str(e.value)
            assert s2.state(2) == state
        elif action != "push":     # push needs the stream; covered below
            calls[action](s2)
            assert s2.state(2) == outcome
        s2.check()


# -- moving bytes -----------------------------------------------------------------------------

def test_first_touch_maps_the_page_and_keeps_loader_bytes():
    s2 = machine()
    s2.ram[0:4] = b"code"                 # a loader wrote the image before the guest ran
    assert not s2.is_mapped(BASE)
    s2.touch_range(BASE, 4)
    assert s2.is_mapped(BASE) and s2.is_mapped(BASE + PAGE_SIZE - 1)
    assert not s2.is_mapped(BASE + PAGE_SIZE)
    assert frame(s2, 0)[:4] == b"code"
    assert s2.events == [("first_touch", {"gpn": 0})]
    assert s2.counters.first_touches == 1 and s2.resident_pages == 1


def test_is_mapped_and_gpn_of_outside_ram():
    s2 = machine(2)
    assert not s2.is_mapped(BASE - 1) and not s2.is_mapped(BASE + 2 * PAGE_SIZE)
    assert not s2.in_ram(BASE + 2 * PAGE_SIZE) and s2.in_ram(BASE)
    assert s2.gpn_of(BASE + PAGE_SIZE + 5) == 1
    with pytest.raises(ParameterError, match="outside guest RAM"):
        s2.gpn_of(BASE - 4)
    with pytest.raises(InvariantError):
        s2.state(-1)


def test_evict_moves_bytes_to_swap_zeroes_frame_and_flushes():
    s2 = machine()
    s2.first_touch(3)
    write(s2, 3, b"hello" * 800)
    before = s2.page_digest(3)
    s2.evict(3)
    assert s2.state(3) == S.SWAPPED and not s2.is_mapped(BASE + 3 * PAGE_SIZE)
    assert frame(s2, 3) == bytes(PAGE_SIZE)
    assert s2.swap.holds(3) and s2.page_digest(3) == before
    assert s2.unmaps == [1]
    assert s2.events[-1] == ("page_out", {"gpn": 3, "to": "swap", "cost_ns": 0})
    s2.check()


def test_page_in_runs_inflight_then_brings_the_bytes_back():
    s2 = machine()
    s2.first_touch(1)
    write(s2, 1, bytes(range(256)) * 16)
    digest = s2.page_digest(1)
    s2.evict(1)
    done = s2.start_page_in(1, 500, random.Random(0))
    assert done == 1500
    assert s2.state(1) == S.INFLIGHT and s2.inflight_pages == 1
    assert not s2.is_mapped(BASE + PAGE_SIZE) and frame(s2, 1) == bytes(PAGE_SIZE)
    assert s2.page_digest(1) == digest           # still readable, from the store
    s2.finish_page_in(1)
    assert s2.state(1) == S.RESIDENT and frame(s2, 1) == bytes(range(256)) * 16
    assert not s2.swap.holds(1)
    kinds = [k for k, _ in s2.events]
    assert kinds == ["first_touch", "page_out", "page_in_start", "page_in_done"]
    c = s2.counters
    assert (c.page_ins, c.page_outs, c.bytes_in, c.bytes_out) == (1, 1, PAGE_SIZE, PAGE_SIZE)


def test_set_limit_evicts_down_to_it_and_refuses_a_limit_with_no_free_frame():
    s2 = machine()
    for g in range(6):
        s2.first_touch(g)
    s2.pin(0)
    s2.set_limit(3)
    assert s2.limit_pages == 3 and s2.resident_pages == 3
    with pytest.raises(ParameterError, match="no frame beside the 1 pinned"):
        s2.set_limit(1)
    with pytest.raises(ParameterError, match="int number of pages"):
        s2.set_limit(2.5)
    s2.set_limit(None)
    assert s2.limit_pages is None


def test_mmap_ram_really_moves_and_releases_pages():
    ram = mmap.mmap(-1, 8 * PAGE_SIZE)
    s2 = machine(8, ram=ram, limit=2)
    for g in range(4):
        s2.first_touch(g)
        write(s2, g, bytes([g + 1]) * PAGE_SIZE)
    assert s2.resident_pages == 2 and s2.count(S.SWAPPED) == 2
    assert frame(s2, 0) == bytes(PAGE_SIZE)      # released frames read back as zeros
    page_in(s2, 0)
    assert frame(s2, 0) == bytes([1]) * PAGE_SIZE
    s2.check()
    ram.close()


@pytest.mark.parametrize("flags", [mmap.MAP_SHARED, mmap.MAP_PRIVATE])
def test_mmap_kinds_read_back_zeros_after_release(flags):
    ram = mmap.mmap(-1, 4 * PAGE_SIZE, flags=flags | mmap.MAP_ANONYMOUS)
    s2 = machine(4, ram=ram)
    s2.write(BASE, b"\xaa" * (2 * PAGE_SIZE))
    s2.evict(0)
    s2.evict(1)
    assert ram[0:2 * PAGE_SIZE] == bytes(2 * PAGE_SIZE)
    assert s2.read(BASE + PAGE_SIZE - 2, 4) == b"\xaa" * 4
    ram.close()


def test_host_read_and_write_reach_pages_wherever_they_are():
    src = PostcopySource(jitter=0)
    s2 = machine(4, remote=src)
    s2.write(BASE + PAGE_SIZE - 3, b"abcdef")        # spans pages 0 and 1, touching both
    assert s2.state(0) == s2.state(1) == S.RESIDENT and s2.state(2) == S.ABSENT
    s2.evict(1)
    s2.make_remote([0])
    assert s2.read(BASE + PAGE_SIZE - 3, 6) == b"abcdef"
    s2.write(BASE + PAGE_SIZE - 1, b"XY")            # into the source copy and the swap copy
    assert s2.state(0) == S.REMOTE and s2.state(1) == S.SWAPPED
    assert frame(s2, 0) == frame(s2, 1) == bytes(PAGE_SIZE)
    done = s2.start_page_in(1, 10, random.Random(0))
    assert s2.inflight_done_ns(1) == done
    s2.write(BASE + PAGE_SIZE + 1, b"Z")             # into the in-flight page's store copy
    s2.finish_page_in(1)
    page_in(s2, 0)
    assert s2.read(BASE + PAGE_SIZE - 3, 6) == b"abXYZf"
    assert s2.read(BASE + 3 * PAGE_SIZE, 2) == b"\0\0" and s2.state(3) == S.ABSENT
    with pytest.raises(ParameterError, match="outside guest RAM"):
        s2.read(BASE + 4 * PAGE_SIZE - 1, 2)
    with pytest.raises(InvariantError, match="no page-in is running"):
        s2.inflight_done_ns(1)
    s2.check()


# -- the limit and the policies ---------------------------------------------------------------

def test_limit_caps_resident_pages_fifo_evicts_oldest():
    s2 = machine(8, limit=4)
    for g in range(6):
        s2.first_touch(g)
        assert s2.resident_pages <= 4
    assert [s2.state(g) for g in range(6)] == [S.SWAPPED] * 2 + [S.RESIDENT] * 4
    s2.check()


@pytest.mark.parametrize("policy, victim", [("fifo", 0), ("clock", 1)])
def test_fifo_ignores_references_clock_gives_a_second_chance(policy, victim):
    s2 = machine(8, limit=3, policy=policy)
    for g in range(3):
        s2.first_touch(g)
    s2.referenced(0)
    s2.first_touch(3)
    assert s2.state(victim) == S.SWAPPED
    assert s2.count(S.SWAPPED) == 1


def test_clock_with_every_bit_set_falls_back_to_the_oldest():
    s2 = machine(8, limit=3, policy="clock")
    for g in range(3):
        s2.first_touch(g)
        s2.referenced(g)
    s2.first_touch(3)              # clears 0, 1, 2 in turn, then takes 0
    assert s2.state(0) == S.SWAPPED
    s2.referenced(3)
    s2.first_touch(4)              # 1 and 2 lost their bits on the sweep: 1 goes
    assert s2.state(1) == S.SWAPPED


def test_inflight_pages_hold_a_frame_and_are_never_victims():
    s2 = machine(8, limit=2)
    s2.first_touch(0)
    s2.first_touch(1)
    s2.evict(0)
    s2.start_page_in(0, 0, random.Random(0))     # 1 resident + 1 inflight = limit
    s2.first_touch(2)                            # must evict 1, not the inflight 0
    assert s2.state(0) == S.INFLIGHT and s2.state(1) == S.SWAPPED
    s2.check()
    s2.start_page_in(1, 0, random.Random(0))     # evicts 2: now two page-ins, no residents
    with pytest.raises(ParameterError, match="memory limit too small"):
        s2.first_touch(3)
    s2.check()


def test_pinned_pages_are_never_evicted():
    s2 = machine(8, limit=3)
    for g in range(3):
        s2.first_touch(g)
    s2.pin(0)
    s2.pin(1)
    assert s2.pinned == {0, 1}
    with pytest.raises(InvariantError, match="pinned"):
        s2.evict(0)
    s2.first_touch(3)               # only 2 is evictable
    assert s2.state(2) == S.SWAPPED
    s2.pin(3)
    with pytest.raises(ParameterError, match="memory limit too small for the pinned pages"):
        s2.first_touch(4)
    s2.unpin(1)
    s2.first_touch(4)
    assert s2.state(1) == S.SWAPPED
    s2.check()


def test_swap_out_all_but_keeps_pinned_and_newest():
    s2 = machine(8)
    for g in range(8):
        s2.first_touch(g)
    s2.pin(0)
    assert s2.swap_out_all_but(3) == 5
    assert [g for g in range(8) if s2.state(g) == S.RESIDENT] == [0, 6, 7]
    assert s2.unmaps == [1]                       # one flush for the batch


@pytest.mark.parametrize("kw, words", [
    ({"limit_bytes": PAGE_SIZE}, ["limit_bytes", "8192"]),
    ({"policy": "lru"}, ["policy", "fifo", "clock"]),
    ({"ram_base": 0x100}, ["multiples of 4096"]),
])
def test_bad_parameters_are_named(kw, words):
    args = dict(ram_base=BASE, store=SwapStore.ssd())
    args.update(kw)
    with pytest.raises(ParameterError) as e:
        Stage2(bytearray(4 * PAGE_SIZE), ram_size=4 * PAGE_SIZE, **args)
    for w in words:
        assert w in str(e.value)


# -- post-copy --------------------------------------------------------------------------------

def test_postcopy_demand_fetch_and_background_stream_bring_every_page_home():
    src = PostcopySource(rtt_ns=1000, bandwidth_bytes_per_s=4096 * 1_000_000, jitter=0)
    s2 = machine(6, store=SwapStore.ssd(), remote=src)
    for g in range(6):
        s2.first_touch(g)
        write(s2, g, bytes([0x10 + g]) * PAGE_SIZE)
    digests = [s2.page_digest(g) for g in range(6)]
    s2.make_remote(range(6))
    assert all(s2.state(g) == S.REMOTE and frame(s2, g) == bytes(PAGE_SIZE) for g in range(6))
    assert [s2.page_digest(g) for g in range(6)] == digests
    src.start_stream(0)
    assert s2.deliver_background(2500) == [0, 1]
    done = s2.start_page_in(5, 2500, random.Random(0))
    landed = s2.deliver_background(done)
    s2.finish_page_in(5)
    landed += s2.deliver_background(10**9)
    assert sorted(landed) == [2, 3, 4]
    assert all(s2.state(g) == S.RESIDENT for g in range(6))
    assert [s2.page_digest(g) for g in range(6)] == digests
    assert len(src) == 0 and s2.counters.pushes == 5
    s2.check()


def test_postcopy_source_as_the_only_store_refuses_a_limit():
    with pytest.raises(ParameterError, match="swap store"):
        machine(4, store=PostcopySource(), limit=2)
    s2 = machine(4, store=PostcopySource())
    s2.make_remote([0, 1])       # never-touched pages: the source holds zeros
    assert s2.page_digest(0) == machine(1).page_digest(0)


# -- nothing is ever lost ---------------------------------------------------------------------

OPS = st.tuples(st.sampled_from(["touch", "write", "hostwrite", "evict", "start", "finish", "ref", "pin",
                                 "unpin", "squeeze"]),
                st.integers(0, 7), st.integers(0, 255))


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(OPS, max_size=60), limit=st.sampled_from([None, 2, 3, 5]),
       policy=st.sampled_from(["fifo", "clock"]))
def test_page_bytes_survive_any_sequence_of_moves(ops, limit, policy):
    s2 = machine(8, limit=limit, policy=policy)
    expect = {g: bytes(PAGE_SIZE) for g in range(8)}
    rng = random.Random(0)
    for op, g, val in ops:
        state = s2.state(g)
        try:
            if op == "touch":
                s2.first_touch(g)
            elif op == "write":
                if state == S.RESIDENT:
                    data = bytes([val]) * 64
                    write(s2, g, data)
                    expect[g] = data + expect[g][64:]
            elif op == "hostwrite":                  # through Stage2, wherever the page is
                at = val * 16
                s2.write(BASE + g * PAGE_SIZE + at, b"h" * 16)
                expect[g] = expect[g][:at] + b"h" * 16 + expect[g][at + 16:]
            elif op == "evict":
                s2.evict(g)
            elif op == "start":
                s2.start_page_in(g, 0, rng)
            elif op == "finish":
                s2.finish_page_in(g)
            elif op == "ref":
                s2.referenced(g)
            elif op == "pin":
                s2.pin(g)
            elif op == "unpin":
                s2.unpin(g)
            elif op == "squeeze":
                s2.swap_out_all_but(val % 4)
        except InvariantError:
            # only an illegal move may be refused, and it must change nothing
            action = {"touch": "first_touch", "start": "start_page_in",
                      "finish": "finish_page_in"}.get(op, op)
            assert isinstance(LIFECYCLE.get((state, action)), Forbidden) or g in s2.pinned
            assert s2.state(g) == state
        except ParameterError as e:
            assert "memory limit too small" in str(e)
        s2.check()
        if limit is not None:
            assert s2.resident_pages + s2.inflight_pages <= limit
    for g in range(8):
        assert s2.page_bytes(g) == expect[g], g
