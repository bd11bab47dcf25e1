"""What a fault test's failure message says when the outputs differ from the publication
order: which log entries were applied out of that order, and how a record differs."""

from __future__ import annotations

import asyncio

from stream.core.state import EngineState, take_in
from stream.core.topics import INPUT_TOPICS
from stream.kafka.clients import changelog_topic, read_topic
from stream.log.ordered_log import entry_source, record_entries
from stream.worker.persister import row_key as table_key


def differing_keys(got: dict, want: dict) -> list:
    """The keys whose values differ between two dicts (one missing counts), sorted."""
    return sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))


def record_difference(got: dict, want: dict, width: int = 300) -> str:
    """The fields of a published record that differ from the expected one (each side cut at
    ``width`` characters)."""
    keys = differing_keys(got, want)
    return "; ".join(f"{k}: published {str(got.get(k))[:width]}, expected {str(want.get(k))[:width]}" for k in keys)


def order_inversions(cluster, log_records, shown: int = 10) -> str:
    """Where each log partition's order departs from the publication order, for a failure
    message: the entries applied (copies skipped, as the engine does) after one published
    earlier in the log partition but later in time, with another
    timestamp (one :meth:`Cluster.publish_messages` run shares a timestamp: its order across
    partitions is the merge's tie-break), with their broker timestamps; all of them are
    written to ``inversions.txt`` in the test's directory."""
    index = {(t, p, o): i for i, (t, p, o, _m) in enumerate(cluster.published)}

    async def stamped(topic: str) -> dict[tuple[str, int, int], int]:
        return {(topic, p, o): t async for p, o, t, _k, _v in read_topic(cluster.settings, topic, idle_timeout_s=1.0)}

    stamps = {}
    for topic in INPUT_TOPICS:
        stamps.update(asyncio.run(stamped(topic)))
    found = []
    latest: dict[int, tuple[int, tuple]] = {}  # per log partition: the entry published last of those applied
    taken: dict[int, EngineState] = {}  # per log partition: which source offsets it took in (only ``taken`` used)
    for log_p, log_o, value in sorted(log_records):
        for entry in record_entries(value):
            source = entry_source(entry)
            if source is None or source[:3] not in index:
                continue
            if not take_in(taken.setdefault(log_p, EngineState()), *source[:3]):
                continue  # a copy, which the engine skips
            i = index[source[:3]]
            last = latest.get(log_p)
            if last is not None and i < last[0] and stamps.get(source[:3]) != stamps.get(last[1]):
                found.append(f"log {log_p}@{log_o}: {source[:3]} (published #{i}, ts {stamps.get(source[:3])}) after "
                             f"{last[1]} (published #{last[0]}, ts {stamps.get(last[1])})")
            if last is None or i > last[0]:
                latest[log_p] = (i, source[:3])
    (cluster.tmp / "inversions.txt").write_text("\n".join(found) + "\n")
    return (f"{len(found)} entries applied after a later-published one, e.g. {found[:shown]}; "
            f"{repeated_entries(log_records, shown)}")


def repeated_entries(log_records, shown: int = 10) -> str:
    """Inputs the log holds more than once within a log partition (a log record written
    twice: a produce retried after the broker had taken it), with where."""
    where: dict[tuple, list[str]] = {}
    for log_p, log_o, value in sorted(log_records):
        for entry in record_entries(value):
            source = entry_source(entry)
            if source is not None:
                where.setdefault((log_p, *source[:3]), []).append(f"{log_p}@{log_o}")
    repeated = {k: v for k, v in where.items() if len(v) > 1}
    return f"{len(repeated)} inputs in the log more than once, e.g. {list(repeated.items())[:shown]}"


def replay_agreement(outputs: dict, replayed: dict) -> str:
    """Whether the published records equal a replay of the log (then the log itself holds
    the order that differs from the publication order; else the workers departed from it)."""
    differ = differing_keys(outputs, replayed)
    return (f"published vs a replay of the log: {len(set(outputs) - set(replayed))} not replayed, "
            f"{len(set(replayed) - set(outputs))} not published, {len(differ)} differ in all")


def changelog_history(cluster, partition: int, row_key: str, shown: int = 12) -> str:
    """Every changelog record of one row, and of its partition's ``meta`` row, in offset
    order (offset, timestamp, the first bytes of the value): whether the row's last write
    was lost, overtaken or never made."""
    from dataclasses import replace

    wanted = {table_key(partition, row_key), table_key(partition, "meta")}
    settings = replace(cluster.settings, topic_prefix="")

    async def history() -> list[str]:
        name = changelog_topic(cluster.settings)
        return [f"{key.decode()}@{o} ts {t}: {(value or b'<tombstone>')[:160].decode(errors='replace')}"
                async for p, o, t, key, value in read_topic(settings, name, idle_timeout_s=1.0)
                if p == partition and key in wanted]

    lines = asyncio.run(history())
    (cluster.tmp / f"changelog-{partition}-{row_key.replace(':', '_')}.txt").write_text("\n".join(lines) + "\n")
    return f"its changelog history, last {shown} of {len(lines)}: {lines[-shown:]}"
