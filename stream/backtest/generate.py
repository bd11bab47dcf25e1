"""Synthetic panels with known truth: ``kpimargin backtest --generate NAME``.

Every series has its own true return standard deviation ``sigma ~ U(0.05, 0.15)``, mean 0
and a first level ``K_0 ~ 100,000 * U(0.5, 2)``; then ``K_i = K_{i-1} * (1 + r_i)``. The
generators differ in the law of ``r_i`` (each with mean 0 and standard deviation ``sigma``
except where said):

* ``student_t`` -- the model itself: ``sigma * sqrt(3/5) * T_5`` (the size check: with the
  model's own law, exceptions show only the estimation error of short histories);
* ``gaussian`` -- ``sigma * Z`` (thinner tails than the model assumes);
* ``t3`` -- heavier tails: ``sigma * sqrt(1/3) * T_3``;
* ``regime`` -- a two-state Markov switch: calm quarters ``N(0, sigma^2)``, stressed ones
  ``N(-1.5 sigma, (3 sigma)^2)`` (the occasional large miss); calm -> stressed with
  probability 0.1, stressed -> calm 0.4 (so one quarter in five is stressed, the return's
  mean is -0.3 sigma and its standard deviation 1.72 sigma);
* ``skew`` -- negative skew: ``-sigma * (X - E X) / sd(X)``, ``X ~ lognormal(0, 0.5)``
  (skewness -1.75, a long left tail, a bounded right one).

A return below -95 % is floored there (beyond every range bound, so no clamped outcome
changes; only the history of such a series does). The output is deterministic: the same
name, sizes and seed give the same bytes. ``truth`` on each line records the law.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson

GENERATORS = ("student_t", "gaussian", "t3", "regime", "skew")
SIGMA_RANGE = (0.05, 0.15)
FLOOR = -0.95


def _returns(name: str, rng: np.random.Generator, sigma: float, count: int) -> tuple[np.ndarray, dict]:
    if name == "student_t":
        return sigma * math.sqrt(3.0 / 5.0) * rng.standard_t(5.0, count), {"law": "student_t", "nu": 5.0}
    if name == "gaussian":
        return sigma * rng.standard_normal(count), {"law": "gaussian"}
    if name == "t3":
        return sigma * math.sqrt(1.0 / 3.0) * rng.standard_t(3.0, count), {"law": "student_t", "nu": 3.0}
    if name == "regime":
        u, z = rng.random(count), rng.standard_normal(count)
        stressed = np.zeros(count, dtype=bool)
        state = rng.random() < 0.2  # the stationary share of stressed quarters
        for i in range(count):
            state = (u[i] >= 0.4) if state else (u[i] < 0.1)
            stressed[i] = state
        r = np.where(stressed, -1.5 * sigma + 3.0 * sigma * z, sigma * z)
        return r, {"law": "regime", "p_calm_to_stressed": 0.1, "p_stressed_to_calm": 0.4,
                   "stressed_mean": -1.5 * sigma, "stressed_sd": 3.0 * sigma,
                   "stressed": [int(s) for s in stressed]}
    if name == "skew":
        s2 = 0.25
        mean, sd = math.exp(s2 / 2.0), math.sqrt((math.exp(s2) - 1.0) * math.exp(s2))
        x = rng.lognormal(0.0, 0.5, count)
        return -sigma * (x - mean) / sd, {"law": "negated standardised lognormal(0, 0.5)", "skewness": -1.7502}
    raise ValueError(f"unknown generator {name!r} (known: {', '.join(GENERATORS)})")


def generate(name: str, series: int, length: int, seed: int) -> list[dict]:
    """``series`` panel lines of ``length`` levels each from generator ``name``."""
    if name not in GENERATORS:
        raise ValueError(f"--generate: unknown generator {name!r} (known: {', '.join(GENERATORS)})")
    if series < 1:
        raise ValueError(f"--series: must be >= 1, got {series}")
    if length < 2:
        raise ValueError(f"--length: must be >= 2 levels, got {length}")
    rng = np.random.default_rng(seed)
    width = len(str(series - 1))
    lines = []
    for i in range(series):
        sigma = float(rng.uniform(*SIGMA_RANGE))
        start = float(100_000.0 * rng.uniform(0.5, 2.0))
        r, law = _returns(name, rng, sigma, length - 1)
        floored = int((r < FLOOR).sum())
        r = np.maximum(r, FLOOR)
        levels = start * np.cumprod(np.concatenate(([1.0], 1.0 + r)))
        lines.append({
            "series_id": f"{name}-{i:0{width}d}",
            "levels": [float(v) for v in levels],
            "truth": {"generator": name, "mu": 0.0, "sigma": sigma, **law, "floored_returns": floored, "seed": seed},
        })
    return lines


def write_panel(lines: list[dict], out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path
