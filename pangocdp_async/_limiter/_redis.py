"""Placeholder: the Redis backend is being written."""

from __future__ import annotations

from typing import Any


class RedisQuotaBackend:
    name = "redis"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError
