"""What QuotaScheduler tells operators about the server's feedback (429s, remaining counts)
and about misuse across event loops."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from pangocdp_async import Margin, QuotaScheduler, RateLimit
from tests.conftest import ManualClock

TWO = [RateLimit(2, 1.0), RateLimit(3, 10.0)]
NO_MARGIN = Margin(0.0, 0.0)


class _Highest(random.Random):
    """Draws the top of every uniform range: the longest jitter."""

    def uniform(self, a: float, b: float) -> float:
        return b


def make(clock: ManualClock, limits: list[RateLimit] = TWO, **kwargs: object) -> QuotaScheduler:
    return QuotaScheduler(limits, clock=clock, sleep=clock.sleep, margin=NO_MARGIN,
                          rng=_Highest(0), **kwargs)  # type: ignore[arg-type]


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pangocdp_async" and r.levelno == level]


@pytest.mark.parametrize(("limits", "hints", "said", "pause", "full"), [
    (TWO, [2.0], "2 s", "3.3", "2/1s"),
    (TWO, [0.5, 2.0], "2 s", "3.3", "2/1s, 3/10s"),  # the second 429 of an episode
    (TWO, [None], "absent", "1.1", "2/1s"),
    ([], [4.0], "4 s", "5.5", "(no windows)"),
])
def test_a_429_is_reported_with_the_pause_and_the_windows_modeled_full(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, limits: list[RateLimit],
    hints: list[float | None], said: str, pause: str, full: str,
) -> None:
    s = make(clock, limits)
    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        for hint in hints:
            s.on_rate_limited(hint)
    last = messages(caplog, logging.WARNING)[-1]
    assert last.startswith(f"PangoCDP answered 429 (retry-after {said}): the quota model was "
                           "wrong or another client shares the quota;")
    assert f"pausing all senders for {pause} s" in last
    assert last.endswith(f"modeling the {full} as full")


@pytest.mark.parametrize(("hint", "warned"), [(60.0, False), (60.5, True), (1e9, True)])
def test_only_a_hint_beyond_max_retry_after_is_capped_with_a_warning(
    clock: ManualClock, caplog: pytest.LogCaptureFixture, hint: float, warned: bool
) -> None:
    s = make(clock, max_retry_after=60.0)
    with caplog.at_level(logging.WARNING, logger="pangocdp_async"):
        until = s.on_rate_limited(hint)
    capped = [m for m in messages(caplog, logging.WARNING) if "capping" in m]
    if warned:
        assert capped == [f"429 says retry after {hint:.3g} s; capping the pause at "
                          "max_retry_after=60 s"]
    else:
        assert capped == []
    assert until - clock.now == pytest.approx(61.0 * 1.1)


def test_unseen_sends_are_reported_when_charged(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The server says 3 left where our two sends leave 8: 5 unseen sends are charged, and
    the log says so with the three numbers."""
    s = make(clock, [RateLimit(10, 1.0)])
    for _ in range(2):
        r = s.try_reserve()
        assert r is not None
        s.complete(r)
    with caplog.at_level(logging.INFO, logger="pangocdp_async"):
        assert s.on_remaining(3) == 5
        assert s.on_remaining(2) == 1  # the model expected 3 left: one more unseen send
    first, second = messages(caplog, logging.INFO)
    assert first.startswith("server reports 3 requests left where the model expected 8:")
    assert first.endswith("charging 5 unseen sends")
    assert second == "server reports 2 requests left where the model expected 3: charging 1 " \
        "unseen sends"
    assert s.tightened == 6


def test_a_scheduler_busy_on_one_loop_refuses_another() -> None:
    """A send in flight on a loop that is still open: reserving on a second loop raises a
    RuntimeError that says why."""
    s = QuotaScheduler([RateLimit(5, 1.0)], margin=NO_MARGIN)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(s.reserve())  # never completed

        async def elsewhere() -> None:
            await s.reserve()
        with pytest.raises(RuntimeError) as caught:
            asyncio.run(elsewhere())
    finally:
        first.close()
    assert str(caught.value) == (
        "this QuotaScheduler has senders waiting or in flight on another event loop; "
        "a scheduler serves one loop at a time")
