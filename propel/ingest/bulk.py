"""Bulk import of files (CSV, JSON lines, Parquet) straight into the lake.

DuckDB reads, types and validates the file in bulk (no Python loop per row for events)
on a producer thread, while the calling thread appends the accepted rows to the lake in
chunks of ``chunk_rows``: the two overlap, since both release the GIL.

Exactly once: every chunk is one Delta commit carrying the application transaction
``import:<account>:<fingerprint of file content + options>`` with version = the number
of source rows read through the end of that chunk. A re-run of the same file reads
that version and skips every row at or before it, so it adds nothing twice, also after
a crash mid-way (crash point ``import.after_lake_commit``) and also with another chunk
size. Message ids the file does not give are ``i:<fingerprint>:<row>``: stable across
re-runs, unique per row (two identical rows are two events, as in the file).

Rows are numbered in the order the file holds them (DuckDB preserves insertion order),
1 = the first data row. Rejected rows go to the reject file with their row number and
reason; a CSV line the reader cannot split (wrong number of fields, bad quoting,
invalid UTF-8) is rejected with its file line number instead.

Typing: Parquet columns keep their types; JSON values are kept as they are (numbers,
booleans, objects); CSV fields are text, and a property column whose sample looks
numeric (or boolean) becomes a JSON number (boolean) wherever the text is one, and a
string elsewhere. Empty fields and nulls are left out of ``properties``.

This module is the entry point (:func:`import_file`); the work is done by
``bulk_spec`` (options, summary, error), ``bulk_read`` (recognising and opening the
file), ``bulk_rows`` (columns to records, reasons for rejects, the reject file),
``bulk_events`` and ``bulk_profiles`` (the two imports).
"""

from __future__ import annotations

from collections.abc import Callable

from propel.core import Propel
from propel.ingest.bulk_events import import_events
from propel.ingest.bulk_profiles import import_profiles
from propel.ingest.bulk_read import check_file, file_format
from propel.ingest.bulk_spec import ImportError_, ImportSpec, ImportSummary

CHUNK_ROWS = 1_000_000  # rows per lake commit: larger means fewer, larger files


def import_file(propel: Propel, account_id: str, spec: ImportSpec,
                on_progress: Callable[[int, int], None] | None = None,
                chunk_rows: int = CHUNK_ROWS) -> ImportSummary:
    """Import ``spec.path`` into the account; raises :class:`ImportError_` with a message
    for the user when the file or the options are wrong (nothing is written then)."""
    check_file(spec)
    fmt = file_format(spec)
    if spec.kind == "profiles":
        return import_profiles(propel, account_id, spec, fmt, on_progress)
    if spec.kind != "events":
        raise ImportError_(f"unknown import kind {spec.kind!r}: events or profiles")
    return import_events(propel, account_id, spec, fmt, on_progress, chunk_rows)
