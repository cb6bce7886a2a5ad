"""Small pure functions about retrying: parse the server's hint, decide, compute a delay."""

from __future__ import annotations

import math

__all__ = ["parse_retry_after"]


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
