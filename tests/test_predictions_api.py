"""Predictions through /api/v1, the CLI, and scores shown as profile properties."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from propel import predictions
from propel.cli import app as cli_app
from propel.demo.run import _event_items, _profile_items
from propel.demo.synth import SyntheticApp
from propel.ingest.service import ingest_sync
from propel.lake.flush import flush_batches
from propel.predictions import registry

END = datetime(2026, 6, 1, tzinfo=UTC)


def load_shop(propel, account_id, users=1500, days=84):
    app = SyntheticApp(seed=3)
    ingest_sync(propel.db, account_id, _profile_items(account_id, app.profiles(users, END)),
                [], "test")
    for table in app.events(users, days, END):
        for start in range(0, table.num_rows, 20_000):
            ingest_sync(propel.db, account_id,
                        _event_items(account_id, table.slice(start, 20_000)), [], "test")
    flush_batches(propel.db, propel.lake, max_rows=500_000)


def test_create_validates_and_lists(client, tenant, other_tenant):
    h = tenant.bearer
    r = client.post("/api/v1/predictions", json={"template": "conversions"}, headers=h)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "Predict Conversions" and body["polarity"] == "desired"
    assert body["groups"] == {"High": 0, "Medium": 0, "Low": 0}
    assert body["next_score_at"] and body["next_retrain_at"]
    again = client.post("/api/v1/predictions", json={"template": "conversions"}, headers=h)
    assert again.status_code == 409
    custom = client.post("/api/v1/predictions", headers=h, json={
        "name": "Big spenders", "goal_event": "Charged", "window_days": 30,
        "goal_where": [{"property": "amount", "op": ">", "value": 100}]})
    assert custom.status_code == 201 and custom.json()["goal"] == "Charged where amount > 100"
    for bad, word in [({"name": "x", "goal_event": "E"}, "window_days"),
                      ({"template": "nope"}, "unknown template"),
                      ({"name": "y", "goal_event": "E", "window_days": 999}, "window_days"),
                      ({"template": "churn", "groups": {"high": 0.8, "medium": 0.5}}, "groups"),
                      ({"name": "z", "goal_event": "E", "window_days": 7, "polarity": "meh"},
                       "polarity")]:
        r = client.post("/api/v1/predictions", json=bad, headers=h)
        assert r.status_code == 400, bad
        assert word in r.json()["error"]["message"]
    # a misspelt or mistyped audience key is refused, never ignored (it would widen
    # who is scored)
    for audience, field in [({"active_within_day": 30}, "audience.active_within_day"),
                            ({"exclude_events": "App Uninstalled"},
                             "audience.exclude_events")]:
        r = client.post("/api/v1/predictions", headers=h,
                        json={"template": "churn", "name": f"aud {field}",
                              "audience": audience})
        assert r.status_code == 422, r.text
        assert any(p["field"].endswith(field) for p in r.json()["error"]["problems"]), r.text
    names = [p["name"] for p in client.get("/api/v1/predictions", headers=h).json()[
        "predictions"]]
    assert names == ["Predict Conversions", "Big spenders"]
    assert client.get("/api/v1/predictions", headers=other_tenant.bearer).json() == {
        "predictions": []}
    pid = body["id"]
    assert client.get(f"/api/v1/predictions/{pid}", headers=other_tenant.bearer
                      ).status_code == 404


def test_train_without_data_names_the_need(client, tenant):
    pid = client.post("/api/v1/predictions", json={"template": "conversions"},
                      headers=tenant.bearer).json()["id"]
    r = client.post(f"/api/v1/predictions/{pid}/train", headers=tenant.bearer)
    assert r.status_code == 422
    assert "needs" in r.json()["error"]["message"]
    r = client.post(f"/api/v1/predictions/{pid}/score", headers=tenant.bearer)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_trained"


def test_train_score_and_read_everywhere(client, propel, tenant):
    load_shop(propel, tenant.id)
    h = tenant.bearer
    pid = client.post("/api/v1/predictions", json={"template": "conversions"},
                      headers=h).json()["id"]
    trained = client.post(f"/api/v1/predictions/{pid}/train", headers=h,
                          json={"as_of": END.isoformat()})
    assert trained.status_code == 200, trained.text
    assert trained.json()["promoted"] is True
    scored = client.post(f"/api/v1/predictions/{pid}/score", headers=h,
                         json={"as_of": END.isoformat()}).json()
    total = scored["rows"]
    assert total > 500
    sizes = scored["groups"]
    assert sizes["High"] == round(0.2 * total)
    assert sizes["High"] + sizes["Medium"] == round(0.5 * total)
    assert scored["expected_rates"]["High"] > scored["expected_rates"]["Low"]
    detail = client.get(f"/api/v1/predictions/{pid}", headers=h).json()
    assert detail["quality"]["quality"]["auc"] > 0.6
    assert detail["versions"][0]["promoted"] and detail["scoring_runs"][0]["outcome"] == "ok"
    assert client.get(f"/api/v1/predictions/{pid}/groups", headers=h).json()["groups"] == sizes

    export = client.get(f"/api/v1/predictions/{pid}/backtest", headers=h,
                        params={"as_of": (END - timedelta(days=14)).date().isoformat()})
    assert export.status_code == 200 and export.json()["window_complete"] is True

    # a High user: the group and score are profile properties in every profile view
    from propel.predictions.tables import user_predictions

    with propel.db.read() as conn:
        ident, score = conn.execute(
            user_predictions.select().with_only_columns(
                user_predictions.c.identity, user_predictions.c.score)
            .where(user_predictions.c.grp == "High").limit(1)).one()
    mine = client.get(f"/api/v1/predictions/{pid}/users/{ident}", headers=h).json()
    assert mine["group"] == "High" and mine["score"] == score
    assert 1 <= len(mine["reasons"]) <= 3 and all("feature" in x for x in mine["reasons"])
    user = client.get(f"/api/v1/users/{ident}", headers=h).json()
    assert user["profile"]["properties"]["Predict Conversions"] == "High"
    assert user["profile"]["properties"]["Predict Conversions score"] == score
    ct = client.get("/1/profile.json", params={"identity": ident}, headers=tenant.clevertap)
    assert ct.json()["record"]["profileData"]["Predict Conversions"] == "High"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_predictions(propel, tenant, monkeypatch, tmp_path, settings):
    load_shop(propel, tenant.id, users=1200)
    monkeypatch.setenv("PROPEL_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROPEL_ACCOUNT", tenant.id)
    run = CliRunner().invoke
    r = run(cli_app, ["predictions", "create", "Buyers", "--goal-event", "Charged",
                      "--window-days", "14", "--where", "amount > 0"])
    assert r.exit_code == 0, r.output
    r = run(cli_app, ["predictions", "create", "Sure buyers", "--template", "conversions",
                      "--groups-mode", "probability", "--high", "0.6",
                      "--score-every-days", "2", "--retrain-every-days", "30",
                      "--new-within-days", "60", "--exclude-event", "App Uninstalled"])
    assert r.exit_code == 0 and "every 2 day(s), retrains every 30 days" in " ".join(
        r.output.split())
    sure = predictions.get(propel, tenant.id, "Sure buyers").spec
    assert (sure.groups.mode, sure.groups.high, sure.groups.medium) == ("probability", 0.6,
                                                                        0.2)
    assert (sure.score_every_days, sure.retrain_every_days) == (2, 30)
    assert (sure.audience.new_within_days, sure.audience.exclude_events) == (
        60, ("App Uninstalled",))
    r = run(cli_app, ["predictions", "create", "Odd", "--template", "churn",
                      "--groups-mode", "deciles"])
    assert r.exit_code == 1 and "groups.mode must be" in r.output
    r = run(cli_app, ["predictions", "score", "Buyers"])
    assert r.exit_code == 1 and "train it first" in r.output
    r = run(cli_app, ["predictions", "train", "Buyers", "--as-of", "2026-06-01"])
    assert r.exit_code == 0, r.output
    assert "Validation" in r.output and "Gains" in r.output
    r = run(cli_app, ["predictions", "score", "Buyers", "--as-of", "2026-06-01"])
    assert r.exit_code == 0 and "High" in r.output
    r = run(cli_app, ["predictions", "backtest", "Buyers", "--as-of", "2026-05-18", "--json"])
    report = json.loads(r.output)
    assert set(report) >= {"auc", "pr_auc", "log_loss", "brier", "groups"}
    assert set(report["groups"]["High"]) == {"size", "expected_rate", "realised_rate"}
    # its window ended by the last outcome the model learnt from
    assert report["in_sample"] is True
    assert report["model_saw_outcomes_until"] == "2026-06-01"
    r = run(cli_app, ["predictions", "backtest", "Buyers", "--as-of", "2026-05-18"])
    assert "in sample" in " ".join(r.output.split())
    r = run(cli_app, ["predictions", "backtest", "Buyers", "--as-of", "2026-05-25", "--json"])
    assert json.loads(r.output)["in_sample"] is False  # its window runs past training
    out = tmp_path / "scores.parquet"
    r = run(cli_app, ["predictions", "export", "Buyers", "--format", "parquet", "-o", str(out)])
    assert r.exit_code == 0
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column_names == ["identity", "probability", "score", "group",
                                  "model_version", "scored_at"]
    shown = run(cli_app, ["predictions", "show", "Buyers"])
    assert shown.exit_code == 0
    for title in ("Validation", "Groups on validation", "Calibration", "Gains",
                  "Audience size vs precision", "Top drivers"):
        assert title in shown.output, title
    r = run(cli_app, ["predictions", "backtest", "Nope", "--as-of", "2026-05-18"])
    assert r.exit_code == 1 and "no prediction" in r.output
    r = run(cli_app, ["predictions", "train", "Buyers", "--as-of", "June"])
    assert r.exit_code == 2


def test_one_training_and_one_scoring_at_a_time(client, propel, tenant):
    """A manual run while another run of the same kind (say the scheduled one, in
    another process) holds the prediction is refused at once, with the reason."""
    from propel.lake.store import writer_lease

    load_shop(propel, tenant.id, users=600, days=70)
    h = tenant.bearer
    pid = client.post("/api/v1/predictions", json={"template": "conversions"},
                      headers=h).json()["id"]
    as_of = {"as_of": END.isoformat()}
    with writer_lease(propel.db, name=f"prediction-train:{pid}"):
        busy = client.post(f"/api/v1/predictions/{pid}/train", headers=h, json=as_of)
        assert busy.status_code == 409
        error = busy.json()["error"]
        assert error["code"] == "already_running"
        assert "'Predict Conversions' is being trained by another run" in error["message"]
        assert client.get(f"/api/v1/predictions/{pid}", headers=h).json()["versions"] == []
    assert client.post(f"/api/v1/predictions/{pid}/train", headers=h,
                       json=as_of).status_code == 200
    with writer_lease(propel.db, name=f"prediction-score:{pid}"):
        busy = client.post(f"/api/v1/predictions/{pid}/score", headers=h, json=as_of)
        assert busy.status_code == 409 and "being scored" in busy.json()["error"]["message"]
        assert client.get(f"/api/v1/predictions/{pid}", headers=h).json()[
            "scoring_runs"] == []
    assert client.post(f"/api/v1/predictions/{pid}/score", headers=h,
                       json=as_of).status_code == 200


def test_scores_outlive_bad_dates_broken_models_and_aliases(client, propel, tenant):
    load_shop(propel, tenant.id, users=600, days=70)
    h = tenant.bearer
    pid = client.post("/api/v1/predictions", json={"template": "conversions"},
                      headers=h).json()["id"]
    url = f"/api/v1/predictions/{pid}"
    assert client.post(f"{url}/train", headers=h, json={"as_of": END.isoformat()}
                       ).status_code == 200
    assert client.post(f"{url}/score", headers=h, json={"as_of": END.isoformat()}
                       ).status_code == 200
    groups = client.get(f"{url}/groups", headers=h).json()
    assert sum(groups["groups"].values()) > 100

    # a date before the data: no scores are wiped, and the messages say why
    early = {"as_of": "2020-01-01T00:00:00Z"}
    r = client.post(f"{url}/score", headers=h, json=early)
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_enough_data"
    assert "nobody is in the audience" in r.json()["error"]["message"]
    assert "as of 2020-01-01 (users with an event before 2020-01-01, active within 90 " \
        "days" in r.json()["error"]["message"]
    assert client.get(f"{url}/groups", headers=h).json() == groups
    r = client.post(f"{url}/train", headers=h, json=early)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert message.startswith("needs at least 49 days of events before 2020-01-01; the "
                              "account's events start on 2026-")
    assert "found" not in message

    # an alias merged into a scored user finds that user's score
    from propel import profiles
    from propel.predictions.tables import user_predictions

    with propel.db.read() as conn:
        ident = conn.execute(user_predictions.select().with_only_columns(
            user_predictions.c.identity).limit(1)).scalar()
    propel.db.write(lambda conn: profiles.merge_identities(conn, tenant.id, "anon-merged",
                                                           ident, 0))
    mine = client.get(f"{url}/users/{ident}", headers=h)
    alias = client.get(f"{url}/users/anon-merged", headers=h)
    assert mine.status_code == alias.status_code == 200 and alias.json() == mine.json()
    assert client.get(f"{url}/users/anon-unknown", headers=h).status_code == 404

    # a broken artifact: score and backtest say so (no 500), retraining repairs it
    version = registry.get_version(propel.db, pid, 1)
    path = Path(version.artifact_path)
    path.write_bytes(path.read_bytes() + b"tampered")
    for r in (client.post(f"{url}/score", headers=h, json={"as_of": END.isoformat()}),
              client.get(f"{url}/backtest", headers=h, params={"as_of": "2026-05-18"})):
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "model_unreadable" and "checksum" in error["message"]
        assert str(propel.settings.data_dir) not in error["message"]  # no server paths
    r = client.post(f"{url}/train", headers=h, json={"as_of": END.isoformat()})
    assert r.status_code == 200, r.text
    assert r.json()["promoted"] and r.json()["version"]["version"] == 2
    assert "current version 1 could not be read (" in r.json()["reason"]
    assert r.json()["reason"].endswith("; promoted without comparing")
    assert client.post(f"{url}/score", headers=h, json={"as_of": END.isoformat()}
                       ).status_code == 200


def test_api_dates_without_a_time_zone_are_utc(client, propel, tenant, berlin_time):
    load_shop(propel, tenant.id, users=600, days=70)
    h = tenant.bearer
    pid = client.post("/api/v1/predictions", json={"template": "conversions"},
                      headers=h).json()["id"]
    url = f"/api/v1/predictions/{pid}"
    trained = client.post(f"{url}/train", headers=h, json={"as_of": "2026-06-01T00:00:00"})
    assert trained.status_code == 200, trained.text
    # the validation date is a window before the (UTC) training date
    assert trained.json()["version"]["as_of"].startswith("2026-05-18T00:00:00")
    r = client.get(f"{url}/backtest", headers=h, params={"as_of": "2026-05-18"})
    assert r.status_code == 200 and r.json()["as_of"] == "2026-05-18"
    assert client.post(f"{url}/score", headers=h, json={"as_of": "2026-06-01T00:00:00"}
                       ).status_code == 200
    runs = client.get(url, headers=h).json()["scoring_runs"]
    assert runs[0]["as_of"].startswith("2026-06-01T00:00:00")
