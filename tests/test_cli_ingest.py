"""`pangocdp ingest` and `pangocdp status` through the real entry point, against a FakePangoCDP
served from another thread (or the built-in sandbox).

The invariant checked after every exit path: each record of the input is accepted (in the
journal and at the server), failed (in the journal, with its file:line and reason, and in the
dead letter), or not settled (so the next run reads it again); after a final resume every good
record is at the server, and nothing the journal had acknowledged was sent twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from pangocdp_async.cli import cli
from pangocdp_async.cli._journal import Journal
from pangocdp_async.testing import FakeRequest, sample_orders

from .conftest import ThreadedFake

Fakes = Callable[..., ThreadedFake]


def orders_file(path: Path, n: int, *, bad_lines: dict[int, bytes] | None = None) -> list[str]:
    """``n`` orders as JSON Lines, with ``bad_lines`` (1-based line -> bytes) put in; returns
    the orderIds of the good records."""
    lines = [orjson.dumps(r) for r in sample_orders(n)]
    ids = [r["orderId"] for r in sample_orders(n)]
    for line_no, data in sorted((bad_lines or {}).items()):
        lines.insert(line_no - 1, data)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return ids


def ingest(args: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> Result:
    return CliRunner().invoke(cli, ["ingest", *args], env=env, **kwargs)


def status(job: Path) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["status", "--job", str(job), "--json", "--failures",
                                      "1000"])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = orjson.loads(result.output)
    return data


def base_args(path: Path, job: Path, *extra: str) -> list[str]:
    return [str(path), "--object-type", "order", "--source", "POS", "--job", str(job), *extra]


def accepted_ids(server: ThreadedFake) -> list[str]:
    return [str(e["orderId"]) for e in server.call(lambda: list(server.fake.accepted))]


def settled_keys(job: Path) -> tuple[set[tuple[int, int]], set[tuple[int, int]]]:
    """(file index, line) of every record the journal holds accepted, and failed."""
    db = sqlite3.connect(job)
    accepted: set[tuple[int, int]] = set()
    failed: set[tuple[int, int]] = set()
    for lo, hi, outcome in db.execute("SELECT lo, hi, outcome FROM done"):
        target = accepted if outcome == "a" else failed
        target.update((k >> 40, k & ((1 << 40) - 1)) for k in range(lo, hi + 1))
    db.close()
    return accepted, failed


def check_invariant(job: Path, path: Path, server: ThreadedFake) -> None:
    """Every line the journal holds accepted is at the server; accepted and failed never
    overlap; nothing acknowledged arrived twice."""
    accepted, failed = settled_keys(job)
    assert not accepted & failed
    lines = path.read_bytes().splitlines()
    at_server = Counter(accepted_ids(server))
    for _, line in accepted:
        record = orjson.loads(lines[line - 1])
        assert at_server[record["orderId"]] >= 1, f"line {line} acknowledged, not at the server"
    for _, line in failed:
        assert line <= len(lines)


# --- the main job ------------------------------------------------------------------------------
@pytest.mark.slow
def test_sandbox_run_of_the_shipped_sample(tmp_path: Path) -> None:
    """The README's main job: the sample through the in-process sandbox, in seconds."""
    from importlib.resources import files

    sample = str(files("pangocdp_async").joinpath("examples/orders.jsonl"))
    job = tmp_path / "demo.sqlite"
    result = ingest([sample, "--object-type", "order", "--source", "POS", "--sandbox",
                     "--job", str(job), "--json"])
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output)
    assert summary["run"]["accepted"] == 3_000
    assert summary["run"]["requests"] == 60
    assert summary["run"]["rate_limited"] == 0
    assert summary["job"]["complete"] is True
    # Again: resumes, finds everything settled, sends nothing.
    again = orjson.loads(ingest([sample, "--object-type", "order", "--source", "POS",
                                 "--sandbox", "--job", str(job), "--json"]).output)
    assert again["resumed"] is True
    assert again["run"]["requests"] == 0
    assert again["run"]["skipped_as_settled"] == 3_000


def test_every_record_lands_once_and_the_job_is_complete(tmp_path: Path, threaded_fake: Fakes
                                                         ) -> None:
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    ids = orders_file(path, 230)
    result = ingest(base_args(path, job, "--batch-size", "20"), env=server.env())
    assert result.exit_code == 0, result.output
    assert sorted(accepted_ids(server)) == sorted(ids)
    assert "accepted" in result.output
    assert "230" in result.output
    state = status(job)
    assert (state["accepted"], state["failed"], state["left"], state["complete"]) == (
        230, 0, 0, True)
    check_invariant(job, path, server)


# --- resume ------------------------------------------------------------------------------------
def interrupt_after(requests: int) -> Callable[[FakeRequest], None]:
    """An on_request hook that presses Ctrl-C (SIGINT to this process) after ``requests``
    accepted requests."""
    seen = [0]

    def hook(request: FakeRequest) -> None:
        if request.outcome == "accepted":
            seen[0] += 1
            if seen[0] == requests:
                os.kill(os.getpid(), signal.SIGINT)

    return hook


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path: Path,
                                                           threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None, latency_s=0.005,
                           on_request=interrupt_after(5))
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    ids = orders_file(path, 200)
    args = base_args(path, job, "--batch-size", "5", "--concurrency", "1")
    first = ingest(args, env=server.env())
    assert first.exit_code == 130, first.output
    assert "interrupted" in first.output
    assert "to resume: pangocdp ingest" in first.output
    state = status(job)
    assert 25 <= state["accepted"] < 200
    assert state["unconfirmed"] == 0  # the request in flight finished within the timeout
    check_invariant(job, path, server)
    before = state["accepted"]

    server.fake.on_request = None
    second = ingest([*args, "--json"], env=server.env())
    assert second.exit_code == 0, second.output
    summary = orjson.loads(second.output)
    assert summary["resumed"] is True
    assert summary["run"]["skipped_as_settled"] == before
    assert summary["run"]["accepted"] == 200 - before
    assert summary["run"]["resent_after_interruption"] == 0
    counts = Counter(accepted_ids(server))
    assert sorted(counts) == sorted(ids)
    assert max(counts.values()) == 1  # nothing acknowledged was sent twice
    check_invariant(job, path, server)


def test_a_changed_input_is_refused_unless_restart(tmp_path: Path, threaded_fake: Fakes
                                                   ) -> None:
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 30)
    assert ingest(base_args(path, job), env=server.env()).exit_code == 0
    with path.open("ab") as f:
        f.write(b'{"orderId": "LATE-1"}\n')
    refused = ingest(base_args(path, job), env=server.env())
    assert refused.exit_code == 2
    assert "holds another job" in refused.output
    assert "orders.jsonl changed (size" in refused.output
    assert "--restart" in refused.output
    assert len(accepted_ids(server)) == 30  # nothing sent
    restarted = ingest(base_args(path, job, "--restart"), env=server.env())
    assert restarted.exit_code == 0, restarted.output
    assert len(accepted_ids(server)) == 30 + 31


def test_changed_settings_are_refused(tmp_path: Path, threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 10)
    assert ingest(base_args(path, job), env=server.env()).exit_code == 0
    other = [str(path), "--object-type", "order", "--source", "WEB", "--job", str(job)]
    result = ingest(other, env=server.env())
    assert result.exit_code == 2
    assert "source was 'POS', now 'WEB'" in result.output
    # What may change between runs: concurrency, batch size, policy.
    same = ingest(base_args(path, job, "--batch-size", "7", "--concurrency", "3",
                            "--policy", "token-bucket"), env=server.env())
    assert same.exit_code == 0, same.output


def test_a_journal_that_is_not_one_is_refused(tmp_path: Path) -> None:
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 1)
    job.write_bytes(b"this is not a database" * 100)
    result = ingest(base_args(path, job, "--sandbox"))
    assert result.exit_code == 2
    assert "not a pangocdp job journal" in result.output


# --- bad records and failures ------------------------------------------------------------------
def test_bad_records_are_dead_lettered_and_the_rest_is_sent(tmp_path: Path,
                                                            threaded_fake: Fakes) -> None:
    def refuse(entry: dict[str, Any]) -> str | None:
        return "Missing customerEmail" if entry["orderId"] == "ORD-0000007" else None

    server = threaded_fake(rate_limits=None, reject_entry=refuse)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    dead = tmp_path / "dead.jsonl"
    ids = orders_file(path, 40, bad_lines={3: b"{not json", 20: b"[1, 2, 3]"})
    result = ingest(base_args(path, job, "--dead-letter", str(dead), "--batch-size", "10"),
                    env=server.env())
    assert result.exit_code == 1, result.output
    assert sorted(accepted_ids(server)) == sorted(i for i in ids if i != "ORD-0000007")
    letters = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    by_line = {d["line"]: d for d in letters}
    assert set(by_line) == {3, 20, 8}  # ORD-0000007 is on line 8 (after the bad line 3)
    assert by_line[3]["error"] == "bad input"
    assert by_line[3]["message"].startswith("not valid JSON")
    assert by_line[3]["record"] == "{not json"
    assert by_line[20]["message"] == "a record must be a JSON object, got an array"
    assert by_line[8]["status"] == 400
    assert "Missing customerEmail" in by_line[8]["message"]
    assert by_line[8]["record"]["orderId"] == "ORD-0000007"
    assert all(d["file"] == str(path) for d in letters)
    # the summary lists them as file:line: reason
    assert f"{path}:3: not valid JSON" in result.output
    assert f"{path}:8: " in result.output
    state = status(job)
    assert (state["accepted"], state["failed"], state["left"]) == (39, 3, 0)
    assert [f["where"] for f in state["failures"]] == [f"{path}:3", f"{path}:8", f"{path}:20"]
    check_invariant(job, path, server)
    # A resume does not send the failed records again.
    again = orjson.loads(ingest([*base_args(path, job), "--json"], env=server.env()).output)
    assert again["run"]["requests"] == 0
    assert again["exit_code"] == 1  # the job still has failures


def test_strict_stops_at_the_first_bad_record_before_sending(tmp_path: Path,
                                                             threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 60, bad_lines={45: b'{"orderId": NaN}', 50: b"oops"})
    result = ingest(base_args(path, job, "--strict"), env=server.env())
    assert result.exit_code == 1
    assert f"{path}:45: not valid JSON: NaN" in result.output
    assert "oops" not in result.output
    assert ":50:" not in result.output
    assert "nothing was sent" in result.output
    assert server.call(lambda: len(server.fake.requests)) == 0


def test_the_server_refusing_every_batch_is_a_configuration_error(tmp_path: Path,
                                                                   threaded_fake: Fakes
                                                                   ) -> None:
    server = threaded_fake(rate_limits=None, reject_entry=lambda e: "objectType is not allowed",
                           name_rejected_index=False)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 400)
    result = ingest(base_args(path, job, "--json", "--concurrency", "1"), env=server.env())
    assert result.exit_code == 2, result.output
    summary = orjson.loads(result.output)
    assert "objectType is not allowed" in summary["stopped_by"]
    # Three batches refused whole stop the run: of each, the two entries tried alone are
    # failed, the other 48 left unsent (for a resume once the cause is fixed); the rest unread.
    assert (summary["run"]["records_read"], summary["run"]["failed"],
            summary["run"]["unsent"]) == (150, 6, 144)
    assert summary["job"]["unconfirmed"] == 0  # nothing in flight: the rest was never sent
    check_invariant(job, path, server)
    # The entries tried alone were refused for the envelope, not for themselves: not settled.
    assert (summary["job"]["failed"], summary["job"]["to_retry"]) == (0, 6)
    server.fake.reject_entry = None
    fixed = ingest(base_args(path, job, "--json"), env=server.env())
    summary = orjson.loads(fixed.output)
    assert (summary["job"]["accepted"], summary["job"]["failed"]) == (400, 0)
    assert fixed.exit_code == 0
    assert len(set(accepted_ids(server))) == len(accepted_ids(server)) == 400


def test_a_journal_that_cannot_be_written_stops_the_run(tmp_path: Path, threaded_fake: Fakes,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Disk full (or the file gone): the run stops rather than send what it cannot record."""
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    ids = orders_file(path, 100)
    real = Journal.finished
    calls = [0]

    def failing(self: Journal, batch: Any) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise sqlite3.OperationalError("database or disk is full")
        real(self, batch)

    monkeypatch.setattr(Journal, "finished", failing)
    result = ingest(base_args(path, job, "--batch-size", "10", "--concurrency", "1", "--json"),
                    env=server.env())
    assert result.exit_code == 1, result.output
    summary = orjson.loads(result.output)
    assert "disk is full" in summary["error"]
    check_invariant(job, path, server)
    monkeypatch.setattr(Journal, "finished", real)
    again = ingest(base_args(path, job, "--json"), env=server.env())
    assert again.exit_code == 0, again.output
    counts = Counter(accepted_ids(server))
    assert sorted(counts) == sorted(ids)
    # the batch whose acknowledgment could not be written is the only one sent twice
    assert sum(counts.values()) - len(ids) <= 10


# --- credentials and secrets -------------------------------------------------------------------
API_KEY, GROUP_KEY = "sekret-API-1234567", "sekret-GRP-7654321"


def test_secrets_never_appear_in_output_json_errors_or_the_journal(tmp_path: Path,
                                                                   threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None, api_key=API_KEY, group_key=GROUP_KEY)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 20, bad_lines={2: b"nope"})
    flags = ["--api-key", API_KEY, "--group-key", GROUP_KEY, "--username", "demo",
             "--auth-url", server.fake.auth_url, "--ingest-url", server.fake.ingest_url]
    outputs = []
    for extra in ([], ["--json"], ["-vv"]):
        result = ingest(base_args(path, job, *flags, *extra), env={})
        outputs.append(result.output)
    wrong = ingest(base_args(path, tmp_path / "other.sqlite", *flags[2:], "--api-key",
                             API_KEY + "x", "--json", "-vv"), env={})
    assert wrong.exit_code == 2
    outputs.append(wrong.output)
    outputs.append(CliRunner().invoke(cli, ["status", "--job", str(job)]).output)
    outputs.append(CliRunner().invoke(cli, ["status", "--job", str(job), "--json"]).output)
    tokens = server.call(lambda: list(server.fake._tokens))
    assert tokens
    journal_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("*.sqlite*"))
    for secret in (API_KEY, GROUP_KEY, *tokens):
        for text in outputs:
            assert secret not in text
        assert secret.encode() not in journal_bytes


def test_refused_credentials_exit_2_and_send_nothing(tmp_path: Path, threaded_fake: Fakes
                                                     ) -> None:
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 30)
    result = ingest(base_args(path, job), env=server.env(PANGOCDP_API_KEY="wrong"))
    assert result.exit_code == 2, result.output
    assert "refuse" in result.output
    assert accepted_ids(server) == []
    assert status(job)["accepted"] == 0


def test_missing_credentials_name_the_variables(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PANGOCDP_USERNAME", "PANGOCDP_API_KEY", "PANGOCDP_GROUP_KEY"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "orders.jsonl"
    orders_file(path, 1)
    result = ingest(base_args(path, tmp_path / "job.sqlite"))
    assert result.exit_code == 2
    for text in ("--api-key (or PANGOCDP_API_KEY)", "--group-key (or PANGOCDP_GROUP_KEY)",
                 "--sandbox"):
        assert text in result.output


# --- options and exit codes --------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--no-limits"], "--no-limits needs --sandbox"),
    (["--concurrency", "0"], "--concurrency"),
    (["--batch-size", "51"], "--batch-size"),
    (["--policy", "fast"], "--policy"),
    (["--csv-delimiter", ";;"], "--csv-delimiter"),
    (["--format", "xml"], "--format"),
])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    path = tmp_path / "orders.jsonl"
    orders_file(path, 1)
    result = ingest([*base_args(path, tmp_path / "job.sqlite"), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_input_exits_2_before_anything(tmp_path: Path) -> None:
    result = ingest([str(tmp_path / "none.jsonl"), "--object-type", "order", "--source", "POS",
                     "--sandbox", "--job", str(tmp_path / "j.sqlite")])
    assert result.exit_code == 2
    assert "no such file" in result.output
    assert not (tmp_path / "j.sqlite").exists()


def test_quiet_prints_nothing_on_success(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    orders_file(path, 12)
    result = ingest(base_args(path, tmp_path / "job.sqlite", "--sandbox", "--quiet"))
    assert result.exit_code == 0
    assert result.output == ""


def test_csv_and_json_inputs_and_stdin(tmp_path: Path, threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None)
    csv = tmp_path / "c.csv"
    csv.write_text("orderId,qty\nC-1,2\nC-2,3\n")
    array = tmp_path / "a.json"
    array.write_bytes(orjson.dumps([{"orderId": "J-1"}, {"orderId": "J-2"}]))
    result = ingest([str(csv), str(array), "-", "--object-type", "order", "--source", "POS",
                     "--column", "qty:int", "--job", str(tmp_path / "job.sqlite")],
                    env=server.env(), input=b'{"orderId": "S-1"}\n')
    assert result.exit_code == 0, result.output
    entries = server.call(lambda: list(server.fake.accepted))
    assert {e["orderId"] for e in entries} == {"C-1", "C-2", "J-1", "J-2", "S-1"}
    assert [e["qty"] for e in entries if "qty" in e] == [2, 3]


def test_the_envelope_options_reach_the_server(tmp_path: Path, threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None)
    path = tmp_path / "orders.jsonl"
    orders_file(path, 3)
    result = ingest(base_args(path, tmp_path / "job.sqlite", "--init-data", "--je-config-id",
                              "cfg", "--je-event-key", "evt", "--ignore-cf", "customField01"),
                    env=server.env())
    assert result.exit_code == 0, result.output
    requests = server.call(lambda: list(server.fake.requests))
    assert [r.init_data for r in requests] == [True]
    assert requests[0].envelope == {"objectType": "order", "source": "POS", "jeConfigId": "cfg",
                                    "jeEventKey": "evt", "ignoredUpdateCfs": ["customField01"]}


def test_help_on_every_command_has_examples() -> None:
    runner = CliRunner()
    top = runner.invoke(cli, ["--help"])
    assert top.exit_code == 0
    for command in ("ingest", "validate", "plan", "sandbox", "status"):
        assert command in top.output
        result = runner.invoke(cli, [command, "--help"])
        assert result.exit_code == 0
        assert "Example" in result.output, command


def test_version() -> None:
    from pangocdp_async import __version__

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.slow
def test_python_m_runs_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "pangocdp_async", "plan", "--records", "1000",
                           "--json"], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["requests"] == 20


def test_status_of_a_missing_journal_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["status", "--job", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 2
    assert "no such job journal" in result.output


@pytest.mark.slow
def test_sandbox_command_prints_urls_and_credentials_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pangocdp_async", "sandbox", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("FakePangoCDP listening on http://127.0.0.1:")
        rest = [proc.stdout.readline() for _ in range(5)]
        text = "".join(rest)
        assert "auth URL:" in text
        assert "ingest URL:" in text
        assert "username demo, api key demo-api-key, group key demo-group-key" in text
        assert "export PANGOCDP_AUTH_URL=" in text
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "stopped: 0 entries accepted" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_an_empty_file_is_reported_and_the_rest_sent(tmp_path: Path) -> None:
    path, empty = tmp_path / "orders.jsonl", tmp_path / "empty.jsonl"
    orders_file(path, 5)
    empty.write_bytes(b"")
    result = ingest([str(empty), str(path), "--object-type", "order", "--source", "POS",
                     "--sandbox", "--job", str(tmp_path / "job.sqlite")])
    assert result.exit_code == 0, result.output
    assert f"{empty}: empty file, no records" in result.output
    summary = orjson.loads(ingest([str(empty), str(path), "--object-type", "order", "--source",
                                   "POS", "--sandbox", "--job", str(tmp_path / "job.sqlite"),
                                   "--json"]).output)
    assert summary["job"]["accepted"] == 5


def test_status_in_words(tmp_path: Path, threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 12, bad_lines={4: b"{broken"})
    assert ingest(base_args(path, job), env=server.env()).exit_code == 1
    result = CliRunner().invoke(cli, ["status", "--job", str(job)])
    assert result.exit_code == 0
    out = result.output
    assert "order from source POS" in out
    assert "accepted" in out
    assert "12" in out
    assert f"{path}:4: not valid JSON" in out
    assert "run 1: finished, 12 accepted, 1 failed" in out
    assert "complete" in out


# --- what the review found ---------------------------------------------------------------------
def test_a_sandbox_journal_never_resumes_against_a_real_server(tmp_path: Path,
                                                               threaded_fake: Fakes) -> None:
    """The target (sandbox, or account and ingest URL) is part of the job: a trial run in the
    sandbox must not make the real run skip everything."""
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 20)
    assert ingest(base_args(path, job, "--sandbox")).exit_code == 0
    refused = ingest(base_args(path, job), env=server.env())
    assert refused.exit_code == 2
    assert "target was 'sandbox'" in refused.output
    assert accepted_ids(server) == []
    other = threaded_fake(rate_limits=None)
    assert ingest(base_args(path, tmp_path / "real.sqlite"), env=server.env()).exit_code == 0
    moved = ingest(base_args(path, tmp_path / "real.sqlite"), env=other.env())
    assert moved.exit_code == 2  # another ingest URL: another target
    assert "target was" in moved.output


def test_strict_refuses_stdin(tmp_path: Path) -> None:
    result = ingest(["-", "--object-type", "order", "--source", "POS", "--strict", "--sandbox",
                     "--job", str(tmp_path / "job.sqlite")], input=b'{"orderId": "1"}\n')
    assert result.exit_code == 2
    assert "stdin or a pipe can be read once" in result.output


def test_the_same_file_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    orders_file(path, 3)
    result = ingest([str(path), str(tmp_path / "." / "orders.jsonl"), "--object-type", "order",
                     "--source", "POS", "--sandbox", "--job", str(tmp_path / "job.sqlite")])
    assert result.exit_code == 2
    assert "is the same file as" in result.output


def test_a_bad_csv_row_does_not_stop_the_file(tmp_path: Path, threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None)
    csv = tmp_path / "orders.csv"
    csv.write_text('orderId,note\nQ-1,a\nQ-2,"bad"x\nQ-3,b\nQ-4,"' + "z" * 200_000 + '"\n')
    result = ingest([str(csv), "--object-type", "order", "--source", "POS", "--json",
                     "--job", str(tmp_path / "job.sqlite")], env=server.env())
    assert result.exit_code == 1, result.output
    assert sorted(accepted_ids(server)) == ["Q-1", "Q-3", "Q-4"]  # a 200 KB field is fine
    summary = orjson.loads(result.output)
    assert [f["where"] for f in summary["failures"]] == [f"{csv}:3"]
    assert summary["job"]["complete"] is True


def test_an_array_that_breaks_leaves_the_job_incomplete(tmp_path: Path,
                                                        threaded_fake: Fakes) -> None:
    """Past a syntax error a JSON array cannot be read: what came before is sent, and the job
    says it is not complete (exit 1) rather than claim the input was all read."""
    server = threaded_fake(rate_limits=None)
    array = tmp_path / "orders.json"
    array.write_bytes(b'\xef\xbb\xbf[{"orderId": "J-1"}, {"orderId": "J-2"}, {"orderId": NaN},'
                      b' {"orderId": "J-4"}]')
    result = ingest([str(array), "--object-type", "order", "--source", "POS", "--json",
                     "--job", str(tmp_path / "job.sqlite")], env=server.env())
    assert result.exit_code == 1, result.output
    assert sorted(accepted_ids(server)) == ["J-1", "J-2"]  # (the BOM is skipped)
    summary = orjson.loads(result.output)
    assert summary["job"]["complete"] is False
    assert summary["unreadable"][0].startswith(f"{array}:item 3: not a valid JSON array")


def test_failures_that_are_not_the_records_are_sent_again(tmp_path: Path,
                                                          threaded_fake: Fakes) -> None:
    """Refused credentials (or an outage) fail the batch under way, but do not settle its
    records: once the cause is fixed, the same command sends them."""
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    ids = orders_file(path, 40)
    dead = tmp_path / "dead.jsonl"
    first = ingest(base_args(path, job, "--json", "--batch-size", "10", "--dead-letter",
                             str(dead)), env=server.env(PANGOCDP_API_KEY="wrong"))
    assert first.exit_code == 2
    summary = orjson.loads(first.output)
    assert summary["job"]["failed"] == 0
    assert summary["job"]["to_retry"] == summary["run"]["failed"] > 0
    letters = [orjson.loads(line) for line in dead.read_bytes().splitlines()]
    assert letters
    assert all(letter["sent_again_on_resume"] for letter in letters)
    second = ingest(base_args(path, job, "--json"), env=server.env())
    assert second.exit_code == 0, second.output
    assert orjson.loads(second.output)["job"]["to_retry"] == 0
    assert sorted(accepted_ids(server)) == sorted(ids)


def test_two_runs_of_one_job_cannot_overlap(tmp_path: Path) -> None:
    import fcntl

    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 3)
    with open(f"{job}-lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("4242")
        held.flush()
        result = ingest(base_args(path, job, "--sandbox"))
    assert result.exit_code == 2
    assert "another pangocdp run (pid 4242)" in result.output
    assert ingest(base_args(path, job, "--sandbox")).exit_code == 0  # released


def test_the_resume_command_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data.txt"
    orders_file(data, 3)
    job, dead = tmp_path / "j.sqlite", tmp_path / "dead.jsonl"
    result = ingest([str(data), "--format", "jsonl", "--object-type", "order", "--source",
                     "POS", "--sandbox", "--job", str(job), "--dead-letter", str(dead),
                     "--json"])
    command = orjson.loads(result.output)["resume_command"]
    assert "--format jsonl" in command
    assert f"--dead-letter {dead}" in command
    import shlex

    again = ingest([*shlex.split(command)[2:], "--json"])
    assert again.exit_code == 0, again.output
    assert orjson.loads(again.output)["run"]["skipped_as_settled"] == 3


def test_a_touched_input_resumes(tmp_path: Path) -> None:
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 3)
    assert ingest(base_args(path, job, "--sandbox")).exit_code == 0
    os.utime(path, (1_000_000, 1_000_000))
    again = ingest(base_args(path, job, "--sandbox", "--json"))
    assert again.exit_code == 0, again.output
    assert orjson.loads(again.stdout)["run"]["skipped_as_settled"] == 3
    assert "was modified since the job started" in again.stderr


def test_the_default_journal_is_named_after_the_whole_input_name(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.chdir(tmp_path)
    for month in ("01", "02"):
        path = tmp_path / f"orders.2026-{month}.jsonl.gz"
        import gzip

        path.write_bytes(gzip.compress(b'{"orderId": "%s"}\n' % month.encode()))
        result = ingest([str(path), "--object-type", "order", "--source", "POS", "--sandbox"])
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"orders.2026-{month}.pangocdp-job.sqlite").exists()


def test_status_leaves_a_foreign_database_alone(tmp_path: Path) -> None:
    other = tmp_path / "app.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE users (id INTEGER)")
    db.commit()
    db.close()
    before = other.read_bytes()
    for command in (["status", "--job", str(other)],
                    ["ingest", str(other), "--object-type", "o", "--source", "s", "--format",
                     "jsonl", "--sandbox", "--job", str(other)]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2
        assert "not a pangocdp job journal" in result.output
    assert other.read_bytes() == before


def test_a_journal_in_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    orders_file(path, 1)
    result = ingest(base_args(path, tmp_path / "nope" / "job.sqlite", "--sandbox"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_an_outage_stops_the_run_instead_of_burning_the_input(
        tmp_path: Path, threaded_fake: Fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers 503 to everything: after 5 batches failed in a row the run stops
    (exit 1), having tried 5 batches, not the whole input; the next run sends them all."""
    import pangocdp_async._client as client_module
    from pangocdp_async import RetryPolicy

    monkeypatch.setattr(client_module, "RetryPolicy", lambda: RetryPolicy(max_attempts=1))
    server = threaded_fake(rate_limits=None, error_rate=1.0)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    ids = orders_file(path, 500)
    first = ingest(base_args(path, job, "--json", "--batch-size", "10", "--concurrency", "1"),
                   env=server.env())
    assert first.exit_code == 1, first.output
    summary = orjson.loads(first.output)
    assert "5 batches in a row failed" in summary["error"]
    assert summary["run"]["failed"] == 50
    assert summary["job"]["to_retry"] == 50
    assert summary["job"]["failed"] == 0
    server.fake.error_rate = 0.0
    second = ingest(base_args(path, job, "--json"), env=server.env())
    assert second.exit_code == 0, second.output
    assert sorted(accepted_ids(server)) == sorted(ids)


def test_a_dispatch_the_journal_cannot_write_is_not_sent(
        tmp_path: Path, threaded_fake: Fakes, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The journal refuses the write before a request: that request is not made (its batch is
    unsent, not in doubt), the quota slot it took is given back, every sender's crash is
    reported once, and a resume sends everything once."""
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    ids = orders_file(path, 300)
    real = Journal.dispatched
    calls = [0]

    def failing(self: Journal, batch: Any, sender: int) -> None:
        calls[0] += 1
        if calls[0] >= 4:
            self.error = sqlite3.OperationalError("disk I/O error")
        real(self, batch, sender)

    monkeypatch.setattr(Journal, "dispatched", failing)
    result = ingest(base_args(path, job, "--batch-size", "10", "--concurrency", "4", "--json"),
                    env=server.env())
    assert result.exit_code == 1, result.output
    summary = orjson.loads(result.output)
    assert summary["error"].startswith(f"cannot write the job journal {job}: disk I/O error")
    assert summary["run"]["in_doubt"] == 0
    assert summary["run"]["unsent"] >= 10
    assert len(accepted_ids(server)) == 30  # the three dispatches that were written
    assert "never retrieved" not in caplog.text
    monkeypatch.setattr(Journal, "dispatched", real)
    again = ingest(base_args(path, job, "--json"), env=server.env())
    assert again.exit_code == 0, again.output
    counts = Counter(accepted_ids(server))
    assert sorted(counts) == sorted(ids)
    assert max(counts.values()) == 1


def test_a_truncated_gzip_sends_what_it_holds_and_leaves_the_job_incomplete(
        tmp_path: Path, threaded_fake: Fakes) -> None:
    import gzip

    server = threaded_fake(rate_limits=None)
    path = tmp_path / "orders.jsonl.gz"
    body = b"".join(orjson.dumps(r) + b"\n" for r in sample_orders(400))
    packed = gzip.compress(body)
    path.write_bytes(packed[: len(packed) - 30])
    result = ingest([str(path), "--object-type", "order", "--source", "POS", "--json",
                     "--job", str(tmp_path / "job.sqlite")], env=server.env())
    assert result.exit_code == 1, result.output
    summary = orjson.loads(result.output)
    assert summary["job"]["complete"] is False
    assert "compressed file is truncated" in summary["unreadable"][0]
    assert 300 < len(accepted_ids(server)) < 400  # what came before the cut was sent


# --- what the second review found --------------------------------------------------------------
def test_a_link_to_the_journal_takes_the_same_lock(tmp_path: Path) -> None:
    import fcntl

    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 3)
    link = tmp_path / "link.sqlite"
    link.symlink_to(job)
    with open(f"{job}-lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = ingest(base_args(path, link, "--sandbox"))
    assert result.exit_code == 2
    assert "another pangocdp run" in result.output


def test_one_file_under_two_names_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    orders_file(path, 3)
    hard = tmp_path / "hard.jsonl"
    os.link(path, hard)
    result = ingest([str(path), str(hard), "--object-type", "order", "--source", "POS",
                     "--sandbox", "--job", str(tmp_path / "job.sqlite")])
    assert result.exit_code == 2
    assert "is the same file as" in result.output


@pytest.mark.slow
def test_a_pipe_is_read_once_whole(tmp_path: Path, threaded_fake: Fakes) -> None:
    """A named pipe (what a process substitution is): no fingerprint or line count may read
    it before the run, and --strict refuses it."""
    import threading

    server = threaded_fake(rate_limits=None)
    fifo = tmp_path / "orders.fifo"
    os.mkfifo(fifo)
    data = b"".join(orjson.dumps(r) + b"\n" for r in sample_orders(3_000))

    def feed() -> None:
        with fifo.open("wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    result = ingest([str(fifo), "--format", "jsonl", "--object-type", "order", "--source",
                     "POS", "--json", "--job", str(tmp_path / "job.sqlite")], env=server.env())
    writer.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert len(set(accepted_ids(server))) == 3_000
    strict = ingest([str(fifo), "--format", "jsonl", "--object-type", "order", "--source",
                     "POS", "--strict", "--job", str(tmp_path / "j2.sqlite")], env=server.env())
    assert strict.exit_code == 2
    assert "can be read once" in strict.output


def test_an_unclosed_csv_quote_leaves_the_job_incomplete(tmp_path: Path) -> None:
    csv = tmp_path / "unbalanced.csv"
    csv.write_text('id,name\n1,a\n2,"b\n3,c\n4,d\n5,e\n')
    result = ingest([str(csv), "--object-type", "order", "--source", "POS", "--sandbox",
                     "--json", "--job", str(tmp_path / "job.sqlite")])
    assert result.exit_code == 1, result.output
    summary = orjson.loads(result.output)
    assert summary["job"]["complete"] is False
    assert summary["unreadable"][0].startswith(f"{csv}:3: a quoted field opened here runs")


def test_a_json_object_is_not_an_array(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_bytes(b'  {"item": {"orderId": "1"}}')
    result = ingest([str(path), "--object-type", "order", "--source", "POS", "--sandbox",
                     "--json", "--job", str(tmp_path / "job.sqlite")])
    assert result.exit_code == 1, result.output
    summary = orjson.loads(result.output)
    assert summary["run"]["accepted"] == 0
    assert summary["job"]["complete"] is False
    assert "must be an array of objects, got an object" in summary["unreadable"][0]


def test_missing_credentials_on_resume_say_so(tmp_path: Path, threaded_fake: Fakes,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    server = threaded_fake(rate_limits=None)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 3)
    assert ingest(base_args(path, job), env=server.env()).exit_code == 0
    env = server.env()
    for name in env:
        monkeypatch.delenv(name, raising=False)
    result = ingest(base_args(path, job), env={k: v for k, v in env.items()
                                               if k != "PANGOCDP_USERNAME"})
    assert result.exit_code == 2
    assert "missing credentials: --username" in result.output
    assert "--restart" not in result.output


def test_the_resume_command_keeps_the_urls_and_user(tmp_path: Path, threaded_fake: Fakes,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    server = threaded_fake(rate_limits=None)
    for name in ("PANGOCDP_AUTH_URL", "PANGOCDP_INGEST_URL", "PANGOCDP_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    path, job = tmp_path / "orders.jsonl", tmp_path / "job.sqlite"
    orders_file(path, 3)
    flags = ["--username", "demo", "--auth-url", server.fake.auth_url,
             "--ingest-url", server.fake.ingest_url]
    keys = {"PANGOCDP_API_KEY": server.fake.api_key,
            "PANGOCDP_GROUP_KEY": server.fake.group_key}
    result = ingest(base_args(path, job, *flags, "--json"), env=keys)
    assert result.exit_code == 0, result.output
    command = orjson.loads(result.output)["resume_command"]
    assert f"--ingest-url {server.fake.ingest_url}" in command
    assert server.fake.api_key not in command
    import shlex

    again = ingest([*shlex.split(command)[2:], "--json"], env=keys)
    assert again.exit_code == 0, again.output


def test_a_database_with_a_meta_table_is_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "history.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    db.execute("INSERT INTO meta VALUES ('version', '42')")
    db.commit()
    db.close()
    before = other.read_bytes()
    path = tmp_path / "orders.jsonl"
    orders_file(path, 1)
    result = ingest(base_args(path, other, "--sandbox"))
    assert result.exit_code == 2
    assert "not a pangocdp job journal" in result.output
    assert other.read_bytes() == before


def test_no_limits_lifts_the_windows_in_the_sandbox(tmp_path: Path) -> None:
    """120 requests: paced by the documented windows they need at least 2.2 s (50, then 50
    after 1.1 s, then 20 after 2.2 s); with --no-limits nothing holds them back."""
    path = tmp_path / "orders.jsonl"
    orders_file(path, 6_000)
    result = ingest(base_args(path, tmp_path / "job.sqlite", "--sandbox", "--no-limits",
                              "--json"))
    assert result.exit_code == 0, result.output
    summary = orjson.loads(result.output)
    assert summary["run"]["requests"] == 120
    assert summary["run"]["elapsed_s"] < 2.0
    assert "--no-limits" in summary["resume_command"]


# --- --quota -------------------------------------------------------------------------------------
def test_quota_spec_shares_the_quota_through_a_file(tmp_path: Path, threaded_fake: Fakes) -> None:
    server = threaded_fake(rate_limits=None)
    path, job, quota = tmp_path / "orders.jsonl", tmp_path / "job.sqlite", tmp_path / "q.sqlite"
    orders_file(path, 40)
    result = ingest(base_args(path, job, "--batch-size", "10", "--quota", f"sqlite:{quota}"),
                    env=server.env())
    assert result.exit_code == 0, result.output
    with contextlib.closing(sqlite3.connect(quota)) as db:
        (reservations,) = db.execute("SELECT reservations FROM pangocdp_quota_meta").fetchone()
    assert reservations == 4  # every request took its slot from the shared file


def test_an_unknown_quota_spec_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "orders.jsonl"
    orders_file(path, 3)
    result = ingest(base_args(path, tmp_path / "job.sqlite", "--sandbox", "--quota",
                              "memcached://u:hunter2@h"))
    assert result.exit_code == 2
    assert "unknown quota" in result.output
    assert "hunter2" not in result.output


@pytest.mark.slow
def test_two_commands_with_one_quota_file_are_never_rejected(tmp_path: Path,
                                                             threaded_fake: Fakes) -> None:
    """Two `pangocdp ingest` processes at once against one server with the documented windows
    (50 requests a second first): with --quota sqlite:PATH they pace as one (no 429) and every
    record lands once. (Each alone would send 50 in its first second: 100 together; with
    --quota local this test sees about 30 rejections.)"""
    server = threaded_fake(refill="interval")
    quota = tmp_path / "q.sqlite"
    procs = []
    ids: list[str] = []
    for i in range(2):
        path = tmp_path / f"part-{i}.jsonl"
        records = [{**r, "orderId": f"{i}-{r['orderId']}"} for r in sample_orders(70)]
        ids += [r["orderId"] for r in records]
        path.write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
        procs.append(subprocess.Popen(  # noqa: S603 -- our own interpreter and module
            [sys.executable, "-m", "pangocdp_async", "ingest",
             *base_args(path, tmp_path / f"job-{i}.sqlite", "--batch-size", "1", "--quota",
                        f"sqlite:{quota}", "--quiet")],
            env={**os.environ, **server.env()}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    assert server.fake.outcomes["rate-limited"] == 0
    assert sorted(accepted_ids(server)) == sorted(ids)
