"""Defaults every backend shares, in a module that imports nothing (CLI start-up)."""

from __future__ import annotations

__all__ = ["LOCK_TIMEOUT_SECONDS"]

LOCK_TIMEOUT_SECONDS = 30.0  # how long a write waits for its ref by default: far above any write
