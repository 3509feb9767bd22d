"""Conversion attribution on both databases: goal events planted before, inside and after
the window, property filters, holdout users on the same clock, revenue, identity
merges, events in recent_events and in the lake, recurring dispatches, re-runs, and a
campaign of 100,000 messages."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import insert, select, update

from propel.campaigns.attribution import attribute_conversions
from propel.campaigns.stats import campaign_stats
from propel.campaigns.tables import campaigns, dispatches, messages
from propel.db.meta import micros
from propel.ingest.records import EventRecord, IngestItem, key_hash
from propel.ingest.service import ingest_sync
from propel.lake.flush import flush_batches
from propel.lake.reader import count_events

T0 = datetime(2024, 3, 4, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)
GOAL = {"event": "Order Completed", "where": [{"property": "amount", "op": ">", "value": 10}],
        "window_hours": 24, "revenue_property": "amount"}


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def add_campaign(propel, account_id: str, goal: dict | None = GOAL) -> str:
    cid = uuid.uuid4().hex
    now = datetime.now(UTC)
    propel.db.write(lambda conn: conn.execute(insert(campaigns).values(
        id=cid, account_id=account_id, name="Attr", status="running", channel="email",
        audience="{}", content='{"variants": []}', schedule='{"type": "now"}', dnd="null",
        caps="null", holdout_pct=0.2, goal=orjson.dumps(goal).decode(), created_at=now,
        updated_at=now)))
    return cid


def add_dispatch(propel, account_id: str, cid: str, started: datetime = T0) -> int:
    return propel.db.write(lambda conn: conn.execute(insert(dispatches).values(
        campaign_id=cid, account_id=account_id, started_at=started, status="done",
        targeted=0).returning(dispatches.c.id)).scalar())


def add_messages(propel, account_id: str, cid: str, dispatch_id: int,
                 users: dict[str, str] | list[str], **extra) -> None:
    """users: identity -> state (or a list of identities, all sent)."""
    if isinstance(users, list):
        users = dict.fromkeys(users, "sent")
    rows = [{"account_id": account_id, "campaign_id": cid, "dispatch_id": dispatch_id,
             "identity": ident, "key": f"k{dispatch_id}-{ident}", "state": state,
             "attempts": 0, "created_at": T0, "sent_at": None if state == "holdout" else T0,
             **extra} for ident, state in users.items()]
    for i in range(0, len(rows), 10_000):
        propel.db.write(lambda conn, c=rows[i:i + 10_000]: conn.execute(insert(messages), c))


_seq = iter(range(10**9))


def event(account_id: str, identity: str, when: datetime, name: str = "Order Completed",
          **props) -> IngestItem:
    mid = f"ev-{next(_seq)}"
    return IngestItem(key_hash(account_id, mid), event=EventRecord(
        message_id=mid, identity=identity, name=name, ts=micros(when),
        properties=orjson.dumps(props).decode()))


def plant(propel, account_id: str, items: list[IngestItem]) -> None:
    for i in range(0, len(items), 5000):
        ingest_sync(propel.db, account_id, items[i:i + 5000], [], "test")


def merge(propel, account_id: str, anon: str, user: str) -> None:
    ingest_sync(propel.db, account_id, [IngestItem(key_hash(account_id, f"alias-{anon}"),
                                                   alias=(anon, user))], [], "test")


def outcome(propel, cid: str) -> dict[tuple[int, str], tuple[datetime | None, float | None]]:
    with propel.db.read() as conn:
        rows = conn.execute(select(messages.c.dispatch_id, messages.c.identity,
                                   messages.c.converted_at, messages.c.revenue)
                            .where(messages.c.campaign_id == cid)).all()
    return {(d, i): (at, rev) for d, i, at, rev in rows}


def by_user(propel, cid: str) -> dict[str, tuple[datetime | None, float | None]]:
    return {i: v for (_, i), v in outcome(propel, cid).items()}


# --------------------------------------------------------------------------------------------
# the window, filters, revenue and the holdout
# --------------------------------------------------------------------------------------------

def test_window_filters_revenue_and_holdout_on_the_same_clock(propel, tenant, other_tenant):
    cid = add_campaign(propel, tenant.id)
    did = add_dispatch(propel, tenant.id, cid)
    add_messages(propel, tenant.id, cid, did, {
        "before": "sent", "at_start": "sent", "inside": "sent", "small": "sent",
        "last_us": "sent", "at_end": "sent", "after": "sent", "other_name": "sent",
        "text_amount": "sent", "no_amount": "sent", "suppressed": "suppressed",
        "late_send": "sent", "hold_in": "holdout", "hold_before": "holdout",
        "hold_after": "holdout", "quiet": "sent"})
    # a send hours after the dispatch: the clock is still the dispatch's
    propel.db.write(lambda conn: conn.execute(update(messages).where(
        messages.c.identity == "late_send").values(sent_at=T0 + 6 * H)))
    a = tenant.id
    plant(propel, a, [
        event(a, "before", T0 - timedelta(microseconds=1), amount=50),
        event(a, "at_start", T0, amount=20),
        event(a, "inside", T0 + 5 * H, amount=30),
        event(a, "inside", T0 + 2 * H, amount=15),
        event(a, "inside", T0 + 30 * H, amount=100),  # after the window: not revenue
        event(a, "small", T0 + 1 * H, amount=5),  # fails amount > 10
        event(a, "small", T0 + 3 * H, amount=12),
        event(a, "last_us", T0 + 24 * H - timedelta(microseconds=1), amount=11),
        event(a, "at_end", T0 + 24 * H, amount=11),
        event(a, "after", T0 + 25 * H, amount=99),
        event(a, "other_name", T0 + 1 * H, name="Order Refunded", amount=40),
        event(a, "text_amount", T0 + 4 * H, amount="25.50"),
        event(a, "no_amount", T0 + 4 * H),  # no amount: fails the filter
        event(a, "suppressed", T0 + 7 * H, amount=60),
        event(a, "late_send", T0 + 2 * H, amount=70),
        event(a, "hold_in", T0 + 1 * H, amount=40),
        event(a, "hold_in", T0 + 9 * H, amount=10.5),
        event(a, "hold_before", T0 - H, amount=40),
        event(a, "hold_after", T0 + 24 * H + H, amount=40),
    ])
    # the same identity converting in another account does not count here
    plant(propel, other_tenant.id, [event(other_tenant.id, "quiet", T0 + H, amount=500)])

    assert attribute_conversions(propel, cid) == 8
    got = by_user(propel, cid)
    assert got == {
        "before": (None, None), "at_start": (T0, 20.0), "inside": (T0 + 2 * H, 45.0),
        "small": (T0 + 3 * H, 12.0),
        "last_us": (T0 + 24 * H - timedelta(microseconds=1), 11.0),
        "at_end": (None, None), "after": (None, None), "other_name": (None, None),
        "text_amount": (T0 + 4 * H, 25.5), "no_amount": (None, None),
        "suppressed": (T0 + 7 * H, 60.0), "late_send": (T0 + 2 * H, 70.0),
        "hold_in": (T0 + H, 50.5), "hold_before": (None, None), "hold_after": (None, None),
        "quiet": (None, None)}
    stats = campaign_stats(propel.db, cid)
    assert stats["totals"]["converted"] == 7 and stats["totals"]["revenue"] == 243.5
    assert stats["lift"]["treated_n"] == 13 and stats["lift"]["treated_conversions"] == 7
    assert stats["lift"]["holdout_n"] == 3 and stats["lift"]["holdout_conversions"] == 1


def test_default_window_is_one_day_and_custom_windows_apply(propel, tenant):
    a = tenant.id
    plant(propel, a, [event(a, "u1", T0 + 1.5 * H),
                      event(a, "u2", T0 + 23 * H), event(a, "u3", T0 + 25 * H)])
    one_day = add_campaign(propel, a, {"event": "Order Completed"})
    two_hours = add_campaign(propel, a, {"event": "Order Completed", "window_hours": 2})
    for cid in (one_day, two_hours):
        add_messages(propel, a, cid, add_dispatch(propel, a, cid), ["u1", "u2", "u3"])
    assert attribute_conversions(propel, one_day) == 2
    assert attribute_conversions(propel, two_hours) == 1
    assert {u for u, (at, _) in by_user(propel, one_day).items() if at} == {"u1", "u2"}
    assert {u for u, (at, _) in by_user(propel, two_hours).items() if at} == {"u1"}
    # without a revenue property, revenue stays empty
    assert by_user(propel, one_day)["u1"] == (T0 + 1.5 * H, None)


def test_window_still_open_counts_up_to_now(propel, tenant):
    a = tenant.id
    cid = add_campaign(propel, a)
    add_messages(propel, a, cid, add_dispatch(propel, a, cid), ["u1", "u2"])
    plant(propel, a, [event(a, "u1", T0 + H, amount=20), event(a, "u1", T0 + 5 * H, amount=30),
                      event(a, "u2", T0 + 3 * H, amount=40)])
    assert attribute_conversions(propel, cid, now=T0 + 2 * H) == 1
    assert by_user(propel, cid) == {"u1": (T0 + H, 20.0), "u2": (None, None)}
    assert attribute_conversions(propel, cid, now=T0 + 48 * H) == 2
    assert by_user(propel, cid) == {"u1": (T0 + H, 50.0), "u2": (T0 + 3 * H, 40.0)}
    # a dispatch that has not started yet converts nobody
    assert attribute_conversions(propel, cid, now=T0 - H) == 0
    assert by_user(propel, cid) == {"u1": (None, None), "u2": (None, None)}


def test_rerun_is_idempotent_and_follows_goal_edits(propel, tenant, monkeypatch):
    a = tenant.id
    cid = add_campaign(propel, a)
    add_messages(propel, a, cid, add_dispatch(propel, a, cid),
                 {"u1": "sent", "u2": "holdout", "u3": "sent"})
    plant(propel, a, [event(a, "u1", T0 + H, amount=19.99), event(a, "u1", T0 + 2 * H,
                                                                   amount=10.01 + 0.02),
                      event(a, "u1", T0 + 4 * H, amount=0.1 + 10.2),
                      event(a, "u2", T0 + 3 * H, amount=1e6 / 3)])
    assert attribute_conversions(propel, cid) == 2
    first = outcome(propel, cid)
    assert by_user(propel, cid)["u1"] == (T0 + H, pytest.approx(19.99 + 10.03 + 10.3))

    import propel.campaigns.attribution as attribution

    writes: list[int] = []
    real = attribution._record
    monkeypatch.setattr(attribution, "_record",
                        lambda conn, d, c: (writes.append(len(c)), real(conn, d, c)))
    for _ in range(3):
        assert attribute_conversions(propel, cid) == 2
        assert outcome(propel, cid) == first  # exactly the same values
    assert sum(writes) == 0  # nothing changed, so nothing was written

    # a stricter goal: conversions that no longer qualify are cleared
    stricter = {**GOAL, "where": [{"property": "amount", "op": ">", "value": 1000}]}
    propel.db.write(lambda conn: conn.execute(update(campaigns).where(
        campaigns.c.id == cid).values(goal=orjson.dumps(stricter).decode())))
    assert attribute_conversions(propel, cid) == 1
    assert by_user(propel, cid) == {"u1": (None, None), "u2": (T0 + 3 * H,
                                                               pytest.approx(333333.333333)),
                                    "u3": (None, None)}
    assert sum(writes) == 1  # only u1 changed


def test_campaign_without_goal_converts_nobody(propel, tenant):
    a = tenant.id
    plant(propel, a, [event(a, "u1", T0 + H, amount=20)])
    for goal in (None, {}):
        cid = add_campaign(propel, a, goal)
        add_messages(propel, a, cid, add_dispatch(propel, a, cid), ["u1"])
        assert attribute_conversions(propel, cid) == 0
        assert by_user(propel, cid) == {"u1": (None, None)}
    assert attribute_conversions(propel, "no-such-campaign") == 0
    # a goal but no dispatch yet
    assert attribute_conversions(propel, add_campaign(propel, a)) == 0


# --------------------------------------------------------------------------------------------
# identities and where events live
# --------------------------------------------------------------------------------------------

def test_conversion_under_a_merged_anonymous_id_counts(propel, tenant):
    a = tenant.id
    cid = add_campaign(propel, a)
    add_messages(propel, a, cid, add_dispatch(propel, a, cid),
                 {"user-1": "sent", "anon-7": "sent", "user-3": "holdout", "user-4": "sent"})
    plant(propel, a, [
        event(a, "anon-1", T0 + H, amount=20),  # browsing anonymously, then logs in
        event(a, "user-1", T0 + 3 * H, amount=5),  # filtered out (amount)
        event(a, "user-7", T0 + 2 * H, amount=30),  # the message went to anon-7, now user-7
        event(a, "anon-3", T0 + 4 * H, amount=40),  # holdout side resolves the same way
        event(a, "anon-4", T0 + 4 * H, amount=40),  # never merged into user-4
    ])
    merge(propel, a, "anon-1", "user-1")
    merge(propel, a, "anon-7", "user-7")
    merge(propel, a, "anon-3", "user-3")
    assert attribute_conversions(propel, cid) == 3
    assert by_user(propel, cid) == {"user-1": (T0 + H, 20.0), "anon-7": (T0 + 2 * H, 30.0),
                                    "user-3": (T0 + 4 * H, 40.0), "user-4": (None, None)}


def test_events_in_the_lake_and_in_recent_events_both_count(propel, tenant):
    a = tenant.id
    cid = add_campaign(propel, a)
    users = [f"u{i}" for i in range(6)]
    add_messages(propel, a, cid, add_dispatch(propel, a, cid), users)
    plant(propel, a, [event(a, "u0", T0 + H, amount=11), event(a, "u1", T0 + 2 * H, amount=12),
                      event(a, "u2", T0 + 3 * H, amount=13)])
    assert flush_batches(propel.db, propel.lake).rows == 3
    plant(propel, a, [event(a, "u2", T0 + 4 * H, amount=7),  # filtered
                      event(a, "u3", T0 + 5 * H, amount=14),
                      event(a, "u1", T0 + 1 * H, amount=20)])  # earlier than the lake one
    assert propel.lake.table() is not None
    assert count_events(propel.db, propel.lake, a) == 6
    assert attribute_conversions(propel, cid) == 4
    got = by_user(propel, cid)
    assert got["u0"] == (T0 + H, 11.0)
    assert got["u1"] == (T0 + H, 32.0)  # first time from recent, revenue from both
    assert got["u2"] == (T0 + 3 * H, 13.0) and got["u3"] == (T0 + 5 * H, 14.0)
    assert got["u4"] == got["u5"] == (None, None)
    # flushing the rest changes nothing
    flush_batches(propel.db, propel.lake)
    assert attribute_conversions(propel, cid) == 4
    assert by_user(propel, cid) == got


def test_each_dispatch_of_a_recurring_campaign_has_its_own_window(propel, tenant):
    a = tenant.id
    cid = add_campaign(propel, a)
    week = timedelta(days=7)
    d1 = add_dispatch(propel, a, cid, T0)
    d2 = add_dispatch(propel, a, cid, T0 + week)
    add_messages(propel, a, cid, d1, {"u1": "sent", "u2": "holdout", "u3": "sent"})
    add_messages(propel, a, cid, d2, {"u1": "sent", "u2": "holdout", "u4": "sent"})
    plant(propel, a, [
        event(a, "u1", T0 + 2 * H, amount=20),
        event(a, "u1", T0 + week + 3 * H, amount=30),
        event(a, "u2", T0 + week - H, amount=40),  # between the windows: neither
        event(a, "u2", T0 + week + 5 * H, amount=50),
        event(a, "u3", T0 + week + H, amount=60),  # u3 was not in the second run
        event(a, "u4", T0 + 12 * H, amount=70),  # u4 was not in the first run
    ])
    assert attribute_conversions(propel, cid) == 3
    assert outcome(propel, cid) == {
        (d1, "u1"): (T0 + 2 * H, 20.0), (d1, "u2"): (None, None), (d1, "u3"): (None, None),
        (d2, "u1"): (T0 + week + 3 * H, 30.0), (d2, "u2"): (T0 + week + 5 * H, 50.0),
        (d2, "u4"): (None, None)}


def test_each_user_window_opens_when_the_run_was_due_for_them(propel, tenant):
    """A run in each user's timezone starts at the earliest zone's time: a user 24 h
    behind is reached a day later, and so is their window, holdout users alike."""
    a = tenant.id
    cid = add_campaign(propel, a, goal={"event": "Order Completed", "window_hours": 24})
    did = add_dispatch(propel, a, cid, T0)
    late = T0 + 24 * H  # due a day after the run started
    add_messages(propel, a, cid, did, {"east": "sent", "east-holdout": "holdout"})
    add_messages(propel, a, cid, did, {"west": "sent", "west-holdout": "holdout"}, due_at=late)
    plant(propel, a, [
        event(a, "east", T0 + 23 * H), event(a, "east-holdout", T0 + 25 * H),  # in / out
        event(a, "west", T0 + 23 * H),  # before their message: not a conversion
        event(a, "west", T0 + 30 * H), event(a, "west-holdout", late + 23 * H),
    ])
    assert attribute_conversions(propel, cid, now=T0 + 100 * H) == 3
    assert by_user(propel, cid) == {
        "east": (T0 + 23 * H, None), "east-holdout": (None, None),
        "west": (T0 + 30 * H, None), "west-holdout": (late + 23 * H, None)}
    # while the late users' window is still open, it counts up to now
    assert attribute_conversions(propel, cid, now=late + 10 * H) == 2
    assert by_user(propel, cid)["west-holdout"] == (None, None)
    # before it opens, nothing counts for them
    assert attribute_conversions(propel, cid, now=late - H / 2) == 1
    assert by_user(propel, cid)["west"] == (None, None)


# --------------------------------------------------------------------------------------------
# scale
# --------------------------------------------------------------------------------------------

def test_hundred_thousand_messages_in_seconds(propel, tenant):
    a = tenant.id
    n = 100_000
    cid = add_campaign(propel, a)
    did = add_dispatch(propel, a, cid)
    users = {f"user-{i:06d}": "holdout" if i % 10 == 0 else "sent" for i in range(n)}
    add_messages(propel, a, cid, did, users)
    # 8,000 converters: half flushed to the lake, half still recent; plus noise outside
    # the window and for other events
    items = []
    for i in range(0, n, 12):
        items.append(event(a, f"user-{i:06d}", T0 + (i % 23) * H + H, amount=10 + i % 50 + 1))
        items.append(event(a, f"user-{i:06d}", T0 - H, amount=99))
        items.append(event(a, f"user-{i:06d}", T0 + 2 * H, name="Page Viewed"))
    half = len(items) // 2
    plant(propel, a, items[:half])
    flush_batches(propel.db, propel.lake)
    plant(propel, a, items[half:])
    converters = len(range(0, n, 12))

    started = time.perf_counter()
    assert attribute_conversions(propel, cid) == converters
    first_run = time.perf_counter() - started
    started = time.perf_counter()
    assert attribute_conversions(propel, cid) == converters
    rerun = time.perf_counter() - started
    assert first_run < 20, first_run
    assert rerun < 10, rerun

    stats = campaign_stats(propel.db, cid)
    lift = stats["lift"]
    assert lift["treated_n"] + lift["holdout_n"] == n
    assert lift["treated_conversions"] + lift["holdout_conversions"] == converters
    assert lift["holdout_conversions"] == len(range(0, n, 60))  # i % 12 == 0 and i % 10 == 0
    print(f"100k messages: first run {first_run:.2f}s, re-run {rerun:.2f}s")
