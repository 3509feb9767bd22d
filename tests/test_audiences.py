"""Audiences (propel.audiences) on SQLite and PostgreSQL: every operator, nesting,
prediction groups and scores as properties, event conditions over the lake and the
not-yet-flushed rows, reachability, merged identities, validation paths, index
freshness, materialisation, CSV export and account isolation."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, insert, update

from propel import audiences
from propel.audiences import index as audience_index
from propel.db.meta import utcnow
from propel.ingest import native
from propel.ingest.records import IngestItem, key_hash
from propel.ingest.service import ingest_sync
from propel.lake.flush import flush_batches
from propel.predictions import registry
from propel.predictions.spec import from_template
from propel.predictions.tables import predictions, user_predictions

_today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
NOW = _today + timedelta(hours=12)  # events are planted at or before NOW (ingest refuses
DAY = timedelta(days=1)  # times far in the future)

PEOPLE = [
    {"identity": "ann", "email": "ann@gmail.com", "timezone": "Europe/Paris",
     "consent": {"email": True}, "country": "FR", "plan": "pro", "ltv": 120.5, "age": 34,
     "signup_date": "2025-03-10", "tags": ["vip", "early"], "newsletter": True,
     "city": "Paris"},
    {"identity": "bob", "email": "bob@Yahoo.com", "phone": "+14155550123",
     "consent": {"email": False, "sms": True}, "country": "DE", "plan": "free", "ltv": "45",
     "age": 51, "signup_date": "2025-06-01T09:30:00Z", "newsletter": False,
     "city": "Berlin"},
    {"identity": "cy", "phone": "+33612345678", "push_tokens": ["tok-cy"],
     "consent": {"sms": False}, "country": "US", "plan": "Pro Plus", "ltv": 9.99, "age": 19,
     "signup_date": "2024-12-31", "city": "San Francisco"},
    {"identity": "dee", "email": "dee@proton.me", "push_tokens": ["tok-dee"],
     "consent": {"push": False}, "country": "fr", "signup_date": "not a date",
     "city": "Parma"},
    {"identity": "eve", "push_tokens": ["tok-eve"], "plan": "business", "ltv": 0, "age": 42},
]
ALL = {"ann", "bob", "cy", "dee", "eve"}


def add_profiles(propel, account_id, people):
    items, rejected = native.parse_all(people, account_id, native.parse_profile)
    assert not rejected, rejected
    ingest_sync(propel.db, account_id, items, [], "test")


def add_events(propel, account_id, events):
    """events: (identity, name, datetime, properties)"""
    batch = [{"identity": who, "name": name, "ts": when.timestamp(), "properties": props or {},
              "message_id": f"{who}-{name}-{when.timestamp()}-{i}"}
             for i, (who, name, when, props) in enumerate(events)]
    items, rejected = native.parse_all(batch, account_id, native.parse_event)
    assert not rejected, rejected
    ingest_sync(propel.db, account_id, items, [], "test")


def alias(propel, account_id, anonymous, identity):
    item = IngestItem(key_hash(account_id, f"alias:{anonymous}:{identity}"),
                      alias=(anonymous, identity))
    ingest_sync(propel.db, account_id, [item], [], "test")


def score(propel, account_id, template, groups, version=1):
    """Store a scoring run's result as ``propel.predictions.scoring`` does: the rows
    replaced and ``predictions.last_scored_at`` set in one transaction."""
    spec = from_template(template)
    try:
        pred = registry.get(propel.db, account_id, spec.name)
    except registry.NotFound:
        pred = registry.create(propel.db, account_id, spec)
    now = utcnow()
    rows = [{"prediction_id": pred.id, "identity": ident, "account_id": account_id,
             "probability": s / 100, "score": s, "grp": g, "model_version": version,
             "scored_at": now, "reasons": "[]"} for ident, (g, s) in groups.items()]

    def _replace(conn):
        conn.execute(delete(user_predictions).where(user_predictions.c.prediction_id == pred.id))
        if rows:
            conn.execute(insert(user_predictions), rows)
        conn.execute(update(predictions).where(predictions.c.id == pred.id).values(
            last_scored_at=now, status="scored", current_version=version, updated_at=now))

    propel.db.write(_replace)
    return pred


def who(propel, tenant, rule, **kw):
    return set(audiences.members(propel, tenant.id, rule, now=NOW, fresh=True, **kw))


@pytest.fixture
def shop(propel, tenant):
    add_profiles(propel, tenant.id, PEOPLE)
    return tenant


def prop(name, op, value=None):
    cond = {"property": name, "op": op}
    if value is not None:
        cond["value"] = value
    return cond


@pytest.mark.parametrize("rule, expected", [
    (prop("country", "=", "FR"), {"ann"}),  # exact, case-sensitive
    (prop("country", "equals", "fr"), {"dee"}),
    (prop("country", "!=", "FR"), {"bob", "cy", "dee"}),  # set and different
    (prop("country", "in", ["FR", "DE", "XX"]), {"ann", "bob"}),
    (prop("country", "not in", ["FR", "DE"]), {"cy", "dee"}),
    (prop("plan", "contains", "PRO"), {"ann", "cy"}),  # case-insensitive substring
    (prop("plan", "not contains", "pro"), {"bob", "eve"}),
    (prop("city", "contains", "par"), {"ann", "dee"}),
    (prop("email", "contains", "yahoo"), {"bob"}),  # typed field, stored lower-case
    (prop("tags", "contains", "VIP"), {"ann"}),  # a list is searched in its JSON text
    (prop("ltv", ">", 45), {"ann"}),  # "45" (text) is the number 45
    (prop("ltv", ">=", 45), {"ann", "bob"}),
    (prop("ltv", "<", 10), {"cy", "eve"}),
    (prop("ltv", "<=", 9.99), {"cy", "eve"}),
    (prop("ltv", "between", [0, 45]), {"bob", "cy", "eve"}),
    (prop("ltv", "=", 45), {"bob"}),
    (prop("age", "gte", 42), {"bob", "eve"}),
    (prop("signup_date", "before", "2025-03-10"), {"cy"}),
    (prop("signup_date", "after", "2025-03-10"), {"bob"}),  # from the next day on
    (prop("signup_date", "between", ["2025-03-10", "2025-06-01"]), {"ann", "bob"}),
    (prop("signup_date", "after", "2025-06-01T09:00:00Z"), {"bob"}),
    (prop("signup_date", "before", "2025-06-01T09:30:00Z"), {"ann", "cy"}),
    (prop("newsletter", "=", True), {"ann"}),
    (prop("newsletter", "=", False), {"bob"}),
    (prop("ltv", "is set"), {"ann", "bob", "cy", "eve"}),
    (prop("ltv", "is not set"), {"dee"}),
    (prop("email", "is set"), {"ann", "bob", "dee"}),
    (prop("phone", "is_set"), {"bob", "cy"}),
    (prop("timezone", "=", "Europe/Paris"), {"ann"}),
    (prop("identity", "in", ["eve", "bob", "zed"]), {"bob", "eve"}),
    (prop("nobody has this", "is not set"), ALL),
    (prop("nobody has this", "=", "x"), set()),
    ({"and": []}, ALL),
])
def test_each_operator(propel, shop, rule, expected):
    assert who(propel, shop, rule) == expected
    assert audiences.count(propel, shop.id, rule, now=NOW) == len(expected)


def test_and_or_not_nesting(propel, shop):
    fr_or_de = {"or": [prop("country", "=", "FR"), prop("country", "=", "DE")]}
    assert who(propel, shop, fr_or_de) == {"ann", "bob"}
    assert who(propel, shop, {"not": fr_or_de}) == {"cy", "dee", "eve"}
    # a profile without the property is in the complement of "=" but not in "!="
    assert who(propel, shop, {"not": prop("ltv", ">", 10)}) == {"cy", "dee", "eve"}
    assert who(propel, shop, {"and": [{"not": {"not": prop("plan", "contains", "pro")}},
                                      {"or": [prop("age", "<", 20),
                                              {"and": [prop("ltv", ">", 100),
                                                       {"not": prop("city", "=", "Rome")}]}]}]}
               ) == {"ann", "cy"}
    assert who(propel, shop, {"or": [{"and": []}, prop("x", "=", 1)]}) == ALL
    assert who(propel, shop, {"and": [fr_or_de, {"not": {"and": []}}]}) == set()


def test_prediction_groups_and_scores_are_profile_properties(propel, shop):
    score(propel, shop.id, "conversions", {"ann": ("High", 91.5), "bob": ("Low", 12.0),
                                           "cy": ("Medium", 55.0), "ghost": ("High", 99.0)})
    score(propel, shop.id, "churn", {"ann": ("Low", 5.0), "dee": ("High", 80.0)})
    assert who(propel, shop, prop("Predict Conversions", "=", "High")) == {"ann"}
    assert who(propel, shop, prop("Predict Conversions", "in", ["Low", "Medium"])) == {
        "bob", "cy"}
    assert who(propel, shop, prop("Predict Conversions", "is not set")) == {"dee", "eve"}
    assert who(propel, shop, prop("Predict Conversions score", ">=", 55)) == {"ann", "cy"}
    assert who(propel, shop, prop("Predict Conversions score", "between", [10, 60])) == {
        "bob", "cy"}
    assert who(propel, shop, prop("Predict Churn score", ">=", 80)) == {"dee"}
    assert who(propel, shop, {"and": [prop("Predict Churn", "=", "Low"),
                                      prop("Predict Conversions", "=", "High")]}) == {"ann"}
    listed = {p["name"]: p for p in audiences.available_properties(propel, shop.id)}
    assert listed["Predict Conversions"] == {"name": "Predict Conversions", "type": "string",
                                             "kind": "prediction",
                                             "values": ["High", "Medium", "Low"]}
    assert listed["Predict Churn score"]["type"] == "number"
    assert listed["Predict Churn score"]["kind"] == "prediction"
    assert (listed["ltv"]["type"], listed["ltv"]["kind"]) == ("number", "profile")
    assert listed["plan"]["type"] == "string" and listed["newsletter"]["type"] == "boolean"
    assert listed["signup_date"]["type"] == "string"  # one value is not a date
    assert listed["tags"]["type"] == "list"
    assert (listed["email"]["kind"], listed["created_at"]["type"]) == ("system", "date")
    names = [p["name"] for p in audiences.available_properties(propel, shop.id)]
    assert names.index("Predict Conversions") < names.index("ltv") < names.index("email")


def test_event_conditions_over_the_lake_and_recent_rows(propel, shop):
    add_events(propel, shop.id, [
        ("ann", "Charged", NOW - 40 * DAY, {"amount": 30}),
        ("ann", "Added To Cart", NOW - 2 * DAY, {"price": 25, "sku": "A1"}),
        ("bob", "Added To Cart", NOW - 1 * DAY, {"price": 5}),
        ("bob", "Added To Cart", NOW - 3 * DAY, {"price": 50}),
        ("cy", "Charged", NOW - 5 * DAY, {"amount": 300, "currency": "EUR"}),
        ("zed", "Charged", NOW - 1 * DAY, {"amount": 1}),  # events without a profile
    ])
    flush_batches(propel.db, propel.lake)
    add_events(propel, shop.id, [  # still in recent_events only
        ("ann", "Added To Cart", NOW - timedelta(hours=1), {"price": 40}),
        ("dee", "Charged", NOW - timedelta(hours=2), {"amount": 12.5}),
    ])
    cart = {"event": "Added To Cart"}
    assert who(propel, shop, cart) == {"ann", "bob"}
    assert who(propel, shop, {**cart, "min_count": 2}) == {"ann", "bob"}  # lake + recent
    assert who(propel, shop, {**cart, "min_count": 3}) == set()
    assert who(propel, shop, {**cart, "min_count": 2, "within_days": 3}) == {"ann"}
    assert who(propel, shop, {**cart, "min_count": 2, "within_days": 2}) == set()
    assert who(propel, shop, {**cart, "within_days": 1}) == {"ann"}  # today only
    assert who(propel, shop, {"event": "Charged", "within_days": 30}) == {"cy", "dee"}
    assert who(propel, shop, {"event": "Charged"}) == {"ann", "cy", "dee"}
    assert who(propel, shop, {"event": "Charged", "did": False}) == {"bob", "eve"}
    assert who(propel, shop, {"not": {"event": "Charged", "within_days": 30}}) == {
        "ann", "bob", "eve"}
    day = (NOW - 5 * DAY).date().isoformat()
    assert who(propel, shop, {"event": "Charged", "between": [day, day]}) == {"cy"}
    assert who(propel, shop, {"event": "Charged", "between": [
        (NOW - 41 * DAY).date().isoformat(), (NOW - 6 * DAY).date().isoformat()]}) == {"ann"}
    exact = [(NOW - 5 * DAY - timedelta(minutes=1)).isoformat(),
             (NOW - 5 * DAY + timedelta(minutes=1)).isoformat()]
    assert who(propel, shop, {"event": "Charged", "between": exact}) == {"cy"}
    assert who(propel, shop, {"event": "Charged", "between": [
        exact[1], (NOW + DAY).isoformat()]}) == {"dee"}
    assert who(propel, shop, {**cart, "where": [prop("price", ">", 20)]}) == {"ann", "bob"}
    assert who(propel, shop, {**cart, "min_count": 2,
                              "where": [prop("price", ">=", 25)]}) == {"ann"}
    assert who(propel, shop, {**cart, "where": [prop("price", "<", 10)]}) == {"bob"}
    assert who(propel, shop, {"event": "Charged", "where": [
        prop("currency", "in", ["EUR", "USD"])]}) == {"cy"}
    assert who(propel, shop, {"event": "Charged", "where": [prop("currency", "is not set")]}
               ) == {"ann", "dee"}
    assert who(propel, shop, {**cart, "where": [prop("sku", "contains", "a")]}) == {"ann"}
    assert who(propel, shop, {"event": "Charged", "within_days": 1,
                              "where": [prop("amount", "=", 12.5)]}) == {"dee"}
    assert who(propel, shop, {"event": "Never Happened", "did": False}) == ALL
    # the same rows flushed (they stay in recent_events for the retention) count once
    flush_batches(propel.db, propel.lake)
    assert who(propel, shop, {**cart, "min_count": 2}) == {"ann", "bob"}
    assert who(propel, shop, {**cart, "min_count": 3}) == set()
    assert who(propel, shop, {**cart, "min_count": 2, "where": [prop("price", ">=", 25)]}
               ) == {"ann"}
    # a compaction rewrites the files; the rebuilt rollup counts the same
    propel.lake.compact()
    assert who(propel, shop, {**cart, "min_count": 2}) == {"ann", "bob"}
    assert who(propel, shop, {"event": "Charged", "within_days": 30}) == {"cy", "dee"}


def test_the_example_rule_of_the_brief(propel, shop):
    score(propel, shop.id, "conversions", {p["identity"]: ("Low", 10.0) for p in PEOPLE})
    add_events(propel, shop.id, [
        ("ann", "Added To Cart", NOW - 1 * DAY, {"price": 30}),
        ("ann", "Added To Cart", NOW - 2 * DAY, {"price": 25}),
        ("bob", "Added To Cart", NOW - 1 * DAY, {"price": 30}),
        ("bob", "Added To Cart", NOW - 2 * DAY, {"price": 35}),
        ("bob", "Charged", NOW - 3 * DAY, {}),
        ("dee", "Added To Cart", NOW - 1 * DAY, {"price": 99}),
        ("dee", "Added To Cart", NOW - 6 * DAY, {"price": 99}),
        ("eve", "Added To Cart", NOW - 1 * DAY, {"price": 21}),
        ("eve", "Added To Cart", NOW - 1 * DAY - timedelta(hours=1), {"price": 19}),
    ])
    rule = {"and": [prop("Predict Conversions", "=", "Low"),
                    {"not": {"event": "Charged", "within_days": 30}},
                    {"event": "Added To Cart", "min_count": 2, "within_days": 7,
                     "where": [prop("price", ">", 20)]},
                    {"or": [prop("country", "in", ["FR", "DE"]), {"reachable": "email"}]}]}
    # ann: all; bob: charged; dee: "fr" is not FR but has email (push consent is not
    # e-mail); eve: one cart above 20
    assert who(propel, shop, rule) == {"ann", "dee"}


def test_reachability_follows_addresses_and_consent(propel, shop):
    assert who(propel, shop, {"reachable": "email"}) == {"ann", "dee"}  # bob opted out
    assert who(propel, shop, {"reachable": "sms"}) == {"bob"}  # cy opted out
    assert who(propel, shop, {"reachable": "whatsapp"}) == {"bob", "cy"}
    assert who(propel, shop, {"reachable": "push"}) == {"cy", "eve"}  # dee opted out
    assert who(propel, shop, {"reachable": "inbox"}) == ALL
    assert who(propel, shop, {"reachable": "webhook"}) == ALL
    add_profiles(propel, shop.id, [{"identity": "bob", "consent": {"email": True}}])
    assert who(propel, shop, {"reachable": "email"}) == {"ann", "bob", "dee"}


def test_merged_identities_count_once(propel, shop):
    add_profiles(propel, shop.id, [{"identity": "anon-1", "country": "IT", "plan": "trial"}])
    add_events(propel, shop.id, [("anon-1", "Search", NOW - 1 * DAY, {"q": "shoes"}),
                                 ("ann", "Search", NOW - 2 * DAY, {"q": "bags"})])
    search = {"event": "Search", "min_count": 2}
    assert who(propel, shop, {"event": "Search"}) == {"anon-1", "ann"}
    assert audiences.count(propel, shop.id, {"and": []}, fresh=True) == 6
    flush_batches(propel.db, propel.lake)
    alias(propel, shop.id, "anon-1", "ann")
    add_events(propel, shop.id, [("anon-1", "Search", NOW - timedelta(hours=1), {"q": "x"})])
    assert who(propel, shop, {"event": "Search"}) == {"ann"}
    assert who(propel, shop, {**search, "min_count": 3}) == {"ann"}  # lake + recent, both ids
    assert who(propel, shop, {"event": "Search", "where": [prop("q", "=", "shoes")]}) == {"ann"}
    assert audiences.count(propel, shop.id, {"and": []}, fresh=True) == 5
    assert who(propel, shop, prop("country", "=", "IT")) == set()  # the identified one wins
    assert who(propel, shop, prop("plan", "=", "trial")) == set()
    assert "anon-1" not in audiences.members(propel, shop.id, {"and": []})


@pytest.mark.parametrize("rule, message", [
    ({"and": [prop("a", "=", 1), {"event": "E"},
              {"property": "country", "op": "like", "value": "F%"}]},
     "and[2].op: unknown operator 'like'"),
    ({"or": [{"not": {"property": "x", "op": ">", "value": "ten"}}]},
     "or[0].not.value: must be a number"),
    ({"and": [{"event": "E", "where": [prop("p", "in", [])]}]},
     "and[0].where[0].value: operator 'in' needs a non-empty list"),
    ({"event": "E", "within_days": 0}, "within_days: must be a whole number"),
    ({"event": "E", "within_days": 3, "between": ["2026-01-01", "2026-01-02"]},
     "rule: give within_days or between"),
    ({"event": "E", "between": ["2026-02-01", "2026-01-01"]}, "between: '2026-02-01' is after"),
    ({"event": "E", "between": ["2026-02-30", "2026-03-01"]}, "between[0]: '2026-02-30' is not"),
    ({"event": "E", "min_count": 1.5}, "min_count: must be a whole number"),
    ({"event": "", "did": True}, "event: event must be a non-empty string"),
    ({"event": "E", "did": "no"}, "did: must be true or false"),
    ({"event": "E", "when": 3}, "rule: unknown key 'when'"),
    ({"reachable": "pigeon"}, "reachable: unknown channel 'pigeon'"),
    ({"or": []}, "or: needs at least one rule"),
    ({"and": {"x": 1}}, "and: must be a list of rules"),
    ({"and": [], "or": []}, "rule: 'and' must be the only key"),
    ({"hello": 1}, "rule: expected one of and, or, not, property, event, reachable"),
    ([1, 2], "rule: must be a JSON object"),
    (prop("d", "before", "yesterday"), "value: must be an ISO date"),
    (prop("n", "between", [5, 1]), "value: low 5 is above high 1"),
    (prop("n", "between", [1]), "value: operator 'between' needs [low, high]"),
    (prop("n", "contains", 3), "value: operator 'contains' needs a non-empty string"),
    (prop("n", "="), "value: operator '=' needs a value"),
    ({"property": "n", "op": "is set", "value": 3}, "value: operator 'is set' takes no value"),
    ({"property": "", "op": "="}, "property: property must be a non-empty string"),
    ({"property": "n", "op": "=", "value": {"a": 1}}, "value: must be a string, number"),
    ({"property": "n", "op": "in", "value": [1, [2]]}, "value[1]: must be a string, number"),
])
def test_validation_errors_name_the_path(propel, tenant, rule, message):
    with pytest.raises(audiences.AudienceError) as err:
        audiences.validate(rule)
    assert str(err.value).startswith(message) or message in str(err.value), str(err.value)
    with pytest.raises(audiences.AudienceError):
        audiences.count(propel, tenant.id, rule)


def test_validate_returns_the_parsed_rule_which_round_trips():
    rule = {"and": [prop("Predict Conversions", "=", "Low"),
                    {"not": {"event": "Charged", "within_days": 30}},
                    {"event": "Added To Cart", "min_count": 2, "within_days": 7,
                     "where": [prop("price", ">", 20)]},
                    {"or": [prop("country", "in", ["FR", "DE"]), {"reachable": "email"}]}]}
    parsed = audiences.validate(rule)
    assert isinstance(parsed, audiences.AllOf)
    assert parsed.to_json() == rule
    assert audiences.validate(parsed) is parsed


def test_index_refreshes_after_a_profile_change_and_a_new_scoring(propel, shop, monkeypatch):
    rule = prop("plan", "=", "pro")
    assert audiences.count(propel, shop.id, rule) == 1
    built = audience_index.index_for(propel, shop.id).profiles
    add_profiles(propel, shop.id, [{"identity": "bob", "plan": "pro"},
                                   {"identity": "fay", "plan": "pro", "email": "f@x.io"}])
    assert audiences.count(propel, shop.id, rule, fresh=True) == 3
    assert who(propel, shop, rule) == {"ann", "bob", "fay"}
    assert who(propel, shop, {"reachable": "email"}) == {"ann", "dee", "fay"}
    state = audience_index.index_for(propel, shop.id).profiles
    assert state is not built and state.size == 6  # folded in, not rebuilt from scratch
    # without `fresh`, a call answers from the index and, once RECHECK_SECONDS have
    # passed, re-reads the keys in the background
    index = audience_index.index_for(propel, shop.id)
    monkeypatch.setattr(audience_index, "RECHECK_SECONDS", 3600.0)
    add_profiles(propel, shop.id, [{"identity": "ann", "plan": "free"}])
    assert audiences.count(propel, shop.id, rule) == 3  # not re-checked yet
    monkeypatch.setattr(audience_index, "RECHECK_SECONDS", 0.0)
    monkeypatch.setattr(audience_index, "RECHECK_FACTOR", 0.0)
    audiences.count(propel, shop.id, rule)
    index.wait(30)
    assert audiences.count(propel, shop.id, rule) == 2
    monkeypatch.setattr(audience_index, "RECHECK_SECONDS", 3600.0)
    score(propel, shop.id, "conversions", {"ann": ("High", 90.0)})
    assert audiences.count(propel, shop.id, prop("Predict Conversions", "=", "High")) == 1
    # a new scoring run shows at once, even within RECHECK_SECONDS
    score(propel, shop.id, "conversions", {"bob": ("High", 95.0), "cy": ("High", 93.0),
                                           "ann": ("Low", 3.0)}, version=2)
    assert set(audiences.members(propel, shop.id, prop("Predict Conversions", "=", "High"))
               ) == {"bob", "cy"}
    assert audiences.count(propel, shop.id, prop("Predict Conversions score", "<", 5)) == 1


def test_new_lake_versions_are_folded_in(propel, shop):
    add_events(propel, shop.id, [("ann", "Viewed", NOW - DAY, {})])
    flush_batches(propel.db, propel.lake)
    assert who(propel, shop, {"event": "Viewed"}) == {"ann"}
    first = audience_index.index_for(propel, shop.id).events
    seen = {"ann"}
    for i, person in enumerate(["bob", "cy", "newbie"]):
        add_events(propel, shop.id, [(person, "Viewed", NOW - (i + 1) * DAY, {})])
        flush_batches(propel.db, propel.lake)
        seen |= {person} & ALL  # newbie has no profile
        assert who(propel, shop, {"event": "Viewed"}) == seen
    state = audience_index.index_for(propel, shop.id).events
    # each new version's files were read alone, the first rollup kept as it was
    assert state.version > first.version and len(state.segments) == 4
    assert state.segments[0] is first.segments[0]
    assert who(propel, shop, {"event": "Viewed", "within_days": 2}) == {"ann", "bob"}
    assert who(propel, shop, {"event": "Viewed", "min_count": 2}) == set()


def test_materialize_records_the_state_at_that_moment(propel, shop):
    score(propel, shop.id, "conversions", {"ann": ("High", 91.5), "cy": ("Low", 2.0)},
          version=3)
    score(propel, shop.id, "churn", {"ann": ("Low", 7.5)}, version=5)
    members = audiences.materialize(propel, shop.id, {"or": [prop("country", "=", "FR"),
                                                             prop("plan", "contains", "plus")]},
                                    now=NOW)
    assert [m.identity for m in members] == ["ann", "cy"]
    ann, cy = members
    assert isinstance(ann, audiences.Member)
    assert ann.email == "ann@gmail.com" and ann.timezone == "Europe/Paris"
    assert ann.consent == {"email": True} and ann.push_tokens == []
    assert ann.properties["ltv"] == 120.5 and ann.properties["tags"] == ["vip", "early"]
    assert ann.predictions == {"Predict Conversions": ("High", 91.5, 3),
                               "Predict Churn": ("Low", 7.5, 5)}
    assert cy.phone == "+33612345678" and cy.push_tokens == ["tok-cy"]
    assert cy.consent == {"sms": False}
    assert cy.predictions == {"Predict Conversions": ("Low", 2.0, 3)}
    # the state at the moment of the call: a change just before is seen
    add_profiles(propel, shop.id, [{"identity": "cy", "email": "cy@new.io"}])
    score(propel, shop.id, "conversions", {"cy": ("Medium", 50.0)}, version=4)
    cy = audiences.materialize(propel, shop.id, prop("identity", "=", "cy"))[0]
    assert cy.email == "cy@new.io"
    assert cy.predictions["Predict Conversions"] == ("Medium", 50.0, 4)


def test_export_csv_and_preview(propel, shop, tmp_path):
    score(propel, shop.id, "conversions", {"ann": ("High", 91.5), "bob": ("Low", 12.0)})
    score(propel, shop.id, "churn", {"bob": ("High", 88.0)})
    path = tmp_path / "out.csv"
    rule = {"not": prop("identity", "=", "eve")}
    assert audiences.export_csv(propel, shop.id, rule, path) == 4
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows == [
        ["identity", "email", "phone", "Predict Churn", "Predict Churn score",
         "Predict Conversions", "Predict Conversions score"],
        ["ann", "ann@gmail.com", "", "", "", "High", "91.5"],
        ["bob", "bob@yahoo.com", "+14155550123", "High", "88.0", "Low", "12.0"],
        ["cy", "", "+33612345678", "", "", "", ""],
        ["dee", "dee@proton.me", "", "", "", "", ""],
    ]
    assert audiences.export_csv(propel, shop.id, prop("x", "=", "y"), path) == 0
    assert path.read_text().splitlines() == [
        "identity,email,phone,Predict Churn,Predict Churn score,Predict Conversions,"
        "Predict Conversions score"]

    sample = audiences.preview(propel, shop.id, prop("ltv", ">", 1), limit=5)
    assert [u["identity"] for u in sample] == ["ann", "bob", "cy"]
    ann = sample[0]
    assert ann["email"] == "ann@gmail.com"
    assert ann["properties"]["ltv"] == 120.5  # the property the rule names comes first
    assert len(ann["properties"]) <= audiences.PREVIEW_PROPERTIES
    assert ann["predictions"] == {"Predict Conversions": "High", "Predict Churn": None}
    assert sample[1]["predictions"] == {"Predict Conversions": "Low", "Predict Churn": "High"}
    two = audiences.preview(propel, shop.id, {"and": []}, limit=2)
    assert len(two) == 2 and {u["identity"] for u in two} <= ALL


def test_accounts_are_isolated(propel, tenant, other_tenant):
    add_profiles(propel, tenant.id, [{"identity": "u1", "country": "FR"},
                                     {"identity": "u2", "country": "FR"}])
    add_profiles(propel, other_tenant.id, [{"identity": "u1", "country": "DE"},
                                           {"identity": "u3", "country": "FR"}])
    add_events(propel, tenant.id, [("u1", "Charged", NOW - DAY, {"amount": 5})])
    add_events(propel, other_tenant.id, [("u2", "Charged", NOW - DAY, {"amount": 5}),
                                         ("u3", "Charged", NOW - DAY, {"amount": 5})])
    flush_batches(propel.db, propel.lake)
    add_events(propel, other_tenant.id, [("u1", "Charged", NOW, {"amount": 5})])
    score(propel, other_tenant.id, "conversions", {"u1": ("High", 99.0)})
    fr = prop("country", "=", "FR")
    assert set(audiences.members(propel, tenant.id, fr)) == {"u1", "u2"}
    assert set(audiences.members(propel, other_tenant.id, fr)) == {"u3"}
    charged = {"event": "Charged"}
    assert set(audiences.members(propel, tenant.id, charged, now=NOW)) == {"u1"}
    assert set(audiences.members(propel, other_tenant.id, charged, now=NOW)) == {"u1", "u3"}
    assert audiences.count(propel, tenant.id, {"event": "Charged", "where": [
        prop("amount", "=", 5)]}, now=NOW) == 1
    assert audiences.count(propel, tenant.id, prop("Predict Conversions", "is set")) == 0
    assert audiences.count(propel, other_tenant.id, prop("Predict Conversions", "=", "High")
                           ) == 1
    names = {p["name"] for p in audiences.available_properties(propel, tenant.id)}
    assert "Predict Conversions" not in names
    (u1,) = audiences.materialize(propel, tenant.id, prop("identity", "=", "u1"))
    assert u1.predictions == {}


def test_an_account_without_data(propel, tenant):
    assert audiences.count(propel, tenant.id, {"and": []}) == 0
    assert audiences.members(propel, tenant.id, {"event": "E", "did": False}) == []
    assert audiences.materialize(propel, tenant.id, {"and": []}) == []
    assert audiences.preview(propel, tenant.id, {"and": []}) == []
    kinds = {p["kind"] for p in audiences.available_properties(propel, tenant.id)}
    assert kinds == {"system"}


def test_the_byte_buffer_substring_search_matches_arrow():
    import random

    import pyarrow as pa
    import pyarrow.compute as pc

    from propel.audiences.profile_index import BIG_DICTIONARY, substring_lut

    rng = random.Random(5)
    alphabet = "abé.@x_ü漢字z"
    values = pa.array(["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10)))
                       for _ in range(BIG_DICTIONARY + 5000)])
    for arr in (values, values.slice(777, BIG_DICTIONARY + 10)):
        for needle in ["a", "ab", "é.", "漢字", "z@", "x_ü", ".", "@@", "abab", "字z", "q"]:
            expected = pc.match_substring(arr, needle).to_numpy(zero_copy_only=False)
            assert (substring_lut(arr, needle) == expected).all(), needle
