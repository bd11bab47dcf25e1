"""The backtest's PNG plots (matplotlib, Agg backend; imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream.backtest import stats
from stream.backtest.forecast import CALIBRATION_C, Forecasts

EXCEEDANCE_SERIES = 6
C_COLORS = {0.0: "tab:red", 2.0: "tab:orange", 4.0: "tab:blue", 8.0: "tab:green"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    _plt().close(fig)
    return path


def exceedances(fc: Forecasts, path: Path) -> Path:
    """Loss against VaR, ES and IM over the origins of the first few series: the long side
    up, the short side mirrored down; VaR exceptions marked x, IM exceptions circled."""
    plt = _plt()
    shown = list(dict.fromkeys(int(s) for s in fc.o_series))[:EXCEEDANCE_SERIES]
    cols = 1 if len(shown) == 1 else 2
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.6 * rows), dpi=100, squeeze=False)
    for ax, si in zip(axes.flat, shown):
        o = np.flatnonzero(fc.o_series == si)
        t = fc.o_t[o]
        for s, sign in ((0, 1.0), (1, -1.0)):
            r = 2 * o + s
            label = s == 0
            ax.step(t, sign * fc.im[r], where="mid", color="tab:green", lw=1.6, label="IM" if label else None)
            ax.step(t, sign * fc.es[r], where="mid", color="tab:orange", lw=1.2, label="ES" if label else None)
            ax.step(t, sign * fc.var[r], where="mid", color="tab:blue", lw=1.2, ls="--", label="VaR" if label else None)
            ax.scatter(t, sign * fc.loss[r], s=14, color="black", zorder=4, label="realised loss" if label else None)
            hit = fc.loss[r] > fc.var[r]
            ax.scatter(t[hit], sign * fc.loss[r][hit], s=70, marker="x", color="tab:red", zorder=5,
                       label="loss > VaR" if label else None)
            big = fc.loss[r] > fc.im[r]
            ax.scatter(t[big], sign * fc.loss[r][big], s=160, facecolors="none", edgecolors="darkred", lw=1.6,
                       zorder=6, label="loss > IM" if label else None)
        ax.axhline(0.0, color="gray", lw=0.6)
        ax.set_title(fc.series_ids[si], fontsize=10)
        ax.set_xlabel("origin t (returns n = t)")
        ax.set_ylabel("long loss = −short loss (per notional)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.suptitle("Realised loss of a unit long (dots; a short loses the opposite) against the long's VaR, ES, IM "
                 "(above 0) and minus the short's (below 0)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07 if rows == 1 else 0.035, 1, 1))
    return _save(fig, path)


def coverage_by_n(fc: Forecasts, path: Path) -> Path:
    """VaR coverage (1 - exception rate) against n for each calibration c, long solid,
    short dashed, inside the 95 % binomial band of a correct model."""
    plt = _plt()
    p = 1.0 - fc.alpha
    ns = np.unique(fc.o_n)
    counts = np.array([np.sum(fc.o_n == n) for n in ns])
    bands = np.array([stats.binomial_band(int(k), p) for k in counts])
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    ax.fill_between(ns, 1.0 - bands[:, 1], 1.0 - bands[:, 0], color="gray", alpha=0.25, step="mid",
                    label="95 % binomial band of a correct model")
    ax.axhline(fc.alpha, color="black", lw=1.0, label=f"target coverage {fc.alpha:g}")
    for c in CALIBRATION_C:
        for s, style in ((0, "-"), (1, "--")):
            rate = np.array([fc.calib_hit[c][s::2][fc.o_n == n].mean() for n in ns])
            ax.plot(ns, 1.0 - rate, style, marker="o", ms=3, color=C_COLORS.get(c, None),
                    label=f"c = {c:g} {'long' if s == 0 else 'short'}")
    ax.set_xlabel("returns in the history (n)")
    ax.set_ylabel(f"coverage of the {fc.alpha:g} VaR (share of outcomes with loss <= VaR)")
    ax.set_title("Calibration: VaR coverage by history length, for inflation c = 0, 2, 4, 8")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    fig.text(0.01, 0.01, f"{fc.origins:,} origins; observations per n: {int(counts.min()):,}-{int(counts.max()):,}",
             fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path)


def pit_histogram(fc: Forecasts, path: Path, bins: int = 20) -> Path:
    """PIT histograms (all origins; the fewest-returns bucket) with 95 % binomial bands."""
    plt = _plt()
    groups = [("all origins", np.ones(fc.origins, dtype=bool))]
    if fc.origins:
        n_min = int(fc.o_n.min())
        groups.append((f"n = {n_min} returns", fc.o_n == n_min))
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.2), dpi=100, squeeze=False)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for ax, (title, mask) in zip(axes.flat, groups):
        u = fc.o_pit[mask]
        counts, _ = np.histogram(u, bins=edges)
        n = int(mask.sum())
        lo, hi = stats.binomial_band(n, 1.0 / bins)
        ax.bar(edges[:-1], counts, width=1.0 / bins, align="edge", color="tab:blue", alpha=0.7, edgecolor="white")
        ax.axhspan(lo * n, hi * n, color="gray", alpha=0.25, label="95 % band per bin (uniform PIT)")
        ax.axhline(n / bins, color="black", lw=1.0)
        ax.set_title(f"PIT, {title} ({n:,})", fontsize=10)
        ax.set_xlabel("randomised PIT of the outcome")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def es_methods(fc: Forecasts, path: Path) -> Path:
    """ES by Monte Carlo against the exact (analytic) ES on the sampled origins."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    method = np.repeat(np.asarray(fc.es_methods)[fc.o_series], 2)
    sel = np.isfinite(fc.es_other)
    mc = np.where(method == "mc", fc.es, fc.es_other)[sel]
    analytic = np.where(method == "mc", fc.es_other, fc.es)[sel]
    side = fc.side[sel]
    for sign, name, color in ((1.0, "long", "tab:blue"), (-1.0, "short", "tab:orange")):
        ax.scatter(analytic[side == sign], mc[side == sign], s=8, alpha=0.6, color=color, label=name)
    if sel.any():
        lims = [min(mc.min(), analytic.min()), max(mc.max(), analytic.max())]
        ax.plot(lims, lims, color="black", lw=0.8, label="equal")
    ax.set_xlabel("ES, analytic (exact clamped Student-t tail)")
    ax.set_ylabel("ES, Monte Carlo (the note's seeded draws)")
    ax.set_title(f"mc vs analytic ES ({int(sel.sum()):,} sampled rows)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def im_cost(fc: Forecasts, path: Path) -> Path:
    """IM / max_loss (and VaR, ES / max_loss) against n: what the coverage costs."""
    plt = _plt()
    ns = np.unique(fc.o_n)
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    for s, name, color in ((0, "long", "tab:blue"), (1, "short", "tab:orange")):
        ml = fc.max_loss[s::2]
        ok = ml > 0.0
        for values, style, label in ((fc.im[s::2], "-", "IM"), (fc.es[s::2], "--", "ES"), (fc.var[s::2], ":", "VaR")):
            ratio = np.where(ok, values / np.where(ok, ml, 1.0), np.nan)
            mean = np.array([np.nanmean(ratio[fc.o_n == n]) if np.any(ok & (fc.o_n == n)) else np.nan for n in ns])
            ax.plot(ns, mean, style, marker="o", ms=3, color=color, label=f"{label} / max_loss, {name}")
            if label == "IM":
                q10 = [np.nanquantile(ratio[fc.o_n == n], 0.1) if np.any(ok & (fc.o_n == n)) else np.nan for n in ns]
                q90 = [np.nanquantile(ratio[fc.o_n == n], 0.9) if np.any(ok & (fc.o_n == n)) else np.nan for n in ns]
                ax.fill_between(ns, q10, q90, color=color, alpha=0.12)
    ax.set_xlabel("returns in the history (n)")
    ax.set_ylabel("share of the position's max_loss")
    ax.set_title("Cost of the cover: IM (10-90 % band), ES and VaR as a share of max_loss, at listing (tau = 1)")
    ax.set_ylim(0.0, 1.05)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def all_plots(fc: Forecasts, directory: Path) -> dict[str, str]:
    """Every plot of a panel backtest; returns ``{name: file name}``."""
    made = {
        "exceedances": exceedances(fc, directory / "exceedances.png"),
        "coverage_by_n": coverage_by_n(fc, directory / "coverage_by_n.png"),
        "pit": pit_histogram(fc, directory / "pit.png"),
        "es_methods": es_methods(fc, directory / "es_methods.png"),
        "im_cost": im_cost(fc, directory / "im_cost.png"),
    }
    return {name: path.name for name, path in made.items()}
