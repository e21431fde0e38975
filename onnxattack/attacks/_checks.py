"""Hyperparameter checks the attack constructors share; errors name the parameter."""

from __future__ import annotations

import math

from ..errors import ConfigError


def at_least_one(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"{name} must be an integer of at least 1, got {value!r}")
    return value


def number(name: str, value: float, positive: bool) -> float:
    """A finite number, > 0 when positive else >= 0."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        bound = "positive" if positive else "non-negative"
        raise ConfigError(name, f"{name} must be a {bound} number, got {value!r}")
    return float(value)
