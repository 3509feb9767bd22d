"""The per-account audience index and the rule evaluator over it.

One :class:`AccountIndex` per (Propel object, account), kept in memory (the most
recently used ``MAX_ACCOUNTS``). It mirrors the SQL tables, it never answers from a
cache of results: every count evaluates the whole rule over every profile.

Freshness. Which parts are stale is told by cheap keys:
- predictions: the account's rows of ``predictions`` (id, name, last_scored_at,
  updated_at), a handful of rows, read on every call: a new scoring run (which sets
  ``last_scored_at`` in the transaction that replaces the scores) shows at once;
- profiles: max(updated_at) and count(*) of ``profiles``; aliases: max(created_at) and
  count(*) of ``identity_aliases``; scores written outside a scoring run: max(scored_at)
  and count(*) per prediction of ``user_predictions``. These scan the account's rows
  (seconds per million profiles on SQLite), so a call never waits for them unless it
  asks for ``fresh`` (sends do): once ``RECHECK_SECONDS`` (and ``RECHECK_FACTOR`` times
  the last check's duration) have passed, a call starts a re-check in the background
  and answers from the index as it is;
- events: the lake's version, checked as often as the profile keys; rows not yet in
  the lake are read from ``recent_events`` on every call that has an event condition.
A changed profile key fetches only the profiles updated since the last watermark
(minus ``SLACK``, for PostgreSQL transactions that commit out of timestamp order); a
count that still differs means deletions, found by comparing identity lists.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sqlalchemy import func, select

from propel.core import Propel
from propel.predictions.tables import predictions, user_predictions
from propel.profiles.tables import identity_aliases, profiles

from . import event_index as ev
from . import profile_index as pf
from .rules import AllOf, AnyOf, EventCond, Not, PropertyCond, Reachable, Rule, walk

log = logging.getLogger("propel.audiences")

RECHECK_SECONDS = 1.0
# A re-check that scans a big account's rows waits this many times its own duration
# before the next one, so the background work stays a small share of the CPU.
RECHECK_FACTOR = 5.0
GROUPS = ("High", "Medium", "Low")
SLACK = timedelta(seconds=120)
MAX_ACCOUNTS = 8
_FETCH_ROWS = 50_000
_IN_CHUNK = 500
SYSTEM_PROPERTIES = {"identity": "string", "email": "string", "phone": "string",
                     "timezone": "string", "created_at": "date"}


@dataclass(frozen=True)
class Aliases:
    alias: np.ndarray  # object
    identity: np.ndarray  # object
    index: pd.Index
    version: int

    def resolve(self, identities: np.ndarray) -> np.ndarray:
        """The identity each id now means (itself unless it is an alias)."""
        if not len(self.alias) or not len(identities):
            return identities
        hit = self.index.get_indexer(identities)
        return np.where(hit >= 0, self.identity[np.maximum(hit, 0)], identities)


@dataclass(frozen=True)
class PredictionData:
    id: str
    name: str
    groups: tuple[str, ...]
    identities: np.ndarray  # object
    grp: pa.Array
    score: np.ndarray
    stats: tuple[Any, int]  # (max scored_at, rows), as the freshness key reads them


@dataclass(frozen=True)
class PredColumn:
    id: str
    name: str
    groups: tuple[str, ...]
    group: pf.Text
    score: np.ndarray  # float64, NaN = not scored


@dataclass
class View:
    """Everything one evaluation reads: immutable states, taken under the lock once."""

    db: Any
    account_id: str
    profiles: pf.ProfileState
    aliases: Aliases
    predictions: dict[str, PredColumn]
    events: ev.EventState
    row_of: Callable[[], np.ndarray]  # raw event id -> row (size = no profile)
    _recent: list[pa.Table] = field(default_factory=list)

    # --- properties ----------------------------------------------------------------

    def prop(self, name: str) -> pf.Prop | None:
        pred = self.predictions.get(name)
        if pred is not None:
            return pf.Prop(pred.group, None, None)
        if name.endswith(" score"):
            scored = self.predictions.get(name[: -len(" score")])
            if scored is not None:
                return pf.Prop(None, scored.score, None)
        state = self.profiles
        if name in pf.SYSTEM_TEXT:
            return pf.Prop(state.system[name], None, None)
        if name == "identity":
            return pf.Prop(state.identity_text(), None, None)
        if name == "created_at":
            return pf.Prop(None, None, state.created)
        return state.prop(name)

    def _is_set(self, p: pf.Prop | None) -> np.ndarray:
        size = self.profiles.size
        if p is None:
            return np.zeros(size, dtype=bool)
        if p.text is not None:
            return p.text.is_set()
        if p.num is not None:
            return ~np.isnan(p.num)
        if p.date is not None:
            return p.date != pf.NOT_SET
        return np.zeros(size, dtype=bool)

    def _equals_any(self, p: pf.Prop, values: tuple[Any, ...]) -> np.ndarray:
        out = np.zeros(self.profiles.size, dtype=bool)
        texts: list[str] = []
        numbers: list[float] = []
        for v in values:
            if isinstance(v, bool):
                texts.append("true" if v else "false")
            elif isinstance(v, int | float):
                numbers.append(float(v))
            else:
                texts.append(v)
                if p.text is None:  # a number-only property compared with "80"
                    with contextlib.suppress(ValueError):
                        numbers.append(float(v))
        if texts and p.text is not None:
            out |= p.text.is_in(texts)
        if numbers and p.num is not None:
            out |= np.isin(p.num, np.asarray(numbers, dtype=np.float64))
        return out

    def property_mask(self, cond: PropertyCond) -> np.ndarray:
        p = self.prop(cond.property)
        size = self.profiles.size
        op = cond.op
        if op == "is set":
            return self._is_set(p)
        if op == "is not set":
            return ~self._is_set(p)
        if p is None:
            return np.zeros(size, dtype=bool)
        if op in ("=", "in"):
            return self._equals_any(p, cond.values)
        if op in ("!=", "not in"):
            return self._is_set(p) & ~self._equals_any(p, cond.values)
        if op in ("contains", "not contains"):
            hit = (p.text.contains(str(cond.values[0])) if p.text is not None
                   else np.zeros(size, dtype=bool))
            return hit if op == "contains" else self._is_set(p) & ~hit
        if cond.from_us is not None or cond.until_us is not None:
            if p.date is None:
                return np.zeros(size, dtype=bool)
            out = p.date != pf.NOT_SET
            if cond.from_us is not None:
                out &= p.date >= cond.from_us
            if cond.until_us is not None:
                out &= p.date < cond.until_us
            return out
        if p.num is None:
            return np.zeros(size, dtype=bool)
        with np.errstate(invalid="ignore"):
            out = np.ones(size, dtype=bool)
            if cond.low is not None:
                out &= (p.num > cond.low) if cond.low_strict else (p.num >= cond.low)
            if cond.high is not None:
                out &= (p.num < cond.high) if cond.high_strict else (p.num <= cond.high)
        return out

    def reachable_mask(self, channel: str) -> np.ndarray:
        state = self.profiles
        if channel in ("inbox", "webhook"):
            return np.ones(state.size, dtype=bool)
        if channel == "email":
            has = state.system["email"].is_set()
        elif channel in ("sms", "whatsapp"):
            has = state.system["phone"].is_set()
        else:  # push
            has = state.push_n > 0
        return has & (state.consent[channel] != 0)

    # --- events --------------------------------------------------------------------

    def recent(self, names: list[str]) -> pa.Table:
        if not self._recent:
            self._recent.append(ev.recent(self.db, self.events, self.account_id, names))
        return self._recent[0]

    def _rows_for(self, identities: np.ndarray, counts: np.ndarray) -> np.ndarray:
        size = self.profiles.size
        if not len(identities):
            return np.zeros(size, dtype=np.int64)
        rows = self.profiles.rows_of(self.aliases.resolve(identities))
        ok = rows >= 0
        return np.bincount(rows[ok], weights=counts[ok], minlength=size).astype(np.int64)

    def event_mask(self, cond: EventCond, now: datetime, names: list[str]) -> np.ndarray:
        """Rows that did the event at least ``min_count`` times in the window."""
        window = cond.window(now)
        recent = self.recent(names)
        if not cond.where and ev.day_aligned(window):
            extra = None
            if recent.num_rows:
                extra = self._rows_for(*ev.scan_counts(self.events, cond, window, recent,
                                                       lake=False))
            return ev.rollup_mask(self.events, cond.event, window, self.row_of(),
                                  self.profiles.size, cond.min_count, extra)
        counts = self._rows_for(*ev.scan_counts(self.events, cond, window, recent))
        return counts >= cond.min_count

    # --- the tree ------------------------------------------------------------------

    def mask(self, rule: Rule, now: datetime) -> np.ndarray:
        names = sorted({n.event for n in walk(rule) if isinstance(n, EventCond)})
        return self._mask(rule, now, names) & self.profiles.alive

    def _mask(self, rule: Rule, now: datetime, names: list[str]) -> np.ndarray:
        size = self.profiles.size
        if isinstance(rule, AllOf):
            out = np.ones(size, dtype=bool)
            for item in _cheap_first(rule.items):
                out &= self._mask(item, now, names)
                if not out.any():
                    break
            return out
        if isinstance(rule, AnyOf):
            out = np.zeros(size, dtype=bool)
            for item in _cheap_first(rule.items):
                out |= self._mask(item, now, names)
                if out.all():
                    break
            return out
        if isinstance(rule, Not):
            return ~self._mask(rule.item, now, names)
        if isinstance(rule, PropertyCond):
            return self.property_mask(rule)
        if isinstance(rule, Reachable):
            return self.reachable_mask(rule.channel)
        did = self.event_mask(rule, now, names)
        return did if rule.did else ~did


def _cheap_first(items: tuple[Rule, ...]) -> list[Rule]:
    """Profile conditions before event conditions: an empty AND stops early."""
    return sorted(items, key=lambda r: any(isinstance(n, EventCond) for n in walk(r)))


class AccountIndex:
    """The in-memory index of one account; see the module docstring.

    ``lock`` guards the references to the current states and is only held to read or
    swap them; ``refresh_lock`` lets one refresher at a time build the next states
    (copy on write, so it can take seconds while queries keep running)."""

    def __init__(self, propel: Propel, account_id: str) -> None:
        self.propel = propel
        self.account_id = account_id
        self.lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.profiles: pf.ProfileState | None = None
        self.aliases = Aliases(np.zeros(0, dtype=object), np.zeros(0, dtype=object),
                               pd.Index([], dtype=object), 0)
        self.events = ev.empty_state()
        self.events_loaded = False
        self.wants_events = False
        self.predictions: dict[str, PredictionData] = {}  # by prediction id
        self.pred_rows: dict[str, tuple[Any, ...]] = {}
        self.profile_key: tuple[Any, ...] | None = None
        self.alias_key: tuple[Any, ...] | None = None
        self.checked_at = float("-inf")
        self.last_check_seconds = 0.0
        self._background: threading.Thread | None = None
        self._delta: Any = None  # the lake's DeltaTable, updated incrementally
        self._layout = 0
        self._derived: dict[str, tuple[tuple[Any, ...], Any]] = {}
        self.build_seconds: dict[str, float] = {}

    # --- freshness -----------------------------------------------------------------

    def view(self, *, fresh: bool = False, events: bool = False) -> View:
        """The states to evaluate a rule on. ``fresh`` re-reads every freshness key
        first; otherwise a re-check older than RECHECK_SECONDS is started in the
        background and this call answers from the index as it is (a new scoring run
        is still seen at once: its key is a handful of rows, read every time)."""
        if events:
            self.wants_events = True
        first = self.profiles is None or (events and not self.events_loaded)
        if fresh or first:
            self.refresh(events=self.wants_events)
        else:
            interval = max(RECHECK_SECONDS, RECHECK_FACTOR * self.last_check_seconds)
            if time.monotonic() - self.checked_at >= interval:
                self._revalidate()
            self._check_predictions()
        with self.lock:
            state = self.profiles
            assert state is not None
            return View(self.propel.db, self.account_id, state, self.aliases,
                        self._pred_columns(state), self.events, self._row_of_fn(state))

    def refresh(self, *, events: bool = False) -> None:
        """Read every freshness key and fold in whatever changed (blocking)."""
        with self.refresh_lock:
            started = time.perf_counter()
            prof_key, alias_key = self._keys()
            aliases = self.aliases
            if alias_key != self.alias_key:
                aliases = self._load_aliases()
            profiles_ = self._next_profiles(prof_key)
            preds, pred_rows = self._next_predictions(full=True)
            events_state = self.events
            if events:
                events_state = self._next_events()
            with self.lock:
                self.aliases, self.alias_key = aliases, alias_key
                self.profiles, self.profile_key = profiles_, prof_key
                self.predictions, self.pred_rows = preds, pred_rows
                if events:
                    self.events, self.events_loaded = events_state, True
                self.checked_at = time.monotonic()
                self.last_check_seconds = time.perf_counter() - started

    def wait(self, timeout: float | None = None) -> None:
        """Wait for a background re-check to finish (tests and benchmarks)."""
        thread = self._background
        if thread is not None:
            thread.join(timeout)

    def _revalidate(self) -> None:
        with self.lock:
            if self._background is not None and self._background.is_alive():
                return
            self.checked_at = time.monotonic()  # one re-check per interval
            self._background = threading.Thread(
                target=self._refresh_quietly, name=f"audience-index-{self.account_id}",
                daemon=True)
            self._background.start()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh(events=self.wants_events)
        except Exception:  # noqa: BLE001 - the next call retries; queries keep working
            log.exception("audience index refresh failed for %s", self.account_id)

    def _check_predictions(self) -> None:
        if self._prediction_rows() == self.pred_rows:
            return
        with self.refresh_lock:
            preds, pred_rows = self._next_predictions(full=False)
            with self.lock:
                self.predictions, self.pred_rows = preds, pred_rows

    def _next_layout(self) -> int:
        self._layout += 1
        return self._layout

    def _keys(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        acc = self.account_id
        with self.propel.db.read() as conn:
            prof = conn.execute(select(func.max(profiles.c.updated_at), func.count()).where(
                profiles.c.account_id == acc)).one()
            alias = conn.execute(select(func.max(identity_aliases.c.created_at), func.count()
                                        ).where(identity_aliases.c.account_id == acc)).one()
        return tuple(prof), tuple(alias)

    def _fetch(self, since: datetime | None = None, identities: list[str] | None = None
               ) -> pa.Table:
        cols = [profiles.c[name] for name in pf.PROFILE_COLUMNS]
        base = select(*cols).where(profiles.c.account_id == self.account_id)
        with self.propel.db.read() as conn:
            if identities is not None:
                chunks = [conn.execute(base.where(profiles.c.identity.in_(
                    identities[i:i + _IN_CHUNK]))).all()
                    for i in range(0, len(identities), _IN_CHUNK)]
                return pf.rows_table(chunks)
            if since is not None:
                result = conn.execution_options(yield_per=_FETCH_ROWS).execute(
                    base.where(profiles.c.updated_at >= since))
                return pf.rows_table(list(part) for part in result.partitions())
            # every profile: through the driver, three times faster than SQLAlchemy's
            # per-row type processing at a million rows
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            cursor = conn.exec_driver_sql(
                f"SELECT {', '.join(pf.PROFILE_COLUMNS)} FROM profiles "
                f"WHERE account_id = {mark} ORDER BY identity", (self.account_id,))
            chunks = []
            while part := cursor.fetchmany(_FETCH_ROWS):
                chunks.append(part)
            return pf.rows_table(chunks)

    def _identities(self) -> list[str]:
        with self.propel.db.read() as conn:
            return list(conn.execute(select(profiles.c.identity).where(
                profiles.c.account_id == self.account_id)).scalars())

    def _next_profiles(self, prof_key: tuple[Any, ...]) -> pf.ProfileState:
        state = self.profiles
        if prof_key == self.profile_key and state is not None:
            return state
        started = time.perf_counter()
        if state is None or state.watermark is None:
            state = pf.build(self._fetch())
            state.layout = self._next_layout()
            self.build_seconds["profiles"] = time.perf_counter() - started
            return state
        state = pf.apply(state, self._fetch(since=state.watermark - SLACK), self._next_layout())
        if state.count != prof_key[1]:
            # deletions (a merge folds a profile away): compare identity lists
            present = self._identities()
            live = set(state.identities.to_numpy(zero_copy_only=False)[state.alive])
            missing = [i for i in present if i not in live]
            if missing:
                state = pf.apply(state, self._fetch(identities=missing), self._next_layout())
            state = pf.keep_only(state, present, self._next_layout())
        self.build_seconds["profiles_delta"] = time.perf_counter() - started
        return state

    def _load_aliases(self) -> Aliases:
        with self.propel.db.read() as conn:
            rows = conn.execute(select(identity_aliases.c.alias, identity_aliases.c.identity)
                                .where(identity_aliases.c.account_id == self.account_id)).all()
        alias = np.asarray([r[0] for r in rows], dtype=object)
        return Aliases(alias, np.asarray([r[1] for r in rows], dtype=object),
                       pd.Index(alias, dtype=object), self.aliases.version + 1)

    def _next_events(self) -> ev.EventState:
        started = time.perf_counter()
        if self._delta is None:
            self._delta = self.propel.lake.table()
        else:
            self._delta.update_incremental()
        if self._delta is None:
            return self.events
        state = ev.refresh(self.events, self._delta, self.account_id)
        if state is not self.events:
            self.build_seconds["events"] = time.perf_counter() - started
        return state

    def _prediction_rows(self) -> dict[str, tuple[Any, ...]]:
        with self.propel.db.read() as conn:
            rows = conn.execute(select(predictions.c.id, predictions.c.name,
                                       predictions.c.groups, predictions.c.last_scored_at,
                                       predictions.c.updated_at).where(
                predictions.c.account_id == self.account_id)).all()
        return {r[0]: tuple(r) for r in rows}

    def _next_predictions(self, full: bool
                          ) -> tuple[dict[str, PredictionData], dict[str, tuple[Any, ...]]]:
        """Reload the scores of predictions whose key changed: their row in
        ``predictions`` (a scoring run sets ``last_scored_at`` in the transaction that
        replaces the scores) and, when ``full``, max(scored_at) and count(*) of their
        ``user_predictions`` rows (scores written any other way)."""
        current = self._prediction_rows()
        stats: dict[str, tuple[Any, int]] = {}
        if full:
            with self.propel.db.read() as conn:
                stats = {r[0]: (r[1], int(r[2])) for r in conn.execute(
                    select(user_predictions.c.prediction_id,
                           func.max(user_predictions.c.scored_at), func.count())
                    .where(user_predictions.c.account_id == self.account_id)
                    .group_by(user_predictions.c.prediction_id)).all()}
        out: dict[str, PredictionData] = {}
        for pid, row in current.items():
            old = self.predictions.get(pid)
            same_run = self.pred_rows.get(pid, (None,) * 5)[3] == row[3]
            same_rows = not full or (old is not None and old.stats == stats.get(pid, (None, 0)))
            if old is not None and same_run and same_rows:
                out[pid] = PredictionData(pid, row[1], _groups(row[2]), old.identities,
                                          old.grp, old.score, old.stats)
            else:
                out[pid] = self._load_prediction(pid, row[1], _groups(row[2]))
        return out, current

    def _load_prediction(self, pid: str, name: str, groups: tuple[str, ...]) -> PredictionData:
        acc = self.account_id
        with self.propel.db.read() as conn:
            high, n = conn.execute(select(func.max(user_predictions.c.scored_at), func.count())
                                   .where(user_predictions.c.prediction_id == pid,
                                          user_predictions.c.account_id == acc)).one()
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            rows = conn.exec_driver_sql(
                "SELECT identity, grp, score FROM user_predictions "
                f"WHERE prediction_id = {mark} AND account_id = {mark}", (pid, acc)).fetchall()
        cols = list(zip(*rows, strict=True)) if rows else [[], [], []]
        return PredictionData(pid, name, groups, np.asarray(cols[0], dtype=object),
                              pa.array(cols[1], pa.string()),
                              np.asarray(cols[2], dtype=np.float64), (high, int(n)))

    # --- derived, row-aligned data --------------------------------------------------

    def _cached(self, name: str, key: tuple[Any, ...], make: Callable[[], Any]) -> Any:
        found = self._derived.get(name)
        if found is not None and found[0] == key:
            return found[1]
        value = make()
        self._derived[name] = (key, value)
        return value

    def _pred_columns(self, state: pf.ProfileState) -> dict[str, PredColumn]:
        key = (state.layout,
               tuple((p.id, p.name, id(p.identities)) for p in self.predictions.values()))

        def make() -> dict[str, PredColumn]:
            out = {}
            for p in self.predictions.values():
                # A score belongs to the identity it was computed for (scoring resolves
                # aliases itself), as in every other profile view of the platform.
                rows = state.rows_of(p.identities)
                ok = rows >= 0
                codes, dictionary = pf.encode(p.grp)
                col_codes = np.zeros(state.size, dtype=np.int32)
                col_codes[rows[ok]] = codes[ok]
                col_score = np.full(state.size, np.nan)
                col_score[rows[ok]] = p.score[ok]
                out[p.name] = PredColumn(p.id, p.name, p.groups, pf.Text(col_codes, dictionary),
                                         col_score)
            return out

        return self._cached("predictions", key, make)

    def _row_of_fn(self, state: pf.ProfileState) -> Callable[[], np.ndarray]:
        events, aliases = self.events, self.aliases
        key = (state.layout, aliases.version, events.generation, len(events.raw_ids))

        def make() -> np.ndarray:
            # raw id -> profile row; state.size (one past the last row) where none
            rows = state.rows_of(aliases.resolve(events.raw_ids)).astype(np.int64)
            rows[rows < 0] = state.size
            return rows

        def get() -> np.ndarray:
            with self.lock:
                return self._cached("row_of", key, make)

        return get


def _groups(raw: str | None) -> tuple[str, ...]:
    """Group names of a prediction: always High / Medium / Low today (the stored
    ``groups`` are the boundaries), kept per prediction for the property list."""
    return GROUPS


_REGISTRY: weakref.WeakKeyDictionary[Propel, OrderedDict[str, AccountIndex]] = (
    weakref.WeakKeyDictionary())
_REGISTRY_LOCK = threading.Lock()


def index_for(propel: Propel, account_id: str) -> AccountIndex:
    """The account's index (created empty; built on first use)."""
    with _REGISTRY_LOCK:
        per = _REGISTRY.setdefault(propel, OrderedDict())
        found = per.get(account_id)
        if found is None:
            found = per[account_id] = AccountIndex(propel, account_id)
            while len(per) > MAX_ACCOUNTS:
                per.popitem(last=False)
        per.move_to_end(account_id)
        return found


def utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)
