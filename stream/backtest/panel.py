"""A panel of KPI series (JSON lines) and its validation.

One line per series::

    {"series_id": "TSLA", "levels": [K_0, ..., K_T], "range": [0.5, 1.5], "params": {...},
     "truth": {...}}

``levels`` oldest first (at least 2, each finite and > 0); ``range`` (optional, default
``[0.5, 1.5]``) scales each origin's anchor into the forecast contract's ``[lower, upper]``
(``0 <= lo <= 1 <= hi``, ``lo < hi``, so the unit position at the anchor price is inside the
range); ``params`` are listing parameters as in SPEC §2 (validated by
:meth:`stream.core.model.Params.from_mapping`, the listing's own check); ``truth`` is what a
generator knew (informational, never read by the backtest).

Effective parameters of a series: the model defaults, then the run's flags (``--alpha``,
``--es-method``, ``--param``), then the series' own ``params`` (a listing's params win, as in
production). One backtest tests one confidence level: a series whose ``alpha`` differs from
the run's is an error. Every error names the line, the series and the field, on one line.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import orjson

from stream.core.errors import Rejected
from stream.core.model import Params

DEFAULT_RANGE = (0.5, 1.5)
KNOWN_FIELDS = ("series_id", "levels", "range", "params", "truth")


class PanelError(Exception):
    """Bad panel input: one line naming where (file, line, series) and the field."""

    def __init__(self, where: str, field: str | None, detail: str):
        self.where, self.field, self.detail = where, field, detail
        text = f"{where}: field {field}: {detail}" if field else f"{where}: {detail}"
        super().__init__(text)


@dataclass(frozen=True)
class Series:
    series_id: str
    levels: tuple[float, ...]
    lo: float
    hi: float
    params: Params
    overrides: dict  # the series' own params, as given
    truth: dict | None = None

    def first_origin(self) -> int:
        """The first origin ``t`` that can be forecast: 2 returns, or 1 with sigma_prior."""
        return 1 if self.params.sigma_prior is not None else 2

    def origins(self) -> range:
        """Every origin ``t`` with a forecast (``history = levels[0..t]``) and an outcome
        (``levels[t+1]``)."""
        return range(self.first_origin(), len(self.levels) - 1)


def run_params(overrides: Mapping[str, Any]) -> Params:
    """The run's parameters: model defaults updated by the command's flags."""
    try:
        return Params.from_mapping(dict(overrides))
    except Rejected as exc:
        raise PanelError("flags", exc.field, exc.detail) from None


def _number(value: Any, field: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PanelError(where, field, f"must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise PanelError(where, field, f"must be finite, got {value!r}")
    return number


def parse_series(obj: Any, where: str, flags: Mapping[str, Any], alpha: float) -> Series:
    """One panel line's object as a :class:`Series`; :class:`PanelError` when it is bad."""
    if not isinstance(obj, dict):
        raise PanelError(where, None, f"expected a JSON object, got {type(obj).__name__}")
    sid = obj.get("series_id")
    if not isinstance(sid, str) or not sid:
        raise PanelError(where, "series_id", f"must be a non-empty string, got {sid!r}")
    where = f"{where}: series {sid!r}"
    unknown = sorted(set(obj) - set(KNOWN_FIELDS))
    if unknown:
        raise PanelError(where, unknown[0], f"unknown field (known: {', '.join(KNOWN_FIELDS)})")
    raw_levels = obj.get("levels")
    if not isinstance(raw_levels, list):
        raise PanelError(where, "levels", f"must be a list of numbers, got {type(raw_levels).__name__}")
    if len(raw_levels) < 2:
        raise PanelError(where, "levels", f"at least 2 levels are needed, got {len(raw_levels)}")
    levels = []
    for i, value in enumerate(raw_levels):
        level = _number(value, f"levels[{i}]", where)
        if level <= 0.0:
            raise PanelError(where, f"levels[{i}]", f"must be > 0, got {value!r}")
        levels.append(level)
    lo, hi = DEFAULT_RANGE
    if obj.get("range") is not None:
        rng = obj["range"]
        if not isinstance(rng, list) or len(rng) != 2:
            raise PanelError(where, "range", f"must be [lo, hi], got {rng!r}")
        lo, hi = _number(rng[0], "range[0]", where), _number(rng[1], "range[1]", where)
        if not lo < hi:
            raise PanelError(where, "range", f"lo must be < hi, got {rng!r}")
        if not 0.0 <= lo <= 1.0 <= hi:
            raise PanelError(where, "range", f"must satisfy 0 <= lo <= 1 <= hi (the anchor is inside), got {rng!r}")
    overrides = obj.get("params") or {}
    if not isinstance(overrides, dict):
        raise PanelError(where, "params", f"must be an object, got {type(overrides).__name__}")
    try:
        params = Params.from_mapping({**flags, **overrides})
    except Rejected as exc:
        raise PanelError(where, exc.field, exc.detail) from None
    if params.alpha != alpha:
        raise PanelError(where, "params.alpha", f"{params.alpha!r} differs from the run's alpha {alpha!r} "
                         "(one confidence level per backtest: pass --alpha)")
    truth = obj.get("truth")
    if truth is not None and not isinstance(truth, dict):
        raise PanelError(where, "truth", f"must be an object, got {type(truth).__name__}")
    return Series(sid, tuple(levels), lo, hi, params, dict(overrides), truth)


@dataclass(frozen=True)
class Panel:
    series: list[Series]
    sha256: str
    source: str

    @property
    def origins(self) -> int:
        return sum(len(s.origins()) for s in self.series)


def read_panel(path: str | Path, flags: Mapping[str, Any]) -> Panel:
    """Read and validate a panel file. ``flags`` are the run's parameter overrides."""
    alpha = run_params(flags).alpha
    name = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PanelError(name, None, f"cannot read: {exc.strerror}") from None
    series, seen = [], {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            try:  # NaN, Infinity, 1e400: parse them to name the series and the field they are in
                obj = json.loads(line)
            except ValueError:
                raise PanelError(where, None, f"not valid JSON ({exc})") from None
        s = parse_series(obj, where, flags, alpha)
        if s.series_id in seen:
            raise PanelError(f"{where}: series {s.series_id!r}", "series_id",
                             f"repeated (first on line {seen[s.series_id]})")
        seen[s.series_id] = number
        series.append(s)
    if not series:
        raise PanelError(name, None, "the panel holds no series")
    return Panel(series, hashlib.sha256(data).hexdigest(), name)
