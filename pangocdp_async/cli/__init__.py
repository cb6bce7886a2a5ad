"""The ``pangocdp`` command: resumable, checkpointed backfills from files.

``_commands`` (click: parsing, printing) drives ``_job`` (one journaled run of ``ingest_many``'s
machinery), which reads through ``_inputs`` (files -> keyed records) and checkpoints in
``_journal`` (SQLite, WAL); ``_plan`` computes schedules under the documented windows and
``_display`` draws with rich.
"""

from ._commands import cli, main

__all__ = ["cli", "main"]
