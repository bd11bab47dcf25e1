"""Replay ``margin.log`` through the core and compare every recomputed record with the
published one (``kpimargin replay``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from stream.audit.export import TopicMessage
from stream.audit.inputs import log_entries
from stream.audit.progress import Progress
from stream.core.state import EngineConfig, EngineState
from stream.core.timeutil import parse_time_us
from stream.core.topics import (
    CALLS,
    LOG,
    REQUIREMENTS,
)
from stream.log.ordered_log import LogEntry, apply_entry, entry_source

COMPARED_TOPICS = (REQUIREMENTS, CALLS)


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
    entries: list[LogEntry], config: EngineConfig | None = None, progress: Progress | None = None
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


def published_by_id(topics: dict[str, list[TopicMessage]]) -> tuple[dict[str, list[Published]], list[Published]]:
    """Published requirements and calls by id, each distinct content once (at-least-once
    delivery repeats records; a repeat must be identical), plus records that are not JSON
    objects with an id (always mismatches)."""
    by_id: dict[str, list[Published]] = {}
    bad: list[Published] = []
    for topic in COMPARED_TOPICS:
        for r in topics.get(topic, []):
            value = json_object(r.value)
            if value is None or not isinstance(value.get("id"), str):
                bad.append(Published(topic, {"raw": (r.value or b"").decode("utf-8", "replace")}, r.partition, r.offset))
                continue
            versions = by_id.setdefault(value["id"], [])
            if all(v.value != value for v in versions):
                versions.append(Published(topic, value, r.partition, r.offset))
    return by_id, bad


def json_object(raw: bytes | None) -> dict | None:
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
                 entries: list[LogEntry]):
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
            as_of = time_or_none(record.get("as_of"))
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
                source = entry_source(entry)
                if source is not None:  # the first copy: a re-forwarded one publishes nothing
                    self._sources.setdefault((p, *source[:3]), o)
        return self._sources.get((partition, cause.get("topic"), cause.get("partition"), cause.get("offset")))


def _cause_key(record: dict) -> tuple:
    cause = record.get("cause") or {}
    return (record.get("account_id"), cause.get("topic"), cause.get("partition"), cause.get("offset"), cause.get("id"))


def _position_contracts(record: dict) -> set[str]:
    return {p.get("contract_id") for p in record.get("positions") or [] if isinstance(p, dict)}


def time_or_none(value: Any) -> int | None:
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


def run_replay(topics: dict[str, list[TopicMessage]], filters: Filters = Filters(), config: EngineConfig | None = None,
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


def format_report(report: ReplayReport, show: int = 3, source: str = LOG) -> str:
    """The replay summary: what was read (``source``: the log, or the input topics it was
    rebuilt from), compared and found."""
    lines = [
        f"log entries read:    {report.entries:,} in {report.records:,} records ({report.partitions} partition(s) of {source})",
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
