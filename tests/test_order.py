"""Order across topics with several workers, compared with the order the inputs were
PUBLISHED -- not with a replay of whatever order the log got.

One producer publishes, strictly in order (each message acknowledged before the next is
sent, timestamps strictly increasing) and without pauses: listings, deposits, fills, a tick
far enough ahead that a fill applied after it would be outside the dedup horizon, more
fills, a settlement. The workers run in several shapes: one, two and three from the start;
one joined by a second and a third mid-stream; two started into the full backlog; two with
one stopped and another started mid-stream (rebalances). In every shape no input is
dead-lettered, and every published requirement, call and dead letter (by id and content)
equals what the pure engine computes when it applies the inputs one after the other in the
order they were published, as a single state: an expectation that knows nothing of the
router, the log, its partitions or the workers.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from dataclasses import replace

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from stream.core.topics import CALLS, COLLATERAL, DEADLETTER, FILLS, LISTINGS, REQUIREMENTS, SETTLEMENTS, TICKS
from stream.kafka.clients import client_kwargs, key_for

from .conftest import TSLA, load_example
from .streaming_support import Cluster, fresh_settings, in_publication_order

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

WEB = load_example("web_listing.json")
ACCOUNTS = [f"K{i:03d}" for i in range(40)]


def deposits(rnd: random.Random) -> list[dict]:
    """A deposit into every account, on April 2."""
    return [{"movement_id": f"D-{a}", "account_id": a, "amount": f"{rnd.randint(1, 40) * 250}.00",
             "ts": "2026-04-02T00:00:00Z"} for a in ACCOUNTS]


def fill_messages(rnd: random.Random, prefix: str, n: int, ts: str) -> list[dict]:
    """``n`` fills at ``ts`` in either contract, random accounts, sides, prices in range."""
    out = []
    for i in range(n):
        contract = rnd.choice((TSLA, WEB))
        lower, upper = contract["lower"], contract["upper"]
        price = rnd.randrange(lower, upper) if upper > 1000 else round(rnd.uniform(lower, upper), 2)
        out.append({"trade_id": f"{prefix}{i}", "account_id": rnd.choice(ACCOUNTS), "contract_id": contract["contract_id"],
                    "side": rnd.choice(("BUY", "SELL")), "price": price, "notional": rnd.randint(100, 20000), "ts": ts})
    return out


def scenario(seed: int = 5) -> list[tuple[str, dict]]:
    rnd = random.Random(seed)
    messages = [(LISTINGS, TSLA), (LISTINGS, WEB)]
    messages += [(COLLATERAL, m) for m in deposits(rnd)]
    messages += [(FILLS, m) for m in fill_messages(rnd, "A", 150, "2026-04-03T12:00:00Z")]
    # 30 days on: a fill of April 3 applied after this tick is beyond the 7-day dedup horizon
    messages.append((TICKS, {"ts": "2026-05-03T00:00:00Z"}))
    messages += [(FILLS, m) for m in fill_messages(rnd, "B", 150, "2026-05-03T12:00:00Z")]
    messages.append((COLLATERAL, {"movement_id": "TOPUP", "account_id": ACCOUNTS[0], "amount": "100000.00",
                                  "ts": "2026-05-03T12:00:00Z"}))
    messages.append((SETTLEMENTS, {"contract_id": WEB["contract_id"], "value": 131.5, "ts": "2026-06-05T00:00:00Z"}))
    return messages


def publish_in_order(settings, messages, on_progress=None) -> list[tuple[str, int, int, dict]]:
    """Each message acknowledged before the next is sent, with a timestamp 1 ms or more
    after the previous one (a cross-topic order at millisecond resolution needs it:
    records of one millisecond are ordered by topic). Returns (topic, partition, offset,
    message) in publication order."""

    async def run():
        producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=0)
        await producer.start()
        published = []
        last_ms = 0
        try:
            for i, (topic, message) in enumerate(messages):
                last_ms = max(int(time.time() * 1000), last_ms + 1)
                raw = isinstance(message, bytes)  # bad input, as it is (unkeyed)
                md = await producer.send_and_wait(settings.topic(topic), message if raw else orjson.dumps(message),
                                                  key=None if raw else key_for(topic, message), timestamp_ms=last_ms)
                published.append((topic, md.partition, md.offset, message))
                if on_progress is not None:
                    on_progress(i + 1)
        finally:
            await producer.stop()
        return published

    return asyncio.run(run())


SHAPES = ["one", "two", "three", "join_mid_stream", "backlog", "rebalance"]


@pytest.mark.parametrize("shape", SHAPES)
def test_outputs_equal_the_publication_order_whatever_the_workers(broker, tmp_path, shape):
    settings = fresh_settings(broker, tmp_path)
    cluster = Cluster(settings, tmp_path)
    messages = scenario()
    events: dict[int, object] = {}
    try:
        if shape in ("one", "two", "three", "join_mid_stream", "rebalance"):
            for _ in range({"one": 1, "two": 2, "three": 3, "join_mid_stream": 1, "rebalance": 2}[shape]):
                cluster.start_worker()
        third = len(messages) // 3

        def on_progress(n: int) -> None:
            if shape == "join_mid_stream" and n in (third, 2 * third):
                cluster.start_worker()  # a worker joins while the producer publishes
            if shape == "rebalance" and n == len(messages) // 2:
                events["stopped"] = cluster.workers[0]
                from stream.harness.processes import stop_process

                stop_process(cluster.workers[0])  # gracefully: its partitions move to the other worker
                cluster.workers.remove(events["stopped"])
                cluster.start_worker()  # and a new one joins: another rebalance

        published = publish_in_order(settings, messages, on_progress)
        if shape == "backlog":
            cluster.start_worker()
            cluster.start_worker()
        cluster.wait_consumed(timeout_s=240)
        outputs = cluster.outputs()
    finally:
        cluster.stop()
    assert_publication_order(outputs, published, settings)


def assert_publication_order(outputs: dict[str, dict], published: list, settings) -> None:
    """No input dead-lettered, and every published record (by id and content) what the pure
    engine gives applying the inputs in the order they were published."""
    dead = [r for r in outputs.values() if r["_topic"] == DEADLETTER]
    assert not dead, f"{len(dead)} good inputs dead-lettered, e.g. {[(d['reason'], d['source']) for d in dead[:5]]}"
    expected = in_publication_order(published, settings)
    assert {r["_topic"] for r in expected.values()} >= {REQUIREMENTS, CALLS}
    missing = sorted(set(expected) - set(outputs))
    extra = sorted(set(outputs) - set(expected))
    assert not missing and not extra, (
        f"{len(missing)} expected records never published (e.g. {[expected[i]['cause'] for i in missing[:3]]}), "
        f"{len(extra)} published that publication order does not give (e.g. {[outputs[i]['cause'] for i in extra[:3]]})")
    for rid, record in expected.items():
        assert outputs[rid] == record, rid


def alternating(seed: int = 11, rounds: int = 20) -> list[tuple[str, list[dict]]]:
    """Runs of fills, each followed by a tick two days on: every run boundary is a chance for
    a tick to pass fills published before it (their requirements then see another time to
    settlement, or the fills fall outside the dedup horizon)."""
    rnd = random.Random(seed)
    runs: list[tuple[str, list[dict]]] = [(LISTINGS, [TSLA, WEB]), (COLLATERAL, deposits(rnd))]
    day = datetime.date(2026, 4, 3)
    for r in range(rounds):
        runs.append((FILLS, fill_messages(rnd, f"R{r}-", 25, f"{day.isoformat()}T12:00:00Z")))
        day += datetime.timedelta(days=2)
        runs.append((TICKS, [{"ts": f"{day.isoformat()}T00:00:00Z"}]))
    return runs


def test_batches_split_by_the_router_still_give_the_publication_order(broker, tmp_path):
    """Runs of fills and ticks (:func:`alternating`), each run published as batches of
    several records (acknowledged before the next run, a later timestamp each run), and a
    router that takes one record a fetch, so that it often holds part of a partition's last
    batch. The embedded broker answers ListOffsets after such a batch with its first offset
    + 1; a merge that trusted that end let a tick pass records published before it (fills
    dead-lettered as outside the dedup horizon, or requirements at another time to
    settlement). One worker, live while the runs are published."""
    settings = replace(fresh_settings(broker, tmp_path), router_batch_max=1)
    cluster = Cluster(settings, tmp_path)
    try:
        cluster.start_worker()
        cluster.publish_messages(alternating())
        cluster.wait_consumed(timeout_s=240)
        outputs = cluster.outputs()
    finally:
        cluster.stop()
    assert_publication_order(outputs, cluster.published, settings)


def test_a_fill_published_to_the_wrong_partition_is_dead_lettered_as_misrouted(broker, tmp_path):
    """Co-partitioning needs producers to key fills by account with the default
    partitioner; one that does not is told so precisely, and the rest flows on."""
    settings = replace(fresh_settings(broker, tmp_path), partitions=2)
    cluster = Cluster(settings, tmp_path)
    cluster.start_worker()
    account = "ACME"
    from stream.log.ordered_log import log_partition

    wrong = 1 - log_partition(account, 2)

    async def publish_wrong():
        producer = AIOKafkaProducer(**client_kwargs(settings), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(settings.topic(LISTINGS), orjson.dumps(TSLA), key=b"x")
            await producer.send_and_wait(settings.topic(FILLS), orjson.dumps(
                {"trade_id": "W", "account_id": account, "contract_id": TSLA["contract_id"], "side": "BUY",
                 "price": 460000, "notional": 1000, "ts": "2026-04-03T00:00:00Z"}), key=account.encode(), partition=wrong)
            await producer.send_and_wait(settings.topic(COLLATERAL), orjson.dumps(
                {"movement_id": "OK", "account_id": account, "amount": "5.00", "ts": "2026-04-03T00:00:00Z"}),
                key=account.encode())
        finally:
            await producer.stop()

    try:
        asyncio.run(publish_wrong())
        outputs = cluster.wait_for_outputs(
            lambda o: any(r["_topic"] == DEADLETTER for r in o.values())
            and any(r["_topic"] == REQUIREMENTS and r["cause"]["id"] == "OK" for r in o.values()),
            what="the misrouted fill's dead letter and the deposit's requirement")
    finally:
        cluster.stop()
    dead = [r for r in outputs.values() if r["_topic"] == DEADLETTER]
    assert [(d["reason"], d["field"], d["source"]["partition"]) for d in dead] == [("misrouted", "account_id", wrong)]
