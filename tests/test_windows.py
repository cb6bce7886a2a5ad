"""The window models behind the scheduler, one window at a time: merging a saved history into
our own, keeping a 429's fill across a restore, relaxing a token bucket's fill, and loading the
other policy's state. Time is an argument here, so every figure is computed by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from pangocdp_async import Margin, QuotaScheduler, RateLimit
from pangocdp_async._limiter._windows import SlidingWindow, TokenBucketWindow
from tests.conftest import ManualClock

NO_MARGIN = Margin(0.0, 0.0)
EPOCH = 1_700_000_000.0
_INF = float("inf")


def sliding(capacity: int = 10, period: float = 1.0) -> SlidingWindow:
    """Without margin: span = period, one send refills every period / capacity."""
    return SlidingWindow(RateLimit(capacity, period), NO_MARGIN)


def bucket(capacity: int = 10, period: float = 10.0) -> TokenBucketWindow:
    """Without margin: capacity 10 over 10 s refills one token per second."""
    return TokenBucketWindow(RateLimit(capacity, period), NO_MARGIN)


def saved_sends(pairs: Sequence[tuple[int, int]], capacity: int = 10, period: float = 1.0,
                **extra: Any) -> dict[str, Any]:
    """A sliding window's saved state: sends as (whole milliseconds, count), delta-encoded."""
    ms, prev = [], 0
    for tick, _ in pairs:
        ms.append(tick - prev)
        prev = tick
    return {"max_requests": capacity, "period": period, "ms": ms,
            "n": [n for _, n in pairs], **extra}


# --- merging a saved history into our own (first: a broken merge may loop forever) ----------

@pytest.mark.parametrize(
    ("mine", "theirs", "expected_used", "expected_entries"),
    [
        # Ours: 3 sends at 0.1 and 1 at 0.5; theirs: 1 at 0.3. Over every suffix ours has as
        # many, so the merge is ours: 4 in the window at 0.6 and 0.9; the 0.5 alone at 1.2.
        ([(0.1, 3), (0.5, 1)], [(300, 1)], {0.6: 4, 0.9: 4, 1.2: 1, 1.35: 1, 1.55: 0}, 2),
        # Nothing of our own: the saved sends, as saved.
        ([], [(100, 3), (500, 1)], {0.6: 4, 1.2: 1, 1.55: 0}, 2),
        # Theirs has more sends late (2 after 0.15), ours more in all (4): 3 entries.
        ([(0.1, 3), (0.2, 1)], [(400, 1), (500, 1)],
         {0.6: 4, 1.05: 4, 1.15: 2, 1.45: 1, 1.55: 0}, 3),
        # The same sends on both sides are counted once.
        ([(0.2, 2), (0.4, 1)], [(200, 2), (400, 1)], {0.5: 3, 1.3: 1, 1.45: 0}, 2),
    ],
)
def test_restore_takes_the_larger_count_over_every_suffix(
    mine: list[tuple[float, int]], theirs: list[tuple[int, int]],
    expected_used: dict[float, int], expected_entries: int,
) -> None:
    """Loading a snapshot never forgets a send of ours nor counts one twice, and adds no entry
    that holds no send."""
    w = sliding()
    for t, n in mine:
        w.record(t, n)
    w.restore(saved_sends(theirs), 0.0, 0.6)
    assert {t: w.used(t) for t in expected_used} == expected_used
    assert w.entries() == expected_entries


def test_restore_moves_saved_sends_by_the_clock_offset() -> None:
    """Saved times are epoch seconds; ``to_local`` maps them onto this process's clock."""
    w = sliding()
    w.restore(saved_sends([(100_200, 2)]), -100.0, 0.5)  # a send at 100.2 s epoch = 0.2 local
    assert (w.used(0.5), w.used(1.15), w.used(1.25)) == (2, 2, 0)


@pytest.mark.parametrize(
    ("tokens", "expected_used"),
    [(9.0, 1), (9.5, 1), (7.2, 3), (10.0, 0), (0.0, 10), (-2.0, 12)],
)
def test_sliding_window_loads_a_token_buckets_deficit(tokens: float, expected_used: int) -> None:
    """A token bucket's spent tokens become that many sends at its time (epoch to local)."""
    w = sliding()
    w.restore({"max_requests": 10, "period": 1.0, "tokens": tokens, "at": 100.2}, -100.0, 0.5)
    assert w.used(0.5) == expected_used
    assert w.used(1.25) == 0  # filed at 0.2 local, so gone once the window has moved past it
    assert w.entries() == (1 if expected_used else 0)


def test_sliding_window_ignores_a_token_bucket_that_never_sent() -> None:
    w = sliding()
    w.restore({"max_requests": 10, "period": 1.0, "tokens": 10.0, "at": None}, 0.0, 0.5)
    assert (w.used(0.5), w.entries(), w.earliest(9)) == (0, 0, -_INF)


@pytest.mark.parametrize("make", [sliding, bucket])
@pytest.mark.parametrize(("ms", "n"), [([100, 100], [1]), ([100], [1, 1])])
def test_restore_refuses_lists_of_different_lengths(
    make: Any, ms: list[int], n: list[int],
) -> None:
    """Saved sends and their counts must pair up: a truncated list is corrupt, not fewer sends,
    and the window keeps what it had."""
    w = make()
    w.record(0.5, 2)
    before = w.export(0.0)
    with pytest.raises(ValueError):  # noqa: PT011 (the state check names the fields; here: refused)
        w.restore({"max_requests": 10, "period": 1.0, "ms": ms, "n": n}, 0.0, 1.0)
    assert w.export(0.0) == before


# --- a 429's fill across a restore ---------------------------------------------------------

@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        # Full at 1.0, refilling one send per 0.25 s: the next send at 1.25.
        ([], [], 1.25),
        # Sends before the fill are in the full window already: still 1.25.
        ([(0.5, 2)], [], 1.25),
        # Two sends since the fill take the first two refills: the next at 1.75.
        ([], [(1.1, 1), (1.2, 1)], 1.75),
        ([(0.5, 1)], [(1.1, 1)], 1.5),
    ],
)
def test_restore_keeps_our_own_fill_and_the_sends_since(
    before: list[tuple[float, int]], after: list[tuple[float, int]], expected: float,
) -> None:
    """A window modeled full by a 429 stays full through loading an empty snapshot: the sends
    made before the fill are not counted again, those after it are still counted."""
    w = sliding(capacity=4)
    for t, n in before:
        w.record(t, n)
    w.fill(1.0)
    for t, n in after:
        w.record(t, n)
    w.restore(saved_sends([], capacity=4), 0.0, 1.3)
    assert w.earliest(0) == pytest.approx(expected)
    assert w.earliest(1) == pytest.approx(expected + 0.25)


@pytest.mark.parametrize(
    ("sends", "fill", "expected"),
    [
        # Full at 1.0 local, nothing since: the next send at 1.25.
        ([], {"fill_at": 1001.0, "fill_sends": 0}, 1.25),
        # Sends at 0.5 (2) and 1.2 (1), one of them after the fill: the next at 1.5.
        ([(1_000_500, 2), (1_001_200, 1)], {"fill_at": 1001.0, "fill_sends": 1}, 1.5),
        ([(1_000_500, 3)], {"fill_at": 1001.0, "fill_sends": 0}, 1.25),
        # Without fill_sends: no send after the fill.
        ([(1_000_500, 2)], {"fill_at": 1001.0}, 1.25),
    ],
)
def test_restore_loads_a_saved_fill(
    sends: list[tuple[int, int]], fill: dict[str, Any], expected: float,
) -> None:
    """A fill in the snapshot (another process got a 429) holds this window down too, moved
    onto the local clock (epoch 1000.0 is 0.0 here) like the sends."""
    w = sliding(capacity=4)
    w.restore(saved_sends(sends, capacity=4, **fill), -1000.0, 1.3)
    assert w.earliest(0) == pytest.approx(expected)
    assert w.earliest(1) == pytest.approx(expected + 0.25)


def test_a_saved_fill_no_later_than_ours_keeps_our_count_of_sends_since() -> None:
    """Both processes saw the 429 at 1.0; we sent twice since, the snapshot knows of none: the
    two sends still count."""
    w = sliding(capacity=4)
    w.fill(1.0)
    w.record(1.1)
    w.record(1.2)
    w.restore(saved_sends([], capacity=4, fill_at=1.0, fill_sends=0), 0.0, 1.3)
    assert w.earliest(0) == pytest.approx(1.75)


def test_a_later_saved_fill_replaces_ours() -> None:
    w = sliding(capacity=4)
    w.fill(1.0)
    w.record(1.1)
    w.restore(saved_sends([], capacity=4, fill_at=1.2, fill_sends=0), 0.0, 1.3)
    assert w.earliest(0) == pytest.approx(1.45)


def test_a_saved_fill_is_never_placed_after_now() -> None:
    w = sliding(capacity=4)
    w.restore(saved_sends([], capacity=4, fill_at=5.0, fill_sends=0), 0.0, 1.3)
    assert w.earliest(0) == pytest.approx(1.55)


# --- token buckets ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("state", "to_local", "now", "expected"),
    [
        # 10 sends at 1.0 (epoch 101.0) empty the bucket; one token back by 2.0.
        (saved_sends([(101_000, 10)]), -100.0, 2.0, 1.0),
        (saved_sends([(1_000, 10)]), 0.0, 2.5, 1.5),
        # 1 send at 1.0, 10 at 6.0: the bucket is full again before the 10, empty after.
        (saved_sends([(1_000, 1), (6_000, 10)]), 0.0, 6.0, 0.0),
        (saved_sends([(1_000, 1), (6_000, 10)]), 0.0, 7.0, 1.0),
        # A saved bucket with 3 tokens at 1.0 (epoch 101.0): 4 at 2.0.
        ({"tokens": 3.0, "at": 101.0}, -100.0, 2.0, 4.0),
        ({"tokens": 3.0, "at": 1.0}, 0.0, 2.0, 4.0),
        # More than we have (8 at 2.0), or no time (a bucket that never sent): ours stays.
        ({"tokens": 9.0, "at": 1.0}, 0.0, 2.0, 8.0),
        ({"tokens": 0.0, "at": None}, 0.0, 2.0, 8.0),
    ],
)
def test_token_bucket_takes_the_saved_tokens_where_fewer(
    state: dict[str, Any], to_local: float, now: float, expected: float,
) -> None:
    """Ours: 4 sends at 0.0 (6 tokens, back to 10 by 4.0). A saved bucket (or sliding window)
    with fewer tokens at ``now`` wins; the next sends start as its tokens allow."""
    w = bucket()
    w.record(0.0, 4)
    w.restore({"max_requests": 10, "period": 10.0, **state}, to_local, now)
    assert w.remaining(now) == int(expected)
    assert max(now, w.earliest(0)) == pytest.approx(now + max(0.0, 1.0 - expected))
    assert max(now, w.earliest(1)) == pytest.approx(now + max(0.0, 2.0 - expected))


def test_a_fresh_token_bucket_window_answers_with_nothing_in_flight() -> None:
    """``earliest()`` without an argument asks about one more send with none in flight."""
    for w in (bucket(capacity=1), sliding(capacity=1)):
        assert w.earliest() == -_INF
        w.record(1.0)
        assert w.earliest() == pytest.approx(11.0 if isinstance(w, TokenBucketWindow) else 2.0)


def test_token_bucket_relaxes_only_a_fill() -> None:
    """The server's count of remaining requests loosens a bucket only once after a 429 made it
    empty; otherwise the model only tightens."""
    w = bucket()
    w.record(1.0, 5)
    assert w.relax(1.0, 10) is False  # no 429: 5 tokens stay 5
    assert w.remaining(1.0) == 5
    w.fill(2.0)  # a 429: empty at 2.0
    assert w.remaining(2.0) == 0
    assert w.relax(4.0, 3) is True  # 2 tokens by then, the server says 3: take 3
    assert w.remaining(4.0) == 3
    assert w.relax(4.0, 5) is False  # the fill is undone once: no further loosening
    assert w.remaining(4.0) == 3


@pytest.mark.parametrize(
    ("at", "server_remaining", "relaxed", "remaining"),
    [
        (5.0, 3, False, 3),  # 3 tokens by 5.0: the server's 3 agrees with the fill
        (5.0, 0, False, 3),
        (5.0, 4, True, 4),
        (2.5, 10, True, 10),
        (2.5, 12, True, 10),  # never more than the capacity
    ],
)
def test_token_bucket_relax_after_a_fill(
    at: float, server_remaining: int, relaxed: bool, remaining: int,
) -> None:
    w = bucket()
    w.fill(2.0)
    assert w.relax(at, server_remaining) is relaxed
    assert w.remaining(at) == remaining


# --- charging nothing changes nothing --------------------------------------------------------

@pytest.mark.parametrize("make", [sliding, bucket])
def test_charging_zero_phantoms_changes_nothing(make: Any) -> None:
    w = make()
    fresh = w.export(EPOCH)
    w.add_phantoms(5.0, 0)
    w.add_phantoms(5.0, -3)
    assert w.export(EPOCH) == fresh
    w.record(6.0, 2)
    sent = w.export(EPOCH)
    w.add_phantoms(7.0, 0)
    assert (w.export(EPOCH), w.entries()) == (sent, 1)


def test_phantoms_count_in_a_sliding_window_from_t_on_at_most_a_window() -> None:
    """Sends others made are charged at ``t`` (or with the last send on record, if later),
    never more than the window holds."""
    w = sliding()
    w.record(0.5)
    w.add_phantoms(0.7, 1)
    assert (w.used(0.7), w.used(1.55), w.used(1.75)) == (2, 1, 0)
    w.add_phantoms(0.8, 25)
    assert (w.used(0.8), w.used(1.75), w.used(1.85)) == (12, 10, 0)
    w.add_phantoms(0.6, 2)  # before the last send on record: filed with it
    assert (w.used(1.75), w.used(1.85), w.entries()) == (12, 0, 3)


def test_phantoms_spend_a_token_buckets_tokens_at_most_a_bucket() -> None:
    w = bucket()
    w.record(0.5)
    w.add_phantoms(0.7, 1)
    assert w.remaining(0.7) == 8  # 9.2 - 1
    w.add_phantoms(0.7, 25)
    assert w.remaining(0.7) == -2  # -1.8: 2.8 s until the next send
    assert w.earliest(0) == pytest.approx(3.5)


@pytest.mark.parametrize("policy", ["sliding", "token-bucket"])
def test_a_clean_snapshot_of_an_idle_scheduler_leaves_a_fresh_one_idle(policy: Any) -> None:
    """Loading what an idle scheduler saved on a clean close neither charges nor stores
    anything: the fresh scheduler's own snapshot is unchanged, and loads elsewhere."""
    clock, wall = ManualClock(50.0), ManualClock(EPOCH)
    limits = [RateLimit(2, 1.0), RateLimit(3, 10.0)]

    def make() -> QuotaScheduler:
        return QuotaScheduler(limits, policy=policy, margin=NO_MARGIN, clock=clock,
                              sleep=clock.sleep, wall_clock=wall)

    idle = make().export_state()
    clock.advance(1.0)
    wall.advance(1.0)
    fresh = make()
    before = fresh.export_state()["windows"]
    fresh.import_state({**idle, "unsaved_limit": 0})
    after = fresh.export_state()
    assert after["windows"] == before
    assert fresh.memory_entries() == (0 if policy == "sliding" else 2)
    other = make()
    other.import_state(after)  # loads: no time where there is none
    assert [used for _, used in other.window_usage()] == [2, 3]  # unsaved_limit charged


def test_token_bucket_snapshot_times_are_epoch_seconds_or_none() -> None:
    w = bucket()
    assert w.export(EPOCH) == {"max_requests": 10, "period": 10.0, "tokens": 10.0, "at": None}
    w.record(2.0, 3)
    assert w.export(EPOCH) == {"max_requests": 10, "period": 10.0, "tokens": 7.0,
                               "at": EPOCH + 2.0}


def test_a_token_bucket_scheduler_holds_one_entry_per_window() -> None:
    clock = ManualClock(0.0)
    s = QuotaScheduler([RateLimit(5, 1.0), RateLimit(50, 60.0)], policy="token-bucket",
                       margin=NO_MARGIN, clock=clock, sleep=clock.sleep)
    for _ in range(40):
        r = s.try_reserve()
        assert r is not None
        s.complete(r)
        clock.advance(0.25)
    assert s.memory_entries() == 2
