"""Streaming commands of ``kpimargin``: worker, broker, topics, publish, consume, demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson

from .settings import Settings
from .topics import INPUT_TOPICS, LOG, OUTPUT_TOPICS


def settings_help() -> str:
    lines = ["settings (environment variables):"]
    for env, default, meaning in Settings.documentation():
        lines.append(f"  {meaning} [env: {env}] (default: {default or 'unset'})")
    return "\n".join(lines)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        print(f"kpimargin: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_worker(args: argparse.Namespace) -> int:
    from .kafka import ensure_topics
    from .processor import run_worker

    settings = _settings()
    asyncio.run(ensure_topics(settings))
    run_worker(settings)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from .broker import broker_command

    command = broker_command(args.port)
    print(f"kpimargin: embedded Kafka-protocol broker (Tansu, memory storage) on 127.0.0.1:{args.port}", file=sys.stderr)
    os.execv(command[0], command)
    return 0  # pragma: no cover


def cmd_topics(args: argparse.Namespace) -> int:
    from .kafka import all_topics, ensure_topics

    settings = _settings()
    asyncio.run(ensure_topics(settings))
    for name in all_topics(settings):
        print(name)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from .kafka import publish

    settings = _settings()
    try:
        lines = Path(args.file).read_bytes().splitlines()
    except OSError as exc:
        print(f"kpimargin publish: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    count = len(asyncio.run(publish(settings, args.topic, lines)))
    print(f"published {count} messages to {settings.topic(args.topic)}", file=sys.stderr)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from .kafka import read_topic

    settings = _settings()

    async def run() -> None:
        out = sys.stdout.buffer
        async for partition, offset, _ts, _key, value in read_topic(
            settings, args.topic, from_beginning=args.from_beginning, idle_timeout_s=args.timeout
        ):
            try:
                obj = orjson.loads(value) if value is not None else None
            except orjson.JSONDecodeError:
                obj = {"undecodable": value.decode("utf-8", "replace")}
            out.write(orjson.dumps(obj) + b"\n")
            out.flush()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(quiet=args.quiet)


def add_commands(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("worker", help="run a faust worker of the processor", epilog=settings_help(), formatter_class=fmt)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("broker", help="run the embedded Kafka-protocol broker (Tansu) in the foreground")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("topics", help="create the processor's topics (idempotent) and list them", epilog=settings_help(), formatter_class=fmt)
    p.set_defaults(func=cmd_topics)

    topics = [*INPUT_TOPICS, LOG, *OUTPUT_TOPICS]
    p = sub.add_parser("publish", help="publish a JSONL file to a topic (keyed as SPEC §4 says)", epilog=settings_help(), formatter_class=fmt)
    p.add_argument("topic", choices=topics)
    p.add_argument("file", metavar="FILE.jsonl")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("consume", help="print a topic's messages as JSONL", epilog=settings_help(), formatter_class=fmt)
    p.add_argument("topic", choices=topics)
    p.add_argument("--from-beginning", action="store_true", help="start at the oldest message (default: only new ones)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds without a message")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("demo", help="embedded broker + worker + the shipped scenario; prints margin calls",
                       epilog=settings_help(), formatter_class=fmt)
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    p.set_defaults(func=cmd_demo)


def start_worker_process(settings: Settings, log_path: Path | None = None) -> subprocess.Popen:
    """A worker as a child process (used by the demo and the integration tests)."""
    env = {**os.environ, **settings.env()}
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "stream", "worker"], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
