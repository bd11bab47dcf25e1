"""The statistics of :mod:`.stats` applied to a panel's forecasts: per cell (side x bucket
of n) and overall, the calibration by n for several ``c``, and the pass/fail gates.

Cells: side ``long``/``short`` x bucket of the number of returns ``n`` (:data:`BUCKETS`),
plus ``all`` per side. Exceptions: ``loss > var`` (expected rate ``1 - alpha``), ``loss >
es``, ``loss > im``, ``loss > stress``. Christoffersen's transitions are counted within each
series (successive origins of one side); a transition belongs to the cell of its later
observation. Outcome-based statistics (PIT, CRPS, the three-interval test) are per bucket,
one observation per origin. The ES test's critical values come from ``sims`` panels
simulated from the forecasts' own predictive laws (seeded).

Gates (the exit status is 1 when one fails), :data:`GATE_LEVEL` = 5 %:

* ``im_coverage`` for every cell and each side overall: the one-sided binomial test that
  the IM exception rate is at most ``1 - alpha`` is not rejected (EMIR RTS 153/2013 Art. 49:
  coverage of at least 99 %);
* ``var_traffic_light`` for each side overall: not red;
* ``es_z2`` for each side overall: the Acerbi-Szekely ``Z_2`` test is not rejected.

The per-cell VaR and ES tests are reported, not gated: they show where the model is
under-covered (few returns) without turning one bucket's multiple-testing noise into a
failure.
"""

from __future__ import annotations

import numpy as np

from stream.backtest import stats
from stream.backtest.forecast import CALIBRATION_C, Forecasts
from stream.core import distribution, model

BUCKETS = (("1", 1, 1), ("2", 2, 2), ("3-4", 3, 4), ("5-7", 5, 7), ("8-12", 8, 12), ("13+", 13, 1 << 62))
SIDE_NAMES = ("long", "short")
GATE_LEVEL = 0.05
Z2_CHUNK = 2000


def bucket_index(n: np.ndarray) -> np.ndarray:
    out = np.full(n.shape, -1, dtype=np.int64)
    for i, (_name, lo, hi) in enumerate(BUCKETS):
        out[(n >= lo) & (n <= hi)] = i
    return out


def _f(value) -> float | None:
    return None if value is None else float(value)


def _cells(fc: Forecasts) -> list[tuple[int, str, np.ndarray]]:
    """``(side index, bucket name, origin mask)``: each non-empty bucket, then ``all``."""
    b = bucket_index(fc.o_n)
    cells = []
    for s in range(2):
        for i, (name, _lo, _hi) in enumerate(BUCKETS):
            if (b == i).any():
                cells.append((s, name, b == i))
        cells.append((s, "all", np.ones(fc.origins, dtype=bool)))
    return cells


def simulate_z2(fc: Forecasts, cells: list[tuple[int, str, np.ndarray]], sims: int, seed: int) -> np.ndarray:
    """``sims`` values of ``Z_2`` per cell, each from outcomes drawn from every origin's
    predictive law (:func:`stream.core.model.outcome_at` of Student-t draws) against the
    forecasts' own VaR and ES."""
    p = 1.0 - fc.alpha
    rng = np.random.default_rng([seed, 1])
    sums = np.zeros((len(cells), sims))
    counts = np.zeros(len(cells))
    for k, (s, _name, mask) in enumerate(cells):
        counts[k] = np.sum(mask & (fc.es[s::2] > 0.0))
    for start in range(0, fc.origins, Z2_CHUNK):
        o = slice(start, min(start + Z2_CHUNK, fc.origins))
        col = lambda a: a[o][:, None]  # noqa: E731
        draws = rng.standard_t(col(fc.o_nu), size=(o.stop - o.start, sims))
        outcome = distribution.outcome_at(draws, col(fc.o_anchor), col(fc.o_loc), col(fc.o_t_scale),
                                   col(fc.o_lower), col(fc.o_upper))
        for s, delta in enumerate((1.0, -1.0)):
            var, es = fc.var[s::2][o][:, None], fc.es[s::2][o][:, None]
            loss = model.position_loss(delta, delta * col(fc.o_anchor), outcome, col(fc.o_lower), col(fc.o_upper))
            contrib = np.where((loss > var) & (es > 0.0), loss / np.where(es > 0.0, es, 1.0), 0.0)
            for k, (side, _name, mask) in enumerate(cells):
                if side == s:
                    sums[k] += mask[o].astype(np.float64) @ contrib
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - sums / (counts[:, None] * p)


def _cell(fc: Forecasts, s: int, name: str, mask: np.ndarray, z2_sim: np.ndarray) -> dict:
    p = 1.0 - fc.alpha
    loss, var, es, im = fc.loss[s::2], fc.var[s::2], fc.es[s::2], fc.im[s::2]
    stress, max_loss = fc.stress[s::2], fc.max_loss[s::2]
    n = int(mask.sum())
    hit_var = loss > var
    x_var = int(hit_var[mask].sum())
    x_es = int((loss > es)[mask].sum())
    hit_im = (loss > im) & mask
    x_im = int(hit_im.sum())
    excess = (loss - im)[hit_im]
    largest = int(np.flatnonzero(hit_im)[np.argmax(excess)]) if x_im else None
    z2_obs = stats.z2(loss[mask], var[mask], es[mask], p)
    sim = z2_sim[np.isfinite(z2_sim)]
    z2_p = None if z2_obs is None or sim.size == 0 else float((1 + np.sum(sim <= z2_obs)) / (1 + sim.size))
    cost = np.divide(im, max_loss, out=np.full(im.shape, np.nan), where=max_loss > 0.0)[mask]
    cost = cost[np.isfinite(cost)]
    return {
        "side": SIDE_NAMES[s],
        "bucket": name,
        "observations": n,
        "var": {
            "exceptions": x_var,
            "rate": x_var / n if n else None,
            "expected_rate": p,
            "band_95": list(stats.binomial_band(n, p)),
            "kupiec": stats.kupiec(n, x_var, p),
            "christoffersen": stats.christoffersen(stats.transitions(hit_var, fc.o_series, mask), n, x_var, p),
            "traffic_light": stats.traffic_light(n, x_var, p),
        },
        "es": {
            "exceptions": x_es,
            "rate": x_es / n if n else None,
            "z2": {"value": z2_obs, "p_value": z2_p,
                   "critical_5pct": float(np.quantile(sim, 0.05)) if sim.size else None,
                   "observations": int(np.sum(mask & (es > 0.0)))},
        },
        "im": {
            "exceptions": x_im,
            "rate": x_im / n if n else None,
            "p_value_one_sided": stats.one_sided_binomial(n, x_im, p),
            "mean_im_over_max_loss": float(cost.mean()) if cost.size else None,
            "auth066": {
                "NbOfObsrvtns": n,
                "NbOfXcptns": x_im,
                "Cvrg": 1.0 - x_im / n if n else None,
                "LrgstXcptn": float(excess.max()) if x_im else 0.0,
                "AvrgXcptn": float(excess.mean()) if x_im else 0.0,
                "LrgstXcptnId": None if largest is None else
                f"{fc.series_ids[int(fc.o_series[largest])]}@{int(fc.o_t[largest])}",
            },
        },
        "stress": {"exceptions": int((loss > stress)[mask].sum()),
                   "rate": float((loss > stress)[mask].mean()) if n else None},
    }


def _crps_means(fc: Forecasts, loc: np.ndarray, t_scale: np.ndarray, mask: np.ndarray) -> dict:
    """Mean weighted CRPS (return scale ``K~/anchor - 1``) of the origins in ``mask``."""
    if not mask.any():
        return {name: None for name in stats.CRPS_WEIGHTS}
    idx = np.flatnonzero(mask)
    totals = {name: 0.0 for name in stats.CRPS_WEIGHTS}
    for start in range(0, idx.size, Z2_CHUNK):
        i = idx[start:start + Z2_CHUNK]
        tq = np.stack([stats.t_ppf_grid(float(nu)) for nu in fc.o_nu[i]])
        col = lambda a: a[i][:, None]  # noqa: E731
        q = distribution.outcome_at(tq, col(fc.o_anchor), loc[i][:, None], t_scale[i][:, None], col(fc.o_lower),
                             col(fc.o_upper)) / col(fc.o_anchor) - 1.0
        z = fc.o_outcome[i] / fc.o_anchor[i] - 1.0
        for name, values in stats.weighted_crps(q, z).items():
            totals[name] += float(values.sum())
    return {name: total / idx.size for name, total in totals.items()}


def _tails(fc: Forecasts, mask: np.ndarray) -> dict | None:
    """Seed 004's EVT check on the standardised forecast errors
    ``z = (K_{t+1}/K_t - 1 - loc) / t_scale`` (unclamped): each tail's Hill index (the
    model says ``nu``) and the Weissman probability beyond the model's VaR point
    ``t_{alpha}(nu)`` (the model says ``1 - alpha``). None when ``nu`` differs by series."""
    nus = np.unique(fc.o_nu)
    if nus.size != 1:
        return None
    ok = mask & (fc.o_t_scale > 0.0)
    z = (fc.o_level[ok] / fc.o_anchor[ok] - 1.0 - fc.o_loc[ok]) / fc.o_t_scale[ok]
    _low, u = distribution.tail_points(fc.alpha, float(nus[0]))
    return {"nu": float(nus[0]), "threshold": u, "left": stats.tail_check(-z, u), "right": stats.tail_check(z, u)}


def _distribution(fc: Forecasts, name: str, mask: np.ndarray) -> dict:
    p = 1.0 - fc.alpha
    intervals = np.where(fc.loss[0::2] > fc.var[0::2], 0, np.where(fc.loss[1::2] > fc.var[1::2], 2, 1))
    return {
        "tails": _tails(fc, mask),
        "bucket": name,
        "origins": int(mask.sum()),
        "pit_ks": stats.ks_uniform(fc.o_pit[mask]),
        "crps": _crps_means(fc, fc.o_loc, fc.o_t_scale, mask),
        "three_interval": stats.three_interval(stats.interval_transitions(intervals, fc.o_series, mask), p),
        "beyond_stress": {"below": int((fc.o_outcome < fc.o_stress_lo)[mask].sum()),
                          "above": int((fc.o_outcome > fc.o_stress_hi)[mask].sum())},
    }


def calibration(fc: Forecasts) -> dict:
    """Analytic VaR exception rates by n and by bucket for each ``c`` in
    :data:`CALIBRATION_C`, each side, with the 95 % binomial band of the rate."""
    p = 1.0 - fc.alpha
    b = bucket_index(fc.o_n)

    def rows(key, mask_o):
        n = int(mask_o.sum())
        entry = {key[0]: key[1], "observations": n, "band_95": list(stats.binomial_band(n, p))}
        for s, side in enumerate(SIDE_NAMES):
            entry[side] = {f"{c:g}": float(fc.calib_hit[c][s::2][mask_o].mean()) if n else None for c in CALIBRATION_C}
        return entry

    by_n = [rows(("n", int(n)), fc.o_n == n) for n in np.unique(fc.o_n)]
    by_bucket = [rows(("bucket", name), b == i) for i, (name, _lo, _hi) in enumerate(BUCKETS) if (b == i).any()]
    everything = np.ones(fc.origins, dtype=bool)
    crps = {f"{c:g}": _crps_means(fc, fc.calib_loc[c], fc.calib_t_scale[c], everything) for c in CALIBRATION_C}
    return {"c": [float(c) for c in CALIBRATION_C], "expected_rate": p, "by_n": by_n, "by_bucket": by_bucket,
            "crps_all": crps}


def es_methods(fc: Forecasts) -> dict:
    """The sampled rows' ES by the other method: mc minus analytic in units of the
    position's max_loss, and relative where the exact ES is at least 10 % of max_loss
    (below, a relative difference says little)."""
    out = {}
    row_method = np.repeat(np.asarray(fc.es_methods)[fc.o_series], 2)
    for s, side in enumerate(SIDE_NAMES):
        sel = np.isfinite(fc.es_other[s::2]) & (fc.max_loss[s::2] > 0.0)
        mine, other, ml = fc.es[s::2][sel], fc.es_other[s::2][sel], fc.max_loss[s::2][sel]
        is_mc = row_method[s::2][sel] == "mc"
        mc, analytic = np.where(is_mc, mine, other), np.where(is_mc, other, mine)
        diff = (mc - analytic) / ml
        big = analytic >= 0.1 * ml
        rel = (mc[big] - analytic[big]) / analytic[big]
        out[side] = {"sampled": int(sel.sum()),
                     "mean_diff_over_max_loss": float(diff.mean()) if diff.size else None,
                     "rms_diff_over_max_loss": float(np.sqrt(np.mean(diff**2))) if diff.size else None,
                     "max_abs_diff_over_max_loss": float(np.abs(diff).max()) if diff.size else None,
                     "rows_es_over_10pct": int(big.sum()),
                     "mean_rel_diff": float(rel.mean()) if rel.size else None,
                     "rms_rel_diff": float(np.sqrt(np.mean(rel**2))) if rel.size else None}
    return out


def gates(cells: list[dict]) -> list[dict]:
    out = []
    for cell in cells:
        scope = f"{cell['side']} {cell['bucket']}"
        pv = cell["im"]["p_value_one_sided"]
        out.append({"gate": "im_coverage", "scope": scope, "value": pv,
                    "rule": f"P(X >= exceptions | N, 1-alpha) >= {GATE_LEVEL}", "pass": pv is None or pv >= GATE_LEVEL})
        if cell["bucket"] != "all":
            continue
        zone = cell["var"]["traffic_light"]["zone"]
        out.append({"gate": "var_traffic_light", "scope": scope, "value": zone, "rule": "zone is not red",
                    "pass": zone != "red"})
        z2p = cell["es"]["z2"]["p_value"]
        out.append({"gate": "es_z2", "scope": scope, "value": z2p, "rule": f"Z2 simulated p-value >= {GATE_LEVEL}",
                    "pass": z2p is None or z2p >= GATE_LEVEL})
    return out


def summarize(fc: Forecasts, sims: int, seed: int) -> dict:
    """Every statistic of the run (without its inputs and options, added by the caller)."""
    cells = _cells(fc)
    z2_sim = simulate_z2(fc, cells, sims, seed) if sims > 0 else np.full((len(cells), 0), np.nan)
    cell_stats = [_cell(fc, s, name, mask, z2_sim[k]) for k, (s, name, mask) in enumerate(cells)]
    b = bucket_index(fc.o_n)
    dist = [_distribution(fc, name, b == i) for i, (name, _lo, _hi) in enumerate(BUCKETS) if (b == i).any()]
    dist.append(_distribution(fc, "all", np.ones(fc.origins, dtype=bool)))
    checks = gates(cell_stats)
    return {
        "pass": all(g["pass"] for g in checks),
        "gates": checks,
        "cells": cell_stats,
        "distribution": dist,
        "calibration": calibration(fc),
        "es_methods": es_methods(fc),
    }
