"""The ``pangocdp`` command line (click): ``ingest``, ``validate``, ``plan``, ``sandbox`` and
``status``. Each command parses its options, calls one function of the modules beside it, and
prints; exit codes are 0 (all accepted), 1 (some records failed or were left), 2 (usage or
configuration) and 130 (interrupted)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import __version__
from .._batching import EntryEncoder, make_envelope
from .._bulk._options import MAX_CONCURRENCY
from .._config import DOCUMENTED_LIMITS
from .._constants import (
    DEFAULT_CONCURRENCY,
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    ENV_API_KEY,
    ENV_AUTH_URL,
    ENV_GROUP_KEY,
    ENV_INGEST_URL,
    ENV_USERNAME,
    MAX_ENTRIES_PER_REQUEST,
)
from .._exceptions import RequestValidationError
from ._display import (
    ProgressBar,
    days_table,
    format_duration,
    plan_table,
    print_summary,
)
from ._dryrun import DryRun
from ._inputs import (
    FORMATS,
    ColumnType,
    InputError,
    InputFile,
    Reader,
    check_readable,
    detect_format,
)
from ._job import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Credentials,
    IngestJob,
    UsageProblem,
    run_job,
)
from ._journal import JobMismatch, Journal
from ._plan import DAY_S, describe_window, plan_backfill

__all__ = ["cli", "main"]

_COLUMN_TYPES = ("str", "int", "float", "bool", "json")
_DAILY_REQUESTS = max(DOCUMENTED_LIMITS, key=lambda lim: lim.period).max_requests


def main(argv: list[str] | None = None) -> int:
    """The console script: run the command line, return its exit code."""
    try:
        code = cli.main(args=argv, prog_name="pangocdp", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    # (without standalone mode, click returns the code of a command that raised Exit)
    return code if isinstance(code, int) else EXIT_OK


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    raise click.exceptions.Exit(code)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet or verbose == 0 else (
        logging.WARNING if verbose == 1 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("pangocdp_async")
    root.handlers = [h for h in root.handlers if isinstance(h, logging.NullHandler)]
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("pangocdp_async.cli").setLevel(
        logging.ERROR if quiet else min(level, logging.WARNING))


# --- shared options ----------------------------------------------------------------------------
def _input_options(func: Any) -> Any:
    for option in reversed([
        click.argument("files", nargs=-1, required=True, metavar="FILE..."),
        click.option("--object-type", required=True, metavar="T",
                     help="The objectType of every record (order, customer-identity, ...)."),
        click.option("--source", required=True, metavar="S", help="The source of the data."),
        click.option("--je-config-id", metavar="ID", help="jeConfigId of the envelope."),
        click.option("--je-event-key", metavar="KEY", help="jeEventKey of the envelope."),
        click.option("--ignore-cf", multiple=True, metavar="CODE",
                     help="A custom field the update must not touch (repeatable)."),
        click.option("--format", "fmt", type=click.Choice(FORMATS),
                     help="The input format, if the extension does not say "
                          "(.jsonl/.ndjson, .csv, .json; .gz for any)."),
        click.option("--column", "columns", multiple=True, metavar="NAME:TYPE",
                     help="CSV: give a column a type (str, int, float, bool, json); the "
                          "others stay strings, an empty cell of a typed column is null. "
                          "Repeatable."),
        click.option("--csv-delimiter", default=",", show_default=True, metavar="C",
                     help="CSV: the field delimiter."),
        click.option("--batch-size", type=click.IntRange(1, MAX_ENTRIES_PER_REQUEST),
                     default=MAX_ENTRIES_PER_REQUEST, show_default=True,
                     help="Records per request."),
    ]):
        func = option(func)
    return func


def _files(paths: tuple[str, ...], fmt: str | None) -> list[InputFile]:
    files = []
    if paths.count("-") > 1:
        _fail("stdin ('-') can be given once")
    for i, path in enumerate(paths):
        try:
            kind, gz = detect_format(path, fmt)
        except InputError as exc:
            _fail(str(exc))
        files.append(InputFile(i, path, kind, gz))
    return files


def _column_types(columns: tuple[str, ...]) -> dict[str, ColumnType]:
    out: dict[str, ColumnType] = {}
    for spec in columns:
        name, sep, kind = spec.rpartition(":")
        if not sep or not name or kind not in _COLUMN_TYPES:
            _fail(f"--column {spec!r}: expected NAME:TYPE with TYPE one of "
                  f"{', '.join(_COLUMN_TYPES)}")
        out[name] = kind  # type: ignore[assignment]
    return out


def _check_envelope(object_type: str, source: str, je_config_id: str | None,
                    je_event_key: str | None, ignore_cf: tuple[str, ...]) -> EntryEncoder:
    try:
        envelope = make_envelope(object_type, source, je_config_id=je_config_id,
                                 je_event_key=je_event_key,
                                 ignored_update_cfs=list(ignore_cf) or None)
    except RequestValidationError as exc:
        _fail(str(exc).replace("object_type", "--object-type").replace("source", "--source"))
    return EntryEncoder(envelope.wire_fields())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="pangocdp")
def cli() -> None:
    """Resumable, checkpointed backfills into PangoCDP's Data Ingestion API, paced so that the
    documented windows are never exceeded.

    \b
    Try it with no account:
      pangocdp ingest orders.jsonl --object-type order --source POS --sandbox
    See how long 20 million records take:
      pangocdp plan --records 20000000
    """


# --- ingest ------------------------------------------------------------------------------------
@cli.command()
@_input_options
@click.option("--init-data", is_flag=True, help="Send with initData=true (a first load).")
@click.option("--concurrency", type=click.IntRange(1, MAX_CONCURRENCY),
              default=DEFAULT_CONCURRENCY, show_default=True, help="Concurrent senders.")
@click.option("--job", "job_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The job journal (SQLite). Default: <first input's name>.pangocdp-job"
                   ".sqlite in the current directory. The same command again resumes.")
@click.option("--dead-letter", type=click.Path(dir_okay=False, path_type=Path),
              help="Append each failed record, with its file, line and error, to this JSON "
                   "Lines file.")
@click.option("--policy", type=click.Choice(["sliding", "token-bucket"]), default="sliding",
              show_default=True, help="How the quota is modeled (sliding is safe against any "
                                      "refill; token-bucket mirrors greedy refill).")
@click.option("--quota", "quota", default="local", show_default=True, metavar="SPEC",
              help="Where the API key's quota is kept, for several processes at once: 'local' "
                   "(this process only), 'sqlite:PATH' (every process on this host that names "
                   "PATH) or 'redis://HOST:PORT/DB' (every process on any host that names it).")
@click.option("--sandbox", is_flag=True,
              help="Send to a FakePangoCDP started in this process (documented windows, test "
                   "credentials): try the tool with no account.")
@click.option("--no-limits", is_flag=True,
              help="With --sandbox: lift the windows in the fake and the client (throughput "
                   "tests).")
@click.option("--strict", is_flag=True,
              help="Read every input first; stop at the first bad record, before anything is "
                   "sent. (Without it, bad records are failed, reported and dead-lettered, and "
                   "the rest is sent.)")
@click.option("--restart", is_flag=True,
              help="Start the job over: forget what the journal holds (a changed input or "
                   "setting is refused without it).")
@click.option("--shutdown-timeout", type=click.FloatRange(0, 3600),
              default=DEFAULT_SHUTDOWN_TIMEOUT_S, show_default=True,
              help="On Ctrl-C, seconds requests in flight get to finish.")
@click.option("--username", envvar=ENV_USERNAME, show_envvar=True, help="Account user name.")
@click.option("--api-key", envvar=ENV_API_KEY, show_envvar=True,
              help="API key (prefer the environment variable: flags show in process lists).")
@click.option("--group-key", envvar=ENV_GROUP_KEY, show_envvar=True, help="Group key.")
@click.option("--auth-url", envvar=ENV_AUTH_URL, show_envvar=True, help="Auth endpoint.")
@click.option("--ingest-url", envvar=ENV_INGEST_URL, show_envvar=True,
              help="Ingest endpoint.")
@click.option("--quiet", "-q", is_flag=True, help="No progress, no summary: errors only.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a machine-readable summary (JSON) on stdout; no progress bar.")
@click.option("--verbose", "-v", count=True, help="Log warnings (-v) or everything (-vv).")
def ingest(files: tuple[str, ...], object_type: str, source: str, je_config_id: str | None,
           je_event_key: str | None, ignore_cf: tuple[str, ...], fmt: str | None,
           columns: tuple[str, ...], csv_delimiter: str, batch_size: int, init_data: bool,
           concurrency: int, job_path: Path | None, dead_letter: Path | None, policy: str,
           quota: str, sandbox: bool, no_limits: bool, strict: bool, restart: bool,
           shutdown_timeout: float, username: str | None, api_key: str | None,
           group_key: str | None, auth_url: str | None, ingest_url: str | None, quiet: bool,
           as_json: bool, verbose: int) -> None:
    """Send FILE... (JSON Lines, CSV, JSON arrays; .gz too; - for stdin) as records of one
    object type, resumably.

    The job's journal records every acknowledged batch: run the same command again after a
    crash, a kill or Ctrl-C and it goes on where it stopped, sending nothing acknowledged twice.
    Bad records are reported as file:line: reason, go to the dead letter, and the rest is sent.

    \b
    Examples:
      pangocdp ingest orders.jsonl --object-type order --source POS --sandbox
      pangocdp ingest 2026-*.jsonl.gz --object-type order --source POS --dead-letter bad.jsonl
      pangocdp ingest customers.csv --object-type customer-identity --source CRM \\
          --column points:int --json
      pangocdp ingest part-1.jsonl --object-type order --source POS \\
          --quota redis://quota.internal:6379/0     (one quota for every worker)
    """
    _setup_logging(verbose, quiet)
    _check_envelope(object_type, source, je_config_id, je_event_key, ignore_cf)
    if no_limits and not sandbox:
        _fail("--no-limits needs --sandbox: against the real API the windows are the law")
    if len(csv_delimiter) != 1:
        _fail(f"--csv-delimiter must be one character, got {csv_delimiter!r}")
    inputs = _files(files, fmt)
    job = IngestJob(
        files=inputs, object_type=object_type, source=source,
        job=job_path if job_path is not None else _default_job(inputs),
        init_data=init_data, je_config_id=je_config_id, je_event_key=je_event_key,
        ignore_cf=ignore_cf, concurrency=concurrency, batch_size=batch_size,
        policy=policy,  # type: ignore[arg-type]
        quota=quota, dead_letter=dead_letter, sandbox=sandbox, no_limits=no_limits, strict=strict,
        restart=restart, column_types=_column_types(columns), csv_delimiter=csv_delimiter,
        shutdown_timeout=shutdown_timeout, format=fmt,
        credentials=Credentials(username, api_key, group_key, auth_url, ingest_url),
    )
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False)
    bar = None if quiet or as_json or not err.is_terminal else ProgressBar(err)
    try:
        result = asyncio.run(run_job(job, bar))
    except UsageProblem as exc:
        _fail(str(exc))
    except KeyboardInterrupt:  # (Ctrl-C before the run had started: nothing was sent)
        click.echo("interrupted before anything was sent", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    if "first_bad_record" in result.summary:
        click.echo(f"{result.summary['first_bad_record']}", err=True)
        click.echo("--strict: nothing was sent", err=True)
        if as_json:
            click.echo(orjson.dumps(result.summary).decode())
        raise click.exceptions.Exit(result.exit_code)
    if as_json:
        click.echo(orjson.dumps({**result.summary, "failures": result.failures},
                                default=str).decode())
    elif not quiet:
        print_summary(out, result.summary, result.failures, result.summary["resume_command"])
    elif result.exit_code not in (EXIT_OK, EXIT_INTERRUPTED):
        run = result.summary["run"]
        click.echo(f"{run['failed']:,} failed, {run['unsent']:,} not sent, "
                   f"{run['in_doubt']:,} in doubt; see pangocdp status --job {job.job}",
                   err=True)
    if result.exit_code == EXIT_INTERRUPTED and quiet:
        click.echo(f"interrupted; to resume: {result.summary['resume_command']}", err=True)
    raise click.exceptions.Exit(result.exit_code)


def _default_job(inputs: list[InputFile]) -> Path:
    """``orders.2026-01.jsonl.gz`` -> ``orders.2026-01.pangocdp-job.sqlite``."""
    first = inputs[0]
    if first.path == "-":
        return Path("stdin.pangocdp-job.sqlite")
    name = Path(first.path).name
    for suffix in (".gz", ".jsonl", ".ndjson", ".csv", ".json"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return Path(f"{name}.pangocdp-job.sqlite")


# --- validate ----------------------------------------------------------------------------------
@cli.command()
@_input_options
@click.option("--quiet", "-q", is_flag=True, help="Print only the bad records.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def validate(files: tuple[str, ...], object_type: str, source: str, je_config_id: str | None,
             je_event_key: str | None, ignore_cf: tuple[str, ...], fmt: str | None,
             columns: tuple[str, ...], csv_delimiter: str, batch_size: int, quiet: bool,
             as_json: bool) -> None:
    """The dry run: parse every record of FILE... and build every batch, with no network.

    Prints each bad record as file:line: reason (for a JSON array, the item number); the exit
    code is 1 if there is any (or a file holds no record).

    \b
    Example:
      pangocdp validate orders.jsonl --object-type order --source POS
    """
    encoder = _check_envelope(object_type, source, je_config_id, je_event_key, ignore_cf)
    inputs = _files(files, fmt)
    for spec in inputs:
        try:
            check_readable(spec)
        except InputError as exc:
            _fail(str(exc))
    problems, records, batches, reader = _validate(inputs, encoder, batch_size,
                                                   _column_types(columns), csv_delimiter,
                                                   emit=None if as_json else click.echo)
    problems += [f"{name}: empty file, no records" for name in reader.empty_files]
    if not as_json:
        for name in reader.empty_files:
            click.echo(f"{name}: empty file, no records")
    bad = len(problems)
    if as_json:
        click.echo(orjson.dumps({"records": records, "batches": batches, "bad": bad,
                                 "problems": problems[:1000]}).decode())
    elif not quiet:
        click.echo(f"{records:,} records in {batches:,} batches of up to {batch_size} from "
                   f"{len(inputs)} file(s): {bad:,} problem(s)", err=bool(bad))
    raise click.exceptions.Exit(EXIT_FAILED if bad else EXIT_OK)


def _validate(inputs: list[InputFile], encoder: EntryEncoder, batch_size: int,
              column_types: dict[str, ColumnType], csv_delimiter: str,
              emit: Any) -> tuple[list[str], int, int, Reader]:
    dry = DryRun(inputs, encoder, batch_size, column_types=column_types,
                 csv_delimiter=csv_delimiter)
    problems: list[str] = []
    try:
        for text in dry.problems():
            problems.append(text)
            if emit is not None:
                emit(text)
    except InputError as exc:
        _fail(str(exc))
    return problems, dry.records, dry.batches, dry.reader


# --- plan --------------------------------------------------------------------------------------
@cli.command()
@click.option("--records", type=click.IntRange(0, 10**11), required=True, metavar="N",
              help="How many records.")
@click.option("--policy", type=click.Choice(["sliding", "token-bucket"]), default="sliding",
              show_default=True, help="How the client models the quota.")
@click.option("--already-sent-today", type=click.IntRange(0), default=0, metavar="M",
              help="Records this account already sent in the last 24 hours, counted in "
                   "requests of --batch-size (taken as sent just now: the worst case).")
@click.option("--batch-size", type=click.IntRange(1, MAX_ENTRIES_PER_REQUEST),
              default=MAX_ENTRIES_PER_REQUEST, show_default=True, help="Records per request.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(records: int, policy: str, already_sent_today: int, batch_size: int,
         as_json: bool) -> None:
    """How long N records take under the documented windows (50/s, 1,000/min, 5,000/5 min,
    50,000/h, 400,000/24 h), paced as the client paces them, with instant answers.

    \b
    Examples:
      pangocdp plan --records 20000000
      pangocdp plan --records 1000000 --already-sent-today 15000000 --policy token-bucket
    """
    already_requests = -(-already_sent_today // batch_size)
    result = plan_backfill(records, batch_size=batch_size,
                           policy=policy,  # type: ignore[arg-type]
                           already_sent={len(DOCUMENTED_LIMITS) - 1: already_requests})
    if already_requests > _DAILY_REQUESTS:
        click.echo(f"note: {already_sent_today:,} records is more than one day's "
                   f"{_DAILY_REQUESTS:,} requests; counted as a full day", err=True)
    if as_json:
        click.echo(orjson.dumps({
            "records": result.records, "requests": result.requests,
            "batch_size": batch_size, "policy": policy,
            "already_sent_today": already_sent_today, "duration_s": result.duration_s,
            "phases": [{"paced_by": describe_window(p.window), "start_s": p.start_s,
                        "end_s": p.end_s, "requests": p.requests} for p in result.phases],
            "requests_per_day": result.requests_per_day,
            "entries_per_day": result.entries_per_day,
        }).decode())
        return
    console = Console(highlight=False, soft_wrap=True)
    console.print(plan_table(result, already_sent_records=already_sent_today))
    console.print(days_table(result))
    days = result.duration_s / DAY_S
    console.print(f"{result.requests:,} requests; the last starts after "
                  f"{format_duration(result.duration_s)}"
                  + (f" ({days:.2f} days)" if days >= 1 else "")
                  + "; answers assumed instant, so a slow server adds its round trips.")


# --- sandbox -----------------------------------------------------------------------------------
@cli.command()
@click.option("--port", type=click.IntRange(0, 65_535), default=8750, show_default=True,
              help="The port (0: any free one).")
@click.option("--refill", type=click.Choice(["greedy", "interval"]), default="greedy",
              show_default=True, help="How the fake's Bucket4j buckets refill.")
@click.option("--no-limits", is_flag=True, help="No rate limiting at all.")
def sandbox(port: int, refill: str, no_limits: bool) -> None:
    """Run FakePangoCDP in the foreground (documented windows, test credentials) until Ctrl-C,
    printing its URLs and credentials.

    \b
    Example:
      pangocdp sandbox --port 8750
      (then, in another terminal, export the variables it prints and run pangocdp ingest)
    """
    from ..testing import FakePangoCDP

    async def serve() -> None:
        fake = FakePangoCDP(port=port, refill=refill,  # type: ignore[arg-type]
                            rate_limits=None if no_limits else DOCUMENTED_LIMITS,
                            keep_entries=False, keep_requests=False)
        # (handlers first: a Ctrl-C right after the banner must stop the server cleanly)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await fake.start()
        except OSError as exc:
            _fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}")
        try:
            click.echo(f"FakePangoCDP listening on {fake.base_url} "
                       f"({'no limits' if no_limits else 'documented windows'}, "
                       f"{refill} refill)")
            click.echo(f"  auth URL:   {fake.auth_url}")
            click.echo(f"  ingest URL: {fake.ingest_url}")
            click.echo(f"  test credentials: username {fake.username}, api key "
                       f"{fake.api_key}, group key {fake.group_key}")
            click.echo(f"  export {ENV_AUTH_URL}={fake.auth_url} "
                       f"{ENV_INGEST_URL}={fake.ingest_url} {ENV_USERNAME}={fake.username} "
                       f"{ENV_API_KEY}={fake.api_key} {ENV_GROUP_KEY}={fake.group_key}")
            click.echo("Ctrl-C to stop.")
            sys.stdout.flush()
            await stop.wait()
            click.echo(f"stopped: {fake.accepted_count:,} entries accepted in "
                       f"{sum(fake.outcomes.values()):,} requests, {fake.rate_limited} "
                       "rate-limited")
        finally:
            await fake.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(serve())


# --- status ------------------------------------------------------------------------------------
@cli.command()
@click.option("--job", "job_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True, help="The job journal.")
@click.option("--failures", "show", type=click.IntRange(0), default=20, show_default=True,
              help="How many failures to list.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(job_path: Path, show: int, as_json: bool) -> None:
    """What a job has done and what is left, with the failures and their messages.

    \b
    Example:
      pangocdp status --job orders.pangocdp-job.sqlite
    """
    if not job_path.is_file():
        _fail(f"{job_path}: no such job journal")
    try:
        journal = Journal(job_path, read_only=True)
    except JobMismatch as exc:
        _fail(str(exc))
    try:
        settings = journal.settings
        if settings is None:
            _fail(f"{job_path}: the journal holds no job yet")
        state = journal.state()
        runs = journal.runs()
        failures = journal.failures(limit=show)
        inputs = journal.inputs or []
    finally:
        journal.close()
    left = None if state.total is None else max(0, state.total - state.accepted - state.failed)
    data = {"job": str(job_path), "settings": settings, "inputs": inputs,
            "accepted": state.accepted, "failed": state.failed, "to_retry": state.to_retry,
            "unconfirmed": state.unconfirmed, "total": state.total, "left": left,
            "complete": left == 0, "runs": runs, "failures": failures}
    if as_json:
        click.echo(orjson.dumps(data).decode())
        raise click.exceptions.Exit(EXIT_OK)
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"job {job_path}: {settings['object_type']} from source "
                  f"{settings['source']}"
                  + (" (initData)" if settings.get("init_data") else ""))
    for item in inputs:
        console.print(Text(f"  input {item.get('path')}"
                           + (f" ({item['size']:,} bytes)" if "size" in item else "")))
    table = Table(show_header=False)
    table.add_row("accepted", f"{state.accepted:,}")
    table.add_row("failed", f"{state.failed:,}")
    table.add_row("failed for a reason not their own (sent again on resume)",
                  f"{state.to_retry:,}")
    table.add_row("in doubt / in flight at a stop (sent again on resume)",
                  f"{state.unconfirmed:,}")
    table.add_row("records in the inputs",
                  "not known until a run reads them all" if state.total is None
                  else f"{state.total:,}")
    table.add_row("left to send", "unknown" if left is None else f"{left:,}")
    table.add_row("runs", f"{len(runs)}")
    console.print(table)
    for run in runs:
        summary = run["summary"] or {}
        counts = summary.get("run", {})
        console.print(Text(f"  run {run['run']}: {run['outcome']}"
                           + (f", {counts.get('accepted', 0):,} accepted, "
                              f"{counts.get('failed', 0):,} failed" if counts else "")))
    if failures:
        console.print(f"failures ({state.failed + state.to_retry:,}; the first "
                      f"{len(failures)}):")
        for f in failures:
            status_text = f" (HTTP {f['status']})" if f.get("status") else ""
            console.print(Text(f"  {f['where']}: {f['message']}{status_text}"))
    console.print("complete" if left == 0 else
                  "to go on, run the same pangocdp ingest command again")
    raise click.exceptions.Exit(EXIT_OK)

