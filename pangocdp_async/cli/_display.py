"""What the terminal shows, drawn by rich: the progress bar, the summary, the plan table.

Progress goes to stderr (so that ``--json`` output on stdout stays clean), and only when stderr
is a terminal; summaries and tables go to stdout.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.table import Table
from rich.text import Text

from ._plan import Plan, describe_window

__all__ = ["ProgressBar", "format_duration", "plan_table", "print_summary"]


def format_duration(seconds: float | None) -> str:
    """``"7 h 49 min 29 s"``, ``"1.2 s"``, ``"3 d 2 h 10 min"``."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = round(seconds)
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = []
    if days:
        parts.append(f"{days} d")
    if hours or days:
        parts.append(f"{hours} h")
    parts.append(f"{minutes} min")
    if not days:
        parts.append(f"{secs} s")
    return " ".join(parts)


class _Fields(ProgressColumn):
    """records/s, accepted/failed, 429s, ETA and the binding window, from the task's fields."""

    def render(self, task: Task) -> Text:
        f = task.fields
        binding = f.get("binding") or "-"
        return Text(f"{f.get('rate', 0.0):,.0f}/s ok {f.get('accepted', 0):,} "
                    f"failed {f.get('failed', 0):,} 429s {f.get('rate_limited', 0)} "
                    f"ETA {format_duration(f.get('eta_s'))} paced by {binding}")


class ProgressBar:
    """The ``ingest`` progress bar: records done/total and the fields above."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(),
            TextColumn("{task.completed:,.0f}/{task.fields[total_text]}"), _Fields(),
            console=console, transient=False, refresh_per_second=4,
        )
        self._task: Any = None

    def start(self, total: int | None, done: int) -> None:
        self._task = self._progress.add_task(
            "ingest", total=total, completed=done,
            total_text="?" if total is None else f"{total:,}")
        self._progress.start()

    def update(self, snapshot: dict[str, Any]) -> None:
        total = snapshot["total"]
        self._progress.update(
            self._task, completed=snapshot["done"], total=total,
            total_text="?" if total is None else f"{total:,}",
            **{k: snapshot[k] for k in ("rate", "accepted", "failed", "rate_limited",
                                        "eta_s", "binding")})

    def stop(self) -> None:
        self._progress.stop()


def print_summary(console: Console, summary: dict[str, Any],
                  failures: list[dict[str, Any]], resume_command: str) -> None:
    run, job = summary["run"], summary["job"]
    table = Table(title=f"pangocdp ingest: {summary['outcome']}", show_header=True,
                  title_justify="left")
    table.add_column("records")
    table.add_column("this run", justify="right")
    table.add_column("whole job", justify="right")
    table.add_row("accepted", f"{run['accepted']:,}", f"{job['accepted']:,}")
    table.add_row("failed", f"{run['failed']:,}", f"{job['failed']:,}")
    table.add_row("not sent (sent when resumed)", f"{run['unsent']:,}", "")
    table.add_row("in doubt (sent again when resumed)", f"{run['in_doubt']:,}",
                  f"{job['unconfirmed']:,}")
    table.add_row("skipped, settled by earlier runs", f"{run['skipped_as_settled']:,}", "")
    table.add_row("left to send", "",
                  "unknown" if job["left"] is None else f"{job['left']:,}")
    console.print(table)
    elapsed = run["elapsed_s"]
    rate = (run["accepted"] + run["failed"]) / elapsed if elapsed > 0 else 0.0
    console.print(f"{run['requests']:,} requests, {run['retries']:,} retries, "
                  f"{run['rate_limited']} rate-limited (429) in {format_duration(elapsed)} "
                  f"({rate:,.0f} records/s)")
    if run["resent_after_interruption"]:
        console.print(f"re-sent {run['resent_after_interruption']:,} records that an "
                      "interrupted run had in flight (they may have arrived twice)")
    for name in summary.get("empty_files", []):
        console.print(Text(f"{name}: empty file, no records"))
    for where in summary.get("unreadable", []):
        console.print(Text(f"{where} (the rest of this input could not be read)"))
    if job.get("to_retry"):
        console.print(f"{job['to_retry']:,} records failed for a reason other than the record "
                      "(the server or the network, credentials): the next run sends them again")
    if failures:
        console.print(f"failures ({job['failed']:,}; the first {len(failures)}):")
        for f in failures:
            where = f["where"]
            status = f" (HTTP {f['status']})" if f.get("status") else ""
            console.print(Text(f"  {where}: {f['message']}{status}"))
    if "stopped_by" in summary:
        console.print(Text(f"stopped: the server refuses every batch alike: "
                           f"{summary['stopped_by']} ({summary.get('hint', '')})"))
    if "error" in summary:
        console.print(Text(f"stopped by an error: {summary['error']}"))
    if "journal_error" in summary:
        console.print(Text(summary["journal_error"]))
    console.print(f"journal: {summary['journal']}")
    if summary["outcome"] == "interrupted" or not job["complete"]:
        console.print(Text(f"to resume: {resume_command}"))


def plan_table(plan: Plan, *, already_sent_records: int = 0) -> Table:
    title = (f"{plan.records:,} records in {plan.requests:,} requests of up to "
             f"{plan.batch_size}, policy {plan.policy}: {format_duration(plan.duration_s)}")
    if already_sent_records:
        title += f" (after {already_sent_records:,} records already sent today)"
    table = Table(title=title, title_justify="left")
    table.add_column("phase")
    table.add_column("paced by")
    table.add_column("from", justify="right")
    table.add_column("to", justify="right")
    table.add_column("requests", justify="right")
    for i, phase in enumerate(plan.phases, 1):
        table.add_row(str(i), describe_window(phase.window), format_duration(phase.start_s),
                      format_duration(phase.end_s), f"{phase.requests:,}")
    return table


def days_table(plan: Plan, limit: int = 6) -> Table:
    table = Table(title="per day", title_justify="left")
    table.add_column("day", justify="right")
    table.add_column("requests", justify="right")
    table.add_column("entries", justify="right")
    rows = list(zip(plan.requests_per_day, plan.entries_per_day, strict=True))
    shown = list(enumerate(rows, 1))
    if len(shown) > limit:
        shown = [*shown[: limit - 1], (-1, (0, 0)), shown[-1]]
    for day, (requests, entries) in shown:
        if day == -1:
            table.add_row("...", "...", "...")
        else:
            table.add_row(str(day), f"{requests:,}", f"{entries:,}")
    return table
