"""``propel campaigns create|list|show|send|stop|stats`` and ``propel audiences
count|export`` through typer's CliRunner, with the account and data folder from the
environment (embedded SQLite), and the errors a person at a terminal can make."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from propel.campaigns.dispatch import in_holdout
from propel.campaigns.service import get_campaign
from propel.campaigns.tables import inbox_messages, messages
from propel.channels import registry
from propel.db.meta import utcnow
from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync
from propel.predictions import create_prediction
from propel.predictions.spec import from_template
from propel.predictions.tables import predictions, user_predictions

N = 12
INBOX = {"name": "Welcome back", "channel": "inbox", "audience": {"and": []},
         "holdout_pct": 0.25,
         "content": {"variants": [{"name": "A", "split": 100,
                                   "title": "Hi {{ user.first_name | default('there') }}",
                                   "body": "We kept your cart."}]}}


def uid(i: int) -> str:
    return f"u{i:02d}"


@pytest.fixture
def shop(propel, tenant):
    """N users (half on the pro plan) and a "Predict Conversions" group for each."""
    items = [IngestItem(key_hash(tenant.id, f"p-{i}"), profile=ProfileUpdate(
        identity=uid(i), email=f"{uid(i)}@example.test", consent={"email": True},
        properties={"first_name": f"N{i}", "plan": "pro" if i % 2 else "free"}))
        for i in range(N)]
    ingest_sync(propel.db, tenant.id, items, [], "test")
    pred = create_prediction(propel, tenant.id, from_template("conversions"))
    now = utcnow()
    rows = [{"prediction_id": pred.id, "identity": uid(i), "account_id": tenant.id,
             "probability": 0.5, "score": 50.0, "grp": ("High", "Low")[i % 2],
             "model_version": 1, "scored_at": now, "reasons": "[]"} for i in range(N)]

    def _store(conn):
        conn.execute(insert(user_predictions), rows)
        conn.execute(update(predictions).where(predictions.c.id == pred.id).values(
            status="scored", current_version=1, last_scored_at=now, updated_at=now))

    propel.db.write(_store)
    return tenant


def created_id(stdout: str) -> str:
    found = re.search(r"created draft .+ \((cmp_[0-9a-f]+)\)", stdout)
    assert found, stdout
    return found.group(1)


def count_rows(propel, table, **where: Any) -> int:
    query = select(func.count()).select_from(table)
    for key, value in where.items():
        query = query.where(table.c[key] == value)
    with propel.db.read() as conn:
        return conn.execute(query).scalar()


# --------------------------------------------------------------------------- campaigns


def test_create_list_show_send_stats_stop(cli, propel, shop, tmp_path):
    registry.set_config(propel.db, shop.id, "inbox", {})
    spec_file = tmp_path / "campaign.json"
    spec_file.write_text(json.dumps(INBOX))
    code, out, err = cli("campaigns", "create", f"@{spec_file}")
    assert code == 0, err
    first = created_id(out)
    assert "Welcome back" in out
    code, out, err = cli("campaigns", "create", json.dumps({**INBOX, "name": "Second"}))
    assert code == 0, err
    second = created_id(out)

    code, out, _ = cli("campaigns", "list")
    assert code == 0
    rows = [line for line in out.splitlines() if "cmp_" in line]
    assert len(rows) == 2 and first in rows[0] and second in rows[1]
    assert "Welcome back" in rows[0] and "draft" in rows[0] and "inbox" in rows[0]

    code, out, _ = cli("campaigns", "show", first)
    shown = json.loads(out)
    assert code == 0 and shown["id"] == first and shown["status"] == "draft"
    assert shown["content"] == INBOX["content"] and shown["holdout_pct"] == 0.25

    # send: publish, dispatch and deliver here, then the stats table
    code, out, err = cli("campaigns", "send", first)
    assert code == 0, err
    held = {uid(i) for i in range(N) if in_holdout(first, uid(i), 0.25)}
    assert re.search(rf"dispatch \d+: {N - len(held)} messages handled", out), out
    assert "all" in out and "lift" in out
    assert count_rows(propel, inbox_messages, campaign_id=first) == N - len(held)
    with propel.db.read() as conn:
        titles = dict(conn.execute(select(inbox_messages.c.identity, inbox_messages.c.title)
                                   .where(inbox_messages.c.campaign_id == first)).all())
    assert set(titles) == {uid(i) for i in range(N)} - held
    assert all(title == f"Hi N{int(ident[1:])}" for ident, title in titles.items())
    assert get_campaign(propel, shop.id, first).status == "completed"

    code, out, _ = cli("campaigns", "stats", first, "--json")
    stats = json.loads(out)
    assert code == 0 and stats["campaign_id"] == first
    totals = stats["totals"]
    assert (totals["targeted"], totals["holdout"], totals["sent"]) == (N, len(held),
                                                                       N - len(held))
    assert stats["lift"]["treated_n"] == N - len(held)
    code, out, _ = cli("campaigns", "stats", first)
    assert code == 0 and "variant A" in out and f"{N - len(held)}" in out
    code, out, _ = cli("campaigns", "list")
    assert re.search(rf"{first}.*completed\s*\W\s*{N}\s*\W\s*{N - len(held)}", out), out

    # what cannot be done any more is refused, and says why
    code, _, err = cli("campaigns", "send", first)
    assert code == 1 and "the campaign is completed" in err
    assert count_rows(propel, messages, campaign_id=first) == N  # no second run
    code, _, err = cli("campaigns", "stop", first)
    assert code == 1 and "already completed" in err

    code, out, err = cli("campaigns", "stop", second)
    assert code == 0 and f"stopped {second}" in out, err
    assert json.loads(cli("campaigns", "show", second)[1])["status"] == "stopped"
    code, _, err = cli("campaigns", "send", second)
    assert code == 1 and "the campaign is stopped" in err
    assert count_rows(propel, messages, campaign_id=second) == 0


def test_send_delivers_its_own_campaign_only(cli, propel, shop):
    """Another campaign's queued messages are the server's to deliver: ``send`` waits for
    its own run, not for everything due."""
    from propel.campaigns.dispatch import dispatch_campaign
    from propel.campaigns.service import publish

    registry.set_config(propel.db, shop.id, "inbox", {})
    first = created_id(cli("campaigns", "create", json.dumps(INBOX))[1])
    other = created_id(cli("campaigns", "create", json.dumps({**INBOX, "name": "Other"}))[1])
    publish(propel, shop.id, other)
    assert dispatch_campaign(propel, shop.id, other) is not None
    queued = count_rows(propel, messages, campaign_id=other, state="queued")
    assert queued > 0

    code, out, err = cli("campaigns", "send", first)
    assert code == 0, err
    held = {uid(i) for i in range(N) if in_holdout(first, uid(i), 0.25)}
    assert re.search(rf"dispatch \d+: {N - len(held)} messages handled", out), out
    assert count_rows(propel, inbox_messages, campaign_id=first) == N - len(held)
    assert count_rows(propel, messages, campaign_id=other, state="queued") == queued
    assert count_rows(propel, inbox_messages, campaign_id=other) == 0


def test_campaign_errors_are_clear(cli, propel, shop, other_tenant, tmp_path):
    bad_json = [("{name", "campaign is not valid JSON"),
                (f"@{tmp_path / 'missing.json'}", "No such file"),
                ("[1, 2]", "campaign must be a JSON object"),
                ('"text"', "campaign must be a JSON object")]
    for arg, words in bad_json:
        code, out, err = cli("campaigns", "create", arg)
        assert code == 2 and words in err, (arg, code, out, err)
    invalid = [({**INBOX, "bogus": 1}, "bogus: Extra inputs are not permitted"),
               ({**INBOX, "status": "running"}, "status: Extra inputs are not permitted"),
               ({"channel": "inbox"}, "name: Field required"),
               ({**INBOX, "name": 5}, "name: Input should be a valid string"),
               ({**INBOX, "channel": "fax"}, "channel must be one of"),
               ({**INBOX, "holdout_pct": 2}, "holdout_pct"),
               ({**INBOX, "audience": {"property": "plan", "op": "like", "value": 1}},
                "unknown operator 'like'"),
               ({**INBOX, "prediction_id": "pred_nope"}, "prediction_id"),
               ({**INBOX, "goal": {"event": "Charged", "revenue_property": 3}},
                "goal.revenue_property"),
               ({**INBOX, "schedule": {"type": "recurring", "every": "daily",
                                       "until": "someday"}}, "schedule.until"),
               ({**INBOX, "content": {"variants": [{"name": "A", "split": 100,
                                                    "title": "ok", "body": "x\n{{ oops"}]}},
                "line 2")]
    for spec, words in invalid:
        code, out, err = cli("campaigns", "create", json.dumps(spec))
        assert code == 1 and words in err, (spec, code, out, err)
    code, out, _ = cli("campaigns", "list")
    assert "cmp_" not in out  # nothing was created

    for command in ("show", "send", "stop", "stats"):
        code, _, err = cli("campaigns", command, "cmp_nope")
        assert code == 1 and "no campaign 'cmp_nope' in this account" in err, command

    # another account's campaign does not exist here
    code, out, _ = cli("campaigns", "create", json.dumps(INBOX))
    mine = created_id(out)
    code, _, err = cli("campaigns", "show", mine, account=other_tenant.id)
    assert code == 1 and "no campaign" in err
    code, _, err = cli("campaigns", "list", account="")
    assert code == 2 and "give --account" in err
    code, _, err = cli("campaigns", "list", account="NOPE")
    assert code == 2 and "no account 'NOPE'" in err

    # a channel that is not set up is refused before anything is queued
    email = {**INBOX, "channel": "email", "content": {"variants": [
        {"name": "A", "split": 100, "subject": "Hi", "html": "<p>Hi</p>"}]}}
    code, out, _ = cli("campaigns", "create", json.dumps(email))
    draft = created_id(out)
    code, _, err = cli("campaigns", "send", draft)
    assert code == 1 and "email is not configured" in err
    assert get_campaign(propel, shop.id, draft).status == "draft"
    assert count_rows(propel, messages, campaign_id=draft) == 0


# --------------------------------------------------------------------------- audiences


def test_audiences_count_and_export(cli, propel, shop, other_tenant, tmp_path):
    pro = {"property": "plan", "op": "=", "value": "pro"}
    code, out, _ = cli("audiences", "count", json.dumps(pro))
    assert code == 0 and out.strip() == str(N // 2)
    rule_file = tmp_path / "rule.json"
    rule_file.write_text(json.dumps({"and": [pro, {"property": "Predict Conversions",
                                                   "op": "=", "value": "High"}]}))
    code, out, _ = cli("audiences", "count", f"@{rule_file}")
    assert code == 0 and out.strip() == "0"  # pro users are odd, High ones even
    code, out, _ = cli("audiences", "count", json.dumps(pro), account=other_tenant.id)
    assert code == 0 and out.strip() == "0"

    target = tmp_path / "out" / "pro.csv"
    target.parent.mkdir()
    code, out, err = cli("audiences", "export", json.dumps(pro), "-o", str(target))
    assert code == 0 and f"wrote {N // 2} members" in out, err
    with target.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["identity", "email", "phone", "Predict Conversions",
                       "Predict Conversions score"]
    assert rows[1:] == [[uid(i), f"{uid(i)}@example.test", "", "Low", "50.0"]
                        for i in range(1, N, 2)]

    for command in (["count"], ["export", "-o", str(tmp_path / "x.csv")]):
        code, _, err = cli("audiences", *command[:1], "{", *command[1:])
        assert code == 2 and "rule is not valid JSON" in err
        code, _, err = cli("audiences", *command[:1], json.dumps(
            {"property": "plan", "op": "like", "value": "x"}), *command[1:])
        assert code == 1 and "op: unknown operator 'like'" in err
    assert not (tmp_path / "x.csv").exists()
    missing = Path(tmp_path / "no" / "such" / "dir" / "a.csv")
    code, _, err = cli("audiences", "export", json.dumps(pro), "-o", str(missing))
    assert code == 1 and "cannot write" in err and "No such file" in err
