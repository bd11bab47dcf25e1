"""One account's history of requirements and calls, as a plot (``kpimargin report``)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from stream.audit.export import TopicMessage
from stream.audit.replay import json_object
from stream.core.timeutil import parse_time_us
from stream.core.topics import (
    CALLS,
    REQUIREMENTS,
)


def account_history(topics: dict[str, list[TopicMessage]], account_id: str) -> tuple[list[dict], list[dict]]:
    """The account's published requirements and calls, each id once, in publish order."""
    out = []
    for topic in (REQUIREMENTS, CALLS):
        seen, records = set(), []
        for r in topics.get(topic, []):
            value = json_object(r.value)
            if value and value.get("account_id") == account_id and value.get("id") not in seen:
                seen.add(value.get("id"))
                records.append(value)
        out.append(records)
    return out[0], out[1]


CALL_MARKERS = {"ISSUED": ("v", "tab:red"), "UPDATED": ("o", "tab:orange"), "SATISFIED": ("^", "tab:green")}


def _dt(as_of: str) -> datetime:
    return datetime.fromtimestamp(parse_time_us(as_of, "as_of") / 1e6, tz=timezone.utc)


def _step_series(requirements: list[dict]) -> tuple[list[datetime], list[float], list[float]]:
    """Times, IMs and equities of the requirements, with the last values held a little
    past the last event so that the final level is visible."""
    x = [_dt(r["as_of"]) for r in requirements]
    im = [float(r["im"]) for r in requirements]
    equity = [float(r["equity"]) for r in requirements]
    span = max(x[-1] - x[0], timedelta(days=1))
    return x + [x[-1] + span * 0.04], im + im[-1:], equity + equity[-1:]


def plot_report(requirements: list[dict], calls: list[dict], account_id: str, out: str | Path) -> Path:
    """Step plot of IM and equity over event time with margin calls marked (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    if not requirements:
        raise ValueError(f"no published requirement for account {account_id!r}")
    x, im, equity = _step_series(requirements)
    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    ax.step(x, im, where="post", label="initial margin (IM)", color="tab:blue", linewidth=2)
    ax.step(x, equity, where="post", label="equity", color="tab:gray", linewidth=2, linestyle="--")
    top = [max(i, e) for i, e in zip(im, equity)]
    ax.fill_between(x, equity, top, step="post", color="tab:red", alpha=0.12, label="shortfall (IM > equity)")
    for status, (marker, color) in CALL_MARKERS.items():
        pts = [c for c in calls if c.get("status") == status]
        if pts:
            level = "equity" if status == "SATISFIED" else "im"  # satisfied: equity covers IM again
            ax.scatter([_dt(c["as_of"]) for c in pts], [float(c[level]) for c in pts], marker=marker, s=90,
                       color=color, edgecolor="black", zorder=5, label=f"margin call {status} ({len(pts)})")
    ax.set_title(f"Account {account_id}: initial margin and equity (published margin.requirements)")
    ax.set_xlabel("event time (as_of, UTC)")
    ax.set_ylabel("USD")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
    ax.yaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    fig.autofmt_xdate()
    fig.text(0.01, 0.01, "as_of is the event-time clock (last tick): events between two ticks share one as_of. "
             "Calls: ISSUED/UPDATED at IM, SATISFIED at equity.", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
