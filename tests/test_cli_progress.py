"""What the progress bar promises: records done/total, records/s, accepted and failed, 429s,
the planner's ETA and the window that paces the run; and that rich draws it."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pangocdp_async.cli._display import ProgressBar, format_duration
from pangocdp_async.cli._inputs import InputFile
from pangocdp_async.cli._job import IngestJob, run_job
from pangocdp_async.testing import sample_orders, write_jsonl


class Recorder:
    def __init__(self) -> None:
        self.started: tuple[int | None, int] | None = None
        self.snapshots: list[dict[str, Any]] = []
        self.stopped = False

    def start(self, total: int | None, done: int) -> None:
        self.started = (total, done)

    def update(self, snapshot: dict[str, Any]) -> None:
        self.snapshots.append(snapshot)

    def stop(self) -> None:
        self.stopped = True


@pytest.mark.slow
async def test_the_bar_is_fed_counts_eta_and_the_pacing_window(tmp_path: Path) -> None:
    """3,000 records = 60 requests through the sandbox's documented windows: 50 leave at once,
    then the per-second window holds the other 10 back for 1.1 s, and the bar says so."""
    path = tmp_path / "orders.jsonl"
    write_jsonl(path, sample_orders(3_000))
    job = IngestJob(files=[InputFile(0, str(path), "jsonl", False)], object_type="order",
                    source="POS", job=tmp_path / "job.sqlite", sandbox=True)
    bar = Recorder()
    result = await run_job(job, bar, install_signals=False)
    assert result.exit_code == 0
    assert bar.started == (3_000, 0)  # the total from a count of the file's lines
    assert bar.stopped
    last = bar.snapshots[-1]
    assert (last["done"], last["total"], last["accepted"], last["failed"]) == (
        3_000, 3_000, 3_000, 0)
    assert last["rate_limited"] == 0
    assert last["rate"] > 0
    assert any(s["binding"] == "50/s" for s in bar.snapshots)  # why the last 10 waited
    etas = [s["eta_s"] for s in bar.snapshots if s["eta_s"] is not None]
    assert etas  # the planner's estimate for what is left
    assert all(eta < 5 for eta in etas)


def test_rich_draws_the_bar() -> None:
    out = io.StringIO()
    bar = ProgressBar(Console(file=out, force_terminal=True, width=160))
    bar.start(1_000, 0)
    bar.update({"done": 500, "total": 1_000, "accepted": 498, "failed": 2, "rate": 1234.5,
                "rate_limited": 1, "eta_s": 3_700.0, "binding": "1,000/min"})
    bar.stop()
    text = out.getvalue()
    for part in ("500/1,000", "1,234/s", "ok 498", "failed 2", "429s 1", "ETA 1 h 1 min 40 s",
                 "paced by 1,000/min"):
        assert part in text, part


def test_format_duration() -> None:
    assert format_duration(None) == "unknown"
    assert format_duration(1.25) == "1.2 s"
    assert format_duration(28_169.3) == "7 h 49 min 29 s"
    assert format_duration(107_377.1) == "1 d 5 h 49 min"


def test_the_bar_names_the_longest_window_that_held_sends_back() -> None:
    """Between the minute window's waits the per-second one binds too: the bar says the
    minute (the longest window seen binding in the last minute), not whichever came last."""
    from pangocdp_async import QuotaScheduler, RateLimit
    from pangocdp_async.cli._job import _Watcher
    from pangocdp_async.cli._journal import Settled

    watcher = _Watcher(QuotaScheduler(), 50, None, Settled(0, 0, 0, 0, None), None)
    assert watcher.binding() is None
    watcher._binding = [(0.0, RateLimit(1000, 60.0)), (0.5, RateLimit(50, 1.0))]
    assert watcher.binding() == RateLimit(1000, 60.0)
