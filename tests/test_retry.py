"""The retry policy's pure functions."""

from __future__ import annotations

import random

import pytest

from pangocdp_async import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    UnsuccessfulResponseError,
)
from pangocdp_async._retry import Decision, backoff_delay, decide

POLICY = RetryPolicy(max_attempts=3, time_budget_s=60.0, max_rate_limited=2)


@pytest.mark.parametrize(
    ("error", "attempts", "limited", "elapsed", "entries", "expected"),
    [
        (ServerError(status=503), 1, 0, 0.0, 50, Decision.RETRY),
        (ServerError(status=503), 3, 0, 0.0, 50, Decision.FAIL),  # attempts used up
        (ServerError(status=503), 1, 0, 61.0, 50, Decision.FAIL),  # time budget used up
        (ServerError(status=503), 1, 0, 60.0, 50, Decision.FAIL),  # ... to the last second
        (ServerError(status=503), 2, 0, 59.9, 50, Decision.RETRY),
        (RateLimitedError(status=429), 1, 0, 60.0, 50, Decision.FAIL),
        (RateLimitedError(status=429), 1, 0, 59.9, 50, Decision.AFTER_PAUSE),
        (APIConnectionError("x"), 2, 0, 0.0, 50, Decision.RETRY),
        (APITimeoutError("x"), 2, 0, 0.0, 50, Decision.RETRY),
        (RateLimitedError(status=429), 9, 2, 0.0, 50, Decision.AFTER_PAUSE),  # own counter
        (RateLimitedError(status=429), 1, 3, 0.0, 50, Decision.FAIL),
        (BadRequestError(status=400), 1, 0, 0.0, 50, Decision.SPLIT),
        (BadRequestError(status=400), 1, 0, 0.0, 2, Decision.SPLIT),
        (BadRequestError(status=400), 1, 0, 0.0, 1, Decision.FAIL),  # nothing left to split
        (AuthenticationError(status=401), 1, 0, 0.0, 50, Decision.FAIL),
        (UnsuccessfulResponseError(status=200), 1, 0, 0.0, 50, Decision.FAIL),
    ],
)
def test_decide(error: Exception, attempts: int, limited: int, elapsed: float, entries: int,
                expected: Decision) -> None:
    """Each error class gets its documented treatment, within attempts and time budget."""
    assert decide(error, attempts=attempts, rate_limited=limited,  # type: ignore[arg-type]
                  elapsed_s=elapsed, entries=entries, policy=POLICY) is expected


def test_no_split_when_disabled() -> None:
    """split_bad_requests=False fails a 400 batch as a whole."""
    policy = RetryPolicy(split_bad_requests=False)
    assert decide(BadRequestError(status=400), attempts=1, rate_limited=0, elapsed_s=0.0,
                  entries=50, policy=policy) is Decision.FAIL


def test_full_jitter_backoff_bounds() -> None:
    """Retry n waits uniformly in [0, min(max, initial * 2**(n-1))]."""
    policy = RetryPolicy(backoff_initial_s=0.5, backoff_max_s=4.0)
    rng = random.Random(0)
    for retry, cap in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [backoff_delay(retry, policy, rng) for _ in range(500)]
        assert min(delays) >= 0.0
        assert max(delays) <= cap
        assert max(delays) > 0.8 * cap  # it does use the range


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"max_attempts": 0}, ValueError, r"RetryPolicy\.max_attempts must be >= 1, got 0"),
    ({"max_attempts": 2.0}, TypeError, r"RetryPolicy\.max_attempts must be an int, got 2\.0"),
    ({"max_rate_limited": -1}, ValueError,
     r"RetryPolicy\.max_rate_limited must be >= 0, got -1"),
    ({"max_rate_limited": "2"}, TypeError,
     r"RetryPolicy\.max_rate_limited must be an int, got '2'"),
    ({"backoff_initial_s": -0.5}, ValueError,
     r"RetryPolicy\.backoff_initial_s must be a finite number of seconds >= 0, got -0\.5"),
    ({"backoff_max_s": -1.0}, ValueError,
     r"RetryPolicy\.backoff_max_s must be a finite number of seconds >= 0, got -1\.0"),
    ({"time_budget_s": float("inf")}, ValueError,
     r"RetryPolicy\.time_budget_s must be a finite number of seconds >= 0, got inf"),
    ({"time_budget_s": "60"}, TypeError,
     r"RetryPolicy\.time_budget_s must be a number of seconds, got '60'"),
    ({"split_bad_requests": 1}, TypeError,
     r"RetryPolicy\.split_bad_requests must be True or False, got 1"),
])
def test_policy_validation(kwargs: dict[str, object], error: type[Exception],
                           message: str) -> None:
    """Nonsense policies are refused with an error naming the field and the bad value."""
    with pytest.raises(error, match=f"^{message}$"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_the_smallest_sensible_policy_is_accepted() -> None:
    """One attempt, no 429 retries, no backoff and no budget are all allowed."""
    policy = RetryPolicy(max_attempts=1, max_rate_limited=0, backoff_initial_s=0.0,
                         backoff_max_s=0.0, time_budget_s=0.0, split_bad_requests=False)
    assert (policy.max_attempts, policy.max_rate_limited) == (1, 0)
