"""Margin-call state machine (SPEC §3).

``shortfall = IM - equity``. When it turns positive a call is ISSUED; while it stays open,
a change of at least ``update_threshold`` since the last published shortfall is published
as UPDATED; when equity covers IM again the call is SATISFIED and closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from stream.core.messages import Cause, record_id
from stream.core.money import cents_str, to_cents


@dataclass
class OpenCall:
    call_id: str
    shortfall_cents: int  # last published shortfall

    def as_dict(self) -> dict:
        return {"call_id": self.call_id, "shortfall": cents_str(self.shortfall_cents)}

    @classmethod
    def from_dict(cls, raw: dict | None) -> "OpenCall | None":
        return None if raw is None else cls(raw["call_id"], to_cents(raw["shortfall"]))


def next_call(
    open_call: OpenCall | None,
    account_id: str,
    im_cents: int,
    equity_cents: int,
    update_threshold_cents: int | Decimal,
    cause: Cause,
    as_of: str,
) -> tuple[OpenCall | None, dict | None]:
    """Return the call state after this change and the call record to publish, if any
    (amounts in integer cents)."""
    shortfall = im_cents - equity_cents
    if open_call is None:
        if shortfall <= 0:
            return None, None
        call_id = record_id("call", account_id, cause)
        status, new_state = "ISSUED", OpenCall(call_id, shortfall)
    elif shortfall <= 0:
        status, new_state = "SATISFIED", None
    elif abs(shortfall - open_call.shortfall_cents) >= update_threshold_cents:
        status, new_state = "UPDATED", OpenCall(open_call.call_id, shortfall)
    else:
        return open_call, None
    call_id = open_call.call_id if open_call is not None else new_state.call_id  # type: ignore[union-attr]
    record = {
        "call_id": call_id,
        "account_id": account_id,
        "status": status,
        "shortfall": cents_str(max(shortfall, 0)),
        "im": cents_str(im_cents),
        "equity": cents_str(equity_cents),
        "as_of": as_of,
        "cause": cause.as_dict(),
        "id": record_id(f"call:{status}", account_id, cause),
    }
    return new_state, record
