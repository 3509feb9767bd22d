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
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from deltalake import (
    ColumnProperties,
    CommitProperties,
    Transaction,
    WriterProperties,
    write_deltalake,
)

from propel import faults
from propel.core import Propel
from propel.db.engine import DatabaseBusy
from propel.ingest import limits
from propel.ingest.records import Invalid
from propel.jobs.leases import LeaseUnavailable
from propel.lake.reader import duckdb_connection
from propel.lake.store import PARTITIONS, SCHEMA, LeaseLost, writer_lease

CHUNK_ROWS = 1_000_000  # rows per lake commit: larger means fewer, larger files
SAMPLE_ROWS = 20_480  # rows a CSV column's type (or the keys of JSON lines) is read from
MAX_LINE_BYTES = 64 << 20
LEASE_WAIT_SECONDS = 120.0
PROFILE_BATCH = 2000
RESERVED = ("identity", "ts", "name", "message_id")
FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
FORMAT_ALIASES = {"csv": "csv", "tsv": "csv", "txt": "csv", "jsonl": "jsonl", "ndjson": "jsonl",
                  "json": "jsonl", "parquet": "parquet", "pq": "parquet"}
# --ts-format values that mean "a number since 1970" in that unit (else: strptime).
EPOCH_FORMATS = {"epoch": 1, "epoch_s": 1, "epoch_ms": 1_000, "epoch_us": 1_000_000}
_TEMPORAL = ("DATE", "TIMESTAMP")
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
            "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL")
_JSON_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
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
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0
        lines = [f"{self.rows:,} rows read in {self.seconds:.1f}s ({rate:,.0f} rows/s): "
                 f"{self.accepted:,} accepted, {self.already_imported:,} already imported, "
                 f"{self.rejected:,} rejected"]
        for reason, count in sorted(self.reasons.items(), key=lambda kv: -kv[1])[:10]:
            lines.append(f"  {count:,} × {reason}")
        if self.rejected and self.reject_path:
            lines.append(f"rejected rows with reasons: {self.reject_path}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)


# --- reading the file ------------------------------------------------------------


@dataclass
class _Source:
    view: str
    types: dict[str, str]  # column -> DuckDB type in the view
    looks: dict[str, str]  # column -> what its values look like (CSV text: from a sample)
    text: bool  # every value is text (CSV): types come from ``looks``
    json: bool  # property values are JSON already (JSON lines)
    csv_rejects: bool = False  # the reader keeps unreadable lines in reject_errors
    bad: str | None = None  # SQL true for a row that is not readable (JSON lines)
    bad_value: str | None = None  # SQL for what to show of such a row


def _format(spec: ImportSpec) -> str:
    if spec.format:
        fmt = FORMAT_ALIASES.get(spec.format.lower().lstrip("."))
        if fmt is None:
            raise ImportError_(f"unknown format {spec.format!r}: give --format csv, jsonl "
                               "or parquet")
        return fmt
    fmt = FORMATS.get(spec.path.suffix.lower())
    if fmt is None:
        raise ImportError_(f"cannot tell the format of {spec.path.name} from its name; give "
                           "--format csv, jsonl or parquet")
    return fmt


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    # fetchall(): this DuckDB keeps a result open until it is read to the end.
    return con.execute(sql).fetchall()


def _describe(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    return {r[0]: r[1] for r in _rows(con, f"DESCRIBE {relation}")}


def _delimiter(spec: ImportSpec) -> str | None:
    d = spec.delimiter
    if d in ("tab", "\\t"):
        return "\t"
    return d


def _looks(con: duckdb.DuckDBPyConnection, relation: str, columns: list[str]) -> dict[str, str]:
    """NUMBER or BOOLEAN for text columns whose sampled values all are one (as JSON
    writes them: "007" is no number), else VARCHAR."""
    if not columns:
        return {}
    checks = []
    for c in columns:
        q = _quote(c)
        checks.append(f"bool_and({q} IS NULL OR regexp_full_match({q}, {_lit(_JSON_NUMBER)}))")
        checks.append(f"bool_and({q} IS NULL OR lower({q}) IN ('true', 'false'))")
        checks.append(f"count({q})")
    row = _rows(con, f"SELECT {', '.join(checks)} FROM (SELECT * FROM {relation} "
                     f"LIMIT {SAMPLE_ROWS})")[0]
    looks = {}
    for i, c in enumerate(columns):
        is_num, is_bool, seen = row[3 * i: 3 * i + 3]
        looks[c] = "VARCHAR" if not seen else "NUMBER" if is_num else \
            "BOOLEAN" if is_bool else "VARCHAR"
    return looks


def _lines(path: str, skip: int = 0) -> str:
    """The file's lines as rows of one column ``line`` (no quoting, no header)."""
    return (f"read_csv({path}, columns={{'line': 'VARCHAR'}}, header=false, delim='\\0', "
            f"quote='', escape='', max_line_size={MAX_LINE_BYTES}, skip={skip})")


def _header_fields(path: Path) -> tuple[list[str], int]:
    """The whitespace-separated names on the first non-blank line, and how many lines
    to skip to pass it."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            names = raw.decode("utf-8", errors="replace").split()
            if names:
                unique = [n if names.index(n) == i else f"{n}_{i}" for i, n in enumerate(names)]
                return unique, number
    raise ImportError_(f"{path.name} holds no data")


def _open_json(con: duckdb.DuckDBPyConnection, spec: ImportSpec, path: str,
               wanted: Callable[[list[str]], list[str]]) -> _Source:
    """JSON lines are read line by line, so a malformed line is one rejected row rather
    than the end of the import; a JSON array (or pretty-printed JSON) is read whole."""
    con.execute(f"CREATE VIEW _lines AS SELECT line FROM {_lines(path)} "
                "WHERE line IS NOT NULL AND trim(line) <> ''")
    keys: dict[str, None] = {}
    valid = 0
    for (line,) in _rows(con, f"SELECT line FROM _lines LIMIT {SAMPLE_ROWS}"):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        valid += 1
        if isinstance(record, dict):
            keys.update(dict.fromkeys(record))
    text = {spec.mapping[f] for f in RESERVED if f in spec.mapping}
    if valid:
        read = wanted(list(keys))
        struct = orjson.dumps({c: "VARCHAR" if c in text else "JSON" for c in read}).decode()
        cols = ", ".join(f"_r.{_quote(c)} AS {_quote(c)}" for c in read) or "NULL AS _none"
        con.execute(f"CREATE VIEW src AS SELECT {cols}, _r IS NULL AS _bad, line AS _line "
                    f"FROM (SELECT TRY(from_json(line, {_lit(struct)})) AS _r, line FROM _lines)")
        types = _describe(con, "src")
        return _Source("src", types, types, text=False, json=True, bad="_bad",
                       bad_value="left(_line, 200)")
    try:
        found = list(_describe(con, f"(SELECT * FROM read_json_auto({path}, format='auto'))"))
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name} as JSON lines: {_short(exc)}"
                           ) from None
    read = wanted(found)
    cols = ", ".join(f"{_lit(c)}: {_lit('VARCHAR' if c in text else 'JSON')}" for c in read)
    con.execute(f"CREATE VIEW src AS SELECT * FROM read_json({path}, format='auto', "
                f"columns={{{cols}}})")
    types = _describe(con, "src")
    return _Source("src", types, types, text=False, json=True)


def _open(con: duckdb.DuckDBPyConnection, spec: ImportSpec, fmt: str,
          wanted: Callable[[list[str]], list[str]]) -> _Source:
    """Create view ``src`` over the file. ``wanted(columns)`` validates the mapping against
    the file's columns and returns the columns to read."""
    path = _lit(str(spec.path))
    if fmt == "parquet":
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet({path})")
        types = _describe(con, "src")
        wanted(list(types))
        return _Source("src", types, types, text=False, json=False)
    if fmt == "jsonl":
        return _open_json(con, spec, path, wanted)
    if spec.delimiter == "whitespace":
        names, skip = _header_fields(spec.path) if spec.header else ([], 0)
        con.execute(f"CREATE VIEW _lines AS SELECT string_split_regex(trim(line), '\\s+') AS f "
                    f"FROM {_lines(path, skip)} WHERE trim(line) <> ''")
        width = _rows(con, f"SELECT max(len(f)) FROM (SELECT f FROM _lines LIMIT {SAMPLE_ROWS})"
                      )[0][0] or 0
        names += [f"column{i}" for i in range(len(names), max(width, len(names)))]
        cols = ", ".join(f"f[{i + 1}] AS {_quote(n)}" for i, n in enumerate(names))
        con.execute(f"CREATE VIEW src AS SELECT {cols or 'NULL AS column0'} FROM _lines")
        types = _describe(con, "src")
        read = wanted(list(types))
        return _Source("src", types, _looks(con, "src", read), text=True, json=False)
    opts = [f"header={'true' if spec.header else 'false'}"]
    if (delim := _delimiter(spec)) is not None:
        opts.append(f"delim={_lit(delim)}")
    reader = f"read_csv({path}, {', '.join(opts)}, all_varchar=true, store_rejects=true)"
    try:
        types = _describe(con, f"(SELECT * FROM {reader})")
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name} as CSV: {exc}") from None
    names = list(types)
    if not spec.header:
        names = [f"column{i}" for i in range(len(names))]
    read = wanted(names)
    con.execute(f"CREATE VIEW src AS SELECT * FROM {reader}")
    if not spec.header:
        renamed = ", ".join(f"{_quote(c)} AS column{i}" for i, c in enumerate(types))
        con.execute(f"CREATE VIEW src2 AS SELECT {renamed} FROM src")
        types = _describe(con, "src2")
        return _Source("src2", types, _looks(con, "src2", read), text=True, json=False,
                       csv_rejects=True)
    return _Source("src", types, _looks(con, "src", read), text=True, json=False,
                   csv_rejects=True)


def _is(dtype: str, kinds: tuple[str, ...]) -> bool:
    return dtype.upper().startswith(kinds)


def _json_value(src: _Source, col: str) -> str:
    """SQL for the column's value as JSON text, or NULL to leave it out."""
    q = _quote(col)
    if src.json:
        return f"NULLIF(CAST({q} AS VARCHAR), 'null')"
    if src.text:
        kind = src.looks.get(col, "VARCHAR")
        as_text = f"CAST(to_json({q}) AS VARCHAR)"
        if kind == "NUMBER":
            return f"CASE WHEN regexp_full_match({q}, {_lit(_JSON_NUMBER)}) THEN {q} " \
                   f"ELSE {as_text} END"
        if kind == "BOOLEAN":
            return f"CASE WHEN lower({q}) IN ('true', 'false') THEN lower({q}) ELSE {as_text} END"
        return as_text
    dtype = src.types[col].upper()
    if dtype in ("FLOAT", "DOUBLE"):  # NaN and infinities are not JSON: leave them out
        return f"CASE WHEN isfinite({q}) THEN CAST(to_json({q}) AS VARCHAR) END"
    return f"CAST(to_json({q}) AS VARCHAR)"


def _absent(src: _Source, col: str) -> str:
    """SQL that is true where ``_json_value`` is NULL, without computing it."""
    q = _quote(col)
    if src.json:
        return f"({q} IS NULL OR CAST({q} AS VARCHAR) = 'null')"
    if not src.text and src.types[col].upper() in ("FLOAT", "DOUBLE"):
        return f"NOT COALESCE(isfinite({q}), false)"
    return f"{q} IS NULL"


def _json_object(src: _Source, fields: list[tuple[str, str]]) -> str:
    """SQL for a JSON object text of ``(key, column)`` pairs, null values left out."""
    if not fields:
        return "'{}'"
    parts = []
    for key, col in fields:
        prefix = _lit("," + orjson.dumps(key).decode() + ":")
        parts.append(f"CASE WHEN {_absent(src, col)} THEN '' "
                     f"ELSE {prefix} || ({_json_value(src, col)}) END")
    return f"'{{' || substr(concat({', '.join(parts)}), 2) || '}}'"


def _text(src: _Source, col: str) -> str:
    q = _quote(col)
    if _is(src.types[col], ("FLOAT", "DOUBLE")):  # 42.0 -> "42", as the APIs do
        return (f"trim(CASE WHEN {q} = floor({q}) AND abs({q}) < 1e15 "
                f"THEN CAST(CAST({q} AS BIGINT) AS VARCHAR) ELSE CAST({q} AS VARCHAR) END)")
    return f"trim(CAST({q} AS VARCHAR))"


def _epoch(seconds_sql: str) -> str:
    # Bounded before the conversion, which fails (for the whole file) far outside.
    return (f"CASE WHEN ({seconds_sql}) BETWEEN 0 AND 1e11 "
            f"THEN to_timestamp({seconds_sql}) END")


def _ts_expr(src: _Source, col: str, ts_format: str | None) -> str:
    q = _quote(col)
    dtype = src.types[col]
    if ts_format in EPOCH_FORMATS:
        return _epoch(f"TRY_CAST({q} AS DOUBLE) / {EPOCH_FORMATS[ts_format]}")
    if _is(dtype, _TEMPORAL):
        return f"CAST({q} AS TIMESTAMPTZ)"
    if ts_format:
        return f"CAST(try_strptime(CAST({q} AS VARCHAR), {_lit(ts_format)}) AS TIMESTAMPTZ)"
    if _is(dtype, _NUMERIC):
        return _epoch(f"CAST({q} AS DOUBLE)")
    return f"COALESCE(TRY_CAST({q} AS TIMESTAMPTZ), {_epoch(f'TRY_CAST({q} AS DOUBLE)')})"


def _check_ts_format(con: duckdb.DuckDBPyConnection, ts_format: str | None) -> None:
    if not ts_format or ts_format in EPOCH_FORMATS:
        return
    if "%" not in ts_format:
        raise ImportError_(f"--ts-format {ts_format!r}: give a strptime format such as "
                           "%Y%m%d or %d/%m/%Y %H:%M, or epoch, epoch_ms, epoch_us")
    try:
        _rows(con, f"SELECT try_strptime('2000-01-01', {_lit(ts_format)})")
    except duckdb.Error as exc:
        raise ImportError_(f"--ts-format {ts_format!r}: {exc}") from None


def _check_columns(spec: ImportSpec, columns: list[str]) -> None:
    for f, col in spec.mapping.items():
        if col not in columns:
            shown = ", ".join(columns[:20]) + (", ..." if len(columns) > 20 else "")
            raise ImportError_(f"--map {f}={col}: {spec.path.name} has no column {col!r}; "
                               f"its columns are {shown}")


def _check_event_mapping(spec: ImportSpec) -> None:
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


def _event_query(spec: ImportSpec, src: _Source, max_ts: int) -> str:
    m = spec.mapping
    props = [(f, c) for f, c in m.items() if f not in RESERVED]
    name = _text(src, m["name"]) if "name" in m else _lit((spec.event_name or "").strip())
    mid = f", {_text(src, m['message_id'])} AS mid" if "message_id" in m else ""
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
        SELECT {_text(src, m['identity'])} AS identity, {name} AS name,
               {_ts_expr(src, m['ts'], spec.ts_format)} AS ts{mid},
               {_json_object(src, props)} AS properties, {_quote(m['ts'])} AS _raw_ts
               {extra}
        FROM {src.view}
      )
    )
    """


# --- fingerprint and progress ------------------------------------------------------


class _Fingerprint(threading.Thread):
    """sha256 of the file's bytes and the import options, and its line count (for the
    progress bar), computed beside the import: hashlib releases the GIL."""

    def __init__(self, spec: ImportSpec, fmt: str) -> None:
        super().__init__(name="import-fingerprint", daemon=True)
        self.spec, self.fmt = spec, fmt
        self.digest = ""
        self.lines = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            h = hashlib.sha256()
            lines, last = 0, b"\n"
            with open(self.spec.path, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
                    lines += block.count(b"\n")
                    last = block[-1:]
            s = self.spec
            h.update(orjson.dumps([s.kind, self.fmt, sorted(s.mapping.items()), s.event_name,
                                   s.ts_format, s.delimiter, s.header]))
            self.digest = h.hexdigest()[:32]
            self.lines = lines + (last != b"\n")
        except BaseException as exc:  # noqa: BLE001 - re-raised by result()
            self.error = exc

    def result(self) -> str:
        self.join()
        if self.error is not None:
            raise ImportError_(f"cannot read {self.spec.path}: {self.error}")
        return self.digest


def _estimated_rows(con: duckdb.DuckDBPyConnection, spec: ImportSpec, fmt: str, src: _Source,
                    fp: _Fingerprint) -> int:
    if fmt == "parquet":  # from the file's metadata
        return _rows(con, f"SELECT count(*) FROM {src.view}")[0][0]
    fp.join()
    header = 1 if fmt == "csv" and spec.header else 0
    return max(0, fp.lines - header)


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
        _arrow(good, "event_date", pa.date32()),
        constant("kind", n),
        ids if ids.type == pa.string() else ids.cast(pa.string()),
        _arrow(good, "identity", pa.string()),
        _arrow(good, "name", pa.string()),
        _arrow(good, "ts", SCHEMA.field("ts").type),
        constant("received_at", n),
        constant("source", n),
        _arrow(good, "properties", pa.string()),
    ], schema=SCHEMA)


def _generated_ids(prefix: str, rows: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(rows, pa.string()), "")


def _arrow(table: pa.Table, name: str, dtype: pa.DataType) -> pa.ChunkedArray:
    col = table.column(name)
    return col if col.type == dtype else col.cast(dtype)


def import_file(propel: Propel, account_id: str, spec: ImportSpec,
                on_progress: Callable[[int, int], None] | None = None,
                chunk_rows: int = CHUNK_ROWS) -> ImportSummary:
    """Import ``spec.path`` into the account; raises :class:`ImportError_` with a message
    for the user when the file or the options are wrong (nothing is written then)."""
    _check_file(spec)
    fmt = _format(spec)
    if spec.kind == "profiles":
        return _import_profiles(propel, account_id, spec, fmt, on_progress)
    if spec.kind != "events":
        raise ImportError_(f"unknown import kind {spec.kind!r}: events or profiles")
    if chunk_rows < 1:
        raise ImportError_("chunk_rows must be at least 1")
    _check_event_mapping(spec)
    started = time.perf_counter()
    summary = ImportSummary(reject_path=spec.reject_path)
    fingerprint = _Fingerprint(spec, fmt)
    fingerprint.start()
    con = _connection()
    producer: _Producer | None = None
    rejects = _RejectFile(spec.reject_path, EVENT_REJECTS, summary)
    try:
        _check_ts_format(con, spec.ts_format)
        src = _open(con, spec, fmt, lambda cols: _needed(spec, cols))
        max_ts = int(time.time()) + limits.FUTURE_TOLERANCE_SECONDS
        query = _event_query(spec, src, max_ts)
        # Parquet's count is in its metadata; the DuckDB connection is the producer's
        # from here on.
        total = _rows(con, f"SELECT count(*) FROM {src.view}")[0][0] if fmt == "parquet" \
            else None
        producer = _Producer(con, query, chunk_rows)
        producer.start()
        digest = fingerprint.result()
        if total is None:
            total = _estimated_rows(con, spec, fmt, src, fingerprint)
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
        if src.csv_rejects and (unreadable := _csv_rejects(con)) is not None:
            rejects.add(unreadable)
            summary.rows += unreadable.num_rows
        if latest is not None and latest.year == 1970:
            summary.warnings.append(
                "every accepted timestamp is in 1970: if ts holds dates such as 20240131, "
                "give --ts-format %Y%m%d")
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name}: {_short(exc)}") from None
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
    _check_columns(spec, columns)
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


def _connection() -> duckdb.DuckDBPyConnection:
    con = duckdb_connection()
    for setting in ("SET TimeZone='UTC'", "SET preserve_insertion_order=true",
                    "SET enable_progress_bar=false"):
        con.execute(setting)
    return con


def _check_file(spec: ImportSpec) -> None:
    path = spec.path
    if not path.exists():
        raise ImportError_(f"no file {path}")
    if path.is_dir():
        raise ImportError_(f"{path} is a folder; give a file")
    if not os.access(path, os.R_OK):
        raise ImportError_(f"cannot read {path}: permission denied")
    if spec.reject_path is not None and spec.reject_path.resolve() == path.resolve():
        raise ImportError_("the reject file cannot be the imported file")


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = text.splitlines()
    return "\n".join(lines[:6]) + ("\n..." if len(lines) > 6 else "")


def _csv_rejects(con: duckdb.DuckDBPyConnection) -> pa.Table | None:
    """Lines the CSV reader could not split, with their file line numbers."""
    try:
        # The last scan is the import's (sampling the file scanned its start before).
        rows = _rows(con, "SELECT DISTINCT line, error_type, error_message, csv_line "
                          "FROM reject_errors WHERE scan_id = (SELECT max(scan_id) "
                          "FROM reject_errors) ORDER BY line")
    except duckdb.Error:
        return None
    if not rows:
        return None
    lines, types, messages, texts = (list(c) for c in zip(*rows, strict=True))
    return pa.table({
        "line": pa.array(lines, pa.int64()),
        "reason": pa.array([f"csv: {t.lower()}" for t in types], pa.string()),
        "value": pa.array([f"{m}: {(s or '')[:200]}" for m, s in zip(messages, texts,
                                                                     strict=True)], pa.string()),
    })


def _count_reasons(summary: ImportSummary, reasons: pa.Array | pa.ChunkedArray) -> None:
    for item in pc.value_counts(reasons).to_pylist():
        summary.reasons[item["values"]] = summary.reasons.get(item["values"], 0) + item["counts"]


EVENT_REJECTS = pa.schema([("row", pa.int64()), ("line", pa.int64()), ("reason", pa.string()),
                           ("value", pa.string()), ("identity", pa.string()),
                           ("name", pa.string()), ("message_id", pa.string()),
                           ("properties", pa.string())])
PROFILE_REJECTS = pa.schema([("row", pa.int64()), ("line", pa.int64()), ("reason", pa.string()),
                             ("identity", pa.string()), ("fields", pa.string())])


class _RejectFile:
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
        table = pa.table({f.name: _arrow(table, f.name, f.type) if f.name in table.column_names
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


# --- profiles ------------------------------------------------------------------------


def _import_profiles(propel: Propel, account_id: str, spec: ImportSpec, fmt: str,
                     on_progress: Callable[[int, int], None] | None) -> ImportSummary:
    """Profiles go through the same validation as the APIs (typed email, phone, time
    zone; the rest become properties) and the same dedupe: a re-run of the same file
    within the dedupe window adds nothing, and applying an unchanged profile again
    changes nothing after it."""
    from propel.ingest.records import IngestItem, content_id, key_hash
    from propel.ingest.service import ingest_sync
    from propel.profiles import build_update

    if "identity" not in spec.mapping:
        raise ImportError_("map the identity column: --map identity=COLUMN")
    started = time.perf_counter()
    summary = ImportSummary(reject_path=spec.reject_path)
    fingerprint = _Fingerprint(spec, fmt)
    fingerprint.start()
    con = _connection()
    rejects = _RejectFile(spec.reject_path, PROFILE_REJECTS, summary)
    columns: list[str] = []

    def wanted(cols: list[str]) -> list[str]:
        _check_columns(spec, cols)
        columns.extend(cols)
        return cols

    try:
        src = _open(con, spec, fmt, wanted)
        id_col = spec.mapping["identity"]
        # Mapped columns under their field names, the others under their own names.
        named = {c: c for c in columns if c != id_col}
        for f, c in spec.mapping.items():
            if f != "identity":
                named[c] = f
        fields = [(f, c) for c, f in named.items()]
        total = _estimated_rows(con, spec, fmt, src, fingerprint)
        fingerprint.result()
        scope = orjson.dumps(sorted(spec.mapping.items())).decode()
        bad = f"{src.bad} AS bad, {src.bad_value} AS bad_value" if src.bad else \
            "false AS bad, NULL AS bad_value"
        reader = con.sql(f"SELECT {_text(src, id_col)} AS identity, "
                         f"{_json_object(src, fields)} AS fields, {bad} FROM {src.view}"
                         ).to_arrow_reader(PROFILE_BATCH)
        for batch in reader:
            items, bad = [], []
            for offset, (identity, text, unreadable, shown) in enumerate(zip(
                    *(c.to_pylist() for c in batch.columns), strict=True)):
                row = summary.rows + offset + 1
                if unreadable:
                    bad.append({"row": row, "reason": "json: not valid JSON",
                                "identity": None, "fields": shown})
                    continue
                values = orjson.loads(text)
                try:
                    update = build_update(identity or None, values)
                except Invalid as exc:
                    bad.append({"row": row, "reason": f"{exc.field}: {exc.reason}",
                                "identity": identity, "fields": text})
                    continue
                record = {"mapping": scope, "identity": identity, "fields": values}
                items.append(IngestItem(key_hash=key_hash(account_id, content_id(record)),
                                        profile=update))
            result = _ingest_retrying(lambda items=items: ingest_sync(
                propel.db, account_id, items, [], "import"))
            summary.accepted += result.accepted
            summary.already_imported += result.duplicates
            summary.rows += batch.num_rows
            if bad:
                rejects.add(pa.Table.from_pylist(bad, schema=PROFILE_REJECTS))
            if on_progress:
                on_progress(summary.rows, max(total, summary.rows))
        if src.csv_rejects and (unreadable := _csv_rejects(con)) is not None:
            rejects.add(unreadable.rename_columns(["line", "reason", "fields"]))
            summary.rows += unreadable.num_rows
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name}: {_short(exc)}") from None
    finally:
        con.close()
        rejects.close()
    if on_progress:
        on_progress(summary.rows, summary.rows)
    summary.seconds = time.perf_counter() - started
    return summary


def _ingest_retrying(call: Callable[[], Any], attempts: int = 5) -> Any:
    """Every profile write is idempotent (dedupe keys), so a busy database is retried."""
    for attempt in range(attempts):
        try:
            return call()
        except DatabaseBusy:
            if attempt == attempts - 1:
                raise ImportError_("the database stayed busy; run the same import again "
                                   "(profiles already imported are skipped)") from None
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")
