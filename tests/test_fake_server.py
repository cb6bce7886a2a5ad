"""FakePangoCDP's own behaviour: the Bucket4j model against hand-computed sequences (directly
and over loopback), validation, and fault injection."""

from __future__ import annotations

import contextlib
from typing import Any

import aiohttp
import orjson
import pytest

from pangocdp_async import PangoCDPClient, RateLimit
from pangocdp_async.testing import Bucket4jBucket, FakePangoCDP
from tests.conftest import ManualClock

TWO_WINDOWS = [RateLimit(2, 1.0), RateLimit(3, 10.0)]
Step = tuple[bool, int, str]


def _run(bucket: Bucket4jBucket, times: list[float]) -> list[Step]:
    out = []
    for t in times:
        r = bucket.try_consume(t)
        out.append((r.accepted, r.remaining, "" if r.accepted else r.retry_after_header))
    return out


# Worked by hand: tokens of (2/1 s, 3/10 s) refilling 2/s and 0.3/s, starting full.
GREEDY_TIMES = [0.0, 0.0, 0.0, 0.5, 0.5, 3.0, 3.4, 10.0]
GREEDY_EXPECTED: list[Step] = [
    (True, 1, ""),    # (2, 3) -> (1, 2); remaining is the smaller count
    (True, 0, ""),    # -> (0, 1)
    (False, 0, "0"),  # 1-s window empty, a token in 0.5 s: truncated to "0"
    (True, 0, ""),    # (1, 1.15) -> (0, 0.15)
    (False, 0, "2"),  # 10-s window needs 0.85 token / 0.3 per s = 2.83 s -> "2"
    (False, 0, "0"),  # at 3.0: (2, 0.9): 0.33 s short -> "0"
    (True, 0, ""),    # at 3.4: (2, 1.02) -> (1, 0.02)
    (True, 1, ""),    # at 10: (2, 2.0) -> (1, 1.0)
]


def test_greedy_hand_computed() -> None:
    """Greedy refill: every window in one bucket, consumed all-or-nothing."""
    assert _run(Bucket4jBucket(TWO_WINDOWS, "greedy"), GREEDY_TIMES) == GREEDY_EXPECTED


def test_interval_hand_computed() -> None:
    """Interval refill at phase 0: all tokens come back at each period boundary."""
    bucket = Bucket4jBucket(TWO_WINDOWS, "interval")
    assert _run(bucket, [0.0, 0.0, 0.5, 1.0, 1.0, 9.999, 10.0]) == [
        (True, 1, ""), (True, 0, ""),
        (False, 0, "0"),   # next 1-s boundary in 0.5 s
        (True, 0, ""),     # 1-s window refilled at 1.0; 10-s window now empty
        (False, 0, "9"),   # 10-s window refills at 10.0: 9 s away
        (False, 0, "0"),   # 1 ms away
        (True, 1, ""),
    ]


def test_interval_phase() -> None:
    """Interval refill at phase 0.3 s: boundaries at 0.3, 1.3, 2.3..."""
    bucket = Bucket4jBucket([RateLimit(2, 1.0)], "interval", phase=0.3)
    assert _run(bucket, [0.0, 0.0, 0.1, 0.3, 0.3, 1.29, 1.3]) == [
        (True, 1, ""), (True, 0, ""), (False, 0, "0"), (True, 1, ""), (True, 0, ""),
        (False, 0, "0"), (True, 1, ""),
    ]


def test_rejection_consumes_nothing() -> None:
    """A thousand rejected requests leave the bucket exactly as one would."""
    a, b = Bucket4jBucket(TWO_WINDOWS), Bucket4jBucket(TWO_WINDOWS)
    for bucket, rejections in ((a, 1), (b, 1000)):
        bucket.try_consume(0.0)
        bucket.try_consume(0.0)
        for _ in range(rejections):
            assert not bucket.try_consume(0.1).accepted
    assert a.tokens(0.7) == b.tokens(0.7) == [1, 1]


async def _post(session: aiohttp.ClientSession, url: str, token: str,
                body: dict[str, Any] | bytes, **headers: str) -> aiohttp.ClientResponse:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"Content-Type": "application/json", "TOKEN": token, "API_KEY": "demo-api-key",
            **headers}
    async with session.post(url, data=data, headers=hdrs) as resp:
        await resp.read()
        return resp


async def _token(session: aiohttp.ClientSession, fake: FakePangoCDP) -> str:
    async with session.post(fake.auth_url, json={"username": "demo", "apiKey": "demo-api-key",
                                                 "cdpGKey": "demo-group-key"}) as resp:
        body = await resp.json()
    assert body["success"] is True
    assert body["status"] == "authenticated"
    assert body["expiredAfter"] == fake.token_lifetime_s
    assert body["expiredAt"] - body["issuedAt"] == fake.token_lifetime_s * 1000
    return str(body["token"])


BODY = {"objectType": "order", "source": "POS", "entries": [{"a": 1}]}


async def test_fake_rate_limits_over_loopback(clock: ManualClock) -> None:
    """Over HTTP the fake answers the greedy sequence: 429 with the documented body and
    truncated header, X-Rate-Limit-Remaining on success."""
    async with FakePangoCDP(rate_limits=TWO_WINDOWS, clock=clock) as fake:
        async with aiohttp.ClientSession() as session:
            token = await _token(session, fake)
            start = clock.now
            seen = []
            for t in GREEDY_TIMES:
                clock.now = start + t
                async with session.post(
                    fake.ingest_url, data=orjson.dumps(BODY),
                    headers={"TOKEN": token, "API_KEY": "demo-api-key"},
                ) as resp:
                    body = await resp.json()
                    if resp.status == 200:
                        seen.append((True, int(resp.headers["X-Rate-Limit-Remaining"]), ""))
                    else:
                        assert resp.status == 429
                        assert body == {"message": "Too many requests!"}
                        seen.append(
                            (False, 0, resp.headers["X-Rate-Limit-Retry-After-Seconds"]))
    assert seen == GREEDY_EXPECTED
    assert fake.rate_limited == 3
    assert len(fake.accepted) == 5


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (BODY, {"TOKEN": "nope"}, 401, "Token is missing"),
        (BODY, {"API_KEY": "other"}, 401, "API_KEY does not match"),
        ({**BODY, "objectType": ""}, {}, 400, "Invalid value of: objectType"),
        ({**BODY, "entries": []}, {}, 400, "Invalid value of: entries"),
        ({**BODY, "entries": [{"a": 1}] * 51}, {}, 400, "Invalid value of: entries"),
        ({"objectType": "order", "entries": [{"a": 1}]}, {}, 400, "Invalid value of: source"),
        (b"{not json", {}, 400, "not valid JSON"),
    ],
)
async def test_fake_validates_requests(
    fake: FakePangoCDP, body: dict[str, Any] | bytes, headers: dict[str, str], status: int,
    message: str,
) -> None:
    """Bad tokens get 401, bad envelopes 400, in the documented error shape."""
    async with aiohttp.ClientSession() as session:
        token = await _token(session, fake)
        hdrs = {"TOKEN": token, **headers}
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with session.post(fake.ingest_url, data=data,
                                headers={"API_KEY": "demo-api-key", **hdrs}) as resp:
            answer = await resp.json()
    assert resp.status == status
    assert answer["success"] is False
    assert message in answer["message"]
    assert fake.accepted == []


@pytest.mark.parametrize(
    ("creds", "message"),
    [
        ({"username": "demo", "apiKey": "", "cdpGKey": "demo-group-key"},
         "Username and ApiKey are required"),
        ({"username": "demo", "apiKey": "demo-api-key"}, "Organization Context is not set"),
        ({"username": "x", "apiKey": "demo-api-key", "cdpGKey": "demo-group-key"},
         "Username or ApiKey is incorrect"),
    ],
)
async def test_fake_auth_errors(fake: FakePangoCDP, creds: dict[str, str], message: str) -> None:
    """The auth endpoint answers 400 with the documented shape."""
    async with aiohttp.ClientSession() as session, session.post(fake.auth_url,
                                                                json=creds) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert body["success"] is False
    assert body["message"] == message


async def test_fake_token_lifetime(clock: ManualClock) -> None:
    """Tokens expire after the configured lifetime on the fake's clock."""
    async with FakePangoCDP(rate_limits=None, token_lifetime_s=60, clock=clock) as fake:
        async with aiohttp.ClientSession() as session:
            token = await _token(session, fake)
            async with session.post(fake.ingest_url, data=orjson.dumps(BODY),
                                    headers={"TOKEN": token, "API_KEY": "demo-api-key"}) as r1:
                assert r1.status == 200
            clock.advance(60)
            async with session.post(fake.ingest_url, data=orjson.dumps(BODY),
                                    headers={"TOKEN": token, "API_KEY": "demo-api-key"}) as r2:
                assert r2.status == 401


async def test_fake_faults_by_probability() -> None:
    """error_rate and drop_rate inject faults at about the asked rate (seeded)."""
    async with FakePangoCDP(rate_limits=None, error_rate=0.3, drop_rate=0.2, seed=7) as fake:
        async with aiohttp.ClientSession() as session:
            token = await _token(session, fake)
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientError):
                    await _post(session, fake.ingest_url, token, BODY)
    outcomes = [r.outcome for r in fake.requests]
    assert len(outcomes) == 200
    assert 20 < outcomes.count("dropped") < 60
    assert 30 < outcomes.count("fault") < 80
    assert outcomes.count("accepted") == len(fake.accepted)


async def test_fake_drop_after_keeps_the_entries(fake: FakePangoCDP) -> None:
    """'drop-after' stores the entries and then cuts the connection (a possible duplicate)."""
    fake.script.extend(["drop-after", "ok"])
    async with aiohttp.ClientSession() as session:
        token = await _token(session, fake)
        with pytest.raises(aiohttp.ClientError):
            await _post(session, fake.ingest_url, token, BODY)
        await _post(session, fake.ingest_url, token, BODY)
    assert fake.accepted == [{"a": 1}, {"a": 1}]
    assert [r.outcome for r in fake.requests] == ["dropped", "accepted"]


async def test_keep_requests_off_keeps_counts_only() -> None:
    """A long-running sandbox keeps no per-request log, only the counts by outcome; the
    on_request hook still hears each request."""
    heard: list[str] = []
    async with FakePangoCDP(rate_limits=None, keep_requests=False,
                            on_request=lambda r: heard.append(r.outcome)) as fake:
        async with PangoCDPClient(**fake.client_kwargs(), rate_limits=()) as client:
            await client.ingest("order", [{"orderId": "1"}], source="POS")
            await client.ingest("order", [{"orderId": "2"}], source="POS")
    assert fake.requests == []
    assert fake.outcomes["accepted"] == 2
    assert heard == ["accepted", "accepted"]
