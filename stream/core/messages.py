"""Messages: the input messages (SPEC §4) parsed into typed, validated events, and what the
output messages (requirement and call records) carry of their cause and id.

``decode`` turns bytes into a JSON object; ``parse(kind, obj)`` validates every field and
returns a frozen event or raises a :class:`~stream.core.errors.Rejected` naming the field.
Parsing is pure and stateless; checks that need state (unknown contract, price outside
the range, duplicates) are the engine's.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Mapping, NamedTuple

import orjson

from stream.core.errors import InvalidListing, OutOfRange, Rejected, SchemaViolation, Undecodable
from stream.core.model import Params
from stream.core.money import CENT, to_decimal
from stream.core.timeutil import parse_time_us
from stream.core.topics import COLLATERAL, FILLS, FLASH, LISTINGS, SETTLEMENTS, TICKS

MAX_ID_CHARS = 200
MAX_HISTORY = 10_000
MAX_NOTIONAL_USD = Decimal(10) ** 12
MAX_NOTIONAL_FLOAT = 1e12  # MAX_NOTIONAL_USD, exactly
MAX_ABS_AMOUNT_USD = Decimal(10) ** 15
MAX_LEVEL = 1e15
MAX_LEVEL_DECIMAL = Decimal(MAX_LEVEL)
MAX_DEPTH = 16
MAX_PRICE_DECIMALS = 8


class Cause(NamedTuple):
    """Which input event produced a record (SPEC §3): its source topic, partition, offset
    and business id. ``offset`` is None for events that do not come from Kafka. (Named
    tuples here and for the per-fill events: a frozen dataclass costs a microsecond or two
    to build, once per event.)"""

    topic: str
    partition: int
    offset: int | None
    id: str

    def as_dict(self) -> dict:
        """As records carry it (a new dict each call: records own theirs)."""
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset, "id": self.id}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Cause":
        return cls(str(raw["topic"]), int(raw["partition"]), None if raw["offset"] is None else int(raw["offset"]), str(raw["id"]))


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Listing:
    contract_id: str
    kpi: str
    lower: float
    upper: float
    listing_us: int
    settlement_us: int
    history: tuple[float, ...]
    params: Params
    fingerprint: str

    @property
    def event_id(self) -> str:
        return self.contract_id


@dataclass(frozen=True)
class Flash:
    contract_id: str
    as_of_us: int
    value: float
    coverage: float
    fingerprint: str

    @property
    def event_id(self) -> str:
        return self.contract_id


@dataclass(frozen=True)
class Settlement:
    contract_id: str
    value: Decimal
    ts_us: int
    fingerprint: str

    @property
    def event_id(self) -> str:
        return self.contract_id


@dataclass(frozen=True)
class Tick:
    ts_us: int
    fingerprint: str

    @property
    def event_id(self) -> str:
        return str(self.ts_us)


class Fill(NamedTuple):
    trade_id: str
    account_id: str
    contract_id: str
    side: str
    price: Decimal
    notional: Decimal
    ts_us: int
    fingerprint: str
    price_units: int  # the price in 1e-8 (exact: at most 8 decimals)
    notional_cents: int  # exact: at most cent precision

    @property
    def delta(self) -> int:
        return 1 if self.side == "BUY" else -1

    @property
    def event_id(self) -> str:
        return self.trade_id


class Movement(NamedTuple):
    movement_id: str
    account_id: str
    amount: Decimal
    ts_us: int
    fingerprint: str
    amount_cents: int  # exact: at most cent precision

    @property
    def event_id(self) -> str:
        return self.movement_id


Event = Listing | Flash | Settlement | Tick | Fill | Movement


# --------------------------------------------------------------------------- decoding
def decode(raw: bytes | str) -> dict:
    """UTF-8 JSON bytes -> dict, or :class:`Undecodable` with the parser's complaint."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Undecodable(f"not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise Undecodable(f"expected a JSON object, got {type(obj).__name__}")
    _check_depth(obj)
    return obj


def _check_depth(obj: Any) -> None:
    """Reject nesting deeper than :data:`MAX_DEPTH` (no message of SPEC §4 is deeper than
    3, and JSON encoders refuse to write very deep values back)."""
    for value in obj.values():  # the usual flat message: one pass, nothing to descend into
        if type(value) is dict or type(value) is list:
            break
    else:
        return
    level = [obj]
    for _depth in range(MAX_DEPTH):
        level = [v for item in level for v in (item.values() if isinstance(item, dict) else item)
                 if isinstance(v, (dict, list))]
        if not level:
            return
    raise SchemaViolation(f"nested deeper than {MAX_DEPTH} levels")


def fingerprint(*fields: Any) -> str:
    """A digest of an event's parsed content: equal content, equal print, however the JSON
    spelled it (``460000`` or ``460000.0``, ``Z`` or ``+00:00``, key order, extra fields).
    Decimals are normalised (``4.6E+5``); floats and strings are written by orjson."""
    return _digest([_canonical_decimal(f) if isinstance(f, Decimal) else f for f in fields])


def _canonical_decimal(amount: Decimal) -> str:
    """A Decimal as :func:`fingerprint` writes it: normalised, zero as ``0``."""
    return str(amount.normalize()) if amount else "0"


def _digest(canonical: list) -> str:
    """:func:`fingerprint` of fields already canonical (Decimals written by :func:`_canonical_decimal`)."""
    return hashlib.sha256(orjson.dumps(canonical)).hexdigest()[:32]


def _require(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj or obj[name] is None:
        raise SchemaViolation("missing required field", field=name)
    return obj[name]


def _string(obj: Mapping[str, Any], name: str) -> str:
    value = _require(obj, name)
    if not isinstance(value, str):
        raise SchemaViolation(f"expected a string, got {type(value).__name__}", field=name)
    if not value or len(value) > MAX_ID_CHARS:
        raise SchemaViolation(f"must be 1 to {MAX_ID_CHARS} characters", field=name)
    return value


def _number(obj: Mapping[str, Any], name: str) -> float:
    value = _require(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaViolation(f"expected a number, got {type(value).__name__}", field=name)
    number = float(value)
    if not math.isfinite(number) or abs(number) > MAX_LEVEL:
        raise SchemaViolation(f"must be finite and at most {MAX_LEVEL:g} in size, got {value!r}", field=name)
    return number


def _decimal(obj: Mapping[str, Any], name: str, limit: Decimal) -> Decimal:
    value = to_decimal(_require(obj, name), name)
    if abs(value) > limit:
        raise OutOfRange(f"magnitude above {limit:,}", field=name)
    return value


def parse_listing(obj: Mapping[str, Any]) -> Listing:
    """Validate a listing (SPEC §2, §4): ``lower < upper``, >= 2 finite positive history
    levels, settlement after listing, parameters in range, ``sigma_prior`` when n < 2."""
    contract_id = _string(obj, "contract_id")
    kpi = _string(obj, "kpi")
    lower = _number(obj, "lower")
    upper = _number(obj, "upper")
    if not lower < upper:
        raise InvalidListing(f"lower ({lower:g}) must be below upper ({upper:g})", field="lower")
    listing_us = parse_time_us(_require(obj, "listing_time"), "listing_time")
    settlement_us = parse_time_us(_require(obj, "settlement_time"), "settlement_time")
    if not settlement_us > listing_us:
        raise InvalidListing("settlement_time must be after listing_time", field="settlement_time")
    history_raw = _require(obj, "history")
    if not isinstance(history_raw, list):
        raise SchemaViolation("expected a list of KPI levels", field="history")
    if not 2 <= len(history_raw) <= MAX_HISTORY:
        raise InvalidListing(f"needs 2 to {MAX_HISTORY} levels, got {len(history_raw)}", field="history")
    history: list[float] = []
    for i, level in enumerate(history_raw):
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not math.isfinite(float(level)):
            raise InvalidListing(f"level must be a finite number, got {level!r}", field=f"history[{i}]")
        if not 0.0 < float(level) <= MAX_LEVEL:
            raise InvalidListing(f"level must be positive, got {level!r}", field=f"history[{i}]")
        history.append(float(level))
    params = Params.from_mapping(obj.get("params"))
    if len(history) < 3 and params.sigma_prior is None:
        raise InvalidListing(
            "fewer than 2 returns: the listing must carry params.sigma_prior", field="params.sigma_prior"
        )
    return Listing(contract_id, kpi, lower, upper, listing_us, settlement_us, tuple(history), params,
                   fingerprint(contract_id, kpi, lower, upper, listing_us, settlement_us, history, params.canonical()))


def parse_flash(obj: Mapping[str, Any]) -> Flash:
    """A flash estimate: value ``E > 0`` and coverage ``w`` in [0, 1] (SPEC §2.6)."""
    contract_id = _string(obj, "contract_id")
    as_of_us = parse_time_us(_require(obj, "as_of"), "as_of")
    value = _number(obj, "value")
    if value <= 0.0:
        raise SchemaViolation(f"must be positive, got {value!r}", field="value")
    coverage = _number(obj, "coverage")
    if not 0.0 <= coverage <= 1.0:
        raise SchemaViolation(f"must be within [0, 1], got {coverage!r}", field="coverage")
    return Flash(contract_id, as_of_us, value, coverage, fingerprint(contract_id, as_of_us, value, coverage))


def parse_settlement(obj: Mapping[str, Any]) -> Settlement:
    contract_id = _string(obj, "contract_id")
    value = _decimal(obj, "value", Decimal(MAX_LEVEL))
    ts_us = parse_time_us(_require(obj, "ts"), "ts")
    return Settlement(contract_id, value, ts_us, fingerprint(contract_id, value, ts_us))


def parse_tick(obj: Mapping[str, Any]) -> Tick:
    ts_us = parse_time_us(_require(obj, "ts"), "ts")
    return Tick(ts_us, fingerprint(ts_us))


def parse_fill(obj: Mapping[str, Any]) -> Fill:
    """:func:`parse_fill_checked`, with a fast path for the usual fill: string ids, a float
    or integer price and notional written without an exponent, a ``...Z`` time. Anything
    else -- and every fill that is rejected -- goes through :func:`parse_fill_checked`, so
    the errors are its own; what the fast path accepts, it returns identically (a property
    test compares the two on generated fills). Fills are the bulk of the input, and the
    checks one function call at a time cost about a third of parsing one."""
    if type(obj) is not dict:  # a decoded message is; anything else, the checked path
        return parse_fill_checked(obj)
    get = obj.get
    trade_id, account_id, contract_id = get("trade_id"), get("account_id"), get("contract_id")
    side, price_v, notional_v, ts = get("side"), get("price"), get("notional"), get("ts")
    if (type(trade_id) is str and type(account_id) is str and type(contract_id) is str
            and 0 < len(trade_id) <= MAX_ID_CHARS and 0 < len(account_id) <= MAX_ID_CHARS
            and 0 < len(contract_id) <= MAX_ID_CHARS and (side == "BUY" or side == "SELL") and type(ts) is str):
        price = _plain_decimal(price_v, MAX_PRICE_DECIMALS, MAX_LEVEL)
        notional = _plain_decimal(notional_v, 2, MAX_NOTIONAL_FLOAT)
        if price is not None and notional is not None and notional_v > 0:
            ts_us = parse_time_us(ts, "ts")
            digest = _digest([trade_id, account_id, contract_id, side, _canonical_decimal(price),
                              _canonical_decimal(notional), ts_us])  # fingerprint(...), its Decimals known
            return Fill(trade_id, account_id, contract_id, side, price, notional, ts_us, digest,
                        int(price.scaleb(8)), int(notional.scaleb(2)))
    return parse_fill_checked(obj)


def _plain_decimal(value: Any, max_places: int, limit: float) -> Decimal | None:
    """The Decimal :func:`~stream.core.money.to_decimal` gives a JSON number of at most
    ``limit`` in magnitude with at most ``max_places`` decimals, written without an
    exponent; None for anything else (the caller takes the checked path). A float's
    shortest repr is exactly the Decimal's digits, and comparing it with a limit that is
    a float compares the Decimal (no other float rounds to a value between them)."""
    kind = type(value)
    if kind is float:
        if not -limit <= value <= limit:  # also NaN and the infinities
            return None
        text = repr(value)
        if "e" in text or len(text) - text.index(".") - 1 > max_places:
            return None
        return Decimal(text)
    if kind is int and -limit <= value <= limit:
        return Decimal(value)
    return None


def parse_fill_checked(obj: Mapping[str, Any]) -> Fill:
    """A fill: side BUY|SELL, notional > 0 dollars (SPEC §2.7). Price is checked against
    the contract's range by the engine, which knows the contract. Every check one by one:
    the reference :func:`parse_fill` falls back to, and that tests compare it with."""
    trade_id = _string(obj, "trade_id")
    account_id = _string(obj, "account_id")
    contract_id = _string(obj, "contract_id")
    side = _require(obj, "side")
    if side not in ("BUY", "SELL"):
        raise SchemaViolation(f"must be 'BUY' or 'SELL', got {str(side)[:32]!r}", field="side")
    price = _decimal(obj, "price", MAX_LEVEL_DECIMAL)
    if -price.as_tuple().exponent > MAX_PRICE_DECIMALS:  # type: ignore[operator]
        raise SchemaViolation(f"more than {MAX_PRICE_DECIMALS} decimal places: {price}", field="price")
    notional = _decimal(obj, "notional", MAX_NOTIONAL_USD)
    if notional <= 0:
        raise OutOfRange(f"must be positive, got {notional}", field="notional", reason="non_positive_notional")
    cents = notional.scaleb(2)
    notional_cents = int(cents)
    if cents != notional_cents:
        raise SchemaViolation(f"sub-cent notional {notional}", field="notional")
    ts_us = parse_time_us(_require(obj, "ts"), "ts")
    return Fill(trade_id, account_id, contract_id, side, price, notional, ts_us,
                fingerprint(trade_id, account_id, contract_id, side, price, notional, ts_us),
                int(price.scaleb(8)), notional_cents)


def parse_movement(obj: Mapping[str, Any]) -> Movement:
    """A collateral movement: a signed amount in dollars with at most cent precision."""
    movement_id = _string(obj, "movement_id")
    account_id = _string(obj, "account_id")
    amount = _decimal(obj, "amount", MAX_ABS_AMOUNT_USD)
    if amount != amount.quantize(CENT):
        raise SchemaViolation(f"sub-cent amount {amount}", field="amount")
    ts_us = parse_time_us(_require(obj, "ts"), "ts")
    return Movement(movement_id, account_id, amount, ts_us, fingerprint(movement_id, account_id, amount, ts_us),
                    int(amount.scaleb(2)))


PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    LISTINGS: parse_listing,
    FLASH: parse_flash,
    SETTLEMENTS: parse_settlement,
    TICKS: parse_tick,
    FILLS: parse_fill,
    COLLATERAL: parse_movement,
}


def parse(topic: str, obj: Mapping[str, Any]) -> Event:
    """Validate a decoded message from an input topic into its typed event."""
    try:
        parser = PARSERS[topic]
    except KeyError:
        raise SchemaViolation(f"not an input topic: {topic!r}", field="topic") from None
    return parser(obj)


def parse_bytes(topic: str, raw: bytes | str) -> Event:
    return parse(topic, decode(raw))


# --------------------------------------------------------------------------- ids
def record_id(kind: str, key: str, cause: Cause) -> str:
    """Deterministic output id: a digest of what it is, for whom, and its cause (SPEC §3).
    The same input log therefore always yields the same ids."""
    text = f"{kind}\x1f{key}\x1f{cause.topic}\x1f{cause.partition}\x1f{cause.offset}\x1f{cause.id}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# A dead letter keeps at most this much of the raw message: an oversized input must not
# make an oversized dead letter (the broker would refuse it, and the partition would stop).
DEADLETTER_RAW_MAX_BYTES = 65_536


def _raw_text(raw: bytes, truncated: bool) -> str | None:
    """The raw bytes as UTF-8 text, or None when they are not; a cut may split the last
    character of a truncated message, so up to three trailing bytes may be dropped."""
    for cut in range(4 if truncated else 1):
        try:
            return raw[: len(raw) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def deadletter_record(source_topic: str, partition: int, offset: int | None, raw: bytes, error: Exception,
                      qualifier: str = "") -> dict:
    """The dead-letter record: source coordinates, the reason, and the raw bytes (SPEC §3),
    the first :data:`DEADLETTER_RAW_MAX_BYTES` of them (``raw_bytes`` is the full size).
    ``qualifier`` tells apart several dead letters of one source (entries of one log
    record; one broadcast event failing in several log partitions) in the id."""
    info = error.as_dict() if isinstance(error, Rejected) else {"reason": "internal_error", "field": None, "detail": repr(error)}
    size = len(raw)
    truncated = size > DEADLETTER_RAW_MAX_BYTES
    raw = raw[:DEADLETTER_RAW_MAX_BYTES]
    raw_text = _raw_text(raw, truncated)
    cause = Cause(source_topic, partition, offset, qualifier)
    return {
        "id": record_id("deadletter", "", cause),
        "source": {"topic": source_topic, "partition": partition, "offset": offset},
        "reason": info["reason"],
        "field": info["field"],
        "detail": info["detail"],
        "raw": raw_text,
        "raw_b64": base64.b64encode(raw).decode("ascii"),
        "raw_bytes": size,
        "raw_truncated": truncated,
    }
