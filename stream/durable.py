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
"""

from __future__ import annotations

_HEAD = b'{"v":'


def encode(version: int, row: bytes, prev: bytes | None) -> bytes:
    """A stored row: ``row`` (JSON bytes) written by the batch ending at log offset
    ``version``, and the row's value before it (``prev``, None when it did not exist)."""
    return b'%s%d,"n":%d,"row":%s,"prev":%s}' % (_HEAD, version, len(row), row, prev if prev is not None else b"null")


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
