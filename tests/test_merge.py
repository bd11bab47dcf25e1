"""The router's merge (stream/merge.py) and Kafka's default partitioner
(stream/partitioner.py), without a broker: records are forwarded in timestamp order across
input partitions, and never past a partition that may still bring an older one."""

from __future__ import annotations

import random

from aiokafka.partitioner import DefaultPartitioner

from stream.log.merge import End, Fetched, TaskInputs, release
from stream.log.ordered_log import log_partition, route_input
from stream.log.partitioner import default_partition, murmur2
from stream.core.topics import FILLS, LISTINGS, SETTLEMENTS, TICKS

FILLS0, TICKS0, LIST0, SETTLE0 = (FILLS, 0), (TICKS, 0), (LISTINGS, 0), (SETTLEMENTS, 0)


def task(*partitions) -> TaskInputs:
    return TaskInputs(partitions=list(partitions))


def fetched(ts: int, offset: int, at: float = 1.0) -> Fetched:
    return Fetched(ts, offset, b"{}", at)


def test_murmur2_matches_kafkas_reference_values_and_aiokafka():
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2 (signed Java ints)
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
             b"abc": 479470107}
    for key, signed in cases.items():
        assert murmur2(key) == signed & 0xFFFFFFFF, key
    rnd = random.Random(5)
    partitioner = DefaultPartitioner()
    for _ in range(500):
        key = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 40)))
        partitions = list(range(rnd.randrange(1, 50)))
        assert default_partition(key, len(partitions)) == partitioner(key, partitions, partitions)


def test_an_account_event_on_another_partition_than_its_key_gives_is_misrouted():
    account = "ACME"
    home = log_partition(account, 4)
    fill = (b'{"trade_id":"T","account_id":"ACME","contract_id":"C","side":"BUY","price":1,"notional":1,'
            b'"ts":"2026-04-01T00:00:00Z"}')
    targets, entry, dead = route_input(FILLS, home, 0, fill, 4, 65536)
    assert targets == [home] and entry is not None and dead is None
    targets, entry, dead = route_input(FILLS, (home + 1) % 4, 0, fill, 4, 65536)
    assert targets == [] and entry is None
    assert dead.value["reason"] == "misrouted" and dead.value["field"] == "account_id"
    assert f"partition {home}" in dead.value["detail"]


def test_oldest_first_across_partitions_once_every_other_one_is_known_caught_up():
    t = task(FILLS0, TICKS0)
    for offset, ts in enumerate((10, 20, 30)):
        t.add(FILLS0, fetched(ts, offset))
    t.add(TICKS0, fetched(25, 0))
    released, ask, wait = release(t, {}, 0.0, 2.0)
    # 10 and 20 go (older than the tick's 25, the other head), then the tick; the fill at
    # 30 waits: the ticks partition has nothing buffered and its end was never asked
    assert [(tp, r.timestamp) for tp, r in released] == [(FILLS0, 10), (FILLS0, 20), (TICKS0, 25)]
    assert ask == {TICKS0} and wait is None
    assert t.forwarded == {FILLS0: 2, TICKS0: 1}
    # an end offset asked before the fill arrived does not count; one asked after it does
    assert release(t, {TICKS0: End(1, asked=0.5)}, 0.0, 2.0)[1] == {TICKS0}
    released, ask, _ = release(t, {TICKS0: End(1, asked=1.5)}, 0.0, 2.0)
    assert [r.timestamp for _tp, r in released] == [30] and not ask


def test_a_partition_with_records_left_to_fetch_holds_newer_records_back():
    """A backlog: the broker has more fills than were fetched; a tick newer than the last
    fill fetched must wait for them (a late fill would meet a clock from its future)."""
    t = task(FILLS0, TICKS0)
    t.add(FILLS0, fetched(10, 0))
    t.add(TICKS0, fetched(50, 7))
    released, ask, _ = release(t, {TICKS0: End(8, 1.5)}, 0.0, 2.0)
    assert [r.timestamp for _tp, r in released] == [10]  # the fill goes: the tick's own partition has it buffered
    released, ask, _ = release(t, {FILLS0: End(5, 1.5), TICKS0: End(8, 1.5)}, 0.0, 2.0)
    assert released == [] and not ask  # four fills are still to be fetched: the tick waits
    for offset in range(1, 5):
        t.add(FILLS0, fetched(10 + offset, offset, at=3.0))
    released, ask, _ = release(t, {FILLS0: End(5, 1.5), TICKS0: End(8, 1.5)}, 0.0, 3.0)
    # the fills' end was asked after the tick arrived (1.5 > 1.0) and all of it is fetched now
    assert [(tp[0], r.timestamp) for tp, r in released] == [(FILLS, 11), (FILLS, 12), (FILLS, 13), (FILLS, 14),
                                                            (TICKS, 50)] and not ask


def test_ties_go_by_topic_as_spec_lists_them_then_partition_then_offset():
    t = task(FILLS0, TICKS0, LIST0, SETTLE0)
    t.add(FILLS0, fetched(5, 0))
    t.add(TICKS0, fetched(5, 0))
    t.add(SETTLE0, fetched(5, 0))
    t.add(LIST0, fetched(5, 0))
    ends = {tp: End(1, 9.0) for tp in (FILLS0, TICKS0, LIST0, SETTLE0)}
    released, _, _ = release(t, ends, 0.0, 10.0)
    assert [tp for tp, _r in released] == [LIST0, SETTLE0, TICKS0, FILLS0]


def test_idle_wait_holds_a_record_past_an_empty_partition_for_that_long():
    t = task(FILLS0, TICKS0)
    t.add(FILLS0, fetched(10, 0, at=1.0))
    ends = {FILLS0: End(1, 2.0), TICKS0: End(0, 2.0)}
    released, ask, wait = release(t, ends, 0.25, 1.1)
    assert released == [] and not ask and abs(wait - 0.15) < 1e-9
    released, _, wait = release(t, ends, 0.25, 1.3)
    assert [r.timestamp for _tp, r in released] == [10] and wait is None


def test_records_a_task_is_past_are_not_buffered_again():
    t = task(FILLS0)
    t.fetched[FILLS0] = 5
    assert not t.add(FILLS0, fetched(1, 3))
    assert t.add(FILLS0, fetched(1, 5)) and t.fetched[FILLS0] == 6 and t.buffered() == 1


def test_random_arrivals_release_the_global_timestamp_order():
    """Records of several partitions arrive in random interleavings and chunks; with fresh
    end offsets after each arrival, what is released is always the timestamp order."""
    rnd = random.Random(9)
    for _ in range(50):
        parts = [(FILLS, 0), (TICKS, 0), (LISTINGS, 0), (LISTINGS, 1)]
        published = sorted(((rnd.randrange(1000), rnd.choice(parts)) for _ in range(60)))
        per_part: dict = {tp: [] for tp in parts}
        order = []
        for ts, tp in published:
            per_part[tp].append((ts, len(per_part[tp])))
            order.append((tp, len(per_part[tp]) - 1))
        t = task(*parts)
        cursor = {tp: 0 for tp in parts}
        out = []
        now = 0.0
        while len(out) < len(order):
            now += 1.0
            tp = rnd.choice(parts)
            take = rnd.randrange(0, 4)
            for ts, off in per_part[tp][cursor[tp]:cursor[tp] + take]:
                t.add(tp, Fetched(ts, off, None, now))
            cursor[tp] = min(len(per_part[tp]), cursor[tp] + take)
            ends = {p: End(len(per_part[p]), now + 0.5) for p in parts}
            released, _ask, _ = release(t, ends, 0.0, now + 1)
            out += [(p, r.offset) for p, r in released]
        # ties in timestamp resolve by topic rank, partition, offset: compare on that key
        def key(item):
            p, off = item
            ts = per_part[p][off][0]
            return (ts, {FILLS: 4, TICKS: 3, LISTINGS: 0}[p[0]], p[1], off)
        assert out == sorted(out, key=key) and len(out) == len(order)
