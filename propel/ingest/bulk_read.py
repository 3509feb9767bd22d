"""Recognising and opening the file of a bulk import: its format (from the name or
--format), the DuckDB connection and the view ``src`` over CSV, whitespace-separated
text, JSON lines or Parquet with what its columns hold, the CSV lines the reader could not
split, and the fingerprint of the file (content hash and line count)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from propel.ingest.bulk_spec import RESERVED, ImportError_, ImportSpec, short_error
from propel.lake.reader import duckdb_connection

SAMPLE_ROWS = 20_480  # rows a CSV column's type (or the keys of JSON lines) is read from
MAX_LINE_BYTES = 64 << 20
FORMATS = {".csv": "csv", ".tsv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
FORMAT_ALIASES = {"csv": "csv", "tsv": "csv", "txt": "csv", "jsonl": "jsonl", "ndjson": "jsonl",
                  "json": "jsonl", "parquet": "parquet", "pq": "parquet"}
JSON_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"


# --- reading the file ------------------------------------------------------------


@dataclass
class Source:
    view: str
    types: dict[str, str]  # column -> DuckDB type in the view
    looks: dict[str, str]  # column -> what its values look like (CSV text: from a sample)
    text: bool  # every value is text (CSV): types come from ``looks``
    json: bool  # property values are JSON already (JSON lines)
    csv_rejects: bool = False  # the reader keeps unreadable lines in reject_errors
    bad: str | None = None  # SQL true for a row that is not readable (JSON lines)
    bad_value: str | None = None  # SQL for what to show of such a row


def file_format(spec: ImportSpec) -> str:
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


def check_file(spec: ImportSpec) -> None:
    path = spec.path
    if not path.exists():
        raise ImportError_(f"no file {path}")
    if path.is_dir():
        raise ImportError_(f"{path} is a folder; give a file")
    if not os.access(path, os.R_OK):
        raise ImportError_(f"cannot read {path}: permission denied")
    if spec.reject_path is not None and spec.reject_path.resolve() == path.resolve():
        raise ImportError_("the reject file cannot be the imported file")


def import_connection() -> duckdb.DuckDBPyConnection:
    con = duckdb_connection()
    for setting in ("SET TimeZone='UTC'", "SET preserve_insertion_order=true",
                    "SET enable_progress_bar=false"):
        con.execute(setting)
    return con


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    # fetchall(): this DuckDB keeps a result open until it is read to the end.
    return con.execute(sql).fetchall()


def _describe(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, str]:
    return {r[0]: r[1] for r in sql_rows(con, f"DESCRIBE {relation}")}


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
        q = quote(c)
        checks.append(f"bool_and({q} IS NULL OR regexp_full_match({q}, {lit(JSON_NUMBER)}))")
        checks.append(f"bool_and({q} IS NULL OR lower({q}) IN ('true', 'false'))")
        checks.append(f"count({q})")
    row = sql_rows(con, f"SELECT {', '.join(checks)} FROM (SELECT * FROM {relation} "
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
               wanted: Callable[[list[str]], list[str]]) -> Source:
    """JSON lines are read line by line, so a malformed line is one rejected row rather
    than the end of the import; a JSON array (or pretty-printed JSON) is read whole."""
    con.execute(f"CREATE VIEW _lines AS SELECT line FROM {_lines(path)} "
                "WHERE line IS NOT NULL AND trim(line) <> ''")
    keys: dict[str, None] = {}
    valid = 0
    for (line,) in sql_rows(con, f"SELECT line FROM _lines LIMIT {SAMPLE_ROWS}"):
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
        cols = ", ".join(f"_r.{quote(c)} AS {quote(c)}" for c in read) or "NULL AS _none"
        con.execute(f"CREATE VIEW src AS SELECT {cols}, _r IS NULL AS _bad, line AS _line "
                    f"FROM (SELECT TRY(from_json(line, {lit(struct)})) AS _r, line FROM _lines)")
        types = _describe(con, "src")
        return Source("src", types, types, text=False, json=True, bad="_bad",
                      bad_value="left(_line, 200)")
    try:
        found = list(_describe(con, f"(SELECT * FROM read_json_auto({path}, format='auto'))"))
    except duckdb.Error as exc:
        raise ImportError_(f"cannot read {spec.path.name} as JSON lines: {short_error(exc)}"
                           ) from None
    read = wanted(found)
    cols = ", ".join(f"{lit(c)}: {lit('VARCHAR' if c in text else 'JSON')}" for c in read)
    con.execute(f"CREATE VIEW src AS SELECT * FROM read_json({path}, format='auto', "
                f"columns={{{cols}}})")
    types = _describe(con, "src")
    return Source("src", types, types, text=False, json=True)


def open_source(con: duckdb.DuckDBPyConnection, spec: ImportSpec, fmt: str,
                wanted: Callable[[list[str]], list[str]]) -> Source:
    """Create view ``src`` over the file. ``wanted(columns)`` validates the mapping against
    the file's columns and returns the columns to read."""
    path = lit(str(spec.path))
    if fmt == "parquet":
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet({path})")
        types = _describe(con, "src")
        wanted(list(types))
        return Source("src", types, types, text=False, json=False)
    if fmt == "jsonl":
        return _open_json(con, spec, path, wanted)
    if spec.delimiter == "whitespace":
        names, skip = _header_fields(spec.path) if spec.header else ([], 0)
        con.execute(f"CREATE VIEW _lines AS SELECT string_split_regex(trim(line), '\\s+') AS f "
                    f"FROM {_lines(path, skip)} WHERE trim(line) <> ''")
        width = sql_rows(con, f"SELECT max(len(f)) FROM (SELECT f FROM _lines LIMIT {SAMPLE_ROWS})"
                         )[0][0] or 0
        names += [f"column{i}" for i in range(len(names), max(width, len(names)))]
        cols = ", ".join(f"f[{i + 1}] AS {quote(n)}" for i, n in enumerate(names))
        con.execute(f"CREATE VIEW src AS SELECT {cols or 'NULL AS column0'} FROM _lines")
        types = _describe(con, "src")
        read = wanted(list(types))
        return Source("src", types, _looks(con, "src", read), text=True, json=False)
    opts = [f"header={'true' if spec.header else 'false'}"]
    if (delim := _delimiter(spec)) is not None:
        opts.append(f"delim={lit(delim)}")
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
        renamed = ", ".join(f"{quote(c)} AS column{i}" for i, c in enumerate(types))
        con.execute(f"CREATE VIEW src2 AS SELECT {renamed} FROM src")
        types = _describe(con, "src2")
        return Source("src2", types, _looks(con, "src2", read), text=True, json=False,
                      csv_rejects=True)
    return Source("src", types, _looks(con, "src", read), text=True, json=False,
                  csv_rejects=True)


def csv_rejects(con: duckdb.DuckDBPyConnection) -> pa.Table | None:
    """Lines the CSV reader could not split, with their file line numbers."""
    try:
        # The last scan is the import's (sampling the file scanned its start before).
        rows = sql_rows(con, "SELECT DISTINCT line, error_type, error_message, csv_line "
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


# --- fingerprint and progress ------------------------------------------------------


class Fingerprint(threading.Thread):
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


def estimated_rows(con: duckdb.DuckDBPyConnection, spec: ImportSpec, fmt: str, src: Source,
                   fp: Fingerprint) -> int:
    if fmt == "parquet":  # from the file's metadata
        return sql_rows(con, f"SELECT count(*) FROM {src.view}")[0][0]
    fp.join()
    header = 1 if fmt == "csv" and spec.header else 0
    return max(0, fp.lines - header)
