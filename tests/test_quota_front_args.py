"""SharedQuotaScheduler's arguments and its state before first use: each bad argument is refused
with an error that names it and shows the bad value, each good one is accepted and acts, and a
scheduler nobody used yet reports an empty quota and closes cleanly."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import Margin, RateLimit, SharedQuotaScheduler

from .test_quota_shared import LIMITS, _backend, _now, _run, _shared


class _NotABackend:
    """Has some of a backend's methods, not all of them."""

    def bind(self) -> None: ...
    def reserve(self) -> None: ...


def _bad(**kwargs: Any) -> dict[str, Any]:
    return kwargs


BAD_ARGUMENTS = [
    pytest.param(_bad(backend=object()), TypeError,
                 r"^backend must be a quota backend \(SQLiteQuotaBackend, RedisQuotaBackend\), "
                 r"got object$", id="backend-object"),
    pytest.param(_bad(backend=_NotABackend()), TypeError,
                 r"^backend must be a quota backend .*got _NotABackend$", id="backend-partial"),
    pytest.param(_bad(policy="fixed"), ValueError,
                 r"^policy must be 'sliding' or 'token-bucket', got 'fixed'$", id="policy"),
    pytest.param(_bad(margin=0.1), TypeError, r"^margin must be a Margin, got float$",
                 id="margin"),
    pytest.param(_bad(lease_ttl=0), ValueError,
                 r"^lease_ttl must be a finite number of seconds > 0, got 0$", id="lease_ttl-0"),
    pytest.param(_bad(lease_ttl="60"), TypeError,
                 r"^lease_ttl must be a number of seconds, got '60'$", id="lease_ttl-str"),
    pytest.param(_bad(poll_interval=0.0), ValueError,
                 r"^poll_interval must be a finite number of seconds > 0, got 0\.0$",
                 id="poll_interval-0"),
    pytest.param(_bad(max_retry_after=0), ValueError,
                 r"^max_retry_after must be a finite number of seconds > 0, got 0$",
                 id="max_retry_after-0"),
    pytest.param(_bad(retry_after_pad=-1.0), ValueError,
                 r"^retry_after_pad must be a finite number of seconds >= 0, got -1\.0$",
                 id="retry_after_pad"),
    pytest.param(_bad(count_rejected=1), TypeError,
                 r"^count_rejected must be True or False, got 1$", id="count_rejected"),
    pytest.param(_bad(on_backend_down="fail"), ValueError,
                 r"^on_backend_down must be 'wait' or 'local-share', got 'fail'$",
                 id="on_backend_down"),
    pytest.param(_bad(on_backend_down="local-share"), ValueError,
                 r"^on_backend_down='local-share' needs local_share= \(the number of processes "
                 r"sharing the quota\)$", id="local_share-missing"),
    pytest.param(_bad(on_backend_down="local-share", local_share=0), ValueError,
                 r"^local_share must be >= 1, got 0$", id="local_share-0"),
    pytest.param(_bad(local_share=2), ValueError,
                 r"^local_share= applies only with on_backend_down='local-share'$",
                 id="local_share-without-local-share"),
    pytest.param(_bad(namespace=""), ValueError, r"^namespace must be a non-empty string$",
                 id="namespace-empty"),
    pytest.param(_bad(namespace=5), ValueError, r"^namespace must be a non-empty string$",
                 id="namespace-int"),
    pytest.param(_bad(rng=42), TypeError, r"^rng must be a random\.Random, got int$", id="rng"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
def test_a_bad_argument_is_refused_naming_it(tmp_path: Path, kwargs: dict[str, Any],
                                             error: type[Exception], message: str) -> None:
    options: dict[str, Any] = {"namespace": "ns"}
    options.update(kwargs)
    backend = options.pop("backend", None) or _backend(tmp_path)
    with pytest.raises(error, match=message):
        SharedQuotaScheduler(backend, LIMITS, **options)


@pytest.mark.parametrize("kwargs", [
    {"policy": "token-bucket"},
    {"margin": Margin(absolute=0.0, relative=0.0)},
    {"on_backend_down": "local-share", "local_share": 1},
    {"retry_after_pad": 0.0, "count_rejected": True, "rng": random.Random(1)},
    {"lease_ttl": 0.5, "poll_interval": 0.001, "max_retry_after": 1},
])
def test_good_arguments_are_accepted(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    s = _shared(tmp_path, **kwargs)
    for name, value in kwargs.items():
        assert getattr(s, name if name != "rng" else "_rng") == value


def test_the_policy_given_is_the_one_the_backend_paces_by(tmp_path: Path) -> None:
    """A token bucket refills one send every period/capacity: with a bucket of 5 a second the
    sixth send waits a fifth of the widened second, not the whole of it."""

    async def main() -> float:
        s = _shared(tmp_path, policy="token-bucket")
        for _ in range(5):
            s.complete(await s.reserve())
        t0 = _now()
        s.complete(await s.reserve())
        waited = _now() - t0
        await s.close()
        return waited

    assert _run(main()) < 0.5


def test_the_margin_given_widens_the_windows(tmp_path: Path) -> None:
    """No margin: one send a second goes out every 1.0 s (the default margin makes it 1.1 s)."""

    async def main(margin: Margin | None) -> float:
        path = tmp_path / str(margin is None)
        path.mkdir()
        s = _shared(path, limits=[RateLimit(1, 1.0)], margin=margin)
        s.complete(await s.reserve())
        t0 = _now()
        s.complete(await s.reserve())
        waited = _now() - t0
        await s.close()
        return waited

    assert _run(main(Margin(absolute=0.0, relative=0.0))) == pytest.approx(1.0, abs=0.02)
    assert _run(main(None)) == pytest.approx(1.1, abs=0.02)


@pytest.mark.parametrize("count_rejected", [False, True])
def test_count_rejected_decides_whether_a_rejected_send_counts(
        tmp_path: Path, count_rejected: bool) -> None:
    async def main() -> list[int]:
        s = _shared(tmp_path, count_rejected=count_rejected)
        s.complete(await s.reserve(), rejected=True)
        assert await s.flush(timeout=60.0)
        used = [n for _, n in await s.usage()]
        await s.close()
        return used

    assert _run(main()) == [1 if count_rejected else 0]


class _Methods:
    name = "bare"

    def bind(self, *_: Any) -> None: ...
    async def reserve(self, *_: Any) -> Any: ...
    async def complete(self, *_: Any) -> Any: ...
    async def rate_limited(self, *_: Any) -> Any: ...
    async def remaining(self, *_: Any) -> Any: ...
    async def usage(self) -> Any: ...


class _NoSlots:
    """A backend built with __slots__ from the ground up: no attribute can be added."""

    __slots__ = ()
    name = "slotted"

    def bind(self, *_: Any) -> None: ...
    async def reserve(self, *_: Any) -> Any: ...
    async def complete(self, *_: Any) -> Any: ...
    async def rate_limited(self, *_: Any) -> Any: ...
    async def remaining(self, *_: Any) -> Any: ...
    async def usage(self) -> Any: ...


class _Frozen(_Methods):
    """Refuses new attributes with TypeError (as some proxies do)."""

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError(f"{type(self).__name__} is read-only")


@pytest.mark.parametrize("backend_type", [_NoSlots, _Frozen])
def test_a_backend_that_takes_no_new_attribute_is_still_served(backend_type: type[Any]) -> None:
    backend = backend_type()
    s = SharedQuotaScheduler(backend, LIMITS, namespace="ns")
    assert s.backend is backend
    assert s.backend_name == backend.name


def test_one_backend_object_per_scheduler_and_the_error_says_what_to_do(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    first = SharedQuotaScheduler(backend, LIMITS, namespace="a")
    with pytest.raises(ValueError, match=r"already serves another SharedQuotaScheduler: give "
                       r"each scheduler its own backend object \(they may open the same file or "
                       r"Redis\)$"):
        SharedQuotaScheduler(backend, LIMITS, namespace="b")
    assert first.backend is backend


def test_a_second_api_key_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    s = SharedQuotaScheduler(_backend(tmp_path), LIMITS)
    s.bind_credential("key-one")
    s.bind_credential("key-one")  # the same key again is fine
    with pytest.raises(ValueError, match=r"^this SharedQuotaScheduler already paces another API "
                       r"key's quota; give each API key its own scheduler$"):
        s.bind_credential("key-two")


def test_without_a_namespace_the_error_says_what_to_do(tmp_path: Path) -> None:
    s = SharedQuotaScheduler(_backend(tmp_path), LIMITS)

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"^SharedQuotaScheduler: pass namespace=, or give "
                           r"it to a PangoCDPClient \(which names the quota after its API key\)$"):
            await s.reserve()

    _run(main())


# --- before first use -------------------------------------------------------------------------
def test_a_new_scheduler_reports_nothing_used_and_no_wait(tmp_path: Path) -> None:
    s = _shared(tmp_path, limits=[RateLimit(5, 1.0), RateLimit(50, 60.0)])
    assert s.window_usage() == [(RateLimit(5, 1.0), 0), (RateLimit(50, 60.0), 0)]
    assert s.next_free() == 0.0
    assert (s.reservations, s.rate_limited, s.tightened, s.expired_leases,
            s.backend_errors, s.in_flight, s.waiting) == (0, 0, 0, 0, 0, 0, 0)
    assert s.backend_down_since is None


def test_a_scheduler_never_used_closes_cleanly(tmp_path: Path) -> None:
    async def main() -> bool:
        s = _shared(tmp_path)
        await s.close()
        await s.close()
        return await s.flush(timeout=0.0)

    assert _run(main())


def test_the_first_reservations_are_numbered_from_one(tmp_path: Path) -> None:
    async def main() -> list[int]:
        s = _shared(tmp_path)
        seqs = []
        for _ in range(3):
            r = await s.reserve()
            seqs.append(r.seq)
            s.complete(r)
        await s.close()
        return seqs

    assert _run(main()) == [1, 2, 3]


def test_closing_twice_on_one_loop_and_then_serving_again(tmp_path: Path) -> None:
    async def main() -> int:
        s = _shared(tmp_path)
        s.complete(await s.reserve())
        await s.close()
        await s.close()
        s.complete(await asyncio.wait_for(s.reserve(), 10.0))
        await s.close()
        return s.reservations

    assert _run(main()) == 2


def test_a_backend_without_close_is_closed_without_error() -> None:
    async def main() -> None:
        s = SharedQuotaScheduler(_Frozen(), LIMITS, namespace="ns")  # type: ignore[arg-type]
        await s.close()

    _run(main())
