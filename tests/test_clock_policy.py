"""policy="clock" uses referenced bits collected from the engine's TLB fills.

Before, nothing set the bits: clock evicted exactly what FIFO evicted (a
byte-identical trace). The guest below touches A, B, C (the limit holds three
buffer pages), then D (both policies evict A), then B again, then E: FIFO
evicts B, the oldest; clock gives B a second chance and evicts C.
"""

import pytest

import apflab
from apflab.stage2 import PageState

GUEST = r"""
_start:
    adr x0, pages
    ldr x1, [x0]                // A
    ldr x1, [x0, #4096]         // B
    ldr x1, [x0, #8192]         // C
    ldr x1, [x0, #12288]        // D: one of A, B, C must go
    ldr x1, [x0, #4096]         // B again
    ldr x1, [x0, #16384]        // E: one more must go
    brk #0
    .balign 4096
pages:
    .space 5 * 4096
"""


def run(policy):
    m = apflab.Machine(seed=0, policy=policy)
    syms = m.load_asm(GUEST)
    m.stage2.pin(m.stage2.gpn_of(syms["_start"]))
    pages = [syms["pages"] + 4096 * i for i in range(5)]
    for a in pages:
        m.evict(a)
    m.stage2.limit_pages = 1 + 3            # the pinned code page and three buffer pages
    m.run(max_instructions=1_000)
    return m, {name: m.page_state(a) for name, a in zip("ABCDE", pages)}


@pytest.mark.parametrize("policy, evicted", [("fifo", "AB"), ("clock", "AC")])
def test_second_chance_for_a_page_used_again(policy, evicted):
    _m, states = run(policy)
    assert {k for k, v in states.items() if v == PageState.SWAPPED} == set(evicted)
    assert {k for k, v in states.items() if v == PageState.RESIDENT} == set("ABCDE") - set(evicted)


def test_clock_and_fifo_traces_differ():
    assert run("fifo")[0].trace.digest() != run("clock")[0].trace.digest()
