"""apflab.widgets, driven the way a student drives them: click buttons, read ``state()``."""

import apflab
import pytest

from apflab import Machine, scenarios
from apflab.errors import InvariantError, ParameterError
from apflab.widgets import Explorer, StallDashboard, build_guest

EXACT = ("pc", "el", "now_ns", "retired", "digest", "counts", "page_states", "recent", "actions")


def same(a: dict, b: dict) -> bool:
    return all(a[k] == b[k] for k in EXACT)


@pytest.fixture
def warm():
    """8 buffer pages under a limit they fit in: after the first round every page is
    resident, so the next stage-2 fault can only be a page the test evicted."""
    ex = Explorer(npages=8, limit_pages=32)
    for _ in range(8):
        ex.buttons["ready"].click()
    ex.buttons["step100"].click()
    assert ex.state()["pages"]["resident"] == 8
    return ex


def fallbacks_since_fault(state):
    recent = state["recent"]
    i = max(k for k, r in enumerate(recent) if r["kind"] == "stage2_fault")
    return [r for r in recent[i:] if r["kind"] in ("apf_fallback", "stall", "apf_not_present")]


# ---------------------------------------------------------------------- stepping

def test_fresh_explorer_shows_the_default_guest():
    ex = Explorer()
    s = ex.state()
    assert s["pc"] == ex.setup.symbols["_start"] and s["el"] == 1 and s["now_ns"] == 0
    assert s["pages"]["swapped"] == 32 and s["actions"] == []
    assert s["apf"]["allowed"] is True and s["sdei"]["masked"] is True
    assert "▶" in ex.disasm_view.value and "x30" in ex.regs_view.value
    assert ex.buttons["back"].disabled


def test_stepping_advances_pc_and_time():
    ex = Explorer()
    s0 = ex.state()
    ex.buttons["step1"].click()
    s1 = ex.state()
    assert s1["pc"] == s0["pc"] + 4 and s1["retired"] == 1 and s1["now_ns"] > s0["now_ns"]
    ex.buttons["step100"].click()
    s2 = ex.state()
    assert s2["retired"] == 101 and s2["now_ns"] > s1["now_ns"] and s2["pc"] != s1["pc"]
    assert s2["actions"] == [("step", 1), ("step", 100)]


@pytest.mark.parametrize("button,kind", [("fault", "stage2_fault"), ("sdei", "sdei_dispatch"),
                                         ("irq", "irq"), ("ready", "apf_page_ready")])
def test_run_to_next_event_stops_there(button, kind):
    ex = Explorer()
    before = ex.state()["counts"].get(kind, 0)
    ex.buttons[button].click()
    s = ex.state()
    assert s["stopped_at"]["kind"] == kind
    assert s["counts"][kind] == before + 1
    assert s["stopped_at"] in s["recent"]
    assert s["actions"] == [("run_until", kind)]


def test_first_fault_is_on_the_swapped_buffer_and_goes_async():
    ex = Explorer()
    ex.buttons["fault"].click()
    s = ex.state()
    rec = s["stopped_at"]
    assert rec["state"] == "swapped" and rec["el"] == 0
    assert rec["gpn"] == ex.buffer_gpns()[0]
    assert s["pages"]["inflight"] == 1 and s["apf"]["outstanding"] == 1
    assert any(r["kind"] == "apf_not_present" for r in s["recent"])


# ---------------------------------------------------------------------- step back

def test_step_back_returns_exactly_to_the_previous_state():
    ex = Explorer()
    for b in ("step100", "fault", "sdei", "step1", "ready"):
        ex.buttons[b].click()
    before = ex.state()
    ex.buttons["fault"].click()
    assert ex.state()["now_ns"] > before["now_ns"]
    ex.buttons["back"].click()
    after = ex.state()
    assert same(before, after)
    assert "stepped back" in after["status"]
    # and once more, over the "ready"
    ex.buttons["back"].click()
    assert ex.state()["actions"] == [("step", 100), ("run_until", "stage2_fault"),
                                     ("run_until", "sdei_dispatch"), ("step", 1)]


def test_step_back_to_the_fresh_machine_and_past_it():
    ex = Explorer()
    fresh = ex.state()
    ex.buttons["fault"].click()
    ex.buttons["back"].click()
    assert same(fresh, ex.state())
    ex.buttons["back"].click()                      # nothing left to undo: no change
    assert same(fresh, ex.state()) and "nothing to undo" in ex.state()["status"]


def test_step_back_replays_injections(warm):
    warm.page_input.value = "2"
    warm.buttons["evict"].click()
    warm.buttons["apf"].click()
    warm.buttons["mask"].click()
    before = warm.state()
    warm.buttons["fault"].click()
    warm.buttons["back"].click()
    after = warm.state()
    assert same(before, after)
    assert after["apf"]["allowed"] is False and after["sdei"]["masked"] is True
    assert after["page_states"][2] == "swapped"


def test_a_diverging_replay_is_an_error():
    ex = Explorer()
    ex.buttons["step100"].click()
    ex.buttons["step1"].click()
    ex._marks[-2] = dict(ex._marks[-2], digest="0" * 64)     # pretend the history differed
    with pytest.raises(InvariantError, match="replay diverged"):
        ex.step_back()


# ---------------------------------------------------------------------- fault injection

def test_evict_then_run_to_fault_faults_on_that_page(warm):
    gpn = warm.buffer_gpns()[3]
    warm.page_input.value = "3"
    warm.buttons["evict"].click()
    s = warm.state()
    assert s["page_states"][3] == "swapped" and s["actions"][-1] == ("evict", gpn)
    warm.buttons["fault"].click()
    rec = warm.state()["stopped_at"]
    assert rec["kind"] == "stage2_fault" and rec["gpn"] == gpn and rec["state"] == "swapped"
    assert [r["kind"] for r in fallbacks_since_fault(warm.state())] == ["apf_not_present"]


def test_evict_by_address_and_refusals(warm):
    addr = warm.setup.buffer[5]
    warm.page_input.value = hex(addr)
    warm.buttons["evict"].click()
    assert warm.state()["page_states"][5] == "swapped"
    n = len(warm.actions)
    warm.buttons["evict"].click()                     # already swapped: refused, not recorded
    assert "cannot evict" in warm.status and len(warm.actions) == n
    warm.page_input.value = hex(warm.setup.symbols["_start"])     # pinned kernel page
    warm.buttons["evict"].click()
    assert "pinned" in warm.status and len(warm.actions) == n
    warm.page_input.value = "banana"
    warm.buttons["evict"].click()
    assert "cannot evict" in warm.status and len(warm.actions) == n


def test_apf_off_then_the_next_fault_stalls_with_reason_apf_disabled(warm):
    warm.buttons["apf"].click()
    assert warm.state()["apf"]["allowed"] is False
    assert warm.buttons["apf"].description == "APF: off"
    warm.page_input.value = "4"
    warm.buttons["evict"].click()
    warm.buttons["fault"].click()
    s = warm.state()
    assert s["stopped_at"]["gpn"] == warm.buffer_gpns()[4]
    after = fallbacks_since_fault(s)
    assert [(r["kind"], r["reason"]) for r in after] == [("apf_fallback", "apf_disabled"),
                                                         ("stall", "apf_disabled")]
    assert after[1]["ns"] > 0


def test_masked_pe_and_full_slots_fall_back(warm):
    warm.buttons["mask"].click()
    assert warm.state()["sdei"]["masked"] is True
    warm.page_input.value = "1"
    warm.buttons["evict"].click()
    warm.buttons["fault"].click()
    assert [r.get("reason") for r in fallbacks_since_fault(warm.state())] == ["pe_masked", "pe_masked"]
    warm.buttons["mask"].click()
    warm.buttons["fill"].click()
    assert warm.state()["apf"]["held"] == 64
    warm.page_input.value = "6"
    warm.buttons["evict"].click()
    warm.buttons["fault"].click()
    assert [r.get("reason") for r in fallbacks_since_fault(warm.state())] == ["queue_full", "queue_full"]
    warm.buttons["release"].click()
    assert warm.state()["apf"]["held"] == 0
    warm.page_input.value = "7"
    warm.buttons["evict"].click()
    warm.buttons["fault"].click()
    assert [r["kind"] for r in fallbacks_since_fault(warm.state())] == ["apf_not_present"]


def test_store_latency_applies_to_future_page_ins(warm):
    warm.store_input.value = "hdd"
    warm.latency_input.value = 0
    warm.buttons["store_apply"].click()
    assert warm.actions[-1] == ("store", "hdd", None) and "13,000,000" in warm.status
    warm.page_input.value = "0"
    warm.buttons["evict"].click()
    warm.buttons["fault"].click()
    rec = [r for r in warm.state()["recent"] if r["kind"] == "apf_not_present"][-1]
    assert rec["done_ns"] - rec["t_ns"] > 1_000_000          # an hdd read, not a 50 µs ssd one
    warm.buttons["store_rebuild"].click()                    # a fresh machine with hdd swap
    assert warm.actions == [] and warm.params["store"] == "hdd"


def test_explorer_with_a_factory():
    src = "_start:\n mov x0, #0\nloop:\n add x0, x0, #1\n cmp x0, #50\n b.ne loop\n brk #0\n"

    def factory(seed):
        m = Machine(seed=seed, apf=False)
        m.load_asm(src)
        return m

    ex = Explorer(factory)
    ex.buttons["step100"].click()
    s = ex.state()
    assert ex.machine.reg("x0") > 0 and s["apf"]["allowed"] is None
    ex.buttons["step100"].click()
    assert ex.state()["guest_stopped"] and "brk #0" in ex.status
    ex.buttons["back"].click()
    assert ex.state()["retired"] == 100 and not ex.state()["guest_stopped"]


# ---------------------------------------------------------------------- dashboard

def test_dashboard_runs_apf_off_and_on():
    d = StallDashboard()
    d.npages.value = 32
    d.limit.value = 16
    assert d.params() == {"npages": 32, "limit_pages": 16, "calc_thread": True, "store": "ssd",
                          "latency_ns": None}
    d.run_button.click()
    off, on = d.last
    assert (off.apf, on.apf) == (False, True) and off.params["npages"] == 32
    assert on.stall_ns < off.stall_ns and on.elapsed_ns < off.elapsed_ns
    assert "time to finish" in d.headline.value
    out = d.chart.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    stalled = [tr for tr in out["data"] if tr["name"] == "stalled"][0]
    assert stalled["customdata"] == [off.breakdown["stalled"], on.breakdown["stalled"]]


def test_dashboard_controls_follow_the_scenario_and_report_errors(monkeypatch):
    d = StallDashboard()
    d.scenario.value = "postcopy"
    assert d.limit.disabled and d.store.disabled and d.latency.description == "network RTT"
    d.latency.value = 1_000_000
    assert d.params() == {"npages": 128, "calc_thread": True, "rtt_ns": 1_000_000}
    d.scenario.value = "gleb2010"
    d.mix.value = "1 faulting + 1 compute"
    p = d.params()
    assert (p["fault_tasks"], p["compute_tasks"], p["latency_ns"]) == (1, 1, 1_000_000)

    def refuse(name, **params):
        raise ParameterError(f"{name}: refused for the test")
    monkeypatch.setattr(scenarios, "compare", refuse)
    d.run_button.click()
    assert d.last is None and d.status == "error: gleb2010: refused for the test"
    assert "refused" in d.status_view.value and not d.run_button.disabled


def test_dashboard_runs_the_chosen_design_on_every_scenario_it_lists():
    d = StallDashboard()
    assert set(d.scenario.options) == set(apflab.SCENARIOS)
    d.scenario.value = "syscall_read"
    d.npages.value = 32
    d.limit.value = 16
    d.design.value = "irq"
    d.mix.value = "reader + compute, SEND_ALWAYS"
    d.run_button.click()
    off, on = d.last
    assert on.delivery == "irq" and off.delivery == "sync"
    assert on.fallbacks == {"irq_masked": 16}          # the kernel's reads, IRQs masked
    assert "design irq" in d.status


@pytest.mark.parametrize("delivery", ["irq", "abort", "halt"])
def test_explorer_steps_through_any_design(delivery):
    ex = Explorer(npages=8, limit_pages=8, delivery=delivery)
    ex.buttons["fault"].click()
    ex.buttons["step1"].click()
    kinds = [r["kind"] for r in ex.state()["recent"]]
    assert "stage2_fault" in kinds and "apf_not_present" in kinds
    assert ex.machine.apf.snapshot()["delivery"] == delivery


# ---------------------------------------------------------------------- several vCPUs

def smp_factory(seed):
    """vCPU 0 starts vCPU 1 (CPU_ON); vCPU 1 faults on a swapped page (tests/test_smp.py)."""
    from test_smp import HALTED_FAULT
    m = Machine(seed=seed, vcpus=2)
    syms = m.load_asm(HALTED_FAULT)
    m.write_u64(syms["page"], 77)
    m.evict(syms["page"])
    return m


def test_one_vcpu_explorer_has_no_vcpu_selector():
    ex = Explorer(npages=8, limit_pages=32)
    assert ex.vcpu_box.layout.display == "none"
    assert ex.state()["vcpu"] == 0 and len(ex.state()["vcpus"]) == 1
    with pytest.raises(ParameterError, match="vcpu"):
        ex.select_vcpu(1)


def test_the_vcpu_selector_shows_the_chosen_vcpus_registers_and_pc():
    ex = Explorer(smp_factory)
    assert ex.vcpu_box.layout.display != "none"
    assert [v for _, v in ex.vcpu_picker.options] == [0, 1]
    for _ in range(3):
        ex.buttons["step100"].click()
    m = ex.machine
    pc0, pc1 = m.reg("pc"), m.reg("pc", vcpu=1)
    assert pc0 != pc1 and ex.state()["pc"] == pc0
    ex.vcpu_picker.value = 1                   # what clicking "vCPU 1" does
    s = ex.state()
    assert s["vcpu"] == 1 and s["pc"] == pc1 and s["vcpus"][1]["power"] == "on"
    assert f"▶ {pc1:#010x}" in ex.disasm_view.value and f"▶ {pc0:#010x}" not in ex.disasm_view.value
    assert f"{m.reg('x5', vcpu=1):016x}" in ex.regs_view.value
    assert "showing vCPU 1" in ex.header.value
    # Stepping still steps the machine (both vCPUs); the selection stays.
    before = [v["retired"] for v in s["vcpus"]]
    ex.buttons["step100"].click()
    after = [v["retired"] for v in ex.state()["vcpus"]]
    assert sum(after) - sum(before) == 100 and ex.state()["vcpu"] == 1
    assert ex.state()["pc"] == m.reg("pc", vcpu=1)
    ex.vcpu_picker.value = 0
    assert ex.state()["pc"] == m.reg("pc") and f"▶ {m.reg('pc'):#010x}" in ex.disasm_view.value


def test_the_trace_view_filters_by_vcpu_and_injections_act_on_the_shown_vcpu():
    ex = Explorer(smp_factory)
    ex.buttons["fault"].click()
    assert ex.state()["stopped_at"]["vcpu"] == 1          # vCPU 1 touched the swapped page
    ex.vcpu_picker.value = 0
    ex.own_filter.value = True
    recent = ex.state()["recent"]
    assert recent and {r["vcpu"] for r in recent} == {0}
    ex.vcpu_picker.value = 1
    recent = ex.state()["recent"]
    assert recent and {r["vcpu"] for r in recent} == {1}
    assert "stage2_fault" in ex.log_view.value
    ex.own_filter.value = False
    assert {r["vcpu"] for r in ex.state()["recent"]} == {0, 1}
    # The PE mask button acts on the shown vCPU's PE only, and is undone by step back.
    # (This guest never calls SDEI_PE_UNMASK: both PEs are masked, as after reset.)
    m = ex.machine
    assert m.sdei_of(0).pe.masked and m.sdei_of(1).pe.masked
    ex.buttons["mask"].click()
    assert ex.actions[-1] == ("mask", False, 1)
    assert not m.sdei_of(1).pe.masked and m.sdei_of(0).pe.masked
    assert not ex.state()["sdei"]["masked"] and ex.buttons["mask"].description == "PE: unmasked"
    ex.vcpu_picker.value = 0
    assert ex.state()["sdei"]["masked"] and ex.buttons["mask"].description == "PE: masked"
    ex.buttons["back"].click()
    assert ex.machine.sdei_of(1).pe.masked and ex.state()["vcpu"] == 0
