"""The ``kpimargin backtest`` command (wired in by :func:`add_commands`).

Three modes::

    kpimargin backtest PANEL.jsonl --out DIR [--es-method mc|analytic] [--alpha A] [--param k=v ...]
                       [--seed S] [--sims N]
    kpimargin backtest --generate NAME --series N --length L --seed S --out FILE.jsonl
    kpimargin backtest --from-log [--dir EXPORT_DIR] --out DIR

Exit status: 0 when every gate passes, 1 when one fails, 2 on bad input or a failure to
read or write (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import orjson

PROG = "kpimargin backtest"


class Usage(Exception):
    """Bad arguments or input: one line, exit status 2."""


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)


def _int(value: str | None, flag: str, default: int | None = None, minimum: int = 0) -> int:
    if value is None:
        if default is None:
            raise Usage(f"{flag} is required")
        return default
    try:
        number = int(value)
    except ValueError:
        raise Usage(f"{flag}: must be an integer, got {value!r}") from None
    if number < minimum:
        raise Usage(f"{flag}: must be >= {minimum}, got {number}")
    return number


def param_flags(args: argparse.Namespace) -> dict[str, Any]:
    """``--alpha``, ``--es-method`` and every ``--param k=v`` as a params mapping."""
    flags: dict[str, Any] = {}
    if args.alpha is not None:
        try:
            flags["alpha"] = float(args.alpha)
        except ValueError:
            raise Usage(f"--alpha: must be a number, got {args.alpha!r}") from None
    if args.es_method is not None:
        if args.es_method not in ("mc", "analytic"):
            raise Usage(f"--es-method: must be 'mc' or 'analytic', got {args.es_method!r}")
        flags["es_method"] = args.es_method
    for item in args.param or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise Usage(f"--param: expected k=v, got {item!r}")
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            value = raw
        flags[key.strip()] = value
    return flags


class _SeriesProgress:
    """A one-line progress bar over series on a terminal (silent otherwise)."""

    def __init__(self, total: int):
        from stream.audit.progress import Progress

        class SeriesBar(Progress):
            def line(self, done: int, elapsed: float, width: int = 30) -> str:
                return super().line(done, elapsed, width).replace(" entries", " series").replace(" ev/s", " series/s")

        self.bar = SeriesBar(total, label="backtest")

    def __call__(self, done: int) -> None:
        self.bar.update(done)

    def close(self, done: int) -> None:
        self.bar.close(done)


def command_line(args: argparse.Namespace) -> str:
    words = ["kpimargin", "backtest", args.panel, "--out", args.out]
    for flag, value in (("--alpha", args.alpha), ("--es-method", args.es_method)):
        if value is not None:
            words += [flag, value]
    for item in args.param or []:
        words += ["--param", item]
    if args.seed is not None:
        words += ["--seed", args.seed]
    if args.sims is not None:
        words += ["--sims", args.sims]
    return shlex.join(words)


def run_panel(args: argparse.Namespace) -> int:
    from stream.backtest import forecast, plots, report
    from stream.backtest.panel import PanelError, read_panel, run_params
    from stream.backtest.summary import summarize

    if not args.out:
        raise Usage("--out DIR is required")
    flags = param_flags(args)
    seed, sims = _int(args.seed, "--seed", 0), _int(args.sims, "--sims", 1000)
    try:
        base = run_params(flags)
        panel = read_panel(args.panel, flags)
        if panel.origins == 0:
            raise PanelError(args.panel, None, "no series has enough levels for a forecast "
                             "(4 levels, or 3 with params.sigma_prior)")
        bar = _SeriesProgress(len(panel.series))
        fc = forecast.run(panel, seed, bar)
        bar.close(len(panel.series))
    except PanelError as exc:
        if exc.where == "flags" and exc.field:
            raise Usage(f"--param {exc.field.removeprefix('params.')}: {exc.detail}") from None
        raise Usage(str(exc)) from None
    result = summarize(fc, sims, seed)
    summary = {
        "tool": PROG,
        "format": 1,
        "input": {"panel": Path(args.panel).name, "panel_sha256": panel.sha256, "series": len(panel.series),
                  "series_without_origins": sum(1 for s in panel.series if not s.origins()),
                  "origins": fc.origins, "rows": 2 * fc.origins},
        "options": {"alpha": base.alpha, "es_method": base.es_method, "param_flags": flags, "seed": seed,
                    "sims": sims},
        **result,
    }
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        report.write_forecasts_csv(fc, out / "forecasts.csv")
        report.write_json(summary, out / "summary.json")
        made = plots.all_plots(fc, out)
        (out / "report.md").write_text(report.panel_report(summary, made, command_line(args)), encoding="utf-8")
    except OSError as exc:
        raise Usage(f"{out}: cannot write: {exc.strerror or exc}") from None
    failed = [g for g in summary["gates"] if not g["pass"]]
    verdict = "PASS" if not failed else f"FAIL ({len(failed)} of {len(summary['gates'])} gates: " + \
        ", ".join(f"{g['gate']} {g['scope']}" for g in failed[:4]) + (", ..." if len(failed) > 4 else "") + ")"
    print(f"{PROG}: {len(panel.series):,} series, {fc.origins:,} origins -> {out / 'report.md'}: {verdict}",
          file=sys.stderr)
    return 0 if not failed else 1


def run_generate(args: argparse.Namespace) -> int:
    from stream.backtest.generate import generate, write_panel

    if args.panel is not None or args.from_log:
        raise Usage("--generate takes no PANEL and no --from-log")
    if not args.out:
        raise Usage("--out FILE.jsonl is required")
    series, length = _int(args.series, "--series", minimum=1), _int(args.length, "--length", minimum=2)
    seed = _int(args.seed, "--seed")
    try:
        lines = generate(args.generate, series, length, seed)
    except ValueError as exc:
        raise Usage(str(exc)) from None
    try:
        path = write_panel(lines, args.out)
    except OSError as exc:
        raise Usage(f"{args.out}: cannot write: {exc.strerror or exc}") from None
    print(f"{PROG}: {series:,} series of {length} levels ({args.generate}, seed {seed}) -> {path}", file=sys.stderr)
    return 0


def run_from_log(args: argparse.Namespace) -> int:
    from stream.audit.inputs import load_topics
    from stream.backtest import from_log
    from stream.core.topics import LOG, REQUIREMENTS
    from stream.settings import Settings

    if args.panel is not None:
        raise Usage("--from-log takes no PANEL")
    if not args.out:
        raise Usage("--out DIR is required")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise Usage(str(exc)) from None
    if not args.dir:
        import asyncio

        from stream.kafka.clients import check_broker

        # BrokerUnavailable (status 1) or MissingTopic (status 2): one line, from stream.cli.main
        asyncio.run(check_broker(settings, [LOG, REQUIREMENTS]))
    try:
        topics = load_topics([LOG, REQUIREMENTS], args.dir, None if args.dir else settings)
    except (OSError, ValueError) as exc:
        raise Usage(str(exc)) from None
    source = f"export directory {args.dir}" if args.dir else f"broker {settings.bootstrap_servers or '(default)'}"
    words = ["kpimargin", "backtest", "--from-log", *(["--dir", args.dir] if args.dir else []), "--out", args.out]
    try:
        summary = from_log.run(topics, Path(args.out), source, shlex.join(words), settings.engine_config())
    except OSError as exc:
        raise Usage(f"{args.out}: cannot write: {exc.strerror or exc}") from None
    o = summary["overall"]
    print(f"{PROG} --from-log: {o['observations']:,} observations on {len(summary['contracts'])} settled contract(s), "
          f"{o['exceptions']:,} exceptions -> {Path(args.out) / 'report.md'}: {'PASS' if summary['pass'] else 'FAIL'}",
          file=sys.stderr)
    return 0 if summary["pass"] else 1


def cmd_backtest(args: argparse.Namespace) -> int:
    try:
        if args.generate is not None:
            return run_generate(args)
        if args.from_log:
            return run_from_log(args)
        if args.panel is None:
            raise Usage("give a PANEL.jsonl, --generate NAME or --from-log")
        return run_panel(args)
    except Usage as exc:
        _say(str(exc))
        return 2


def _one_line_error(message: str) -> None:
    _say(f"error: {message} (see kpimargin backtest --help)")
    raise SystemExit(2)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "backtest", help="backtest the margin model on a panel of KPI series, or what the processor published",
        description="\n\n".join(__doc__.split("\n\n")[2:4]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Method, statistics and gates: docs/backtest.md.")
    p.error = _one_line_error  # type: ignore[method-assign]  # one line, exit 2, like every other failure
    parse_known = p.parse_known_args

    def parse_known_args(args=None, namespace=None):  # unknown flags: one line here, not the top usage
        namespace, extras = parse_known(args, namespace)
        if extras:
            _one_line_error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]
    p.add_argument("panel", nargs="?", metavar="PANEL.jsonl", help="the panel of KPI series (JSON lines)")
    p.add_argument("--out", metavar="DIR", help="output directory (with --generate: the panel file to write)")
    p.add_argument("--es-method", metavar="mc|analytic", help="ES method for series whose params do not set it")
    p.add_argument("--alpha", metavar="A", help="confidence level (default 0.99)")
    p.add_argument("--param", action="append", metavar="K=V", help="a model parameter for every series (repeatable; "
                   "a series' own params win)")
    p.add_argument("--seed", metavar="S", help="seed of the PIT randomisation and the ES simulations (default 0); "
                   "with --generate, of the panel (required)")
    p.add_argument("--sims", metavar="N", help="simulated panels for the ES test's critical values (default 1000)")
    p.add_argument("--generate", metavar="NAME", help="write a synthetic panel: student_t, gaussian, t3, regime, skew")
    p.add_argument("--series", metavar="N", help="with --generate: number of series")
    p.add_argument("--length", metavar="L", help="with --generate: levels per series")
    p.add_argument("--from-log", action="store_true", help="backtest the published requirements against settlements")
    p.add_argument("--dir", metavar="EXPORT_DIR", help="with --from-log: read an export directory instead of the broker")
    p.set_defaults(func=cmd_backtest)
