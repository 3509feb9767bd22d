"""Dashboard predictions pages: list, create form, a prediction's page, Train now; on
SQLite and PostgreSQL."""

from __future__ import annotations

import html
import json
import re
import secrets
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from propel import predictions as preds
from propel.campaigns import service
from propel.campaigns.stats import headline
from propel.jobs import schedules
from propel.jobs.tables import task_runs
from propel.predictions import registry, scoring
from propel.predictions.exclusive import one_at_a_time
from propel.predictions.spec import from_template


def _unique(prefix: str) -> str:
    return f"{prefix} {secrets.token_hex(3)}"


def _names(shop) -> set[str]:
    return {p.spec.name for p in registry.list_all(shop.propel.db, shop.account_id)}


def _post_new(client, token: str, **fields) -> object:
    return client.post("/predictions/new", data={"csrf_token": token, **fields},
                       follow_redirects=False)


def _custom(name: str, **over) -> dict:
    fields = {"name": name, "template": "", "goal_event": "Charged", "goal_where": "",
              "goal_absent": "0", "polarity": "desired", "window_days": "7",
              "active_within_days": "60", "new_within_days": "", "exclude_events": "",
              "groups_mode": "percentile", "groups_high": "20", "groups_medium": "30",
              "score_every_days": "1", "retrain_every_days": "15"}
    fields.update(over)
    return fields


def _chart(page: str, label_start: str) -> dict:
    """The Chart.js config of the canvas whose aria-label starts with ``label_start``."""
    for match in re.finditer(r"<canvas data-chart='([^']+)' role=\"img\"\s+aria-label=\"([^\"]+)\"",
                             page):
        if match.group(2).startswith(label_start):
            return json.loads(html.unescape(match.group(1)))
    raise AssertionError(f"no chart {label_start!r}")


# -- list -----------------------------------------------------------------------------------

def test_list_shows_the_shops_prediction_with_its_group_sizes(dashboard, shop):
    client = dashboard.sign_in("viewer")
    page = client.get("/predictions")
    assert page.status_code == 200
    assert "<h1>Predictions</h1>" in page.text
    assert f'<a href="/predictions/{shop.prediction_id}">Predict Conversions</a>' in page.text
    assert '<a class="button primary" href="/predictions/new">Create prediction</a>' in page.text
    sizes = scoring.group_sizes(shop.propel, shop.prediction_id)
    assert sum(sizes.values()) > 0
    row = page.text.split(f'/predictions/{shop.prediction_id}"', 1)[1].split("</tr>", 1)[0]
    for group, size in sizes.items():
        assert f'data-group="{group}">{size:,}</td>' in row
    assert "Charged" in row and "14 days" in row and "scored" in row


def test_list_shows_only_this_accounts_predictions(dashboard, shop):
    name = _unique("Other shop churn")
    preds.create_prediction(shop.propel, shop.other_account_id, from_template("churn", name=name))
    client = dashboard.sign_in("viewer")
    assert name not in client.get("/predictions").text
    other = dashboard.sign_in(email=shop.other_admin)
    page = other.get("/predictions")
    assert name in page.text and "Predict Conversions" not in page.text


# -- a prediction's page ----------------------------------------------------------------------

def test_detail_shows_groups_quality_charts_versions_runs(dashboard, shop):
    client = dashboard.sign_in("viewer")
    page = client.get(f"/predictions/{shop.prediction_id}")
    assert page.status_code == 200
    text = page.text
    assert "<h1>Predict Conversions</h1>" in text
    assert f'href="/predictions/{shop.prediction_id}/engage">Engage</a>' in text
    sizes = scoring.group_sizes(shop.propel, shop.prediction_id)
    for group, size in sizes.items():
        assert re.search(rf'data-group="{group}">\s*<span class="badge group-{group}">{group}'
                         rf'</span>\s*<span class="metric">{size:,}</span>', text)
    p = preds.get(shop.propel, shop.account_id, shop.prediction_id)
    current = registry.get_version(shop.propel.db, p.id, p.current_version)
    quality = current.metrics["quality"]
    assert f'id="metric-auc">{quality["auc"]:.3f}<' in text
    assert f'id="metric-log-loss">{quality["log_loss"]:.3f}<' in text
    # the charts carry the stored quality data, and each has a table beside it
    hist = _chart(text, "Bar chart of the number of users per score range")
    assert sum(sum(d["data"]) for d in hist["data"]["datasets"]) == sum(sizes.values())
    assert [d["label"] for d in hist["data"]["datasets"]] == ["High", "Medium", "Low"]
    calibration = _chart(text, "Calibration chart")
    model_points = calibration["data"]["datasets"][0]["data"]
    assert len(model_points) == len(quality["calibration"])
    assert model_points[0]["x"] == pytest.approx(
        quality["calibration"][0]["mean_predicted"] * 100, abs=0.01)
    gains = _chart(text, "Cumulative gains chart")
    assert gains["data"]["datasets"][0]["data"][-1] == {"x": 100.0, "y": 100.0}
    assert _chart(text, "Bar chart of each feature")["data"]["labels"] == [
        d["feature"] for d in current.metrics["drivers"]]
    for caption in ("Users per score range", "Calibration bins", "Cumulative gains by decile",
                    "Features by share of influence"):
        assert f"<caption>{caption}</caption>" in text
    # versions and scoring runs
    for v in registry.list_versions(shop.propel.db, p.id):
        assert f"<td>{v.kind}</td><td>{v.as_of:%Y-%m-%d}</td>" in text
        assert html.escape(v.reason) in text
    for run in scoring.list_runs(shop.propel, p.id, limit=10):
        assert f'<th scope="row">{run["id"]}</th>' in text


def test_detail_audience_size_chooser(dashboard, shop):
    client = dashboard.sign_in("viewer")
    text = client.get(f"/predictions/{shop.prediction_id}").text
    assert '<label for="audience-size">Audience size</label>' in text
    assert re.search(r'<input type="range" id="audience-size"', text)
    data = re.search(r'<script type="application/json" id="audience-size-data">(.+?)</script>',
                     text, re.S).group(1)
    points = json.loads(data)
    population = sum(scoring.group_sizes(shop.propel, shop.prediction_id).values())
    top20 = next(pt for pt in points if pt["share"] == 0.2)
    assert top20["users"] == int(population * 0.2 + 0.5)
    expected = (f"Top {top20['users']:,} users: expected precision "
                f"{top20['precision'] * 100:.1f} %, expected goal events "
                f"{int(top20['users'] * top20['precision'] + 0.5):,}")
    assert top20["text"] == expected
    # the output starts on the High group's share and is announced
    assert f'aria-live="polite">{html.escape(expected)}</output>' in text


def test_detail_lists_the_campaigns_made_on_the_prediction(dashboard, shop):
    client = dashboard.sign_in("viewer")
    text = client.get(f"/predictions/{shop.prediction_id}").text
    section = text.split('id="engagements-heading">Engagements</h2>', 1)[1].split("</section>")[0]
    made = service.list_campaigns(shop.propel, shop.account_id, prediction_id=shop.prediction_id)
    assert len(made) >= 3
    for c in made:
        numbers = headline(shop.propel.db, c.id)
        assert f'<a href="/campaigns/{c.id}">{html.escape(c.name)}</a>' in section
        row = section.split(f'/campaigns/{c.id}"', 1)[1].split("</tr>", 1)[0]
        cells = re.findall(r'<td class="num">([\d,]+)</td>', row)
        assert cells == [f"{numbers[k]:,}" for k in
                         ("targeted", "sent", "opened", "clicked", "converted")]
    assert sum(headline(shop.propel.db, c.id)["sent"] for c in made) > 0


def test_never_trained_prediction_shows_its_empty_state(dashboard, shop):
    name = _unique("Fresh churn")
    p = preds.create_prediction(shop.propel, shop.account_id, from_template("churn", name=name))
    client = dashboard.sign_in("viewer")
    page = client.get(f"/predictions/{p.id}")
    assert page.status_code == 200
    assert f"<h1>{name}</h1>" in page.text
    assert "Not trained yet" in page.text and "a marketer can train it now" in page.text
    assert "No campaigns on this prediction yet" in page.text
    assert "No model versions yet" in page.text and "No scoring runs yet" in page.text
    assert "data-chart" not in page.text and "Train now" not in page.text
    listed = client.get("/predictions").text
    row = listed.split(f'/predictions/{p.id}"', 1)[1].split("</tr>", 1)[0]
    assert row.count('">0</td>') == 3 and "new" in row


@pytest.mark.parametrize("bad", ["pred_000000000000", "nope", "%20", "x" * 300])
def test_unknown_prediction_is_a_404_page(dashboard, bad):
    client = dashboard.sign_in("viewer")
    page = client.get(f"/predictions/{bad}")
    assert page.status_code == 404 and "<h1>Not found</h1>" in page.text


def test_another_accounts_prediction_is_a_404_page(dashboard, shop):
    client = dashboard.sign_in(email=shop.other_admin)
    page = client.get(f"/predictions/{shop.prediction_id}")
    assert page.status_code == 404 and "Predict Conversions" not in page.text
    token = dashboard.csrf()
    response = client.post(f"/predictions/{shop.prediction_id}/train",
                           data={"csrf_token": token})
    assert response.status_code == 404


# -- Train now ----------------------------------------------------------------------------------

def _train_page(client, location: str, seconds: float = 120) -> str:
    """The page a "Train now" redirects to, once the run has ended: it reloads itself
    (a meta refresh) while the run is still going."""
    deadline = time.monotonic() + seconds
    while True:
        page = client.get(location)
        assert page.status_code == 200
        if 'http-equiv="refresh"' not in page.text:
            return page.text
        assert "is still running" in page.text and "Train now</button>" in page.text
        assert time.monotonic() < deadline, "training did not finish"
        time.sleep(0.5)


def test_train_now_trains_scores_and_says_so(dashboard, shop):
    name = _unique("Train me")
    p = preds.create_prediction(shop.propel, shop.account_id, from_template("churn", name=name))
    client = dashboard.sign_in("marketer")
    assert "Train now" in client.get(f"/predictions/{p.id}").text
    token = dashboard.csrf()
    response = client.post(f"/predictions/{p.id}/train", data={"csrf_token": token},
                           follow_redirects=False)
    assert response.status_code == 303
    location = response.headers["location"]
    assert re.fullmatch(rf"/predictions/{p.id}\?training=\d+", location)
    page = _train_page(client, location)
    after = registry.get_by_id(shop.propel.db, p.id)
    assert after.current_version == 1 and after.last_scored_at is not None
    assert "Trained version 1 (" in page and "Scores were updated" in page
    assert "Not trained yet" not in page and 'id="metric-auc"' in page
    sizes = scoring.group_sizes(shop.propel, p.id)
    assert f'<span class="metric">{sizes["High"]:,}</span>' in page
    # the run belongs to this prediction: on another one's page it says nothing
    other = client.get(location.replace(p.id, shop.prediction_id)).text
    assert "Trained version" not in other
    assert "Trained version" not in client.get(f"/predictions/{p.id}?training=999999").text


def test_train_now_while_a_training_runs_and_after_its_process_died(dashboard, shop):
    p = registry.get_by_id(shop.propel.db, shop.prediction_id)
    client = dashboard.sign_in("marketer")
    token = dashboard.csrf()
    run_id = schedules.start_run(shop.propel.db, f"train-now:{p.id}", "predictions.train")
    with one_at_a_time(shop.propel, p, "train"):  # another process's training
        page = client.get(f"/predictions/{p.id}?training={run_id}").text
        assert '<meta http-equiv="refresh" content="3">' in page
        assert "is still running" in page and "Train now</button>" in page
        assert re.search(r'<button type="submit"[^>]* disabled>Train now</button>', page)
        busy = client.post(f"/predictions/{p.id}/train", data={"csrf_token": token})
        assert busy.status_code == 409
        assert "Training did not start:" in busy.text and "by another run" in busy.text
    # The run's process ended without recording an outcome: once the run is older than
    # a starting thread could be and no lease is held, the page says so.
    page = client.get(f"/predictions/{p.id}?training={run_id}").text
    assert "is still running" in page  # a young run may not have taken its lease yet
    shop.propel.db.write(lambda conn: conn.execute(update(task_runs).where(
        task_runs.c.id == run_id).values(started_at=datetime.now(UTC) - timedelta(minutes=5))))
    page = client.get(f"/predictions/{p.id}?training={run_id}").text
    assert 'http-equiv="refresh"' not in page
    assert "Training stopped before it finished" in html.unescape(page)


def test_train_now_needs_a_marketer_and_the_token(dashboard, shop):
    before = len(registry.list_versions(shop.propel.db, shop.prediction_id))
    client = dashboard.sign_in("viewer")
    token = dashboard.csrf()
    response = client.post(f"/predictions/{shop.prediction_id}/train",
                           data={"csrf_token": token})
    assert response.status_code == 403 and "marketer" in response.text
    client = dashboard.sign_in("marketer")
    response = client.post(f"/predictions/{shop.prediction_id}/train", data={})
    assert response.status_code == 403 and "security token" in response.text
    assert len(registry.list_versions(shop.propel.db, shop.prediction_id)) == before


def test_train_now_without_enough_history_explains(dashboard, shop):
    name = _unique("Long window")
    p = preds.create_prediction(shop.propel, shop.account_id,
                                from_template("conversions", name=name, window_days=365))
    client = dashboard.sign_in("marketer")
    token = dashboard.csrf()
    response = client.post(f"/predictions/{p.id}/train", data={"csrf_token": token},
                           follow_redirects=False)
    assert response.status_code == 303
    page = _train_page(client, response.headers["location"])
    assert 'role="alert">Training did not start: needs at least' in page
    assert registry.list_versions(shop.propel.db, p.id) == []


# -- create -----------------------------------------------------------------------------------

def test_create_form_is_visible_to_viewers_but_only_marketers_may_submit(dashboard, shop):
    client = dashboard.sign_in("viewer")
    page = client.get("/predictions/new")
    assert page.status_code == 200 and "<h1>Create prediction</h1>" in page.text
    assert "needs the marketer role" in page.text
    assert '<button type="submit" class="primary">Create prediction</button>' not in page.text
    name = _unique("Viewer made")
    response = _post_new(client, dashboard.csrf(), **_custom(name))
    assert response.status_code == 403
    assert name not in _names(shop)


def test_template_link_fills_the_form(dashboard):
    client = dashboard.sign_in("marketer")
    page = client.get("/predictions/new?template=churn")
    assert page.status_code == 200
    assert '<option value="churn" selected>Predict Churn</option>' in page.text
    assert 'id="goal_event" name="goal_event" value="App Launched"' in page.text
    assert 'id="goal_absent" name="goal_absent" value="1" checked' in page.text
    assert 'value="undesired" checked' in page.text
    assert 'name="active_within_days" type="number" inputmode="numeric" min="1" ' \
           'max="3650" value="30"' in page.text
    bad = client.get("/predictions/new?template=nosuch")
    assert bad.status_code == 422 and "unknown template &#39;nosuch&#39;" in bad.text


def test_create_from_template(dashboard, shop):
    client = dashboard.sign_in("marketer")
    name = _unique("My retention")
    response = _post_new(client, dashboard.csrf(), template="retention", name=name)
    assert response.status_code == 303
    made = registry.get(shop.propel.db, shop.account_id, name)
    assert response.headers["location"] == f"/predictions/{made.id}"
    assert made.spec.template == "retention"
    assert made.spec.goal_event == "App Launched" and made.spec.audience.new_within_days == 30
    page = client.get(response.headers["location"])
    assert f"<h1>{name}</h1>" in page.text and "Not trained yet" in page.text


def test_create_from_the_filled_template_form_keeps_changes(dashboard, shop):
    client = dashboard.sign_in("marketer")
    name = _unique("Churn, shorter")
    fields = _custom(name, template="churn", goal_event="App Launched", polarity="undesired",
                     window_days="10", active_within_days="30", exclude_events="App Uninstalled")
    response = client.post("/predictions/new", data={
        "csrf_token": dashboard.csrf(), **fields, "goal_absent": ["0", "1"]},
        follow_redirects=False)
    assert response.status_code == 303
    spec = registry.get(shop.propel.db, shop.account_id, name).spec
    assert spec.template == "churn" and spec.goal_absent and spec.window_days == 10
    assert spec.audience.exclude_events == ("App Uninstalled",)


def test_create_custom_goal_with_conditions(dashboard, shop):
    client = dashboard.sign_in("marketer")
    name = _unique("Big spenders")
    fields = _custom(name, goal_where="amount > 50\ncurrency = USD\n\n", polarity="desired",
                     groups_high="10", groups_medium="25", exclude_events="App Uninstalled, Ban")
    response = _post_new(client, dashboard.csrf(), **fields)
    assert response.status_code == 303, response.text
    made = registry.get(shop.propel.db, shop.account_id, name)
    spec = made.spec
    assert spec.template is None and spec.goal_event == "Charged" and spec.window_days == 7
    assert [(c.property, c.op, c.value) for c in spec.goal_where] == [
        ("amount", ">", 50), ("currency", "=", "USD")]
    assert spec.audience.active_within_days == 60
    assert spec.audience.exclude_events == ("App Uninstalled", "Ban")
    assert (spec.groups.high, spec.groups.medium) == (0.1, 0.25)
    assert spec.goal_text == "Charged where amount > 50 and currency = USD"
    # it trains and scores on its schedules
    names = {s.name for s in preds.schedules.list_schedules(shop.propel.db)}
    assert {f"predictions.train:{made.id}", f"predictions.score:{made.id}"} <= names


@pytest.mark.parametrize(("field", "value", "message"), [
    ("name", "", "name must be 1 to 200 characters"),
    ("window_days", "0", "window_days must be 1 to 365"),
    ("window_days", "", "window_days must be 1 to 365"),
    ("window_days", "ten", "window_days must be a whole number"),
    ("goal_event", " ", "goal_event is required"),
    ("goal_where", "amount >", "where: cannot read &#39;amount &gt;&#39;"),
    ("template", "nosuch", "unknown template &#39;nosuch&#39;"),
    ("groups_high", "80", "groups: high and medium are shares of users"),
    ("active_within_days", "0", "audience.active_within_days must be 1 to 3650 days"),
    ("polarity", "neutral", "polarity must be"),
    ("retrain_every_days", "999", "retrain_every_days must be 1 to 365"),
])
def test_bad_input_is_explained_and_nothing_is_created(dashboard, shop, field, value, message):
    client = dashboard.sign_in("marketer")
    name = _unique("Bad input")
    fields = {**_custom(name), field: value}
    before = _names(shop)
    page = _post_new(client, dashboard.csrf(), **fields)
    assert page.status_code == 422
    assert '<div role="alert"' in page.text
    assert re.search(rf'<p class="field-error" id="{field}-error">{message}', page.text)
    assert f'aria-describedby="{field}-help {field}-error"' in page.text or \
        f'aria-describedby="{field}-error"' in page.text or field == "polarity"
    assert _names(shop) == before
    # what was typed is kept
    if field != "name":
        assert f'value="{html.escape(name)}"' in page.text


def test_several_missing_fields_are_reported_together(dashboard, shop):
    client = dashboard.sign_in("marketer")
    page = _post_new(client, dashboard.csrf(),
                     **_custom("", goal_event="", window_days="", groups_high="x"))
    assert page.status_code == 422
    assert 'id="groups_high-error"' in page.text
    page = _post_new(client, dashboard.csrf(), **_custom("", goal_event="", window_days=""))
    for field in ("name", "goal_event", "window_days"):
        assert f'id="{field}-error"' in page.text


def test_duplicate_name_is_a_clear_error(dashboard, shop):
    client = dashboard.sign_in("marketer")
    page = _post_new(client, dashboard.csrf(), template="conversions", name="")
    assert page.status_code == 422
    assert "a prediction named &#39;Predict Conversions&#39; already exists" in page.text
    assert 'id="name-error"' in page.text
    assert len([p for p in registry.list_all(shop.propel.db, shop.account_id)
                if p.spec.name == "Predict Conversions"]) == 1


def test_create_needs_the_token(dashboard, shop):
    client = dashboard.sign_in("marketer")
    name = _unique("No token")
    response = client.post("/predictions/new", data=_custom(name))
    assert response.status_code == 403
    assert name not in _names(shop)
