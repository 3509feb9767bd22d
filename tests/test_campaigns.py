"""Campaign lifecycle, dispatch, delivery accounting, caps, quiet hours, holdout."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from propel import audiences
from propel.campaigns import service
from propel.campaigns.delivery import DeliveryEngine, quiet_until, recover_expired
from propel.campaigns.dispatch import (
    _message_rows,
    _store_dispatch,
    dispatch_campaign,
    finish_dispatches,
    in_holdout,
)
from propel.campaigns.engage import engage
from propel.campaigns.stats import campaign_stats
from propel.campaigns.tables import campaigns, messages
from propel.channels.base import Outcome
from propel.channels.fake import FakeChannel
from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync


class Recorder:
    """A channel double: records what it was given, answers as told."""

    name = "fake"

    def __init__(self, dedupes: bool = True, fail: dict[str, dict] | None = None) -> None:
        self.dedupes = dedupes
        self.sent: list = []
        self.fail = fail or {}  # identity -> Outcome fields

    async def send(self, batch):
        self.sent.extend(batch)
        return [Outcome(m.key, **self.fail.get(m.identity, {"delivered": True}))
                for m in batch]

    async def aclose(self):
        pass


def add_users(propel, account_id, n, **fields):
    items = []
    for i in range(n):
        ident = f"u{i:04d}"
        upd = ProfileUpdate(identity=ident, email=f"{ident}@example.com",
                            timezone=fields.get("timezone", "UTC"),
                            consent={"email": True}, properties={"plan": "pro" if i % 2 else
                                                                 "free"})
        items.append(IngestItem(key_hash(account_id, f"p-{ident}"), profile=upd))
    ingest_sync(propel.db, account_id, items, [], "test")


def make_campaign(propel, account_id, **over):
    spec = {"name": "Hello", "channel": "email", "audience": {"property": "plan", "op": "in",
                                                              "value": ["pro", "free"]},
            "content": {"variants": [{"name": "A", "split": 100,
                                      "subject": "Hi {{ user.plan | default('there') }}",
                                      "html": "<p>Hello</p>"}]},
            "holdout_pct": 0.2}
    spec.update(over)
    return service.create_campaign(propel, account_id, **spec)


def deliver(propel, channel, now=None, rounds=50):
    engine = DeliveryEngine(propel, channel_factory=lambda a, n: channel)

    async def run():
        total = 0
        for _ in range(rounds):
            n = await engine.run_once(now)
            if not n:
                break
            total += n
        return total

    return asyncio.run(run())


def states(propel, campaign_id):
    with propel.db.read() as conn:
        return dict(conn.execute(select(messages.c.state, func.count()).where(
            messages.c.campaign_id == campaign_id).group_by(messages.c.state)).all())


def test_lifecycle_send_now_every_user_ends_in_one_state(propel, tenant):
    add_users(propel, tenant.id, 200)
    c = make_campaign(propel, tenant.id)
    assert c.status == "draft"
    c = service.publish(propel, tenant.id, c.id)
    assert c.status == "scheduled"
    dispatch_id = dispatch_campaign(propel, tenant.id, c.id)
    assert dispatch_id is not None
    assert dispatch_campaign(propel, tenant.id, c.id) is None  # a run happens once
    channel = Recorder()
    sent = deliver(propel, channel)
    finish_dispatches(propel)
    got = states(propel, c.id)
    assert sum(got.values()) == 200
    assert got["holdout"] == sum(in_holdout(c.id, f"u{i:04d}", 0.2) for i in range(200))
    assert got["sent"] == sent == 200 - got["holdout"]
    assert {m.identity for m in channel.sent}.isdisjoint(
        {f"u{i:04d}" for i in range(200) if in_holdout(c.id, f"u{i:04d}", 0.2)})
    assert len({m.key for m in channel.sent}) == len(channel.sent)
    assert service.get_campaign(propel, tenant.id, c.id).status == "completed"
    stats = campaign_stats(propel.db, c.id)
    assert stats["totals"]["targeted"] == 200 and stats["totals"]["sent"] == got["sent"]


def test_holdout_is_drawn_before_suppression(propel, tenant):
    add_users(propel, tenant.id, 300)
    revoke = [IngestItem(key_hash(tenant.id, f"r{i}"), profile=ProfileUpdate(
        identity=f"u{i:04d}", consent={"email": False})) for i in range(0, 300, 3)]
    ingest_sync(propel.db, tenant.id, revoke, [], "test")
    c = service.publish(propel, tenant.id, make_campaign(propel, tenant.id).id)
    dispatch_campaign(propel, tenant.id, c.id)
    with propel.db.read() as conn:
        rows = conn.execute(select(messages.c.identity, messages.c.state, messages.c.reason)
                            .where(messages.c.campaign_id == c.id)).all()
    for ident, state, reason in rows:
        if in_holdout(c.id, ident, 0.2):
            assert state == "holdout"  # even the unsubscribed ones: drawn first
        elif int(ident[1:]) % 3 == 0:
            assert (state, reason) == ("suppressed", "unsubscribed")
        else:
            assert state == "queued"


def test_retries_failures_and_bounces(propel, tenant):
    add_users(propel, tenant.id, 30)
    c = service.publish(propel, tenant.id, make_campaign(propel, tenant.id, holdout_pct=0).id)
    dispatch_campaign(propel, tenant.id, c.id)
    channel = Recorder(fail={
        "u0001": {"delivered": False, "retryable": True, "error": "451 try later"},
        "u0002": {"delivered": False, "error": "400 rejected"},
        "u0003": {"delivered": False, "bounced": True, "error": "550 no such user"},
    })
    deliver(propel, channel)
    got = states(propel, c.id)
    assert got == {"sent": 27, "pending_retry": 1, "failed": 2}
    from propel.profiles import get_profile

    assert get_profile(propel.db, tenant.id, "u0003").consent["email"] is False
    # retries come back after their backoff, until MAX_ATTEMPTS
    later = datetime.now(UTC) + timedelta(days=1)
    for _ in range(6):
        deliver(propel, channel, now=later)
        later += timedelta(days=1)
    assert states(propel, c.id) == {"sent": 27, "failed": 3}


@pytest.mark.parametrize("dedupes,expected", [(True, "sent"), (False, "in_doubt")])
def test_crash_after_handover_is_in_doubt_unless_receiver_dedupes(propel, tenant, dedupes,
                                                                  expected):
    add_users(propel, tenant.id, 5)
    channel = "email" if dedupes else "sms"
    content = ({"variants": [{"name": "A", "split": 100, "subject": "s", "html": "<p>b</p>"}]}
               if dedupes else {"variants": [{"name": "A", "split": 100, "body": "b"}]})
    if not dedupes:
        ingest_sync(propel.db, tenant.id, [IngestItem(key_hash(tenant.id, f"ph{i}"),
                    profile=ProfileUpdate(identity=f"u{i:04d}", phone=f"+1415555{i:04d}"))
                    for i in range(5)], [], "test")
    c = service.publish(propel, tenant.id, make_campaign(
        propel, tenant.id, channel=channel, content=content, holdout_pct=0).id)
    dispatch_campaign(propel, tenant.id, c.id)
    engine = DeliveryEngine(propel, lease_seconds=1)
    claimed = engine.claim()  # committed as "sending": then the worker "dies"
    assert len(claimed) == 5
    assert states(propel, c.id) == {"sending": 5}
    recover_expired(propel, now=datetime.now(UTC) + timedelta(seconds=5))
    if dedupes:
        assert states(propel, c.id) == {"queued": 5}
        deliver(propel, Recorder())
    assert states(propel, c.id) == {expected: 5}


def test_a_dispatch_that_dies_before_storing_leaves_the_run_due(propel, tenant, monkeypatch):
    add_users(propel, tenant.id, 20)
    c = service.publish(propel, tenant.id, make_campaign(propel, tenant.id, holdout_pct=0).id)

    def worker_dies(*args, **kwargs):
        raise RuntimeError("the worker died while reading the audience")

    real = audiences.materialize
    monkeypatch.setattr(audiences, "materialize", worker_dies)
    with pytest.raises(RuntimeError):
        dispatch_campaign(propel, tenant.id, c.id)
    assert states(propel, c.id) == {} and c.id in service.due_campaigns(propel)
    monkeypatch.setattr(audiences, "materialize", real)
    assert dispatch_campaign(propel, tenant.id, c.id) is not None
    assert states(propel, c.id) == {"queued": 20}
    assert c.id not in service.due_campaigns(propel)


def test_two_workers_dispatching_one_run_store_it_once(propel, tenant):
    add_users(propel, tenant.id, 10)
    c = service.publish(propel, tenant.id, make_campaign(propel, tenant.id, holdout_pct=0).id)
    campaign = service.get_campaign(propel, tenant.id, c.id)
    members = audiences.materialize(propel, tenant.id, campaign.audience)
    rows = _message_rows(campaign, members, campaign.next_run_at, None)
    # both read the audience; only the first to store claims the run
    first = propel.db.write(lambda conn: _store_dispatch(conn, campaign, campaign.next_run_at,
                                                         rows))
    second = propel.db.write(lambda conn: _store_dispatch(conn, campaign,
                                                          campaign.next_run_at, rows))
    assert first is not None and second is None
    assert states(propel, c.id) == {"queued": 10}


def test_a_slow_provider_keeps_its_claim_no_in_doubt_and_nothing_sent_twice(propel, tenant):
    # The provider takes 2.5 s against a 1 s lease, and meanwhile another worker
    # recovers expired claims. A live worker's claims must stay its own: none
    # in_doubt, no text sent twice.
    ingest_sync(propel.db, tenant.id, [IngestItem(key_hash(tenant.id, f"ph{i}"),
                profile=ProfileUpdate(identity=f"u{i:04d}", phone=f"+1415555{i:04d}",
                                      properties={"plan": "pro"}))
                for i in range(40)], [], "test")
    c = service.publish(propel, tenant.id, make_campaign(
        propel, tenant.id, channel="sms", holdout_pct=0,
        content={"variants": [{"name": "A", "split": 100, "body": "b"}]}).id)
    dispatch_campaign(propel, tenant.id, c.id)
    channel = FakeChannel(name="sms", dedupes=False, delay=2.5)
    engine = DeliveryEngine(propel, lease_seconds=1, channel_factory=lambda a, n: channel)

    async def slow_send_and_a_recovery_meanwhile() -> int:
        sending = asyncio.create_task(engine.run_once())
        await asyncio.sleep(1.8)
        assert states(propel, c.id) == {"sending": 40}
        assert await asyncio.to_thread(recover_expired, propel) == {"resent": 0,
                                                                     "in_doubt": 0}
        return await sending

    assert asyncio.run(slow_send_and_a_recovery_meanwhile()) == 40
    assert states(propel, c.id) == {"sent": 40}
    handed = Counter(ob.key for batch in channel.batches for ob in batch)
    assert len(handed) == 40 and set(handed.values()) == {1}


def test_a_daily_cap_counts_what_uncapped_campaigns_sent_today(propel, tenant):
    add_users(propel, tenant.id, 5)
    for i in range(3):
        c = service.publish(propel, tenant.id, make_campaign(
            propel, tenant.id, name=f"uncapped {i}", holdout_pct=0).id)
        dispatch_campaign(propel, tenant.id, c.id)
    deliver(propel, Recorder())
    capped = service.publish(propel, tenant.id, make_campaign(
        propel, tenant.id, name="capped", holdout_pct=0, caps={"per_day": 3}).id)
    dispatch_campaign(propel, tenant.id, capped.id)
    deliver(propel, Recorder())
    assert states(propel, capped.id) == {"suppressed": 5}  # each user had 3 today


def test_daily_cap_holds_under_concurrent_workers(propel, tenant):
    add_users(propel, tenant.id, 40)
    ids = []
    for i in range(4):
        c = make_campaign(propel, tenant.id, name=f"c{i}", holdout_pct=0,
                          caps={"per_day": 2})
        ids.append(service.publish(propel, tenant.id, c.id).id)
        dispatch_campaign(propel, tenant.id, ids[-1])
    channel = Recorder()
    engines = [DeliveryEngine(propel, batch_size=7, channel_factory=lambda a, n: channel)
               for _ in range(4)]
    errors = []

    def worker(engine):
        async def run():
            while await engine.run_once():
                pass
        try:
            asyncio.run(run())
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    per_user: dict[str, int] = {}
    for m in channel.sent:
        per_user[m.identity] = per_user.get(m.identity, 0) + 1
    assert max(per_user.values()) == 2 and len(per_user) == 40
    with propel.db.read() as conn:
        capped = conn.execute(select(func.count()).select_from(messages).where(
            messages.c.reason == "cap")).scalar()
    assert capped == 40 * 2


def test_send_rate_is_one_bucket_for_every_worker(propel, tenant):
    """Three engines (as in three processes) draw from one bucket: a full bucket is a
    second's worth, then it refills at the rate."""
    add_users(propel, tenant.id, 100)
    c = make_campaign(propel, tenant.id, holdout_pct=0, rate_per_second=20)
    service.publish(propel, tenant.id, c.id)
    dispatch_campaign(propel, tenant.id, c.id)
    channel = Recorder()
    engines = [DeliveryEngine(propel, batch_size=50, channel_factory=lambda a, n: channel)
               for _ in range(3)]
    t0 = datetime.now(UTC) + timedelta(seconds=1)

    async def one_round(at):
        return sum([await engine.run_once(at) for engine in engines])

    moved = [asyncio.run(one_round(t0 + timedelta(seconds=s))) for s in (0, 0, 0.5, 10)]
    assert moved == [20, 0, 10, 20]
    assert len(channel.sent) == 50 and states(propel, c.id) == {"sent": 50, "queued": 50}


def test_drain_waits_for_what_a_send_rate_holds_back(propel, tenant):
    add_users(propel, tenant.id, 60)
    c = make_campaign(propel, tenant.id, holdout_pct=0, rate_per_second=25)
    service.publish(propel, tenant.id, c.id)
    dispatch_campaign(propel, tenant.id, c.id)
    channel = Recorder()
    engine = DeliveryEngine(propel, channel_factory=lambda a, n: channel)
    assert asyncio.run(engine.drain()) == 60
    assert len(channel.sent) == 60 and states(propel, c.id) == {"sent": 60}


def test_daily_cap_counts_every_message_of_a_user_in_one_batch(propel, tenant):
    """Caps are taken for a whole batch at once: a user with three messages in the
    batch must still get only as many as the cap allows."""
    add_users(propel, tenant.id, 10)
    for i in range(3):
        c = make_campaign(propel, tenant.id, name=f"b{i}", holdout_pct=0, caps={"per_day": 2})
        dispatch_campaign(propel, tenant.id, service.publish(propel, tenant.id, c.id).id)
    channel = Recorder()
    engine = DeliveryEngine(propel, batch_size=1000, channel_factory=lambda a, n: channel)
    assert asyncio.run(engine.run_once()) == 30
    per_user: dict[str, int] = {}
    for m in channel.sent:
        per_user[m.identity] = per_user.get(m.identity, 0) + 1
    assert per_user == {f"u{i:04d}": 2 for i in range(10)}
    with propel.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(messages).where(
            messages.c.reason == "cap")).scalar() == 10


def test_quiet_hours_drop_or_delay():
    dnd = {"start": "21:00", "end": "08:00", "action": "delay"}
    late = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)
    assert quiet_until(dnd, late, "UTC") == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    # 07:30 the next morning in Tokyo: quiet until 08:00 there, 23:00 UTC
    assert quiet_until(dnd, late, "Asia/Tokyo") == datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    assert quiet_until(dnd, late, "America/New_York") is None  # 17:30 there
    morning = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert quiet_until(dnd, morning, "UTC") is None
    assert quiet_until(dnd, morning, "America/Los_Angeles") is not None  # 04:00 there


def test_dnd_delay_and_drop_in_delivery(propel, tenant):
    add_users(propel, tenant.id, 10, timezone="America/Los_Angeles")
    night = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # 04:00 in Los Angeles
    delay = service.publish(propel, tenant.id, make_campaign(
        propel, tenant.id, name="delay", holdout_pct=0,
        dnd={"start": "21:00", "end": "08:00", "action": "delay"}).id)
    drop = service.publish(propel, tenant.id, make_campaign(
        propel, tenant.id, name="drop", holdout_pct=0,
        dnd={"start": "21:00", "end": "08:00", "action": "drop"}).id)
    dispatch_campaign(propel, tenant.id, delay.id)
    dispatch_campaign(propel, tenant.id, drop.id)
    channel = Recorder()
    deliver(propel, channel, now=night)
    assert states(propel, delay.id) == {"queued": 10}
    assert states(propel, drop.id) == {"suppressed": 10}
    deliver(propel, channel, now=night + timedelta(hours=5))  # 09:00 local
    assert states(propel, delay.id) == {"sent": 10}


def test_a_run_in_each_users_timezone_records_when_it_is_due_for_everyone(propel, tenant):
    add_users(propel, tenant.id, 10, timezone="America/New_York")
    c = service.publish(propel, tenant.id, make_campaign(
        propel, tenant.id, holdout_pct=0.5,
        schedule={"type": "recurring", "every": "daily", "time": "09:00",
                  "user_timezone": True}).id)
    propel.db.write(lambda conn: conn.execute(campaigns.update().where(
        campaigns.c.id == c.id).values(next_run_at=datetime.now(UTC) - timedelta(minutes=1))))
    c = service.get_campaign(propel, tenant.id, c.id)
    run_at = c.next_run_at
    assert dispatch_campaign(propel, tenant.id, c.id) is not None
    with propel.db.read() as conn:
        rows = conn.execute(select(messages.c.state, messages.c.due_at).where(
            messages.c.campaign_id == c.id)).all()
    due = service.local_send_time(c.schedule, run_at, "America/New_York")
    assert {state for state, _ in rows} == {"holdout", "queued"}
    # the holdout's conversion window opens when the messaged users' does
    assert {at for _, at in rows} == {due}


def test_a_recurring_campaign_is_editable_between_runs(propel, tenant):
    add_users(propel, tenant.id, 4)
    c = service.publish(propel, tenant.id, make_campaign(
        propel, tenant.id, holdout_pct=0,
        schedule={"type": "recurring", "every": "daily", "time": "10:00"}).id)
    propel.db.write(lambda conn: conn.execute(campaigns.update().where(
        campaigns.c.id == c.id).values(next_run_at=datetime.now(UTC) - timedelta(minutes=1))))
    assert dispatch_campaign(propel, tenant.id, c.id) is not None
    # while its run is sending, nothing changes
    with pytest.raises(service.CampaignError, match="cannot be edited"):
        service.update_campaign(propel, tenant.id, c.id, name="Too soon")
    deliver(propel, Recorder())
    finish_dispatches(propel)
    new_content = {"variants": [{"name": "A", "split": 100, "subject": "Second",
                                 "html": "<p>Two</p>"}]}
    c = service.update_campaign(propel, tenant.id, c.id, content=new_content,
                                schedule={"type": "recurring", "every": "daily",
                                          "time": "11:30"})
    assert c.status == "running" and c.content == new_content
    assert (c.next_run_at.hour, c.next_run_at.minute) == (11, 30)
    c = service.update_campaign(propel, tenant.id, c.id, name="Renamed", channel=c.channel,
                                holdout_pct=c.holdout_pct)  # fixed fields, sent unchanged
    assert c.name == "Renamed"
    for change, words in (({"holdout_pct": 0.5}, "holdout_pct cannot be changed"),
                          ({"channel": "sms"}, "channel cannot be changed"),
                          ({"schedule": {"type": "now"}}, "stays recurring")):
        with pytest.raises(service.CampaignError, match=words):
            service.update_campaign(propel, tenant.id, c.id, **change)
    # the next run sends the new content
    propel.db.write(lambda conn: conn.execute(campaigns.update().where(
        campaigns.c.id == c.id).values(next_run_at=datetime.now(UTC) - timedelta(minutes=1))))
    assert dispatch_campaign(propel, tenant.id, c.id) is not None
    channel = Recorder()
    deliver(propel, channel)
    assert {m.subject for m in channel.sent} == {"Second"} and len(channel.sent) == 4


def test_edit_scheduled_until_it_runs_then_not(propel, tenant):
    add_users(propel, tenant.id, 5)
    later = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    c = make_campaign(propel, tenant.id, schedule={"type": "at", "at": later})
    c = service.publish(propel, tenant.id, c.id)
    assert c.status == "scheduled"
    assert dispatch_campaign(propel, tenant.id, c.id) is None  # not due yet
    c = service.update_campaign(propel, tenant.id, c.id, name="Renamed",
                                schedule={"type": "now"})
    assert c.name == "Renamed"
    assert dispatch_campaign(propel, tenant.id, c.id) is not None
    with pytest.raises(service.CampaignError, match="cannot be edited"):
        service.update_campaign(propel, tenant.id, c.id, name="Again")
    copy = service.duplicate(propel, tenant.id, c.id)
    assert copy.status == "draft" and copy.name == "Renamed (copy)"


def test_invalid_campaigns_are_refused_with_the_field(propel, tenant):
    bad = [({"channel": "fax"}, "channel"),
           ({"holdout_pct": 0.95}, "holdout_pct"),
           ({"schedule": {"type": "recurring", "every": "hourly"}}, "schedule.every"),
           ({"dnd": {"start": "25:00"}}, "dnd.start"),
           ({"caps": {"per_day": 0}}, "caps.per_day"),
           ({"goal": {"window_hours": 5}}, "goal.event"),
           ({"content": {"variants": [{"name": "A", "split": 100, "subject": "{{ oops",
                                       "html": "x"}]}}, "content")]
    for over, word in bad:
        with pytest.raises(service.CampaignError, match=word.replace(".", r"\.")):
            make_campaign(propel, tenant.id, **over)


def test_stop_cancels_pending(propel, tenant):
    add_users(propel, tenant.id, 20)
    c = service.publish(propel, tenant.id, make_campaign(propel, tenant.id, holdout_pct=0).id)
    dispatch_campaign(propel, tenant.id, c.id)
    service.stop(propel, tenant.id, c.id)
    assert deliver(propel, Recorder()) == 0
    assert states(propel, c.id) == {"suppressed": 20}


def test_recurring_runs_again_at_the_next_slot(propel, tenant):
    add_users(propel, tenant.id, 3)
    c = make_campaign(propel, tenant.id, holdout_pct=0,
                      schedule={"type": "recurring", "every": "daily", "time": "10:00"})
    c = service.publish(propel, tenant.id, c.id)
    first = c.next_run_at
    assert first.hour == 10 and first > datetime.now(UTC)
    from propel.campaigns.tables import campaigns

    past = datetime.now(UTC) - timedelta(minutes=1)
    propel.db.write(lambda conn: conn.execute(campaigns.update().where(
        campaigns.c.id == c.id).values(next_run_at=past)))
    assert dispatch_campaign(propel, tenant.id, c.id) is not None
    again = service.get_campaign(propel, tenant.id, c.id)
    assert again.status == "running" and again.next_run_at.hour == 10
    assert again.next_run_at > datetime.now(UTC)


def test_engage_from_prediction_follows_polarity(propel, tenant):
    from propel.predictions import create_prediction
    from propel.predictions.spec import from_template

    conversions = create_prediction(propel, tenant.id, from_template("conversions"))
    made = engage(propel, conversions, ["High", "Low"], channel="inbox")
    assert [c.name for c in made] == ["Predict Conversions — High",
                                      "Predict Conversions — Low"]
    assert [c.strategy for c in made] == ["Timely offer or reminder", "Re-engagement reward"]
    assert made[0].audience == {"property": "Predict Conversions", "op": "in",
                                "value": ["High"]}
    assert made[0].goal["event"] == "Charged" and made[0].status == "draft"
    churn = create_prediction(propel, tenant.id, from_template("churn"))
    (one,) = engage(propel, churn, ["High", "Medium", "Low"], channel="push", per_group=False)
    assert one.strategy.startswith("High: Retention offer")
    assert one.goal is None  # an undesired goal is not a conversion
    with pytest.raises(ValueError):
        engage(propel, churn, ["Top"], channel="push")
