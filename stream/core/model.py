"""The margin model of SPEC §2, split so that every fill is O(1).

A contract change (listing, flash) is turned once into a :class:`RiskVector` — the range,
the two tail means of the clamped outcome, the two stress extremes and the IM parameters.
Because a net position's loss ``loss(K~) = (a - q*K~) / R`` is affine in the clamped
outcome ``K~`` (SPEC §2.7), every position measure is then a closed form in ``(q, a)``:

* ``max_loss = max(0, loss(lower), loss(upper))``                       (§2.8)
* ``ES = loss(mean of the lowest m outcomes)`` for ``q > 0`` and
  ``loss(mean of the highest m outcomes)`` for ``q < 0``, ``m = ceil((1-alpha)*M)`` (§2.9)
* ``stress = max(loss(min stress level), loss(max stress level))``     (§2.10)
* ``conv = max_loss * (1 - exp(-k*(1-tau)))``                          (§2.11)
* ``stat = max(beta*max_loss, ES, stress)``, ``conc = gamma*|q|/depth*max_loss`` (§2.12)
* ``IM = min(max_loss, max(0, conv + stat + conc))``                   (§2.13)

:func:`position_risk` (pure Python floats) and :func:`positions_risk` (numpy arrays) use
the same IEEE operations in the same order, so they agree bit for bit; the convergence
factor ``1 - exp(-k*(1-tau))`` is computed once per contract and tick with ``math.exp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream.core.distribution import analytic_tail_means, clamp, mc_tail_means, student_t_scale
from stream.core.errors import InvalidListing
from stream.core.params import Params

# --------------------------------------------------------------------------- estimation
# The largest return standard deviation a listing may imply (100,000 %): far beyond it
# every outcome sits at a range bound anyway; the bound keeps every product finite.
MAX_SIGMA = 1000.0

@dataclass(frozen=True)
class Estimate:
    """Return statistics of a contract's history (SPEC §2.1–2.3)."""

    n: int  # number of returns
    mu: float  # mean return
    sigma: float  # sample standard deviation (ddof=1), or sigma_prior when n < 2
    sigma_adj: float  # sqrt(sigma**2 * (1 + c/n)) -- the return's standard deviation
    r_min: float
    r_max: float


def estimate(history: tuple[float, ...], params: Params) -> Estimate:
    """``r_i = K_i/K_{i-1} - 1``; ``mu = mean(r)``; ``s2 = var(r, ddof=1)`` (or
    ``sigma_prior**2`` when n < 2); ``sigma_adj = sqrt(s2 * (1 + c/n))`` (SPEC §2.1–2.3)."""
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are rejected below
        return _estimate(history, params)


def _estimate(history: tuple[float, ...], params: Params) -> Estimate:
    levels = np.asarray(history, dtype=np.float64)
    returns = levels[1:] / levels[:-1] - 1.0
    n = int(returns.size)
    if n < 1:
        raise InvalidListing("at least 2 history levels are needed", field="history")
    if n >= 2:
        s2 = float(np.var(returns, ddof=1))
    elif params.sigma_prior is not None:
        s2 = params.sigma_prior**2
    else:
        raise InvalidListing(
            "fewer than 2 returns: the listing must carry params.sigma_prior", field="params.sigma_prior"
        )
    sigma_adj = math.sqrt(s2 * (1.0 + params.c / n)) if math.isfinite(s2) else math.inf
    est = Estimate(
        n=n,
        mu=float(np.mean(returns)),
        sigma=math.sqrt(s2) if math.isfinite(s2) else math.inf,
        sigma_adj=sigma_adj,
        r_min=float(returns.min()),
        r_max=float(returns.max()),
    )
    if not all(map(math.isfinite, (est.mu, est.sigma, est.sigma_adj, est.r_min, est.r_max))) or est.sigma_adj > MAX_SIGMA:
        raise InvalidListing(
            f"history gives returns too extreme to margin (sigma_adj {est.sigma_adj:g}, returns "
            f"{est.r_min:g} to {est.r_max:g})", field="history")
    return est


# --------------------------------------------------------------------------- risk vector
@dataclass(frozen=True)
class RiskVector:
    """Everything a position's IM needs from its contract state, computed once per change.

    ``tail_low``/``tail_high``: mean of the lowest/highest ``m`` clamped outcomes (mc) or the
    exact clamped Student-t tail means (analytic); ``stress_lo``/``stress_hi``: the extreme
    clamped stress levels (SPEC §2.9–2.10)."""

    lower: float
    upper: float
    anchor: float
    loc: float  # mu, or 0 under a flash
    sigma_adj: float
    flash_scale: float  # sqrt(1 - w); 1 without a flash
    t_scale: float  # sigma_adj * sqrt((nu-2)/nu) * flash_scale: the Student-t scale
    tail_low: float
    tail_high: float
    stress_levels: tuple[float, float, float, float]
    stress_lo: float
    stress_hi: float
    k: float
    beta: float
    gamma: float
    depth: float
    es_method: str
    tail_count: int

    @property
    def range_width(self) -> float:
        return self.upper - self.lower

    def as_dict(self) -> dict:
        return {
            "lower": self.lower,
            "upper": self.upper,
            "anchor": self.anchor,
            "loc": self.loc,
            "sigma_adj": self.sigma_adj,
            "flash_scale": self.flash_scale,
            "t_scale": self.t_scale,
            "tail_low": self.tail_low,
            "tail_high": self.tail_high,
            "stress_levels": list(self.stress_levels),
            "es_method": self.es_method,
            "tail_count": self.tail_count,
            "k": self.k,
            "beta": self.beta,
            "gamma": self.gamma,
            "depth": self.depth,
        }


def risk_vector(
    lower: float,
    upper: float,
    history: tuple[float, ...],
    params: Params,
    flash_value: float | None = None,
    flash_coverage: float = 0.0,
    est: Estimate | None = None,
) -> RiskVector:
    """Turn a contract state (listing + latest flash) into its :class:`RiskVector`.

    Without a flash: anchor ``K_t``, location ``mu``. With a flash (value E, coverage w):
    anchor ``E``, location 0 and every return scale times ``sqrt(1 - w)`` (SPEC §2.6)."""
    est = est or estimate(history, params)
    if flash_value is None:
        anchor, loc, flash_scale = float(history[-1]), est.mu, 1.0
    else:
        anchor, loc, flash_scale = float(flash_value), 0.0, math.sqrt(max(0.0, 1.0 - flash_coverage))
    t_scale = student_t_scale(est.sigma_adj, params.nu, flash_scale)
    tails = analytic_tail_means if params.es_method == "analytic" else mc_tail_means
    tail_low, tail_high = tails(anchor, loc, t_scale, lower, upper, params)
    scenario_returns = (est.r_min, est.r_max, -params.lam * est.sigma_adj, params.lam * est.sigma_adj)
    stress_levels = tuple(clamp(anchor * (1.0 + r * flash_scale), lower, upper) for r in scenario_returns)
    if not all(map(math.isfinite, (tail_low, tail_high, *stress_levels))):  # defence in depth: never NaN/inf
        raise InvalidListing("the contract's outcome distribution is not finite", field="history")
    return RiskVector(
        lower=float(lower),
        upper=float(upper),
        anchor=anchor,
        loc=loc,
        sigma_adj=est.sigma_adj,
        flash_scale=flash_scale,
        t_scale=t_scale,
        tail_low=tail_low,
        tail_high=tail_high,
        stress_levels=stress_levels,  # type: ignore[arg-type]
        stress_lo=min(stress_levels),
        stress_hi=max(stress_levels),
        k=params.k,
        beta=params.beta,
        gamma=params.gamma,
        depth=params.depth,
        es_method=params.es_method,
        tail_count=params.tail_count(),
    )


# --------------------------------------------------------------------------- time
def tau(now_us: int, listing_us: int, settlement_us: int) -> float:
    """``tau = clamp((settlement - now) / (settlement - listing), 0, 1)`` (SPEC §2.11)."""
    return clamp((settlement_us - now_us) / (settlement_us - listing_us), 0.0, 1.0)


def conv_factor(k: float, tau_: float) -> float:
    """``1 - exp(-k * (1 - tau))``: the share of max_loss the convergence term adds."""
    return 1.0 - math.exp(-k * (1.0 - tau_))


# --------------------------------------------------------------------------- positions
@dataclass(frozen=True)
class PositionRisk:
    q: float
    im: float
    max_loss: float
    es: float
    stress: float
    conv: float
    stat: float
    conc: float
    tau: float

    def as_dict(self, contract_id: str) -> dict:
        return risk_dict(
            contract_id, self.q, self.im, self.max_loss, self.es, self.stress, self.conv, self.stat, self.conc, self.tau
        )


def risk_dict(
    contract_id: str, q: float, im: float, max_loss: float, es: float, stress: float, conv: float, stat: float,
    conc: float, tau_: float,
) -> dict:
    """The per-position dict of a requirement record (the one layout, keys in this order)."""
    return {
        "contract_id": contract_id,
        "q": q,
        "im": im,
        "max_loss": max_loss,
        "es": es,
        "stress": stress,
        "conv": conv,
        "stat": stat,
        "conc": conc,
        "tau": tau_,
    }


def position_loss(q, a, outcome, lower, upper):
    """``loss(K~) = (a - q*K~) / R`` of a net position at a clamped outcome (SPEC §2.7);
    floats or numpy arrays."""
    return (a - q * outcome) / (upper - lower)


def position_components(q: float, a: float, rv: RiskVector, conv_f: float) -> tuple[float, float, float, float, float, float, float]:
    """``(im, max_loss, es, stress, conv, stat, conc)`` of one net position ``(q, a)`` in
    O(1) (SPEC §2.7–2.13), as plain floats; see the module doc. This is the one scalar
    implementation: :func:`position_risk` and :func:`position_risk_dict` wrap it, and
    :func:`positions_risk` repeats its operations in the same order on arrays."""
    width = rv.upper - rv.lower
    loss_lower = (a - q * rv.lower) / width
    loss_upper = (a - q * rv.upper) / width
    max_loss = max(0.0, max(loss_lower, loss_upper))
    tail = rv.tail_low if q > 0.0 else rv.tail_high
    es = (a - q * tail) / width
    stress = max((a - q * rv.stress_lo) / width, (a - q * rv.stress_hi) / width)
    conv = max_loss * conv_f
    stat = max(max(rv.beta * max_loss, es), stress)
    conc = rv.gamma * abs(q) / rv.depth * max_loss
    im = min(max_loss, max(0.0, conv + stat + conc))
    return im, max_loss, es, stress, conv, stat, conc


def position_risk(q: float, a: float, rv: RiskVector, tau_: float, conv_f: float) -> PositionRisk:
    """IM of one net position ``(q, a)`` in O(1) (SPEC §2.7–2.13); see the module doc."""
    return PositionRisk(q, *position_components(q, a, rv, conv_f), tau_)


def position_risk_dict(contract_id: str, q: float, a: float, rv: RiskVector, tau_: float, conv_f: float) -> dict:
    """``position_risk(q, a, rv, tau_, conv_f).as_dict(contract_id)`` without building the
    intermediate :class:`PositionRisk` (the per-fill path builds one per fill)."""
    return risk_dict(contract_id, q, *position_components(q, a, rv, conv_f), tau_)


@dataclass
class RiskArrays:
    """Column form of :class:`PositionRisk` for many positions of one contract."""

    im: np.ndarray
    max_loss: np.ndarray
    es: np.ndarray
    stress: np.ndarray
    conv: np.ndarray
    stat: np.ndarray
    conc: np.ndarray


def positions_risk(q: np.ndarray, a: np.ndarray, rv: RiskVector, conv_f: float) -> RiskArrays:
    """Vectorised :func:`position_risk`: the same operations, in the same order."""
    width = rv.upper - rv.lower
    loss_lower = (a - q * rv.lower) / width
    loss_upper = (a - q * rv.upper) / width
    max_loss = np.maximum(0.0, np.maximum(loss_lower, loss_upper))
    tail = np.where(q > 0.0, rv.tail_low, rv.tail_high)
    es = (a - q * tail) / width
    stress = np.maximum((a - q * rv.stress_lo) / width, (a - q * rv.stress_hi) / width)
    conv = max_loss * conv_f
    stat = np.maximum(np.maximum(rv.beta * max_loss, es), stress)
    conc = rv.gamma * np.abs(q) / rv.depth * max_loss
    im = np.minimum(max_loss, np.maximum(0.0, conv + stat + conc))
    return RiskArrays(im, max_loss, es, stress, conv, stat, conc)


def direct_es(q: float, a: float, anchor: float, loc: float, t_scale: float, lower: float, upper: float, params: Params) -> float:
    """The naive ES (SPEC §2.9) for one position: sample all M outcomes, take the mean of
    the worst ``m`` losses. O(M log M) per call -- the reference the fast path must equal."""
    draws = np.random.default_rng(params.mc_seed).standard_t(params.nu, params.mc_samples)
    outcomes = np.clip(anchor * (1.0 + loc + t_scale * draws), lower, upper)
    losses = position_loss(q, a, outcomes, lower, upper)
    m = params.tail_count()
    return float(np.sort(losses)[-m:].mean())
