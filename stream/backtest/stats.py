"""The backtest statistics, as pure functions of counts and arrays (textbook forms).

* Kupiec (1995) proportion of failures: ``LR_uc = -2 ln[(1-p)^(N-x) p^x] + 2 ln[(1-x/N)^(N-x) (x/N)^x]``, chi2(1).
* Christoffersen (1998) independence from the transition counts ``n_ij`` (an exception at
  ``i`` followed by one at ``j``): ``LR_ind = -2 ln[L(pi)] + 2 ln[L(pi_01, pi_11)]``, chi2(1);
  conditional coverage ``LR_cc = LR_uc + LR_ind``, chi2(2).
* The three-interval conditional coverage test of seed 002 (Christoffersen's interval test
  for the lower and upper tail at once): intervals 1 (below the ``1-alpha`` quantile), 2,
  3 (above the ``alpha`` quantile) with probabilities ``(p, 1-2p, p)``;
  ``LR = -2 [sum_ij n_ij ln p_j - sum_ij n_ij ln(n_ij / n_i.)]``, chi2(6). (The seed prints
  ``L(Pi_0) = sum_i log p_i``, a slip: the null likelihood weights each ``log p_j`` by its
  count.)
* Basel traffic light: green while ``P(X <= x) < 95 %`` for ``X ~ Bin(N, p)``, yellow while
  ``< 99.99 %``, red from there (250 observations at 99 %: green 0-4, yellow 5-9, red 10+);
  no exception is always green (below 6 observations at 99 % the cumulative rule alone
  would make even 0 exceptions yellow).
* One-sided binomial test that an exception rate is at most ``p``: ``P(X >= x)``.
* Acerbi-Szekely (2014) ``Z_2 = 1 - sum_t L_t I_t / (N p ES_t)``, ``I_t = 1{L_t > VaR_t}``
  (losses positive; ``E Z_2 = 0`` under the model, negative when ES is too small).
* Hill (1975) tail index from the ``k`` largest of ``n`` observations,
  ``1/alpha = mean(ln X_(n-i+1) / X_(n-k))``, and Weissman's (1978) tail probability beyond
  a level ``u`` past the threshold, ``P(X > u) = (k/n) (u / X_(n-k))^-alpha`` (seed 004: EVT
  as a benchmark of a parametric model's coverage; ``k`` = 10 % of ``n``, its blunt rule).
* The weighted CRPS of Gneiting and Ranjan (2011), seed 002 eq. (3):
  ``C_w(F, z) = 2 int_0^1 (1{z <= F^-1(u)} - u)(F^-1(u) - z) w(u) du`` by the midpoint rule.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import stats

TRAFFIC_YELLOW = 0.95
TRAFFIC_RED = 0.9999


def _xlogy(x: float, y: float) -> float:
    """``x * ln(y)`` with ``0 * ln(0) = 0``."""
    return 0.0 if x == 0 else x * math.log(y)


def kupiec(n: int, x: int, p: float) -> dict:
    """Kupiec's POF likelihood ratio and its chi2(1) p-value (None without observations)."""
    if n == 0:
        return {"lr": None, "p_value": None}
    rate = x / n
    lr = -2.0 * (_xlogy(n - x, 1.0 - p) + _xlogy(x, p) - _xlogy(n - x, 1.0 - rate) - _xlogy(x, rate))
    lr = max(lr, 0.0)
    return {"lr": lr, "p_value": float(stats.chi2.sf(lr, 1))}


def transitions(hits: np.ndarray, groups: np.ndarray, to_mask: np.ndarray | None = None) -> np.ndarray:
    """2x2 counts ``n[i, j]`` of consecutive observations (``i`` then ``j``) within each
    group (a series' successive origins on one side); ``hits`` in order within groups.
    With ``to_mask``, only transitions into an observation where it is true count."""
    hits = np.asarray(hits, dtype=np.int64)
    groups = np.asarray(groups)
    same = groups[1:] == groups[:-1]
    if to_mask is not None:
        same = same & np.asarray(to_mask, dtype=bool)[1:]
    counts = np.zeros((2, 2), dtype=np.int64)
    np.add.at(counts, (hits[:-1][same], hits[1:][same]), 1)
    return counts


def christoffersen(counts: np.ndarray, n: int, x: int, p: float) -> dict:
    """Independence and conditional coverage from 2x2 transition counts, with the Kupiec
    statistic of the ``n`` observations and ``x`` exceptions."""
    n00, n01, n10, n11 = (int(v) for v in np.asarray(counts).reshape(-1))
    total = n00 + n01 + n10 + n11
    uc = kupiec(n, x, p)
    if total == 0 or uc["lr"] is None:
        return {"lr_ind": None, "p_ind": None, "lr_cc": None, "p_cc": None, "transitions": [n00, n01, n10, n11]}
    pi = (n01 + n11) / total
    pi01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    null = _xlogy(n00 + n10, 1.0 - pi) + _xlogy(n01 + n11, pi)
    alt = _xlogy(n00, 1.0 - pi01) + _xlogy(n01, pi01) + _xlogy(n10, 1.0 - pi11) + _xlogy(n11, pi11)
    lr_ind = max(-2.0 * (null - alt), 0.0)
    lr_cc = uc["lr"] + lr_ind
    return {"lr_ind": lr_ind, "p_ind": float(stats.chi2.sf(lr_ind, 1)), "lr_cc": lr_cc,
            "p_cc": float(stats.chi2.sf(lr_cc, 2)), "transitions": [n00, n01, n10, n11]}


def interval_transitions(intervals: np.ndarray, groups: np.ndarray, to_mask: np.ndarray | None = None) -> np.ndarray:
    """3x3 counts of consecutive intervals (0, 1, 2) within each group (``to_mask`` as in
    :func:`transitions`)."""
    intervals = np.asarray(intervals, dtype=np.int64)
    groups = np.asarray(groups)
    same = groups[1:] == groups[:-1]
    if to_mask is not None:
        same = same & np.asarray(to_mask, dtype=bool)[1:]
    counts = np.zeros((3, 3), dtype=np.int64)
    np.add.at(counts, (intervals[:-1][same], intervals[1:][same]), 1)
    return counts


def three_interval(counts: np.ndarray, p: float) -> dict:
    """Seed 002's simultaneous lower/upper-tail conditional coverage LR, chi2(6)."""
    counts = np.asarray(counts, dtype=np.int64)
    probs = (p, 1.0 - 2.0 * p, p)
    total = int(counts.sum())
    if total == 0:
        return {"lr": None, "p_value": None, "transitions": counts.tolist(), "critical_5pct": float(stats.chi2.isf(0.05, 6))}
    null = sum(_xlogy(int(counts[i, j]), probs[j]) for i in range(3) for j in range(3))
    alt = 0.0
    for i in range(3):
        row = int(counts[i].sum())
        alt += sum(_xlogy(int(counts[i, j]), counts[i, j] / row) for j in range(3) if row)
    lr = max(-2.0 * (null - alt), 0.0)
    return {"lr": lr, "p_value": float(stats.chi2.sf(lr, 6)), "transitions": counts.tolist(),
            "critical_5pct": float(stats.chi2.isf(0.05, 6))}


def traffic_light(n: int, x: int, p: float) -> dict:
    """Basel zone of ``x`` exceptions in ``n`` observations at exception probability ``p``."""
    if n == 0:
        return {"zone": None, "cum_prob": None}
    cum = float(stats.binom.cdf(x, n, p))
    zone = "green" if cum < TRAFFIC_YELLOW or x == 0 else "yellow" if cum < TRAFFIC_RED else "red"
    return {"zone": zone, "cum_prob": cum}


def zone_edges(n: int, p: float) -> tuple[int, int]:
    """The fewest exceptions in the yellow and in the red zone."""
    yellow = int(stats.binom.ppf(TRAFFIC_YELLOW, n, p))
    red = int(stats.binom.ppf(TRAFFIC_RED, n, p))
    # ppf gives the smallest x with cdf >= level: exactly the first x out of the zone below
    return yellow, red


def one_sided_binomial(n: int, x: int, p: float) -> float | None:
    """p-value of H0 "exception probability <= p" against more exceptions: ``P(X >= x)``."""
    if n == 0:
        return None
    return float(stats.binom.sf(x - 1, n, p))


def binomial_band(n: int, p: float, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` range of the exception *rate* ``X/n``, ``X ~ Bin(n, p)``."""
    if n == 0:
        return (0.0, 1.0)
    lo = stats.binom.ppf((1.0 - level) / 2.0, n, p)
    hi = stats.binom.ppf(1.0 - (1.0 - level) / 2.0, n, p)
    return float(lo) / n, float(hi) / n


def z2(loss: np.ndarray, var: np.ndarray, es: np.ndarray, p: float) -> float | None:
    """Acerbi-Szekely ``Z_2`` of observations with ``es > 0``."""
    keep = es > 0.0
    n = int(keep.sum())
    if n == 0:
        return None
    hit = loss[keep] > var[keep]
    return float(1.0 - np.sum(np.where(hit, loss[keep] / es[keep], 0.0)) / (n * p))


def ks_uniform(u: np.ndarray) -> dict:
    """Kolmogorov-Smirnov test of PIT values against U(0, 1)."""
    if u.size == 0:
        return {"statistic": None, "p_value": None}
    res = stats.kstest(u, "uniform")
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue)}


CRPS_WEIGHTS = {
    "uniform": lambda u: np.ones_like(u),
    "center": lambda u: u * (1.0 - u),
    "tails": lambda u: (2.0 * u - 1.0) ** 2,
    "right": lambda u: u**2,
    "left": lambda u: (1.0 - u) ** 2,
}
CRPS_GRID = 400


def crps_grid(points: int = CRPS_GRID) -> np.ndarray:
    return (np.arange(points) + 0.5) / points


@lru_cache(maxsize=16)
def t_ppf_grid(nu: float, points: int = CRPS_GRID) -> np.ndarray:
    grid = stats.t.ppf(crps_grid(points), nu)
    grid.setflags(write=False)
    return grid


def weighted_crps(quantiles: np.ndarray, z: np.ndarray, weights: dict | None = None) -> dict[str, np.ndarray]:
    """Per observation, ``C_w`` for each weight: ``quantiles[i, j]`` is ``F_i^-1(u_j)`` on
    :func:`crps_grid`, ``z[i]`` the outcome."""
    weights = weights or CRPS_WEIGHTS
    u = crps_grid(quantiles.shape[1])
    score = (np.where(z[:, None] <= quantiles, 1.0, 0.0) - u[None, :]) * (quantiles - z[:, None])
    return {name: 2.0 * (score * w(u)[None, :]).mean(axis=1) for name, w in weights.items()}


HILL_SHARE = 0.10
HILL_MIN_K = 10


def hill(x: np.ndarray, k: int) -> float | None:
    """Hill's tail index of the upper tail of ``x`` from its ``k`` largest values (None
    when ``k`` is too small or the threshold is not positive)."""
    xs = np.sort(np.asarray(x, dtype=np.float64))[::-1]
    if k < 2 or xs.size <= k or not xs[k] > 0.0:
        return None
    return float(1.0 / np.mean(np.log(xs[:k] / xs[k])))


def tail_check(x: np.ndarray, u: float, share: float = HILL_SHARE) -> dict:
    """Upper tail of ``x`` past ``u``: Hill index (``k = share * n``), the Weissman
    probability of exceeding ``u`` (the empirical share when ``u`` is inside the
    threshold) and the plain count share."""
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    k = int(round(share * n))
    empirical = float((x > u).mean()) if n else None
    a = hill(x, k) if k >= HILL_MIN_K else None
    if a is None:
        return {"k": k, "tail_index": None, "implied_rate": None, "empirical_rate": empirical}
    threshold = float(np.sort(x)[::-1][k])
    implied = k / n * (u / threshold) ** (-a) if u > threshold else empirical
    return {"k": k, "tail_index": a, "implied_rate": float(implied), "empirical_rate": empirical}
