"""The per-async-fault cost breakdown: what Linux's guest and KVM pay, summing to the total."""

import json

import pytest

from apflab import run_scenario
from apflab.cli import main
from apflab.costs import async_fault_costs, format_costs
from apflab.host import HostCosts
from apflab.trace import Trace

SMALL = dict(npages=64, limit_pages=16)


@pytest.fixture(scope="module")
def walk():
    return run_scenario("memtouch", apf=True, seed=0, calc_thread=True, **SMALL)


def test_components_sum_exactly_to_the_measured_total(walk):
    c = async_fault_costs(walk.trace)
    assert c["faults"] == walk.apf_not_present == 128
    assert sum(c["components"].values()) == c["total_ns"]
    assert c["per_fault_ns"] == c["total_ns"] / c["faults"]
    assert c["components"]["host: other (unlabelled)"] == 0      # every host charge is named
    # the windows hold no more than the run's host + handler + kernel time
    bd = walk.breakdown
    assert c["total_ns"] <= bd["host"] + bd["handler"] + bd["el1"]


def test_each_linux_and_kvm_step_is_paid_once_per_fault(walk):
    k = HostCosts()
    per = {label: ns / 128 for label, ns in async_fault_costs(walk.trace)["components"].items()}
    # do_sdei_event reads x0-x3 back: four EVENT_CONTEXT hypercalls
    assert per["host: hypercall SDEI EVENT_CONTEXT"] == 4 * k.hvc_ns
    assert per["host: hypercall SDEI EVENT_COMPLETE_AND_RESUME"] == k.hvc_ns
    assert per["host: hypercall ASYNC_PF (IRQ_ACK)"] == k.hvc_ns
    assert per["host: ICC_SGI1R_EL1 trap (reschedule IPI)"] == k.sgi_ns
    assert per["host: stage-2 abort (exit + fault handling)"] == k.fault_ns
    assert per["host: SDEI event injection"] == k.inject_ns
    # the compute task was running whenever a page came in: the host kicked it each time
    assert per["host: kick of the running vCPU (page ready)"] == k.kick_ns
    assert per["guest: SDEI handler instructions"] > 0
    assert walk.kernel["irq_resched"] == 128                     # the IPI was taken every time


def test_costs_follow_host_costs():
    r = run_scenario("memtouch", apf=True, seed=0, calc_thread=True,
                     host_costs={"hvc_ns": 2_000, "sgi_ns": 0, "kick_ns": 0}, **SMALL)
    per = {label: ns / 128 for label, ns in async_fault_costs(r.trace)["components"].items()}
    assert per["host: hypercall SDEI EVENT_CONTEXT"] == 8_000
    assert per.get("host: ICC_SGI1R_EL1 trap (reschedule IPI)", 0) == 0


def test_table_lists_every_component_and_the_total(walk):
    c = async_fault_costs(walk.trace)
    text = format_costs(c)
    for label in c["components"]:
        assert label in text
    assert text.splitlines()[-1].split()[0] == "total"
    assert f"{c['per_fault_ns']:.1f}" in text.splitlines()[-1]


def test_breakdown_needs_the_records():
    with pytest.raises(Exception, match="keep_records"):
        async_fault_costs(Trace(keep_records=False))


def test_cli_run_breakdown_prints_the_table(capsys):
    argv = ["run", "memtouch", "--apf", "on", "--param", "npages=32", "--param", "limit_pages=8", "--breakdown"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "per async fault (64 faults)" in out and "EVENT_CONTEXT" in out   # 2 rounds x 32 pages
    assert main(argv + ["--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    row = js[0] if isinstance(js, list) else js
    parts = [v for k, v in row.items() if k.startswith("cost_per_fault.") and k != "cost_per_fault.total"]
    assert abs(sum(parts) - row["cost_per_fault.total"]) < 1e-6
