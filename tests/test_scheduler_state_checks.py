"""QuotaScheduler.import_state: what a snapshot must look like (each refusal names the field
and shows the bad value), and what it restores: counts, pauses, the 429 episode."""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from typing import Any

import pytest

from pangocdp_async import Margin, QuotaScheduler, RateLimit
from tests.conftest import ManualClock

TEN = [RateLimit(10, 1.0)]
TWO = [RateLimit(2, 1.0), RateLimit(3, 10.0)]
NO_MARGIN = Margin(0.0, 0.0)
SAVED_AT = 1000.0  # on the wall clock
LOCAL = 50.0  # the loading scheduler's own clock when it loads
LONGEST_PAUSE = (10.0 + 1.0) * (1 + 0.1)  # (max_retry_after + retry_after_pad) * (1 + jitter)


def loader(
    limits: list[RateLimit] = TEN, clock: ManualClock | None = None,
    wall: ManualClock | None = None, **kwargs: Any,
) -> QuotaScheduler:
    """A scheduler on injected clocks: its own at LOCAL, the wall clock at SAVED_AT (so a
    snapshot saved 'now' maps to LOCAL exactly), 429 pauses of at most 10 + 1 s (+10%)."""
    clock = clock or ManualClock(LOCAL)
    kwargs.setdefault("max_retry_after", 10.0)
    kwargs.setdefault("retry_after_pad", 1.0)
    return QuotaScheduler(limits, margin=NO_MARGIN, clock=clock, sleep=clock.sleep,
                          wall_clock=wall or ManualClock(SAVED_AT), clock_step_allowance=0.0,
                          **kwargs)


def snapshot(**changes: Any) -> dict[str, Any]:
    """A snapshot as export_state writes it: three sends at SAVED_AT in a 10/1 s window."""
    state: dict[str, Any] = {
        "version": 2, "policy": "sliding", "saved_at": SAVED_AT, "in_flight": 0,
        "unsaved_limit": 0, "paused_until": None, "pause_started": None, "level": 0,
        "windows": [{"max_requests": 10, "period": 1.0, "ms": [int(SAVED_AT * 1000)],
                     "n": [3]}],
    }
    state.update(changes)
    return state


def used(s: QuotaScheduler) -> list[int]:
    return [n for _, n in s.window_usage()]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to one field of the snapshot; ``path`` like ``windows.0.ms``."""
    def change(state: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = state
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(state: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = state
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        del node[last]
    return change


def _second_window(window: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def change(state: dict[str, Any]) -> None:
        state["windows"].append(window)
    return change


COUNT = "must be an integer from 0 to 1000000000, got"
OK_WINDOW = {"max_requests": 3, "period": 10.0, "ms": [1_000_000, 5], "n": [1, 1]}

REFUSED: list[Any] = [
    pytest.param(_set("version", 99), "unsupported version 99", id="version"),
    pytest.param(_drop("version"), "unsupported version None", id="no-version"),
    pytest.param(_set("saved_at", "yesterday"), "saved_at must be a finite number, got "
                 "'yesterday'", id="saved_at-str"),
    pytest.param(_set("saved_at", float("inf")), "saved_at must be a finite number, got inf",
                 id="saved_at-inf"),
    pytest.param(_set("saved_at", True), "saved_at must be a finite number, got True",
                 id="saved_at-bool"),
    pytest.param(_set("in_flight", -1), f"in_flight {COUNT} -1", id="in_flight-negative"),
    pytest.param(_set("in_flight", True), f"in_flight {COUNT} True", id="in_flight-bool"),
    pytest.param(_set("in_flight", "3"), f"in_flight {COUNT} '3'", id="in_flight-str"),
    pytest.param(_set("in_flight", 10**9 + 1), f"in_flight {COUNT} 1000000001",
                 id="in_flight-huge"),
    pytest.param(_set("unsaved_limit", -1), f"unsaved_limit {COUNT} -1", id="unsaved_limit"),
    pytest.param(_set("level", 2.5), f"level {COUNT} 2.5", id="level"),
    pytest.param(_set("paused_until", "later"), "paused_until must be a finite number, got "
                 "'later'", id="paused_until-str"),
    pytest.param(_set("paused_until", SAVED_AT + LONGEST_PAUSE + 0.1),
                 "paused_until lies further ahead than any 429 can pause", id="paused_until"),
    pytest.param(_set("pause_started", SAVED_AT + LONGEST_PAUSE + 0.1),
                 "pause_started lies further ahead than any 429 can pause", id="pause_started"),
    pytest.param(_set("windows", {}), "windows must be a list", id="windows-dict"),
    pytest.param(_second_window(5), "windows[1] must be an object",  # type: ignore[arg-type]
                 id="window-int"),
    pytest.param(_set("windows.0.max_requests", -1), f"windows[0].max_requests {COUNT} -1",
                 id="max_requests"),
    pytest.param(_set("windows.0.period", "1s"), "windows[0].period must be a finite number, "
                 "got '1s'", id="period-str"),
    pytest.param(_set("windows.0.period", 0), "windows[0].period must be > 0", id="period-0"),
    pytest.param(_set("windows.0.n", [3, 1]), "windows[0]: ms and n must be lists of one length",
                 id="n-longer"),
    pytest.param(_set("windows.0.ms", 5), "windows[0]: ms and n must be lists of one length",
                 id="ms-int"),
    pytest.param(_set("windows.0.n", 3), "windows[0]: ms and n must be lists of one length",
                 id="n-int"),
    pytest.param(_second_window({**OK_WINDOW, "ms": [1_000_000, -5]}),
                 "windows[1].ms[1] must be an integer from 0 to 1000000000000000, got -5",
                 id="ms-negative"),
    pytest.param(_set("windows.0.ms", [10**15 + 1]),
                 "windows[0].ms[0] must be an integer from 0 to 1000000000000000, got "
                 "1000000000000001", id="ms-huge"),
    pytest.param(_second_window({**OK_WINDOW, "n": [1, -1]}), f"windows[1].n[1] {COUNT} -1",
                 id="n-negative"),
    pytest.param(_set("windows.0.fill_at", "soon"), "windows[0].fill_at must be a finite "
                 "number, got 'soon'", id="fill_at"),
    pytest.param(_second_window({**OK_WINDOW, "fill_at": SAVED_AT, "fill_sends": -1}),
                 f"windows[1].fill_sends {COUNT} -1", id="fill_sends"),
    pytest.param(_set("windows.0", {"max_requests": 10, "period": 1.0, "tokens": "many",
                                    "at": None}),
                 "windows[0].tokens must be a finite number, got 'many'", id="tokens"),
    pytest.param(_set("windows.0", {"max_requests": 10, "period": 1.0, "tokens": 3.0,
                                    "at": "then"}),
                 "windows[0].at must be a finite number, got 'then'", id="tokens-at"),
    pytest.param(_set("windows.0", {"max_requests": 10, "period": 1.0}),
                 "windows[0] has neither sends nor tokens", id="no-sends"),
]


@pytest.mark.parametrize("policy", ["sliding", "token-bucket"])
@pytest.mark.parametrize(("change", "why"), REFUSED)
def test_a_malformed_snapshot_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], None], why: str, policy: str
) -> None:
    """Each malformed field is refused with a ValueError that names it and shows the bad
    value, and nothing of the snapshot is taken."""
    s = loader(policy=policy)
    state = snapshot()
    change(state)
    with pytest.raises(ValueError, match=f"^{re.escape('not a quota state: ' + why)}$"):
        s.import_state(state)
    assert used(s) == [0]
    assert s.try_reserve() is not None


def test_a_snapshot_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^not a quota state: expected an object, got list$"):
        loader().import_state([snapshot()])  # type: ignore[arg-type]


ACCEPTED: list[Any] = [
    pytest.param(_drop("in_flight"), 3, id="no-in_flight"),
    pytest.param(_drop("unsaved_limit"), 3, id="no-unsaved_limit"),
    pytest.param(_drop("level"), 3, id="no-level"),
    pytest.param(_set("in_flight", 10**9), 13, id="in_flight-max"),  # a full window charged
    pytest.param(_set("windows.0.ms", [10**15]), 3, id="ms-max"),  # placed now at the latest
    pytest.param(_set("paused_until", SAVED_AT + LONGEST_PAUSE), 3, id="longest-pause"),
    pytest.param(_set("pause_started", SAVED_AT + LONGEST_PAUSE), 3, id="latest-pause-start"),
    pytest.param(_set("windows.0.fill_at", SAVED_AT), 10, id="fill-without-count"),
    pytest.param(_set("windows.0", {"max_requests": 10, "period": 1.0, "tokens": 10.0,
                                    "at": None}), 0, id="untouched-bucket"),
    pytest.param(_set("windows.0", {"max_requests": 10, "period": 1.0, "tokens": 6.5,
                                    "at": SAVED_AT}), 4, id="bucket"),
]


@pytest.mark.parametrize(("change", "expected_used"), ACCEPTED)
def test_well_formed_snapshots_load(
    change: Callable[[dict[str, Any]], None], expected_used: int
) -> None:
    """Optional fields may be missing (nothing is charged for them), counts may reach their
    bounds and a pause may be as long as the longest a 429 can cause."""
    s = loader()
    state = snapshot()
    change(state)
    s.import_state(copy.deepcopy(state))
    assert used(s) == [expected_used]


@pytest.mark.parametrize(("max_retry_after", "pad", "ahead", "accepted"), [
    (10.0, 1.0, 12.0, True),   # 11 s * 1.09
    (10.0, 1.0, 12.2, False),  # beyond 11 s * 1.1
    (100.0, 0.0, 109.5, True),
    (100.0, 0.0, 110.5, False),
])
def test_the_longest_pause_a_snapshot_may_hold_follows_the_settings(
    max_retry_after: float, pad: float, ahead: float, accepted: bool
) -> None:
    """A saved pause may last up to (max_retry_after + retry_after_pad) * 1.1 from the save:
    the longest a 429 can cause with those settings."""
    s = loader(max_retry_after=max_retry_after, retry_after_pad=pad)
    state = snapshot(paused_until=SAVED_AT + ahead, pause_started=SAVED_AT)
    if accepted:
        s.import_state(state)
        assert s.next_free() == pytest.approx(ahead)
    else:
        with pytest.raises(ValueError, match=r"^not a quota state: paused_until lies further"):
            s.import_state(state)
        assert s.next_free() == 0.0


def test_a_pause_that_ends_as_it_loads_does_not_ramp() -> None:
    """A restored pause still under way resumes with one probe at a time; one that ends at
    the very moment it loads is over: senders start together."""
    over = loader()
    over.import_state(snapshot(paused_until=SAVED_AT, pause_started=SAVED_AT - 2.0))
    assert over.try_reserve() is not None
    assert over.try_reserve() is not None
    clock = ManualClock(LOCAL)
    on = loader(clock=clock)
    on.import_state(snapshot(paused_until=SAVED_AT + 1.0, pause_started=SAVED_AT - 1.0))
    clock.advance(1.0)
    assert on.try_reserve() is not None
    assert on.try_reserve() is None  # the probe must be answered first


def test_a_429_for_a_send_older_than_a_restored_pause_is_only_counted() -> None:
    """Another process paused at SAVED_AT; our send started before that pause. Its 429
    belongs to the same episode: counted, and the restored pause is not extended."""
    clock, wall = ManualClock(LOCAL), ManualClock(SAVED_AT)
    s = loader(clock=clock, wall=wall)
    old = s.try_reserve()
    assert old is not None
    clock.advance(1.0)
    wall.advance(1.0)
    s.import_state(snapshot(saved_at=SAVED_AT + 1.0, pause_started=SAVED_AT + 1.0,
                            paused_until=SAVED_AT + 3.0, level=1))
    assert s.on_rate_limited(8.0, old) == pytest.approx(LOCAL + 3.0)
    assert s.rate_limited == 1


@pytest.mark.parametrize(("level", "expected"), [
    (None, [2, 0]),  # no level saved: the next 429 starts at the shortest window
    (0, [2, 0]),
    (1, [2, 3]),  # the episode's first 429 filled the 1-s window: the next fills both
])
def test_a_restored_episode_goes_on_at_its_level(level: int | None, expected: list[int]) -> None:
    """A 429 right after loading a snapshot taken during a 429 pause continues its episode:
    one window more is modeled full than the saved level."""
    s = loader(TWO)
    state = snapshot(pause_started=SAVED_AT - 2.0, paused_until=SAVED_AT, level=level,
                     windows=[])
    if level is None:
        del state["level"]
    s.import_state(state)
    s.on_rate_limited(0.0)
    assert used(s) == expected


class _Highest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def test_a_snapshot_holds_the_pause_the_episode_and_the_sends_in_flight() -> None:
    """export_state during a 429 pause, with a send in flight: every field another process
    needs, times on the wall clock."""
    clock, wall = ManualClock(LOCAL), ManualClock(SAVED_AT)
    s = QuotaScheduler(TWO, margin=NO_MARGIN, clock=clock, sleep=clock.sleep, wall_clock=wall,
                       save_every=5, rng=_Highest(0))
    fresh = s.export_state()
    assert (fresh["paused_until"], fresh["pause_started"], fresh["level"]) == (None, None, 0)
    assert s.try_reserve() is not None
    s.on_rate_limited(2.0)  # a pause of (2 + 1) * 1.1 s
    state = s.export_state()
    windows = state.pop("windows")
    assert state == {
        "version": 2, "policy": "sliding", "saved_at": SAVED_AT, "in_flight": 1,
        "unsaved_limit": 10, "paused_until": pytest.approx(SAVED_AT + 3.3),
        "pause_started": SAVED_AT, "level": 1,
    }
    assert [(w["max_requests"], w["period"]) for w in windows] == [(2, 1.0), (3, 10.0)]
    assert windows[0]["fill_at"] == SAVED_AT
