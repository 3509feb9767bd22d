"""The event side of the audience index: counts per (identity, event, UTC day) from one
pinned lake version, plus the ``recent_events`` rows above it read at query time.

"Did Added To Cart at least twice in the last 7 days" then reads only the rollup rows
of that event and those days: the rollup is sorted by (event, day), so the rows are one
contiguous slice per segment, found by binary search, and counted per user with
``np.bincount``. Conditions the rollup cannot answer (property filters, windows that
do not start and end at UTC midnight) scan the pinned lake version itself, with the
account and the days pruned by partition.

Exactly once: the rollup reflects lake version V; the flusher's transaction version
T recorded in V says which ``recent_events`` batches V holds, so adding the recent rows
of batches above T (or unclaimed) counts every event once, the reader contract of
``propel.lake.reader``. A new lake version is folded in incrementally (only files V
did not have are read); when files were removed (compaction), the rollup is rebuilt.

Identities are kept as sent (raw ids); aliases are applied at query time through
``row_of`` (raw id -> profile row), so a merge never requires rewriting the rollup.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable
from sqlalchemy import or_, select

from propel.db.engine import Database
from propel.ingest.tables import recent_events
from propel.lake.flush import rows_to_arrow
from propel.lake.reader import duckdb_connection
from propel.lake.store import FLUSHER_APP
from propel.predictions.features import json_text, lit

from .rules import DAY_US, EventCond, PropertyCond

OFFSET = 1 << 30  # keeps (day + OFFSET) positive in the low 32 bits of a key
MAX_SEGMENTS = 8
EAGER_TOTALS = 16  # events whose per-user totals are computed when the rollup is built
_RECENT_COLUMNS = [recent_events.c.account_id, recent_events.c.kind,
                   recent_events.c.message_id, recent_events.c.identity,
                   recent_events.c.name, recent_events.c.ts, recent_events.c.received_at,
                   recent_events.c.source, recent_events.c.properties]


@dataclass(frozen=True)
class Segment:
    key: np.ndarray  # int64, sorted: event id << 32 | (day + OFFSET)
    rid: np.ndarray  # int32 raw identity id
    n: np.ndarray  # int32 events that day


@dataclass
class EventState:
    version: int | None  # the pinned lake version (None: no lake yet)
    flushed_through: int  # the flusher's batch number recorded in that version
    paths: frozenset[str]  # the account's data files in that version
    dataset: ds.Dataset | None  # the account's events in that version, for scans
    names: dict[str, int]  # event name -> id
    raw_ids: np.ndarray  # rid -> identity as sent (object)
    raw_index: pd.Index  # identity -> rid
    segments: tuple[Segment, ...]
    generation: int  # changes whenever raw ids are added
    days: tuple[tuple[int, Any], ...] = ()  # (day, fragment) of every file, for scans
    root: str | None = None  # the table's folder when it is on local disk
    _totals: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def day_range(self, ev: int) -> tuple[int, int] | None:
        """First and last day holding event ``ev`` (None if never)."""
        lo_key, hi_key = ev << 32, (ev + 1) << 32
        first = last = None
        for seg in self.segments:
            lo, hi = np.searchsorted(seg.key, [lo_key, hi_key])
            if lo < hi:
                d0, d1 = int(seg.key[lo] & 0xFFFFFFFF) - OFFSET, int(seg.key[hi - 1]
                                                                      & 0xFFFFFFFF) - OFFSET
                first = d0 if first is None else min(first, d0)
                last = d1 if last is None else max(last, d1)
        return None if first is None else (first, last)

    def totals(self, ev: int) -> np.ndarray:
        """Events of ``ev`` per raw id over all days (an index, built on first use)."""
        found = self._totals.get(ev)
        if found is not None:
            return found
        with self._lock:
            if ev not in self._totals:
                out = np.zeros(len(self.raw_ids), dtype=np.int64)
                for seg in self.segments:
                    lo, hi = np.searchsorted(seg.key, [ev << 32, (ev + 1) << 32])
                    if lo < hi:
                        out += np.bincount(seg.rid[lo:hi], weights=seg.n[lo:hi],
                                           minlength=len(out)).astype(np.int64)
                self._totals[ev] = out.astype(np.int32)
            return self._totals[ev]


def empty_state() -> EventState:
    return EventState(None, 0, frozenset(), None, {}, np.zeros(0, dtype=object),
                      pd.Index([], dtype=object), (), 0)


def _day_key(ev: int, day: int) -> int:
    return (ev << 32) | (day + OFFSET)


def _rollup(dataset: ds.Dataset | pa.Table, state: EventState
            ) -> tuple[Segment | None, dict[str, int], np.ndarray, pd.Index]:
    """Counts per (raw id, event, day) of a dataset, with ids and names appended to
    the state's (returns the segment and the grown name map, raw ids and index)."""
    con = duckdb_connection()
    try:
        con.register("_src", dataset)
        con.execute(
            "CREATE TEMP TABLE agg AS SELECT identity, name, "
            "CAST(epoch_us(ts) // 86400000000 AS INTEGER) AS day, "
            "CAST(count(*) AS INTEGER) AS n FROM _src WHERE kind = 'event' GROUP BY ALL")
        idents = con.sql("SELECT DISTINCT identity FROM agg").to_arrow_table().column(0)
        names = [r[0] for r in con.execute("SELECT DISTINCT name FROM agg ORDER BY name"
                                           ).fetchall()]
        known = dict(state.names)
        for name in names:
            known.setdefault(name, len(known))
        ident_arr = np.asarray(idents.to_numpy(zero_copy_only=False), dtype=object)
        rids = state.raw_index.get_indexer(ident_arr) if len(state.raw_index) else \
            np.full(len(ident_arr), -1)
        new = rids < 0
        raw_ids, raw_index = state.raw_ids, state.raw_index
        if new.any():
            rids[new] = np.arange(len(raw_ids), len(raw_ids) + int(new.sum()))
            raw_ids = np.concatenate([raw_ids, ident_arr[new]])
            raw_index = pd.Index(raw_ids, dtype=object)
        con.register("_ids", pa.table({"identity": idents,
                                       "rid": pa.array(rids.astype(np.int32))}))
        con.register("_names", pa.table({"name": pa.array(list(known), pa.string()),
                                         "ev": pa.array(list(known.values()), pa.int64())}))
        out = con.execute(
            f"SELECT (m.ev << 32) | (a.day + {OFFSET}) AS key, i.rid, a.n FROM agg a "
            "JOIN _ids i USING (identity) JOIN _names m USING (name) ORDER BY key, i.rid"
        ).fetchnumpy()
    finally:
        con.close()
    if not len(out["key"]):
        return None, known, raw_ids, raw_index
    segment = Segment(out["key"].astype(np.int64), out["rid"].astype(np.int32),
                      out["n"].astype(np.int32))
    return segment, known, raw_ids, raw_index


def _merge(segments: tuple[Segment, ...]) -> Segment:
    key = np.concatenate([s.key for s in segments])
    order = np.argsort(key, kind="stable")
    return Segment(key[order], np.concatenate([s.rid for s in segments])[order],
                   np.concatenate([s.n for s in segments])[order])


def _day_of(fragment: Any) -> int:
    day = ds.get_partition_keys(fragment.partition_expression)["event_date"]
    return (day - date(1970, 1, 1)).days


def _local_root(table: DeltaTable) -> str | None:
    uri = table.table_uri
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return uri if "://" not in uri and os.path.isdir(uri) else None


def _fragments(dataset: ds.Dataset, account_id: str) -> list[Any]:
    return list(dataset.get_fragments(filter=ds.field("account_id") == account_id))


def _subset(dataset: ds.Dataset, fragments: list[Any]) -> ds.Dataset:
    return ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)


def refresh(state: EventState, table: DeltaTable, account_id: str) -> EventState:
    """The state at the table's version: unchanged if it is the version pinned, else
    with the new files folded in (or rebuilt if files were removed)."""
    version = table.version()
    if version == state.version:
        return state
    dataset = table.to_pyarrow_dataset()
    fragments = _fragments(dataset, account_id)
    paths = frozenset(f.path for f in fragments)
    flushed = table.transaction_version(FLUSHER_APP) or 0
    scoped = _subset(dataset, fragments)
    if state.version is None or not state.paths <= paths:
        base = empty_state()
        new_fragments = fragments
        segments: tuple[Segment, ...] = ()
    else:
        base = state
        new_fragments = [f for f in fragments if f.path not in state.paths]
        segments = state.segments
    names, raw_ids, raw_index = base.names, base.raw_ids, base.raw_index
    if new_fragments:
        seg, names, raw_ids, raw_index = _rollup(_subset(dataset, new_fragments), base)
        if seg is not None:
            segments = segments + (seg,)
        if len(segments) > MAX_SEGMENTS:
            segments = (_merge(segments),)
    grown = len(raw_ids) != len(base.raw_ids) or base is not state
    days = tuple((_day_of(f), f) for f in fragments)
    out = EventState(version, flushed, paths, scoped, names, raw_ids, raw_index, segments,
                     state.generation + 1 if grown else state.generation, days,
                     _local_root(table), {} if segments is not state.segments
                     else state._totals)
    if segments is not state.segments:
        # totals of the biggest events are part of the build, not of the first query
        sizes = {ev: sum(int(np.diff(np.searchsorted(seg.key, [ev << 32, (ev + 1) << 32]))[0])
                         for seg in segments) for ev in names.values()}
        for ev in sorted(sizes, key=lambda e: -sizes[e])[:EAGER_TOTALS]:
            out.totals(ev)
    return out


def recent(db: Database, state: EventState, account_id: str, names: list[str]) -> pa.Table:
    """The account's events of ``names`` in ``recent_events`` that the pinned version
    does not hold (batch above its flushed-through number, or not yet claimed)."""
    query = select(*_RECENT_COLUMNS).where(
        recent_events.c.account_id == account_id, recent_events.c.kind == "event",
        recent_events.c.name.in_(names),
        or_(recent_events.c.batch_no.is_(None),
            recent_events.c.batch_no > state.flushed_through))
    with db.read() as conn:
        rows = conn.execute(query).all()
    return rows_to_arrow(rows)


def rollup_mask(state: EventState, event: str, window: tuple[int | None, int | None],
                row_of: np.ndarray, size: int, min_count: int,
                extra: np.ndarray | None = None) -> np.ndarray:
    """Profile rows with at least ``min_count`` events ``event`` in the day-aligned
    window (plus ``extra`` counts per row, e.g. from recent rows).

    ``row_of`` maps raw ids to profile rows, ``size`` where there is none (so no
    filtering pass is needed: that slot is cut off at the end). The cheapest of three
    ways is taken: mark the rows of the window's slice ("at least once"), count the
    slice, or, for a window holding most of the event's rows, count the complement
    and subtract it from the per-user totals."""
    ev = state.names.get(event)
    span = state.day_range(ev) if ev is not None else None
    if ev is None or span is None:
        counts = extra if extra is not None else np.zeros(size, dtype=np.int64)
        return counts >= min_count
    start, until = window
    lo_key = _day_key(ev, start // DAY_US) if start is not None else ev << 32
    hi_key = _day_key(ev, until // DAY_US) if until is not None else (ev + 1) << 32
    inside: list[tuple[Segment, int, int]] = []
    outside: list[tuple[Segment, int, int]] = []
    rows_in = rows_all = 0
    for seg in state.segments:
        first, lo, hi, last = np.searchsorted(seg.key, [ev << 32, lo_key, hi_key,
                                                        (ev + 1) << 32])
        inside.append((seg, int(lo), int(hi)))
        outside += [(seg, int(first), int(lo)), (seg, int(hi), int(last))]
        rows_in += int(hi - lo)
        rows_all += int(last - first)
    if min_count == 1 and extra is None and rows_in * 2 <= rows_all:
        hit = np.zeros(size + 1, dtype=bool)
        for seg, lo, hi in inside:
            hit[row_of[seg.rid[lo:hi]]] = True
        return hit[:size]
    if rows_in * 2 > rows_all:
        counts = np.bincount(row_of, weights=state.totals(ev), minlength=size + 1)
        for seg, lo, hi in outside:
            if lo < hi:
                counts -= np.bincount(row_of[seg.rid[lo:hi]], weights=seg.n[lo:hi],
                                      minlength=size + 1)
    else:
        counts = np.zeros(size + 1)
        for seg, lo, hi in inside:
            if lo < hi:
                counts += np.bincount(row_of[seg.rid[lo:hi]], weights=seg.n[lo:hi],
                                      minlength=size + 1)
    out = np.rint(counts[:size]).astype(np.int64)
    if extra is not None:
        out += extra
    return out >= min_count


def day_aligned(window: tuple[int | None, int | None]) -> bool:
    return all(w is None or w % DAY_US == 0 for w in window)


# --- scans ---------------------------------------------------------------------------


def _date(text: str) -> str:
    return (f"CASE WHEN regexp_matches({text}, '^\\d{{4}}-\\d{{2}}-\\d{{2}}') THEN "
            f"epoch_us(TRY_CAST({text} AS TIMESTAMPTZ)) END")


def _equals(text: str, value: Any) -> str:
    if isinstance(value, bool):
        return f"{text} = {lit('true' if value else 'false')}"
    if isinstance(value, int | float):
        return f"TRY_CAST({text} AS DOUBLE) = {lit(float(value))}"
    return f"{text} = {lit(str(value))}"


def condition_sql(cond: PropertyCond) -> str:
    """One property condition over an event's ``properties``, never NULL; the same
    semantics as the profile side (see the package docstring)."""
    text = json_text(cond.property)
    num = f"TRY_CAST({text} AS DOUBLE)"
    op = cond.op
    if op == "is set":
        sql = f"{text} IS NOT NULL"
    elif op == "is not set":
        sql = f"{text} IS NULL"
    elif op in ("=", "in"):
        sql = " OR ".join(f"({_equals(text, v)})" for v in cond.values)
    elif op in ("!=", "not in"):
        any_ = " OR ".join(f"({_equals(text, v)})" for v in cond.values)
        sql = f"{text} IS NOT NULL AND NOT coalesce({any_}, FALSE)"
    elif op == "contains":
        sql = f"contains(lower({text}), {lit(str(cond.values[0]).lower())})"
    elif op == "not contains":
        sql = (f"{text} IS NOT NULL AND NOT contains(lower({text}), "
               f"{lit(str(cond.values[0]).lower())})")
    elif cond.from_us is not None or cond.until_us is not None:
        date_ = _date(text)
        parts = []
        if cond.from_us is not None:
            parts.append(f"{date_} >= {cond.from_us}")
        if cond.until_us is not None:
            parts.append(f"{date_} < {cond.until_us}")
        sql = " AND ".join(parts)
    else:
        parts = []
        if cond.low is not None:
            parts.append(f"{num} {'>' if cond.low_strict else '>='} {lit(cond.low)}")
        if cond.high is not None:
            parts.append(f"{num} {'<' if cond.high_strict else '<='} {lit(cond.high)}")
        sql = " AND ".join(parts)
    return f"coalesce(({sql}), FALSE)"


def _scan_where(cond: EventCond, window: tuple[int | None, int | None], dates: bool) -> str:
    parts = ["kind = 'event'", f"name = {lit(cond.event)}"]
    start, until = window
    if start is not None:
        parts.append(f"ts >= make_timestamptz({start})")
        if dates:
            day = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=start)).date()
            parts.append(f"event_date >= DATE {lit(day.isoformat())}")
    if until is not None:
        parts.append(f"ts < make_timestamptz({until})")
        if dates:
            last = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=until - 1)).date()
            parts.append(f"event_date <= DATE {lit(last.isoformat())}")
    parts += [condition_sql(c) for c in cond.where]
    return " AND ".join(parts)


def scan_counts(state: EventState, cond: EventCond, window: tuple[int | None, int | None],
                recent_rows: pa.Table | None, lake: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(identities as sent, counts) of events matching the condition in the pinned
    lake version (when ``lake``) and in the given recent rows."""
    con = duckdb_connection()
    idents: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    try:
        con.execute("SET TimeZone = 'UTC'")
        sources = []
        if lake and state.dataset is not None:
            source = _lake_source(state, window)
            if source is not None:
                if isinstance(source, list):
                    con.execute("CREATE TEMP VIEW _lake AS SELECT * FROM read_parquet("
                                + lit_list(source) + ")")
                else:
                    con.register("_lake", source)
                sources.append(("_lake", False))
        if recent_rows is not None and recent_rows.num_rows:
            con.register("_recent", recent_rows)
            sources.append(("_recent", False))
        for name, dates in sources:
            out = con.execute(
                f"SELECT identity, count(*) AS n FROM {name} "
                f"WHERE {_scan_where(cond, window, dates)} GROUP BY identity").fetchnumpy()
            idents.append(np.asarray(out["identity"], dtype=object))
            counts.append(np.asarray(out["n"], dtype=np.int64))
    finally:
        con.close()
    if not idents:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64)
    return np.concatenate(idents), np.concatenate(counts)


def lit_list(values: list[str]) -> str:
    return "[" + ", ".join(lit(v) for v in values) + "]"


def _lake_source(state: EventState, window: tuple[int | None, int | None]
                 ) -> list[str] | ds.Dataset | None:
    """The pinned version's files of the window's days: paths for DuckDB's own Parquet
    reader when the lake is on local disk (about twice as fast as scanning through
    Arrow), else an Arrow dataset of those files; None when no file can match."""
    start, until = window
    first = None if start is None else start // DAY_US
    last = None if until is None else (until - 1) // DAY_US
    chosen = [f for day, f in state.days
              if (first is None or day >= first) and (last is None or day <= last)]
    if not chosen:
        return None
    if state.root is not None:
        return [os.path.join(state.root, f.path) for f in chosen]
    assert state.dataset is not None
    return _subset(state.dataset, chosen)

