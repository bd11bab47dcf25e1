"""A contract's model parameters (SPEC §2.1), validated as a listing's ``params`` field."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping

from stream.core.errors import InvalidListing, SchemaViolation

# The most Monte Carlo draws a listing may ask for: 16 MB of sorted draws, of which at most
# :data:`stream.core.distribution.DRAW_CACHE_SIZE` sets are kept (a listing must not be able to
# exhaust memory).
MAX_MC_SAMPLES = 2_000_000

@dataclass(frozen=True)
class Params:
    """Model parameters (SPEC §2.14 defaults: the note's production calibration)."""

    alpha: float = 0.99
    nu: float = 5.0
    c: float = 4.0
    lam: float = 3.5
    k: float = 1.5
    beta: float = 0.30
    gamma: float = 0.05
    depth: float = 500_000.0
    mc_samples: int = 12_000
    mc_seed: int = 42
    es_method: str = "mc"
    sigma_prior: float | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object] | None) -> "Params":
        """Validate per-contract overrides; each bad value names its field."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise SchemaViolation("params must be an object", field="params")
        known = {f.name for f in fields(cls)}
        values: dict[str, object] = {}
        for name, value in raw.items():
            where = f"params.{name}"
            if name not in known:
                raise InvalidListing(f"unknown parameter (known: {', '.join(sorted(known))})", field=where)
            if name == "es_method":
                if value not in ("mc", "analytic"):
                    raise InvalidListing(f"must be 'mc' or 'analytic', got {value!r}", field=where)
            elif name in ("mc_samples", "mc_seed"):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise InvalidListing(f"must be an integer, got {value!r}", field=where)
            elif name == "sigma_prior" and value is None:
                pass
            else:
                value = _finite(value, where)
            values[name] = value
        params = cls(**values)  # type: ignore[arg-type]
        params.validate()
        return params

    def validate(self) -> None:
        # SPEC §2 ranges, plus upper bounds far beyond any calibration that keep every
        # product in the model finite (a listing must not be able to make IM inf or NaN)
        checks = [
            ("alpha", 0.0 < self.alpha < 1.0, "must satisfy 0 < alpha < 1"),
            ("nu", 2.0 < self.nu <= 1000.0, "must satisfy 2 < nu <= 1000 (finite variance)"),
            ("c", 0.0 <= self.c <= 1000.0, "must satisfy 0 <= c <= 1000"),
            ("lam", 0.0 <= self.lam <= 100.0, "must satisfy 0 <= lam <= 100"),
            ("k", 0.0 < self.k <= 1000.0, "must satisfy 0 < k <= 1000"),
            ("beta", 0.0 <= self.beta <= 1.0, "must satisfy 0 <= beta <= 1"),
            ("gamma", 0.0 <= self.gamma <= 1000.0, "must satisfy 0 <= gamma <= 1000"),
            ("depth", 1.0 <= self.depth <= 1e15, "must satisfy 1 <= depth <= 1e15 (dollars)"),
            ("mc_samples", 1 <= self.mc_samples <= MAX_MC_SAMPLES, f"must satisfy 1 <= mc_samples <= {MAX_MC_SAMPLES:,}"),
            ("mc_seed", 0 <= self.mc_seed < 2**63, "must be a non-negative 63-bit integer"),
            ("sigma_prior", self.sigma_prior is None or 0.0 < self.sigma_prior <= 10.0,
             "must satisfy 0 < sigma_prior <= 10 (a return standard deviation)"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise InvalidListing(f"{message}, got {getattr(self, name)!r}", field=f"params.{name}")

    def canonical(self) -> list:
        """Every parameter, in field order (for fingerprints)."""
        return [getattr(self, f.name) for f in fields(self)]

    def tail_count(self) -> int:
        """``m = ceil((1 - alpha) * M)``, exact despite binary floats (SPEC §2.9):
        ``(1 - 0.99) * 12000`` is 120.00000000000011, so round to 9 places first."""
        return max(1, math.ceil(round((1.0 - self.alpha) * self.mc_samples, 9)))


def _finite(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidListing(f"must be a number, got {value!r}", field=where)
    number = float(value)
    if not math.isfinite(number):
        raise InvalidListing(f"must be finite, got {value!r}", field=where)
    return number
