"""One exception hierarchy for rejected input (SPEC §3: rejected input changes no state and
goes to the dead-letter topic with a specific reason).

Every rejection carries a machine-readable ``reason`` (a short snake_case code that
consumers can switch on), the offending ``field`` when there is one, and a human ``detail``.
"""

from __future__ import annotations


class Rejected(Exception):
    """Base of every input rejection. ``reason`` is the machine-readable code."""

    reason = "rejected"

    def __init__(self, detail: str, *, field: str | None = None, reason: str | None = None):
        if reason is not None:
            self.reason = reason
        self.field = field
        self.detail = detail
        super().__init__(self.message)

    @property
    def message(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.reason}: {where}{self.detail}"

    def as_dict(self) -> dict:
        return {"reason": self.reason, "field": self.field, "detail": self.detail}


class Undecodable(Rejected):
    """The bytes are not UTF-8 JSON (or not a JSON object)."""

    reason = "undecodable"


class SchemaViolation(Rejected):
    """A field is missing, of the wrong type, not finite, or outside its allowed domain."""

    reason = "schema_violation"


class InvalidListing(Rejected):
    """A listing that violates the model's preconditions (SPEC §2)."""

    reason = "invalid_listing"


class UnknownContract(Rejected):
    reason = "unknown_contract"


class ContractSettled(Rejected):
    """An event for a contract that has already settled (SPEC §3)."""

    reason = "contract_settled"


class OutOfRange(Rejected):
    """A value outside the contract's range or lifetime (e.g. price outside [lower, upper])."""

    reason = "out_of_range"


class DuplicateConflict(Rejected):
    """A repeated id whose content differs from the first one applied (SPEC §3)."""

    reason = "duplicate_conflict"


class OutOfOrder(Rejected):
    """An event older than state it would replace: a stale flash, a tick back in time."""

    reason = "out_of_order"


class Misrouted(Rejected):
    """An account event on a partition other than the one Kafka's default partitioner gives
    its ``account_id`` key: its account's state lives in another log partition, whose router
    does not read this input partition (see :mod:`stream.log.partitioner`)."""

    reason = "misrouted"
