"""Prediction features: point in time (no leakage), one SQL definition that transpiles
to Spark SQL, the same numbers as a plain pandas reading of the events, and BG/NBD
inputs that reproduce the published CDNOW estimates through the import pipeline."""

from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pytest
import sqlglot
from sqlalchemy import create_engine, insert, text
from sqlglot import exp
from synthetic_shop import load_synthetic

from propel.accounts import create_account
from propel.core import Propel
from propel.demo.synth import SyntheticApp
from propel.ingest.bulk import import_file
from propel.ingest.bulk_spec import ImportSpec
from propel.ingest.records import EventRecord, IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync
from propel.lake.reader import snapshot
from propel.predictions.btyd import BetaGeoModel
from propel.predictions.features import (
    FeatureSpec,
    choose_feature_spec,
    compute_features,
    feature_sql,
    label_sql,
    labels,
    profile_sql,
    register_aliases,
)
from propel.predictions.spec import Audience, Condition, from_template, parse_where
from propel.predictions.training import load_aliases
from propel.profiles.tables import identity_alias_history, identity_aliases
from propel.settings import Settings

PG_URL = os.environ.get("PROPEL_TEST_POSTGRES_URL")
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
DATA = Path(__file__).parent / "data"

END = datetime(2025, 3, 1, tzinfo=UTC)
USERS, DAYS, SEED = 1200, 60, 5
RECENT_DAYS = 5  # the newest days go through ingest (recent_events), the rest to the lake
# A mid-day as-of with microseconds and a midnight one, both inside the data.
AS_OF_MID = END - timedelta(days=24) + timedelta(hours=10, minutes=37, seconds=12,
                                                  microseconds=345678)
AS_OF = END - timedelta(days=14)
EVERYONE = Audience()


# --------------------------------------------------------------------------- data


@dataclass
class Shop:
    propel: Propel
    account_id: str
    n: int = 0  # message-id counter for planted data

    def mid(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"


def _us(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def event(shop: Shop, identity: str, name: str, ts: datetime, **props: object) -> IngestItem:
    mid = shop.mid("plant")
    return IngestItem(key_hash(shop.account_id, mid), event=EventRecord(
        message_id=mid, identity=identity, name=name, ts=_us(ts),
        properties=orjson.dumps(props).decode()))


def profile(shop: Shop, identity: str, ts: datetime | None, **fields: object) -> IngestItem:
    return IngestItem(key_hash(shop.account_id, shop.mid("profile")),
                      profile=ProfileUpdate(identity=identity, ts=_us(ts) if ts else None,
                                            **fields))


def alias(shop: Shop, anonymous: str, identity: str) -> IngestItem:
    return IngestItem(key_hash(shop.account_id, shop.mid("alias")), alias=(anonymous, identity))


def ingest(shop: Shop, items: list[IngestItem]) -> None:
    for start in range(0, len(items), 5000):
        result = ingest_sync(shop.propel.db, shop.account_id, items[start:start + 5000], [],
                             "test")
        assert result.accepted == len(items[start:start + 5000])


@pytest.fixture(scope="module", params=DATABASES)
def module_propel(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Propel]:
    url, schema, admin = None, None, None
    if request.param == "postgres":
        if not PG_URL:
            pytest.skip("PROPEL_TEST_POSTGRES_URL is not set")
        schema = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    settings = Settings(data_dir=tmp_path_factory.mktemp("features") / "data",
                        database_url=url, secret_key="test-secret", log_format="text")
    propel = Propel(settings)
    propel.migrate()
    yield propel
    propel.close()
    if admin is not None:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(scope="module")
def shop(module_propel: Propel) -> Shop:
    account_id = create_account(module_propel.db, "Synthetic shop").account_id
    load_synthetic(module_propel, account_id, SyntheticApp(seed=SEED), USERS, DAYS, END,
                   RECENT_DAYS)
    return Shop(module_propel, account_id)


def features(shop: Shop, spec: FeatureSpec | None, audience: Audience, as_of: datetime,
             goal: str = "Charged") -> tuple[FeatureSpec, pd.DataFrame]:
    """(feature spec, features) as of ``as_of``; the spec is chosen from the data when
    not given, as training does."""
    with snapshot(shop.propel.db, shop.propel.lake, shop.account_id) as (con, _):
        register_aliases(con, load_aliases(shop.propel, shop.account_id))
        if spec is None:
            spec = choose_feature_spec(con, from_template("conversions", goal_event=goal),
                                       as_of)
        return spec, compute_features(con, spec, audience, as_of)


def changed_rows(before: pd.DataFrame, after: pd.DataFrame) -> set[str]:
    """Identities whose row was added, removed or differs in any column."""
    rows = set(before.index) ^ set(after.index)
    common = before.index.intersection(after.index)
    b, a = before.loc[common], after.loc[common]
    same = (b == a) | (b.isna() & a.isna())
    return rows | set(common[~same.all(axis=1)])


# --------------------------------------------------------------------------- leakage


def test_features_as_of_a_date_ignore_everything_after_it(shop: Shop) -> None:
    conversions = from_template("conversions").audience
    # an anonymous id with history before both dates, merged into a user only today
    anon = "anon-before"
    ingest(shop, [event(shop, anon, "App Launched", AS_OF_MID - timedelta(days=3)),
                  event(shop, anon, "Charged", AS_OF_MID - timedelta(days=2), amount=5.0)])
    before = {key: features(shop, None, key[1], key[0])
              for key in ((AS_OF_MID, conversions), (AS_OF, EVERYONE))}
    for _, frame in before.values():
        assert len(frame) > 300 and frame["goal_days"].sum() > 50 and anon in frame.index
    _, frame = before[AS_OF, EVERYONE]
    frame = frame[frame.index.str.startswith("u")]  # the synthetic users
    users = list(frame.index[:60])
    buyers = list(frame.index[frame["goal_days"] > 0][:20])
    later = [AS_OF + timedelta(microseconds=1), AS_OF + timedelta(hours=5),
             END - timedelta(days=1)]

    items = []
    for i, user in enumerate(users + buyers):
        items += [event(shop, user, "App Launched", AS_OF),  # exactly at as_of: not before
                  event(shop, user, "Charged", later[i % 3], amount=999.0, currency="USD"),
                  event(shop, user, "Added To Cart", later[(i + 1) % 3], product_id=i),
                  event(shop, user, "App Uninstalled", later[(i + 2) % 3])]
    # a new event name, many times, and users nobody had seen before
    items += [event(shop, users[i % 60], "Wishlist Added", later[i % 3]) for i in range(200)]
    items += [event(shop, f"newcomer-{i}", "App Launched", later[i % 3]) for i in range(50)]
    # profile changes after the date, dated and undated (undated = when received: now)
    for i, user in enumerate(users[:40]):
        items.append(profile(shop, user, later[i % 3] if i % 2 else None,
                             email=f"new-{i}@example.com", phone="+14155550100",
                             consent={"email": False, "push": True, "sms": True},
                             properties={"country": "XX", "platform": "web",
                                         "loyalty_tier": "gold"}))
    # aliases created now: the anonymous id becomes a user, and two users merge
    items += [alias(shop, anon, users[0]), alias(shop, users[1], users[2])]
    ingest(shop, items)
    assert len(load_aliases(shop.propel, shop.account_id)) == 2

    for (as_of, audience), (spec, frame) in before.items():
        again, after = features(shop, None, audience, as_of)
        assert again == spec  # the chosen features do not see later events either
        pd.testing.assert_frame_equal(after, frame, check_exact=True)

    # control: the same comparison does see a change made before the date
    user = users[3]
    ingest(shop, [event(shop, user, "App Launched", AS_OF - timedelta(microseconds=1))])
    spec, frame = before[AS_OF, EVERYONE]
    _, after = features(shop, spec, EVERYONE, AS_OF)
    assert changed_rows(frame, after) == {user}
    assert after.loc[user, "events_all"] == frame.loc[user, "events_all"] + 1


def test_system_events_do_not_change_features(shop: Shop) -> None:
    as_of = AS_OF - timedelta(days=2)
    spec, frame = features(shop, None, EVERYONE, as_of)
    users = list(frame.index[:50])
    when = [as_of - timedelta(days=d, hours=h) for d in (1, 3, 20) for h in (2, 13)]
    items = []
    for i, user in enumerate(users):
        for name in ("Likelihood Changed", "$session_start", "$identify", "Message Sent",
                     "Message Clicked"):
            items.append(event(shop, user, name, when[i % len(when)],
                               prediction="Predict Conversions", **{"from": "Low", "to": "High"}))
    # a system event is not activity: it brings nobody into the audience
    items += [event(shop, "only-system", "Likelihood Changed", as_of - timedelta(days=1)),
              event(shop, "only-system", "$app_open", as_of - timedelta(days=1))]
    ingest(shop, items)
    again, after = features(shop, None, EVERYONE, as_of)
    assert again == spec
    assert not any(name.startswith("$") or name in ("Likelihood Changed", "Message Sent")
                   for name, _ in spec.events)
    pd.testing.assert_frame_equal(after, frame, check_exact=True)
    assert "only-system" not in after.index
    # ... while the same events under an ordinary name would count
    ingest(shop, [event(shop, users[0], "Likelihood Checked", when[0])])
    _, after = features(shop, spec, EVERYONE, as_of)
    assert after.loc[users[0], "events_all"] == frame.loc[users[0], "events_all"] + 1


def test_a_system_event_the_prediction_names_is_seen(shop: Shop) -> None:
    # A goal of "Message Clicked": its features must see message clicks, while other
    # system events stay out.
    as_of = AS_OF - timedelta(days=3)
    items = []
    for i in range(3):
        user = f"clicker-{i}"
        items += [event(shop, user, "App Launched", as_of - timedelta(days=5)),
                  event(shop, user, "Message Sent", as_of - timedelta(days=4, hours=i)),
                  *[event(shop, user, "Message Clicked", as_of - timedelta(days=d, hours=i))
                    for d in (2, 4)]]
    ingest(shop, items)
    spec, frame = features(shop, None, EVERYONE, as_of, goal="Message Clicked")
    slug = dict(spec.events)["Message Clicked"]
    assert "Message Sent" not in dict(spec.events)
    for i in range(3):
        row = frame.loc[f"clicker-{i}"]
        assert row["goal_days"] == 2 and row[f"n_{slug}_30d"] == 2
        assert row["events_all"] == 3  # the launch and two clicks; the send is left out
    charged, _ = features(shop, None, EVERYONE, as_of)  # a Charged goal names no clicks
    assert "Message Clicked" not in dict(charged.events)


def test_labels_read_only_the_window_after_the_date(shop: Shop) -> None:
    as_of = AS_OF - timedelta(days=5)
    window = timedelta(days=14)
    start = as_of - timedelta(days=2)
    goal = {  # identity -> Charged times (and amounts) relative to as_of
        "lbl-at-start": [(timedelta(0), 10.0)],
        "lbl-before-end": [(window - timedelta(microseconds=1), 10.0)],
        "lbl-at-end": [(window, 10.0)],
        "lbl-just-before": [(-timedelta(microseconds=1), 10.0)],
        "lbl-zero-amount": [(timedelta(days=1), 0.0)],
        "lbl-none": [],
    }
    items = []
    for identity, times in goal.items():
        items.append(event(shop, identity, "App Launched", start))
        items += [event(shop, identity, "Charged", as_of + dt, amount=amount)
                  for dt, amount in times]
    # churn: launching inside the window is the "negative" outcome
    items += [event(shop, "lbl-launches", "App Launched", start),
              event(shop, "lbl-launches", "App Launched", as_of + timedelta(days=3))]
    ingest(shop, items)
    buy = from_template("conversions", window_days=14)
    buy_paid = from_template("conversions", window_days=14,
                             goal_where=(parse_where("amount > 0"),))
    churn = from_template("churn", window_days=14)
    ids = pd.Index([*goal, "lbl-launches"])
    with snapshot(shop.propel.db, shop.propel.lake, shop.account_id) as (con, _):
        register_aliases(con, [])
        got = {name: dict(zip(ids, labels(con, spec, as_of, ids).tolist(), strict=True))
               for name, spec in (("buy", buy), ("paid", buy_paid), ("churn", churn))}
        everyone = compute_features(con, FeatureSpec(events=(), goal_event="Charged"),
                                    EVERYONE, as_of).index
        y = labels(con, buy, as_of, everyone)
        events = con.execute("SELECT identity, name, ts FROM events WHERE kind = 'event'"
                             ).df()
    assert got["buy"] == {"lbl-at-start": 1, "lbl-before-end": 1, "lbl-at-end": 0,
                          "lbl-just-before": 0, "lbl-zero-amount": 1, "lbl-none": 0,
                          "lbl-launches": 0}
    assert got["paid"] == {**got["buy"], "lbl-zero-amount": 0}
    assert got["churn"] == {**{i: 1 for i in goal}, "lbl-launches": 0}
    # and over the whole shop, exactly the users with a Charged in [as_of, as_of + 14d)
    inside = events[(events["name"] == "Charged") & (events["ts"] >= as_of)
                    & (events["ts"] < as_of + window)]
    assert set(everyone[y == 1]) == set(inside["identity"]) & set(everyone)
    assert 0 < y.mean() < 0.5


def test_an_alias_repointed_later_does_not_change_past_features(shop: Shop) -> None:
    propel = shop.propel
    other = Shop(propel, create_account(propel.db, "Aliases").account_id)
    as_of = END - timedelta(days=5)
    ingest(other, [event(other, who, "App Launched", as_of - timedelta(days=10, hours=h))
                   for who, hours in (("u1", 2), ("u2", 2), ("a1", 3)) for h in range(hours)])

    def _alias_made_long_ago(conn) -> None:  # a1 became u1 before the as-of date
        row = {"account_id": other.account_id, "alias": "a1", "identity": "u1",
               "created_at": as_of - timedelta(days=7)}
        conn.execute(insert(identity_aliases).values(**row))
        conn.execute(insert(identity_alias_history).values(**row))

    propel.db.write(_alias_made_long_ago)
    _, frame = features(other, FeatureSpec(events=(), goal_event="Charged"), EVERYONE, as_of)
    assert frame["events_all"].to_dict() == {"u1": 5, "u2": 2}
    ingest(other, [alias(other, "u1", "u2")])  # today, after the as-of date
    _, after = features(other, FeatureSpec(events=(), goal_event="Charged"), EVERYONE, as_of)
    assert after["events_all"].to_dict() == {"u1": 5, "u2": 2}
    # and today, everything is u2's
    _, now = features(other, FeatureSpec(events=(), goal_event="Charged"), EVERYONE,
                      datetime.now(UTC) + timedelta(minutes=1))
    assert now["events_all"].to_dict() == {"u2": 7}


# --------------------------------------------------------------------------- reference


def _reference(shop: Shop, as_of: datetime, audience: Audience) -> pd.DataFrame:
    """The features recomputed in pandas from the raw events: an independent reading of
    the definitions in features.py."""
    with snapshot(shop.propel.db, shop.propel.lake, shop.account_id) as (con, _):
        con.execute("SET TimeZone = 'UTC'")
        raw = con.execute("SELECT kind, identity, name, ts, properties FROM events").df()
    raw = raw[raw["ts"] < as_of]
    ev = raw[(raw["kind"] == "event") & ~raw["name"].str.startswith("$")
             & ~raw["name"].isin(["Likelihood Changed", "Message Sent", "Message Clicked"])]
    ev = ev.assign(day=ev["ts"].dt.floor("D"), hour=ev["ts"].dt.hour,
                   weekend=ev["ts"].dt.day_of_week >= 5)
    last = ev.groupby("identity")["ts"].max()
    keep = last[last >= as_of - timedelta(days=audience.active_within_days or 10**5)].index
    gone = ev[ev["name"].isin(audience.exclude_events)]["identity"].unique()
    ev = ev[ev["identity"].isin(keep) & ~ev["identity"].isin(gone)]
    by = ev.groupby("identity")
    day = pd.Timedelta(days=1)
    out = pd.DataFrame({
        "events_all": by.size(),
        "days_since_last": (as_of - by["ts"].max()) / day,
        "tenure_days": (as_of - by["ts"].min()) / day,
        "share_night": by["hour"].apply(lambda h: (h < 6).mean()),
        "share_weekend": by["weekend"].mean(),
        "events_30d": ev[ev["ts"] >= as_of - 30 * day].groupby("identity").size(),
        "active_days_30d": ev[ev["ts"] >= as_of - 30 * day].groupby("identity")["day"]
        .nunique(),
    })
    charged = ev[ev["name"] == "Charged"]
    amounts = charged["properties"].map(lambda p: orjson.loads(p).get("amount"))
    out["n_charged_30d"] = charged[charged["ts"] >= as_of - 30 * day].groupby("identity").size()
    out["monetary_all"] = amounts.groupby(charged["identity"]).sum()
    out["goal_days"] = charged.groupby("identity")["day"].nunique()
    out["days_since_goal"] = (as_of - charged.groupby("identity")["ts"].max()) / day
    out = out.fillna({"events_30d": 0, "active_days_30d": 0, "n_charged_30d": 0,
                      "goal_days": 0})
    # BG/NBD: whole days up to the last full day before as_of
    last_day = as_of.replace(hour=0, minute=0, second=0, microsecond=0) - day
    full = charged[charged["day"] <= last_day].groupby("identity")["day"]
    first_any = ev[ev["day"] <= last_day].groupby("identity")["day"].min()
    first = full.min().reindex(out.index).fillna(first_any.reindex(out.index))
    out["_bg_x"] = (full.nunique() - 1).reindex(out.index).fillna(0)
    out["_bg_tx"] = ((full.max() - full.min()) / day).reindex(out.index).fillna(0)
    out["_bg_T"] = ((last_day - first) / day).fillna(0)
    prof = raw[raw["kind"] == "profile"].sort_values("ts")
    props = prof["properties"].map(orjson.loads)
    country = props.map(lambda p: p.get("country"))
    seen = prof.assign(country=country)[country.notna()]
    out["p_country"] = seen.groupby("identity")["country"].last()
    consent = props.map(lambda p: (p.get("consent") or {}).get("email"))
    seen = prof.assign(consent=consent)[consent.notna()]
    out["consent_email"] = seen.groupby("identity")["consent"].last().astype(float)
    return out


@pytest.mark.parametrize("as_of", [AS_OF, AS_OF_MID], ids=["midnight", "mid-day"])
def test_features_match_a_pandas_reading_of_the_events(shop: Shop, as_of: datetime) -> None:
    audience = from_template("conversions").audience
    spec, frame = features(shop, None, audience, as_of)
    assert spec.monetary_event == "Charged"
    assert "country" in dict(spec.categorical)
    ref = _reference(shop, as_of, audience)
    assert sorted(frame.index) == sorted(ref.index)
    got = frame.loc[ref.index]
    got = got.assign(p_country=got["p_country"].astype(object),
                     consent_email=got["consent_email"].astype(float))
    for col in ref.columns:
        if not pd.api.types.is_numeric_dtype(ref[col]):
            assert (got[col].astype(object).fillna("-")
                    == ref[col].astype(object).fillna("-")).all(), col
        else:
            np.testing.assert_allclose(got[col].astype(float), ref[col].astype(float),
                                       rtol=1e-12, atol=1e-9, err_msg=col)
    # the weekend share really is Saturday + Sunday (a Friday would not count)
    assert 0.2 < frame["share_weekend"].mean() < 0.4
    assert (frame["_bg_tx"] <= frame["_bg_T"]).all() and (frame["_bg_T"] >= 0).all()


def test_features_are_deterministic(shop: Shop) -> None:
    """Money is summed exactly: summing DOUBLEs in parallel gave different last bits from
    one run to the next."""
    spec, first = features(shop, None, EVERYONE, AS_OF)
    assert spec.monetary_event and first["monetary_all"].notna().sum() > 100
    pd.testing.assert_frame_equal(features(shop, spec, EVERYONE, AS_OF)[1], first,
                                  check_exact=True)


def test_a_category_the_model_never_saw_is_missing(shop: Shop) -> None:
    """Scoring must not break when a new value turns up (a new country): it is missing,
    the way LightGBM treats an unknown category."""
    spec = FeatureSpec(events=(), goal_event="Charged", categorical=(("country", ("US", "GB")),))
    with warnings.catch_warnings():
        warnings.simplefilter("error", pd.errors.PandasChangeWarning)
        _, frame = features(shop, spec, EVERYONE, AS_OF)
    assert list(frame["p_country"].cat.categories) == ["US", "GB"]
    assert set(frame["p_country"].dropna()) == {"US", "GB"}
    assert frame["p_country"].isna().sum() > 100  # IN, DE, BR, ... and no profile


# --------------------------------------------------------------------------- Spark SQL

# sqlglot expression types the feature SQL may use, each of which sqlglot renders as an
# Apache Spark (3.4+) function or operator with the same meaning as in DuckDB.
SPARK_SAFE = {
    "And", "Or", "Not", "Avg", "Case", "If", "Cast", "TryCast", "Coalesce", "Count", "Max",
    "Min", "Sum", "ArgMax", "Floor", "Substring", "StrToUnix", "JSONExtractScalar",
    "StrPosition", "Lower", "Paren",
}
# ... and ones that transpile without complaint but do not mean the same in Spark.
SPARK_UNSAFE = {"DayOfWeek", "DayOfWeekIso", "DateDiff", "TimestampDiff", "Hour", "Anonymous"}


def _spark(sql: str) -> str:
    (out,) = sqlglot.transpile(sql, read="duckdb", write="spark",
                               error_level=sqlglot.ErrorLevel.RAISE,
                               unsupported_level=sqlglot.ErrorLevel.RAISE)
    return out


def _specs() -> list[tuple[FeatureSpec, Audience]]:
    wheres = tuple(parse_where(w) for w in (
        "amount > 0", "currency = USD", "category in [books, music]", "title contains Sale",
        "coupon exists", "qty != 2", "gift = true", "code = '10'"))
    rich = FeatureSpec(
        events=(("App Launched", "app_launched"), ("Charged", "charged"),
                ("It's \"quoted\"", "it_s_quoted")),
        goal_event="Charged", goal_where=wheres, monetary_event="Charged",
        monetary_property="amount", categorical=(("country", ("US", "GB")),
                                                 ("plan.tier", ("a", "b"))),
        numeric_profile=("age", "lifetime value"))
    plain = FeatureSpec(events=(), goal_event="App Launched")
    return [(rich, Audience(active_within_days=30, new_within_days=60,
                            exclude_events=("App Uninstalled",))),
            (plain, EVERYONE)]


@pytest.mark.parametrize("case", [0, 1], ids=["rich", "plain"])
def test_feature_sql_is_one_definition_that_transpiles_to_spark(case: int) -> None:
    spec, audience = _specs()[case]
    prediction = from_template("churn") if case else from_template(
        "conversions", goal_where=spec.goal_where)
    statements = {
        "features": feature_sql(spec, audience, AS_OF_MID),
        "profile": profile_sql(spec, AS_OF_MID),
        "labels": label_sql(prediction, AS_OF_MID),
    }
    for name, sql in statements.items():
        duck = sqlglot.parse_one(sql, read="duckdb")
        # every function is one sqlglot knows, so it is translated rather than copied
        assert not list(duck.find_all(exp.Anonymous)), name
        spark = _spark(sql)
        tree = sqlglot.parse_one(spark, read="spark")
        kinds = {type(node).__name__ for node in tree.find_all(exp.Func)}
        assert kinds <= SPARK_SAFE, (name, kinds - SPARK_SAFE)
        assert not kinds & SPARK_UNSAFE, name
        assert not any(star.args.get("except_") or star.args.get("except")
                       for star in tree.find_all(exp.Star)), f"{name}: SELECT * EXCEPT"
        for duckdb_only in ("EXCLUDE", "EPOCH(", "ARG_MAX", "DATE_DIFF", "JSON_EXTRACT_STRING",
                            "TIMESTAMPTZ"):
            assert duckdb_only not in spark.upper(), (name, duckdb_only)
    assert "GET_JSON_OBJECT" in _spark(statements["features"])
    assert "MAX_BY" in _spark(statements["profile"])


def test_transpile_check_catches_a_construct_spark_does_not_share() -> None:
    """The check above is not vacuous: DuckDB's dayofweek (Sunday = 0) passes through
    sqlglot unchanged, but Spark's counts from Sunday = 1."""
    tree = sqlglot.parse_one(_spark("SELECT dayofweek(ts) IN (0, 6) FROM events"),
                             read="spark")
    assert {type(n).__name__ for n in tree.find_all(exp.Func)} & SPARK_UNSAFE
    # and DuckDB's SELECT * EXCLUDE becomes * EXCEPT, which Apache Spark does not have
    tree = sqlglot.parse_one(_spark("SELECT * EXCLUDE (a) FROM t"), read="spark")
    assert any(star.args.get("except_") for star in tree.find_all(exp.Star))


# --------------------------------------------------------------------------- BG/NBD


def test_bgnbd_inputs_from_an_imported_file_reproduce_cdnow(propel: Propel, tenant) -> None:
    """Fader, Hardie & Lee (2005) on the CDNOW sample: import the raw transactions, read
    the BG/NBD inputs the prediction computes, fit, and get the published estimates."""
    started = time.perf_counter()
    summary = import_file(propel, tenant.id, ImportSpec(
        kind="events", path=DATA / "CDNOW_sample.txt",
        mapping={"identity": "column1", "ts": "column2", "amount": "column4"},
        event_name="Charged", ts_format="%Y%m%d", delimiter="whitespace", header=False))
    assert (summary.accepted, summary.rejected) == (6919, 0)
    spec = FeatureSpec(events=(("Charged", "charged"),), goal_event="Charged",
                       monetary_event="Charged", monetary_property="amount")
    as_of = datetime(1997, 10, 1, tzinfo=UTC)
    with snapshot(propel.db, propel.lake, tenant.id) as (con, _):
        register_aliases(con, [])
        frame = compute_features(con, spec, EVERYONE, as_of)
    assert len(frame) == 2357
    x, t_x, T = (frame[c].to_numpy(float) for c in ("_bg_x", "_bg_tx", "_bg_T"))
    assert x.sum() == 2457
    # customer 1 bought on 1997-01-01, 01-18 and 08-02 (and 12-12, after the date)
    assert (x[0], t_x[0], T[0]) == (2, 213, 272)
    assert T.max() == 272 and T.min() >= 272 - 90  # first purchases are in Q1 1997
    model = BetaGeoModel().fit(x, t_x / 7, T / 7)
    for got, want in zip((model.r_, model.alpha_, model.a_, model.b_),
                         (0.243, 4.414, 0.793, 2.426), strict=True):
        assert abs(got - want) <= 0.001
    assert abs(model.log_likelihood_ - (-9582.4)) <= 0.1
    assert frame["monetary_all"].sum() == pytest.approx(
        _cdnow_amount_before(as_of), rel=1e-12)
    assert time.perf_counter() - started < 60


def _cdnow_amount_before(as_of: datetime) -> float:
    total = 0.0
    for line in (DATA / "CDNOW_sample.txt").read_text().split("\n"):
        parts = line.split()
        if parts and datetime.strptime(parts[2], "%Y%m%d").replace(tzinfo=UTC) < as_of:
            total += float(parts[4])
    return total


def test_goal_conditions_filter_the_goal() -> None:
    cond = parse_where("amount > 0")
    assert cond == Condition("amount", ">", 0)
    import duckdb

    con = duckdb.connect()
    con.execute("CREATE TABLE events AS SELECT * FROM (VALUES "
                "('event', 'a', 'Charged', TIMESTAMPTZ '2025-01-02 00:00:00+00', "
                "'{\"amount\": 5}'),"
                "('event', 'b', 'Charged', TIMESTAMPTZ '2025-01-02 00:00:00+00', "
                "'{\"amount\": 0}'),"
                "('event', 'c', 'Charged', TIMESTAMPTZ '2025-01-02 00:00:00+00', "
                "'{\"amount\": \"n/a\"}'),"
                "('event', 'd', 'Refund', TIMESTAMPTZ '2025-01-02 00:00:00+00', "
                "'{\"amount\": 9}')) t(kind, identity, name, ts, properties)")
    register_aliases(con, [])
    spec = from_template("conversions", goal_where=(cond,))
    ids = pd.Index(["a", "b", "c", "d"])
    y = labels(con, spec, datetime(2025, 1, 1, tzinfo=UTC), ids)
    assert y.tolist() == [1, 0, 0, 0]
