"""The processor's ordered per-partition log (``margin.log``): its record format, how the
router fills it, and how one record is applied.

A log *record* is one Kafka message holding, in order, the *entries* the router forwarded
to that log partition from one batch of input messages::

    {"entries": [{"source": {"topic": "trades.fills", "partition": 2, "offset": 17}, "value": {...}},
                 {"source": {"topic": "clock.ticks", "partition": 0, "offset": 4}, "value": {...}}]}

Each entry is a decoded input message plus where it came from. Records batch the entries
only to amortise the per-message cost of the framework and the broker: applying a record
is applying its entries one after the other, so where the router cut its batches changes
no output. The log's order -- record by record, entry by entry -- is *the* order every
worker and every replay applies.

:func:`apply_record` is the single function that turns a record into outputs; the faust
engine agent, the replay/audit tools and the integration tests all call it (or
:func:`apply_record_entries`, the same loop entry by entry), so a replay of the log
reproduces exactly what the processor published. The worker's router also hands the
inputs it parsed to its own engine (:class:`Parsed`, :func:`apply_parsed`): applying
those is applying the entries it wrote for them, minus decoding and parsing them again.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator, NamedTuple

import orjson

from stream.core.engine import apply
from stream.core.errors import Misrouted, Rejected, SchemaViolation, Undecodable
from stream.core.messages import Cause, Event, deadletter_record, decode, parse
from stream.core.state import EngineState, Output, take_in
from stream.core.topics import ACCOUNT_TOPICS, DEADLETTER, INPUT_TOPICS, LOG
from stream.log.partitioner import default_partition

log = logging.getLogger("kpimargin")

RECORD_HEAD = b'{"entries":['
RECORD_TAIL = b"]}"


def encode_entry(topic: str, partition: int, offset: int, value: Any) -> bytes:
    return orjson.dumps({"source": {"topic": topic, "partition": partition, "offset": offset}, "value": value})


def encode_record(entries: Iterable[bytes], positions: dict[tuple[str, int], int] | None = None) -> bytes:
    """One log record from encoded entries (their bytes are copied, never re-encoded) and,
    from the router, where it stands in its inputs once the record is in the log (see
    :func:`record_positions`)."""
    body = RECORD_HEAD + b",".join(entries) + b"]"
    if positions:
        body += b',"next":' + orjson.dumps(sorted([t, p, o] for (t, p), o in positions.items()))
    return body + b"}"


def record_positions(raw: bytes | None) -> dict[tuple[str, int], int] | None:
    """The router's input positions a log record carries: per input ``(topic, partition)``
    the next offset to forward once this record is in the log -- the log is the router's
    commit: a router taking over a log partition resumes where its last record says. None
    for a record without them (written by the audit tools, or not a record)."""
    try:
        obj = orjson.loads(raw) if raw is not None else None
        return {(str(t), int(p)): int(o) for t, p, o in obj["next"]}
    except (orjson.JSONDecodeError, TypeError, KeyError, ValueError):
        return None


@lru_cache(maxsize=16_384)  # murmur2 in Python costs ~1 µs a fill; active accounts repeat
def log_partition(account_id: str, partitions: int) -> int:
    """The log partition of an account: the partition Kafka's default partitioner gives its
    ``account_id`` key (:mod:`stream.log.partitioner`), so that input partition ``p`` of the
    account topics feeds log partition ``p`` alone."""
    return default_partition(account_id.encode(), partitions)


def home_partition(topic: str, value: Any, partitions: int) -> int:
    """The input partition a producer keying as SPEC §4 says gives an account event (its
    account's log partition), 0 for anything else: where offline tools and tests put the
    messages they route."""
    account = value.get("account_id") if isinstance(value, dict) and topic in ACCOUNT_TOPICS else None
    return log_partition(account, partitions) if isinstance(account, str) else 0


def deadletter_output(topic: str, partition: int, offset: int | None, raw: bytes, error: Exception,
                      qualifier: str = "") -> Output:
    record = deadletter_record(topic, partition, offset, raw, error, qualifier)
    return Output(DEADLETTER, record["id"], record)


# --------------------------------------------------------------------------- routing
class Parsed(NamedTuple):
    """An input the router validated, as it went into a log entry: where it came from, the
    decoded value and the event parsed from it. The worker hands these to its own engine
    with the log record they went into, so that it need not decode and parse them again
    (:func:`apply_parsed`: the same outputs as :func:`apply_entry` on the entry)."""

    topic: str
    partition: int
    offset: int
    value: dict
    event: Event


def route_input(
    topic: str, partition: int, offset: int, raw: bytes | None, log_partitions: int, max_bytes: int,
    max_record_bytes: int | None = None,
) -> tuple[list[int], bytes | None, Output | None]:
    """What the router does with one input message: ``(log partitions, entry, None)`` or
    ``([], None, dead-letter output)`` for what is invalid on its own (tombstone, oversized,
    undecodable, schema-invalid, misrouted). Account events go to their account's partition
    (:func:`log_partition`), which must be the input partition they came from (else they are
    ``misrouted``); listing, flash, settlement and tick events to every one.
    An entry that would not fit in a log record of ``max_record_bytes`` is oversized too
    (re-encoding can lengthen numbers: ``1e5`` becomes ``100000.0``)."""
    targets, entry, dead, _parsed = _route(topic, partition, offset, raw, log_partitions, max_bytes, max_record_bytes)
    return targets, entry, dead


def _route(
    topic: str, partition: int, offset: int, raw: bytes | None, log_partitions: int, max_bytes: int,
    max_record_bytes: int | None,
) -> tuple[list[int], bytes | None, Output | None, Parsed | None]:
    """:func:`route_input`, and the :class:`Parsed` input of an entry."""
    try:
        if raw is None:
            raise Undecodable("empty message (tombstone)")
        if len(raw) > max_bytes:
            raise SchemaViolation(f"{len(raw)} bytes exceeds the {max_bytes}-byte limit", reason="oversized")
        obj = decode(raw)
        event = parse(topic, obj)
        entry = encode_entry(topic, partition, offset, obj)
        if max_record_bytes is not None and len(entry) + len(RECORD_HEAD) + len(RECORD_TAIL) > max_record_bytes:
            raise SchemaViolation(f"re-encoded as a {len(entry)}-byte log entry, beyond the {max_record_bytes}-byte "
                                  "log record limit", reason="oversized")
    except Rejected as error:
        return [], None, deadletter_output(topic, partition, offset, raw or b"", error), None
    except Exception as error:  # a bug, never bad input: dead-letter it rather than stop the router
        log.error("router: unexpected %r on %s/%d@%d", error, topic, partition, offset)
        return [], None, deadletter_output(topic, partition, offset, raw or b"", error), None
    parsed = Parsed(topic, partition, offset, obj, event)
    if topic in ACCOUNT_TOPICS:
        home = log_partition(event.account_id, log_partitions)  # type: ignore[union-attr]
        if home != partition:
            error = Misrouted(f"account {event.account_id!r} belongs to partition {home} (Kafka's default "  # type: ignore[union-attr]
                              f"partitioner on the account_id key), not {partition}: publish keyed by account_id "
                              "with the default (murmur2) partitioner", field="account_id")
            return [], None, deadletter_output(topic, partition, offset, raw or b"", error), None
        return [home], entry, None, parsed
    return list(range(log_partitions)), entry, None, parsed


def merge_inputs(
    runs: Iterable[tuple[str, int, Iterable[tuple[int | None, int, bytes | None]]]],
) -> list[tuple[str, int, int, bytes | None]]:
    """Input messages of several ``(topic, partition, [(timestamp, offset, raw)])`` runs as
    ``(topic, partition, offset, raw)`` in broker-timestamp order, each run's own order
    kept even where its timestamps go back (ties: topic as listed in SPEC §4, partition,
    offset). The router orders every fetch this way; the replay from raw inputs too."""
    order = {t: i for i, t in enumerate(INPUT_TOPICS)}
    keyed = [[(ts or 0, order.get(topic, len(order)), partition, offset, topic, raw) for ts, offset, raw in messages]
             for topic, partition, messages in runs]
    return [(topic, p, o, raw) for _ts, _i, p, o, topic, raw in heapq.merge(*keyed, key=lambda m: m[:4])]


class RecordBuilder:
    """Collects routed entries per log partition and cuts them into records of at most
    ``max_record_bytes`` (a single larger entry gets a record of its own). Each record
    keeps, beside its bytes, the :class:`Parsed` inputs of its entries, in order."""

    def __init__(self, max_record_bytes: int):
        self.max_record_bytes = max_record_bytes
        self.open: dict[int, tuple[list[bytes], list[Parsed | None], int]] = {}
        self.records: list[tuple[int, bytes, list[Parsed | None]]] = []

    def add(self, partitions: Iterable[int], entry: bytes, parsed: Parsed | None = None) -> None:
        empty = len(RECORD_HEAD) + len(RECORD_TAIL)
        for p in partitions:
            entries, inputs, size = self.open.get(p, ([], [], empty))
            if entries and size + len(entry) + 1 > self.max_record_bytes:
                self.records.append((p, encode_record(entries), inputs))
                entries, inputs, size = [], [], empty
            entries.append(entry)
            inputs.append(parsed)
            self.open[p] = (entries, inputs, size + len(entry) + 1)

    def finish_parsed(self) -> list[tuple[int, bytes, list[Parsed | None]]]:
        """Every record, ``(log partition, record, its entries' Parsed inputs)``, in the
        order their entries arrived per partition (the order across partitions is irrelevant)."""
        records = self.records + [(p, encode_record(entries), inputs)
                                  for p, (entries, inputs, _) in sorted(self.open.items())]
        self.open, self.records = {}, []
        return records


def route_batch_parsed(
    messages: Iterable[tuple[str, int, int, bytes | None]], log_partitions: int, max_bytes: int, max_record_bytes: int
) -> tuple[list[tuple[int, bytes, list[Parsed | None]]], list[Output]]:
    """The router on a batch of input messages ``(topic, partition, offset, raw)``, in the
    order given: the log records to write, ``(log partition, record, Parsed inputs of its
    entries)``, and the dead letters for what was invalid on its own."""
    builder = RecordBuilder(max_record_bytes)
    rejected = []
    for topic, partition, offset, raw in messages:
        targets, entry, dead, parsed = _route(topic, partition, offset, raw, log_partitions, max_bytes, max_record_bytes)
        if dead is not None:
            rejected.append(dead)
        else:
            builder.add(targets, entry, parsed)  # type: ignore[arg-type]
    return builder.finish_parsed(), rejected


def route_batch(
    messages: Iterable[tuple[str, int, int, bytes | None]], log_partitions: int, max_bytes: int, max_record_bytes: int
) -> tuple[list[tuple[int, bytes]], list[Output]]:
    """:func:`route_batch_parsed` without the Parsed inputs: ``(log partition, record)``."""
    records, rejected = route_batch_parsed(messages, log_partitions, max_bytes, max_record_bytes)
    return [(p, record) for p, record, _inputs in records], rejected


# --------------------------------------------------------------------------- applying
Entry = Any  # a decoded log entry (a dict, as the router wrote it) or a BadRecord


@dataclass(frozen=True)
class BadRecord:
    """Stands, as its only entry, for a ``margin.log`` message that is not a record the
    router wrote: applying it publishes a dead letter and changes nothing."""

    raw: bytes
    problem: str


def record_entries(raw: bytes | None) -> list[Any]:
    """The entries of a log record, decoded (each still to be checked when applied), or
    ``[BadRecord]`` for a message that is not a record."""
    try:
        obj = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError as exc:
        return [BadRecord(raw or b"", f"not JSON: {exc}")]
    if not isinstance(obj, dict) or not isinstance(obj.get("entries"), list):
        return [BadRecord(raw or b"", 'expected a JSON object with an "entries" list')]
    return obj["entries"]


class LogEntry(NamedTuple):
    """One entry of ``margin.log``, where it stands."""

    partition: int  # the log partition
    offset: int  # the log record's offset
    index: int  # the entry's index in its record
    entry: Any  # the decoded entry (:data:`Entry`)


def expand(records: Iterable[tuple[int, int, bytes | None]]) -> list[LogEntry]:
    """Every entry of the log records ``(log partition, log offset, record bytes)``, in order."""
    return [LogEntry(p, o, i, entry) for p, o, raw in records for i, entry in enumerate(record_entries(raw))]


def entry_source(entry: Any) -> tuple[str, int, int, dict] | None:
    """``(topic, partition, offset, value)`` of a well-formed entry, else None."""
    try:
        src, value = entry["source"], entry["value"]
        source = str(src["topic"]), int(src["partition"]), int(src["offset"]), value
    except (TypeError, KeyError, ValueError):
        return None
    return source if isinstance(value, dict) else None


def apply_entry(state: EngineState, log_partition: int, log_offset: int, entry: Any, index: int = 0) -> list[Output]:
    """Apply one decoded entry (the ``index``-th of its log record) to the state of its log
    partition; return what to publish.

    A rejected event becomes a dead-letter record. A broadcast event (listing, flash,
    settlement, tick) is rejected identically in every partition, so only partition 0
    reports it. An entry the router did not write is reported against the log record. An
    unexpected exception -- a bug, never bad input -- is dead-lettered as
    ``internal_error`` rather than stopping the partition; a replay does the same."""
    if isinstance(entry, BadRecord):
        error = SchemaViolation(f"bad log record: {entry.problem}")
        return [deadletter_output(LOG, log_partition, log_offset, entry.raw, error)]
    source = entry_source(entry)
    if source is None:
        error = SchemaViolation(f"bad log entry #{index}: expected {{source: {{topic, partition, offset}}, value: {{...}}}}")
        return [deadletter_output(LOG, log_partition, log_offset, orjson.dumps(entry), error, f"#{index}")]
    topic, src_partition, src_offset, obj = source
    try:
        event = parse(topic, obj)
    except Exception as error:
        if not take_in(state, topic, src_partition, src_offset):
            return []
        return _not_applied(log_partition, topic, src_partition, src_offset, obj, error)
    return apply_parsed(state, log_partition, Parsed(topic, src_partition, src_offset, obj, event))


def apply_parsed(state: EngineState, log_partition: int, parsed: Parsed) -> list[Output]:
    """Apply one entry whose input is already parsed (the worker's router parsed it): the
    outputs :func:`apply_entry` gives for the entry the router wrote for ``parsed``. A
    copy of an input this log partition has taken in before (re-forwarded by a router
    after a crash) is skipped whole (:func:`stream.core.state.take_in`)."""
    if not take_in(state, parsed.topic, parsed.partition, parsed.offset):
        return []
    try:
        cause = Cause(parsed.topic, parsed.partition, parsed.offset, parsed.event.event_id)
        _, outputs = apply(state, parsed.event, cause, parsed.value)
        return outputs
    except Exception as error:
        return _not_applied(log_partition, parsed.topic, parsed.partition, parsed.offset, parsed.value, error)


def _not_applied(log_partition: int, topic: str, src_partition: int, src_offset: int, obj: dict,
                 error: Exception) -> list[Output]:
    """The dead letter for an entry the engine rejected, or could not apply because of a bug."""
    if isinstance(error, Rejected):
        if topic in ACCOUNT_TOPICS or log_partition == 0:
            return [deadletter_output(topic, src_partition, src_offset, orjson.dumps(obj), error)]
        return []
    log.error("engine: unexpected %r applying %s/%d@%d in log partition %d", error, topic, src_partition,
              src_offset, log_partition)
    qualifier = "" if topic in ACCOUNT_TOPICS else f"log partition {log_partition}"
    return [deadletter_output(topic, src_partition, src_offset, orjson.dumps(obj), error, qualifier)]


def apply_record_entries(
    state: EngineState, log_partition: int, log_offset: int, raw: bytes | None
) -> Iterator[tuple[Any, list[Output]]]:
    """Apply a log record entry by entry, yielding ``(entry, outputs)``."""
    for index, entry in enumerate(record_entries(raw)):
        yield entry, apply_entry(state, log_partition, log_offset, entry, index)


def apply_record(state: EngineState, log_partition: int, log_offset: int, raw: bytes | None) -> list[Output]:
    """Apply one log record to the state of its log partition; return what to publish."""
    outputs: list[Output] = []
    for _entry, produced in apply_record_entries(state, log_partition, log_offset, raw):
        outputs.extend(produced)
    return outputs


def replay(records: Iterable[tuple[int, int, bytes | None]], states: dict[int, EngineState] | None = None) -> list[tuple[int, int, Output]]:
    """Apply ``(log_partition, log_offset, raw record)`` in order, one state per
    partition; return ``(partition, offset, output)`` for everything published."""
    states = {} if states is None else states
    published = []
    for partition, offset, raw in records:
        state = states.setdefault(partition, EngineState())
        for out in apply_record(state, partition, offset, raw):
            published.append((partition, offset, out))
    return published
