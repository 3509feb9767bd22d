"""Turning the columns of a bulk import's file into records, in SQL: identities and
names as text, timestamps, properties as a JSON object; the checks of the mapping and
options; the events query that gives every row the reason it is rejected, if any; and the
reject file those rows are streamed to, counted by reason."""

from __future__ import annotations

import contextlib
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from propel.ingest import limits
from propel.ingest.bulk_read import JSON_NUMBER, Source, lit, quote, sql_rows
from propel.ingest.bulk_spec import RESERVED, ImportError_, ImportSpec, ImportSummary

# --ts-format values that mean "a number since 1970" in that unit (else: strptime).
EPOCH_FORMATS = {"epoch": 1, "epoch_s": 1, "epoch_ms": 1_000, "epoch_us": 1_000_000}
_TEMPORAL = ("DATE", "TIMESTAMP")
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")


def _is(dtype: str, kinds: tuple[str, ...]) -> bool:
    return dtype.upper().startswith(kinds)


def _json_value(src: Source, col: str) -> str:
    """SQL for the column's value as JSON text, or NULL to leave it out."""
    q = quote(col)
    if src.json:
        return f"NULLIF(CAST({q} AS VARCHAR), 'null')"
    if src.text:
        kind = src.looks.get(col, "VARCHAR")
        as_text = f"CAST(to_json({q}) AS VARCHAR)"
        if kind == "NUMBER":
            return f"CASE WHEN regexp_full_match({q}, {lit(JSON_NUMBER)}) THEN {q} " \
                   f"ELSE {as_text} END"
        if kind == "BOOLEAN":
            return f"CASE WHEN lower({q}) IN ('true', 'false') THEN lower({q}) ELSE {as_text} END"
        return as_text
    dtype = src.types[col].upper()
    if dtype in ("FLOAT", "DOUBLE"):  # NaN and infinities are not JSON: leave them out
        return f"CASE WHEN isfinite({q}) THEN CAST(to_json({q}) AS VARCHAR) END"
    return f"CAST(to_json({q}) AS VARCHAR)"


def _absent(src: Source, col: str) -> str:
    """SQL that is true where ``_json_value`` is NULL, without computing it."""
    q = quote(col)
    if src.json:
        return f"({q} IS NULL OR CAST({q} AS VARCHAR) = 'null')"
    if not src.text and src.types[col].upper() in ("FLOAT", "DOUBLE"):
        return f"NOT COALESCE(isfinite({q}), false)"
    return f"{q} IS NULL"


def json_object(src: Source, fields: list[tuple[str, str]]) -> str:
    """SQL for a JSON object text of ``(key, column)`` pairs, null values left out."""
    if not fields:
        return "'{}'"
    parts = []
    for key, col in fields:
        prefix = lit("," + orjson.dumps(key).decode() + ":")
        parts.append(f"CASE WHEN {_absent(src, col)} THEN '' "
                     f"ELSE {prefix} || ({_json_value(src, col)}) END")
    return f"'{{' || substr(concat({', '.join(parts)}), 2) || '}}'"


def text_expr(src: Source, col: str) -> str:
    q = quote(col)
    if _is(src.types[col], ("FLOAT", "DOUBLE")):  # 42.0 -> "42", as the APIs do
        return (f"trim(CASE WHEN {q} = floor({q}) AND abs({q}) < 1e15 "
                f"THEN CAST(CAST({q} AS BIGINT) AS VARCHAR) ELSE CAST({q} AS VARCHAR) END)")
    return f"trim(CAST({q} AS VARCHAR))"


def _epoch(seconds_sql: str) -> str:
    # Bounded before the conversion, which fails (for the whole file) far outside.
    return (f"CASE WHEN ({seconds_sql}) BETWEEN 0 AND 1e11 "
            f"THEN to_timestamp({seconds_sql}) END")


def _ts_expr(src: Source, col: str, ts_format: str | None) -> str:
    q = quote(col)
    dtype = src.types[col]
    if ts_format in EPOCH_FORMATS:
        return _epoch(f"TRY_CAST({q} AS DOUBLE) / {EPOCH_FORMATS[ts_format]}")
    if _is(dtype, _TEMPORAL):
        return f"CAST({q} AS TIMESTAMPTZ)"
    if ts_format:
        return f"CAST(try_strptime(CAST({q} AS VARCHAR), {lit(ts_format)}) AS TIMESTAMPTZ)"
    if _is(dtype, _NUMERIC):
        return _epoch(f"CAST({q} AS DOUBLE)")
    return f"COALESCE(TRY_CAST({q} AS TIMESTAMPTZ), {_epoch(f'TRY_CAST({q} AS DOUBLE)')})"


def check_ts_format(con: duckdb.DuckDBPyConnection, ts_format: str | None) -> None:
    if not ts_format or ts_format in EPOCH_FORMATS:
        return
    if "%" not in ts_format:
        raise ImportError_(f"--ts-format {ts_format!r}: give a strptime format such as "
                           "%Y%m%d or %d/%m/%Y %H:%M, or epoch, epoch_ms, epoch_us")
    try:
        sql_rows(con, f"SELECT try_strptime('2000-01-01', {lit(ts_format)})")
    except duckdb.Error as exc:
        raise ImportError_(f"--ts-format {ts_format!r}: {exc}") from None


def check_columns(spec: ImportSpec, columns: list[str]) -> None:
    for f, col in spec.mapping.items():
        if col not in columns:
            shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
            raise ImportError_(f"--map {f}={col}: {spec.path.name} has no column {col!r}; "
                               f"its columns are {shown}")


def check_event_mapping(spec: ImportSpec) -> None:
    for req in ("identity", "ts"):
        if req not in spec.mapping:
            raise ImportError_(f"map the {req} column: --map {req}=COLUMN")
    if "name" not in spec.mapping and not (spec.event_name or "").strip():
        raise ImportError_("give the event name: --event-name NAME (one for every row) "
                           "or --map name=COLUMN")
    if "name" in spec.mapping and spec.event_name:
        raise ImportError_("give either --event-name or --map name=COLUMN, not both")
    if spec.event_name and len(spec.event_name.strip()) > limits.MAX_NAME_CHARS:
        raise ImportError_(f"--event-name is longer than {limits.MAX_NAME_CHARS} characters")
    props = [f for f in spec.mapping if f not in RESERVED]
    if len(props) > limits.MAX_PROPERTIES:
        raise ImportError_(f"at most {limits.MAX_PROPERTIES} properties can be mapped")
    for f in props:
        if len(f) > limits.MAX_KEY_CHARS:
            raise ImportError_(f"--map {f[:40]}...: property names are at most "
                               f"{limits.MAX_KEY_CHARS} characters")


# The UTC date by arithmetic: CAST(ts AS DATE) goes through the time zone library and
# costs several times more. (Rows before 1970, where // rounds the wrong way, are rejected.)
_UTC_DATE = "DATE '1970-01-01' + CAST(epoch_us(ts) // 86400000000 AS INTEGER)"


def event_query(spec: ImportSpec, src: Source, max_ts: int) -> str:
    m = spec.mapping
    props = [(f, c) for f, c in m.items() if f not in RESERVED]
    name = text_expr(src, m["name"]) if "name" in m else lit((spec.event_name or "").strip())
    mid = f", {text_expr(src, m['message_id'])} AS mid" if "message_id" in m else ""
    mid_check = (f"WHEN length(mid) > {limits.MAX_MESSAGE_ID_CHARS} THEN 'message_id: too long'"
                 if mid else "")
    # The raw ts is only turned into text for the rows that need it in a reason.
    raw = "CAST(_raw_ts AS VARCHAR)"
    extra = f", {src.bad} AS _bad, _line" if src.bad else ""
    bad_value = f"WHEN reason LIKE 'json:%' THEN {src.bad_value}" if src.bad else ""
    return f"""
    SELECT identity, name, ts, {_UTC_DATE} AS event_date{', mid' if mid else ''},
      properties, reason, CASE WHEN reason LIKE 'ts:%' THEN {raw} {bad_value} END AS value
    FROM (
      SELECT *, CASE
        {"WHEN _bad THEN 'json: not valid JSON'" if src.bad else ""}
        WHEN identity IS NULL OR identity = '' THEN 'identity: is required'
        WHEN length(identity) > {limits.MAX_IDENTITY_CHARS} THEN 'identity: too long'
        WHEN name IS NULL OR name = '' THEN 'name: is required'
        WHEN length(name) > {limits.MAX_NAME_CHARS} THEN 'name: too long'
        WHEN ts IS NULL AND (_raw_ts IS NULL OR trim({raw}) = '') THEN 'ts: is required'
        WHEN ts IS NULL AND TRY_CAST({raw} AS DOUBLE) > 1e11
          THEN 'ts: looks like epoch milliseconds or microseconds; give --ts-format '
               || 'epoch_ms or epoch_us'
        WHEN ts IS NULL AND TRY_CAST({raw} AS DOUBLE) < 0 THEN 'ts: before 1970'
        WHEN ts IS NULL THEN 'ts: cannot parse'
        WHEN epoch(ts) < 0 THEN 'ts: before 1970'
        WHEN epoch(ts) > {max_ts} THEN 'ts: more than a day in the future'
        {mid_check}
        WHEN length(properties) > {limits.MAX_EVENT_BYTES} THEN 'properties: too large'
      END AS reason
      FROM (
        SELECT {text_expr(src, m['identity'])} AS identity, {name} AS name,
               {_ts_expr(src, m['ts'], spec.ts_format)} AS ts{mid},
               {json_object(src, props)} AS properties, {quote(m['ts'])} AS _raw_ts
               {extra}
        FROM {src.view}
      )
    )
    """


# --- rejected rows ---------------------------------------------------------------


EVENT_REJECTS = pa.schema([("row", pa.int64()), ("line", pa.int64()), ("reason", pa.string()),
                           ("value", pa.string()), ("identity", pa.string()),
                           ("name", pa.string()), ("message_id", pa.string()),
                           ("properties", pa.string())])
PROFILE_REJECTS = pa.schema([("row", pa.int64()), ("line", pa.int64()), ("reason", pa.string()),
                             ("identity", pa.string()), ("fields", pa.string())])


class RejectFile:
    """Rejected rows, counted by reason and streamed to the reject file as they come
    (a file where every row is bad costs no memory). The file holds the last run's
    rejects: one from an earlier run is replaced, or removed when nothing is rejected."""

    def __init__(self, path: Path | None, schema: pa.Schema, summary: ImportSummary) -> None:
        self.path, self.schema, self.summary = path, schema, summary
        self.writer: pacsv.CSVWriter | None = None
        self.broken = False

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        table = table.rename_columns(["message_id" if c == "mid" else c
                                      for c in table.column_names])
        table = pa.table({f.name: arrow_column(table, f.name, f.type)
                          if f.name in table.column_names
                          else pa.nulls(table.num_rows, f.type) for f in self.schema},
                         schema=self.schema)
        self.summary.rejected += table.num_rows
        _count_reasons(self.summary, table.column("reason"))
        if self.path is None or self.broken:
            return
        try:
            if self.writer is None:
                self.writer = pacsv.CSVWriter(self.path, self.schema)
            self.writer.write_table(table)
        except (OSError, pa.ArrowException) as exc:
            self.broken = True
            self.summary.warnings.append(f"could not write the rejected rows to {self.path}: "
                                         f"{exc}; give --reject-file PATH")

    def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(OSError, pa.ArrowException):
                self.writer.close()
        elif self.path is not None and self.path.exists():
            with contextlib.suppress(OSError):
                self.path.unlink()


def _count_reasons(summary: ImportSummary, reasons: pa.Array | pa.ChunkedArray) -> None:
    for item in pc.value_counts(reasons).to_pylist():
        summary.reasons[item["values"]] = summary.reasons.get(item["values"], 0) + item["counts"]


def arrow_column(table: pa.Table, name: str, dtype: pa.DataType) -> pa.ChunkedArray:
    col = table.column(name)
    return col if col.type == dtype else col.cast(dtype)
