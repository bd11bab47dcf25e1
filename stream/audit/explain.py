"""One account's number, explained: the log replayed up to a time and the components of
its requirement (``kpimargin explain``)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from stream.audit.replay import time_or_none
from stream.core.money import cents_str, cents_up
from stream.core.requirements import account_risk
from stream.core.state import EngineConfig, EngineState, Output
from stream.core.timeutil import format_time_us
from stream.core.topics import (
    ACCOUNT_TOPICS,
    CALLS,
    COLLATERAL,
    DEADLETTER,
    FILLS,
    FLASH,
    LISTINGS,
    LOG,
    REQUIREMENTS,
    SETTLEMENTS,
    TICKS,
)
from stream.log.ordered_log import LogEntry, apply_entry, entry_source

EVENT_TIME_FIELD = {TICKS: "ts", FILLS: "ts", COLLATERAL: "ts", FLASH: "as_of", SETTLEMENTS: "ts", LISTINGS: "listing_time"}


def event_time_us(topic: str, value: dict) -> int | None:
    """An entry's event time: tick ts, fill/movement ts, flash as_of, settlement ts,
    listing listing_time; None when absent or unparseable."""
    name = EVENT_TIME_FIELD.get(topic)
    return time_or_none(value.get(name)) if name else None


def account_partition(entries: list[LogEntry], account_id: str) -> int | None:
    """The log partition whose fill/collateral entries name the account."""
    for partition, _offset, _index, entry in entries:
        source = entry_source(entry)
        if source and source[0] in ACCOUNT_TOPICS and source[3].get("account_id") == account_id:
            return partition
    return None


def cutoff_index(entries: list[LogEntry], at_us: int | None) -> int:
    """How many entries to apply: up to and including the last one whose event time is
    at or before ``at_us`` (all of them when ``at_us`` is None)."""
    if at_us is None:
        return len(entries)
    last = -1
    for i, (_p, _o, _index, entry) in enumerate(entries):
        source = entry_source(entry)
        t = event_time_us(source[0], source[3]) if source else None
        if t is not None and t <= at_us:
            last = i
    return last + 1


def summarize(topic: str, v: dict) -> str:
    """One line describing an input event."""
    if topic == FILLS:
        return f"fill {v.get('trade_id')} {v.get('side')} {v.get('notional')} {v.get('contract_id')} @ {v.get('price')} ({v.get('ts')})"
    if topic == COLLATERAL:
        amount = str(v.get("amount"))
        kind = "withdrawal" if amount.startswith("-") else "deposit"
        return f"{kind} {v.get('movement_id')} {amount} ({v.get('ts')})"
    if topic == TICKS:
        return f"tick {v.get('ts')}"
    if topic == FLASH:
        return f"flash {v.get('contract_id')} value {v.get('value')} coverage {v.get('coverage')} as of {v.get('as_of')}"
    if topic == SETTLEMENTS:
        return f"settlement {v.get('contract_id')} at {v.get('value')} ({v.get('ts')})"
    if topic == LISTINGS:
        return (f"listing {v.get('contract_id')} [{v.get('lower')}, {v.get('upper')}] listed {v.get('listing_time')} "
                f"settles {v.get('settlement_time')}")
    return f"{topic} event"


def _concerns(topic: str, value: dict, account_id: str, contracts: set[str], had_positions: bool) -> bool:
    if topic in ACCOUNT_TOPICS:
        return value.get("account_id") == account_id
    if topic == TICKS:
        return had_positions
    return value.get("contract_id") in contracts


def _output_summary(out: Output) -> str:
    v = out.value
    if out.topic == REQUIREMENTS:
        return f"requirement IM {v['im']} equity {v['equity']} excess {v['excess']}"
    if out.topic == CALLS:
        return f"call {v['status']} shortfall {v['shortfall']}"
    return f"rejected: {v.get('reason')} {v.get('field') or ''} {v.get('detail') or ''}".rstrip()


def _account_outputs(outputs: list[Output], account_id: str, topic: str) -> list[Output]:
    """The outputs of one entry of ``topic`` that concern the account (its records; its rejections)."""
    mine = [o for o in outputs if o.topic != DEADLETTER and o.value.get("account_id") == account_id]
    if topic in ACCOUNT_TOPICS:
        mine += [o for o in outputs if o.topic == DEADLETTER]
    return mine


def _held_contracts(entries: list[LogEntry], account_id: str) -> set[str]:
    """Contracts the account's fills name (it held or holds them)."""
    held = set()
    for _p, _o, _i, entry in entries:
        source = entry_source(entry)
        if source and source[0] == FILLS and source[3].get("account_id") == account_id:
            held.add(source[3].get("contract_id"))
    return held


def replay_account(entries: list[LogEntry], account_id: str,
                   config: EngineConfig | None = None) -> tuple[EngineState, list[dict]]:
    """Apply the entries (one log partition, in order) to a fresh state; return the state
    and the chain of entries that concerned the account, with what each published for it."""
    state = EngineState(config=config or EngineConfig())
    contracts = _held_contracts(entries, account_id)
    chain = []
    for partition, offset, index, entry in entries:
        account = state.accounts.get(account_id)
        had_positions = bool(account and account.positions)
        outputs = apply_entry(state, partition, offset, entry, index)
        source = entry_source(entry)
        if source is None:
            continue
        topic, source_partition, source_offset, value = source
        if not _concerns(topic, value, account_id, contracts, had_positions):
            continue
        t = event_time_us(topic, value)
        chain.append({
            "log": {"partition": partition, "offset": offset, "entry": index},
            "source": {"topic": topic, "partition": source_partition, "offset": source_offset},
            "event_time": value.get(EVENT_TIME_FIELD.get(topic, "")) if t is not None else None,
            "summary": summarize(topic, value),
            "outputs": [_output_summary(o) for o in _account_outputs(outputs, account_id, topic)],
        })
    return state, chain


def contract_detail(contract: Any) -> dict:
    """The contract state a position was margined with: risk vector, estimate, params."""
    est = contract.estimate
    return {
        "rv": contract.rv.as_dict(),
        "estimate": {"mu": est.mu, "sigma": est.sigma, "sigma_adj": est.sigma_adj, "n": est.n,
                     "r_min": est.r_min, "r_max": est.r_max},
        "params": dataclasses.asdict(contract.listing.params),
        "tau": contract.tau,
        "conv_f": contract.conv_f,
        "flash": contract.flash_raw,
        "settlement": contract.settlement_raw,
    }


def explain(entries_all: list[LogEntry], account_id: str, at_us: int | None = None,
            config: EngineConfig | None = None) -> dict:
    """Everything behind an account's margin at event time ``at_us`` (None: the whole log):
    IM, equity, every position component, the contract risk vectors and the chain of events.
    Raises KeyError when no fill or collateral entry names the account."""
    partition = account_partition(entries_all, account_id)
    if partition is None:
        raise KeyError(f"no fill or collateral movement in {LOG} names account {account_id!r}")
    entries = [e for e in entries_all if e[0] == partition]
    applied = entries[: cutoff_index(entries, at_us)]
    state, chain = replay_account(applied, account_id, config)
    account = state.accounts.get(account_id)
    total, positions = account_risk(state, account) if account is not None else (0.0, [])
    im = cents_up(total)
    equity = account.equity_cents if account is not None else 0
    return {
        "account_id": account_id,
        "at": None if at_us is None else _format_us(at_us),
        "log_partition": partition,
        "entries_applied": len(applied),
        "last_log_offset": applied[-1][1] if applied else None,
        "last_log_entry": applied[-1][2] if applied else None,
        "clock": None if state.now_us is None else _format_us(state.now_us),
        "im": cents_str(im),
        "im_unrounded": total,
        "equity": cents_str(equity),
        "excess": cents_str(equity - im),
        "open_call": None if account is None or account.call is None else account.call.as_dict(),
        "positions": positions,
        "contracts": {p["contract_id"]: contract_detail(state.contracts[p["contract_id"]]) for p in positions},
        "chain": chain,
    }


def _format_us(us: int) -> str:
    return format_time_us(us)


def to_json(obj: Any) -> bytes:
    """JSON of an explain result (Decimals and other numbers as text/float)."""
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)


def _json_default(value: Any) -> Any:
    try:
        return float(value) if not hasattr(value, "as_tuple") else str(value)
    except Exception:
        return str(value)


POSITION_FIELDS = ("q", "im", "max_loss", "es", "stress", "conv", "stat", "conc", "tau")
RV_FIELDS = ("anchor", "loc", "sigma_adj", "flash_scale", "t_scale", "tail_low", "tail_high", "stress_levels",
             "es_method", "tail_count", "lower", "upper", "k", "beta", "gamma", "depth")


def format_explain(result: dict) -> str:
    """The explain result as readable text."""
    at = result["at"] or "end of the log"
    lines = [
        f"account {result['account_id']} at {at}",
        f"  replayed {LOG} partition {result['log_partition']}: {result['entries_applied']} entries "
        f"(last: record {result['last_log_offset']}, entry {result['last_log_entry']}); clock {result['clock'] or '(no tick yet)'}",
        "",
        f"  IM      {result['im']:>14}   (sum of position IMs {result['im_unrounded']!r}, rounded up to the cent)",
        f"  equity  {result['equity']:>14}",
        f"  excess  {result['excess']:>14}",
        f"  open call: {_call_text(result['open_call'])}",
        "",
        "positions:" if result["positions"] else "positions: none open",
    ]
    for p in result["positions"]:
        lines.append(f"  {p['contract_id']}")
        lines += [f"    {name:<9} {_num(p[name])}" for name in POSITION_FIELDS]
    for cid, c in result["contracts"].items():
        lines += ["", f"contract {cid}: risk vector used"]
        lines += [f"    {name:<12} {_num(c['rv'][name])}" for name in RV_FIELDS if name in c["rv"]]
        est = c["estimate"]
        lines.append(f"    estimate     mu {_num(est['mu'])}  sigma_adj {_num(est['sigma_adj'])}  n {est['n']}")
        lines.append(f"    tau {_num(c['tau'])}  conv factor {_num(c['conv_f'])}  flash {_flash_text(c['flash'])}")
        lines.append("    params       " + ", ".join(f"{k}={v}" for k, v in c["params"].items()))
    lines += ["", f"chain of events ({len(result['chain'])}):"]
    for item in result["chain"]:
        src, log = item["source"], item["log"]
        where = f"log {log['partition']}:{log['offset']}#{log['entry']}"
        source = f"{src['topic']}:{src['partition']}:{src['offset']}"
        lines.append(f"  {where:<12} {source:<27} {item['summary']}")
        lines += [f"      -> {text}" for text in item["outputs"]]
    return "\n".join(lines)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.6f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_num(v) for v in value) + "]"
    return str(value)


def _call_text(call: dict | None) -> str:
    return "none" if not call else f"{call.get('call_id')} shortfall {call.get('shortfall')}"


def _flash_text(flash: dict | None) -> str:
    return "none" if not flash else f"{flash.get('value')} coverage {flash.get('coverage')} as of {flash.get('as_of')}"
