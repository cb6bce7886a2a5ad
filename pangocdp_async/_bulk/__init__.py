"""Bulk sending, split by job: options (``_options``), records -> batches (``_accumulator``, no
I/O), one batch -> its outcome (``_sender``), where every record ends (``_ledger``), failed
records out (``_sink``), the run that wires them and owns shutdown (``_run``), and the stream
front for services (``_stream``)."""

from ._accumulator import KeyQueue
from ._ledger import RunJournal
from ._options import BulkOptions, DeadLetter, ProgressCallback
from ._run import BulkRun
from ._stream import IngestStream

__all__ = [
           "BulkOptions",
           "BulkRun",
           "DeadLetter",
           "IngestStream",
           "KeyQueue",
           "ProgressCallback",
           "RunJournal",
]
