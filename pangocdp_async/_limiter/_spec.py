"""``limiter="sqlite:PATH"`` / ``"redis://HOST:PORT/DB"`` / ``"local"``: a limiter from a text
(the client's ``limiter=`` and the command's ``--quota``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .._config import DOCUMENTED_LIMITS, RateLimit
from ._interface import Limiter
from ._scheduler import Policy, QuotaScheduler
from ._shared import SharedQuotaScheduler

__all__ = ["QUOTA_SPEC_HELP", "limiter_from_spec"]

QUOTA_SPEC_HELP = ("'local' (this process only), 'sqlite:PATH' (every process on this host "
                   "that opens PATH) or 'redis://[:PASSWORD@]HOST:PORT/DB' (every process that "
                   "reaches that Redis; also rediss:// and unix://)")


def limiter_from_spec(spec: str, limits: Sequence[RateLimit] = DOCUMENTED_LIMITS, *,
                      policy: Policy = "sliding", **options: Any) -> Limiter:
    """The limiter ``spec`` names, pacing ``limits`` with ``policy``; ``options`` go to
    :class:`SharedQuotaScheduler` (``lease_ttl``, ``on_backend_down``, ``local_share``, ...)."""
    if not isinstance(spec, str):
        raise TypeError(f"a quota spec must be a string, got {type(spec).__name__}")
    text = spec.strip()
    if text == "local":
        if options:
            raise ValueError(f"options {sorted(options)} apply to a shared quota, not 'local'")
        return QuotaScheduler(limits, policy=policy)
    if text.startswith("sqlite:"):
        path = text[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("a SQLite quota needs a file: sqlite:PATH")
        from ._sqlite import SQLiteQuotaBackend
        return SharedQuotaScheduler(SQLiteQuotaBackend(path), limits, policy=policy, **options)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from ._redis import RedisQuotaBackend
        return SharedQuotaScheduler(RedisQuotaBackend(text), limits, policy=policy, **options)
    shown = text.split("@")[-1] if "@" in text else text  # never echo a password
    raise ValueError(f"unknown quota {shown!r}: use {QUOTA_SPEC_HELP}")
