"""Where every record read ends: accepted, failed, unsent or in doubt. One writer of the report.

A sender's :class:`SenderState` says which of its batch's records are already settled (a batch
being split settles part by part) and whether a request for it may have reached the server
without an answer; the run's shutdown uses it to put each unsettled record in the right place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from .._batching import Batch
from .._exceptions import PangoCDPError
from .._results import InDoubtRecord, IngestReport, RecordFailure, UnsentRecord
from ._sink import DeadLetterSink

__all__ = ["Ledger", "RunJournal", "SenderState"]

logger = logging.getLogger("pangocdp_async")

_EMPTY = Batch()


class RunJournal(Protocol):
    """Hears, as they happen, what a checkpointing caller (the ``pangocdp`` command) must
    persist. Calls are synchronous and come from the event loop's thread.

    ``dispatched(batch, sender)`` comes just before a batch's first request is handed to the
    transport (``sender`` numbers the sender, from 0; each has one batch at a time);
    ``accepted`` and ``failed`` as records settle; ``finished(batch)`` when the sender is done
    with the batch (every record of it accepted, failed, or left unsent for a refused
    envelope). A batch dispatched but never finished was under way when the run stopped.
    With a journal, failures go to it and are not kept in ``report.failures``.
    """

    def dispatched(self, batch: Batch, sender: int) -> None: ...

    def accepted(self, positions: list[int]) -> None: ...

    def failed(self, failures: list[RecordFailure]) -> None: ...

    def finished(self, batch: Batch) -> None: ...


class SenderState:
    """One sender's batch under way. Also the client's send tracker: ``started`` when a request
    is handed to the transport, ``finished(answered)`` when it returns or fails."""

    __slots__ = ("announced", "batch", "doubt", "in_flight", "index", "isolating", "journal",
                 "posts", "settled")

    def __init__(self, journal: RunJournal | None = None, index: int = 0) -> None:
        self.batch = _EMPTY
        self.settled: set[int] = set()
        self.in_flight = False
        self.doubt = False  # an attempt may have reached the server with no answer
        self.isolating = False
        self.posts = 0  # requests handed to the transport, ever
        self.journal = journal
        self.index = index  # the sender's number in its run
        self.announced = False  # the journal heard of this batch's first request

    def begin(self, batch: Batch) -> None:
        self.batch = batch
        self.settled.clear()
        self.doubt = False
        self.announced = False

    def end(self) -> None:
        self.batch = _EMPTY

    def started(self) -> None:
        if not self.announced and self.journal is not None:
            # (first: if the journal cannot write, nothing is sent and the batch is unsent)
            self.journal.dispatched(self.batch, self.index)
            self.announced = True
        self.in_flight = True
        self.posts += 1

    def finished(self, answered: bool) -> None:
        self.in_flight = False
        if not answered:
            self.doubt = True

    @property
    def uncertain(self) -> bool:
        """Whether a request for the unsettled records may have reached the server."""
        return self.in_flight or self.doubt

    def unsettled(self) -> Batch:
        return self.unsettled_of(self.batch)

    def unsettled_of(self, batch: Batch) -> Batch:
        """The records of ``batch`` not yet accepted, failed or in doubt."""
        if not self.settled:
            return batch
        keep = [i for i, pos in enumerate(batch.positions) if pos not in self.settled]
        return batch.select(keep)


class Ledger:
    """Puts records in the report (and failures in the dead-letter sink and the journal)."""

    __slots__ = ("journal", "report", "sink")

    def __init__(self, report: IngestReport, sink: DeadLetterSink,
                 journal: RunJournal | None = None) -> None:
        self.report = report
        self.sink = sink
        self.journal = journal

    def accepted(self, batch: Batch, state: SenderState, *, maybe_duplicate: bool) -> None:
        if self.journal is not None:
            self.journal.accepted(batch.positions)
        self.report.records_accepted += len(batch)
        if maybe_duplicate:
            self.report.possible_duplicates += len(batch)
        if state.isolating:  # only a batch being split settles part by part
            state.settled.update(batch.positions)

    async def failed(self, positions: list[int], records: list[Any], error: PangoCDPError,
                     state: SenderState | None = None) -> None:
        """Records that failed for one error."""
        await self._record([RecordFailure(pos, record, error)
                            for pos, record in zip(positions, records, strict=True)], state)

    async def failed_each(self, refused: Iterable[tuple[int, Any, PangoCDPError]]) -> None:
        """Records the client refused, each with its own error."""
        await self._record([RecordFailure(pos, record, error) for pos, record, error in refused],
                           None)

    async def _record(self, failures: list[RecordFailure], state: SenderState | None) -> None:
        if not failures:
            return
        report = self.report
        report.records_failed += len(failures)
        if state is not None:
            state.settled.update(f.position for f in failures)
        if self.journal is not None:
            self.journal.failed(failures)  # (may raise to stop the run: the report is whole)
        else:
            report.failures.extend(failures)
        logger.warning("%d record(s) failed (first at position %d): %s",
                       len(failures), failures[0].position, failures[0].error)
        for failure in failures:  # after they are in the report: a cancelled write loses none
            await self.sink.write(failure)
        report.dead_letter_error = self.sink.error

    def in_doubt(self, batch: Batch, error: PangoCDPError | None = None,
                 state: SenderState | None = None) -> None:
        self.report.in_doubt.extend(
            InDoubtRecord(pos, entry, error)
            for pos, entry in zip(batch.positions, batch.entries, strict=True))
        if state is not None:
            state.settled.update(batch.positions)
        if batch.positions:
            logger.warning("%d record(s) in doubt (first at position %d): %s", len(batch),
                           batch.positions[0], error or "no answer before the run stopped")

    def unsent(self, batches: Iterable[Batch]) -> None:
        unsent = self.report.unsent
        for batch in batches:
            unsent.extend(UnsentRecord(pos, entry)
                          for pos, entry in zip(batch.positions, batch.entries, strict=True))

    def stopped(self, state: SenderState) -> None:
        """A sender stopped (cancelled or crashed) with a batch under way: its unsettled
        records are in doubt if a request for them may have arrived, else unsent."""
        rest = state.unsettled()
        if rest.entries:
            if state.uncertain:
                self.in_doubt(rest)
            else:
                self.unsent([rest])
        state.end()
