"""Defaults every backend shares, in a module that imports nothing (CLI start-up)."""

from __future__ import annotations

__all__ = ["LOCK_TIMEOUT_SECONDS", "MAX_LOCK_TIMEOUT_SECONDS", "lock_timeout_of"]

LOCK_TIMEOUT_SECONDS = 30.0  # how long a write waits for its ref by default: far above any write
MAX_LOCK_TIMEOUT_SECONDS = 86_400.0  # a day: PostgreSQL's lock_timeout stops at ~24.8 days


def lock_timeout_of(value: object) -> float:
    """``value`` as a lock timeout in seconds: a number from 0 to a day.

    0 tries a lock once. Not a number, NaN (which would wait forever), a
    negative number or more than :data:`MAX_LOCK_TIMEOUT_SECONDS` is refused.

    Raises:
        ValueError: naming the value and what is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"lock timeout must be a number of seconds, not {value!r}")
    if not 0 <= value <= MAX_LOCK_TIMEOUT_SECONDS:  # NaN fails both comparisons
        raise ValueError(
            f"lock timeout must be from 0 to {MAX_LOCK_TIMEOUT_SECONDS:g} seconds, not {value!r}"
        )
    return float(value)
