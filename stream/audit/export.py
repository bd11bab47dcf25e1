"""Topic messages as the audit tools hold them, and the export format: ``DIR/<topic>.jsonl``, one message a line."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import orjson


@dataclass(frozen=True)
class TopicMessage:
    """One message of a topic: where it is, and its raw key and value bytes."""

    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None
    value: bytes | None


def sort_messages(records: Iterable[TopicMessage]) -> list[TopicMessage]:
    """Messages in (partition, offset) order: each partition's own order."""
    return sorted(records, key=lambda r: (r.partition, r.offset))


def export_line(record: TopicMessage) -> bytes:
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


def parse_export_line(line: bytes) -> TopicMessage:
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
    return TopicMessage(int(obj["partition"]), int(obj["offset"]), obj.get("timestamp"), key, value)


def export_path(directory: str | Path, topic: str) -> Path:
    return Path(directory) / f"{topic}.jsonl"


def write_export(directory: str | Path, topic: str, records: Iterable[TopicMessage]) -> tuple[Path, int]:
    """Write one topic to ``DIR/<topic>.jsonl`` in (partition, offset) order."""
    path = export_path(directory, topic)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "wb") as out:
        for record in sort_messages(records):
            out.write(export_line(record) + b"\n")
            count += 1
    return path, count


def read_export(directory: str | Path, topic: str) -> list[TopicMessage]:
    """One topic from an export directory; a missing file is an error naming it."""
    path = export_path(directory, topic)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no export of {topic} (run `kpimargin export {topic} --out {directory}`)")
    with open(path, "rb") as src:
        return sort_messages(parse_export_line(line) for line in src if line.strip())
