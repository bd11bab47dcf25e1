"""Streaming and audit commands of ``kpimargin``: worker, broker, topics, publish, consume,
demo; replay, explain, export, report."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Iterable

import orjson

from stream.core.topics import INPUT_TOPICS, LOG, OUTPUT_TOPICS
from stream.settings import Settings


def settings_help() -> str:
    """The settings as ``VAR (default): meaning``, the meanings aligned and wrapped."""
    import textwrap

    rows = [(f"{env} ({default or 'unset'})", meaning) for env, default, meaning in Settings.documentation()]
    width = max(len(name) for name, _ in rows) + 2
    lines = ["settings (environment variables, VAR (default): meaning):"]
    for name, meaning in rows:
        wrapped = textwrap.wrap(meaning, width=max(40, 118 - width)) or [""]
        lines.append(f"  {name + ':':<{width}}{wrapped[0]}")
        lines += [" " * (width + 2) + more for more in wrapped[1:]]
    return "\n".join(lines)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ValueError as exc:
        print(f"kpimargin: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _connected(reads: Iterable[str] = ()) -> Settings:
    """The settings, once a broker of their bootstrap list answered (else
    :class:`stream.kafka.clients.BrokerUnavailable`: one line, status 1, from ``main``; or
    :class:`stream.kafka.clients.AuthenticationFailed`: status 2) and
    the topics the command ``reads`` exist (else :class:`stream.kafka.clients.MissingTopic`)."""
    from stream.kafka.clients import check_broker

    settings = _settings()
    asyncio.run(check_broker(settings, reads))
    return settings


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.kafka.clients import ensure_topics
    from stream.worker.app import run_worker
    from stream.worker.http import PortTaken, bind
    from stream.worker.router import PartitionCountError, check_copartitioned

    settings = _settings()
    try:  # the HTTP API's port first: a port in use is one line before anything else starts
        http_socket = bind(settings) if settings.http_port else None
    except PortTaken as exc:
        print(f"kpimargin worker: {exc}", file=sys.stderr)
        return 2
    settings = _connected()
    asyncio.run(ensure_topics(settings))
    try:
        asyncio.run(check_copartitioned(settings))
    except PartitionCountError as exc:
        print(f"kpimargin worker: {exc}", file=sys.stderr)
        return 2
    run_worker(settings, http_socket)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    if args.engine == "kafka":
        return _run_kafka_broker(args)
    given = [opt for opt, value in (("--nodes", args.nodes), ("--data-dir", args.data_dir), ("--version", args.version))
             if value is not None]
    if given:
        print(f"kpimargin broker: {', '.join(given)} only with --engine kafka", file=sys.stderr)
        return 2
    return _run_embedded_broker(9092 if args.port is None else args.port)


def _run_embedded_broker(port: int) -> int:
    """``kpimargin broker``: Tansu as a child process. The port is checked first (taken: one
    line, exit 1); one line on stdout once the broker answers on it (as with ``--engine
    kafka``); Tansu's own warnings follow on stderr; SIGINT/SIGTERM stop it (exit 0);
    Tansu exiting by itself is one line, exit 1."""
    import subprocess
    import threading

    from stream.kafka.ports import port_in_use, wait_for_port
    from stream.kafka.tansu import broker_command

    host = "127.0.0.1"
    if not 1 <= port <= 65535:
        print(f"kpimargin broker: --port {port} is not a TCP port (1-65535)", file=sys.stderr)
        return 2
    if port_in_use(port, host):
        print(f"kpimargin broker: port {port} on {host} is already in use (another broker?); choose another with "
              "--port", file=sys.stderr)
        return 1
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    proc = subprocess.Popen(broker_command(port, host), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    ready = threading.Event()
    early: list[str] = []  # Tansu's output before it answered: shown only if it fails

    def relay() -> None:
        for raw in proc.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").rstrip()
            if ready.is_set():
                print(line, file=sys.stderr, flush=True)
            elif line:
                early.append(line)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    stopped = threading.Event()

    def on_signal(signum, frame) -> None:
        stopped.set()
        proc.terminate()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        if wait_for_port(port, host, 20.0, give_up=lambda: proc.poll() is not None or stopped.is_set()):
            ready.set()
    except TimeoutError:
        pass
    if not ready.is_set():
        if proc.poll() is None:
            proc.terminate()
        code = proc.wait()
        reader.join(timeout=2)
        if stopped.is_set():
            return 0
        why = next((line for line in reversed(early) if "panicked" in line or "rror" in line), early[-1] if early else "")
        print(f"kpimargin broker: Tansu did not answer on {host}:{port} (exit status {code})"
              + (f": {why}" if why else ""), file=sys.stderr)
        return 1
    print(f"kpimargin broker: embedded Kafka-protocol broker (Tansu, memory storage), bootstrap {host}:{port}; "
          "Ctrl-C stops it", flush=True)
    code = proc.wait()
    reader.join(timeout=2)
    if stopped.is_set():
        return 0
    print(f"kpimargin broker: Tansu exited (status {code})", file=sys.stderr)
    return 1


class _Stop(Exception):
    """SIGINT or SIGTERM arrived while the cluster was starting."""


def _run_kafka_broker(args: argparse.Namespace) -> int:
    """``kpimargin broker --engine kafka``: one line on stdout once the cluster is ready, then
    run until SIGINT/SIGTERM (exit 0) or until a node dies (exit 1)."""
    import logging
    import threading

    from stream.kafka import dist as kafka_dist
    from stream.kafka.apache import KAFKA_VERSION, KafkaBrokerError, KafkaCluster, missing_tools

    version = args.version or KAFKA_VERSION
    nodes = 1 if args.nodes is None else args.nodes
    port = 9092 if args.port is None else args.port
    try:
        cached = kafka_dist.is_cached(version)
        cluster = KafkaCluster(nodes=nodes, port=port, data_dir=args.data_dir, version=version)
    except (KafkaBrokerError, ValueError) as exc:
        print(f"kpimargin broker: {exc}", file=sys.stderr)
        return 2
    reason = missing_tools(need_maven=not cached)
    if reason:
        print(f"kpimargin broker: {reason}", file=sys.stderr)
        return 2
    if args.port is not None:
        from stream.kafka.ports import port_in_use

        taken = [p for p in range(port, port + 2 * nodes) if port_in_use(p)]
        if taken:
            print(f"kpimargin broker: port {taken[0]} on 127.0.0.1 is already in use (another broker?); the "
                  f"{nodes}-node cluster needs ports {port}-{port + 2 * nodes - 1}; choose another with --port",
                  file=sys.stderr)
            return 1
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the readiness polls' retries are not news
    stopping = threading.Event()
    starting = True

    def on_signal(signum, frame):
        nonlocal starting
        stopping.set()
        if starting:  # once only: a second signal must not interrupt the cleanup
            starting = False
            raise _Stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        try:
            cluster.start()
            starting = False
            if stopping.is_set():
                raise _Stop()
            plural = "node" if nodes == 1 else "nodes"
            print(f"kpimargin broker: Apache Kafka {version}, {nodes} {plural}, bootstrap {cluster.bootstrap} "
                  f"(logs: {cluster.data_dir})", flush=True)
            while not stopping.wait(0.5):
                dead = [n for n in cluster.node_ids if cluster.pid(n) is None]
                if dead:
                    print(f"kpimargin broker: Kafka node {dead[0]} exited: {cluster.log_tail(dead[0])}",
                          file=sys.stderr)
                    code = 1
                    break
        except _Stop:
            pass
        except KafkaBrokerError as exc:
            print(f"kpimargin broker: {exc}", file=sys.stderr)
            code = 1
        except Exception as exc:  # one line, never a traceback
            print(f"kpimargin broker: {type(exc).__name__}: {exc}", file=sys.stderr)
            code = 1
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # the cleanup below is not interrupted
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def cmd_topics(args: argparse.Namespace) -> int:
    from stream.kafka.clients import all_topics, ensure_topics

    settings = _connected()
    asyncio.run(ensure_topics(settings))
    for name in all_topics(settings):
        print(name)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from stream.kafka.clients import publish

    try:
        lines = Path(args.file).read_bytes().splitlines()
    except OSError as exc:
        print(f"kpimargin publish: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    settings = _connected()
    count = len(asyncio.run(publish(settings, args.topic, lines)))
    print(f"published {count} messages to {settings.topic(args.topic)}", file=sys.stderr)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    from stream.kafka.clients import read_topic

    settings = _connected(reads=[args.topic])

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
    from stream.cli.demo import run_demo

    return run_demo(quiet=args.quiet, export_dir=args.export)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from stream.kafka.apache import KAFKA_VERSION

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("worker", help="run a faust worker of the processor", epilog=settings_help(), formatter_class=fmt)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("broker", help="run a broker in the foreground: the embedded Tansu or real Apache Kafka")
    p.add_argument("--engine", choices=("embedded", "kafka"), default="embedded",
                   help="embedded: Tansu, memory storage, needs nothing but pip; kafka: Apache Kafka (KRaft) from "
                        "its jars, fetched once with Maven and cached, needs java (default: embedded)")
    p.add_argument("--port", type=int, default=None, metavar="PORT",
                   help="client port of the (first) broker (default: 9092; with kafka, node i listens on "
                        "PORT+i-1 and its controller on PORT+N+i-1)")
    p.add_argument("--nodes", type=int, default=None, metavar="N",
                   help="kafka only: number of KRaft nodes, each broker and controller (default: 1)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="kafka only: storage and logs, kept and reused across runs (default: a temporary "
                        "directory removed at exit)")
    p.add_argument("--version", default=None, metavar="V",
                   help=f"kafka only: Apache Kafka version to fetch and run (default: {KAFKA_VERSION}; 3.9.x runs too)")
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
    p.add_argument("--export", metavar="DIR", help="write every topic of the run to DIR (kpimargin export's format) "
                   "before stopping, for replay/explain/report/backtest --from-log --dir DIR")
    p.set_defaults(func=cmd_demo)

    source_help = "read the topics from this export directory (kpimargin export) instead of the broker"
    p = sub.add_parser("replay", help="recompute every requirement and call from margin.log and compare with what was published",
                       epilog=settings_help(), formatter_class=fmt)
    p.add_argument("--dir", metavar="EXPORT_DIR", help=source_help)
    p.add_argument("--account", metavar="A", help="compare only this account's records")
    p.add_argument("--contract", metavar="C", help="compare only records whose positions include C or caused by C")
    p.add_argument("--from-time", metavar="T", help="compare only records with as_of >= T (ISO-8601 UTC)")
    p.add_argument("--to-time", metavar="T", help="compare only records with as_of <= T (ISO-8601 UTC)")
    p.add_argument("--from-offset", type=int, metavar="N", help="compare only records caused by margin.log records at offsets >= N (per log partition; a record holds a whole router batch)")
    p.add_argument("--to-offset", type=int, metavar="N", help="compare only records caused by margin.log records at offsets <= N")
    p.add_argument("--show", type=int, default=3, metavar="N", help="print the first N mismatches (default 3)")
    p.add_argument("--from-inputs", action="store_true",
                   help="rebuild the log from the raw input topics (router logic, timestamp order) instead of margin.log")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("explain", help="an account's IM, equity, components, risk vectors and chain of events at a time",
                       epilog=settings_help(), formatter_class=fmt)
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("--at", metavar="TIME", help="event time (ISO-8601 UTC); default: the whole log")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--dir", metavar="EXPORT_DIR", help=source_help)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("export", help="write topics to DIR/<topic>.jsonl (one record a line)",
                       epilog=settings_help(), formatter_class=fmt)
    p.add_argument("topics", nargs="+", metavar="TOPIC", choices=topics)
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="PNG step plot of an account's IM and equity with its margin calls",
                       epilog=settings_help(), formatter_class=fmt)
    p.add_argument("account", metavar="ACCOUNT")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--dir", metavar="EXPORT_DIR", help=source_help)
    p.set_defaults(func=cmd_report)


# --------------------------------------------------------------------------- audit commands
def _audit_topics(topics: list[str], directory: str | None, command: str) -> dict | None:
    """Topics from an export directory or the broker; None (after a message) when unreadable."""
    from stream.audit.inputs import load_topics

    try:
        return load_topics(topics, directory, None if directory else _connected(reads=topics))
    except (OSError, ValueError) as exc:
        print(f"kpimargin {command}: {exc}", file=sys.stderr)
        return None


def _time_arg(value: str | None, name: str, command: str) -> int | None:
    """An optional ISO-8601 UTC option as microseconds; exits 2 when it does not parse."""
    from stream.core.errors import Rejected
    from stream.core.timeutil import parse_time_us

    if value is None:
        return None
    try:
        return parse_time_us(value, name)
    except Rejected as exc:
        print(f"kpimargin {command}: {name}: {exc.detail}", file=sys.stderr)
        raise SystemExit(2) from None


def _engine_config():
    """The engine knobs the worker used (call update threshold, dedup horizon), from the env."""
    return _settings().engine_config()


def cmd_replay(args: argparse.Namespace) -> int:
    from stream.audit.progress import Progress
    from stream.audit.replay import Filters, format_report, run_replay
    from stream.core.topics import CALLS, REQUIREMENTS

    filters = Filters(args.account, args.contract, _time_arg(args.from_time, "--from-time", "replay"),
                      _time_arg(args.to_time, "--to-time", "replay"), args.from_offset, args.to_offset)
    if args.from_inputs:
        from stream.audit.inputs import log_from_inputs
        from stream.core.topics import INPUT_TOPICS

        topics = _audit_topics([*INPUT_TOPICS, REQUIREMENTS, CALLS], args.dir, "replay")
        if topics is None:
            return 2
        settings = _settings()
        topics[LOG] = log_from_inputs(topics, settings.partitions, settings.max_message_bytes, settings.log_record_max_bytes)
    else:
        topics = _audit_topics([LOG, REQUIREMENTS, CALLS], args.dir, "replay")
        if topics is None:
            return 2
    from stream.worker.lifecycle import tune_gc

    tune_gc(_settings().gc_young_objects)  # what was read stays to the end: frozen, never scanned again
    report = run_replay(topics, filters, _engine_config(), Progress(0))
    source = f"{LOG} rebuilt from the input topics" if args.from_inputs else LOG
    print(format_report(report, args.show, source))
    return 0 if report.ok else 1


def cmd_explain(args: argparse.Namespace) -> int:
    from stream.audit.explain import explain, format_explain, to_json
    from stream.audit.inputs import log_entries

    at_us = _time_arg(args.at, "--at", "explain")
    topics = _audit_topics([LOG], args.dir, "explain")
    if topics is None:
        return 2
    try:
        result = explain(log_entries(topics[LOG]), args.account, at_us, _engine_config())
    except KeyError as exc:
        print(f"kpimargin explain: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.buffer.write(to_json(result) + b"\n")
    else:
        print(format_explain(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from stream.audit.export import write_export
    from stream.audit.inputs import read_broker

    topics = list(dict.fromkeys(args.topics))
    settings = _connected(reads=topics)
    records = asyncio.run(read_broker(settings, topics))
    for topic in topics:
        path, count = write_export(args.out, topic, records[topic])
        print(f"{settings.topic(topic)}: {count} records -> {path}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from stream.audit.report import account_history, plot_report
    from stream.core.topics import CALLS, REQUIREMENTS

    topics = _audit_topics([REQUIREMENTS, CALLS], args.dir, "report")
    if topics is None:
        return 2
    requirements, calls = account_history(topics, args.account)
    try:
        path = plot_report(requirements, calls, args.account, args.out)
    except ValueError as exc:
        print(f"kpimargin report: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: {len(requirements)} requirements, {len(calls)} calls of account {args.account}", file=sys.stderr)
    return 0
