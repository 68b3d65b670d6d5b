"""The trace: typed, timestamped records of everything the host does, and where vCPU time went.

It is the single source for metrics, plots and widgets, so it has to be exact and cheap:
- `emit` appends a `Record` (virtual time, kind, fields).  Field values are ints, strings,
  booleans or None only, so a run serialises and hashes byte for byte the same every time
  (a float would make the digest depend on formatting).
- `account` adds a span of vCPU time in one of `MODES`.  Spans tile the run: each starts where
  the previous ended, so the per-mode breakdown always sums to the elapsed time.
- `digest` hashes a canonical serialisation: same seed, same run, same digest.
- JSON for saving and reloading (validated on load), CSV for spreadsheets and pandas.

`emit` and `account` run about a million times in a big run: they validate only what is cheap
(exact types of the values), and do it in every mode (records kept or not).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from typing import Iterator

from apflab.errors import InvariantError, ParameterError, TraceFormatError

MODES = ("el0", "el1", "handler", "halted", "stalled", "host")
"""Where vCPU time goes: guest user, guest kernel, guest SDEI handler, WFI, waiting for a page
(synchronous fault), and host work charged to the vCPU (exits, hypercalls, page-outs)."""

# Every record kind, with the fields it may carry: the one registry of what the trace says.
# ``emit`` refuses a kind that is not here, and a field a kind does not list.
KINDS: dict[str, tuple[str, ...]] = {
    # host run loop
    "hvc": ("fid", "result"),
    "exception": ("what", "esr", "from_el", "vector"),
    "irq": ("intid", "pc", "vector"),
    "halt": ("pc",),
    "wake": ("intid",),
    "stop": ("pc",),
    "stall": ("reason", "ns"),
    "stage2_fault": ("gpn", "ipa", "access", "state", "pc", "el"),
    "cost": ("what", "ns", "fid", "intid"),       # a host charge, labelled (apflab.costs)
    # stage-2 page moves
    "first_touch": ("gpn",),
    "page_out": ("gpn", "to", "cost_ns"),
    "page_in_start": ("gpn", "src", "done_ns"),
    "page_in_done": ("gpn", "src"),
    # GIC CPU interface
    "irq_line": ("intid", "level"),
    "irq_ack": ("intid",),
    "irq_eoi": ("intid",),
    "irq_bad_eoi": ("intid",),
    # SDEI dispatcher
    "sdei_call": ("call", "x1", "result"),
    "sdei_state": ("event", "action", "old", "new"),
    "sdei_raise": ("event", "intid"),
    "sdei_dispatch": ("event", "pc", "pstate", "entry"),
    "sdei_complete": ("event", "status", "resume", "pc"),
    "sdei_mask": ("masked",),
    "sdei_reset": ("shared",),
    # APF protocol core and its delivery designs
    "apf_enable": ("gpa", "send_always", "delivery"),
    "apf_disable": ("outstanding",),
    "apf_fallback": ("gpn", "reason", "design"),
    "apf_not_present": ("token", "gpn", "done_ns", "task", "design"),
    "apf_refault": ("token", "gpn", "design"),
    "apf_page_in_done": ("token", "gpn"),
    "apf_page_ready": ("token", "gpn", "waited_ns"),
    "apf_ack": ("token",),
    "apf_wake_all": (),
    "apf_halt": ("token", "gpn"),
    "apf_release": ("token", "gpn"),
    # paravirtual "vCPU preempted" flag (pvlock.py): the host wrote ``value`` to the vCPU's
    # pvlock_vcpu_state.preempted because it is "running", "preempted" or "stalled"
    "pv_preempted": ("value", "why"),
}
# With several vCPUs every record also carries ``vcpu`` (the index of the vCPU the host was
# serving when it was made); a one-vCPU machine's records never do, so their digests stay.
_KIND_FIELDS = {k: frozenset(v) | {"vcpu"} for k, v in KINDS.items()}

# Counts by one field's value, kept for these kinds in every mode (records kept or not):
# faults by the page's state, fallbacks by reason, stalls by reason.  Metrics read these.
TALLIED = {"stage2_fault": "state", "apf_fallback": "reason", "stall": "reason"}

FORMAT_TAG = "apflab-trace"
FORMAT_VERSION = 2     # 2: "tallies" (counts by a field) in the header

STEAL = "steal"    # several vCPUs on fewer physical CPUs (pcpu.py): runnable, waiting for a CPU.
                   # Only such machines have it, so one-vCPU breakdowns keep their keys.
_MODE_SET = frozenset(MODES) | {STEAL}
_FIELD_TYPES = frozenset({int, str, bool, type(None)})
_MISSING = object()
_COMPACT = (",", ":")


@dataclass(frozen=True, slots=True)
class Record:
    """One event: virtual time in ns, a kind such as "exit" or "page_in_done", its fields."""
    t_ns: int
    kind: str
    fields: tuple[tuple[str, object], ...] = ()

    def get(self, name: str, default=None):
        for key, value in self.fields:
            if key == name:
                return value
        return default

    def as_dict(self) -> dict:
        return {"t_ns": self.t_ns, "kind": self.kind, **dict(self.fields)}


# emit builds Records through the slot descriptors: the frozen dataclass __init__ costs twice
# as much (three object.__setattr__ calls) and emit is the hottest path in a run.
_new_object = object.__new__
_set_t = Record.__dict__["t_ns"].__set__
_set_kind = Record.__dict__["kind"].__set__
_set_fields = Record.__dict__["fields"].__set__


def _coerce_fields(kind: str, fields: dict) -> dict:
    """Turn int/str subclasses (IntEnum, StrEnum) into plain values; reject anything else."""
    out = {}
    for name, value in fields.items():
        if type(value) in _FIELD_TYPES:
            out[name] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, str):
            out[name] = str(value)
        else:
            raise InvariantError(f"trace {kind!r} field {name}={value!r} is a "
                                 f"{type(value).__name__}; fields are ints, strs, bools or None")
    return out


class Trace:
    """Records, vCPU time spans and per-kind counts of one run.

    `keep_records=False` or `max_records` stop storing records (to save memory in long runs)
    but `counts`, `spans` and the breakdown stay complete; `dropped` says how many were not
    stored.
    """

    def __init__(self, *, keep_records: bool = True, max_records: int | None = None):
        if max_records is not None and (not isinstance(max_records, int) or max_records < 0):
            raise ParameterError(f"max_records must be None or an int >= 0 (got {max_records!r})")
        self.keep_records = keep_records
        self.max_records = max_records
        self._cap = 0 if not keep_records else sys.maxsize if max_records is None else max_records
        self.records: list[Record] = []
        self.spans: list[tuple[int, int, str, int | None]] = []
        self.counts: dict[str, int] = {}
        self._tallies: dict[str, dict] = {}
        self.dropped = 0
        self._time = dict.fromkeys(MODES, 0)
        self._t0: int | None = None     # start of the first span (kept even when spans are not)
        # Several vCPUs: each has its own tiling of time (its lane); ``select_lane`` swaps the
        # lane's spans in, so ``account`` stays one code path. ``vcpu_tag`` marks records.
        self.vcpu_tag: int | None = None
        self._lanes: dict[int, tuple] = {}
        self._lane = 0
        self._steal = False

    # -- the hot paths ---------------------------------------------------------------------

    def emit(self, t_ns: int, kind: str, **fields) -> None:
        """Record event `kind` at virtual time `t_ns` with int/str/bool/None fields."""
        if type(t_ns) is not int or type(kind) is not str:
            raise InvariantError(f"trace record needs an int t_ns and a str kind "
                                 f"(got {t_ns!r}, {kind!r})")
        allowed = _KIND_FIELDS.get(kind)
        if allowed is None or not allowed.issuperset(fields):
            raise InvariantError(f"trace kind {kind!r} with fields {sorted(fields)} is not in the "
                                 f"registry (trace.KINDS)" if allowed is None else
                                 f"trace kind {kind!r}: fields {sorted(set(fields) - allowed)} are not "
                                 f"among its registered fields {KINDS[kind]}")
        for value in fields.values():
            if type(value) not in _FIELD_TYPES:
                fields = _coerce_fields(kind, fields)
                break
        counts = self.counts
        counts[kind] = counts.get(kind, 0) + 1
        key = TALLIED.get(kind)
        if key is not None:
            tally = self._tallies.setdefault(kind, {})
            value = fields.get(key)
            tally[value] = tally.get(value, 0) + 1
        if self.vcpu_tag is not None:
            fields["vcpu"] = self.vcpu_tag
        records = self.records
        if len(records) < self._cap:
            rec = _new_object(Record)
            _set_t(rec, t_ns)
            _set_kind(rec, kind)
            _set_fields(rec, tuple(fields.items()))
            records.append(rec)
        else:
            self.dropped += 1

    def account(self, t_start: int, t_end: int, mode: str, task: int | None = None) -> None:
        """Charge vCPU time [t_start, t_end) to `mode` (and guest task `task`).

        Spans must tile time: t_start equals the previous span's t_end.  A span with the same
        (mode, task) as the previous one extends it; an empty span is ignored.
        """
        if type(t_start) is not int or type(t_end) is not int or t_end < t_start:
            raise InvariantError(f"span [{t_start!r}, {t_end!r}) is not a pair of ints in order")
        if mode not in _MODE_SET:
            raise InvariantError(f"span mode {mode!r} is not one of {MODES}")
        spans = self.spans
        if self._t0 is None:
            self._t0 = t_start
        if spans:
            last = spans[-1]
            if t_start != last[1]:
                gap = "gap" if t_start > last[1] else "overlap"
                raise InvariantError(f"span [{t_start}, {t_end}) {mode}: {gap} after the "
                                     f"previous span ending at {last[1]}")
            if t_end == t_start:
                return
            if last[2] == mode and last[3] == task:
                spans[-1] = (last[0], t_end, mode, task)
                self._time[mode] += t_end - t_start
                return
        elif t_end == t_start:
            return
        if task is not None and type(task) is not int:
            raise InvariantError(f"span task must be an int or None (got {task!r})")
        if not self.keep_records and spans:
            spans[-1] = (t_start, t_end, mode, task)   # counting only: keep the last span
        else:
            spans.append((t_start, t_end, mode, task))
        self._time[mode] += t_end - t_start

    def select_lane(self, vcpu: int, *, tag: bool) -> None:
        """Make vCPU ``vcpu``'s spans the ones ``account`` extends (several vCPUs only)."""
        if vcpu == self._lane and (self.vcpu_tag is not None) == tag:
            return
        self._lanes[self._lane] = (self.spans, self._time, self._t0)
        spans, time, t0 = self._lanes.get(vcpu) or ([], self._new_time(), None)
        self.spans, self._time, self._t0 = spans, time, t0
        self._lane = vcpu
        self.vcpu_tag = vcpu if tag else None

    def enable_steal(self) -> None:
        """Physical CPUs are modelled: every lane gets a "steal" mode."""
        self._steal = True
        self._time.setdefault(STEAL, 0)
        for spans, time, t0 in self._lanes.values():
            time.setdefault(STEAL, 0)

    def _new_time(self) -> dict:
        time = dict.fromkeys(MODES, 0)
        if self._steal:
            time[STEAL] = 0
        return time

    def lane(self, vcpu: int) -> tuple[list, dict]:
        """(spans, ns per mode) of vCPU ``vcpu``."""
        if vcpu == self._lane:
            return self.spans, dict(self._time)
        spans, time, _ = self._lanes.get(vcpu) or ([], self._new_time(), None)
        return spans, dict(time)

    # -- reading ---------------------------------------------------------------------------

    @property
    def elapsed_ns(self) -> int:
        """From the start of the first span to the end of the last."""
        if not self.spans:
            return 0
        return self.spans[-1][1] - (self.spans[0][0] if self._t0 is None else self._t0)

    def tally(self, kind: str) -> dict:
        """Counts of ``kind`` by its tallied field (``TALLIED``): e.g. faults by page state."""
        if kind not in TALLIED:
            raise ParameterError(f"{kind!r} is not tallied; tallied kinds: {', '.join(TALLIED)}")
        return dict(sorted(self._tallies.get(kind, {}).items(), key=lambda kv: str(kv[0])))

    def breakdown(self, vcpu: int | None = None) -> dict[str, int]:
        """ns of vCPU time per mode; every mode present; the values sum to elapsed_ns.

        With several vCPUs: of vCPU ``vcpu`` (default: the lane selected, vCPU 0 after a run)."""
        if vcpu is not None:
            return self.lane(vcpu)[1]
        return dict(self._time)

    def select(self, kind: str | None = None, **match) -> list[Record]:
        """Kept records of `kind` (any if None) whose fields equal every `name=value` given."""
        out = []
        for rec in self.records:
            if kind is not None and rec.kind != kind:
                continue
            if all(rec.get(name, _MISSING) == value for name, value in match.items()):
                out.append(rec)
        return out

    # -- canonical serialisation -----------------------------------------------------------

    def _header(self) -> dict:
        return {"format": FORMAT_TAG, "version": FORMAT_VERSION,
                "keep_records": self.keep_records, "max_records": self.max_records,
                "dropped": self.dropped, "counts": dict(sorted(self.counts.items())),
                "tallies": {k: self.tally(k) for k in sorted(self._tallies)}}

    def _chunks(self) -> Iterator[str]:
        """The JSON text in pieces: a header, then one line per record and per span."""
        head = json.dumps(self._header(), separators=_COMPACT)
        yield head[:-1] + ',"records":['
        dumps = json.dumps
        for i, rec in enumerate(self.records):
            sep = "\n" if i == 0 else ",\n"
            yield sep + dumps([rec.t_ns, rec.kind, dict(rec.fields)], separators=_COMPACT)
        yield '],"spans":['
        multi = self.vcpu_tag is not None or bool(self._lanes)
        for i, span in enumerate(self.lane(0)[0] if multi else self.spans):
            yield ("\n" if i == 0 else ",\n") + dumps(list(span), separators=_COMPACT)
        if not multi:
            yield "]}\n"
            return
        # Several vCPUs: every lane's spans, by vCPU (the selected one included).
        yield '],"lanes":['
        lanes = sorted(set(self._lanes) | {self._lane})
        for i, v in enumerate(lanes):
            spans = self.lane(v)[0]
            yield ("\n" if i == 0 else ",\n") + dumps([v, [list(sp) for sp in spans]], separators=_COMPACT)
        yield "]}\n"

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON: header, counts, records and spans."""
        h = hashlib.sha256()
        for chunk in self._chunks():
            h.update(chunk.encode())
        return h.hexdigest()

    def to_json(self) -> str:
        return "".join(self._chunks())

    def save_json(self, path) -> None:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for chunk in self._chunks():
                f.write(chunk)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Trace":
        """Rebuild a trace from `to_json` output; anything else -> TraceFormatError(reason)."""
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise TraceFormatError(f"not UTF-8 text (byte {e.start})") from None
        if not text.strip():
            raise TraceFormatError("empty file")
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            if _truncated(text, e):
                raise TraceFormatError(f"truncated JSON at char {len(text)} ({e.msg})") from None
            raise TraceFormatError(f"invalid JSON at line {e.lineno} column {e.colno} "
                                   f"(char {e.pos}): {e.msg}") from None
        except RecursionError:
            raise TraceFormatError("JSON nested too deeply") from None
        return _load(obj)

    @classmethod
    def load_json(cls, path) -> "Trace":
        with open(path, "rb") as f:
            return cls.from_json(f.read())

    # -- CSV -------------------------------------------------------------------------------

    def to_csv(self) -> str:
        """One row per kept record: t_ns, kind, and the fields as a JSON object."""
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(("t_ns", "kind", "fields"))
        for rec in self.records:
            out.writerow((rec.t_ns, rec.kind, json.dumps(dict(rec.fields), separators=_COMPACT)))
        return buf.getvalue()

    def save_csv(self, path) -> None:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(self.to_csv())

    def spans_csv(self) -> str:
        """One row per span: t_start, t_end, mode, task (empty when None)."""
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(("t_start", "t_end", "mode", "task"))
        for t_start, t_end, mode, task in self.spans:
            out.writerow((t_start, t_end, mode, "" if task is None else task))
        return buf.getvalue()


# -- loading: every check names where the file went wrong -----------------------------------

def _truncated(text: str, e: json.JSONDecodeError) -> bool:
    """True when the JSON error is the input ending early rather than a wrong character."""
    rest = text[e.pos:].rstrip()
    return (not rest or e.msg.startswith("Unterminated string")
            or (e.msg == "Expecting value" and any(w.startswith(rest) and w != rest
                                                   for w in ("true", "false", "null"))))


_KEYS = ("format", "version", "keep_records", "max_records", "dropped", "counts", "tallies",
         "records", "spans")
_OPTIONAL_KEYS = ("lanes",)     # several vCPUs: [[vcpu, spans], ...]; "spans" are vCPU 0's


def _is_int(v) -> bool:
    return type(v) is int


def _load(obj) -> Trace:
    if not isinstance(obj, dict):
        raise TraceFormatError(f"not an apflab trace (top level is a {type(obj).__name__}, "
                               "expected an object)")
    if "format" not in obj:
        raise TraceFormatError("not an apflab trace (format tag missing)")
    if obj["format"] != FORMAT_TAG:
        raise TraceFormatError(f"not an apflab trace (format tag is {obj['format']!r})")
    if obj.get("version") != FORMAT_VERSION:
        raise TraceFormatError(f"unsupported trace version {obj.get('version')!r} "
                               f"(this apflab reads version {FORMAT_VERSION})")
    for key in _KEYS:
        if key not in obj:
            raise TraceFormatError(f"key {key!r} missing")
    extra = sorted(set(obj) - set(_KEYS) - set(_OPTIONAL_KEYS))
    if extra:
        raise TraceFormatError(f"unexpected key {extra[0]!r}")
    keep, cap, dropped, counts = (obj["keep_records"], obj["max_records"], obj["dropped"],
                                  obj["counts"])
    if type(keep) is not bool:
        raise TraceFormatError("keep_records is not a boolean")
    if cap is not None and not (_is_int(cap) and cap >= 0):
        raise TraceFormatError("max_records is not null or an int >= 0")
    if not (_is_int(dropped) and dropped >= 0):
        raise TraceFormatError("dropped is not an int >= 0")
    if not isinstance(counts, dict) or not all(_is_int(n) and n >= 0 for n in counts.values()):
        raise TraceFormatError("counts is not an object of ints >= 0")
    trace = Trace(keep_records=keep, max_records=cap)
    trace.counts = dict(counts)
    tallies = obj["tallies"]
    if not isinstance(tallies, dict):
        raise TraceFormatError("tallies is not an object")
    for kind, by in tallies.items():
        if kind not in TALLIED:
            raise TraceFormatError(f"tallies has {kind!r}, which is not a tallied kind")
        if not isinstance(by, dict) or not all(_is_int(n) and n >= 0 for n in by.values()):
            raise TraceFormatError(f"tallies[{kind!r}] is not an object of ints >= 0")
        if sum(by.values()) != counts.get(kind, 0):
            raise TraceFormatError(f"tallies[{kind!r}] sums to {sum(by.values())} but counts[{kind!r}] "
                                   f"is {counts.get(kind, 0)}")
    trace._tallies = {k: dict(v) for k, v in tallies.items()}
    trace.dropped = dropped
    trace.records = _load_records(obj["records"])
    if len(trace.records) > trace._cap:
        raise TraceFormatError(f"{len(trace.records)} records but max_records is {cap}")
    seen: dict[str, int] = {}
    for rec in trace.records:
        seen[rec.kind] = seen.get(rec.kind, 0) + 1
    for kind, n in seen.items():
        if counts.get(kind, 0) < n:
            raise TraceFormatError(f"counts[{kind!r}] is {counts.get(kind, 0)} but {n} "
                                   "records of that kind are stored")
    if len(trace.records) + dropped != sum(counts.values()):
        raise TraceFormatError(f"counts total {sum(counts.values())} != {len(trace.records)} "
                               f"records + {dropped} dropped")
    _load_spans(trace, obj["spans"])
    if "lanes" in obj:
        _load_lanes(trace, obj["lanes"])
    return trace


def _load_lanes(trace: Trace, lanes) -> None:
    if not isinstance(lanes, list) or not lanes:
        raise TraceFormatError("lanes is not a non-empty list")
    seen = set()
    for i, item in enumerate(lanes):
        if not isinstance(item, list) or len(item) != 2 or not _is_int(item[0]) or item[0] < 0:
            raise TraceFormatError(f"lane {i}: not a [vcpu, spans] pair")
        vcpu, spans = item
        if vcpu in seen:
            raise TraceFormatError(f"lane {i}: vCPU {vcpu} appears twice")
        seen.add(vcpu)
        if vcpu == 0:
            if spans != [list(sp) for sp in trace.spans]:
                raise TraceFormatError("lane of vCPU 0 differs from spans")
            continue
        trace.select_lane(vcpu, tag=True)
        _load_spans(trace, spans)
    trace.select_lane(0, tag=True)


def _load_records(items) -> list[Record]:
    if not isinstance(items, list):
        raise TraceFormatError("records is not a list")
    records = []
    for i, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 3:
            raise TraceFormatError(f"record {i}: not a [t_ns, kind, fields] list")
        t_ns, kind, fields = item
        if not _is_int(t_ns):
            raise TraceFormatError(f"record {i}: t_ns is not an int")
        if type(kind) is not str or not kind:
            raise TraceFormatError(f"record {i}: kind is not a non-empty string")
        if not isinstance(fields, dict):
            raise TraceFormatError(f"record {i}: fields is not an object")
        for name, value in fields.items():
            if name in ("t_ns", "kind"):
                raise TraceFormatError(f"record {i}: field name {name!r} is reserved")
            if type(value) not in _FIELD_TYPES:
                raise TraceFormatError(f"record {i}: field {name!r} is a {type(value).__name__} "
                                       "(allowed: int, string, boolean, null)")
        records.append(Record(t_ns, kind, tuple(fields.items())))
    return records


def _load_spans(trace: Trace, items) -> None:
    if not isinstance(items, list):
        raise TraceFormatError("spans is not a list")
    for i, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 4:
            raise TraceFormatError(f"span {i}: not a [t_start, t_end, mode, task] list")
        t_start, t_end, mode, task = item
        if not (_is_int(t_start) and _is_int(t_end)):
            raise TraceFormatError(f"span {i}: t_start or t_end is not an int")
        if mode not in _MODE_SET:
            raise TraceFormatError(f"span {i}: mode {mode!r} is not one of {MODES}")
        if task is not None and not _is_int(task):
            raise TraceFormatError(f"span {i}: task is not an int or null")
        if t_end <= t_start:
            raise TraceFormatError(f"span {i}: empty or reversed [{t_start}, {t_end})")
        prev = trace.spans[-1] if trace.spans else None
        if prev is not None:
            if t_start != prev[1]:
                raise TraceFormatError(f"span {i}: starts at {t_start}, previous ended at "
                                       f"{prev[1]}")
            if (prev[2], prev[3]) == (mode, task):
                raise TraceFormatError(f"span {i}: same mode and task as span {i - 1} "
                                       "(spans are stored merged)")
        if mode == STEAL and not trace._steal:
            trace.enable_steal()
        trace.account(t_start, t_end, mode, task)
