"""A task woken by "page ready" runs next (wake-up preemption), as on Linux.

Before, the woken walker waited for the compute task's whole tick: with a
fast device (1 µs) APF made the walk an order of magnitude slower than
stalling. Now the walk costs at most the notification overhead.
"""

from apflab import compare


def test_fast_device_apf_walk_is_not_held_back_by_the_compute_tick():
    off, on = compare("memtouch", seed=0, calc_thread=True, latency_ns=1_000, npages=128, limit_pages=32)
    assert on.fallbacks == {} and on.apf_not_present == off.fallbacks["apf_disabled"]
    # Each async fault costs ~15 µs of host and guest work (apflab.costs) on top of the
    # 1 µs device: the walk is slower than stalling, but not by a 100 µs compute tick per
    # fault (before: ~186 µs more per fault).
    extra_per_fault = (on.elapsed_ns - off.elapsed_ns) / on.apf_not_present
    assert extra_per_fault < 50_000, extra_per_fault
    woken = on.kernel["tasks"][0]["wakeups"]
    assert woken > 0

