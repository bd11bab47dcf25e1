"""The framework floor (run by ``python -m bench``): a bare faust agent doing one table
write per event, nothing else.

    BENCH_TOPIC=... BENCH_N=... BENCH_OUT=file.json python -m bench.faust_floor

Uses the processor's own faust options (:func:`stream.worker.app.faust_config`: memory
store, raw serializers, the same commit and session settings) from the ``KPIMARGIN_*``
environment. The agent counts events; at the ``BENCH_N``-th it writes the wall-clock
times of its first and last event to ``BENCH_OUT`` and keeps idling until stopped.
"""

from __future__ import annotations

import os
import time

import faust
import orjson

from stream.settings import Settings
from stream.worker.app import faust_config
from stream.kafka.shim import patch_fetch_wait


def main() -> None:
    settings = Settings.from_env()
    total = int(os.environ["BENCH_N"])
    out = os.environ["BENCH_OUT"]
    patch_fetch_wait(settings.fetch_max_wait_ms)
    # the processor creates its topics itself (topic_allow_declare=False); this bare agent
    # lets faust declare its table's changelog, as a plain faust app does
    app = faust.App(settings.app_id, autodiscover=False, **{**faust_config(settings), "topic_allow_declare": True})
    topic = app.topic(os.environ["BENCH_TOPIC"], key_type=bytes, value_type=bytes, partitions=settings.partitions)
    table = app.Table("floor", partitions=settings.partitions, key_type=bytes, value_type=bytes)
    seen = {"n": 0, "first": 0.0}

    @app.agent(topic, name="floor")
    async def floor(stream):
        async for event in stream.events():
            table[event.key] = event.value  # the one table write per event
            seen["n"] += 1
            if seen["n"] == 1:
                seen["first"] = time.time()
            if seen["n"] == total:
                with open(out + ".tmp", "wb") as fh:
                    fh.write(orjson.dumps({"first": seen["first"], "last": time.time(), "events": total}))
                os.replace(out + ".tmp", out)

    from faust.worker import Worker

    Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
