"""``propel journeys validate|create|update|list|show|publish|pause|resume|stop|stats|
path|advance`` through typer's CliRunner, with the account and data folder from the
environment (embedded SQLite), and the mistakes a person at a terminal can make."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import orjson

from propel import journeys
from propel.ingest.records import EventRecord, IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync

DEFINITION = {
    "name": "Welcome series",
    "entry": {"type": "event", "event": "Signed Up"},
    "holdout_pct": 0, "goal": {"event": "Charged", "within_days": 7},
    "steps": [
        {"id": "hello", "type": "send", "channel": "inbox", "next": "pause",
         "content": {"variants": [{"name": "A", "split": 100, "title": "Welcome",
                                   "body": "Glad you are here."}]}},
        {"id": "pause", "type": "wait", "duration": {"days": 1}, "next": "bye"},
        {"id": "bye", "type": "exit"},
    ],
}
BROKEN = {**DEFINITION, "holdout_pct": 0.5, "goal": None, "steps": [
    {"id": "hello", "type": "send", "channel": "inbox", "next": "pause",
     "content": {"variants": [{"name": "A", "split": 100, "title": "Hi", "body": "b"}]}},
    {"id": "pause", "type": "wait", "duration": {"days": -1}}]}
MISCONNECTED = {**DEFINITION, "steps": [{**DEFINITION["steps"][0], "next": "thank"}]}


def write(tmp_path, name: str, content: object) -> str:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def row(table: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is ``first``."""
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃|]", line) if c.strip()]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{table}")


def created_id(stdout: str) -> str:
    found = re.search(r"created draft .+ \((jrn_[0-9a-f]+)\)", stdout)
    assert found, stdout
    return found.group(1)


def test_validate_reports_every_problem_with_its_path(cli, tmp_path):
    code, out, err = cli("journeys", "validate", write(tmp_path, "ok.json", DEFINITION))
    assert code == 0 and "valid: Welcome series (3 steps)" in out
    code, out, err = cli("journeys", "validate", write(tmp_path, "bad.json", BROKEN))
    assert code == 2
    assert "holdout_pct: a holdout needs a goal to measure lift against" in err
    assert "steps[1].duration.days: must be a whole number, 0 or more" in err
    code, _, err = cli("journeys", "validate", write(tmp_path, "x.json", "{not json"))
    assert code == 2 and "is not valid JSON" in err
    code, _, err = cli("journeys", "validate", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err
    orphan = {**DEFINITION, "steps": [*DEFINITION["steps"], {"id": "lost", "type": "exit"}]}
    code, _, err = cli("journeys", "validate", write(tmp_path, "orphan.json", orphan))
    assert code == 2 and "steps[3]: orphan step 'lost': no path from the first step leads " \
                         "to it" in err


def test_create_refuses_a_bad_file_and_saves_nothing(cli, propel, tenant, tmp_path):
    code, _, err = cli("journeys", "create", write(tmp_path, "bad.json", MISCONNECTED))
    assert code == 2 and "steps[0].next: no step 'thank'" in err
    code, _, err = cli("journeys", "create", write(tmp_path, "worse.json", BROKEN))
    assert code == 2 and "holdout_pct" in err and "steps[1].duration.days" in err
    assert journeys.list_journeys(propel, tenant.id) == []
    code, _, err = cli("journeys", "create", write(tmp_path, "list.json", [1, 2]))
    assert code == 2 and "must be a JSON object" in err
    code, _, err = cli("journeys", "list", account="")
    assert code == 2 and "--account" in err
    code, _, err = cli("journeys", "list", account="acc_nope")
    assert code == 2 and "no account" in err


def test_create_publish_advance_stats_and_path(cli, propel, tenant, tmp_path):
    code, out, err = cli("journeys", "create", write(tmp_path, "j.json", DEFINITION))
    assert code == 0, err
    journey_id = created_id(out)
    code, out, _ = cli("journeys", "list")
    assert row(out, journey_id)[1:5] == ["Welcome series", "draft", "1", "event Signed Up"]
    code, out, _ = cli("journeys", "show", journey_id)
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "draft" and shown["definition"]["steps"][0][
        "id"] == "hello"

    code, out, err = cli("journeys", "publish", journey_id)
    assert code == 0 and f"{journey_id}: live (version 1)" in out, err
    code, _, err = cli("journeys", "publish", journey_id)
    assert code == 1 and "only a draft can be published" in err

    now = datetime.now(UTC).replace(microsecond=0)
    ingest_sync(propel.db, tenant.id, [
        IngestItem(key_hash(tenant.id, "p-u1"), profile=ProfileUpdate(identity="u1")),
        IngestItem(key_hash(tenant.id, "e-u1"), event=EventRecord(
            message_id="e-u1", identity="u1", name="Signed Up",
            ts=int(now.timestamp() * 1_000_000), properties=orjson.dumps({}).decode()))],
        [], "test")
    code, out, err = cli("journeys", "advance", "--now", now.isoformat())
    assert code == 0 and "entered 1" in out, err
    code, _, err = cli("journeys", "advance", "--now", "yesterday")
    assert code == 2 and "ISO 8601" in err

    code, out, _ = cli("journeys", "stats", journey_id)
    assert code == 0
    assert row(out, "hello")[:5] == ["hello", "send", "1", "0", "1"]
    assert row(out, "pause")[:5] == ["pause", "wait", "1", "1", "0"]
    assert "entered 1 (held out 0), in flight 1" in out
    code, out, _ = cli("journeys", "stats", journey_id, "--json")
    assert json.loads(out) == journeys.journey_stats(propel, tenant.id, journey_id)

    code, out, _ = cli("journeys", "path", journey_id, "u1")
    assert code == 0 and "entry 1 (version 1)" in out and "waiting" in out
    assert re.search(r"1\. hello .*\n\s+2\. pause", out), out
    code, out, _ = cli("journeys", "path", journey_id, "u1", "--json")
    assert json.loads(out)["entries"] == journeys.user_path(propel, tenant.id, journey_id,
                                                            "u1")
    code, out, _ = cli("journeys", "path", journey_id, "u9")
    assert code == 0 and "u9 has not entered this journey" in out

    code, out, _ = cli("journeys", "advance", "--now",
                       (now + timedelta(days=1, minutes=1)).isoformat())
    assert code == 0
    assert journeys.user_path(propel, tenant.id, journey_id, "u1")[0]["exit_reason"] == "exit"

    changed = {**DEFINITION, "steps": [
        {**DEFINITION["steps"][0]}, {**DEFINITION["steps"][1], "duration": {"days": 2}},
        DEFINITION["steps"][2]]}
    code, out, err = cli("journeys", "update", journey_id, write(tmp_path, "v2.json", changed))
    assert code == 0 and "live, version 2" in out, err
    for action, status in (("pause", "paused"), ("resume", "live"), ("stop", "stopped")):
        code, out, err = cli("journeys", action, journey_id)
        assert code == 0 and f"{journey_id}: {status}" in out, err
    code, _, err = cli("journeys", "pause", journey_id)
    assert code == 1 and "cannot be paused" in err


def test_unknown_journeys_and_other_accounts(cli, propel, tenant, other_tenant, tmp_path):
    j = journeys.create(propel, tenant.id, DEFINITION)
    for args in (("show", "jrn_nope"), ("publish", "jrn_nope"), ("stats", "jrn_nope"),
                 ("path", "jrn_nope", "u1")):
        code, _, err = cli("journeys", *args)
        assert code == 1 and "no journey 'jrn_nope' in this account" in err
    code, _, err = cli("journeys", "publish", j.id, account=other_tenant.id)
    assert code == 1 and "no journey" in err
    assert journeys.get(propel, tenant.id, j.id).status == "draft"
