"""The dead-letter sink: failed records to a JSON Lines file or a callable.

A sink that fails never loses records: they stay in the report's ``failures``; the sink's
error goes to ``report.dead_letter_error`` and the log, and the sink is not used again in the
run. A path is opened when the run starts, so a path that cannot be written is an error before
anything is sent.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import IO

import orjson

from .._results import RecordFailure
from ._options import DeadLetter

__all__ = ["DeadLetterSink"]

logger = logging.getLogger("pangocdp_async")


class DeadLetterSink:
    """Writes each failure to ``target``; remembers the first error instead of raising it."""

    def __init__(self, target: DeadLetter | None) -> None:
        self._target = target
        self._file: IO[bytes] | None = None
        self.error: BaseException | None = None
        if target is not None and not callable(target):
            # Opened now: a directory that does not exist fails the call, not a record later.
            self._file = Path(target).open("ab")  # noqa: SIM115 -- closed in close()

    async def write(self, failure: RecordFailure) -> None:
        if self._target is None or self.error is not None:
            return
        try:
            if self._file is not None:
                self._file.write(orjson.dumps(failure.to_json(), default=repr,
                                              option=orjson.OPT_APPEND_NEWLINE))
                self._file.flush()
            elif callable(self._target):
                result = self._target(failure)
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:  # a broken sink must not lose records or stop the run
            self.error = exc
            logger.warning(
                "the dead-letter sink failed (%s: %s); failed records stay in the report's "
                "failures and are no longer written to it", type(exc).__name__, exc,
            )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
