"""The events import: a reader thread runs the events query and hands over chunks, the
calling thread appends each chunk's accepted rows to the lake as one Delta commit carrying
the import's application transaction, skips the rows an earlier run already committed and
gives message ids to the rows the file gives none."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import (
    ColumnProperties,
    CommitProperties,
    Transaction,
    WriterProperties,
    write_deltalake,
)

from propel import faults
from propel.core import Propel
from propel.ingest import limits
from propel.ingest.bulk_read import (
    Fingerprint,
    csv_rejects,
    estimated_rows,
    import_connection,
    open_source,
    sql_rows,
)
from propel.ingest.bulk_rows import (
    EVENT_REJECTS,
    RejectFile,
    arrow_column,
    check_columns,
    check_event_mapping,
    check_ts_format,
    event_query,
)
from propel.ingest.bulk_spec import ImportError_, ImportSpec, ImportSummary, short_error
from propel.jobs.leases import LeaseUnavailable
from propel.lake.store import PARTITIONS, SCHEMA, LeaseLost, writer_lease

LEASE_WAIT_SECONDS = 120.0
# The importer writes large batches of one account: dictionaries never pay off on the
# two high-cardinality text columns, and nothing filters on properties' min/max. LZ4
# takes ~15% less CPU than ZSTD for ~40% larger files, until compaction rewrites them.
IMPORT_WRITER_PROPS = WriterProperties(
    compression="LZ4_RAW",
    column_properties={
        "properties": ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE"),
        "message_id": ColumnProperties(dictionary_enabled=False),
    },
)


# --- streaming chunks -----------------------------------------------------------------


_DONE = object()


class _Producer(threading.Thread):
    """Runs the query and hands over tables of ``chunk_rows`` rows (the last may be
    smaller). The first chunk is a quarter of that, so the first lake write starts
    early: the writer overlaps the reader from then on. (Chunk boundaries need not be
    the same on every run: commits record how many rows were read, not chunk numbers.)"""

    def __init__(self, con: duckdb.DuckDBPyConnection, query: str, chunk_rows: int) -> None:
        super().__init__(name="import-reader", daemon=True)
        self.con, self.query, self.chunk_rows = con, query, chunk_rows
        self.chunks: queue.Queue = queue.Queue(maxsize=1)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        reader = None
        try:
            reader = self.con.sql(self.query).to_arrow_reader(min(self.chunk_rows, 1 << 17))
            buffer: list[pa.RecordBatch] = []
            held = 0
            size = max(1, self.chunk_rows // 4)
            for batch in reader:
                if self.stop.is_set():
                    return
                if not batch.num_rows:
                    continue
                buffer.append(batch)
                held += batch.num_rows
                while held >= size:
                    table = pa.Table.from_batches(buffer)
                    if not self._put(table.slice(0, size)):
                        return
                    rest = table.slice(size)
                    buffer, held = rest.to_batches(), rest.num_rows
                    size = self.chunk_rows
            if held and not self._put(pa.Table.from_batches(buffer)):
                return
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            self.error = exc
        finally:
            if reader is not None:
                with contextlib.suppress(Exception):
                    reader.close()
            self._put(_DONE)

    def __iter__(self) -> Iterator[pa.Table]:
        while True:
            item = self.chunks.get()
            if item is _DONE:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def halt(self) -> None:
        self.stop.set()
        with contextlib.suppress(queue.Empty):
            self.chunks.get_nowait()
        self.join(timeout=60)


class _Constants:
    """The columns that hold one value for the whole import, built once at the chunk
    size and sliced (without copying) for smaller chunks."""

    def __init__(self, account_id: str, received_us: int) -> None:
        self.values = {"account_id": pa.scalar(account_id, pa.string()),
                       "kind": pa.scalar("event", pa.string()),
                       "source": pa.scalar("import", pa.string()),
                       "received_at": pa.scalar(received_us, pa.int64()).cast(
                           SCHEMA.field("received_at").type)}
        self.arrays: dict[str, pa.Array] = {}

    def __call__(self, name: str, n: int) -> pa.Array:
        array = self.arrays.get(name)
        if array is None or len(array) < n:
            array = self.arrays[name] = pa.repeat(self.values[name], n)
        return array.slice(0, n)


def _lake_table(constant: _Constants, good: pa.Table, ids: pa.ChunkedArray | pa.Array
                ) -> pa.Table:
    n = good.num_rows
    return pa.Table.from_arrays([
        constant("account_id", n),
        arrow_column(good, "event_date", pa.date32()),
        constant("kind", n),
        ids if ids.type == pa.string() else ids.cast(pa.string()),
        arrow_column(good, "identity", pa.string()),
        arrow_column(good, "name", pa.string()),
        arrow_column(good, "ts", SCHEMA.field("ts").type),
        constant("received_at", n),
        constant("source", n),
        arrow_column(good, "properties", pa.string()),
    ], schema=SCHEMA)


def _generated_ids(prefix: str, rows: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(rows, pa.string()), "")


def import_events(propel: Propel, account_id: str, spec: ImportSpec, fmt: str,
                  on_progress: Callable[[int, int], None] | None,
                  chunk_rows: int) -> ImportSummary:
    """Import the events of ``spec.path`` (read as ``fmt``) into the account, exactly
    once, in lake commits of ``chunk_rows`` rows."""
    if chunk_rows < 1:
        raise ImportError_("chunk_rows must be at least 1")
    check_event_mapping(spec)
    started = time.perf_counter()
    summary = ImportSummary(reject_path=spec.reject_path)
    fingerprint = Fingerprint(spec, fmt)
    fingerprint.start()
    con = import_connection()
    producer: _Producer | None = None
    rejects = RejectFile(spec.reject_path, EVENT_REJECTS, summary)
    try:
        check_ts_format(con, spec.ts_format)
        src = open_source(con, spec, fmt, lambda cols: _needed(spec, cols))
        max_ts = int(time.time()) + limits.FUTURE_TOLERANCE_SECONDS
        query = event_query(spec, src, max_ts)
        # Parquet's count is in its metadata; the DuckDB connection is the producer's
        # from here on.
        total = sql_rows(con, f"SELECT count(*) FROM {src.view}")[0][0] if fmt == "parquet" \
            else None
        producer = _Producer(con, query, chunk_rows)
        producer.start()
        digest = fingerprint.result()
        if total is None:
            total = estimated_rows(con, spec, fmt, src, fingerprint)
        app_id = f"import:{account_id}:{digest}"
        prefix = f"i:{digest[:16]}:"
        constant = _Constants(account_id, time.time_ns() // 1000)
        latest = None
        with writer_lease(propel.db, wait_seconds=LEASE_WAIT_SECONDS) as lease:
            done_through = propel.lake.transaction_version(app_id)
            start = 0
            for table in producer:
                n = table.num_rows
                end = start + n
                reason = table.column("reason")
                rows = None
                if reason.null_count < n:
                    rows = pa.array(np.arange(start + 1, end + 1, dtype=np.int64))
                    bad = pc.is_valid(reason)
                    rejects.add(table.filter(bad).select(
                        ["reason", "value", "identity", "name", "properties"]
                        + (["mid"] if "mid" in table.column_names else [])
                    ).append_column("row", rows.filter(bad)))
                    ok = pc.invert(bad)
                    table, rows = table.filter(ok), rows.filter(ok)
                if end <= done_through:
                    summary.already_imported += table.num_rows
                elif table.num_rows:
                    if start < done_through:  # chunk sizes changed since the crashed run
                        if rows is None:
                            rows = pa.array(np.arange(start + 1, end + 1, dtype=np.int64))
                        new = pc.greater(rows, done_through)
                        before = table.num_rows
                        table, rows = table.filter(new), rows.filter(new)
                        summary.already_imported += before - table.num_rows
                    ids = _message_ids(table, rows, start, prefix)
                    lease.check()
                    write_deltalake(
                        propel.lake.events_uri, _lake_table(constant, table, ids),
                        mode="append", partition_by=PARTITIONS,
                        writer_properties=IMPORT_WRITER_PROPS,
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction(app_id=app_id, version=end)]),
                    )
                    faults.crash_point("import.after_lake_commit")
                    summary.accepted += table.num_rows
                if table.num_rows:
                    top = pc.max(table.column("ts")).as_py()
                    latest = top if latest is None or top > latest else latest
                summary.rows += n
                start = end
                if on_progress:
                    on_progress(summary.rows, max(total, summary.rows))
        if src.csv_rejects and (unreadable := csv_rejects(con)) is not None:
            rejects.add(unreadable)
            summary.rows += unreadable.num_rows
        if latest is not None and latest.year == 1970:
            summary.warnings.append(
                "every accepted timestamp is in 1970: if ts holds dates such as 20240131, "
                "give --ts-format %Y%m%d")
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name}: {short_error(exc)}") from None
    except LeaseUnavailable:
        raise ImportError_("the lake is busy: another process (a flush, compaction or "
                           f"import) kept its writer lease for {LEASE_WAIT_SECONDS:.0f}s; "
                           "try again") from None
    except LeaseLost as exc:
        raise ImportError_(f"stopped: {exc}; run the same import again to finish it (rows "
                           "already imported are skipped)") from None
    except OSError as exc:
        raise ImportError_(f"{exc}; run the same import again to finish it (rows already "
                           "imported are skipped)") from None
    finally:
        if producer is not None:
            producer.halt()
        con.close()
        rejects.close()
    if on_progress:
        on_progress(summary.rows, summary.rows)
    summary.seconds = time.perf_counter() - started
    return summary


def _needed(spec: ImportSpec, columns: list[str]) -> list[str]:
    check_columns(spec, columns)
    return list(dict.fromkeys(spec.mapping.values()))


def _message_ids(table: pa.Table, rows: pa.Array | None, start: int, prefix: str
                 ) -> pa.Array | pa.ChunkedArray:
    mids = table.column("mid") if "mid" in table.column_names else None
    if mids is not None and mids.null_count == 0:
        return mids
    if rows is None:
        rows = pa.array(np.arange(start + 1, start + table.num_rows + 1, dtype=np.int64))
    generated = _generated_ids(prefix, rows)
    if mids is None:
        return generated
    given = mids.combine_chunks()
    return pc.if_else(pc.is_null(given), generated, given)
