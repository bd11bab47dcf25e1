"""Operators' audit tools on the same core: replay, explain, export, report.

Nothing here re-implements the model or the engine. Every number is recomputed by
replaying ``margin.log`` entry by entry through :func:`stream.log.ordered_log.apply_entry` (the
loop :func:`stream.log.ordered_log.apply_record` runs in the worker) and, for one account's components, :func:`stream.core.engine.account_risk`.

Topics come either from the broker (:func:`read_broker`) or from an export directory
written by :func:`write_export` (``DIR/<topic>.jsonl``, one record a line); both give the
same :class:`Record` lists, so every tool works on either.

No faust import: the broker is read with plain aiokafka (``stream.kafka.clients``), lazily.
"""

from __future__ import annotations

import base64
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, TextIO

import orjson

from stream.core.engine import EngineConfig, EngineState, Output, account_risk
from stream.core.money import cents_to_decimal, cents_up, money_str
from stream.log.ordered_log import Entry, apply_entry, encode_record, expand, merge_inputs, route_input
from stream.core.timeutil import format_time_us, parse_time_us
from stream.core.topics import (
    ACCOUNT_TOPICS,
    CALLS,
    COLLATERAL,
    DEADLETTER,
    FILLS,
    FLASH,
    LISTINGS,
    LOG,
    REQUIREMENTS,
    SETTLEMENTS,
    TICKS,
)

COMPARED_TOPICS = (REQUIREMENTS, CALLS)


# =========================================================================== records
@dataclass(frozen=True)
class Record:
    """One message of a topic: where it is, and its raw key and value bytes."""

    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None


def sort_records(records: Iterable[Record]) -> list[Record]:
    """Records in (partition, offset) order: each partition's own order."""
    return sorted(records, key=lambda r: (r.partition, r.offset))


def export_line(record: Record) -> bytes:
    """The export format of one record: partition, offset, timestamp, key (text or null),
    value (decoded JSON, or null plus ``value_b64`` when the bytes are not JSON)."""
    line: dict[str, Any] = {"partition": record.partition, "offset": record.offset, "timestamp": record.timestamp}
    line["key"], key_b64 = _text_or_b64(record.key)
    if key_b64 is not None:
        line["key_b64"] = key_b64
    line["value"] = None
    if record.value is not None:
        try:
            line["value"] = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            line["value_b64"] = base64.b64encode(record.value).decode("ascii")
    return orjson.dumps(line)


def _text_or_b64(raw: bytes | None) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return None, base64.b64encode(raw).decode("ascii")


def parse_export_line(line: bytes) -> Record:
    """Inverse of :func:`export_line` (a JSON value comes back as its compact JSON bytes)."""
    obj = orjson.loads(line)
    if "key_b64" in obj:
        key = base64.b64decode(obj["key_b64"])
    else:
        key = None if obj.get("key") is None else str(obj["key"]).encode()
    if "value_b64" in obj:
        value = base64.b64decode(obj["value_b64"])
    else:
        value = None if obj.get("value") is None else orjson.dumps(obj["value"])
    return Record(int(obj["partition"]), int(obj["offset"]), obj.get("timestamp"), key, value)


def export_path(directory: str | Path, topic: str) -> Path:
    return Path(directory) / f"{topic}.jsonl"


def write_export(directory: str | Path, topic: str, records: Iterable[Record]) -> tuple[Path, int]:
    """Write one topic to ``DIR/<topic>.jsonl`` in (partition, offset) order."""
    path = export_path(directory, topic)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "wb") as out:
        for record in sort_records(records):
            out.write(export_line(record) + b"\n")
            count += 1
    return path, count


def read_export(directory: str | Path, topic: str) -> list[Record]:
    """One topic from an export directory; a missing file is an error naming it."""
    path = export_path(directory, topic)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no export of {topic} (run `kpimargin export {topic} --out {directory}`)")
    with open(path, "rb") as src:
        return sort_records(parse_export_line(line) for line in src if line.strip())


async def read_broker(settings: Any, topics: Iterable[str], idle_s: float = 2.0) -> dict[str, list[Record]]:
    """Every record of the given (logical) topics, read concurrently from the beginning
    until each has been idle for ``idle_s`` seconds."""
    import asyncio

    from stream.kafka.clients import read_topic

    async def one(topic: str) -> list[Record]:
        return [Record(p, o, t, k, v) async for p, o, t, k, v in read_topic(settings, topic, idle_timeout_s=idle_s)]

    topics = list(topics)
    results = await asyncio.gather(*(one(t) for t in topics))
    return {t: sort_records(r) for t, r in zip(topics, results)}


def load_topics(topics: Iterable[str], directory: str | None = None, settings: Any = None) -> dict[str, list[Record]]:
    """Topics from an export directory when given, else from the broker of ``settings``."""
    topics = list(topics)
    if directory is not None:
        return {t: read_export(directory, t) for t in topics}
    import asyncio

    return asyncio.run(read_broker(settings, topics))


def log_entries(records: Iterable[Record]) -> list[tuple[int, int, int, Entry]]:
    """The entries of ``margin.log`` records as ``(log partition, log offset, index in the
    record, entry)`` in log order (tombstones -- which the router never writes -- are
    skipped)."""
    return expand((r.partition, r.offset, r.value) for r in sort_records(records) if r.value is not None)


def log_from_inputs(topics: dict[str, list[Record]], partitions: int, max_bytes: int,
                    max_record_bytes: int | None = None) -> list[Record]:
    """Rebuild an ordered log from the raw input topics with the router's own functions
    (:func:`stream.log.ordered_log.merge_inputs` then :func:`stream.log.ordered_log.route_input`),
    one entry per record: record boundaries change no output. It equals the processor's
    log wherever the router saw the events in timestamp order -- true for inputs published
    one after another; events published at the same moment on different topics may have
    been routed in another order."""
    from stream.core.topics import INPUT_TOPICS

    runs: dict[tuple[str, int], list[tuple[int | None, int, bytes | None]]] = {}
    for topic in INPUT_TOPICS:
        for r in sort_records(topics.get(topic, ())):
            runs.setdefault((topic, r.partition), []).append((r.timestamp, r.offset, r.value))
    next_offset = [0] * partitions
    log: list[Record] = []
    for topic, partition, offset, raw in merge_inputs((t, p, msgs) for (t, p), msgs in runs.items()):
        targets, entry, _rejected = route_input(topic, partition, offset, raw, partitions, max_bytes, max_record_bytes)
        for p in targets:
            log.append(Record(p, next_offset[p], None, None, encode_record([entry])))  # type: ignore[list-item]
            next_offset[p] += 1
    return log


def decode_entry(entry: Entry) -> tuple[dict, dict] | None:
    """``(source, value)`` of a log entry, or None when it is not one the router wrote."""
    try:
        source, value = entry["source"], entry["value"]  # type: ignore[index]
    except Exception:
        return None
    if not isinstance(source, dict) or not isinstance(value, dict):
        return None
    return source, value


# =========================================================================== progress
class Progress:
    """A one-line progress bar (events/s and ETA) on a TTY stream; silent otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, label: str = "replay", every_s: float = 0.2):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.label, self.every_s = total, label, every_s
        self.started = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        self.stream.write("\r" + self.line(done, now - self.started))
        self.stream.flush()

    def line(self, done: int, elapsed: float, width: int = 30) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "." * (width - filled)
        eta_text = f"{eta:5.0f} s" if eta == eta else "    ? s"
        return f"{self.label} [{bar}] {done:,}/{self.total:,} entries  {rate:,.0f} ev/s  ETA {eta_text}"

    def close(self, done: int) -> None:
        if self.enabled:
            self.update(done, force=True)
            self.stream.write("\n")
            self.stream.flush()


# =========================================================================== replay
@dataclass
class Produced:
    """A record the replay recomputed, and the log entry that produced it."""

    topic: str
    value: dict
    log_partition: int
    log_offset: int
    log_entry: int  # index of the entry in its log record


@dataclass
class Recomputation:
    records: dict[str, Produced]  # requirements and calls by id
    states: dict[int, EngineState]
    entries: int


def recompute(
    entries: list[tuple[int, int, int, Entry]], config: EngineConfig | None = None, progress: Progress | None = None
) -> Recomputation:
    """Replay the whole log, a fresh :class:`EngineState` per log partition, with
    :func:`apply_entry`; keep every requirement and call it publishes, by id."""
    config = config or EngineConfig()
    states: dict[int, EngineState] = {}
    records: dict[str, Produced] = {}
    for done, (partition, offset, index, entry) in enumerate(entries, 1):
        state = states.get(partition)
        if state is None:
            state = states[partition] = EngineState(config=config)
        for out in apply_entry(state, partition, offset, entry, index):
            if out.topic in COMPARED_TOPICS:
                records[out.value["id"]] = Produced(out.topic, out.value, partition, offset, index)
        if progress is not None:
            progress.update(done)
    if progress is not None:
        progress.close(len(entries))
    return Recomputation(records, states, len(entries))


@dataclass(frozen=True)
class Published:
    topic: str
    value: dict
    partition: int
    offset: int


def published_by_id(topics: dict[str, list[Record]]) -> tuple[dict[str, list[Published]], list[Published]]:
    """Published requirements and calls by id, each distinct content once (at-least-once
    delivery repeats records; a repeat must be identical), plus records that are not JSON
    objects with an id (always mismatches)."""
    by_id: dict[str, list[Published]] = {}
    bad: list[Published] = []
    for topic in COMPARED_TOPICS:
        for r in topics.get(topic, []):
            value = _json_object(r.value)
            if value is None or not isinstance(value.get("id"), str):
                bad.append(Published(topic, {"raw": (r.value or b"").decode("utf-8", "replace")}, r.partition, r.offset))
                continue
            versions = by_id.setdefault(value["id"], [])
            if all(v.value != value for v in versions):
                versions.append(Published(topic, value, r.partition, r.offset))
    return by_id, bad


def _json_object(raw: bytes | None) -> dict | None:
    try:
        value = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class Filters:
    """What is compared (never what is applied: state needs all of the history)."""

    account: str | None = None
    contract: str | None = None
    from_us: int | None = None
    to_us: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    @property
    def by_offset(self) -> bool:
        return self.from_offset is not None or self.to_offset is not None


def field_diffs(published: Any, recomputed: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(field, published, recomputed)`` for every leaf that differs; nested fields are
    named like ``positions[0].im``; an absent side is the string ``(absent)``."""
    if isinstance(published, dict) and isinstance(recomputed, dict):
        diffs = []
        for key in list(recomputed) + [k for k in published if k not in recomputed]:
            name = f"{path}.{key}" if path else str(key)
            diffs += field_diffs(published.get(key, ABSENT), recomputed.get(key, ABSENT), name)
        return diffs
    if isinstance(published, list) and isinstance(recomputed, list):
        diffs = []
        for i in range(max(len(published), len(recomputed))):
            p = published[i] if i < len(published) else ABSENT
            r = recomputed[i] if i < len(recomputed) else ABSENT
            diffs += field_diffs(p, r, f"{path}[{i}]")
        return diffs
    if published == recomputed and type(published) is type(recomputed) or _same_number(published, recomputed):
        return []
    return [(path or "(record)", published, recomputed)]


ABSENT = "(absent)"


def _same_number(a: Any, b: Any) -> bool:
    numbers = (int, float)
    return isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool) and a == b


@dataclass
class Mismatch:
    kind: str  # "differs" | "missing" (recomputed, never published) | "extra" (published, not recomputed)
    topic: str
    record_id: str
    subject: dict  # the recomputed record, or the published one when there is none
    diffs: list[tuple[str, Any, Any]] = field(default_factory=list)
    log_partition: int | None = None
    log_offset: int | None = None
    log_entry: int | None = None


@dataclass
class ReplayReport:
    entries: int
    records: int
    partitions: int
    published: int
    recomputed: int
    compared: int
    mismatches: list[Mismatch]

    @property
    def ok(self) -> bool:
        return not self.mismatches


class Selector:
    """Decides whether a record is compared under :class:`Filters`."""

    def __init__(self, filters: Filters, recomputation: Recomputation, published: dict[str, list[Published]],
                 entries: list[tuple[int, int, int, Entry]]):
        self.filters = filters
        self.states = recomputation.states
        self.entries = entries
        self._sources: dict[tuple[int, str, int, int], int] | None = None
        self.contracts_by_cause: dict[tuple, set[str]] = {}
        if filters.contract is not None:
            reqs = [p.value for p in recomputation.records.values() if p.topic == REQUIREMENTS]
            reqs += [v.value for vs in published.values() for v in vs if v.topic == REQUIREMENTS]
            for req in reqs:
                key = _cause_key(req)
                self.contracts_by_cause.setdefault(key, set()).update(_position_contracts(req))

    def keep(self, record: dict, topic: str, log_offset: int | None) -> bool:
        f = self.filters
        if f.account is not None and record.get("account_id") != f.account:
            return False
        if f.contract is not None and not self._concerns_contract(record, topic):
            return False
        if f.from_us is not None or f.to_us is not None:
            as_of = _time_or_none(record.get("as_of"))
            if as_of is None or (f.from_us is not None and as_of < f.from_us) or (f.to_us is not None and as_of > f.to_us):
                return False
        if f.by_offset:
            offset = log_offset if log_offset is not None else self.log_offset_of(record)
            if offset is None:  # unknown position in the log: compare it rather than hide it
                return True
            if (f.from_offset is not None and offset < f.from_offset) or (f.to_offset is not None and offset > f.to_offset):
                return False
        return True

    def _concerns_contract(self, record: dict, topic: str) -> bool:
        cause = record.get("cause") or {}
        if cause.get("id") == self.filters.contract:
            return True
        contracts = _position_contracts(record) if topic == REQUIREMENTS else self.contracts_by_cause.get(_cause_key(record), set())
        return self.filters.contract in contracts

    def log_offset_of(self, record: dict) -> int | None:
        """The log offset of a published record's cause, in its account's log partition."""
        cause = record.get("cause") or {}
        partition = next((p for p, s in self.states.items() if record.get("account_id") in s.accounts), None)
        if partition is None:
            return None
        if self._sources is None:
            self._sources = {}
            for p, o, _i, entry in self.entries:
                decoded = decode_entry(entry)
                if decoded is not None:  # the first copy: a re-forwarded one publishes nothing
                    src = decoded[0]
                    self._sources.setdefault((p, str(src.get("topic")), src.get("partition"), src.get("offset")), o)
        return self._sources.get((partition, cause.get("topic"), cause.get("partition"), cause.get("offset")))


def _cause_key(record: dict) -> tuple:
    cause = record.get("cause") or {}
    return (record.get("account_id"), cause.get("topic"), cause.get("partition"), cause.get("offset"), cause.get("id"))


def _position_contracts(record: dict) -> set[str]:
    return {p.get("contract_id") for p in record.get("positions") or [] if isinstance(p, dict)}


def _time_or_none(value: Any) -> int | None:
    try:
        return parse_time_us(value, "as_of")
    except Exception:
        return None


def compare(recomputation: Recomputation, published: dict[str, list[Published]], bad: list[Published],
            selector: Selector) -> tuple[int, list[Mismatch]]:
    """Compare every selected record by id: content must be equal; a recomputed record
    never published is ``missing``, a published one never recomputed is ``extra``."""
    compared, mismatches = 0, []
    for rid in list(recomputation.records) + [i for i in published if i not in recomputation.records]:
        produced, versions = recomputation.records.get(rid), published.get(rid, [])
        subject = produced.value if produced else versions[0].value
        topic = produced.topic if produced else versions[0].topic
        log_p, log_o, log_i = (produced.log_partition, produced.log_offset, produced.log_entry) if produced else (None, None, None)
        if not selector.keep(subject, topic, log_o):
            continue
        compared += 1
        if produced is None:
            mismatches.append(Mismatch("extra", topic, rid, subject, [("(record)", "published", ABSENT)]))
        elif not versions:
            mismatches.append(Mismatch("missing", topic, rid, subject, [("(record)", ABSENT, "recomputed")], log_p, log_o, log_i))
        for version in versions if produced else []:
            if version.topic == produced.topic and version.value == produced.value:
                continue
            diffs = field_diffs(version.value, produced.value)
            if version.topic != produced.topic:
                diffs.insert(0, ("(topic)", version.topic, produced.topic))
            if diffs:
                mismatches.append(Mismatch("differs", topic, rid, subject, diffs, log_p, log_o))
    for record in bad:
        compared += 1
        mismatches.append(Mismatch("extra", record.topic, f"{record.partition}:{record.offset}", record.value,
                                   [("(record)", "not a JSON record with an id", ABSENT)]))
    return compared, mismatches


def run_replay(topics: dict[str, list[Record]], filters: Filters = Filters(), config: EngineConfig | None = None,
               progress: Progress | None = None) -> ReplayReport:
    """Recompute every requirement and call from ``margin.log`` and compare them with the
    published ``margin.requirements`` and ``margin.calls``."""
    entries = log_entries(topics.get(LOG, []))
    if progress is not None:
        progress.total = len(entries)
    recomputation = recompute(entries, config, progress)
    published, bad = published_by_id(topics)
    selector = Selector(filters, recomputation, published, entries)
    compared, mismatches = compare(recomputation, published, bad, selector)
    n_published = sum(len(topics.get(t, [])) for t in COMPARED_TOPICS)
    return ReplayReport(len(entries), len({(p, o) for p, o, _, _ in entries}), len({p for p, _, _, _ in entries}),
                        n_published, len(recomputation.records),
                        compared, mismatches)


def _cell(value: Any, width: int) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def format_mismatch(number: int, m: Mismatch) -> list[str]:
    """A header naming the record, then its differing fields side by side."""
    cause = m.subject.get("cause") or {}
    where = f" (margin.log {m.log_partition}:{m.log_offset}#{m.log_entry})" if m.log_partition is not None else ""
    lines = [
        f"#{number} {m.kind}: {m.topic} id {m.record_id} account {m.subject.get('account_id')} "
        f"as_of {m.subject.get('as_of')} cause {cause.get('topic')}:{cause.get('partition')}:{cause.get('offset')} "
        f"{cause.get('id')}{where}",
        f"    {'field':<28} {'published':<28} {'recomputed':<28}",
    ]
    for name, pub, rec in m.diffs:
        lines.append(f"    {_cell(name, 28):<28} {_cell(pub, 28):<28} {_cell(rec, 28):<28}")
    return lines


def format_report(report: ReplayReport, show: int = 3) -> str:
    """The replay summary: what was read, compared and found."""
    lines = [
        f"log entries read:    {report.entries:,} in {report.records:,} records ({report.partitions} partition(s) of {LOG})",
        f"published records:   {report.published:,} ({REQUIREMENTS} + {CALLS})",
        f"recomputed records:  {report.recomputed:,}",
        f"records compared:    {report.compared:,}",
        f"mismatches:          {len(report.mismatches):,}",
    ]
    if report.mismatches:
        kinds = {}
        for m in report.mismatches:
            kinds[m.kind] = kinds.get(m.kind, 0) + 1
        lines[-1] += " (" + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")"
        shown = report.mismatches[: max(0, show)]
        if shown:
            lines.append("")
            lines.append(f"first {len(shown)} of {len(report.mismatches)}:")
            for i, m in enumerate(shown, 1):
                lines += format_mismatch(i, m)
    lines.append("")
    lines.append("OK: every compared record equals its replay" if report.ok else "MISMATCH: the published records differ from a replay of the log")
    return "\n".join(lines)


# =========================================================================== explain
EVENT_TIME_FIELD = {TICKS: "ts", FILLS: "ts", COLLATERAL: "ts", FLASH: "as_of", SETTLEMENTS: "ts", LISTINGS: "listing_time"}


def event_time_us(topic: str, value: dict) -> int | None:
    """An entry's event time: tick ts, fill/movement ts, flash as_of, settlement ts,
    listing listing_time; None when absent or unparseable."""
    name = EVENT_TIME_FIELD.get(topic)
    return _time_or_none(value.get(name)) if name else None


def account_partition(entries: list[tuple[int, int, int, Entry]], account_id: str) -> int | None:
    """The log partition whose fill/collateral entries name the account."""
    for partition, _offset, _index, entry in entries:
        decoded = decode_entry(entry)
        if decoded and decoded[0].get("topic") in ACCOUNT_TOPICS and decoded[1].get("account_id") == account_id:
            return partition
    return None


def cutoff_index(entries: list[tuple[int, int, int, Entry]], at_us: int | None) -> int:
    """How many entries to apply: up to and including the last one whose event time is
    at or before ``at_us`` (all of them when ``at_us`` is None)."""
    if at_us is None:
        return len(entries)
    last = -1
    for i, (_p, _o, _index, entry) in enumerate(entries):
        decoded = decode_entry(entry)
        t = event_time_us(str(decoded[0].get("topic")), decoded[1]) if decoded else None
        if t is not None and t <= at_us:
            last = i
    return last + 1


def summarize(topic: str, v: dict) -> str:
    """One line describing an input event."""
    if topic == FILLS:
        return f"fill {v.get('trade_id')} {v.get('side')} {v.get('notional')} {v.get('contract_id')} @ {v.get('price')} ({v.get('ts')})"
    if topic == COLLATERAL:
        amount = str(v.get("amount"))
        kind = "withdrawal" if amount.startswith("-") else "deposit"
        return f"{kind} {v.get('movement_id')} {amount} ({v.get('ts')})"
    if topic == TICKS:
        return f"tick {v.get('ts')}"
    if topic == FLASH:
        return f"flash {v.get('contract_id')} value {v.get('value')} coverage {v.get('coverage')} as of {v.get('as_of')}"
    if topic == SETTLEMENTS:
        return f"settlement {v.get('contract_id')} at {v.get('value')} ({v.get('ts')})"
    if topic == LISTINGS:
        return (f"listing {v.get('contract_id')} [{v.get('lower')}, {v.get('upper')}] listed {v.get('listing_time')} "
                f"settles {v.get('settlement_time')}")
    return f"{topic} event"


def _concerns(topic: str, value: dict, account_id: str, contracts: set[str], had_positions: bool) -> bool:
    if topic in ACCOUNT_TOPICS:
        return value.get("account_id") == account_id
    if topic == TICKS:
        return had_positions
    return value.get("contract_id") in contracts


def _output_summary(out: Output) -> str:
    v = out.value
    if out.topic == REQUIREMENTS:
        return f"requirement IM {v['im']} equity {v['equity']} excess {v['excess']}"
    if out.topic == CALLS:
        return f"call {v['status']} shortfall {v['shortfall']}"
    return f"rejected: {v.get('reason')} {v.get('field') or ''} {v.get('detail') or ''}".rstrip()


def _account_outputs(outputs: list[Output], account_id: str, source: dict) -> list[Output]:
    """The outputs of one entry that concern the account (its records; its rejections)."""
    mine = [o for o in outputs if o.topic != DEADLETTER and o.value.get("account_id") == account_id]
    if source.get("topic") in ACCOUNT_TOPICS:
        mine += [o for o in outputs if o.topic == DEADLETTER]
    return mine


def _held_contracts(entries: list[tuple[int, int, int, Entry]], account_id: str) -> set[str]:
    """Contracts the account's fills name (it held or holds them)."""
    held = set()
    for _p, _o, _i, entry in entries:
        decoded = decode_entry(entry)
        if decoded and decoded[0].get("topic") == FILLS and decoded[1].get("account_id") == account_id:
            held.add(decoded[1].get("contract_id"))
    return held


def replay_account(entries: list[tuple[int, int, int, Entry]], account_id: str,
                   config: EngineConfig | None = None) -> tuple[EngineState, list[dict]]:
    """Apply the entries (one log partition, in order) to a fresh state; return the state
    and the chain of entries that concerned the account, with what each published for it."""
    state = EngineState(config=config or EngineConfig())
    contracts = _held_contracts(entries, account_id)
    chain = []
    for partition, offset, index, entry in entries:
        account = state.accounts.get(account_id)
        had_positions = bool(account and account.positions)
        outputs = apply_entry(state, partition, offset, entry, index)
        decoded = decode_entry(entry)
        if decoded is None:
            continue
        source, value = decoded
        topic = str(source.get("topic"))
        if not _concerns(topic, value, account_id, contracts, had_positions):
            continue
        t = event_time_us(topic, value)
        chain.append({
            "log": {"partition": partition, "offset": offset, "entry": index},
            "source": {"topic": topic, "partition": source.get("partition"), "offset": source.get("offset")},
            "event_time": value.get(EVENT_TIME_FIELD.get(topic, "")) if t is not None else None,
            "summary": summarize(topic, value),
            "outputs": [_output_summary(o) for o in _account_outputs(outputs, account_id, source)],
        })
    return state, chain


def contract_detail(contract: Any) -> dict:
    """The contract state a position was margined with: risk vector, estimate, params."""
    est = contract.estimate
    return {
        "rv": contract.rv.as_dict(),
        "estimate": {"mu": est.mu, "sigma": est.sigma, "sigma_adj": est.sigma_adj, "n": est.n,
                     "r_min": est.r_min, "r_max": est.r_max},
        "params": dataclasses.asdict(contract.listing.params),
        "tau": contract.tau,
        "conv_f": contract.conv_f,
        "flash": contract.flash_raw,
        "settlement": contract.settlement_raw,
    }


def explain(entries_all: list[tuple[int, int, int, Entry]], account_id: str, at_us: int | None = None,
            config: EngineConfig | None = None) -> dict:
    """Everything behind an account's margin at event time ``at_us`` (None: the whole log):
    IM, equity, every position component, the contract risk vectors and the chain of events.
    Raises KeyError when no fill or collateral entry names the account."""
    partition = account_partition(entries_all, account_id)
    if partition is None:
        raise KeyError(f"no fill or collateral movement in {LOG} names account {account_id!r}")
    entries = [e for e in entries_all if e[0] == partition]
    applied = entries[: cutoff_index(entries, at_us)]
    state, chain = replay_account(applied, account_id, config)
    account = state.accounts.get(account_id)
    total, positions = account_risk(state, account) if account is not None else (0.0, [])
    im = cents_to_decimal(cents_up(total))
    equity = account.equity if account is not None else cents_to_decimal(0)
    return {
        "account_id": account_id,
        "at": None if at_us is None else _format_us(at_us),
        "log_partition": partition,
        "entries_applied": len(applied),
        "last_log_offset": applied[-1][1] if applied else None,
        "last_log_entry": applied[-1][2] if applied else None,
        "clock": None if state.now_us is None else _format_us(state.now_us),
        "im": money_str(im),
        "im_unrounded": total,
        "equity": money_str(equity),
        "excess": money_str(equity - im),
        "open_call": None if account is None or account.call is None else account.call.as_dict(),
        "positions": positions,
        "contracts": {p["contract_id"]: contract_detail(state.contracts[p["contract_id"]]) for p in positions},
        "chain": chain,
    }


def _format_us(us: int) -> str:
    return format_time_us(us)


def to_json(obj: Any) -> bytes:
    """JSON of an explain result (Decimals and other numbers as text/float)."""
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def _json_default(value: Any) -> Any:
    try:
        return float(value) if not hasattr(value, "as_tuple") else str(value)
    except Exception:
        return str(value)


POSITION_FIELDS = ("q", "im", "max_loss", "es", "stress", "conv", "stat", "conc", "tau")
RV_FIELDS = ("anchor", "loc", "sigma_adj", "flash_scale", "t_scale", "tail_low", "tail_high", "stress_levels",
             "es_method", "tail_count", "lower", "upper", "k", "beta", "gamma", "depth")


def format_explain(result: dict) -> str:
    """The explain result as readable text."""
    at = result["at"] or "end of the log"
    lines = [
        f"account {result['account_id']} at {at}",
        f"  replayed {LOG} partition {result['log_partition']}: {result['entries_applied']} entries "
        f"(last: record {result['last_log_offset']}, entry {result['last_log_entry']}); clock {result['clock'] or '(no tick yet)'}",
        "",
        f"  IM      {result['im']:>14}   (sum of position IMs {result['im_unrounded']!r}, rounded up to the cent)",
        f"  equity  {result['equity']:>14}",
        f"  excess  {result['excess']:>14}",
        f"  open call: {_call_text(result['open_call'])}",
        "",
        "positions:" if result["positions"] else "positions: none open",
    ]
    for p in result["positions"]:
        lines.append(f"  {p['contract_id']}")
        lines += [f"    {name:<9} {_num(p[name])}" for name in POSITION_FIELDS]
    for cid, c in result["contracts"].items():
        lines += ["", f"contract {cid}: risk vector used"]
        lines += [f"    {name:<12} {_num(c['rv'][name])}" for name in RV_FIELDS if name in c["rv"]]
        est = c["estimate"]
        lines.append(f"    estimate     mu {_num(est['mu'])}  sigma_adj {_num(est['sigma_adj'])}  n {est['n']}")
        lines.append(f"    tau {_num(c['tau'])}  conv factor {_num(c['conv_f'])}  flash {_flash_text(c['flash'])}")
        lines.append("    params       " + ", ".join(f"{k}={v}" for k, v in c["params"].items()))
    lines += ["", f"chain of events ({len(result['chain'])}):"]
    for item in result["chain"]:
        src, log = item["source"], item["log"]
        where = f"log {log['partition']}:{log['offset']}#{log['entry']}"
        source = f"{src['topic']}:{src['partition']}:{src['offset']}"
        lines.append(f"  {where:<12} {source:<27} {item['summary']}")
        lines += [f"      -> {text}" for text in item["outputs"]]
    return "\n".join(lines)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.6f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_num(v) for v in value) + "]"
    return str(value)


def _call_text(call: dict | None) -> str:
    return "none" if not call else f"{call.get('call_id')} shortfall {call.get('shortfall')}"


def _flash_text(flash: dict | None) -> str:
    return "none" if not flash else f"{flash.get('value')} coverage {flash.get('coverage')} as of {flash.get('as_of')}"


# =========================================================================== report
def account_history(topics: dict[str, list[Record]], account_id: str) -> tuple[list[dict], list[dict]]:
    """The account's published requirements and calls, each id once, in publish order."""
    out = []
    for topic in (REQUIREMENTS, CALLS):
        seen, records = set(), []
        for r in topics.get(topic, []):
            value = _json_object(r.value)
            if value and value.get("account_id") == account_id and value.get("id") not in seen:
                seen.add(value.get("id"))
                records.append(value)
        out.append(records)
    return out[0], out[1]


CALL_MARKERS = {"ISSUED": ("v", "tab:red"), "UPDATED": ("o", "tab:orange"), "SATISFIED": ("^", "tab:green")}


def _dt(as_of: str) -> datetime:
    return datetime.fromtimestamp(parse_time_us(as_of, "as_of") / 1e6, tz=timezone.utc)


def _step_series(requirements: list[dict]) -> tuple[list[datetime], list[float], list[float]]:
    """Times, IMs and equities of the requirements, with the last values held a little
    past the last event so that the final level is visible."""
    x = [_dt(r["as_of"]) for r in requirements]
    im = [float(r["im"]) for r in requirements]
    equity = [float(r["equity"]) for r in requirements]
    span = max(x[-1] - x[0], timedelta(days=1))
    return x + [x[-1] + span * 0.04], im + im[-1:], equity + equity[-1:]


def plot_report(requirements: list[dict], calls: list[dict], account_id: str, out: str | Path) -> Path:
    """Step plot of IM and equity over event time with margin calls marked (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    if not requirements:
        raise ValueError(f"no published requirement for account {account_id!r}")
    x, im, equity = _step_series(requirements)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    ax.step(x, im, where="post", label="initial margin (IM)", color="tab:blue", linewidth=2)
    ax.step(x, equity, where="post", label="equity", color="tab:gray", linewidth=2, linestyle="--")
    top = [max(i, e) for i, e in zip(im, equity)]
    ax.fill_between(x, equity, top, step="post", color="tab:red", alpha=0.12, label="shortfall (IM > equity)")
    for status, (marker, color) in CALL_MARKERS.items():
        pts = [c for c in calls if c.get("status") == status]
        if pts:
            level = "equity" if status == "SATISFIED" else "im"  # satisfied: equity covers IM again
            ax.scatter([_dt(c["as_of"]) for c in pts], [float(c[level]) for c in pts], marker=marker, s=90,
                       color=color, edgecolor="black", zorder=5, label=f"margin call {status} ({len(pts)})")
    ax.set_title(f"Account {account_id}: initial margin and equity (published margin.requirements)")
    ax.set_xlabel("event time (as_of, UTC)")
    ax.set_ylabel("USD")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.autofmt_xdate()
    fig.text(0.01, 0.01, "as_of is the event-time clock (last tick): events between two ticks share one as_of. "
             "Calls: ISSUED/UPDATED at IM, SATISFIED at equity.", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# =========================================================================== offline logs
def route_offline(messages: Iterable[tuple[str, dict]], partitions: int) -> list[tuple[int, int, bytes]]:
    """A ``margin.log`` built in memory from ``(topic, message)`` pairs, routed as the
    router does (account events to their account's partition, from the input partition
    their key gives; the others to every partition, from partition 0), one entry per
    record. For tests and benchmarks; returns ``(log partition, log offset, record)`` in
    log order."""
    from stream.log.ordered_log import encode_entry, home_partition

    source_offsets: dict[str, int] = {}
    log_offsets = [0] * partitions
    records = []
    for topic, message in messages:
        src_offset = source_offsets[topic] = source_offsets.get(topic, -1) + 1
        home = home_partition(topic, message, partitions)
        raw = encode_record([encode_entry(topic, home, src_offset, message)])
        targets = [home] if topic in ACCOUNT_TOPICS else range(partitions)
        for p in targets:
            records.append((p, log_offsets[p], raw))
            log_offsets[p] += 1
    return sorted(records, key=lambda e: (e[0], e[1]))


def as_records(records: Iterable[tuple[int, int, bytes]]) -> list[Record]:
    """``(partition, offset, value)`` tuples as topic :class:`Record` objects (timestamps
    and keys left out)."""
    return [Record(p, o, None, None, raw) for p, o, raw in records]
