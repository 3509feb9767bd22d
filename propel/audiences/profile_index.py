"""The profile side of the audience index: one row per profile, properties flattened
into typed numpy columns, so a condition over a million users is a vectorised compare
(a few milliseconds) instead of parsing JSON per row.

Text values are dictionary-encoded: ``codes[row]`` is 0 when the property is not set,
else 1 + its position in ``dictionary``. A text condition is evaluated once per
*distinct* value (``=``, ``in``, ``contains`` build a lookup table over the
dictionary) and then gathered per row, which makes ``contains`` on a country or a
plan as cheap as an integer compare. Numbers are float64 with NaN for "not set";
dates are epoch microseconds with ``NOT_SET`` for "not set".

States are immutable snapshots (copy on write): a refresh builds a new state while
queries keep reading the old one, so readers never take a lock. The one exception is
the lazily built property columns, a cache of pure functions of the state's raw data.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from propel.lake.reader import duckdb_connection
from propel.predictions.features import lit

NOT_SET = np.iinfo(np.int64).min
EAGER_KEYS = 64  # the most common property keys are flattened at build; others on use
CONSENT_CHANNELS = ("email", "sms", "push", "whatsapp")
SYSTEM_TEXT = ("email", "phone", "timezone")
PROFILE_COLUMNS = ("identity", "email", "phone", "timezone", "push_tokens", "consent",
                   "properties", "created_at", "updated_at")
_DATE_LIKE = r"^\d{4}-\d{2}-\d{2}"
_EXTRACT_BATCH = 32


@dataclass(frozen=True)
class Text:
    """A dictionary-encoded text column."""

    codes: np.ndarray  # int32 per row, 0 = not set
    dictionary: pa.Array  # string; code c means dictionary[c - 1]
    _lowered: list[pa.Array] = field(default_factory=list, compare=False, repr=False)

    def lowered(self) -> pa.Array:
        if not self._lowered:
            self._lowered.append(pc.utf8_lower(self.dictionary))
        return self._lowered[0]

    def gather(self, lut: np.ndarray) -> np.ndarray:
        """Per-row mask from a per-dictionary-entry mask (entry 0 = not set = False)."""
        full = np.zeros(len(lut) + 1, dtype=bool)
        full[1:] = lut
        return full[self.codes]

    def equals(self, value: str) -> np.ndarray:
        found = pc.index(self.dictionary, value).as_py()
        if found < 0:
            return np.zeros(len(self.codes), dtype=bool)
        return self.codes == found + 1

    def is_in(self, values: list[str]) -> np.ndarray:
        if len(values) == 1:
            return self.equals(values[0])
        lut = pc.is_in(self.dictionary, value_set=pa.array(values, pa.string()))
        return self.gather(lut.to_numpy(zero_copy_only=False))

    def contains(self, needle: str) -> np.ndarray:
        lowered = pc.utf8_lower(pa.scalar(needle, pa.string())).as_py()
        return self.gather(substring_lut(self.lowered(), lowered))

    def is_set(self) -> np.ndarray:
        return self.codes != 0

    def decode(self, rows: np.ndarray) -> list[str | None]:
        codes = self.codes[rows]
        values = self.dictionary.take(pa.array(np.maximum(codes - 1, 0), pa.int32())
                                      ) if len(self.dictionary) else None
        if values is None:
            return [None] * len(rows)
        return [v if c else None for v, c in zip(values.to_pylist(), codes.tolist(),
                                                 strict=True)]


BIG_DICTIONARY = 20_000


def substring_lut(values: pa.Array, needle: str) -> np.ndarray:
    """Which strings of ``values`` contain ``needle`` (bytewise; both already
    lower-cased). A dictionary of near-unique values (e-mail addresses) is searched as
    one byte buffer with numpy: candidate positions of the needle's rarest byte, then
    narrowed byte by byte and mapped back to their strings, several times faster than
    matching string by string. UTF-8 makes a byte match a character match."""
    n = len(values)
    if n < BIG_DICTIONARY or values.null_count or values.type != pa.string():
        found = pc.match_substring(values, needle)
        return found.fill_null(False).to_numpy(zero_copy_only=False)
    pattern = needle.encode()
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[
        values.offset:values.offset + n + 1]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    offsets = offsets - offsets[0]
    m = len(pattern)
    if m == 0:
        return np.ones(n, dtype=bool)
    counts = np.bincount(data[:: max(1, len(data) // 200_000)], minlength=256)
    anchor = min(range(m), key=lambda j: counts[pattern[j]])
    cand = np.flatnonzero(data == pattern[anchor]) - anchor
    cand = cand[(cand >= 0) & (cand <= len(data) - m)]
    for j in range(m):
        if j != anchor and len(cand):
            cand = cand[data[cand + j] == pattern[j]]
    entry = np.searchsorted(offsets, cand, side="right") - 1
    inside = cand + m <= offsets[entry + 1]
    out = np.zeros(n, dtype=bool)
    out[entry[inside]] = True
    return out


def encode(values: pa.Array, dictionary: pa.Array | None = None) -> tuple[np.ndarray, pa.Array]:
    """Codes of ``values`` (nulls -> 0) against ``dictionary``, which grows by the
    values it lacks; returns (codes, dictionary)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(pa.string())
    if dictionary is None:
        encoded = pc.dictionary_encode(values)
        codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
        return codes + 1, encoded.dictionary.cast(pa.string())
    index = pc.index_in(values, value_set=dictionary)
    missing = pc.and_(pc.is_null(index), pc.is_valid(values))
    if pc.any(missing).as_py():
        extra = pc.unique(pc.filter(values, missing))
        dictionary = pa.concat_arrays([dictionary, extra.cast(pa.string())])
        index = pc.index_in(values, value_set=dictionary)
    codes = index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
    return codes + 1, dictionary


@dataclass(frozen=True)
class Prop:
    """One property as text, number and date at once, so every operator has the view
    it needs: ``contains`` reads text, ``>`` numbers, ``before`` dates."""

    text: Text | None  # None for number- or date-only views (scores, created_at)
    num: np.ndarray | None  # float64, NaN = not set or not a number
    date: np.ndarray | None  # int64 epoch us, NOT_SET = not set or not a date
    _kind: list[str] = field(default_factory=list, compare=False, repr=False)

    def kind(self) -> str:
        """string | number | boolean | date | list | object: what every set value is
        (computed on demand: only the property list needs it)."""
        if not self._kind:
            self._kind.append(_kind_of(self.text, self.num, self.date))
        return self._kind[0]


def _kind_of(text: Text | None, num: np.ndarray | None, date: np.ndarray | None) -> str:
    if text is None:
        return "number" if num is not None else "date"
    is_set = int(np.count_nonzero(text.codes))
    if not is_set:
        return "string"
    if num is not None and int(np.count_nonzero(~np.isnan(num))) == is_set:
        return "number"
    if date is not None and int(np.count_nonzero(date != NOT_SET)) == is_set:
        return "date"
    used = np.unique(text.codes[text.codes > 0]) - 1
    sample = text.dictionary.take(pa.array(used[:1000], pa.int64())).to_pylist()
    if sample and all(v in ("true", "false") for v in sample):
        return "boolean"
    if sample and all(v[:1] == "[" for v in sample):
        return "list"
    if sample and all(v[:1] == "{" for v in sample):
        return "object"
    return "string"


def _path(key: str) -> str:
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def extract(raw: pa.Array, keys: list[str]) -> dict[str, tuple[pa.Array, np.ndarray,
                                                               np.ndarray]]:
    """Per key: (text, number, date) of every row of ``raw`` (JSON objects), parsed once
    per row by DuckDB. Text is the JSON string itself, or the JSON text of any other
    value (``12.5``, ``true``, ``[1,2]``); numbers are what TRY_CAST makes of the text
    (so ``"42"`` is 42), dates what an ISO date or timestamp text means in UTC."""
    out: dict[str, tuple[pa.Array, np.ndarray, np.ndarray]] = {}
    if not keys:
        return out
    con = duckdb_connection()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("_raw", pa.table({"properties": raw}))
        for start in range(0, len(keys), _EXTRACT_BATCH):
            batch = keys[start:start + _EXTRACT_BATCH]
            paths = "[" + ", ".join(lit(_path(k)) for k in batch) + "]"
            cols = []
            for i in range(len(batch)):
                v = f"v[{i + 1}]"
                cols += [f"{v} AS s{i}", f"TRY_CAST({v} AS DOUBLE) AS n{i}",
                         f"CASE WHEN regexp_matches({v}, {lit(_DATE_LIKE)}) THEN "
                         f"epoch_us(TRY_CAST({v} AS TIMESTAMPTZ)) END AS d{i}"]
            table = con.sql(
                f"SELECT {', '.join(cols)} FROM (SELECT json_extract_string(properties, "
                f"{paths}) AS v FROM _raw)").to_arrow_table()
            for i, key in enumerate(batch):
                num = table.column(f"n{i}").to_numpy()
                date = table.column(f"d{i}").fill_null(NOT_SET).to_numpy()
                out[key] = (table.column(f"s{i}"), num.astype(np.float64), date)
    finally:
        con.close()
    return out


def _build_prop(text: pa.Array, num: np.ndarray, date: np.ndarray) -> Prop:
    codes, dictionary = encode(text)
    t = Text(codes, dictionary)
    num_col = num if not np.all(np.isnan(num)) else None
    date_col = date if np.any(date != NOT_SET) else None
    return Prop(t, num_col, date_col)


def key_counts(raw: pa.Array) -> dict[str, int]:
    con = duckdb_connection()
    try:
        con.register("_raw", pa.table({"properties": raw}))
        rows = con.execute(
            "SELECT k, count(*) AS n FROM (SELECT unnest(json_keys(properties)) AS k "
            "FROM _raw) GROUP BY k ORDER BY n DESC, k").fetchall()
    finally:
        con.close()
    return {k: int(n) for k, n in rows}


def _system(table: pa.Table) -> pa.Table:
    """Typed system columns of fetched profile rows, by DuckDB (vectorised JSON)."""
    con = duckdb_connection()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("_rows", table)
        consent = ", ".join(
            f"CAST(CASE json_extract_string(consent, {lit('$.' + c)}) WHEN 'true' THEN 1 "
            f"WHEN 'false' THEN 0 ELSE -1 END AS TINYINT) AS c_{c}" for c in CONSENT_CHANNELS)
        return con.sql(
            "SELECT CAST(coalesce(json_array_length(push_tokens), 0) AS SMALLINT) AS push_n, "
            f"{consent} FROM _rows").to_arrow_table()
    finally:
        con.close()


@dataclass
class ProfileState:
    identities: pa.Array  # row -> identity
    pos: pd.Index  # identity -> row
    alive: np.ndarray  # False for a profile deleted since the build (merged away)
    system: dict[str, Text]  # email, phone, timezone
    created: np.ndarray  # int64 epoch us
    push_n: np.ndarray  # int16 push token count
    consent: dict[str, np.ndarray]  # channel -> int8: -1 unset, 0 false, 1 true
    raw: pa.Array  # properties JSON per row
    keys: dict[str, int]  # property key -> rows holding it
    watermark: datetime | None  # max(updated_at) seen
    layout: int  # changes whenever rows are added or removed
    in_order: bool  # rows sorted by identity (true after a full build)
    columns: dict[str, Prop] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def size(self) -> int:
        return len(self.alive)

    @property
    def count(self) -> int:
        return int(np.count_nonzero(self.alive))

    def prop(self, key: str) -> Prop | None:
        """The flattened column of a property key (None if no profile has it)."""
        if key not in self.keys:
            return None
        found = self.columns.get(key)
        if found is not None:
            return found
        with self._lock:
            if key not in self.columns:
                text, num, date = extract(self.raw, [key])[key]
                self.columns[key] = _build_prop(text, num, date)
            return self.columns[key]

    def identity_text(self) -> Text:
        return Text(np.arange(1, self.size + 1, dtype=np.int32), self.identities)

    def rows_of(self, identities: Iterable[str] | np.ndarray) -> np.ndarray:
        """Rows of live profiles for identities (-1 where none)."""
        arr = np.asarray(list(identities) if not isinstance(identities, np.ndarray)
                         else identities, dtype=object)
        if not len(arr):
            return np.zeros(0, dtype=np.int64)
        rows = self.pos.get_indexer(arr)
        ok = rows >= 0
        rows[ok] = np.where(self.alive[rows[ok]], rows[ok], -1)
        return rows


def _rows_to_table(rows: list[Any]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in PROFILE_COLUMNS]
    return pa.table({
        "identity": pa.array(cols[0], pa.string()),
        "email": pa.array(cols[1], pa.string()),
        "phone": pa.array(cols[2], pa.string()),
        "timezone": pa.array(cols[3], pa.string()),
        "push_tokens": pa.array(cols[4], pa.string()),
        "consent": pa.array(cols[5], pa.string()),
        "properties": pa.array(cols[6], pa.string()),
        "created_at": _timestamps(cols[7]),
        "updated_at": _timestamps(cols[8]),
    })


def _timestamps(values: Any) -> pa.Array:
    """UTC timestamps from datetimes, or from the naive UTC text SQLite stores (rows
    read through the driver, without SQLAlchemy's per-row conversion)."""
    if any(isinstance(v, str) for v in values):
        return pa.array(values, pa.string()).cast(pa.timestamp("us")).cast(
            pa.timestamp("us", tz="UTC"))
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def rows_table(chunks: Iterable[list[Any]]) -> pa.Table:
    """Profile rows (as fetched, in PROFILE_COLUMNS order) as one Arrow table."""
    tables = [_rows_to_table(chunk) for chunk in chunks]
    return pa.concat_tables(tables) if tables else _rows_to_table([])


def _max_updated(table: pa.Table) -> datetime | None:
    if not table.num_rows:
        return None
    return pc.max(table.column("updated_at")).as_py()


def build(table: pa.Table) -> ProfileState:
    """A state from every profile of the account (rows in identity order)."""
    table = table.sort_by("identity") if table.num_rows else table
    identities = table.column("identity").combine_chunks()
    system = _system(table)
    raw = table.column("properties").combine_chunks()
    state = ProfileState(
        identities=identities,
        pos=pd.Index(identities.to_numpy(zero_copy_only=False), dtype=object),
        alive=np.ones(table.num_rows, dtype=bool),
        system={name: Text(*encode(table.column(name))) for name in SYSTEM_TEXT},
        created=_epoch_us(table.column("created_at")),
        push_n=system.column("push_n").to_numpy().astype(np.int16),
        consent={c: system.column(f"c_{c}").to_numpy().astype(np.int8)
                 for c in CONSENT_CHANNELS},
        raw=raw,
        keys=key_counts(raw) if table.num_rows else {},
        watermark=_max_updated(table),
        layout=0,
        in_order=True,
    )
    eager = list(state.keys)[:EAGER_KEYS]
    for key, (text, num, date) in extract(raw, eager).items():
        state.columns[key] = _build_prop(text, num, date)
    return state


def _epoch_us(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(col, pa.int64()).fill_null(NOT_SET).to_numpy(zero_copy_only=False)


def _scatter(old: np.ndarray, size: int, rows: np.ndarray, values: np.ndarray,
             fill: Any) -> np.ndarray:
    out = np.full(size, fill, dtype=old.dtype)
    out[:len(old)] = old
    out[rows] = values
    return out


def _scatter_text(old: Text, size: int, rows: np.ndarray, values: pa.Array) -> Text:
    codes, dictionary = encode(values, old.dictionary)
    return Text(_scatter(old.codes, size, rows, codes, 0), dictionary)


def apply(state: ProfileState, table: pa.Table, layout: int) -> ProfileState:
    """A new state with the fetched rows (new or changed profiles) written in."""
    if not table.num_rows:
        return state
    ids = table.column("identity").combine_chunks()
    rows = state.pos.get_indexer(ids.to_numpy(zero_copy_only=False))
    new = rows < 0
    added = int(np.count_nonzero(new))
    size = state.size + added
    rows[new] = np.arange(state.size, size)
    identities, pos = state.identities, state.pos
    if added:
        extra = pc.filter(ids, pa.array(new))
        identities = pa.concat_arrays([identities, extra])
        pos = pos.append(pd.Index(extra.to_numpy(zero_copy_only=False), dtype=object))
    revived = bool(np.any(~state.alive[rows[~new]]))
    alive = _scatter(state.alive, size, rows, np.ones(len(rows), dtype=bool), False)
    system = _system(table)
    raw_old = state.raw
    if added:
        raw_old = pa.concat_arrays([raw_old, pa.nulls(added, pa.string())])
    mask = np.zeros(size, dtype=bool)
    mask[rows] = True
    order = np.argsort(rows, kind="stable")
    raw_new = table.column("properties").combine_chunks().take(pa.array(order))
    raw = pc.replace_with_mask(raw_old, pa.array(mask), raw_new)
    keys = dict(state.keys)
    for key, n in key_counts(table.column("properties").combine_chunks()).items():
        keys[key] = keys.get(key, 0) + n
    columns: dict[str, Prop] = {}
    built = [k for k in state.columns if k in keys]
    for key, (text, num, date) in extract(table.column("properties").combine_chunks(),
                                          built).items():
        old = state.columns[key]
        t = _scatter_text(old.text, size, rows, text)
        n_old = old.num if old.num is not None else np.full(state.size, np.nan)
        d_old = old.date if old.date is not None else np.full(state.size, NOT_SET)
        n_col = _scatter(n_old, size, rows, num, np.nan)
        d_col = _scatter(d_old, size, rows, date, NOT_SET)
        n_col = n_col if not np.all(np.isnan(n_col)) else None
        d_col = d_col if np.any(d_col != NOT_SET) else None
        columns[key] = Prop(t, n_col, d_col)
    watermark = _max_updated(table)
    if state.watermark is not None and (watermark is None or state.watermark > watermark):
        watermark = state.watermark
    return replace(
        state,
        identities=identities, pos=pos, alive=alive,
        system={name: _scatter_text(state.system[name], size, rows, table.column(name))
                for name in SYSTEM_TEXT},
        created=_scatter(state.created, size, rows, _epoch_us(table.column("created_at")),
                         NOT_SET),
        push_n=_scatter(state.push_n, size, rows,
                        system.column("push_n").to_numpy().astype(np.int16), 0),
        consent={c: _scatter(state.consent[c], size, rows,
                             system.column(f"c_{c}").to_numpy().astype(np.int8), -1)
                 for c in CONSENT_CHANNELS},
        raw=raw, keys=keys, watermark=watermark,
        layout=layout if added or revived else state.layout,
        in_order=state.in_order and not added,
        columns=columns, _lock=threading.Lock(),
    )


def keep_only(state: ProfileState, identities: Iterable[str], layout: int) -> ProfileState:
    """A new state in which only the given identities are live (the others were
    deleted from the table, e.g. folded into another profile by a merge)."""
    present = np.zeros(state.size, dtype=bool)
    rows = state.pos.get_indexer(np.asarray(list(identities), dtype=object))
    present[rows[rows >= 0]] = True
    alive = state.alive & present
    if np.array_equal(alive, state.alive):
        return state
    return replace(state, alive=alive, layout=layout, columns=dict(state.columns),
                   _lock=threading.Lock())
