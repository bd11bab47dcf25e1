"""Per-origin forecasts of a panel, through the model's own functions (:mod:`stream.core.model`).

For series ``s`` and origin ``t`` (``n = t`` returns; at least 2, or 1 with ``sigma_prior``):
the forecast contract has ``history = levels[0..t]``, anchor ``K_t``, range
``[lo*K_t, hi*K_t]`` and ``tau = 1`` (listing time: no convergence term); the realised
outcome is ``clamp(levels[t+1])``. A unit BUY (``long``) and a unit SELL (``short``) at the
anchor price, notional 1 (``q = ±1``, ``a = ±K_t``), are margined with
:func:`stream.core.model.position_components` on :func:`stream.core.model.risk_vector`, exactly as the
engine margins a fill. Per origin and side:

* ``loss`` = :func:`stream.core.model.position_loss` at the realised outcome;
* ``var`` = the loss at the outcome's ``1 - alpha`` (long) or ``alpha`` (short) quantile:
  :func:`stream.core.model.outcome_quantiles` (analytic) or the m-th lowest/highest of the M
  clamped draws, ``m`` the ES tail count (:func:`stream.core.model.mc_outcome_quantiles`);
* ``es``, ``stress``, ``im``, ``max_loss`` as the model computes them (ES method as the
  series' params or the run's flags say);
* ``pit``, per origin: ``F(K-) + V (F(K) - F(K-))`` under the clamped predictive
  (:func:`stream.core.model.outcome_cdf`, the exact law the MC samples), ``V ~ U(0, 1)`` seeded.

For the calibration picture, the analytic VaR hit of each row is also computed with the
inflation ``c`` set to each of :data:`CALIBRATION_C` (the estimate re-run through
:func:`stream.core.model.estimate`). For the mc-vs-analytic comparison, the other method's ES is
computed on a deterministic sample of at most :data:`ES_SAMPLE` origins.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from stream.backtest.panel import Panel, PanelError
from stream.core import distribution, model
from stream.core.errors import Rejected

SIDES = (("long", 1.0), ("short", -1.0))
CALIBRATION_C = (0.0, 2.0, 4.0, 8.0)
ES_SAMPLE = 1000


@dataclass
class Forecasts:
    """Column arrays: ``o_*`` one entry per origin, the others one per row (origin x side,
    row ``2j`` the long side of origin ``j``, row ``2j + 1`` its short side)."""

    series_ids: list[str]
    alpha: float
    es_methods: list[str]  # per series
    # per origin
    o_series: np.ndarray
    o_t: np.ndarray
    o_n: np.ndarray
    o_anchor: np.ndarray
    o_lower: np.ndarray
    o_upper: np.ndarray
    o_level: np.ndarray  # levels[t+1], unclamped
    o_outcome: np.ndarray  # clamped
    o_loc: np.ndarray
    o_t_scale: np.ndarray
    o_nu: np.ndarray
    o_stress_lo: np.ndarray
    o_stress_hi: np.ndarray
    o_pit: np.ndarray
    # per row
    side: np.ndarray  # +1 long, -1 short
    loss: np.ndarray
    var: np.ndarray
    es: np.ndarray
    stress: np.ndarray
    im: np.ndarray
    max_loss: np.ndarray
    es_other: np.ndarray  # the other ES method's ES, NaN outside the sample
    # calibration: c -> per-row analytic VaR hits; per-origin loc and t_scale under that c
    calib_hit: dict[float, np.ndarray] = field(default_factory=dict)
    calib_loc: dict[float, np.ndarray] = field(default_factory=dict)
    calib_t_scale: dict[float, np.ndarray] = field(default_factory=dict)

    @property
    def origins(self) -> int:
        return int(self.o_t.size)

    @property
    def row_origin(self) -> np.ndarray:
        return np.repeat(np.arange(self.origins), 2)

    @property
    def n(self) -> np.ndarray:
        return np.repeat(self.o_n, 2)

    @property
    def series(self) -> np.ndarray:
        return np.repeat(self.o_series, 2)

    @property
    def hit_var(self) -> np.ndarray:
        return self.loss > self.var

    @property
    def hit_es(self) -> np.ndarray:
        return self.loss > self.es

    @property
    def hit_im(self) -> np.ndarray:
        return self.loss > self.im

    @property
    def hit_stress(self) -> np.ndarray:
        return self.loss > self.stress


def _es_sample_step(origins: int) -> int:
    return max(1, -(-origins // ES_SAMPLE))


def run(panel: Panel, seed: int, progress: Callable[[int], None] | None = None) -> Forecasts:
    """Forecast every origin of every series; ``seed`` drives the PIT randomisation."""
    o: dict[str, list] = {k: [] for k in ("series", "t", "n", "anchor", "lower", "upper", "level", "outcome",
                                          "loc", "t_scale", "nu", "stress_lo", "stress_hi")}
    r: dict[str, list] = {k: [] for k in ("side", "loss", "var", "es", "stress", "im", "max_loss", "es_other")}
    c_hit = {c: [] for c in CALIBRATION_C}
    c_loc = {c: [] for c in CALIBRATION_C}
    c_scale = {c: [] for c in CALIBRATION_C}
    step = _es_sample_step(panel.origins)
    j = 0
    for si, s in enumerate(panel.series):
        params = s.params
        conv_f = model.conv_factor(params.k, 1.0)  # tau = 1: 0.0
        other = dataclasses.replace(params, es_method="analytic" if params.es_method == "mc" else "mc")
        calib = [(c, dataclasses.replace(params, c=c)) for c in CALIBRATION_C]
        quantiles = distribution.mc_outcome_quantiles if params.es_method == "mc" else distribution.outcome_quantiles
        for t in s.origins():
            history = s.levels[: t + 1]
            anchor = s.levels[t]
            lower, upper = s.lo * anchor, s.hi * anchor
            try:
                est = model.estimate(history, params)
                rv = model.risk_vector(lower, upper, history, params, est=est)
                rv_other = model.risk_vector(lower, upper, history, other, est=est) if j % step == 0 else None
                calib_est = [(c, pc, model.estimate(history, pc)) for c, pc in calib]
            except Rejected as exc:
                raise PanelError(f"{panel.source}: series {s.series_id!r}", f"levels[0..{t}]",
                                 f"origin {t}: {exc.detail}") from None
            level = s.levels[t + 1]
            outcome = distribution.clamp(level, lower, upper)
            q_low, q_high = quantiles(rv.anchor, rv.loc, rv.t_scale, lower, upper, params)
            for _name, delta in SIDES:
                a = delta * anchor
                im, max_loss, es, stress, _conv, _stat, _conc = model.position_components(delta, a, rv, conv_f)
                r["side"].append(delta)
                r["loss"].append(model.position_loss(delta, a, outcome, lower, upper))
                r["var"].append(model.position_loss(delta, a, q_low if delta > 0 else q_high, lower, upper))
                r["es"].append(es)
                r["stress"].append(stress)
                r["im"].append(im)
                r["max_loss"].append(max_loss)
                r["es_other"].append(model.position_components(delta, a, rv_other, conv_f)[2] if rv_other else np.nan)
            loss_long = r["loss"][-2]
            for c, pc, e in calib_est:
                scale = distribution.student_t_scale(e.sigma_adj, pc.nu)
                lo_q, hi_q = distribution.outcome_quantiles(anchor, e.mu, scale, lower, upper, pc)
                var_long = model.position_loss(1.0, anchor, lo_q, lower, upper)
                var_short = model.position_loss(-1.0, -anchor, hi_q, lower, upper)
                c_hit[c] += [loss_long > var_long, r["loss"][-1] > var_short]
                c_loc[c].append(e.mu)
                c_scale[c].append(scale)
            for key, value in (("series", si), ("t", t), ("n", est.n), ("anchor", anchor), ("lower", lower),
                               ("upper", upper), ("level", level), ("outcome", outcome), ("loc", rv.loc),
                               ("t_scale", rv.t_scale), ("nu", params.nu), ("stress_lo", rv.stress_lo),
                               ("stress_hi", rv.stress_hi)):
                o[key].append(value)
            j += 1
        if progress is not None:
            progress(si + 1)
    ints = {"series", "t", "n"}
    arrays = {f"o_{k}": np.asarray(v, dtype=np.int64 if k in ints else np.float64) for k, v in o.items()}
    rng = np.random.default_rng([seed, 0])
    f_left, f_right = distribution.outcome_cdf(arrays["o_outcome"], arrays["o_anchor"], arrays["o_loc"],
                                        arrays["o_t_scale"], arrays["o_lower"], arrays["o_upper"], arrays["o_nu"])
    pit = f_left + rng.random(f_left.shape) * (f_right - f_left)
    return Forecasts(
        series_ids=[s.series_id for s in panel.series],
        alpha=panel.series[0].params.alpha,
        es_methods=[s.params.es_method for s in panel.series],
        **arrays,
        o_pit=np.asarray(pit, dtype=np.float64).reshape(-1),
        **{k: np.asarray(v, dtype=np.float64) for k, v in r.items()},
        calib_hit={c: np.asarray(v, dtype=bool) for c, v in c_hit.items()},
        calib_loc={c: np.asarray(v, dtype=np.float64) for c, v in c_loc.items()},
        calib_t_scale={c: np.asarray(v, dtype=np.float64) for c, v in c_scale.items()},
    )
