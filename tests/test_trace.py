"""The trace: records, tiled time spans, breakdown, digest, JSON/CSV and corrupt files."""

import csv
import enum
import io
import json

import pytest
from hypothesis import given, settings, strategies as st

from apflab.errors import InvariantError, TraceFormatError
from apflab.trace import MODES, Record, Trace


class Kind(enum.IntEnum):
    SWAPPED = 2


def sample() -> Trace:
    t = Trace()
    t.emit(0, "wake", intid=None)
    t.emit(100, "hvc", fid=0xC4000020, result=None)
    t.emit(250, "page_in_start", gpn=7, src='ssd, "fast"\nbye', done_ns=900)
    t.emit(900, "page_in_done", gpn=7, src="ssd")
    t.account(0, 100, "el1")
    t.account(100, 130, "host")
    t.account(130, 600, "el0", task=1)
    t.account(600, 900, "stalled", task=1)
    t.account(900, 1000, "el0", task=1)
    return t


# -- records ----------------------------------------------------------------------------------

def test_records_keep_fields_in_order_and_count_kinds():
    t = sample()
    rec = t.records[1]
    assert rec == Record(100, "hvc", (("fid", 0xC4000020), ("result", None)))
    assert rec.get("fid") == 0xC4000020 and rec.get("nope", -1) == -1
    assert rec.as_dict() == {"t_ns": 100, "kind": "hvc", "fid": 0xC4000020, "result": None}
    assert t.counts == {"wake": 1, "hvc": 1, "page_in_start": 1, "page_in_done": 1}
    with pytest.raises(AttributeError):
        rec.t_ns = 5                                    # frozen


def test_select_by_kind_and_fields():
    t = sample()
    assert [r.t_ns for r in t.select("page_in_done")] == [900]
    assert [r.kind for r in t.select(gpn=7)] == ["page_in_start", "page_in_done"]
    assert t.select("hvc", fid=1) == []
    assert len(t.select()) == 4


@pytest.mark.parametrize("keep", [True, False])
def test_floats_and_objects_are_rejected_in_every_mode(keep):
    t = Trace(keep_records=keep)
    with pytest.raises(InvariantError, match="float"):
        t.emit(1, "stall", ns=1.5)
    with pytest.raises(InvariantError, match="list"):
        t.emit(1, "first_touch", gpn=[1, 2])
    with pytest.raises(InvariantError):
        t.emit(1.0, "halt")
    assert t.counts == {}


def test_int_and_str_enums_become_plain_values():
    t = Trace()
    t.emit(5, "stage2_fault", state=Kind.SWAPPED)
    value = t.records[0].get("state")
    assert value == 2 and type(value) is int


def test_max_records_caps_storage_but_not_counts():
    t = Trace(max_records=2)
    for i in range(5):
        t.emit(i, "halt")
    assert len(t.records) == 2 and t.counts == {"halt": 5} and t.dropped == 3
    off = Trace(keep_records=False)
    off.emit(1, "halt")
    assert off.records == [] and off.counts == {"halt": 1} and off.dropped == 1


# -- spans ------------------------------------------------------------------------------------

def test_adjacent_spans_with_the_same_mode_and_task_merge():
    t = Trace()
    t.account(10, 20, "el0", task=1)
    t.account(20, 30, "el0", task=1)
    t.account(30, 30, "el1")              # empty: ignored
    t.account(30, 35, "el0", task=2)
    t.account(35, 40, "el0", task=2)
    assert t.spans == [(10, 30, "el0", 1), (30, 40, "el0", 2)]
    assert t.elapsed_ns == 30


@pytest.mark.parametrize("start, end, mode, words", [
    (25, 30, "el0", "gap"), (15, 30, "el0", "overlap"), (20, 10, "el0", "order"),
    (20, 30, "idle", "mode"),
])
def test_spans_must_tile_time(start, end, mode, words):
    t = Trace()
    t.account(0, 20, "el1")
    with pytest.raises(InvariantError, match=words):
        t.account(start, end, mode)
    assert t.spans == [(0, 20, "el1", None)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(MODES),
                          st.sampled_from([None, 1, 2])), max_size=40),
       st.integers(0, 10**9))
def test_breakdown_has_every_mode_and_sums_to_elapsed(steps, start):
    t = Trace()
    now = start
    for dur, mode, task in steps:
        t.account(now, now + dur, mode, task)
        now += dur
    b = t.breakdown()
    assert set(b) == set(MODES)
    assert sum(b.values()) == t.elapsed_ns == sum(d for d, _, _ in steps)
    assert all(a[1] == b_[0] for a, b_ in zip(t.spans, t.spans[1:]))
    assert all((a[2], a[3]) != (b_[2], b_[3]) for a, b_ in zip(t.spans, t.spans[1:]))


def test_breakdown_of_sample():
    b = sample().breakdown()
    assert b == {"el0": 570, "el1": 100, "handler": 0, "halted": 0, "stalled": 300, "host": 30}


# -- digest and JSON --------------------------------------------------------------------------

def test_same_run_same_digest_different_run_different_digest():
    assert sample().digest() == sample().digest()
    other = sample()
    other.emit(1000, "halt")
    assert other.digest() != sample().digest()
    shifted = sample()
    shifted.account(1000, 1001, "host")
    assert shifted.digest() != sample().digest()


@pytest.mark.parametrize("trace", [sample(), Trace(), Trace(max_records=1)])
def test_json_round_trip_keeps_everything(trace, tmp_path):
    if not trace.records and trace.max_records == 1:
        trace.emit(1, "halt", pc=1)
        trace.emit(2, "halt", pc=2)
    back = Trace.from_json(trace.to_json())
    assert back.digest() == trace.digest()
    assert back.records == trace.records and back.spans == trace.spans
    assert back.counts == trace.counts and back.dropped == trace.dropped
    assert back.breakdown() == trace.breakdown()
    path = tmp_path / "t.json"
    trace.save_json(path)
    assert Trace.load_json(path).digest() == trace.digest()


def mutate(edit):
    obj = json.loads(sample().to_json())
    edit(obj)
    return json.dumps(obj)


CORRUPT = [
    ("", "empty"),
    ('{"format": "apflab-trace", "vers', "truncated JSON at char"),
    ("not json at all", "invalid JSON"),
    ("[1, 2]", "not an apflab trace (top level is a list"),
    (json.dumps({"records": []}), "not an apflab trace (format tag missing)"),
    (json.dumps({"format": "apflab-result"}), "format tag is 'apflab-result'"),
    (mutate(lambda o: o.update(version=1)), "unsupported trace version 1"),
    (mutate(lambda o: o.pop("spans")), "key 'spans' missing"),
    (mutate(lambda o: o.update(extra=1)), "unexpected key 'extra'"),
    (mutate(lambda o: o["records"][2].__setitem__(0, "250")), "record 2: t_ns is not an int"),
    (mutate(lambda o: o["records"][1].__setitem__(0, True)), "record 1: t_ns is not an int"),
    (mutate(lambda o: o["records"][3][2].update(gpn=7.0)), "record 3: field 'gpn' is a float"),
    (mutate(lambda o: o["records"][0].__setitem__(1, "")), "record 0: kind"),
    (mutate(lambda o: o["records"][0].pop()), "record 0: not a [t_ns, kind, fields] list"),
    (mutate(lambda o: o["records"][0].__setitem__(2, [])), "record 0: fields is not an object"),
    (mutate(lambda o: o["records"][0][2].update(t_ns=1)), "record 0: field name 't_ns'"),
    (mutate(lambda o: o.update(records={})), "records is not a list"),
    (mutate(lambda o: o["counts"].update(hvc=5)), "counts total"),
    (mutate(lambda o: o["counts"].update(hvc=0)), "counts['hvc'] is 0"),
    (mutate(lambda o: o["counts"].update(hvc=-1)), "counts is not an object of ints"),
    (mutate(lambda o: o.update(dropped="0")), "dropped"),
    (mutate(lambda o: o["spans"][2].__setitem__(0, 131)), "span 2: starts at 131"),
    (mutate(lambda o: o["spans"][1].__setitem__(2, "idle")), "span 1: mode 'idle'"),
    (mutate(lambda o: o["spans"][1].__setitem__(3, "1")), "span 1: task"),
    (mutate(lambda o: o["spans"][1].__setitem__(1, 100)), "span 1: empty or reversed"),
    (mutate(lambda o: o["spans"].insert(1, [100, 100, "el1", None])), "span 1: empty"),
    (mutate(lambda o: o["spans"][1].__setitem__(2, "el1")), "span 1: same mode and task"),
    (mutate(lambda o: o["spans"].__setitem__(0, [0, 100])), "span 0: not a"),
]


@pytest.mark.parametrize("text, reason", CORRUPT, ids=[r for _, r in CORRUPT])
def test_every_kind_of_corrupt_file_is_rejected_with_a_reason(text, reason):
    with pytest.raises(TraceFormatError) as e:
        Trace.from_json(text)
    assert reason in str(e.value)


def test_bytes_that_are_not_utf8_are_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(TraceFormatError, match="not UTF-8"):
        Trace.load_json(path)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_any_truncation_is_reported_as_a_format_error(data):
    text = sample().to_json()
    cut = data.draw(st.integers(0, len(text.rstrip()) - 1))
    with pytest.raises(TraceFormatError, match="truncated JSON at char|empty file"):
        Trace.from_json(text[:cut])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_one_character_edit_loads_or_is_a_format_error(data):
    text = sample().to_json()
    pos = data.draw(st.integers(0, len(text) - 1))
    char = data.draw(st.sampled_from(list('0123456789{}[]",:ntfe. x-')))
    edited = text[:pos] + char + text[pos + 1:]
    try:
        Trace.from_json(edited)
    except TraceFormatError:
        pass


# -- CSV --------------------------------------------------------------------------------------

def test_csv_reads_back_with_the_csv_module():
    t = sample()
    rows = list(csv.DictReader(io.StringIO(t.to_csv())))
    assert [r["kind"] for r in rows] == ["wake", "hvc", "page_in_start", "page_in_done"]
    assert [int(r["t_ns"]) for r in rows] == [0, 100, 250, 900]
    assert [json.loads(r["fields"]) for r in rows] == [dict(r.fields) for r in t.records]
    spans = list(csv.DictReader(io.StringIO(t.spans_csv())))
    assert spans[0] == {"t_start": "0", "t_end": "100", "mode": "el1", "task": ""}
    assert [int(s["t_end"]) - int(s["t_start"]) for s in spans] == [100, 30, 470, 300, 100]


def test_save_csv(tmp_path):
    path = tmp_path / "t.csv"
    sample().save_csv(path)
    with open(path, newline="") as f:
        assert len(list(csv.reader(f))) == 5


# -- the registry of kinds ----------------------------------------------------------------------

def test_unknown_kinds_and_fields_are_refused():
    t = Trace()
    with pytest.raises(InvariantError, match="registry"):
        t.emit(1, "boot")
    with pytest.raises(InvariantError, match="registered fields"):
        t.emit(1, "halt", pc=1, colour="red")
    assert t.counts == {}


def test_tallies_count_by_field_in_every_mode_and_survive_json():
    for keep in (True, False):
        t = Trace(keep_records=keep)
        for state in ("swapped", "swapped", "absent"):
            t.emit(1, "stage2_fault", state=state)
        t.emit(2, "apf_fallback", reason="queue_full")
        assert t.tally("stage2_fault") == {"absent": 1, "swapped": 2}
        assert t.tally("apf_fallback") == {"queue_full": 1}
        assert Trace.from_json(t.to_json()).tally("stage2_fault") == {"absent": 1, "swapped": 2}


def test_every_kind_the_machine_emits_is_registered():
    import apflab
    from apflab.trace import KINDS
    r = apflab.run_scenario("memtouch", apf=True, seed=0, npages=16, limit_pages=8, calc_thread=True)
    seen = {rec.kind for rec in r.trace.records}
    assert seen <= set(KINDS)
    for rec in r.trace.records:
        assert {k for k, _ in rec.fields} <= set(KINDS[rec.kind])
