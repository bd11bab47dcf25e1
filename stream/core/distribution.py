"""The settlement outcome's distribution (SPEC §2.4-§2.6): a Student-t around the anchor,
clamped to the contract's range, and its tail means -- by Monte Carlo over one cached
sorted sample (``mc``) or in closed form (``analytic``) -- and quantiles. The model
(:mod:`stream.core.model`) turns these into a contract's risk vector."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import stats

from stream.core.params import Params

DRAW_CACHE_SIZE = 8  # sorted sample sets kept (see stream.core.params.MAX_MC_SAMPLES)



def clamp(x: float, lower: float, upper: float) -> float:
    return min(max(x, lower), upper)


@lru_cache(maxsize=DRAW_CACHE_SIZE)
def sorted_standard_t(nu: float, samples: int, seed: int) -> np.ndarray:
    """The note's draws ``default_rng(seed).standard_t(nu, M)``, sorted ascending.

    The clamped outcome ``clamp(anchor*(1 + loc + s*T))`` is non-decreasing in ``T`` (anchor
    > 0, s >= 0), so the lowest/highest ``m`` outcomes are those of the lowest/highest ``m``
    draws: a flash re-estimates in O(m) instead of re-sorting M outcomes."""
    draws = np.random.default_rng(seed).standard_t(nu, samples)
    draws.sort()
    draws.setflags(write=False)
    return draws


def mc_tail_outcomes(anchor: float, loc: float, t_scale: float, lower: float, upper: float,
                     params: Params) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and the highest ``m`` clamped MC outcomes, each ascending (SPEC §2.9):
    ``low[-1]`` is the m-th lowest outcome, ``high[0]`` the m-th highest."""
    m = params.tail_count()
    draws = sorted_standard_t(params.nu, params.mc_samples, params.mc_seed)
    low = np.clip(anchor * (1.0 + loc + t_scale * draws[:m]), lower, upper)
    high = np.clip(anchor * (1.0 + loc + t_scale * draws[-m:]), lower, upper)
    return low, high


def mc_tail_means(anchor: float, loc: float, t_scale: float, lower: float, upper: float, params: Params) -> tuple[float, float]:
    """Mean of the lowest and of the highest ``m`` clamped MC outcomes (SPEC §2.9)."""
    low, high = mc_tail_outcomes(anchor, loc, t_scale, lower, upper, params)
    return float(low.mean()), float(high.mean())


def mc_outcome_quantiles(anchor: float, loc: float, t_scale: float, lower: float, upper: float,
                         params: Params) -> tuple[float, float]:
    """The m-th lowest and the m-th highest of the M clamped MC outcomes, ``m`` the ES tail
    count: a position's loss there is its mc VaR, the m-th worst of the M losses."""
    low, high = mc_tail_outcomes(anchor, loc, t_scale, lower, upper, params)
    return float(low[-1]), float(high[0])


@lru_cache(maxsize=64)
def tail_points(alpha: float, nu: float) -> tuple[float, float]:
    """The Student-t(nu) quantiles at ``1 - alpha`` and ``alpha`` (``ppf(p)``, ``isf(p)``,
    ``p = 1 - alpha``): where the analytic lower and upper ES tails start."""
    p = 1.0 - alpha
    return float(stats.t.ppf(p, nu)), float(stats.t.isf(p, nu))


def outcome_at(t, anchor, loc, t_scale, lower, upper):
    """The clamped outcome ``clamp(anchor*(1 + loc) + anchor*t_scale*t, lower, upper)`` at a
    Student-t value ``t`` (SPEC §2.4–2.5), as the analytic tail integral writes it;
    element-wise on numpy arrays. Non-decreasing in ``t``: the outcome's quantile at level
    ``u`` is its value at the t quantile at ``u``."""
    return np.clip(anchor * (1.0 + loc) + anchor * t_scale * t, lower, upper)


def outcome_quantiles(anchor: float, loc: float, t_scale: float, lower: float, upper: float,
                      params: Params) -> tuple[float, float]:
    """Exact ``(1 - alpha)`` and ``alpha`` quantiles of the clamped outcome (see
    :func:`outcome_at`): a position's loss at one of them is its analytic VaR."""
    t_low, t_high = tail_points(params.alpha, params.nu)
    return (float(outcome_at(t_low, anchor, loc, t_scale, lower, upper)),
            float(outcome_at(t_high, anchor, loc, t_scale, lower, upper)))


def outcome_cdf(x, anchor, loc, t_scale, lower, upper, nu):
    """``(F(x-), F(x))`` of the clamped outcome ``clamp(anchor*(1 + loc + t_scale*T))``,
    ``T ~ t(nu)``: the point masses at ``lower`` and ``upper`` (and the whole mass when
    ``t_scale`` is 0) are the jumps. Element-wise on numpy arrays or floats."""
    x, anchor, loc, t_scale, lower, upper, nu = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (x, anchor, loc, t_scale, lower, upper, nu)))
    a0 = anchor * (1.0 + loc)
    b0 = anchor * t_scale
    spread = b0 > 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = stats.t.cdf(np.where(spread, (x - a0) / np.where(spread, b0, 1.0), 0.0), nu)
    centre = np.clip(a0, lower, upper)  # where the whole mass sits when t_scale is 0
    f = np.where(spread, inner, (x >= centre).astype(np.float64))
    f_left = np.where(spread, inner, (x > centre).astype(np.float64))
    f = np.where(x >= upper, 1.0, np.where(x < lower, 0.0, f))
    f_left = np.where(x > upper, 1.0, np.where(x <= lower, 0.0, f_left))
    return f_left, f


def _t_partial_first_moment(x: float, nu: float) -> float:
    """``G(x) = ∫_{-inf}^{x} t f(t) dt = -(nu + x^2)/(nu - 1) * f(x)`` for Student-t(nu)."""
    if math.isinf(x):
        return 0.0
    return -(nu + x * x) / (nu - 1.0) * float(stats.t.pdf(x, nu))


def _clamped_integral(a0: float, b0: float, lo_t: float, hi_t: float, lower: float, upper: float, nu: float) -> float:
    """``∫_{lo_t}^{hi_t} clamp(a0 + b0*t, lower, upper) f_nu(t) dt`` in closed form, b0 > 0.

    The line hits ``lower`` at ``t_L = (lower - a0)/b0`` and ``upper`` at ``t_U``; below
    ``t_L`` the integrand is ``lower*f``, between it is ``(a0 + b0 t) f``, above ``upper*f``."""
    t_lower = (lower - a0) / b0
    t_upper = (upper - a0) / b0
    cdf = lambda x: float(stats.t.cdf(x, nu))  # noqa: E731
    total = 0.0
    # region 1: t < t_L
    hi1 = min(hi_t, t_lower)
    if hi1 > lo_t:
        total += lower * (cdf(hi1) - cdf(lo_t))
    # region 2: t_L <= t <= t_U
    lo2, hi2 = max(lo_t, t_lower), min(hi_t, t_upper)
    if hi2 > lo2:
        total += a0 * (cdf(hi2) - cdf(lo2))
        total += b0 * (_t_partial_first_moment(hi2, nu) - _t_partial_first_moment(lo2, nu))
    # region 3: t > t_U
    lo3 = max(lo_t, t_upper)
    if hi_t > lo3:
        total += upper * (cdf(hi_t) - cdf(lo3))
    return total


def analytic_tail_means(anchor: float, loc: float, t_scale: float, lower: float, upper: float, params: Params) -> tuple[float, float]:
    """Exact lower/upper ``(1-alpha)``-tail means of the clamped outcome (no sampling):
    ``(1/p) ∫_{-inf}^{t_p} clamp(...) f dt`` and ``(1/p) ∫_{t_{1-p}}^{inf} clamp(...) f dt``."""
    a0 = anchor * (1.0 + loc)
    b0 = anchor * t_scale
    if b0 <= 0.0:
        certain = clamp(a0, lower, upper)
        return certain, certain
    p = 1.0 - params.alpha
    t_low, t_high = tail_points(params.alpha, params.nu)
    low = _clamped_integral(a0, b0, -math.inf, t_low, lower, upper, params.nu) / p
    high = _clamped_integral(a0, b0, t_high, math.inf, lower, upper, params.nu) / p
    return clamp(low, lower, upper), clamp(high, lower, upper)


def student_t_scale(sigma_adj: float, nu: float, flash_scale: float = 1.0) -> float:
    """``sigma_adj * sqrt((nu-2)/nu) * flash_scale``: the scale of the Student-t whose
    standard deviation is ``sigma_adj`` (SPEC §2.4), times the flash's ``sqrt(1 - w)``."""
    return sigma_adj * math.sqrt((nu - 2.0) / nu) * flash_scale
