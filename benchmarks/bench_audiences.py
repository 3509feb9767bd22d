"""Audiences: counts over a million users, each checked against a full scan.

    .venv/bin/python benchmarks/bench_audiences.py                      # 1M users, 60 days
    .venv/bin/python benchmarks/bench_audiences.py --users 100000 --days 30
    .venv/bin/python benchmarks/bench_audiences.py --data-dir /tmp/aud  # reuse a loaded dir

Target: ``audiences.count`` p50 <= 50 ms across 100 different conditions (prediction
groups and scores, profile ``contains``, numeric and date ranges, event conditions and
combinations), none answered from a cache of results. Every count is compared with a
full-scan count computed independently: pandas over the ``profiles`` and
``user_predictions`` tables as read from SQL, and DuckDB SQL written here over the
lake's Delta table for events. Conditions with event property filters (which scan the
lake) are timed and checked separately.

Data: profiles (the synthetic shop's, plus plan / ltv / age / city / signup_date) and
two predictions' scores are written with SQL bulk inserts; events are the synthetic
shop's (``SyntheticApp.events``), written to Parquet and imported with
``propel.ingest.bulk.import_file``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

END = datetime(2026, 5, 1, tzinfo=UTC)  # the synthetic data ends here
NOW = datetime(2026, 4, 30, 15, 0, tzinfo=UTC)  # counts are taken "now"
PLANS = (("free", 0.6), ("plus", 0.2), ("pro", 0.15), ("business", 0.05))
CITIES = ("Paris", "Parma", "Berlin", "Bern", "San Francisco", "San Diego", "Santiago",
          "New York", "Newark", "London", "Londrina", "Madrid", "Mumbai", "Munich",
          "Tokyo", "Toronto", "Sydney", "Seattle", "Sao Paulo", "Mexico City", "Lyon",
          "Lille", "Hamburg", "Manchester", "Osaka", "Delhi", "Chennai", "Austin",
          "Boston", "Chicago", "Denver", "Vancouver", "Melbourne", "Barcelona", "Seville")
EVENTS = ("App Launched", "Product Viewed", "Search", "Added To Cart", "Charged",
          "Notification Clicked", "App Uninstalled")
PREDICTIONS = ("Predict Conversions", "Predict Churn")
_FLAT = """
SELECT message_id, identity, name, ts,
  TRY_CAST(json_extract_string(properties, '$.price') AS DOUBLE) AS price,
  json_extract_string(properties, '$.product_id') AS product_id,
  json_extract_string(properties, '$.category') AS category,
  TRY_CAST(json_extract_string(properties, '$.amount') AS DOUBLE) AS amount,
  TRY_CAST(json_extract_string(properties, '$.items') AS INTEGER) AS items,
  json_extract_string(properties, '$.currency') AS currency,
  json_extract_string(properties, '$.platform') AS platform,
  json_extract_string(properties, '$.source') AS source,
  json_extract_string(properties, '$.campaign') AS campaign,
  json_extract_string(properties, '$.channel') AS channel,
  json_extract_string(properties, '$.query') AS query
FROM chunk
"""
EVENT_MAP = {c: c for c in ("message_id", "identity", "name", "ts", "price", "product_id",
                            "category", "amount", "items", "currency", "platform", "source",
                            "campaign", "channel", "query")}


# --- loading -------------------------------------------------------------------------


def open_propel(data_dir: Path, database_url: str | None) -> Any:
    from propel.core import Propel
    from propel.settings import Settings

    propel = Propel(Settings(data_dir=data_dir, database_url=database_url, secret_key="bench",
                             log_format="text", sqlite_synchronous="NORMAL"))
    propel.migrate()
    return propel


def _stamp(conn: Any, moment: datetime) -> Any:
    # sqlite3 would store an aware datetime with its offset; the column type stores
    # naive UTC text there (as propel.predictions.scoring does for bulk rows).
    if conn.dialect.name == "sqlite":
        return moment.replace(tzinfo=None).isoformat(sep=" ")
    return moment


def write_profiles(propel: Any, account: str, users: int, seed: int) -> int:
    from propel.db.bulk import insert_many
    from propel.demo.synth import SyntheticApp

    base = SyntheticApp(seed=seed).profiles(users, END).to_pydict()
    rng = np.random.default_rng(seed)
    plan = rng.choice([p for p, _ in PLANS], size=users, p=[w for _, w in PLANS])
    ltv = np.round(rng.lognormal(3.0, 1.2, size=users), 2)
    has_ltv = rng.random(users) < 0.85
    age = rng.integers(18, 80, size=users)
    city = rng.choice(CITIES, size=users)
    updated = NOW - timedelta(days=1)
    cols = ("account_id", "identity", "email", "phone", "timezone", "push_tokens", "consent",
            "properties", "created_at", "updated_at")
    written = 0
    with propel.db.engine.begin() as conn:
        rows = []
        for i in range(users):
            props: dict[str, Any] = {
                "country": base["country"][i], "platform": base["platform"][i],
                "plan": str(plan[i]), "age": int(age[i]), "city": str(city[i]),
                "signup_date": base["signup_ts"][i].date().isoformat()}
            if has_ltv[i]:
                props["ltv"] = float(ltv[i])
            consent = {"email": base["email_opt_in"][i], "push": base["push_opt_in"][i],
                       "sms": base["sms_opt_in"][i]}
            tokens = [f"tok-{i}"] if base["push_opt_in"][i] or i % 7 == 0 else []
            rows.append((account, base["identity"][i], base["email"][i], base["phone"][i],
                         base["timezone"][i], orjson.dumps(tokens).decode(),
                         orjson.dumps(consent).decode(), orjson.dumps(props).decode(),
                         _stamp(conn, base["signup_ts"][i]),
                         _stamp(conn, updated - timedelta(seconds=i % 86_400))))
            if len(rows) == 100_000:
                insert_many(conn, "profiles", cols, rows)
                written += len(rows)
                rows = []
        insert_many(conn, "profiles", cols, rows)
        written += len(rows)
    return written


def write_predictions(propel: Any, account: str, users: int, seed: int) -> int:
    from sqlalchemy import update

    from propel.db.bulk import insert_many
    from propel.predictions import registry
    from propel.predictions.spec import from_template
    from propel.predictions.tables import predictions

    written = 0
    width = max(6, len(str(max(users - 1, 0))))  # as the synthetic shop names its users
    scored_at = NOW - timedelta(hours=3)
    cols = ("prediction_id", "identity", "account_id", "probability", "score", "grp",
            "model_version", "scored_at", "reasons")
    for k, template in enumerate(("conversions", "churn")):
        pred = registry.create(propel.db, account, from_template(template))
        rng = np.random.default_rng(seed + 100 + k)
        scored = np.flatnonzero(rng.random(users) < 0.9)  # one in ten is not scored
        prob = rng.beta(1.2, 6.0, size=len(scored))
        rank = np.argsort(np.argsort(-prob)) / len(scored)
        grp = np.where(rank < 0.2, "High", np.where(rank < 0.5, "Medium", "Low"))
        with propel.db.engine.begin() as conn:
            stamp = _stamp(conn, scored_at)
            rows = [(pred.id, f"u{i:0{width}d}", account, float(p), round(float(p) * 100, 1),
                     str(g), 1, stamp, "[]") for i, p, g in zip(scored, prob, grp, strict=True)]
            for start in range(0, len(rows), 100_000):
                insert_many(conn, "user_predictions", cols, rows[start:start + 100_000])
            conn.execute(update(predictions).where(predictions.c.id == pred.id).values(
                status="scored", current_version=1, last_scored_at=scored_at,
                updated_at=scored_at))
        written += len(rows)
    return written


def write_events(users: int, days: int, seed: int, path: Path) -> int:
    from propel.demo.synth import SyntheticApp

    con = duckdb.connect()
    writer = None
    rows = 0
    try:
        for chunk in SyntheticApp(seed=seed).events(users, days, END, chunk_users=50_000):
            con.register("chunk", chunk)
            flat = con.sql(_FLAT).to_arrow_table()
            con.unregister("chunk")
            writer = writer or pq.ParquetWriter(path, flat.schema, compression="snappy")
            writer.write_table(flat, row_group_size=1 << 20)
            rows += flat.num_rows
    finally:
        if writer is not None:
            writer.close()
        con.close()
    return rows


def load(data_dir: Path, users: int, days: int, seed: int, database_url: str | None
         ) -> tuple[Any, str, dict[str, Any]]:
    from propel.accounts import create_account
    from propel.ingest.bulk import import_file
    from propel.ingest.bulk_spec import ImportSpec

    marker = data_dir / "loaded.json"
    data_dir.mkdir(parents=True, exist_ok=True)
    propel = open_propel(data_dir, database_url)
    if marker.exists():
        stats = json.loads(marker.read_text())
        return propel, stats["account"], stats
    stats: dict[str, Any] = {"users": users, "days": days, "seed": seed}
    account = create_account(propel.db, "Bench audiences").account_id
    stats["account"] = account
    # noise: a second account, so every read must stay in its own account
    other = create_account(propel.db, "Bench other").account_id
    write_profiles(propel, other, min(users, 10_000), seed + 1)
    started = time.perf_counter()
    stats["profiles"] = write_profiles(propel, account, users, seed)
    stats["profile_seconds"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    stats["scores"] = write_predictions(propel, account, users, seed)
    stats["score_seconds"] = round(time.perf_counter() - started, 1)
    path = data_dir / "events.parquet"
    started = time.perf_counter()
    stats["events"] = write_events(users, days, seed, path)
    stats["generate_seconds"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    summary = import_file(propel, account, ImportSpec(
        kind="events", path=path, mapping=EVENT_MAP, reject_path=path.with_suffix(".rej.csv")))
    if summary.rejected:
        raise RuntimeError(summary.describe())
    stats["import_seconds"] = round(time.perf_counter() - started, 1)
    path.unlink()
    marker.write_text(json.dumps(stats, indent=1))
    return propel, account, stats


# --- conditions ------------------------------------------------------------------------


class Rules:
    """100 different rules from a seeded generator; each tagged with its kind."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def group(self) -> dict[str, Any]:
        r = self.rng
        pred = r.choice(PREDICTIONS)
        if r.random() < 0.5:
            return {"property": pred, "op": "=", "value": r.choice(["High", "Medium", "Low"])}
        return {"property": pred, "op": r.choice(["in", "not in"]),
                "value": r.sample(["High", "Medium", "Low"], 2)}

    def score(self) -> dict[str, Any]:
        r = self.rng
        pred = r.choice(PREDICTIONS)
        if r.random() < 0.5:
            return {"property": f"{pred} score", "op": r.choice([">=", ">", "<", "<="]),
                    "value": round(r.uniform(1, 60), 1)}
        low = round(r.uniform(0, 40), 1)
        return {"property": f"{pred} score", "op": "between",
                "value": [low, round(low + r.uniform(1, 30), 1)]}

    def contains(self) -> dict[str, Any]:
        r = self.rng
        if r.random() < 0.6:
            city = r.choice(CITIES).lower()
            start = r.randrange(0, max(1, len(city) - 3))
            return {"property": "city", "op": "contains",
                    "value": city[start:start + r.choice([2, 3, 4])].upper()}
        return {"property": "email", "op": "contains",
                "value": r.choice(["gmail", "yahoo.", "outlook", "@icloud", "proton",
                                   "james", "garcia", "chen.", "kim", "silva", "mia.",
                                   "olivia", "tanaka", "12", "777", ".me"])}

    def numeric(self) -> dict[str, Any]:
        r = self.rng
        if r.random() < 0.6:
            low = round(r.uniform(1, 80), 2)
            if r.random() < 0.5:
                return {"property": "ltv", "op": "between",
                        "value": [low, round(low + r.uniform(5, 200), 2)]}
            return {"property": "ltv", "op": r.choice([">", "<="]), "value": low}
        return {"property": "age", "op": r.choice([">=", "<"]), "value": r.randint(20, 75)}

    def category(self) -> dict[str, Any]:
        r = self.rng
        if r.random() < 0.5:
            return {"property": "country", "op": "in",
                    "value": r.sample(["US", "GB", "DE", "FR", "ES", "IN", "BR", "MX", "JP",
                                       "AU", "CA"], r.randint(1, 4))}
        return {"property": "plan", "op": r.choice(["=", "!="]),
                "value": r.choice([p for p, _ in PLANS])}

    def date(self) -> dict[str, Any]:
        r = self.rng
        day = (END - timedelta(days=r.randint(5, 400))).date()
        op = r.choice(["before", "after", "between"])
        if op == "between":
            return {"property": "signup_date", "op": op,
                    "value": [day.isoformat(), (day + timedelta(days=r.randint(1, 90))
                                                ).isoformat()]}
        return {"property": "signup_date", "op": op, "value": day.isoformat()}

    def event(self) -> dict[str, Any]:
        r = self.rng
        cond: dict[str, Any] = {"event": r.choice(EVENTS[:6]), "within_days": r.randint(1, 45)}
        if r.random() < 0.4:
            cond["min_count"] = r.randint(2, 4)
        if r.random() < 0.3:
            return {"not": cond}
        return cond

    def leaf(self) -> dict[str, Any]:
        return self.rng.choice([self.group, self.score, self.contains, self.numeric,
                                self.category, self.date, self.reachable])()

    def reachable(self) -> dict[str, Any]:
        return {"reachable": self.rng.choice(["email", "sms", "push"])}

    def combo(self) -> dict[str, Any]:
        r = self.rng
        items = [self.leaf() for _ in range(r.randint(1, 2))]
        if r.random() < 0.6:
            items.append(self.event())
        if r.random() < 0.3:
            items[0] = {"not": items[0]}
        if r.random() < 0.3:
            return {"or": items}
        return {"and": items}

    def example(self) -> dict[str, Any]:
        """The shape of the brief's example rule, with varying numbers."""
        r = self.rng
        return {"and": [
            {"property": "Predict Conversions", "op": "=", "value": r.choice(["Low", "Medium"])},
            {"not": {"event": "Charged", "within_days": r.randint(10, 40)}},
            {"event": "Added To Cart", "min_count": r.randint(1, 2),
             "within_days": r.randint(5, 20)},
            {"or": [{"property": "country", "op": "in", "value": ["FR", "DE"]},
                    {"reachable": "email"}]}]}

    def where(self) -> dict[str, Any]:
        r = self.rng
        event, prop = r.choice([("Added To Cart", "price"), ("Product Viewed", "price"),
                                ("Charged", "amount")])
        where: list[dict[str, Any]] = [{"property": prop, "op": ">",
                                        "value": round(r.uniform(10, 200), 2)}]
        if event == "Product Viewed" and r.random() < 0.5:
            where = [{"property": "category", "op": "=",
                      "value": r.choice(["toys", "fashion", "electronics", "books"])}]
        return {"event": event, "within_days": r.randint(1, 14), "where": where}

    def make(self, n: int, kinds: list[tuple[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        seen: set[str] = set()
        out = []
        while len(out) < n:
            kind, make = kinds[len(out) % len(kinds)]
            rule = make()
            key = json.dumps(rule, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append((kind, rule))
        return out


def main_rules(seed: int, n: int = 100) -> list[tuple[str, dict[str, Any]]]:
    g = Rules(seed)
    kinds = [("prediction group", g.group), ("prediction score", g.score),
             ("profile contains", g.contains), ("numeric range", g.numeric),
             ("category", g.category), ("date", g.date), ("event", g.event),
             ("combination", g.combo), ("event", g.event), ("combination", g.example)]
    return g.make(n, kinds)


# --- the independent full-scan count ----------------------------------------------------------


class FullScan:
    """Counts by brute force, written without the index: every profile row from SQL
    as a pandas frame, every event condition as its own DuckDB query over the lake."""

    def __init__(self, propel: Any, account: str) -> None:
        from deltalake import DeltaTable
        from sqlalchemy import select

        from propel.predictions.tables import predictions, user_predictions
        from propel.profiles.tables import profiles

        with propel.db.read() as conn:
            rows = conn.execute(select(
                profiles.c.identity, profiles.c.email, profiles.c.phone, profiles.c.push_tokens,
                profiles.c.consent, profiles.c.properties).where(
                profiles.c.account_id == account)).all()
            scores = conn.execute(select(
                user_predictions.c.identity, predictions.c.name, user_predictions.c.grp,
                user_predictions.c.score).join(
                predictions, predictions.c.id == user_predictions.c.prediction_id).where(
                user_predictions.c.account_id == account)).all()
        frame = pd.DataFrame(rows, columns=["identity", "email", "phone", "push_tokens",
                                            "consent", "properties"])
        props = pd.DataFrame([orjson.loads(p) for p in frame["properties"]])
        consent = pd.DataFrame([orjson.loads(c) for c in frame["consent"]])
        self.frame = pd.concat([frame.drop(columns=["properties", "consent"]), props], axis=1)
        for channel in ("email", "sms", "push"):
            self.frame[f"consent_{channel}"] = (consent[channel] if channel in consent
                                                else pd.Series([None] * len(frame)))
        self.frame["n_tokens"] = [len(orjson.loads(t)) for t in frame["push_tokens"]]
        self.frame = self.frame.set_index("identity", drop=False)
        sc = pd.DataFrame(scores, columns=["identity", "name", "grp", "score"])
        for name, part in sc.groupby("name"):
            part = part.set_index("identity")
            self.frame[name] = part["grp"].reindex(self.frame.index)
            self.frame[f"{name} score"] = part["score"].reindex(self.frame.index)
        self.account = account
        self.dataset = DeltaTable(propel.lake.events_uri).to_pyarrow_dataset()
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.register("lake", self.dataset)
        self._events: dict[str, pd.Series] = {}

    def _values(self, name: str) -> pd.Series:
        if name in self.frame:
            return self.frame[name]
        return pd.Series([None] * len(self.frame), index=self.frame.index, dtype=object)

    @staticmethod
    def _text(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    def prop(self, c: dict[str, Any]) -> pd.Series:
        raw = self._values(c["property"])
        is_set = raw.notna()
        text = raw.map(self._text)
        num = pd.to_numeric(raw, errors="coerce")
        op, value = c["op"], c.get("value")
        if op == "=":
            return num == value if isinstance(value, int | float) else text == value
        if op == "!=":
            return is_set & (text != value)
        if op == "in":
            return text.isin(value)
        if op == "not in":
            return is_set & ~text.isin(value)
        if op == "contains":
            return text.str.contains(value, case=False, regex=False).fillna(False).astype(bool)
        if op in (">", ">=", "<", "<="):
            return {">": num > value, ">=": num >= value, "<": num < value,
                    "<=": num <= value}[op].fillna(False)
        if op == "between" and isinstance(value[0], int | float):
            return (num >= value[0]) & (num <= value[1])
        day = pd.to_datetime(text, utc=True, errors="coerce")
        if op == "before":
            return (day < pd.Timestamp(value, tz="UTC")).fillna(False)
        if op == "after":
            return (day >= pd.Timestamp(value, tz="UTC") + pd.Timedelta(days=1)).fillna(False)
        return ((day >= pd.Timestamp(value[0], tz="UTC"))
                & (day < pd.Timestamp(value[1], tz="UTC") + pd.Timedelta(days=1))).fillna(False)

    def event(self, c: dict[str, Any], now: datetime) -> pd.Series:
        day0 = datetime(now.year, now.month, now.day, tzinfo=UTC) - timedelta(
            days=c["within_days"] - 1)
        day1 = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
        where = ""
        for w in c.get("where", []):
            v = f"json_extract_string(properties, '$.{w['property']}')"
            if w["op"] == ">":
                where += f" AND TRY_CAST({v} AS DOUBLE) > {float(w['value'])}"
            else:
                where += f" AND {v} = '{w['value']}'"
        key = json.dumps([c["event"], c["within_days"], where])
        if key not in self._events:
            rows = self.con.execute(
                "SELECT identity, count(*) FROM lake WHERE account_id = ? AND kind = 'event' "
                f"AND name = ? AND ts >= ? AND ts < ? {where} GROUP BY identity",
                [self.account, c["event"], day0, day1]).fetchall()
            self._events[key] = pd.Series(dict(rows), dtype="int64").reindex(
                self.frame.index).fillna(0)
        return self._events[key] >= c.get("min_count", 1)

    def mask(self, rule: dict[str, Any], now: datetime) -> pd.Series:
        if "and" in rule:
            out = pd.Series(True, index=self.frame.index)
            for r in rule["and"]:
                out &= self.mask(r, now)
            return out
        if "or" in rule:
            out = pd.Series(False, index=self.frame.index)
            for r in rule["or"]:
                out |= self.mask(r, now)
            return out
        if "not" in rule:
            return ~self.mask(rule["not"], now)
        if "reachable" in rule:
            ch = rule["reachable"]
            has = {"email": self.frame["email"].notna(), "sms": self.frame["phone"].notna(),
                   "push": self.frame["n_tokens"] > 0}[ch]
            return has & (self.frame[f"consent_{ch}"] != False)  # noqa: E712 - None passes
        if "event" in rule:
            return self.event(rule, now)
        return self.prop(rule)

    def count(self, rule: dict[str, Any], now: datetime) -> int:
        return int(self.mask(rule, now).sum())


# --- running ------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace) -> dict[str, Any]:
    from propel import audiences
    from propel.audiences import index as audience_index

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="bench-audiences-"))
    started = time.perf_counter()
    propel, account, stats = load(data_dir, args.users, args.days, args.seed, args.database_url)
    stats["load_seconds"] = round(time.perf_counter() - started, 1)
    print(f"data: {json.dumps(stats)}", flush=True)
    result: dict[str, Any] = {"data": stats, "machine": {
        "cores": os.cpu_count(), "load_average": os.getloadavg()}}

    started = time.perf_counter()
    total = audiences.count(propel, account, {"and": []}, now=NOW)
    result["profile_index_build_seconds"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    audiences.count(propel, account, {"event": "Charged"}, now=NOW)
    result["event_index_build_seconds"] = round(time.perf_counter() - started, 2)
    result["users"] = total
    idx = audience_index.index_for(propel, account)
    started = time.perf_counter()
    idx.view(fresh=True, events=True)
    result["freshness_check_ms"] = round((time.perf_counter() - started) * 1000, 1)
    result["rss_mib_after_build"] = round(rss_mib())
    print(f"index: {json.dumps(result)}", flush=True)

    rules = main_rules(args.seed, args.conditions)
    timings: list[tuple[str, float, int]] = []
    for kind, rule in rules:
        t0 = time.perf_counter()
        n = audiences.count(propel, account, rule, now=NOW)
        timings.append((kind, (time.perf_counter() - t0) * 1000, n))
    ms = [t for _, t, _ in timings]
    result["count_ms"] = {"p50": round(_pct(ms, 50), 1), "p95": round(_pct(ms, 95), 1),
                          "max": round(max(ms), 1), "n": len(ms)}
    by_kind: dict[str, list[float]] = {}
    for kind, t, _ in timings:
        by_kind.setdefault(kind, []).append(t)
    result["count_ms_by_kind"] = {k: {"p50": round(_pct(v, 50), 1), "max": round(max(v), 1),
                                      "n": len(v)} for k, v in by_kind.items()}
    result["slowest"] = [{"kind": k, "rule": r, "ms": round(t, 1)} for (k, r), (_, t, _) in
                         sorted(zip(rules, timings, strict=True), key=lambda x: -x[1][1])[:8]]
    print(f"counts: {json.dumps(result['count_ms'])}", flush=True)

    g = Rules(args.seed + 1)
    wheres = g.make(args.where_conditions, [("event with property filter", g.where)])
    wtimes: list[tuple[float, int]] = []
    for _, rule in wheres:
        t0 = time.perf_counter()
        n = audiences.count(propel, account, rule, now=NOW)
        wtimes.append(((time.perf_counter() - t0) * 1000, n))
    wms = [t for t, _ in wtimes]
    result["where_count_ms"] = {"p50": round(_pct(wms, 50), 1), "p95": round(_pct(wms, 95), 1),
                                "n": len(wms)}
    t0 = time.perf_counter()
    some = audiences.members(propel, account, rules[0][1], now=NOW)
    result["members_ms"] = {"rule": rules[0][1], "members": len(some),
                            "ms": round((time.perf_counter() - t0) * 1000, 1)}
    result["rss_mib"] = round(rss_mib())

    started = time.perf_counter()
    scan = FullScan(propel, account)
    mismatches = []
    counted = [n for _, _, n in timings] + [n for _, n in wtimes]
    for (kind, rule), n in zip(rules + wheres, counted, strict=True):
        expected = scan.count(rule, NOW)
        if expected != n:
            mismatches.append({"kind": kind, "rule": rule, "index": n, "full_scan": expected})
    result["checked"] = len(rules) + len(wheres)
    result["mismatches"] = mismatches
    result["full_scan_seconds"] = round(time.perf_counter() - started, 1)
    result["examples"] = [{"kind": k, "rule": r, "count": n, "ms": round(t, 1)}
                          for (k, r), (_, t, n) in list(zip(rules, timings, strict=True))[:12]]
    result["machine"]["load_average_end"] = os.getloadavg()
    propel.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--conditions", type=int, default=100)
    parser.add_argument("--where-conditions", type=int, default=10)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--database-url", default=None,
                        help="PostgreSQL URL (default: SQLite in the data dir)")
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    if result["mismatches"]:
        sys.exit(f"{len(result['mismatches'])} counts differ from the full scan")


if __name__ == "__main__":
    main()
