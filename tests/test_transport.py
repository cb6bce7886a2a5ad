"""The aiohttp seam: one mapping of aiohttp's errors onto ours, and that it is complete.

aioresponses injects aiohttp's exceptions here. Its canned *responses* do not build under
aiohttp 3.14 (ClientResponse gained a required argument), so successful answers are tested
against FakePangoCDP over loopback instead (tests/test_client.py).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL as YarlURL

from pangocdp_async import APIConnectionError, APITimeoutError
from pangocdp_async._transport import AiohttpTransport, map_transport_error

URL = "https://ingest.example.invalid/x"


def _aiohttp_error_classes() -> list[type[BaseException]]:
    return [
        obj for _, obj in inspect.getmembers(aiohttp)
        if inspect.isclass(obj) and issubclass(obj, aiohttp.ClientError)
    ]


def _instance(cls: type[BaseException]) -> BaseException:
    url = YarlURL(URL)
    key = aiohttp.client_reqrep.ConnectionKey(
        "h", 443, True, True, None, None, None, None
    )
    info = aiohttp.RequestInfo(url, "POST", CIMultiDictProxy(CIMultiDict()), url)
    for args in ((), ("boom",), (info, ()), (key, OSError("boom")), (url,),
                 (b"a", b"b", "h", 443)):
        try:
            exc = cls(*args)
            str(exc)
        except (TypeError, AttributeError, ValueError):
            continue
        return exc
    raise AssertionError(f"cannot build {cls.__name__} for the test")


def test_mapping_is_complete() -> None:
    """Every aiohttp ClientError subclass, asyncio's timeout and OSError map to our tree."""
    classes = _aiohttp_error_classes()
    assert len(classes) > 15  # aiohttp has many; make sure we enumerated them
    for cls in [*classes, asyncio.TimeoutError, OSError]:
        mapped = map_transport_error(_instance(cls))
        assert isinstance(mapped, APIConnectionError), cls


def test_timeouts_and_sent_flag() -> None:
    """Timeouts become APITimeoutError; only failures to connect say nothing was sent."""
    assert isinstance(map_transport_error(asyncio.TimeoutError()), APITimeoutError)
    assert isinstance(map_transport_error(aiohttp.ServerTimeoutError()), APITimeoutError)
    connect_timeout = map_transport_error(aiohttp.ConnectionTimeoutError())
    assert isinstance(connect_timeout, APITimeoutError)
    assert connect_timeout.maybe_sent is False
    refused = map_transport_error(_instance(aiohttp.ClientConnectorError))
    assert type(refused) is APIConnectionError
    assert refused.maybe_sent is False
    assert map_transport_error(aiohttp.ServerDisconnectedError()).maybe_sent is True
    assert map_transport_error(aiohttp.ClientPayloadError("cut")).maybe_sent is True


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (aiohttp.ServerDisconnectedError(), APIConnectionError),
        (asyncio.TimeoutError(), APITimeoutError),
        (aiohttp.ClientOSError(104, "reset"), APIConnectionError),
    ],
)
async def test_transport_raises_ours(
    session: aiohttp.ClientSession, raised: BaseException, expected: type[Exception]
) -> None:
    """AiohttpTransport raises our exceptions, never aiohttp's, and hides the headers."""
    transport = AiohttpTransport(session, aiohttp.ClientTimeout(total=5))
    with aioresponses() as mocked:
        mocked.post(URL, exception=raised)
        with pytest.raises(expected) as info:
            await transport.post(URL, body=b"{}", headers={"TOKEN": "tok-SECRET"})
    assert info.value.__cause__ is None
    assert "tok-SECRET" not in str(info.value)
