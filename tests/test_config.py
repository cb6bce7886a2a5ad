"""RateLimit, Margin and rate_limits validation."""

from __future__ import annotations

import math

import pytest

from pangocdp_async import Margin, RateLimit
from pangocdp_async._config import validate_rate_limits


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((0, 1.0), ValueError),
        ((-5, 1.0), ValueError),
        ((1.5, 1.0), TypeError),
        ((True, 1.0), TypeError),
        ((10, 0.0), ValueError),
        ((10, -1.0), ValueError),
        ((10, math.inf), ValueError),
        ((10, math.nan), ValueError),
        ((10, "1"), TypeError),
    ],
)
def test_rate_limit_rejects_bad_values(args: tuple[object, object], error: type[Exception]) -> None:
    """A RateLimit with a non-positive or non-numeric field is refused at construction."""
    with pytest.raises(error, match="RateLimit"):
        RateLimit(*args)  # type: ignore[arg-type]


def test_rate_limit_period_becomes_float() -> None:
    """An int period is stored as float seconds."""
    assert RateLimit(5, 2).period == 2.0


def test_validate_sorts_and_checks() -> None:
    """rate_limits come back sorted by period; duplicates and non-RateLimits are refused."""
    a, b = RateLimit(100, 60.0), RateLimit(10, 1.0)
    assert validate_rate_limits([a, b]) == (b, a)
    assert validate_rate_limits(a) == (a,)
    assert validate_rate_limits([]) == ()
    with pytest.raises(ValueError, match="same period"):
        validate_rate_limits([RateLimit(1, 1.0), RateLimit(2, 1.0)])
    with pytest.raises(TypeError, match=r"rate_limits\[1\]"):
        validate_rate_limits([a, (10, 1.0)])
    with pytest.raises(TypeError, match="sequence of RateLimit"):
        validate_rate_limits(5)


def test_margin_widens_and_validates() -> None:
    """A margin widens a window by its absolute part plus its relative part."""
    assert Margin(0.5, 0.01).widen(100.0) == pytest.approx(101.5)
    with pytest.raises(ValueError, match="absolute"):
        Margin(absolute=-1.0)
    with pytest.raises(ValueError, match="relative"):
        Margin(relative=math.nan)
