"""The worker's HTTP API, timed from a client on the same machine:
``python -m bench.http [--broker embedded|kafka] [--requests N]``.

One worker with the API on; 10 contracts listed (variants of the two example listings),
the clock set, and one account given a position in each (10 fills). Then, over one
keep-alive connection, one request at a time:

* ``whatif_http``: ``POST /v1/accounts/{id}/whatif`` with one hypothetical fill -- the
  issue's target is p99 under 2 ms for an account with 10 positions;
* ``account_http``: ``GET /v1/accounts/{id}``;
* the same what-if while the worker applies fills offered at 1,000 a second, and while it
  drains a backlog of 20,000 fills (a request waits for the log record being applied: the
  loop runs one thing at a time, and a record holds up to ``KPIMARGIN_ROUTER_BATCH_MAX``
  entries under a backlog).

The idle what-if is part of ``python -m bench`` too (``whatif_http_p99_ms``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import orjson

from stream.core.topics import COLLATERAL, FILLS, LISTINGS, TICKS
from stream.harness.processes import start_worker_process, stop_process
from stream.harness.scenario import publish_phases
from stream.kafka.clients import ensure_topics
from stream.kafka.ports import free_port

from . import stack

ACCOUNT = "BENCH-HTTP"
TOKEN = "bench"


def _contracts() -> list[dict]:
    base = stack._listings()  # noqa: SLF001 - the benchmark's own listings
    out = []
    for i in range(10):
        listing = dict(base[i % 2])
        listing["contract_id"] = f"{listing['contract_id']}-V{i}"
        out.append(listing)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 3), "p99_ms": round(_pct(ms, 0.99), 3),
            "max_ms": round(max(ms), 3)}


async def _timed(session, method: str, url: str, body: bytes | None, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with session.request(method, url, data=body, headers=headers) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {url}: HTTP {response.status}")
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _offer(settings, items: list[dict], rate: float) -> None:
    """Publish ``items`` at ``rate`` a second, each on its own schedule."""
    from aiokafka import AIOKafkaProducer

    from stream.kafka.clients import client_kwargs, key_for

    producer = AIOKafkaProducer(**client_kwargs(settings), acks=1, linger_ms=0)
    await producer.start()
    try:
        t0 = time.monotonic()
        for i, item in enumerate(items):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(settings.topic(FILLS), orjson.dumps(item), key=key_for(FILLS, item))
        await producer.flush()
    finally:
        await producer.stop()


async def measure(bootstrap: str, requests: int, log_dir: Path) -> dict:
    import aiohttp

    port = free_port()
    settings = stack.bench_settings(bootstrap, f"http{int(time.time())}", http_port=port, http_token=TOKEN)
    await ensure_topics(settings)
    proc = start_worker_process(settings, log_dir / f"worker-{settings.app_id}.log")
    base = f"http://127.0.0.1:{port}"
    contracts = _contracts()
    try:
        fills = [{"trade_id": f"H{i}", "account_id": ACCOUNT, "contract_id": c["contract_id"], "side": "BUY",
                  "price": round(c["lower"] + (c["upper"] - c["lower"]) / 3, 2), "notional": 10_000, "ts": stack.FILL_DAY}
                 for i, c in enumerate(contracts)]
        await publish_phases(settings, [
            {"title": "listings", "topic": LISTINGS, "messages": contracts},
            {"title": "tick", "topic": TICKS, "messages": [{"ts": stack.FILL_DAY}]},
            {"title": "deposit", "topic": COLLATERAL, "messages": [{"movement_id": "D", "account_id": ACCOUNT,
                                                                    "amount": "1000000.00", "ts": stack.FILL_DAY}]},
            {"title": "fills", "topic": FILLS, "messages": fills}], timeout_s=180)
        whatif = orjson.dumps({"fills": [{"contract_id": contracts[3]["contract_id"], "side": "SELL",
                                          "price": contracts[3]["lower"] + 1, "notional": 2_500}]})
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            deadline = time.monotonic() + 60
            while True:  # until the account holds its 10 positions
                async with session.get(f"{base}/v1/accounts/{ACCOUNT}",
                                       headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                    body = await response.read()
                    if response.status == 200 and len(orjson.loads(body)["positions"]) == 10:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the account never held 10 positions: {response.status} {body[:200]!r}")
                await asyncio.sleep(0.1)
            url = f"{base}/v1/accounts/{ACCOUNT}"
            await _timed(session, "POST", url + "/whatif", whatif, 200)  # warm-up
            result = {"positions": 10, "whatif": _summary(await _timed(session, "POST", url + "/whatif", whatif, requests)),
                      "account": _summary(await _timed(session, "GET", url, None, requests))}
            # while the worker applies fills offered at 1,000/s (each a small log record)
            offering = asyncio.ensure_future(_offer(settings, stack.fills(6_000, "HR", seed=8), 1_000.0))
            await asyncio.sleep(1.0)  # the offered rate's steady state, not its start
            result["whatif_at_1000_fills_s"] = _summary(await _timed(session, "POST", url + "/whatif", whatif,
                                                                     max(200, requests // 5)))
            await offering
            # while it drains a backlog (records of up to KPIMARGIN_ROUTER_BATCH_MAX entries)
            backlog = stack._fill_records(stack.fills(20_000, "HL", seed=9))  # noqa: SLF001
            producing = asyncio.ensure_future(stack.produce_all(settings, settings.topic(FILLS), backlog))
            loaded = await _timed(session, "POST", url + "/whatif", whatif, max(200, requests // 5))
            await producing
            result["whatif_draining_backlog"] = _summary(loaded)
        return result
    finally:
        stop_process(proc)
        await stack.drop_topics(settings)  # the embedded broker slows down as it holds more records


def main(argv: list[str] | None = None) -> int:
    from bench.__main__ import start_broker

    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    broker, name = start_broker(args.broker)
    try:
        import tempfile

        result = asyncio.run(measure(broker.bootstrap, args.requests, Path(tempfile.mkdtemp(prefix="kpimargin-bench-"))))
    finally:
        broker.stop()
    print(f"{name}: {orjson.dumps(result).decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
