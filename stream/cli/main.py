"""``kpimargin`` command line (also ``python -m stream``).

Core commands (``whatif``) import no Kafka code; streaming commands import it lazily.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import orjson


class InputFileError(Exception):
    pass


def _load_json(path: str) -> Any:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InputFileError(f"{path}: not valid JSON: {exc}") from None


def cmd_whatif(args: argparse.Namespace) -> int:
    from stream.core.whatif import WhatIfInputError, whatif

    try:
        listings = [(p, _load_json(p)) for p in args.contract]
        flashes = [(p, _load_json(p)) for p in args.flash or []]
        fills = [(args.fills, _load_json(args.fills))]
        result = whatif(listings, fills, args.at, flashes)
    except (InputFileError, WhatIfInputError) as exc:
        print(f"kpimargin whatif: {exc}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpimargin",
        description="Streaming initial-margin processor for bounded KPI futures.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="let a failure's Python traceback through (also KPIMARGIN_LOG_LEVEL=debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("whatif", help="pre-trade margin of a set of fills, on files, no Kafka")
    p.add_argument("--contract", action="append", required=True, metavar="LISTING.json",
                   help="a listing message or a JSON list of them (repeatable)")
    p.add_argument("--fills", required=True, metavar="FILLS.json", help="a JSON list of fills (any accounts)")
    p.add_argument("--at", required=True, metavar="ISO_TIME", help="event time to margin at (a clock tick)")
    p.add_argument("--flash", action="append", metavar="FLASH.json",
                   help="a flash message or a JSON list of them (repeatable)")
    p.set_defaults(func=cmd_whatif)

    from stream.backtest.cli import add_commands as add_backtest_commands

    add_backtest_commands(sub)

    from stream.cli import stream_commands  # faust and aiokafka are hard dependencies: imported lazily there

    stream_commands.add_commands(sub)
    return parser


def _debugging(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("KPIMARGIN_LOG_LEVEL", "").lower() == "debug"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Whatever it fails on reaches the user as one line naming the
    command, with status 1 (2 for settings that are wrong on their face); ``--debug`` or
    ``KPIMARGIN_LOG_LEVEL=debug`` lets the traceback through instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"kpimargin {args.command}"
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - one line for the user, never a traceback
        if _debugging(args):
            raise
        from stream.kafka.clients import BrokerUnavailable, ConnectionConfigError, MissingTopic

        if isinstance(exc, (ConnectionConfigError, MissingTopic)):
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        if isinstance(exc, BrokerUnavailable):
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
        if isinstance(exc, OSError):
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            print(f"{name}: {where}{exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"{name}: {type(exc).__name__}: {exc} (--debug shows where)", file=sys.stderr)
        return 1
