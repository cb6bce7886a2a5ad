"""``pangocdp ingest``: one run of a journaled job, from its settings to its summary.

The run is ``ingest_many``'s machinery (the same scheduler, senders and ledger) with two hooks:
the reader tags each record with its key (file and line), and the journal hears each batch
before its first request and when it is done. Ctrl-C (or SIGTERM) cancels the run: reading
stops, requests in flight get the shutdown timeout, the journal is closed consistent, and the
summary says how to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shlex
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from .._batching import EntryEncoder, make_envelope
from .._bulk import BulkOptions, KeyQueue
from .._client import PangoCDPClient
from .._config import DOCUMENTED_LIMITS, RateLimit
from .._constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_INGEST_URL,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    ENV_API_KEY,
    ENV_GROUP_KEY,
    ENV_INGEST_URL,
    ENV_USERNAME,
)
from .._exceptions import AuthenticationError, BadRequestError, PipelineError
from .._limiter import Limiter, QuotaScheduler, SQLiteQuotaStore, limiter_from_spec
from .._results import IngestReport
from ..testing import FakePangoCDP
from ._dryrun import DryRun
from ._inputs import (
    ColumnType,
    InputError,
    InputFile,
    KeySet,
    Reader,
    check_readable,
    count_lines,
    fingerprint,
    identity,
    is_stream,
)
from ._journal import JobMismatch, Journal, JournalWriteError, ServerFailing, Settled
from ._plan import plan_backfill, short_window

__all__ = ["Credentials", "IngestJob", "JobResult", "UsageProblem", "run_job"]

logger = logging.getLogger("pangocdp_async.cli")

Policy = Literal["sliding", "token-bucket"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageProblem(Exception):
    """A usage or configuration error (exit code 2), said plainly."""


@dataclass(frozen=True)
class Credentials:
    username: str | None = None
    api_key: str | None = field(default=None, repr=False)
    group_key: str | None = field(default=None, repr=False)
    auth_url: str | None = None
    ingest_url: str | None = None


@dataclass(frozen=True)
class IngestJob:
    """Everything ``pangocdp ingest`` was asked."""

    files: list[InputFile]
    object_type: str
    source: str
    job: Path
    init_data: bool = False
    je_config_id: str | None = None
    je_event_key: str | None = None
    ignore_cf: tuple[str, ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    batch_size: int = 50
    policy: Policy = "sliding"
    #: Where the quota is kept: "local" (this process; its state in the journal) or a shared
    #: one ("sqlite:PATH", "redis://...").
    quota: str = "local"
    dead_letter: Path | None = None
    sandbox: bool = False
    no_limits: bool = False
    strict: bool = False
    restart: bool = False
    column_types: dict[str, ColumnType] = field(default_factory=dict)
    csv_delimiter: str = ","
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT_S
    credentials: Credentials = field(default_factory=Credentials)
    format: str | None = None  # --format, if given
    #: The windows the client paces by (None: the documented ones; --no-limits: none). Only
    #: benchmarks set it otherwise, against a fake that has none.
    limits: tuple[RateLimit, ...] | None = None

    def settings(self) -> dict[str, Any]:
        """What decides what is sent, record by record (the journal refuses a change of it).
        Concurrency, batch size, policy and the dead letter may change between runs."""
        return {
            "object_type": self.object_type, "source": self.source,
            "init_data": self.init_data, "je_config_id": self.je_config_id,
            "je_event_key": self.je_event_key, "ignore_cf": sorted(self.ignore_cf),
            "formats": [f.format for f in self.files],
            "column_types": dict(sorted(self.column_types.items())),
            "csv_delimiter": self.csv_delimiter,
            "target": self.target(),
        }

    def target(self) -> str:
        """Where the records go: the sandbox, or the account and ingest URL (no secret). A
        journal of one target never resumes against another."""
        if self.sandbox:
            return "sandbox"
        c = self.credentials
        url = c.ingest_url or os.environ.get(ENV_INGEST_URL) or DEFAULT_INGEST_URL
        return f"{c.username or os.environ.get(ENV_USERNAME) or '?'} at {url.rstrip('/')}"


@dataclass
class JobResult:
    """The summary of one run (and of the job so far)."""

    exit_code: int
    outcome: str
    summary: dict[str, Any]
    failures: list[dict[str, Any]]
    report: IngestReport | None = None


class Progress(Protocol):
    """What the display is told while the run goes (see ``_display``)."""

    def start(self, total: int | None, done: int) -> None: ...

    def update(self, snapshot: dict[str, Any]) -> None: ...

    def stop(self) -> None: ...


async def run_job(job: IngestJob, progress: Progress | None = None, *,
                  install_signals: bool = True) -> JobResult:
    """Run (or resume) the job; return its result. Raises :class:`UsageProblem` for usage and
    configuration errors, before anything is sent."""
    for spec in job.files:
        try:
            check_readable(spec)
        except InputError as exc:
            raise UsageProblem(str(exc)) from None
    if job.no_limits and not job.sandbox:
        raise UsageProblem("--no-limits lifts the documented windows, which only the sandbox "
                           "may do: add --sandbox")
    _check_inputs(job)
    if job.strict:
        first_bad = _first_bad_record(job)
        if first_bad is not None:
            return JobResult(EXIT_FAILED, "refused (--strict)",
                             {"outcome": "refused (--strict)", "first_bad_record": first_bad,
                              "sent": 0}, [])
    fingerprints = [fingerprint(f.path) or {"path": f.path, "stream": True} for f in job.files]
    lock = _lock(job.job)
    try:
        journal = Journal(job.job)
    except JobMismatch as exc:
        _unlock(lock)
        raise UsageProblem(str(exc)) from None
    except Exception as exc:  # (an unwritable directory, ...)
        _unlock(lock)
        raise UsageProblem(f"cannot open the journal {job.job}: {exc}") from None
    try:
        try:
            resumed = journal.bind(job.settings(), fingerprints, job.files, restart=job.restart)
        except JobMismatch as exc:
            raise UsageProblem(str(exc)) from None
        if resumed and any(is_stream(f.path) for f in job.files):
            logger.warning("resuming a job read from stdin or a pipe: its records cannot be "
                           "checked against the first run's; give the same input")
        dead_letter = None
        if job.dead_letter is not None:
            try:
                dead_letter = job.dead_letter.open("ab")
            except OSError as exc:
                raise UsageProblem(f"cannot write the dead letter {job.dead_letter}: "
                                   f"{exc.strerror or exc}") from None
        journal.dead_letter = dead_letter
        try:
            return await _run(job, journal, resumed, progress, install_signals)
        finally:
            if dead_letter is not None:
                dead_letter.close()
    finally:
        journal.close()
        _unlock(lock)


def _check_inputs(job: IngestJob) -> None:
    """What can be refused before the journal is opened: double reads, missing credentials."""
    if job.strict and any(is_stream(f.path) for f in job.files):
        raise UsageProblem("--strict reads every input twice (a check, then the sending), and "
                           "stdin or a pipe can be read once: save it to a file first")
    seen: dict[tuple[int, int], str] = {}
    for spec in job.files:
        same = identity(spec.path)
        if same is None:
            continue
        if same in seen:
            raise UsageProblem(f"{spec.path} is the same file as {seen[same]}: its records "
                               "would be sent twice")
        seen[same] = spec.path
    if not job.sandbox:
        _credentials(job, None)  # missing credentials: said as such, not as another job


def _lock(journal: Path) -> int | None:
    """One run per journal at a time: an exclusive lock on ``<journal>-lock`` (named after
    the journal's real path: a link to it takes the same lock), which the system releases when
    the process ends, however it ends. (Where ``fcntl`` does not exist, Windows, there is no
    lock.)"""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    path = Path(f"{os.path.realpath(journal)}-lock")
    if not path.parent.is_dir():
        raise UsageProblem(f"cannot create the journal {journal}: the directory {path.parent} "
                           "does not exist")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise UsageProblem(f"cannot create {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UsageProblem(f"another pangocdp run (pid {holder}) is using the journal "
                           f"{journal}: two runs of one job would send records twice") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _credentials(job: IngestJob, fake: FakePangoCDP | None) -> dict[str, Any]:
    if fake is not None:
        return dict(fake.client_kwargs())
    c = job.credentials
    missing = [f"--{flag} (or {env})" for flag, env, value in (
        ("username", ENV_USERNAME, c.username), ("api-key", ENV_API_KEY, c.api_key),
        ("group-key", ENV_GROUP_KEY, c.group_key)) if not value]
    if missing:
        raise UsageProblem("missing credentials: " + ", ".join(missing)
                           + "; or try the tool with --sandbox")
    return {"username": c.username, "api_key": c.api_key, "group_key": c.group_key,
            "auth_url": c.auth_url, "ingest_url": c.ingest_url}


async def _run(job: IngestJob, journal: Journal, resumed: bool, progress: Progress | None,
               install_signals: bool) -> JobResult:
    before = journal.state()
    settled = journal.settled_ranges()
    resent = before.unconfirmed
    total = before.total
    if total is None and progress is not None:  # (for the bar: a fast newline count)
        counts = [count_lines(f) for f in job.files]
        total = None if any(c is None for c in counts) else sum(c or 0 for c in counts)
    limits: tuple[RateLimit, ...] = (
        () if job.no_limits else DOCUMENTED_LIMITS if job.limits is None else job.limits)
    scheduler: Limiter
    store: SQLiteQuotaStore | None = None
    if job.quota == "local" or not limits:
        store = SQLiteQuotaStore(job.job, key="quota") if limits else None
        scheduler = QuotaScheduler(limits, policy=job.policy, store=store)
    else:
        try:
            scheduler = limiter_from_spec(job.quota, limits, policy=job.policy)
        except (ValueError, ImportError) as exc:
            raise UsageProblem(f"--quota: {exc}") from None
    # (the sandbox starts last: a bad --quota must not leave it listening)
    fake: FakePangoCDP | None = None
    if job.sandbox:
        fake = FakePangoCDP(rate_limits=None if job.no_limits else DOCUMENTED_LIMITS,
                            keep_entries=False, keep_requests=False)
        await fake.start()
    try:
        try:
            client = PangoCDPClient(**_credentials(job, fake), limiter=scheduler)
        except ValueError as exc:
            raise UsageProblem(str(exc)) from None
        async with client:
            keys = KeyQueue()
            reader = Reader(job.files, keys=keys, skip=KeySet(settled),
                            column_types=job.column_types, csv_delimiter=job.csv_delimiter)
            watcher = _Watcher(scheduler, job.batch_size, total, before, progress)
            options = BulkOptions(
                retry=client.retry, init_data=job.init_data, concurrency=job.concurrency,
                batch_size=job.batch_size, on_progress=watcher.on_batch,
                shutdown_timeout=job.shutdown_timeout)
            run = client._bulk_run(job.object_type, job.source, job.je_config_id,
                                   job.je_event_key, list(job.ignore_cf) or None, options,
                                   journal=journal, keys=keys)
            journal.begin_run()
            outcome, error = await _drive(run.run(reader), watcher, install_signals)
            report = run.report
    finally:
        await scheduler.close()
        if store is not None:
            store.close()
        if fake is not None:
            await fake.stop()
    journal_error = None
    try:
        stopped_by = report.stopped_by
        if isinstance(stopped_by, BadRequestError):
            # The server refused the envelope: the entries tried alone on the way were refused
            # for it, not for themselves. They are sent again once the cause is fixed.
            journal.retry_failures_like(str(stopped_by))
        if reader.complete and not reader.broken:
            journal.set_total(reader.yielded + reader.skipped)
        journal.end_run(report, outcome)
        after = journal.state()
    except sqlite3.Error as exc:  # (the disk that refused a write may refuse this one too)
        journal_error = (
            f"the journal could not be closed ({exc}); the next run re-reads what it does not "
            "hold, so nothing is lost, but records in flight may be sent twice")
        try:
            after = journal.state()  # (reading may still work)
        except sqlite3.Error:
            after = before
    return _result(job, journal, report, outcome, error, after, resent, reader, resumed,
                   fake is not None, journal_error)


async def _drive(coro: Any, watcher: _Watcher, install_signals: bool
                 ) -> tuple[str, BaseException | None]:
    """Run the ingest as a task that Ctrl-C and SIGTERM cancel; return how it ended."""
    loop = asyncio.get_running_loop()
    task: asyncio.Task[IngestReport] = asyncio.ensure_future(coro)
    interrupted: list[str] = []

    def stop(name: str) -> None:
        interrupted.append(name)
        task.cancel()

    installed = []
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop, sig.name)
                installed.append(sig)
    watcher.begin()
    try:
        await task
        return "finished", None
    except asyncio.CancelledError:
        if not interrupted and not task.cancelled():
            raise
        if not interrupted:
            raise  # we are cancelled from outside: let it through
        return "interrupted", None
    except PipelineError as exc:
        cause = exc.__cause__
        known = isinstance(cause, (ServerFailing, JournalWriteError))
        return "stopped by an error", cause if known else exc
    finally:
        watcher.end()
        for sig in installed:
            loop.remove_signal_handler(sig)


class _Watcher:
    """Feeds the display: counts after each batch, the binding window, the planner's ETA."""

    def __init__(self, scheduler: Limiter, batch_size: int, total: int | None,
                 before: Any, progress: Progress | None) -> None:
        self.scheduler = scheduler
        self.batch_size = batch_size
        self.total = total
        self.before = before
        self.progress = progress
        self.report: IngestReport | None = None
        self._last_draw = -math.inf
        self._last_plan = -math.inf
        self._eta: float | None = None
        self._binding: list[tuple[float, RateLimit]] = []
        self._started = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self._started = time.monotonic()
        if self.progress is not None:
            self.progress.start(self.total, self.before.accepted + self.before.failed)
            self._ticker = asyncio.ensure_future(self._tick())

    def end(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.progress is not None:
            self._draw(force=True)
            self.progress.stop()

    def on_batch(self, report: IngestReport) -> None:
        self.report = report
        self._draw()

    async def _tick(self) -> None:
        # The binding window is sampled twice a second; the display shows the longest window
        # that held sends back in the last minute (a day-long backfill wants to see why).
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            window = self._binding_now()
            if window is not None:
                self._binding.append((now, window))
            self._binding = [(t, w) for t, w in self._binding if now - t <= 60.0]
            self._draw(force=True)

    def _binding_now(self) -> RateLimit | None:
        s = self.scheduler
        if s.next_free() <= 0:
            return None
        usage = s.window_usage()
        full = [lim for lim, used in usage if used >= lim.max_requests]
        return max(full, key=lambda lim: lim.period) if full else None

    def binding(self) -> RateLimit | None:
        if not self._binding:
            return None
        return max((w for _, w in self._binding), key=lambda lim: lim.period)

    def _draw(self, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        try:
            self.progress.update(self.snapshot(now))
        except Exception:  # a display problem must never stop the run
            logger.exception("the progress display failed")
            self.progress = None

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        report = self.report
        accepted = report.records_accepted if report else 0
        failed = report.records_failed if report else 0
        done = self.before.accepted + self.before.failed + accepted + failed
        elapsed = max(1e-9, now - self._started)
        if self.total is not None and now - self._last_plan >= 5.0:
            self._last_plan = now
            self._eta = self._plan_eta(max(0, self.total - done))
        eta = None if self._eta is None else max(0.0, self._eta - (now - self._last_plan))
        window = self.binding()
        return {
            "done": done, "total": self.total, "accepted": accepted, "failed": failed,
            "rate": (accepted + failed) / elapsed,
            "rate_limited": report.rate_limited if report else 0,
            "eta_s": eta, "binding": None if window is None else short_window(window),
        }

    def _plan_eta(self, remaining: int) -> float | None:
        if not self.scheduler.limits:
            return None
        used = {i: n for i, (_, n) in enumerate(self.scheduler.window_usage()) if n}
        plan = plan_backfill(remaining, batch_size=self.batch_size,
                             policy=self.scheduler.policy, already_sent=used)
        return plan.duration_s


def _first_bad_record(job: IngestJob) -> str | None:
    """--strict: read every input once, before anything is sent; the first bad record."""
    envelope = make_envelope(job.object_type, job.source, je_config_id=job.je_config_id,
                             je_event_key=job.je_event_key,
                             ignored_update_cfs=list(job.ignore_cf) or None).wire_fields()
    dry = DryRun(job.files, EntryEncoder(envelope), job.batch_size,
                 column_types=job.column_types, csv_delimiter=job.csv_delimiter)
    return next(dry.problems(), None)


def _result(job: IngestJob, journal: Journal, report: IngestReport, outcome: str,
            error: BaseException | None, after: Settled, resent: int, reader: Reader,
            resumed: bool, sandbox: bool, journal_error: str | None) -> JobResult:
    stopped_by = report.stopped_by
    left = None if after.total is None else max(
        0, after.total - after.accepted - after.failed)
    summary: dict[str, Any] = {
        "outcome": outcome,
        "resumed": resumed,
        "run": {
            "records_read": report.records_read,
            "accepted": report.records_accepted,
            "failed": report.records_failed,
            "unsent": report.records_unsent,
            "in_doubt": report.records_in_doubt,
            "skipped_as_settled": reader.skipped,
            "resent_after_interruption": min(resent, report.records_read),
            "possible_duplicates": report.possible_duplicates + min(resent,
                                                                    report.records_read),
            "requests": report.requests,
            "retries": report.retries,
            "rate_limited": report.rate_limited,
            "elapsed_s": round(report.elapsed_s, 3),
        },
        "job": {
            "accepted": after.accepted,
            "failed": after.failed,
            "to_retry": after.to_retry,
            "unconfirmed": after.unconfirmed,
            "total": after.total,
            "left": left,
            "complete": after.total is not None and left == 0 and not reader.broken,
            "runs": after.runs,
        },
        "journal": str(job.job),
        "sandbox": sandbox,
        "empty_files": reader.empty_files,
        "unreadable": reader.broken,
        "resume_command": _resume_command(job),
    }
    if stopped_by is not None:
        summary["stopped_by"] = str(stopped_by)
    if error is not None:
        summary["error"] = str(error)
    failures: list[dict[str, Any]] = []
    if journal_error is not None:
        summary["journal_error"] = journal_error
    else:
        try:
            journal.save_summary(summary)
            failures = journal.failures(limit=20)
        except sqlite3.Error as exc:
            summary["journal_error"] = f"the journal could not be written ({exc})"
    if outcome == "interrupted":
        code = EXIT_INTERRUPTED
    elif stopped_by is not None:
        # The server refuses every batch alike: credentials, or the envelope (object type,
        # source). A configuration problem; what was not sent is sent when the job resumes.
        code = EXIT_USAGE
        if isinstance(stopped_by, AuthenticationError):
            summary["hint"] = "the credentials or the auth URL are refused"
        else:
            summary["hint"] = "check --object-type, --source and the other envelope options"
    elif (error is not None or "journal_error" in summary or after.failed or report.records_unsent
          or report.records_in_doubt or not summary["job"]["complete"]):
        code = EXIT_FAILED
    else:
        code = EXIT_OK
    summary["exit_code"] = code
    return JobResult(code, outcome, summary, failures, report)


def _resume_command(job: IngestJob) -> str:
    """The command that resumes ``job`` (credentials left out: give them as before)."""
    words = ["pangocdp", "ingest", *[f.path for f in job.files],
             "--object-type", job.object_type, "--source", job.source, "--job", str(job.job)]
    if job.format is not None:
        words += ["--format", job.format]
    if job.init_data:
        words.append("--init-data")
    for flag, value in (("--je-config-id", job.je_config_id),
                        ("--je-event-key", job.je_event_key)):
        if value is not None:
            words += [flag, value]
    for code in job.ignore_cf:
        words += ["--ignore-cf", code]
    for name, kind in job.column_types.items():
        words += ["--column", f"{name}:{kind}"]
    if job.csv_delimiter != ",":
        words += ["--csv-delimiter", job.csv_delimiter]
    if job.dead_letter is not None:
        words += ["--dead-letter", str(job.dead_letter)]
    if job.quota != "local":
        words += ["--quota", job.quota.split("@")[-1] if "@" in job.quota else job.quota]
    c = job.credentials  # (not the secrets: the key and the group key come from where they did)
    for flag, value in (("--username", c.username), ("--auth-url", c.auth_url),
                        ("--ingest-url", c.ingest_url)):
        if value is not None and not job.sandbox:
            words += [flag, value]
    if job.sandbox:
        words.append("--sandbox")
        if job.no_limits:
            words.append("--no-limits")
    return shlex.join(words)
