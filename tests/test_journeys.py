"""Journeys end to end on SQLite and PostgreSQL: a journey entered by a likelihood
change, with a send, a wait, an event wait with a timeout, a branch, a split, a
property update and a goal with a holdout; versions; two workers on one batch."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import func, select

from propel import journeys
from propel.campaigns.delivery import DeliveryEngine
from propel.campaigns.tables import inbox_messages, messages
from propel.ingest.records import EventRecord, IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync
from propel.journeys.engine import Engine
from propel.journeys.tables import journey_entries, journey_step_log
from propel.profiles import get_profile

USERS = 60
T0 = datetime.now(UTC).replace(microsecond=0)


def add_users(propel, account, n=USERS):
    items = [IngestItem(key_hash(account, f"p{i}"), profile=ProfileUpdate(
        identity=f"u{i:03d}", email=f"u{i:03d}@example.com",
        properties={"plan": "pro" if i % 2 else "free", "first_name": f"N{i}"}))
        for i in range(n)]
    ingest_sync(propel.db, account, items, [], "test")


def event(propel, account, identity, name, at, **props):
    mid = f"{name}:{identity}:{at.timestamp()}"
    ingest_sync(propel.db, account, [IngestItem(key_hash(account, mid), event=EventRecord(
        message_id=mid, identity=identity, name=name, ts=int(at.timestamp() * 1_000_000),
        properties=orjson.dumps(props).decode()))], [], "test")


def likelihood_changed(propel, account, identity, to="High"):
    event(propel, account, identity, "Likelihood Changed", T0, prediction="Predict Purchase",
          prediction_id="prd_x", to=to, **{"from": "Medium"})


def send(step_id, nxt, title="Hi {{ user.first_name | default('there') }}"):
    return {"id": step_id, "type": "send", "channel": "inbox", "next": nxt,
            "content": {"variants": [{"name": "A", "split": 100, "title": title,
                                      "body": "b"}]}}


DEFINITION = {
    "name": "Win back high intent",
    "entry": {"type": "likelihood", "prediction": "Predict Purchase", "to": ["High"]},
    "reentry": {"policy": "once"},
    "holdout_pct": 0.2,
    "goal": {"event": "Charged", "within_days": 7},
    "steps": [
        send("hello", "pause"),
        {"id": "pause", "type": "wait", "duration": {"days": 1}, "next": "opened"},
        {"id": "opened", "type": "wait_until", "event": "App Opened",
         "timeout": {"days": 2}, "on_event": "is_pro", "on_timeout": "ab"},
        {"id": "is_pro", "type": "branch",
         "condition": {"property": "plan", "op": "=", "value": "pro"},
         "yes": "vip", "no": "bye"},
        {"id": "vip", "type": "update_property", "property": "vip", "value": True,
         "next": "thanks"},
        send("thanks", None, "Thanks"),
        {"id": "ab", "type": "split", "paths": [{"percent": 50, "next": "nudge"},
                                                {"percent": 50, "next": "bye"}]},
        send("nudge", "bye", "Still there?"),
        {"id": "bye", "type": "exit"},
    ],
}


def deliver(propel):
    async def run():
        engine = DeliveryEngine(propel)
        try:
            while await engine.run_once():
                pass
        finally:
            await engine.aclose()
    asyncio.run(run())


def paths(propel, journey_id):
    with propel.db.read() as conn:
        rows = conn.execute(select(journey_entries.c.identity, journey_step_log.c.step,
                                   journey_step_log.c.seq).join(
            journey_step_log, journey_step_log.c.entry_id == journey_entries.c.id).where(
            journey_entries.c.journey_id == journey_id).order_by(journey_step_log.c.seq)).all()
    out: dict[str, list[str]] = {}
    for ident, step, _seq in rows:
        out.setdefault(ident, []).append(step)
    return out


def test_journey_end_to_end(propel, tenant):
    account = tenant.id
    add_users(propel, account)
    j = journeys.create(propel, account, DEFINITION)
    assert j.status == "draft" and j.version == 1
    journeys.publish(propel, account, j.id, now=T0)
    for i in range(USERS):
        likelihood_changed(propel, account, f"u{i:03d}", "High" if i < 50 else "Low")
    likelihood_changed(propel, account, "u000")  # a second change: still one entry

    counts = journeys.advance(propel, now=T0)
    assert counts["entered"] == 50
    with propel.db.read() as conn:
        entries = {r.identity: r for r in conn.execute(select(journey_entries).where(
            journey_entries.c.journey_id == j.id))}
    assert set(entries) == {f"u{i:03d}" for i in range(50)}  # Low did not enter
    held = {i for i, e in entries.items() if e.holdout}
    treated = set(entries) - held
    assert 3 <= len(held) <= 20
    assert all(entries[i].state == "done" and entries[i].exit_reason == "holdout" for i in held)
    assert all(entries[i].state == "waiting" and entries[i].step == "pause" for i in treated)
    deliver(propel)
    with propel.db.read() as conn:
        inbox = Counter(conn.execute(select(inbox_messages.c.identity)).scalars())
    assert set(inbox) == treated and set(inbox.values()) == {1}  # holdout never messaged

    buyer = sorted(treated)[0]
    event(propel, account, buyer, "Charged", T0 + timedelta(hours=12))
    held_buyer = sorted(held)[0]
    event(propel, account, held_buyer, "Charged", T0 + timedelta(hours=13))
    counts = journeys.advance(propel, now=T0 + timedelta(days=1, minutes=1))
    assert counts["converted"] == 1  # the holdout user converts but was never inside

    openers = sorted(treated - {buyer})[:10]
    for ident in openers:
        event(propel, account, ident, "App Opened", T0 + timedelta(days=1, hours=6))
    journeys.advance(propel, now=T0 + timedelta(days=1, hours=7))
    journeys.advance(propel, now=T0 + timedelta(days=4))
    deliver(propel)

    walked = paths(propel, j.id)
    assert walked[buyer] == ["hello", "pause"]  # converted: exited, nothing more
    for ident in openers:
        pro = int(ident[1:]) % 2 == 1
        assert walked[ident] == (["hello", "pause", "opened", "is_pro", "vip", "thanks"]
                                 if pro else ["hello", "pause", "opened", "is_pro", "bye"])
        assert (get_profile(propel.db, account, ident).properties.get("vip") is True) == pro
    rest = treated - set(openers) - {buyer}
    split = Counter(tuple(walked[i]) for i in rest)
    assert set(split) == {("hello", "pause", "opened", "ab", "nudge", "bye"),
                          ("hello", "pause", "opened", "ab", "bye")}
    with propel.db.read() as conn:
        states = {r.identity: (r.state, r.exit_reason) for r in conn.execute(
            select(journey_entries).where(journey_entries.c.journey_id == j.id))}
        inbox = Counter(conn.execute(select(inbox_messages.c.identity)).scalars())
    assert states[buyer] == ("done", "goal")
    assert all(states[i] == ("done", "exit") for i in rest | set(openers)
               if int(i[1:]) % 2 == 0 or i in rest)
    assert inbox[buyer] == 1
    expected = {i: 1 + (walked[i][-1] == "thanks") + ("nudge" in walked[i]) for i in treated}
    assert dict(inbox) == expected

    stats = journeys.journey_stats(propel, account, j.id)
    steps = {s["id"]: s for s in stats["steps"]}
    assert steps["hello"]["entered"] == len(treated)
    assert steps["hello"]["messages"]["sent"] == len(treated)
    assert steps["pause"]["entered"] == len(treated) and steps["pause"]["waiting"] == 0
    assert steps["nudge"]["messages"]["sent"] == sum("nudge" in walked[i] for i in rest)
    assert stats["totals"]["holdout"] == len(held)
    assert stats["totals"]["converted"] == 1 and stats["totals"]["holdout_converted"] == 1
    assert stats["lift"]["treated_n"] == len(treated)
    assert stats["lift"]["low"] <= stats["lift"]["diff"] <= stats["lift"]["high"]
    path = journeys.user_path(propel, account, j.id, openers[1])
    assert [s["step"] for s in path[0]["steps"]] == walked[openers[1]]


def test_a_live_edit_is_a_new_version(propel, tenant):
    account = tenant.id
    add_users(propel, account, 10)
    spec = {"name": "Audience", "entry": {"type": "audience",
                                          "audience": {"property": "plan", "op": "=",
                                                       "value": "pro"}},
            "reentry": {"policy": "once"},
            "steps": [{"id": "w", "type": "wait", "duration": {"hours": 1}, "next": "s"},
                      send("s", None, "old")]}
    j = journeys.create(propel, account, spec)
    journeys.publish(propel, account, j.id, now=T0)
    assert journeys.advance(propel, now=T0)["entered"] == 5
    new = dict(spec, steps=[{"id": "w", "type": "wait", "duration": {"hours": 1},
                             "next": "s2"}, send("s2", None, "new")])
    j2 = journeys.update(propel, account, j.id, new)
    assert j2.version == 2 and j2.status == "live"
    assert journeys.get_version(propel, account, j.id, 1)["steps"][1]["id"] == "s"
    add_users(propel, account, 12)  # u010 and u011 join; u011 is pro
    journeys.advance(propel, now=T0 + timedelta(days=1, minutes=1))  # entry runs daily
    journeys.advance(propel, now=T0 + timedelta(days=1, hours=2))
    walked = paths(propel, j.id)
    assert {i: w for i, w in walked.items() if i != "u011"} == {
        f"u{i:03d}": ["w", "s"] for i in (1, 3, 5, 7, 9)}
    assert walked["u011"] == ["w", "s2"]


def test_two_workers_never_repeat_a_step(propel, tenant):
    account = tenant.id
    add_users(propel, account, 40)
    spec = {"name": "Race", "entry": {"type": "audience", "audience": {"and": []}},
            "steps": [send("a", "b"), {"id": "b", "type": "update_property",
                                       "property": "seen", "value": 1, "next": "c"},
                      send("c", None)]}
    j = journeys.create(propel, account, spec)
    journeys.publish(propel, account, j.id, now=T0)
    journeys.advance(propel, now=T0 - timedelta(seconds=1), max_batches=0)  # enter only
    journeys.advance(propel, now=T0, max_batches=0)
    barrier = threading.Barrier(3)
    results = []

    def worker():
        engine = Engine(propel, batch_size=15)
        barrier.wait()
        while taken := engine.run_batch(T0 + timedelta(seconds=1)):
            results.append(taken)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 40 * 3
    with propel.db.read() as conn:
        per_user = Counter(conn.execute(select(messages.c.identity)).scalars())
        logs = conn.execute(select(func.count()).select_from(journey_step_log)).scalar()
    assert logs == 120 and set(per_user.values()) == {2} and len(per_user) == 40


@pytest.mark.parametrize("bad, path, reason", [
    ({"steps": [send("a", "zz")]}, "steps[0].next", "no step 'zz'"),
    ({"steps": [send("a", None), send("b", None)]}, "steps[1]", "orphan"),
    ({"steps": [{"id": "a", "type": "branch", "condition": {"property": "x", "value": 1},
                 "yes": "b", "no": None}, send("b", "a")]}, "steps[0]", "cycle without a wait"),
    ({"steps": [send("a", "w"), {"id": "w", "type": "wait", "duration": {"hours": 1},
                                 "next": "a"}]}, "steps[0]", "never ends"),
    ({"steps": [{"id": "s", "type": "split", "paths": [{"percent": 60, "next": None},
                                                       {"percent": 30, "next": None}]}]},
     "steps[0].paths", "add up to 100"),
    ({"steps": [send("a", None, "{{ user.x ")]}, "steps[0].content", ""),
    ({"holdout_pct": 0.3, "goal": None}, "holdout_pct", "needs a goal"),
    ({"entry": {"type": "likelihood", "prediction": "P", "to": "Top"}}, "entry.to", "High"),
    ({"reentry": {"policy": "after_days"}}, "reentry.days", "whole number"),
])
def test_validation_names_the_path(bad, path, reason):
    spec = {"name": "x", "entry": {"type": "event", "event": "Added To Cart"},
            "steps": [send("a", None)], **bad}
    with pytest.raises(journeys.JourneyError) as info:
        journeys.validate(spec)
    assert any(p["path"].startswith(path) and reason in p["reason"]
               for p in info.value.problems), info.value.problems


def test_a_cycle_through_a_wait_is_valid():
    spec = {"name": "loop", "entry": {"type": "event", "event": "Added To Cart"},
            "steps": [send("a", "w"), {"id": "w", "type": "wait_until", "event": "Charged",
                                       "timeout": {"days": 1}, "on_event": None,
                                       "on_timeout": "a"}]}
    assert journeys.validate(spec)["steps"][1]["timeout"] == {"days": 1}


def test_a_branch_on_an_event_done_since_entry(propel, tenant):
    account = tenant.id
    add_users(propel, account, 6)
    spec = {"name": "Did they?", "entry": {"type": "audience", "audience": {"and": []}},
            "steps": [{"id": "w", "type": "wait", "duration": {"hours": 2}, "next": "b"},
                      {"id": "b", "type": "branch", "yes": "y", "no": "n",
                       "condition": {"event": "Added To Cart", "did": True,
                                     "where": [{"property": "price", "op": ">",
                                                "value": 20}]}},
                      {"id": "y", "type": "exit"}, {"id": "n", "type": "exit"}]}
    j = journeys.create(propel, account, spec)
    journeys.publish(propel, account, j.id, now=T0)
    journeys.advance(propel, now=T0)
    event(propel, account, "u001", "Added To Cart", T0 + timedelta(hours=1), price=50)
    event(propel, account, "u002", "Added To Cart", T0 + timedelta(hours=1), price=5)
    event(propel, account, "u003", "Added To Cart", T0 - timedelta(hours=1), price=50)
    journeys.advance(propel, now=T0 + timedelta(hours=3))
    walked = paths(propel, j.id)
    assert {i for i, w in walked.items() if w[-1] == "y"} == {"u001"}  # after entry, > 20
    assert all(w[-1] == "n" for i, w in walked.items() if i != "u001") and len(walked) == 6


def test_an_anonymous_id_merged_into_a_profile_walks_as_that_profile(propel, tenant):
    """Events stay under the id they were sent with; a journey reads them as the
    profile that id was merged into: the entry, and the branch on an event done since."""
    account = tenant.id
    add_users(propel, account, 3)
    ingest_sync(propel.db, account, [IngestItem(key_hash(account, "merge-1"),
                                                alias=("anon-7f3", "u001"))], [], "test")
    spec = {"name": "Opened the app", "entry": {"type": "event", "event": "App Opened"},
            "steps": [{"id": "w", "type": "wait", "duration": {"hours": 2}, "next": "b"},
                      {"id": "b", "type": "branch", "yes": "y", "no": "n",
                       "condition": {"event": "Added To Cart", "did": True}},
                      {"id": "y", "type": "exit"}, {"id": "n", "type": "exit"}]}
    j = journeys.create(propel, account, spec)
    journeys.publish(propel, account, j.id, now=T0)
    event(propel, account, "anon-7f3", "App Opened", T0 + timedelta(minutes=1))
    event(propel, account, "u002", "App Opened", T0 + timedelta(minutes=1))
    journeys.advance(propel, now=T0 + timedelta(minutes=2))
    event(propel, account, "anon-7f3", "Added To Cart", T0 + timedelta(hours=1))
    journeys.advance(propel, now=T0 + timedelta(hours=3))
    assert paths(propel, j.id) == {"u001": ["w", "b", "y"], "u002": ["w", "b", "n"]}
