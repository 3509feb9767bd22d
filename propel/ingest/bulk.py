"""Bulk import of files (CSV, JSON lines, Parquet) straight into the lake.

DuckDB reads and validates the file in bulk (no Python loop per row for events);
accepted rows are appended to the lake in chunks, each a Delta commit with the
application-transaction id ``import:<account>:<fingerprint of file + options>`` and
version = chunk number. A re-run of the same file skips the chunks already in the
lake, so it adds nothing twice, even after a crash mid-way.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from propel import faults
from propel.core import Propel
from propel.ingest import limits
from propel.ingest.records import Invalid
from propel.jobs.leases import hold
from propel.lake.reader import duckdb_connection
from propel.lake.store import LAKE_LEASE, SCHEMA

CHUNK_ROWS = 1_000_000
RESERVED = ("identity", "ts", "name", "message_id")
FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


class ImportError_(Exception):  # noqa: N801 - "ImportError" is a builtin
    """The file or the options cannot be imported; the message says how to fix it."""


@dataclass
class ImportSpec:
    kind: str  # "events" or "profiles"
    path: Path
    mapping: dict[str, str] = field(default_factory=dict)
    event_name: str | None = None
    format: str | None = None
    ts_format: str | None = None
    delimiter: str | None = None
    header: bool = True
    reject_path: Path | None = None


@dataclass
class ImportSummary:
    rows: int = 0
    accepted: int = 0
    already_imported: int = 0
    rejected: int = 0
    seconds: float = 0.0
    reject_path: Path | None = None
    reasons: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0
        lines = [f"{self.rows:,} rows read in {self.seconds:.1f}s ({rate:,.0f} rows/s): "
                 f"{self.accepted:,} accepted, {self.already_imported:,} already imported, "
                 f"{self.rejected:,} rejected"]
        for reason, count in sorted(self.reasons.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  {count:,} × {reason}")
        if self.rejected and self.reject_path:
            lines.append(f"rejected rows with reasons: {self.reject_path}")
        return "\n".join(lines)


def _format(spec: ImportSpec) -> str:
    fmt = spec.format or FORMATS.get(spec.path.suffix.lower())
    if fmt not in ("csv", "jsonl", "parquet"):
        raise ImportError_(f"cannot tell the format of {spec.path.name}; give --format "
                           "csv, jsonl or parquet")
    return fmt


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _source(con: duckdb.DuckDBPyConnection, spec: ImportSpec, fmt: str) -> str:
    """Create view ``src`` over the file; returns nothing but the view's name."""
    path = _lit(str(spec.path))
    text_cols = [spec.mapping[f] for f in ("identity", "message_id", "name") if f in spec.mapping]
    if fmt == "parquet":
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet({path})")
    elif fmt == "jsonl":
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_json_auto({path}, "
                    "format='newline_delimited')")
    elif spec.delimiter == "whitespace":
        con.execute(f"CREATE VIEW _lines AS SELECT string_split_regex(trim(line), '\\s+') AS f "
                    f"FROM read_csv({path}, columns={{'line': 'VARCHAR'}}, header=false, "
                    "delim='\\0', quote='', escape='') WHERE trim(line) <> ''")
        width = con.execute("SELECT max(len(f)) FROM _lines").fetchall()[0][0] or 0
        cols = ", ".join(f"f[{i + 1}] AS column{i}" for i in range(width))
        con.execute(f"CREATE VIEW _raw AS SELECT {cols} FROM _lines")
        typed = []
        for i in range(width):
            col = f"column{i}"
            if f"column{i}" in text_cols:
                typed.append(col)
                continue
            ok_int, ok_num = con.execute(
                f"SELECT bool_and(TRY_CAST({col} AS BIGINT) IS NOT NULL OR {col} IS NULL), "
                f"bool_and(TRY_CAST({col} AS DOUBLE) IS NOT NULL OR {col} IS NULL) FROM _raw"
            ).fetchall()[0]
            kind = "BIGINT" if ok_int else ("DOUBLE" if ok_num else None)
            typed.append(f"CAST({col} AS {kind}) AS {col}" if kind else col)
        con.execute(f"CREATE VIEW src AS SELECT {', '.join(typed)} FROM _raw")
    else:
        opts = [f"header={'true' if spec.header else 'false'}"]
        if spec.delimiter:
            opts.append(f"delim={_lit(spec.delimiter)}")
        if not spec.header:
            opts.append("names=NULL")
        if text_cols:
            types = ", ".join(f"{_lit(c)}: 'VARCHAR'" for c in text_cols)
            opts.append(f"types={{{types}}}")
        try:
            con.execute(f"CREATE VIEW src AS SELECT * FROM read_csv({path}, "
                        f"{', '.join(o for o in opts if o != 'names=NULL')})")
        except duckdb.Error as exc:
            raise ImportError_(f"cannot read {spec.path.name} as CSV: {exc}") from None
        if not spec.header:
            cols = [r[0] for r in con.execute("DESCRIBE src").fetchall()]
            renamed = ", ".join(f"{_quote(c)} AS column{i}" for i, c in enumerate(cols))
            con.execute(f"CREATE OR REPLACE VIEW src2 AS SELECT {renamed} FROM src")
            return "src2"
    return "src"


def _columns(con: duckdb.DuckDBPyConnection, view: str) -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f"DESCRIBE {view}").fetchall()}


def _ts_expr(col: str, dtype: str, ts_format: str | None) -> str:
    q = _quote(col)
    if ts_format:
        return f"try_strptime(CAST({q} AS VARCHAR), {_lit(ts_format)})::TIMESTAMPTZ"
    if dtype.startswith("TIMESTAMP") or dtype == "DATE":
        return f"CAST({q} AS TIMESTAMPTZ)"
    if dtype in ("BIGINT", "INTEGER", "DOUBLE", "FLOAT", "DECIMAL", "HUGEINT", "UBIGINT") or \
            dtype.startswith("DECIMAL"):
        return f"to_timestamp(CAST({q} AS DOUBLE))"
    return (f"COALESCE(TRY_CAST({q} AS TIMESTAMPTZ), "
            f"to_timestamp(TRY_CAST({q} AS DOUBLE)))")


def _event_query(spec: ImportSpec, view: str, columns: dict[str, str], account_id: str) -> str:
    mapping = spec.mapping
    for req in ("identity", "ts"):
        if req not in mapping:
            raise ImportError_(f"map the {req} column: --map {req}=COLUMN")
    if "name" not in mapping and not spec.event_name:
        raise ImportError_("give --event-name NAME or --map name=COLUMN")
    for f, col in mapping.items():
        if col not in columns:
            raise ImportError_(f"--map {f}={col}: no column {col!r}; the file has "
                               f"{', '.join(list(columns)[:20])}")
    props = [(f, c) for f, c in mapping.items() if f not in RESERVED]
    ident = f"trim(CAST({_quote(mapping['identity'])} AS VARCHAR))"
    name = (f"trim(CAST({_quote(mapping['name'])} AS VARCHAR))" if "name" in mapping
            else _lit(spec.event_name or ""))
    ts = _ts_expr(mapping["ts"], columns[mapping["ts"]], spec.ts_format)
    struct = ", ".join(f"{_quote(f)} := {_quote(c)}" for f, c in props)
    properties = f"CAST(to_json(struct_pack({struct})) AS VARCHAR)" if props else "'{}'"
    max_ts = int(time.time()) + limits.FUTURE_TOLERANCE_SECONDS
    message = (f"CAST({_quote(mapping['message_id'])} AS VARCHAR)" if "message_id" in mapping
               else "NULL")
    return f"""
    WITH parsed AS (
      SELECT row_number() OVER () AS _row, {ident} AS identity, {name} AS name, {ts} AS ts,
             {message} AS mid, {properties} AS properties,
             CAST({_quote(mapping['ts'])} AS VARCHAR) AS raw_ts
      FROM {view}
    )
    SELECT _row, {_lit(account_id)} AS account_id, identity, name, ts, properties,
      COALESCE(mid, 'i:' || md5(identity || chr(0) || name || chr(0) || CAST(ts AS VARCHAR)
               || chr(0) || properties)) AS message_id,
      CASE
        WHEN identity IS NULL OR identity = '' THEN 'identity: is required'
        WHEN length(identity) > {limits.MAX_IDENTITY_CHARS} THEN 'identity: too long'
        WHEN name IS NULL OR name = '' THEN 'name: is required'
        WHEN length(name) > {limits.MAX_NAME_CHARS} THEN 'name: too long'
        WHEN ts IS NULL THEN 'ts: cannot parse ' || COALESCE('''' || raw_ts || '''', 'empty')
        WHEN epoch(ts) < 0 OR epoch(ts) > {max_ts} THEN 'ts: before 1970 or in the future'
        WHEN length(properties) > {limits.MAX_EVENT_BYTES} THEN 'properties: too large'
      END AS reason
    FROM parsed
    """


def _fingerprint(spec: ImportSpec) -> str:
    h = hashlib.sha256()
    with open(spec.path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    h.update(orjson.dumps([sorted(spec.mapping.items()), spec.event_name, spec.ts_format,
                           spec.delimiter, spec.header, spec.kind]))
    return h.hexdigest()[:32]


def _to_lake(batch: pa.Table) -> pa.Table:
    ts = batch.column("ts").cast(pa.timestamp("us", tz="UTC"))
    n = batch.num_rows
    return pa.table({
        "account_id": batch.column("account_id"),
        "event_date": ts.cast(pa.timestamp("us")).cast(pa.date32()),
        "kind": pa.repeat("event", n).cast(pa.string()) if n else pa.array([], pa.string()),
        "message_id": batch.column("message_id"),
        "identity": batch.column("identity"),
        "name": batch.column("name"),
        "ts": ts,
        "received_at": pa.repeat(pa.scalar(time.time_ns() // 1000, pa.int64()), n).cast(
            pa.timestamp("us", tz="UTC")) if n else pa.array([], pa.timestamp("us", tz="UTC")),
        "source": pa.repeat("import", n).cast(pa.string()) if n else pa.array([], pa.string()),
        "properties": batch.column("properties"),
    }, schema=SCHEMA)


def import_file(propel: Propel, account_id: str, spec: ImportSpec,
                on_progress: Callable[[int, int], None] | None = None,
                chunk_rows: int = CHUNK_ROWS) -> ImportSummary:
    if not spec.path.exists():
        raise ImportError_(f"no file {spec.path}")
    if spec.kind == "profiles":
        return _import_profiles(propel, account_id, spec, on_progress)
    started = time.perf_counter()
    summary = ImportSummary(reject_path=spec.reject_path)
    con = duckdb_connection()
    con.execute("SET TimeZone='UTC'")
    try:
        view = _source(con, spec, _format(spec))
        query = _event_query(spec, view, _columns(con, view), account_id)
        total = con.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0]
        app_id = f"import:{account_id}:{_fingerprint(spec)}"
        rejects: list[pa.Table] = []
        with hold(propel.db, LAKE_LEASE, ttl_seconds=3600, wait_seconds=120):
            done_through = propel.lake.transaction_version(app_id)
            reader = con.sql(query).to_arrow_reader(min(chunk_rows, 1 << 17))
            for chunk_no, batch in enumerate(_rebatch(reader, chunk_rows), start=1):
                table = pa.Table.from_batches([batch])
                bad = pc.is_valid(table.column("reason"))
                good = table.filter(pc.invert(bad))
                if pc.any(bad).as_py():
                    rejects.append(table.filter(bad))
                if chunk_no <= done_through:
                    summary.already_imported += good.num_rows
                elif good.num_rows:
                    propel.lake.append(_to_lake(good), app_id=app_id, version=chunk_no)
                    faults.crash_point("import.after_lake_commit")
                    summary.accepted += good.num_rows
                summary.rows += table.num_rows
                if on_progress:
                    on_progress(summary.rows, total)
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name}: {exc}") from None
    finally:
        con.close()
    _write_rejects(spec, rejects, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _rebatch(reader: pa.RecordBatchReader, size: int):  # noqa: ANN202 - generator
    """Exactly ``size`` rows per chunk (the last may be smaller): chunk numbers must
    mean the same rows on every run of the same file."""
    buffer: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        buffer.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(buffer).combine_chunks()
            yield table.slice(0, size).to_batches()[0]
            rest = table.slice(size)
            buffer = rest.to_batches() if rest.num_rows else []
            held = rest.num_rows
    if held:
        yield pa.Table.from_batches(buffer).combine_chunks().to_batches()[0]


def _write_rejects(spec: ImportSpec, rejects: list[pa.Table], summary: ImportSummary) -> None:
    if not rejects:
        return
    table = pa.concat_tables(rejects)
    summary.rejected = table.num_rows
    for reason in table.column("reason").to_pylist():
        key = reason.split(" '")[0] if reason.startswith("ts: cannot parse") else reason
        summary.reasons[key] = summary.reasons.get(key, 0) + 1
    if spec.reject_path:
        out = table.select(["_row", "reason", "identity", "name", "properties"]).rename_columns(
            ["row", "reason", "identity", "name", "properties"])
        pacsv.write_csv(out, spec.reject_path)


def _import_profiles(propel: Propel, account_id: str, spec: ImportSpec,
                     on_progress: Callable[[int, int], None] | None) -> ImportSummary:
    from propel.ingest.records import IngestItem, Rejection, content_id, key_hash
    from propel.ingest.service import ingest_sync
    from propel.profiles import build_update

    started = time.perf_counter()
    summary = ImportSummary(reject_path=spec.reject_path)
    if "identity" not in spec.mapping:
        raise ImportError_("map the identity column: --map identity=COLUMN")
    con = duckdb_connection()
    try:
        view = _source(con, spec, _format(spec))
        columns = _columns(con, view)
        for f, col in spec.mapping.items():
            if col not in columns:
                raise ImportError_(f"--map {f}={col}: no column {col!r}")
        total = con.execute(f"SELECT count(*) FROM {view}").fetchall()[0][0]
        # Unmapped columns come along as properties under their own names.
        by_column = {c: f for f, c in spec.mapping.items()}
        reader = con.sql(f"SELECT * FROM {view}").to_arrow_reader(2000)
        rejects: list[dict[str, Any]] = []
        for batch in reader:
            items, rejected = [], []
            for offset, row in enumerate(batch.to_pylist()):
                index = summary.rows + offset
                fields = {by_column.get(c, c): v for c, v in row.items() if v is not None}
                identity = fields.pop("identity", None)
                try:
                    update = build_update(identity, fields)
                except Invalid as exc:
                    rejected.append(Rejection(index, exc.field, exc.reason, row))
                    continue
                items.append(IngestItem(key_hash=key_hash(account_id, content_id(row)),
                                        profile=update))
            ingest_sync(propel.db, account_id, items, [], "import")
            summary.accepted += len(items)
            summary.rows += batch.num_rows
            for r in rejected:
                rejects.append({"row": r.index + 1, "reason": f"{r.field}: {r.reason}",
                                "record": orjson.dumps(r.record, default=str).decode()})
                summary.reasons[f"{r.field}: {r.reason}"] = summary.reasons.get(
                    f"{r.field}: {r.reason}", 0) + 1
            if on_progress:
                on_progress(summary.rows, total)
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name}: {exc}") from None
    finally:
        con.close()
    summary.rejected = len(rejects)
    if rejects and spec.reject_path:
        pacsv.write_csv(pa.Table.from_pylist(rejects), spec.reject_path)
    summary.seconds = time.perf_counter() - started
    return summary
