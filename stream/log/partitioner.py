"""Kafka's default partitioner, in pure Python: ``murmur2(key) & 0x7fffffff % partitions``.

The Java client, aiokafka and (with ``partitioner=murmur2_random``) librdkafka place a
keyed record this way. The processor routes each account's fills and collateral movements
to the log partition this gives their ``account_id``, so that input partition ``p`` of the
account topics feeds log partition ``p`` alone (co-partitioning, as Kafka Streams requires
of the topics it joins): the router of log partition ``p`` then reads one partition of each
account topic, and every log partition has exactly one writer.
"""

from __future__ import annotations

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``), unsigned."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a record with this key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
