"""What a panel backtest writes: ``forecasts.csv``, ``summary.json`` (byte-identical for the
same panel and flags: no time, no path, no host in it) and ``report.md`` with its plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import orjson

from stream.backtest.forecast import CALIBRATION_C, Forecasts

CSV_COLUMNS = ("series_id", "origin", "n_returns", "side", "anchor", "lower", "upper", "level", "outcome", "loss",
               "var", "es", "stress", "im", "max_loss", "hit_var", "hit_es", "hit_im", "hit_stress", "pit", "es_method")


def write_json(obj: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")
    return path


def write_forecasts_csv(fc: Forecasts, path: Path) -> Path:
    """One row per origin and side, floats in their shortest exact form."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(CSV_COLUMNS)]
    hv, he, hi, hs = fc.hit_var, fc.hit_es, fc.hit_im, fc.hit_stress
    for row in range(2 * fc.origins):
        o, side = row // 2, "long" if row % 2 == 0 else "short"
        si = int(fc.o_series[o])
        sid = fc.series_ids[si]
        if any(ch in sid for ch in ',"\n\r'):
            sid = '"' + sid.replace('"', '""') + '"'
        values = [sid, str(int(fc.o_t[o])), str(int(fc.o_n[o])), side]
        values += [repr(float(a[o])) for a in (fc.o_anchor, fc.o_lower, fc.o_upper, fc.o_level, fc.o_outcome)]
        values += [repr(float(a[row])) for a in (fc.loss, fc.var, fc.es, fc.stress, fc.im, fc.max_loss)]
        values += [str(int(h[row])) for h in (hv, he, hi, hs)]
        values += [repr(float(fc.o_pit[o])), fc.es_methods[si]]
        lines.append(",".join(values))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- markdown
def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0.0 else f"{value:,.{digits}f}"
    return str(value)


def pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{100.0 * value:.{digits}f} %"


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    header = list(header)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def gate_lines(gates: list[dict]) -> list[str]:
    failed = [g for g in gates if not g["pass"]]
    lines = [f"**{'PASS' if not failed else 'FAIL'}**: {len(gates) - len(failed)} of {len(gates)} gates pass "
             f"(exit status {0 if not failed else 1})."]
    if failed:
        lines += ["", "Failed gates:", ""]
        lines += table(("gate", "scope", "value", "rule"),
                       [(g["gate"], g["scope"], num(g["value"]) if not isinstance(g["value"], str) else g["value"],
                         g["rule"]) for g in failed])
    return lines


def _cell_rows(cells: list[dict]) -> list[tuple]:
    rows = []
    for c in cells:
        v, e, i = c["var"], c["es"], c["im"]
        rows.append((
            c["side"], c["bucket"], num(c["observations"]),
            f"{v['exceptions']} ({pct(v['rate'])})", pct(v["expected_rate"]),
            num(v["kupiec"]["p_value"], 3), num(v["christoffersen"]["p_cc"], 3), v["traffic_light"]["zone"] or "–",
            f"{e['exceptions']} ({pct(e['rate'])})", num(e["z2"]["value"], 3), num(e["z2"]["p_value"], 3),
            f"{i['exceptions']} ({pct(i['rate'], 3)})", num(i["p_value_one_sided"], 3),
            num(i["mean_im_over_max_loss"], 3), pct(c["stress"]["rate"]),
        ))
    return rows


def panel_report(summary: dict, plots: dict[str, str], command: str) -> str:
    """``report.md`` of a panel backtest."""
    inp, opt = summary["input"], summary["options"]
    lines = [
        "# Margin model backtest",
        "",
        f"`{command}`",
        "",
        f"Panel `{inp['panel']}` (sha256 `{inp['panel_sha256'][:16]}…`): {num(inp['series'])} series, "
        f"{num(inp['origins'])} origins ({num(inp['series_without_origins'])} series too short for a forecast); "
        f"alpha {opt['alpha']:g}, ES method {opt['es_method']}, parameter flags {opt['param_flags'] or 'none'}, "
        f"seed {opt['seed']}, {num(opt['sims'])} simulated panels for the ES test. Each origin is margined as a "
        "unit long and a unit short position at the anchor price, at listing (tau = 1), with the model's own code.",
        "",
        "## Verdict",
        "",
        *gate_lines(summary["gates"]),
        "",
        "Gates: IM exception rate not significantly above 1 − alpha (one-sided binomial, 5 %) in every cell and "
        "overall; VaR traffic light not red and the Acerbi–Szekely Z2 ES test not rejected (5 %), each side overall.",
        "",
        "## Exceptions by side and number of returns",
        "",
        *table(("side", "n", "obs", "VaR exc.", "expected", "Kupiec p", "Christ. cc p", "traffic", "ES exc.", "Z2",
                "Z2 p", "IM exc.", "IM p (≤ 1−α)", "IM/max_loss", "beyond stress"), _cell_rows(summary["cells"])),
        "",
        "Kupiec: unconditional coverage (χ²₁); Christoffersen cc: coverage and independence of successive "
        "exceptions within a series (χ²₂); traffic light: Basel zones of Bin(N, 1 − alpha) at 95 % / 99.99 %; "
        "Z2 < 0 means realised tail losses larger than the ES said (p from the simulated panels).",
        "",
        "## CCP backtest fields (ISO 20022 auth.066 style), IM",
        "",
        *table(("side", "n", "NbOfObsrvtns", "NbOfXcptns", "Cvrg", "LrgstXcptn", "AvrgXcptn", "LrgstXcptnId"),
               [(c["side"], c["bucket"], *(num(c["im"]["auth066"][k], 6) for k in
                 ("NbOfObsrvtns", "NbOfXcptns", "Cvrg", "LrgstXcptn", "AvrgXcptn")),
                 c["im"]["auth066"]["LrgstXcptnId"] or "–") for c in summary["cells"]]),
        "",
        "Amounts are per unit of notional (loss − IM where the loss exceeded the IM).",
        "",
        "## The predictive distribution: PIT, weighted CRPS, three-interval test",
        "",
        *table(("n", "origins", "PIT KS p", "3-interval LR", "p (χ²₆)", "CRPS", "CRPS left", "CRPS right",
                "CRPS tails", "CRPS center", "below / above stress"),
               [(d["bucket"], num(d["origins"]), num(d["pit_ks"]["p_value"], 3), num(d["three_interval"]["lr"], 3),
                 num(d["three_interval"]["p_value"], 3), *(num(d["crps"][w], 5) for w in
                 ("uniform", "left", "right", "tails", "center")),
                 f"{d['beyond_stress']['below']} / {d['beyond_stress']['above']}") for d in summary["distribution"]]),
        "",
        "Tails of the standardised forecast errors z = (K_t+1 / K_t − 1 − loc) / t_scale (seed 004: Hill index from "
        "the 10 % largest, Weissman probability beyond the model's VaR point t_alpha(nu)):",
        "",
        *table(("n", "model nu", "Hill index left", "Hill index right", "implied VaR exc. left", "implied right",
                "counted left", "counted right"),
               [(d["bucket"], num(d["tails"]["nu"], 1), num(d["tails"]["left"]["tail_index"], 2),
                 num(d["tails"]["right"]["tail_index"], 2), pct(d["tails"]["left"]["implied_rate"]),
                 pct(d["tails"]["right"]["implied_rate"]), pct(d["tails"]["left"]["empirical_rate"]),
                 pct(d["tails"]["right"]["empirical_rate"])) for d in summary["distribution"] if d["tails"]]),
        "",
        "CRPS on the return scale (outcome / anchor − 1), weights of seed 002: lower is better; compare "
        "calibrations, not panels. Three-interval test: below the 1 − alpha quantile, between, above the alpha "
        "quantile, with transitions within each series (5 % critical value 12.59).",
        "",
        "## Calibration: VaR exception rate by n for c = 0, 2, 4, 8",
        "",
    ]
    cal = summary["calibration"]
    cs = [f"{c:g}" for c in CALIBRATION_C]
    lines += table(["n", "obs", "95 % band", *[f"c={c} long" for c in cs], *[f"c={c} short" for c in cs]],
                   [(b["bucket"], num(b["observations"]), f"{pct(b['band_95'][0])}–{pct(b['band_95'][1])}",
                     *(pct(b["long"][c]) for c in cs), *(pct(b["short"][c]) for c in cs)) for b in cal["by_bucket"]])
    lines += ["", f"Expected rate {pct(cal['expected_rate'])}. Mean CRPS (left tail / both tails) by c: "
              + "; ".join(f"c={c}: {num(cal['crps_all'][c]['left'], 5)} / {num(cal['crps_all'][c]['tails'], 5)}"
                          for c in cs) + "."]
    em = summary["es_methods"]
    lines += ["", "## ES: Monte Carlo against analytic", "",
              *table(("side", "sampled rows", "mean (mc − analytic) / max_loss", "RMS", "max abs",
                      "rows with ES ≥ 10 % of max_loss", "their mean (mc − analytic) / analytic", "RMS"),
                     [(side, num(em[side]["sampled"]), pct(em[side]["mean_diff_over_max_loss"]),
                       pct(em[side]["rms_diff_over_max_loss"]), pct(em[side]["max_abs_diff_over_max_loss"]),
                       num(em[side]["rows_es_over_10pct"]), pct(em[side]["mean_rel_diff"]),
                       pct(em[side]["rms_rel_diff"])) for side in ("long", "short")])]
    captions = {
        "exceedances": "Realised loss against VaR, ES and IM at each origin (first series of the panel).",
        "coverage_by_n": "VaR coverage by history length for c = 0, 2, 4, 8, inside the band of a correct model.",
        "pit": "PIT histograms: flat within the band if the predictive law is right; U-shaped if it is too narrow.",
        "es_methods": "Monte Carlo ES against the exact ES on sampled origins.",
        "im_cost": "What the cover costs: IM, ES and VaR as a share of the position's max_loss.",
    }
    lines += ["", "## Plots", ""]
    for name, file in plots.items():
        lines += [f"### {name.replace('_', ' ')}", "", captions.get(name, ""), "", f"![{name}]({file})", ""]
    lines += ["Method and reading guide: `docs/backtest.md` in the repository."]
    return "\n".join(lines) + "\n"
