"""How engine state rows are stored in the table and its changelog: versioned, so that a
crash halfway through writing a batch's rows can always be rolled back to the last
complete batch.

A batch's rows are written one Kafka record each, then a ``meta`` row naming the batch's
last log offset. A crash can persist any subset of the rows without their ``meta``: a
clock row from after a tick next to an account row from before the fills that preceded
it, say. Re-applying the batch against such a mix is wrong (the fills would meet the
later clock). So every stored row carries the log offset of the batch that wrote it and
the row's value before that batch::

    {"v": 1041, "n": 187, "row": {...}, "prev": {...} | null}

and a row whose ``v`` is beyond the durable ``meta`` offset counts as its ``prev``
(``null``: the row did not exist). Loaded this way the state is exactly the state at
``meta``, whatever subset of the next batch landed, and re-applying the log from
``meta + 1`` reproduces every row and every output. ``n`` is the byte length of ``row``,
so that a stored value yields its row without being parsed.

Every ``meta`` row also carries the *digest* of the partition's rows as of its offset, as
its writer holds them: the sum, modulo 2^128, of a 128-bit BLAKE2b hash of each row's key
and JSON bytes (:func:`digest`; order-free, so each round updates it with the rows it
changes, :func:`stage_with_digest`). A loader that computes another digest from what it read holds
rows no writer ever held together as of that offset -- a worker the group had already
replaced (a *zombie*, thawed after a freeze longer than the session timeout) wrote its
late rows or its ``meta`` after its successor's -- and rebuilds the partition from the
log instead of trusting them (:mod:`stream.worker.rebuild`). A digest that matches means the
rows are exactly one writer's state as of ``meta``: the engine is deterministic and every
writer applies the same log in order, so that state is the true one.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable, TypeVar

K = TypeVar("K")
_HEAD = b'{"v":'
_MOD = 1 << 128


def row_hash(key: bytes | str, row: bytes) -> int:
    """The 128-bit hash of one row (its full table key and its JSON bytes)."""
    if isinstance(key, str):
        key = key.encode()
    return int.from_bytes(hashlib.blake2b(key + b"\x00" + row, digest_size=16).digest(), "big")


def digest(rows: Iterable[tuple[bytes | str, bytes]]) -> int:
    """The digest of a set of rows ``(table key, JSON bytes)``; deleted rows (``null``)
    count as absent."""
    return sum(row_hash(key, row) for key, row in rows if row != b"null") % _MOD


def update(value: int, key: bytes | str, before: bytes | None, after: bytes | None) -> int:
    """``value`` with the row at ``key`` changed from ``before`` to ``after`` (None or
    ``null``: absent)."""
    if before is not None and before != b"null":
        value -= row_hash(key, before)
    if after is not None and after != b"null":
        value += row_hash(key, after)
    return value % _MOD


def format_digest(value: int) -> str:
    return f"{value:032x}"


def encode(version: int, row: bytes, prev: bytes | None) -> bytes:
    """A stored row: ``row`` (JSON bytes) written by the batch ending at log offset
    ``version``, and the row's value before it (``prev``, None when it did not exist)."""
    prev = b"null" if prev is None else prev  # a row that did not exist and a deleted one read alike
    return b'%s%d,"n":%d,"row":%s,"prev":%s}' % (_HEAD, version, len(row), row, prev)


def split(stored: bytes) -> tuple[int, bytes, bytes | None]:
    """``(version, row, prev)`` of a stored row, without parsing the JSON of the rows."""
    if not stored.startswith(_HEAD):
        raise ValueError("not a versioned row")
    v_end = stored.index(b",", len(_HEAD))
    version = int(stored[len(_HEAD):v_end])
    n_start = v_end + len(b',"n":')
    n_end = stored.index(b",", n_start)
    size = int(stored[n_start:n_end])
    row_start = n_end + len(b',"row":')
    row = stored[row_start:row_start + size]
    prev = stored[row_start + size + len(b',"prev":'):-1]
    return version, row, None if prev == b"null" else prev


def effective(stored: bytes | None, durable_offset: int) -> bytes | None:
    """The row's value as of the durable ``meta`` log offset: the stored row if its batch
    is durable, else the value before that batch (None: no row)."""
    if stored is None:
        return None
    version, row, prev = split(stored)
    return row if version <= durable_offset else prev


def stage(rows: Iterable[tuple[K, bytes]], stored: Callable[[K], bytes | None], version: int,
          durable_offset: int) -> list[tuple[K, bytes]]:
    """What a batch ending at log offset ``version`` writes: each changed row (JSON bytes,
    ``null`` for a deleted one) with its value as of the durable offset as ``prev``."""
    return [(key, encode(version, row, effective(stored(key), durable_offset))) for key, row in rows]


def stage_with_digest(rows: Iterable[tuple[K, bytes]], stored: Callable[[K], bytes | None], version: int,
                      durable_offset: int, value: int) -> tuple[list[tuple[K, bytes]], int]:
    """:func:`stage`, and the digest after the batch writes ``rows`` over the rows as of the
    durable offset whose digest is ``value`` (each row's previous value read once, for both)."""
    staged = []
    for key, row in rows:
        prev = effective(stored(key), durable_offset)
        staged.append((key, encode(version, row, prev)))
        value = update(value, key, prev, row)
    return staged, value


def load(stored: Iterable[tuple[K, bytes]], durable_offset: int) -> tuple[dict[K, bytes], list[K]]:
    """The rows as of the durable offset -- ``{key: row JSON}``, deleted ones left out --
    and the keys to write again at the next batch: those newer than the offset (rolled
    back: their stored value is not their value) and those stored as deleted (to be
    replaced by tombstones, should a crash have come between the two)."""
    live: dict[K, bytes] = {}
    rewrite: list[K] = []
    for key, value in stored:
        version, row, prev = split(value)
        current = row if version <= durable_offset else prev
        if version > durable_offset or current == b"null":
            rewrite.append(key)
        if current is not None and current != b"null":
            live[key] = current
    return live, rewrite


def deleted(rows: Iterable[tuple[K, bytes]]) -> list[K]:
    """The keys of rows a batch deleted: once its meta is durable, real tombstones may
    replace them (a tombstone that never lands leaves a deleted row, which reads the same)."""
    return [key for key, row in rows if row == b"null"]
