"""`pangocdp plan`: its figures against values worked out by hand from the documented windows.

The client counts each window as period + 0.1 s + 100 ppm, so the spans are
L1 = 1.1001 s, L2 = 60.106 s, L3 = 300.13 s, L4 = 3600.46 s, L5 = 86408.74 s.

Sliding windows. Requests leave in bursts of 50 (the per-second window), one burst every L1;
20 bursts fill a minute, so the next waits for the minute's first to leave (L2 after it); 1,000
bursts fill an hour (at 20 a minute they take 49 minutes and 20 bursts), then wait for L4; 8,000
fill the day, then wait for L5. (The 5-minute window never binds: 5 x L2 > L3.) So burst b
starts at  (b // 8000) L5 + (b % 8000 // 1000) L4 + (b % 1000 // 20) L2 + (b % 20) L1.

Token buckets (greedy refill, all full at the start). 50 at once, then the second bucket's rate
r1 = 50/L1 until the minute bucket runs dry; from then on, sent(t) = 1000 + r2 t with
r2 = 1000/L2 (the bucket's capacity plus its refill); when the hour bucket runs dry, sent(t) =
50000 + r4 t; when the day's does, sent(t) = D + r5 t with D the day's tokens at the start.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from pangocdp_async.cli import cli

L1, L2, L3, L4, L5 = 1.1001, 60.106, 300.13, 3600.46, 86408.74
R2, R4, R5 = 1000 / L2, 50000 / L4, 400000 / L5


def burst_start(b: int) -> float:
    return (b // 8000) * L5 + (b % 8000 // 1000) * L4 + (b % 1000 // 20) * L2 + (b % 20) * L1


def plan(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(cli, ["plan", "--json", *args])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = orjson.loads(result.output)
    return data


CASES = [
    # records, policy, already sent today (records), duration by hand
    (1_000, "sliding", 0, 0.0),
    (1_000, "token-bucket", 0, 0.0),
    (1_000_000, "sliding", 0, burst_start(399)),                   # 19 L2 + 19 L1
    (1_000_000, "token-bucket", 0, (20_000 - 1_000) / R2),         # = 19 L2
    (20_000_000, "sliding", 0, burst_start(7_999)),                # 7 L4 + 49 L2 + 19 L1
    (20_000_000, "token-bucket", 0, (400_000 - 50_000) / R4),      # = 7 L4
    # 15M already sent today: 300,000 requests in the day window, leaving 100,000 until L5.
    (1_000, "sliding", 15_000_000, 0.0),
    (1_000, "token-bucket", 15_000_000, 0.0),
    (1_000_000, "sliding", 15_000_000, burst_start(399)),
    (1_000_000, "token-bucket", 15_000_000, 19 * L2),
    # 2,000 bursts today (hours 0 and 1), then 6,000 more from L5 on.
    (20_000_000, "sliding", 15_000_000, L5 + 5 * L4 + 49 * L2 + 19 * L1),
    # The day bucket holds 100,000: it runs dry (phase 2, at 99,000 / (r2 - r5) = 8,244 s),
    # then sent(t) = 100,000 + r5 t reaches 400,000 at 300,000 / r5 = 0.75 L5.
    (20_000_000, "token-bucket", 15_000_000, 0.75 * L5),
]


@pytest.mark.parametrize(("records", "policy", "already", "expected"), CASES)
def test_duration_matches_the_hand_computation(records: int, policy: str, already: int,
                                               expected: float) -> None:
    data = plan("--records", str(records), "--policy", policy,
                "--already-sent-today", str(already))
    assert data["requests"] == math.ceil(records / 50)
    assert data["duration_s"] == pytest.approx(expected, abs=1e-6)
    assert sum(data["requests_per_day"]) == data["requests"]
    assert sum(data["entries_per_day"]) == records


def test_phases_of_20_million_sliding() -> None:
    """The binding window in each phase, with its requests: 1,000 at 50/s (bursts 0 to 19),
    until the minute holds the next back after burst 19 (at 19 L1); 49,000 more until the hour
    holds the next back after burst 999; the rest under the hour."""
    data = plan("--records", "20000000")
    assert [(p["paced_by"], p["requests"]) for p in data["phases"]] == [
        ("50 per second", 1_000), ("1,000 per minute", 49_000), ("50,000 per hour", 350_000)]
    starts = [p["start_s"] for p in data["phases"]]
    assert starts == pytest.approx([0.0, burst_start(19), burst_start(999)])
    assert [p["end_s"] for p in data["phases"]] == pytest.approx(
        [burst_start(19), burst_start(999), burst_start(7_999)])
    assert data["requests_per_day"] == [400_000]
    assert data["entries_per_day"] == [20_000_000]


def test_phases_of_20_million_token_bucket() -> None:
    """The minute bucket runs dry at 950 / (r1 - r2) s; the hour's when 1,000 + r2 t = 50,000 +
    r4 t, i.e. at 49,000 / (r2 - r4) s."""
    data = plan("--records", "20000000", "--policy", "token-bucket")
    r1 = 50 / L1
    t1 = 950 / (r1 - R2)
    t2 = 49_000 / (R2 - R4)
    assert [p["paced_by"] for p in data["phases"]] == [
        "50 per second", "1,000 per minute", "50,000 per hour"]
    assert [p["start_s"] for p in data["phases"]] == pytest.approx([0.0, t1, t2])
    assert [p["requests"] for p in data["phases"]] == [
        round(50 + r1 * t1), round(R2 * (t2 - t1)),
        400_000 - round(50 + r1 * t1) - round(R2 * (t2 - t1))]


def test_already_sent_moves_requests_to_the_next_day() -> None:
    data = plan("--records", "20000000", "--already-sent-today", "15000000")
    assert data["requests_per_day"] == [100_000, 300_000]
    assert data["entries_per_day"] == [5_000_000, 15_000_000]
    assert data["phases"][-1]["paced_by"] == "400,000 per 24 hours"
    # the day holds sends back after the 100,000th request (burst 1,999), until L5
    assert data["phases"][-1]["start_s"] == pytest.approx(burst_start(1_999))
    assert data["phases"][-1]["requests"] == 300_000


def test_token_bucket_sends_two_days_of_quota_on_the_first() -> None:
    """A full day bucket plus its refill: 400,000 + 86,400 r5 requests in the first 24 h,
    then r5 x 86,400 a day."""
    data = plan("--records", "100000000", "--policy", "token-bucket")
    assert data["requests_per_day"][0] == round(400_000 + 86_400 * R5)
    assert data["requests_per_day"][1] == pytest.approx(86_400 * R5, abs=1)


def test_long_plans_repeat_the_day_exactly() -> None:
    """Days of a sliding plan are alike (8,000 bursts a day): 1 billion records end in burst
    399,999 and no day exceeds 400,000 requests."""
    data = plan("--records", "1000000000")
    assert data["duration_s"] == pytest.approx(burst_start(399_999), abs=1e-3)
    assert max(data["requests_per_day"]) == 400_000
    assert len(data["requests_per_day"]) == 50


def test_table_output_names_the_windows_and_days() -> None:
    result = CliRunner().invoke(cli, ["plan", "--records", "20000000"])
    assert result.exit_code == 0
    out = result.output
    assert "400,000 requests" in out
    assert "7 h 49 min 29 s" in out
    for name in ("50 per second", "1,000 per minute", "50,000 per hour"):
        assert name in out
    assert "20,000,000" in out


def test_batch_size_changes_the_requests() -> None:
    data = plan("--records", "1000", "--batch-size", "10")
    assert data["requests"] == 100
    # 50 at once, then 50 more one per-second window later.
    assert data["duration_s"] == pytest.approx(L1)


@pytest.mark.parametrize("args", [
    ["--records", "-1"], ["--records", "x"], [], ["--records", "5", "--policy", "leaky"],
    ["--records", "5", "--batch-size", "51"], ["--records", "5", "--already-sent-today", "-3"],
])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["plan", *args])
    assert result.exit_code == 2
