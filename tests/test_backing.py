"""Backing stores: bytes kept exactly once, seeded latencies, queueing, the post-copy link."""

import random
import statistics

import pytest
from hypothesis import given, settings, strategies as st

from apflab.backing import (HDD_LATENCY_NS, PAGE_SIZE, SSD_LATENCY_NS, PostcopySource,
                            SwapStore, make_store)
from apflab.errors import InvariantError, ParameterError


def page(n: int) -> bytes:
    return bytes([n & 0xFF]) * PAGE_SIZE


def filled(store, gpns):
    for g in gpns:
        store.put(g, page(g))
    return store


# -- bytes ------------------------------------------------------------------------------------

def test_put_take_holds_moves_bytes_once():
    s = SwapStore.ssd()
    s.put(3, page(3))
    assert s.holds(3) and len(s) == 1
    assert s.peek(3) == page(3) and s.holds(3)
    assert s.take(3) == page(3)
    assert not s.holds(3)


@pytest.mark.parametrize("store", [SwapStore.ssd(), PostcopySource()])
def test_store_refuses_to_lose_or_duplicate_bytes(store):
    store.put(1, page(1))
    with pytest.raises(InvariantError, match="put twice"):
        store.put(1, page(9))
    with pytest.raises(InvariantError, match="not held"):
        store.take(2)
    with pytest.raises(InvariantError, match="4096"):
        store.put(5, b"short")
    with pytest.raises(InvariantError, match="not held"):
        store.schedule_read(7, 0, random.Random(0))


# -- swap latency and queueing ----------------------------------------------------------------

@pytest.mark.parametrize("factory", [SwapStore.ssd, SwapStore.hdd])
def test_same_seed_same_latencies(factory):
    def run(seed):
        s = filled(factory(), range(50))
        rng = random.Random(seed)
        return [s.schedule_read(g, g * 1000, rng) for g in range(50)]
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_hdd_serves_one_read_at_a_time():
    s = filled(SwapStore.hdd(), [0, 1])
    rng = random.Random(1)
    first = s.schedule_read(0, 1000, rng)
    second = s.schedule_read(1, 1000, rng)
    assert 1000 < first < second
    # jitter 0: exact service times, so the queueing is visible as a sum
    s = filled(SwapStore.hdd(jitter=0), [0, 1])
    assert s.schedule_read(0, 0, rng) == HDD_LATENCY_NS
    assert s.schedule_read(1, 0, rng) == 2 * HDD_LATENCY_NS


def test_ssd_channels_serve_in_parallel_then_queue():
    s = filled(SwapStore.ssd(jitter=0, channels=4), range(5))
    rng = random.Random(0)
    done = [s.schedule_read(g, 100, rng) for g in range(5)]
    assert done[:4] == [100 + SSD_LATENCY_NS] * 4
    assert done[4] == 100 + 2 * SSD_LATENCY_NS


def test_a_read_after_the_queue_drains_does_not_wait():
    s = filled(SwapStore(latency_ns=1000, jitter=0, channels=1), [0, 1])
    rng = random.Random(0)
    assert s.schedule_read(0, 0, rng) == 1000
    assert s.schedule_read(1, 5000, rng) == 6000


def test_service_times_centre_on_the_median_and_stay_positive():
    s = SwapStore(latency_ns=10_000, jitter=0.3, channels=1)
    filled(s, range(2000))
    rng = random.Random(3)
    now, times = 0, []
    for g in range(2000):
        done = s.schedule_read(g, now, rng)
        times.append(done - now)
        now = done                    # one at a time: the service time alone
    assert min(times) >= 1
    assert 9_000 < statistics.median(times) < 11_000


def test_write_cost_and_describe():
    assert SwapStore.ssd().write_cost_ns() == 0   # Linux swap-out is asynchronous
    assert SwapStore.ssd(write_ns=2500).write_cost_ns() == 2500
    d = SwapStore.hdd().describe()
    assert d == {"kind": "swap", "name": "hdd", "latency_ns": HDD_LATENCY_NS, "jitter": 0.35,
                 "channels": 1, "write_ns": 0}
    p = PostcopySource(rtt_ns=100, bandwidth_bytes_per_s=4096 * 1000)
    assert p.describe()["page_tx_ns"] == 1_000_000 and p.write_cost_ns() == 0


# -- make_store -------------------------------------------------------------------------------

def test_make_store_kinds_and_overrides():
    assert make_store("ssd").describe()["latency_ns"] == SSD_LATENCY_NS
    assert make_store("hdd", channels=2).channels == 2
    assert isinstance(make_store("postcopy", rtt_ns=10), PostcopySource)


@pytest.mark.parametrize("kind, params, words", [
    ("nvram", {}, ["'hdd'", "'postcopy'", "'ssd'", "nvram"]),
    ("ssd", {"latency_ns": -1}, ["latency_ns", ">= 0", "-1"]),
    ("hdd", {"channels": 0}, ["channels", ">= 1"]),
    ("ssd", {"jitter": float("nan")}, ["jitter"]),
    ("postcopy", {"bandwidth_bytes_per_s": 0}, ["bandwidth_bytes_per_s", "> 0"]),
    ("postcopy", {"rtt_ns": -5}, ["rtt_ns", ">= 0"]),
    ("postcopy", {"latency_ns": 5}, ["latency_ns", "postcopy", "rtt_ns"]),
])
def test_make_store_rejects_bad_parameters_by_name(kind, params, words):
    with pytest.raises(ParameterError) as e:
        make_store(kind, **params)
    for w in words:
        assert w in str(e.value)


# -- post-copy link -------------------------------------------------------------------------

def quiet_source(n=6, rtt=1000, tx_bytes_per_s=4096 * 1_000_000):
    """A source with exact times: no jitter, one page every 1000 ns."""
    p = PostcopySource(rtt_ns=rtt, bandwidth_bytes_per_s=tx_bytes_per_s, jitter=0)
    return filled(p, range(n))


def test_stream_pushes_pages_in_order_back_to_back():
    p = quiet_source()
    assert p.background_due(10**9) == []          # nothing before the stream starts
    p.start_stream(10_000)
    assert p.next_background_ns() == 10_000 + 1000 + 500
    due = p.background_due(10**9)
    assert due == [(g, 10_000 + 1000 * (g + 1) + 500) for g in range(6)]
    assert p.next_background_ns() is None


def test_stream_follows_a_given_order():
    p = quiet_source(4)
    p.start_stream(0, order=[3, 1, 0, 2])
    assert [g for g, _ in p.background_due(10**9)] == [3, 1, 0, 2]
    with pytest.raises(ParameterError):
        quiet_source(3).start_stream(0, order=[0, 1])


def test_demand_fetch_jumps_the_stream_and_delays_it_one_page():
    p = quiet_source(n=20, rtt=1000)
    p.start_stream(0)
    # request at 10_000 reaches the source at 10_500, the send in progress ends at 11_000,
    # the demanded page goes next (11_000..12_000) and lands at 12_500
    done = p.schedule_read(15, 10_000, random.Random(0))
    assert done == 12_500
    due = dict(p.background_due(10**9))
    assert 15 not in due                          # not sent twice
    assert due[10] == 11_000 + 500                # sent 10_000..11_000, before the demand
    assert due[11] == 13_000 + 500                # pushed back by one page time


def test_demand_for_a_page_already_in_transit_waits_for_that_copy():
    p = quiet_source(n=4, rtt=10_000)
    p.start_stream(0)
    # page 0 is sent 0..1000 and lands at 6000; a demand at 100 reaches the source at 5100
    assert p.schedule_read(0, 100, random.Random(0)) == 6000
    assert [g for g, _ in p.background_due(10**9)] == [1, 2, 3]


def test_no_stream_means_demand_only():
    p = quiet_source(n=2, rtt=1000)
    assert p.schedule_read(1, 0, random.Random(0)) == 500 + 1000 + 500
    assert p.next_background_ns() is None
    with pytest.raises(InvariantError, match="demanded twice"):
        p.schedule_read(1, 0, random.Random(0))


def test_source_is_filled_only_before_switch_over():
    p = quiet_source(1)
    p.start_stream(0)
    with pytest.raises(InvariantError, match="after the stream started"):
        p.put(9, page(9))


@settings(max_examples=60, deadline=None)
@given(polls=st.lists(st.integers(0, 40_000), max_size=12),
       demands=st.lists(st.tuples(st.integers(0, 40_000), st.integers(0, 29)), max_size=6,
                        unique_by=lambda d: d[1]),
       seed=st.integers(0, 3))
def test_arrivals_do_not_depend_on_how_often_the_host_polls(polls, demands, seed):
    """Same demands at the same times give the same page times, however often the host polls.

    Like the host, each run lands what is due before handling a fault, and does not fetch a
    page that has already landed.
    """
    def run(poll_times):
        p = filled(PostcopySource(rtt_ns=2000, bandwidth_bytes_per_s=4096 * 1_000_000,
                                  jitter=0.3), range(30))
        p.start_stream(0)
        rng = random.Random(seed)
        events = sorted([(t, 0, None) for t in poll_times] + [(t, 1, g) for t, g in demands])
        arrivals, done = {}, {}
        for t, is_demand, g in events:
            arrivals.update(p.background_due(t))
            if is_demand and g not in arrivals:
                done[g] = p.schedule_read(g, t, rng)
        arrivals.update(p.background_due(10**9))
        return arrivals, done
    base = run([])
    assert run(polls) == base
    arrivals, done = base
    assert set(arrivals) | set(done) == set(range(30))
    assert not set(arrivals) & set(done)
    times = sorted(arrivals.values())
    assert all(b - a >= 1000 for a, b in zip(times, times[1:]))    # one serial link
