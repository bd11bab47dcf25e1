"""The engine state table as the persister and the agent see it: faust's ``state`` table
(its local store and its changelog topic, co-partitioned with ``margin.log``)."""

from __future__ import annotations

from typing import Iterator

from stream.worker.outbox import Outbox
from stream.kafka.shim import writing_for


class TableStore:
    """The table's local store (:class:`stream.worker.persister.RowStore`). faust recovers it
    from the changelog on assignment; the persister writes it only with acknowledged rows."""

    def __init__(self, table):
        self.data = table.data

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, p: int, rows: list[tuple[bytes, bytes]]) -> None:
        with writing_for(p):
            for key, value in rows:
                self.data[key] = value

    def delete(self, p: int, keys: list[bytes]) -> None:
        with writing_for(p):
            for key in keys:
                self.data.pop(key, None)

    def partition(self, p: int) -> Iterator[tuple[str, bytes]]:
        """Partition ``p``'s stored rows, ``(row key without the partition, value)``."""
        prefix = f"{p}|".encode()
        for key, value in list(self.data.items()):
            if key.startswith(prefix) and value is not None:
                yield key[len(prefix):].decode(), value


class OutboxChangelog:
    """The table's changelog topic (:class:`stream.worker.persister.Changelog`), written
    straight through the producer in batches -- not with ``table[key] = value``: faust
    buffers those and gives up flushing after 100 ms, so offsets could be committed before
    the rows were sent."""

    def __init__(self, outbox: Outbox, topic: str):
        self.outbox, self.topic = outbox, topic

    async def send(self, rows: dict[int, list[tuple[bytes, bytes | None]]]) -> list:
        """Every partition's rows in one submission: the producer sends them in one request."""
        for p, partition_rows in rows.items():
            for key, value in partition_rows:
                self.outbox.add(self.topic, key, value, p)
        await self.outbox.flush()
        return self.outbox.deliveries()
