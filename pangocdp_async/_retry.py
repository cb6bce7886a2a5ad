"""Small pure functions about retrying: parse the server's hint, decide, compute a delay."""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

from ._constants import (
    DEFAULT_BACKOFF_INITIAL_S,
    DEFAULT_BACKOFF_MAX_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RATE_LIMITED,
    DEFAULT_RETRY_BUDGET_S,
)
from ._exceptions import (
    APIConnectionError,
    BadRequestError,
    PangoCDPError,
    QuotaWaitError,
    RateLimitedError,
)
from ._validate import check_bool, check_int, check_seconds

__all__ = ["Decision", "RetryPolicy", "backoff_delay", "decide", "parse_retry_after"]


def parse_retry_after(value: str | None) -> float | None:
    """``X-Rate-Limit-Retry-After-Seconds`` as float seconds, or ``None`` if absent or garbled.

    Bucket4j truncates the wait to whole seconds, so ``"0"`` means "less than a second", not
    "retry now"; callers add a second before trusting it.

    >>> parse_retry_after("0"), parse_retry_after(" 3 "), parse_retry_after("soon")
    (0.0, 3.0, None)
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a batch is retried by ``ingest_many`` and ``stream``.

    - 5xx, connection errors and timeouts: up to ``max_attempts`` attempts in all, with a
      full-jitter exponential backoff (``uniform(0, min(backoff_max_s, backoff_initial_s *
      2**(n-1)))`` before retry n), all within ``time_budget_s`` of the first attempt.
    - 429: the quota scheduler pauses every sender; the batch is retried after the pause, up to
      ``max_rate_limited`` times.
    - 401: the client refreshes the token once and retries (inside the request itself).
    - 400: with ``split_bad_requests`` the batch is split to isolate the entries the server
      refuses; each is reported with the server's error, the rest are sent.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    time_budget_s: float = DEFAULT_RETRY_BUDGET_S
    max_rate_limited: int = DEFAULT_MAX_RATE_LIMITED
    split_bad_requests: bool = True

    def __post_init__(self) -> None:
        check_int("RetryPolicy.max_attempts", self.max_attempts, low=1)
        check_int("RetryPolicy.max_rate_limited", self.max_rate_limited, low=0)
        for name in ("backoff_initial_s", "backoff_max_s", "time_budget_s"):
            check_seconds(f"RetryPolicy.{name}", getattr(self, name))
        check_bool("RetryPolicy.split_bad_requests", self.split_bad_requests)


class Decision(enum.Enum):
    RETRY = "retry"  # after backoff_delay
    AFTER_PAUSE = "after-pause"  # 429: the scheduler already holds every sender back
    SPLIT = "split"  # 400: isolate the refused entries
    FAIL = "fail"  # report every entry of the batch as failed


def decide(
    error: PangoCDPError,
    *,
    attempts: int,
    rate_limited: int,
    elapsed_s: float,
    entries: int,
    policy: RetryPolicy,
) -> Decision:
    """What to do with a batch whose latest attempt raised ``error``."""
    if isinstance(error, QuotaWaitError):
        return Decision.FAIL  # the scheduler's wait is beyond the budget: nothing to retry
    if isinstance(error, RateLimitedError):
        ok = rate_limited <= policy.max_rate_limited and elapsed_s < policy.time_budget_s
        return Decision.AFTER_PAUSE if ok else Decision.FAIL
    if isinstance(error, BadRequestError):
        return Decision.SPLIT if policy.split_bad_requests and entries > 1 else Decision.FAIL
    if error.retriable or isinstance(error, APIConnectionError):
        ok = attempts < policy.max_attempts and elapsed_s < policy.time_budget_s
        return Decision.RETRY if ok else Decision.FAIL
    return Decision.FAIL


def backoff_delay(retry: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Full-jitter exponential backoff before retry number ``retry`` (1-based)."""
    cap = min(policy.backoff_max_s, policy.backoff_initial_s * 2 ** (retry - 1))
    return rng.uniform(0.0, cap)
