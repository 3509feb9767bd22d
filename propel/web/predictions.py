"""Dashboard pages: the predictions list, the create form and a prediction's page."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import FormData

from propel import predictions as preds
from propel.accounts.users import Session
from propel.api.auth import propel_of
from propel.campaigns import service
from propel.campaigns.stats import headline
from propel.core import Propel
from propel.predictions import background, registry, scoring
from propel.predictions.registry import ModelVersion, Prediction
from propel.predictions.spec import (
    TEMPLATES,
    Audience,
    Condition,
    Groups,
    PredictionSpec,
    SpecError,
    from_template,
    parse_where,
)
from propel.web.auth import signed_in
from propel.web.journeys import journeys_on_prediction
from propel.web.journeys import lift_text as journey_lift_text
from propel.web.templating import render

router = APIRouter(include_in_schema=False)

GROUP_NAMES = ("High", "Medium", "Low")
GROUP_COLOURS = {"High": "#067647", "Medium": "#a15c07", "Low": "#475467"}
TEMPLATE_LABELS = {"conversions": "Predict Conversions", "churn": "Predict Churn",
                   "retention": "Predict Retention", "uninstalls": "Predict Uninstalls"}
# Where each of the spec's validation messages belongs on the form (first match wins).
ERROR_FIELDS = (
    ("name", "name"), ("a prediction named", "name"), ("goal_event", "goal_event"),
    ("window_days", "window_days"), ("polarity", "polarity"),
    ("score_every_days", "score_every_days"), ("retrain_every_days", "retrain_every_days"),
    ("where", "goal_where"), ("groups", "groups_high"),
    ("audience.active_within_days", "active_within_days"),
    ("audience.new_within_days", "new_within_days"), ("unknown template", "template"),
)
INT_FIELDS = ("window_days", "active_within_days", "new_within_days", "score_every_days",
              "retrain_every_days")


def _when(value: datetime | str | None) -> str:
    """A timestamp as people read it, in UTC; never-happened is a dash."""
    if value is None:
        return "–"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _day(value: datetime | str | None) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d")


def _find(request: Request, session: Session, prediction_id: str) -> Prediction:
    try:
        return preds.get(propel_of(request), session.user.account_id, prediction_id)
    except registry.NotFound:
        raise HTTPException(404, "There is no such prediction in this account.") from None


def _next_runs(propel: Propel) -> dict[str, datetime]:
    return {s.name: s.next_run_at for s in preds.schedules.list_schedules(propel.db)}


def _row(propel: Propel, p: Prediction, next_runs: dict[str, datetime]) -> dict[str, Any]:
    return {"id": p.id, "name": p.spec.name, "status": p.status, "goal": p.spec.goal_text,
            "polarity": p.spec.polarity, "window_days": p.spec.window_days,
            "last_scored": _when(p.last_scored_at),
            "next_retrain": _when(next_runs.get(f"predictions.train:{p.id}")),
            "groups": scoring.group_sizes(propel, p.id)}


@router.get("/predictions")
def predictions_page(request: Request, session: Session = Depends(signed_in())) -> Response:
    propel = propel_of(request)
    next_runs = _next_runs(propel)
    rows = [_row(propel, p, next_runs)
            for p in registry.list_all(propel.db, session.user.account_id)]
    return render(request, "predictions/list.html", title="Predictions",
                  section="predictions", rows=rows)


# -- create ---------------------------------------------------------------------------------

def _conditions_text(conditions: tuple[Condition, ...]) -> str:
    lines = []
    for c in conditions:
        if c.op == "exists":
            lines.append(f"{c.property} exists")
        elif c.op == "in":
            lines.append(f"{c.property} in [{', '.join(str(v) for v in c.value)}]")
        else:
            lines.append(f"{c.property} {c.op} {c.value}")
    return "\n".join(lines)


def _percent(share: float) -> str:
    return f"{share * 100:g}"


def spec_form_values(spec: PredictionSpec | None, template: str = "") -> dict[str, Any]:
    """The form's fields filled from a template's (or the default) definition."""
    groups = spec.groups if spec else Groups()
    audience = spec.audience if spec else Audience()
    return {
        "template": template, "name": "", "goal_event": spec.goal_event if spec else "",
        "goal_where": _conditions_text(spec.goal_where) if spec else "",
        "goal_absent": bool(spec and spec.goal_absent),
        "polarity": spec.polarity if spec else "desired",
        "window_days": str(spec.window_days if spec else 14),
        "active_within_days": str(audience.active_within_days or ""),
        "new_within_days": str(audience.new_within_days or ""),
        "exclude_events": ", ".join(audience.exclude_events),
        "groups_mode": groups.mode, "groups_high": _percent(groups.high),
        "groups_medium": _percent(groups.medium),
        "score_every_days": str(spec.score_every_days if spec else 1),
        "retrain_every_days": str(spec.retrain_every_days if spec else 15),
    }


def _form_values(form: FormData) -> dict[str, Any]:
    values = {k: str(form.get(k, "")).strip() for k in spec_form_values(None)}
    values["goal_where"] = str(form.get("goal_where", ""))
    values["goal_absent"] = "1" in form.getlist("goal_absent")
    return values


def _field_for(message: str) -> str:
    return next((field for prefix, field in ERROR_FIELDS if message.startswith(prefix)),
                "name")


def _parse_numbers(form: FormData, errors: dict[str, str]) -> dict[str, Any]:
    """Whole numbers and percentages; a blank field is None (the template's value)."""
    out: dict[str, Any] = {}
    for field in INT_FIELDS:
        raw = str(form.get(field, "")).strip()
        try:
            out[field] = int(raw) if raw else None
        except ValueError:
            errors[field] = f"{field} must be a whole number"
    for field in ("groups_high", "groups_medium"):
        raw = str(form.get(field, "")).strip()
        try:
            out[field] = float(raw) / 100 if raw else None
            if out[field] is not None and not math.isfinite(out[field]):
                raise ValueError
        except ValueError:
            errors["groups_high"] = "groups: the boundaries must be percentages, e.g. 20"
    return out


def _parse_parts(form: FormData, numbers: dict[str, Any], errors: dict[str, str]
                 ) -> dict[str, Any]:
    """Conditions, audience and groups, each checked on its own so that every wrong part
    of the form is reported at once."""
    parts: dict[str, Any] = {}
    try:
        parts["goal_where"] = tuple(parse_where(line) for line in
                                    str(form.get("goal_where", "")).splitlines() if line.strip())
    except SpecError as exc:
        errors["goal_where"] = str(exc)
    if "active_within_days" in form:  # the full form: its audience replaces the template's
        try:
            parts["audience"] = Audience(
                active_within_days=numbers.get("active_within_days"),
                new_within_days=numbers.get("new_within_days"),
                exclude_events=tuple(e.strip() for e in
                                     str(form.get("exclude_events", "")).split(",")
                                     if e.strip()))
        except SpecError as exc:
            errors.setdefault(_field_for(str(exc)), str(exc))
    high, medium = numbers.get("groups_high"), numbers.get("groups_medium")
    if high is not None or medium is not None:
        try:
            parts["groups"] = Groups(mode=str(form.get("groups_mode") or "percentile"),
                                     high=Groups.high if high is None else high,
                                     medium=Groups.medium if medium is None else medium)
        except SpecError as exc:
            errors.setdefault("groups_high", str(exc))
    return parts


def _missing(fields: dict[str, Any]) -> dict[str, str]:
    """A custom goal's required fields, all reported together, in the spec's words."""
    errors = {}
    if not fields["name"]:
        errors["name"] = "name must be 1 to 200 characters"
    if not fields["goal_event"]:
        errors["goal_event"] = "goal_event is required"
    if fields["window_days"] is None:
        errors["window_days"] = "window_days must be 1 to 365"
    return errors


def parse_spec(form: FormData) -> tuple[PredictionSpec | None, dict[str, str]]:
    """The prediction the form describes, or the messages for its fields."""
    errors: dict[str, str] = {}
    numbers = _parse_numbers(form, errors)
    parts = _parse_parts(form, numbers, errors)
    absent = form.getlist("goal_absent")
    fields: dict[str, Any] = {
        "name": str(form.get("name", "")).strip() or None,
        "goal_event": str(form.get("goal_event", "")).strip() or None,
        "polarity": str(form.get("polarity", "")) or None,
        "goal_absent": ("1" in absent) if absent else None,
        "window_days": numbers.get("window_days"),
        "score_every_days": numbers.get("score_every_days"),
        "retrain_every_days": numbers.get("retrain_every_days"), **parts,
    }
    template = str(form.get("template", "")).strip()
    if not template:
        errors = {**_missing(fields), **errors}
    if errors:
        return None, errors
    try:
        if template:
            return from_template(template, **fields), {}
        return PredictionSpec(**{k: v for k, v in fields.items() if v is not None}), {}
    except SpecError as exc:
        return None, {_field_for(str(exc)): str(exc)}


def _new_form(request: Request, values: dict[str, Any], errors: dict[str, str] | None = None,
              status_code: int = 200) -> Response:
    return render(request, "predictions/new.html", status_code=status_code,
                  title="Create prediction", section="predictions", values=values,
                  errors=errors or {}, templates=TEMPLATE_LABELS)


@router.get("/predictions/new")
def new_prediction_page(request: Request, template: str = "",
                        session: Session = Depends(signed_in())) -> Response:
    if template and template not in TEMPLATES:
        values = spec_form_values(None)
        return _new_form(request, values, {"template": f"unknown template {template!r}; "
                                           f"one of {', '.join(TEMPLATES)}"}, 422)
    values = spec_form_values(from_template(template) if template else None, template)
    return _new_form(request, values)


@router.post("/predictions/new")
async def create_prediction(request: Request, session: Session = Depends(signed_in("marketer"))
                            ) -> Response:
    form = await request.form()
    spec, errors = parse_spec(form)
    if spec is not None:
        try:
            made = preds.create_prediction(propel_of(request), session.user.account_id, spec)
        except SpecError as exc:  # the name is taken
            errors = {_field_for(str(exc)): str(exc)}
        else:
            return RedirectResponse(f"/predictions/{made.id}", status_code=303)
    return _new_form(request, _form_values(form), errors, 422)


# -- a prediction's page ----------------------------------------------------------------------

def _current(versions: list[ModelVersion], p: Prediction) -> ModelVersion | None:
    return next((v for v in versions if v.version == p.current_version), None)


def _expected_rates(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    done = next((r for r in runs if r["outcome"] == "ok" and r["summary"]), None)
    return done["summary"].get("expected_rates") if done else None


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def chooser_points(size_vs_precision: list[dict[str, Any]], population: int
                   ) -> list[dict[str, Any]]:
    """The audience-size chooser: for each share of the scored users, the precision the
    model reached on that share of the validation users, applied to today's audience."""
    points = []
    for row in size_vs_precision:
        users = _round_half_up(row["share"] * population)
        precision = row["precision"]
        if precision is None:
            text = f"Top {users:,} users: expected precision unknown"
        else:
            text = (f"Top {users:,} users: expected precision {precision * 100:.1f} %, "
                    f"expected goal events {_round_half_up(users * precision):,}")
        points.append({"share": row["share"], "label": f"{row['share'] * 100:g} % of users",
                       "users": users, "precision": precision, "recall": row["recall"],
                       "lift": row["lift"], "text": text})
    return points


def _axes(x_title: str, y_title: str, x: dict[str, Any] | None = None,
          y: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"scales": {"x": {"title": {"display": True, "text": x_title}, **(x or {})},
                       "y": {"title": {"display": True, "text": y_title}, "beginAtZero": True,
                             **(y or {})}}}


def histogram_chart(bins: list[dict[str, Any]]) -> dict[str, Any]:
    labels = [f"{b['lower']:.1f}–{b['upper']:.1f}" for b in bins]
    datasets = [{"label": g, "data": [b["groups"].get(g, 0) for b in bins],
                 "backgroundColor": GROUP_COLOURS[g]} for g in GROUP_NAMES]
    return {"type": "bar", "data": {"labels": labels, "datasets": datasets},
            "options": _axes("Score", "Users", x={"stacked": True}, y={"stacked": True})}


def _line(label: str, points: list[tuple[float, float]], colour: str, dashed: bool = False
          ) -> dict[str, Any]:
    out = {"label": label, "data": [{"x": round(x * 100, 2), "y": round(y * 100, 2)}
                                    for x, y in points],
           "showLine": True, "borderColor": colour, "backgroundColor": colour}
    if dashed:
        out.update(borderDash=[6, 4], pointRadius=0)
    return out


def calibration_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    pts = [(r["mean_predicted"], r["observed_rate"]) for r in rows
           if r["mean_predicted"] is not None and r["observed_rate"] is not None]
    top = max([max(x, y) for x, y in pts] + [0.01])
    return {"type": "scatter", "data": {"datasets": [
        _line("This model", pts, "#1d4ed8"),
        _line("Perfectly calibrated", [(0.0, 0.0), (top, top)], "#4f5863", dashed=True)]},
        "options": _axes("Predicted probability (%)", "Observed rate (%)")}


def gains_chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    pts = [(0.0, 0.0)] + [(r["cumulative_share_of_users"], r["cumulative_share_of_positives"])
                          for r in rows if r["cumulative_share_of_positives"] is not None]
    return {"type": "scatter", "data": {"datasets": [
        _line("This model", pts, "#1d4ed8"),
        _line("Random targeting", [(0.0, 0.0), (1.0, 1.0)], "#4f5863", dashed=True)]},
        "options": _axes("Share of users, best scores first (%)",
                         "Cumulative share of goal events (%)", y={"max": 100})}


def drivers_chart(drivers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "bar", "data": {
        "labels": [d["feature"] for d in drivers],
        "datasets": [{"label": "Share of influence (%)", "backgroundColor": "#1d4ed8",
                      "data": [round(d["importance"] * 100, 2) for d in drivers]}]},
        "options": {"indexAxis": "y", **_axes("Share of influence (%)", "Feature")}}


def _engagements(propel: Propel, p: Prediction) -> list[dict[str, Any]]:
    return [{"id": c.id, "name": c.name, "status": c.status, "channel": c.channel,
             "strategy": c.strategy, **headline(propel.db, c.id)}
            for c in service.list_campaigns(propel, p.account_id, prediction_id=p.id)]


def _quality_context(current: ModelVersion | None, population: int) -> dict[str, Any]:
    if current is None:
        return {"quality": None}
    metrics = current.metrics
    quality = metrics.get("quality") or {}
    chooser = chooser_points(quality.get("size_vs_precision") or [],
                             population or int(quality.get("n") or 0))
    default = next((i for i, pt in enumerate(chooser) if pt["share"] >= 0.2), 0)
    return {
        "quality": quality, "validation": metrics.get("validation") or {},
        "backtest": metrics.get("groups_backtest") or {},
        "calibration_method": metrics.get("calibration_method"),
        "drivers": metrics.get("drivers") or [],
        "calibration_chart": calibration_chart(quality.get("calibration") or []),
        "gains_chart": gains_chart(quality.get("gains") or []),
        "drivers_chart": drivers_chart(metrics.get("drivers") or []),
        "chooser": chooser, "chooser_default": default,
    }


def _version_rows(versions: list[ModelVersion]) -> list[dict[str, Any]]:
    return [{"version": v.version, "kind": v.kind, "as_of": _day(v.as_of),
             "trained_at": _when(v.trained_at),
             "auc": (v.metrics.get("quality") or {}).get("auc"),
             "log_loss": (v.metrics.get("quality") or {}).get("log_loss"),
             "promoted": v.promoted, "reason": v.reason} for v in versions]


def _run_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "started": _when(r["started_at"]), "as_of_day": _day(r["as_of"])}
            for r in runs]


def detail_context(propel: Propel, p: Prediction) -> dict[str, Any]:
    """Everything the prediction's page shows, from the predictions and campaigns APIs."""
    versions = registry.list_versions(propel.db, p.id)
    current = _current(versions, p)
    sizes = scoring.group_sizes(propel, p.id)
    runs = scoring.list_runs(propel, p.id, limit=10)
    bins = registry.score_histogram(propel.db, p.id)
    next_runs = _next_runs(propel)
    return {
        "p": p, "spec": p.spec, "sizes": sizes, "scored_users": sum(sizes.values()),
        "rates": _expected_rates(runs) or {}, "current": current,
        "last_trained": _when(p.last_trained_at), "last_scored": _when(p.last_scored_at),
        "next_retrain": _when(next_runs.get(f"predictions.train:{p.id}")),
        "next_score": _when(next_runs.get(f"predictions.score:{p.id}")),
        "histogram": bins, "histogram_chart": histogram_chart(bins) if bins else None,
        "versions": _version_rows(versions), "runs": _run_rows(runs),
        "engagements": _engagements(propel, p),
        "journeys": journeys_on_prediction(propel, p.account_id, p.spec.name),
        "journey_lift": journey_lift_text,
        **_quality_context(current, sum(sizes.values())),
    }


def _detail(request: Request, p: Prediction, status_code: int = 200, **extra: Any
            ) -> Response:
    return render(request, "predictions/detail.html", status_code=status_code,
                  title=p.spec.name, section="predictions",
                  **detail_context(propel_of(request), p), **extra)


def _training_context(request: Request, p: Prediction) -> dict[str, Any]:
    """What the page says about the "Train now" run in its query string: still running
    (the page then reloads itself), the version it made, or why it made none. Built
    from the stored run and version, never from the query string's text."""
    raw = request.query_params.get("training", "")
    propel = propel_of(request)
    run = background.training_run(propel, p, int(raw)) if raw.isdigit() else None
    if run is None:
        return {}
    if run.state == "running":
        return {"training_since": run.started_at, "notice": (
            f"Training started at {run.started_at:%H:%M:%S} UTC and is still running. "
            "This page reloads itself until it has finished.")}
    if run.state == "stopped":
        return {"train_error": "Training stopped before it finished: the server process "
                               "running it ended. Press “Train now” to start again."}
    if run.state == "failed":
        return {"train_error": run.error}
    try:
        version = registry.get_version(propel.db, p.id, int(run.version or 0))
    except registry.NotFound:
        return {}
    scored = p.last_scored_at is not None and p.last_scored_at >= run.started_at
    return {"notice": f"Trained version {version.version} ({version.kind}): {version.reason}."
                      + (" Scores were updated with it." if scored else "")}


@router.get("/predictions/{prediction_id}")
def prediction_page(request: Request, prediction_id: str,
                    session: Session = Depends(signed_in())) -> Response:
    p = _find(request, session, prediction_id)
    return _detail(request, p, **_training_context(request, p))


@router.post("/predictions/{prediction_id}/train")
async def train_now(request: Request, prediction_id: str,
                    session: Session = Depends(signed_in("marketer"))) -> Response:
    p = _find(request, session, prediction_id)
    try:
        run_id = await run_in_threadpool(background.start_training, propel_of(request), p)
    except preds.AlreadyRunning as exc:
        return _detail(request, p, 409, train_error=f"Training did not start: {exc}.")
    return RedirectResponse(f"/predictions/{p.id}?training={run_id}", status_code=303)
