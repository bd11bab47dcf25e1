"""``kpimargin backtest --from-log``: the IM the processor *published*, against the loss each
position realised at its contract's settlement.

The topics come from an export directory (``--dir``) or the broker, through
:func:`stream.audit.inputs.load_topics` (the broker path imports aiokafka lazily, there only).
``margin.log`` is replayed entry by entry with :func:`stream.log.ordered_log.apply_entry`, the
worker's own loop, for two things only: each requirement's positions ``(q, a)`` at the
moment it was published (a requirement carries ``q`` but not ``a``) and the settlement
values. The IM compared is the published one, never the replay's.

An observation is one position of one published requirement on a contract that has since
settled: the loss that position ``(q, a)`` realised at settlement, held unchanged,
``loss = (a - q * clamp(value)) / R`` (:func:`stream.core.model.position_loss`, the float
arithmetic of the published ``max_loss``, so a position whose IM is its ``max_loss`` is
never an exception by rounding), against the position's published ``im``. Observations of
one position at successive requirements are strongly dependent: the one-sided binomial test
below treats them as independent and is a screen, not an exact test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.audit.inputs import log_entries
from stream.audit.replay import published_by_id
from stream.backtest import stats
from stream.backtest.report import gate_lines, num, pct, table, write_json
from stream.core import distribution, model
from stream.core.state import EngineConfig, EngineState
from stream.core.topics import LOG, REQUIREMENTS
from stream.log.ordered_log import apply_entry

GATE_LEVEL = 0.05


@dataclass(frozen=True)
class Observation:
    requirement_id: str
    account_id: str
    as_of: str
    contract_id: str
    q: float
    im: float
    max_loss: float
    settlement: float
    loss: float

    @property
    def exception(self) -> bool:
        return self.loss > self.im


def observations(topics: dict, config: EngineConfig | None = None) -> tuple[list[Observation], dict, dict]:
    """Every observation (in log order of the published requirements), the settled
    contracts ``{id: {value, lower, upper, alpha}}`` and counts of what was skipped."""
    snapshots: dict[str, dict[str, tuple[float, float]]] = {}
    states: dict[int, EngineState] = {}
    for partition, offset, index, entry in log_entries(topics.get(LOG, [])):
        state = states.get(partition)
        if state is None:
            state = states[partition] = EngineState(config=config or EngineConfig())
        for out in apply_entry(state, partition, offset, entry, index):
            if out.topic == REQUIREMENTS:
                account = state.accounts.get(out.value["account_id"])
                held = account.positions.items() if account is not None else ()
                snapshots[out.value["id"]] = {cid: state.contracts[cid].book.floats(row) for cid, row in held}
    settled: dict[str, dict] = {}
    for state in states.values():
        for cid, contract in state.contracts.items():
            if contract.settlement is not None and cid not in settled:
                settled[cid] = {"value": float(contract.settlement.value), "lower": contract.rv.lower,
                                "upper": contract.rv.upper, "alpha": contract.listing.params.alpha}
    published, bad = published_by_id(topics)
    skipped = {"requirements_not_reproduced": 0, "requirements_with_conflicting_versions": 0,
               "positions_on_open_contracts": 0, "positions_not_reproduced": 0, "undecodable_records": len(bad)}
    found: list[tuple[int, int, Observation]] = []
    for rid, versions in published.items():
        versions = [v for v in versions if v.topic == REQUIREMENTS]
        if not versions:
            continue
        if len(versions) > 1:
            skipped["requirements_with_conflicting_versions"] += 1
        record, snapshot = versions[0].value, snapshots.get(rid)
        if snapshot is None:
            skipped["requirements_not_reproduced"] += 1
            continue
        for pos in record.get("positions") or []:
            cid = pos.get("contract_id")
            contract = settled.get(cid)
            if contract is None:
                skipped["positions_on_open_contracts"] += 1
                continue
            qa = snapshot.get(cid)
            if qa is None or qa[0] != pos.get("q"):
                skipped["positions_not_reproduced"] += 1
                continue
            q, a = qa
            outcome = distribution.clamp(contract["value"], contract["lower"], contract["upper"])
            loss = model.position_loss(q, a, outcome, contract["lower"], contract["upper"])
            found.append((versions[0].partition, versions[0].offset, Observation(
                rid, str(record.get("account_id")), str(record.get("as_of")), cid, q, float(pos["im"]),
                float(pos["max_loss"]), contract["value"], float(loss))))
    found.sort(key=lambda t: (t[0], t[1], t[2].contract_id))
    return [o for _p, _o, o in found], settled, skipped


def _stats(obs: list[Observation], alpha: float) -> dict:
    n = len(obs)
    exc = [o for o in obs if o.exception]
    excess = [o.loss - o.im for o in exc]
    largest = exc[int(np.argmax(excess))] if exc else None
    p = 1.0 - alpha
    return {
        "observations": n,
        "exceptions": len(exc),
        "coverage": 1.0 - len(exc) / n if n else None,
        "largest_exception": max(excess) if exc else 0.0,
        "largest_exception_id": None if largest is None else f"{largest.requirement_id}/{largest.contract_id}",
        "mean_exception": float(np.mean(excess)) if exc else 0.0,
        "expected_rate": p,
        "p_value_one_sided": stats.one_sided_binomial(n, len(exc), p),
        "auth066": {"NbOfObsrvtns": n, "NbOfXcptns": len(exc), "Cvrg": 1.0 - len(exc) / n if n else None,
                    "LrgstXcptn": max(excess) if exc else 0.0, "AvrgXcptn": float(np.mean(excess)) if exc else 0.0},
    }


def summarize(obs: list[Observation], settled: dict, skipped: dict, source: str) -> dict:
    per_contract = {}
    for cid in sorted(settled):
        mine = [o for o in obs if o.contract_id == cid]
        per_contract[cid] = {"settlement": settled[cid]["value"], **_stats(mine, settled[cid]["alpha"])}
    alphas = {c["alpha"] for c in settled.values()}
    overall = _stats(obs, min(alphas) if alphas else 0.99)
    gates = []
    for scope, s in [*per_contract.items(), ("all", overall)]:
        pv = s["p_value_one_sided"]
        gates.append({"gate": "im_coverage", "scope": scope, "value": pv,
                      "rule": f"P(X >= exceptions | N, 1-alpha) >= {GATE_LEVEL}", "pass": pv is None or pv >= GATE_LEVEL})
    return {"tool": "kpimargin backtest --from-log", "format": 1, "source": source,
            "pass": all(g["pass"] for g in gates), "gates": gates, "overall": overall,
            "contracts": per_contract, "skipped": skipped}


def write_csv(obs: list[Observation], path: Path) -> Path:
    cols = ("requirement_id", "account_id", "as_of", "contract_id", "q", "im", "max_loss", "settlement", "loss",
            "exception")
    lines = [",".join(cols)]
    for o in obs:
        lines.append(",".join([o.requirement_id, o.account_id, o.as_of, o.contract_id, repr(o.q), repr(o.im),
                               repr(o.max_loss), repr(o.settlement), repr(o.loss), str(int(o.exception))]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def plot(obs: list[Observation], path: Path) -> Path:
    """Published IM against the loss realised at settlement, one colour per contract;
    points above the diagonal are exceptions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    for cid in sorted({o.contract_id for o in obs}):
        mine = [o for o in obs if o.contract_id == cid]
        ax.scatter([o.im for o in mine], [o.loss for o in mine], s=18, alpha=0.7, label=cid)
        exc = [o for o in mine if o.exception]
        ax.scatter([o.im for o in exc], [o.loss for o in exc], s=90, facecolors="none", edgecolors="darkred")
    top = max([max(o.im, o.loss) for o in obs] + [1.0])
    bottom = min([o.loss for o in obs] + [0.0])
    ax.plot([0.0, top], [0.0, top], color="black", lw=0.8, label="loss = IM")
    pad = 0.05 * (top - bottom)
    ax.set_xlim(0.0, top + pad)
    ax.set_ylim(bottom - pad, top + pad)
    ax.set_xlabel("published position IM (USD)")
    ax.set_ylabel("loss of that position at settlement (USD; < 0 is a gain)")
    ax.set_title(f"Published IM vs realised loss ({len(obs):,} observations; circled: loss > IM)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def report_md(summary: dict, plot_file: str | None, command: str) -> str:
    def row(scope, s):
        return (scope, num(s.get("settlement")) if "settlement" in s else "–", num(s["observations"]),
                num(s["exceptions"]), pct(s["coverage"], 3), num(s["largest_exception"]), num(s["mean_exception"]),
                num(s["p_value_one_sided"], 3))

    rows = [row(cid, s) for cid, s in summary["contracts"].items()] + [row("all", summary["overall"])]
    lines = ["# Backtest of the published margin requirements", "", f"`{command}`", "",
             f"Source: {summary['source']}. Each position of each published requirement on a settled contract, "
             "held to settlement, against the IM published for it.", "", "## Verdict", "",
             *gate_lines(summary["gates"]), "",
             "Gate: the IM exception rate is not significantly above 1 − alpha (one-sided binomial, 5 %), per "
             "contract and overall. Observations of one position at successive requirements are dependent: "
             "read the test as a screen.", "", "## Observations, exceptions, coverage (ISO 20022 auth.066 style)", "",
             *table(("contract", "settlement", "observations", "exceptions", "coverage", "largest exception (USD)",
                     "mean exception (USD)", "p (rate ≤ 1−α)"), rows), "",
             "Skipped: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary["skipped"].items()) + "."]
    if plot_file:
        lines += ["", "## Plot", "", f"![published IM vs realised loss]({plot_file})"]
    return "\n".join(lines) + "\n"


def run(topics: dict, out: Path, source: str, command: str, config: EngineConfig | None = None) -> dict:
    """Write ``summary.json``, ``observations.csv``, ``report.md`` (and a plot) to ``out``."""
    obs, settled, skipped = observations(topics, config)
    summary = summarize(obs, settled, skipped, source)
    out.mkdir(parents=True, exist_ok=True)
    write_json(summary, out / "summary.json")
    write_csv(obs, out / "observations.csv")
    plot_file = plot(obs, out / "im_vs_loss.png").name if obs else None
    (out / "report.md").write_text(report_md(summary, plot_file, command), encoding="utf-8")
    return summary
