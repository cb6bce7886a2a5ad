"""SQLiteQuotaBackend at its edges: what its constructor refuses and how it says so, the
defaults it runs with (the documented lock timeout, transactions off the event loop), an
operation before ``bind()``, a quota named ``"default"`` on a new file, and a report's charge
right after a bucketed send, which the file paces exactly as the local window does."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from pangocdp_async import Margin, RateLimit, SQLiteQuotaBackend
from pangocdp_async._limiter._backend import QuotaConfig
from pangocdp_async._limiter._windows import SlidingWindow

from .conftest import ManualClock

ONE = (RateLimit(5, 1.0),)


# --- what the constructor refuses ----------------------------------------------------------------
def test_a_bad_lock_timeout_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^lock_timeout must be a finite number of seconds "
                                         r">= 0, got -1\.0$"):
        SQLiteQuotaBackend(tmp_path / "q.sqlite", lock_timeout=-1.0)


def test_a_clock_that_cannot_be_called_is_refused_with_what_was_given(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"^clock must be callable, got 5$"):
        SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=5)  # type: ignore[arg-type]


def test_a_directory_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is a directory") as err:
        SQLiteQuotaBackend(tmp_path)
    assert str(err.value) == f"SQLite quota file {str(tmp_path)!r} is a directory"


def test_a_file_in_a_missing_directory_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "q.sqlite"
    with pytest.raises(ValueError, match="its directory does not exist") as err:
        SQLiteQuotaBackend(path)
    assert str(err.value) == (f"SQLite quota file {str(path)!r}: its directory does not "
                              "exist")


# --- its defaults --------------------------------------------------------------------------------
def test_the_lock_timeout_defaults_to_two_seconds(tmp_path: Path) -> None:
    assert SQLiteQuotaBackend(tmp_path / "q.sqlite").lock_timeout == 2.0


async def test_by_default_a_transaction_runs_off_the_event_loop(tmp_path: Path) -> None:
    """The clock is read inside the transaction: by default in a worker thread, so a locked
    file never holds up the loop; ``threaded=False`` keeps it on the loop's thread."""
    readers: list[int] = []

    def clock() -> float:
        readers.append(threading.get_ident())
        return 1000.0

    for threaded, off_loop in ((None, True), (False, False)):
        backend = (SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=clock) if threaded is None
                   else SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=clock,
                                           threaded=threaded))
        backend.bind("q", QuotaConfig.build(ONE, "sliding", Margin()))
        await backend.usage()
        await backend.close()
        assert (readers.pop() != threading.get_ident()) is off_loop


# --- before bind() and a quota named "default" ---------------------------------------------------
async def test_an_operation_before_bind_is_refused(tmp_path: Path) -> None:
    backend = SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=ManualClock(), threaded=False)
    with pytest.raises(RuntimeError, match=r"^bind\(\) the backend to a quota first$"):
        await backend.usage()


async def test_a_quota_named_default_starts_empty_on_a_new_file(tmp_path: Path) -> None:
    """A process that never used the quota has nothing to have lost: the new record is not
    taken for one that vanished (which would model the windows full)."""
    backend = SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=ManualClock(), threaded=False)
    backend.bind("default", QuotaConfig.build(ONE, "sliding", Margin()))
    _, counts, _, _ = await backend.usage()
    assert counts == [0]
    _, lease, _ = await backend.reserve(60.0)
    assert lease is not None
    await backend.close()


# --- a charge right after a bucketed send --------------------------------------------------------
async def test_a_charge_after_a_bucketed_send_leaves_the_window_as_the_local_windows_does(
        tmp_path: Path) -> None:
    """2000 a second is a bucketed window (1 ms buckets). A send at 1024.0035 is filed in the
    bucket ending at 1024.004; a report then shows 999 sends unseen, charged at that tail. The
    file counts them exactly as the local window does, at every moment around the end of the
    window (where the send and the charge leave it)."""
    limits = (RateLimit(2000, 1.0),)
    clock = ManualClock(start=1024.0035)
    backend = SQLiteQuotaBackend(tmp_path / "q.sqlite", clock=clock, threaded=False)
    backend.bind("q", QuotaConfig.build(limits, "sliding", Margin()))
    local = SlidingWindow(limits[0], Margin())

    now, lease, _ = await backend.reserve(60.0)
    assert lease is not None
    await backend.complete(lease, now, True, False)
    local.record(now)
    assert await backend.remaining(1000, None) == 999
    local.add_phantoms(now, 999)

    seen: list[tuple[int, int]] = []
    for t in (1025.1039, 1025.1042, 1025.1046, 1025.1049, 1025.1053):
        clock.now = t
        _, counts, _, _ = await backend.usage()
        seen.append((counts[0], local.used(t)))
    assert seen == [(1000, 1000), (999, 999), (999, 999), (999, 999), (0, 0)]
    await backend.close()
