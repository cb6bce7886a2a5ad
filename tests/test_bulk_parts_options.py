"""The options ingest_many and stream share: each wrong one refused with an error that names it
and shows the value; the edges of each range accepted."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from pangocdp_async import RetryPolicy
from pangocdp_async._bulk import BulkOptions

RETRY = RetryPolicy()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"retry": "x"}, TypeError, "retry must be a RetryPolicy, got str"),
    ({"init_data": "yes"}, TypeError, "init_data must be True or False, got 'yes'"),
    ({"concurrency": "8"}, TypeError, "concurrency must be an int, got '8'"),
    ({"concurrency": 0}, ValueError, "concurrency must be from 1 to 1000, got 0"),
    ({"concurrency": 1_001}, ValueError, "concurrency must be from 1 to 1000, got 1001"),
    ({"batch_size": True}, TypeError, "batch_size must be an int, got True"),
    ({"batch_size": 0}, ValueError, "batch_size must be from 1 to 50, got 0"),
    ({"batch_size": 51}, ValueError, "batch_size must be from 1 to 50, got 51"),
    ({"max_batch_bytes": "x"}, TypeError, "max_batch_bytes must be an int, got 'x'"),
    ({"max_batch_bytes": 0}, ValueError, "max_batch_bytes must be >= 1, got 0"),
    ({"max_pending": 2.5}, TypeError, "max_pending must be an int, got 2.5"),
    ({"max_pending": 0}, ValueError, "max_pending must be >= 1, got 0"),
    ({"shutdown_timeout": "x"}, TypeError,
     "shutdown_timeout must be a number of seconds, got 'x'"),
    ({"shutdown_timeout": -1}, ValueError,
     "shutdown_timeout must be a finite number of seconds >= 0, got -1"),
    ({"shutdown_timeout": math.inf}, ValueError,
     "shutdown_timeout must be a finite number of seconds >= 0, got inf"),
    ({"linger": "1"}, TypeError, "linger must be a number of seconds, got '1'"),
    ({"linger": 0}, ValueError, "linger must be a finite number of seconds > 0, got 0"),
    ({"on_progress": 3}, TypeError, "on_progress must be callable, got 3"),
    ({"dead_letter": 3}, TypeError,
     "dead_letter must be a path or a callable taking each RecordFailure, got int"),
])
def test_bad_options_are_refused_by_name(kwargs: dict[str, Any], error: type[Exception],
                                         message: str) -> None:
    """Each wrong option: the right exception type, naming the option and its value."""
    options: dict[str, Any] = {"retry": RETRY, **kwargs}
    with pytest.raises(error) as info:
        BulkOptions(**options)
    assert str(info.value) == message


@pytest.mark.parametrize("kwargs", [
    {},
    {"concurrency": 1, "batch_size": 1, "max_batch_bytes": 1, "max_pending": 1,
     "shutdown_timeout": 0, "linger": 0.001, "init_data": True},
    {"concurrency": 1_000, "batch_size": 50, "shutdown_timeout": 0.0},
    {"on_progress": print, "dead_letter": "dead.jsonl"},
    {"dead_letter": Path("dead.jsonl")},
    {"dead_letter": print},
])
def test_the_edges_of_each_range_are_accepted(kwargs: dict[str, Any]) -> None:
    """The smallest and largest values allowed, and every kind of dead letter, are taken as
    given."""
    options = BulkOptions(retry=RETRY, **kwargs)
    for name, value in kwargs.items():
        assert getattr(options, name) == value


@pytest.mark.parametrize(("kwargs", "limit"), [
    ({}, 8 * 50), ({"batch_size": 3, "concurrency": 2}, 6), ({"max_pending": 7}, 7),
])
def test_a_stream_buffers_one_batch_per_sender_unless_told(kwargs: dict[str, Any],
                                                           limit: int) -> None:
    """max_pending defaults to batch_size x concurrency."""
    assert BulkOptions(retry=RETRY, **kwargs).pending_limit == limit
