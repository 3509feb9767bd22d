"""Dashboard pages: journeys — the list, the editor (new, from the Engage flow, and
edit), a journey's graph with its numbers, lifecycle actions and a user's path.

A thin adapter over ``propel.journeys`` (the same calls as ``/api/v1/journeys``). The
editor's own buttons (add or remove a step or a split path, validate) post the whole
form and get it back re-rendered, so nothing typed is lost and no script is required.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

from propel import journeys
from propel.accounts.users import Session
from propel.api.auth import propel_of
from propel.campaigns.engage import GROUPS, draft_fields
from propel.core import Propel
from propel.predictions import registry
from propel.web import journey_form as jf
from propel.web import templating
from propel.web.auth import signed_in
from propel.web.builder_form import CHANNEL_FIELDS, CHANNEL_NAMES
from propel.web.engage import find_prediction, group_problem, render_engage
from propel.web.templating import render

router = APIRouter(include_in_schema=False)

# Journey ids are "jrn_" + hex; anything else cannot exist (and PostgreSQL refuses some
# characters outright), so it is a 404 before it reaches the database.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
VIEWER_NOTICE = "Viewers cannot create or change journeys. You can look at this form; " \
                "a marketer or an admin can save and publish it."
LIVE_NOTICE = "This journey is {status}. Saving creates version {next}: new entries " \
              "take it at once; users already inside finish on the version they entered with."
ACTIONS = {"publish": ("draft",), "pause": ("live",), "resume": ("paused",),
           "stop": ("draft", "live", "paused")}


# ------------------------------------------------------------------ helpers

def _account(session: Session) -> str:
    return session.user.account_id


def journey_or_404(propel: Propel, account_id: str, journey_id: str) -> journeys.Journey:
    if not _ID.match(journey_id):
        raise HTTPException(404, "There is no such journey.")
    try:
        return journeys.get(propel, account_id, journey_id)
    except LookupError:
        raise HTTPException(404, "There is no such journey in this account.") from None


def lift_text(lift: dict[str, Any]) -> str:
    return templating.lift_text(lift, no_holdout="nobody has been held out",
                                nobody_treated="nobody has entered the journey's steps")


def entry_text(entry: dict[str, Any]) -> str:
    kind = entry.get("type")
    if kind == "prediction_groups":
        return f"{entry.get('prediction')}: {jf.groups_text(entry.get('groups') or [])}"
    if kind == "likelihood":
        text = f"{entry.get('prediction')} moves to {jf.groups_text(entry.get('to') or [])}"
        return text + (f" from {jf.groups_text(entry['from'])}" if entry.get("from") else "")
    if kind == "event":
        return f"Does {entry.get('event')}" + (" (with conditions)" if entry.get("where")
                                                 else "")
    if kind == "audience":
        return f"Audience rule, every {entry.get('every_hours', 24):g} hours"
    return "–"


def _duration_text(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    return " ".join(f"{n} {unit if n != 1 else unit[:-1]}" for unit, n in d.items() if n)


def _condition_text(c: Any) -> str:
    if not isinstance(c, dict):
        return "–"
    for key in ("and", "or"):
        if key in c:
            return f" {key} ".join(f"({_condition_text(x)})" for x in c[key])
    if "not" in c:
        return f"not ({_condition_text(c['not'])})"
    if "prediction" in c:
        return f"{c['prediction']} group in {jf.groups_text(c.get('group') or [])}"
    if "event" in c:
        did = "did" if c.get("did", True) else "did not do"
        within = f" within {_duration_text(c['within'])}" if c.get("within") else \
            " since entering"
        return f"{did} {c['event']}{within}"
    value = f" {jf._text(c.get('value'))}" if "value" in c and c.get("value") is not None else ""
    return f"{c.get('property')} {c.get('op', '=')}{value}"


def step_summary(step: dict[str, Any]) -> str:
    kind = step["type"]
    if kind == "send":
        first = ((step.get("content") or {}).get("variants") or [{}])[0]
        words = first.get("subject") or first.get("title") or first.get("body") or ""
        return f"{CHANNEL_NAMES.get(step.get('channel'), step.get('channel'))}: {words}"[:160]
    if kind == "wait":
        return f"Wait {_duration_text(step.get('duration'))}"
    if kind == "wait_until":
        return (f"Wait until {step.get('event')}, at most "
                f"{_duration_text(step.get('timeout'))}")
    if kind == "branch":
        return f"If {_condition_text(step.get('condition'))}"
    if kind == "split":
        return "Random split: " + ", ".join(f"{p['percent']:g} %" for p in step["paths"])
    if kind == "update_property":
        return f"Set {step.get('property')} = {orjson.dumps(step.get('value')).decode()}"
    return "The user leaves the journey"


def step_edges(step: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(what leads there, the next step or None for the end) of one step."""
    kind = step["type"]
    if kind == "exit":
        return []
    if kind == "wait_until":
        return [(f"On {step.get('event')}", step.get("on_event")),
                (f"After {_duration_text(step.get('timeout'))}", step.get("on_timeout"))]
    if kind == "branch":
        return [("Yes", step.get("yes")), ("No", step.get("no"))]
    if kind == "split":
        return [(f"{p['percent']:g} %", p.get("next")) for p in step.get("paths") or []]
    return [("Next", step.get("next"))]


def _graph(definition: dict[str, Any], stats: dict[str, Any]) -> list[dict[str, Any]]:
    numbers = {s["id"]: s for s in stats["steps"]}
    empty = {"entered": 0, "waiting": 0, "exited": 0}
    return [{"step": s, "kind": jf.STEP_NAMES.get(s["type"], s["type"]),
             "summary": step_summary(s), "edges": step_edges(s),
             "n": numbers.get(s["id"], empty)} for s in definition["steps"]]


def _prediction_names(propel: Propel, account_id: str) -> list[str]:
    return [p.spec.name for p in registry.list_all(propel.db, account_id)]


# ------------------------------------------------------------------ the list

def journey_row(propel: Propel, j: journeys.Journey) -> dict[str, Any]:
    stats = journeys.journey_stats(propel, j.account_id, j.id)
    return {"j": j, "entry": entry_text(j.definition.get("entry") or {}),
            "totals": stats["totals"], "lift": stats["lift"]}


def journeys_on_prediction(propel: Propel, account_id: str, prediction_name: str
                           ) -> list[dict[str, Any]]:
    """The journeys whose entry is a prediction's groups or likelihood changes."""
    return [journey_row(propel, j) for j in journeys.list_journeys(propel, account_id)
            if (j.definition.get("entry") or {}).get("prediction") == prediction_name]


@router.get("/journeys")
def journeys_page(request: Request, session: Session = Depends(signed_in())) -> Response:
    propel = propel_of(request)
    rows = [journey_row(propel, j) for j in
            reversed(journeys.list_journeys(propel, _account(session)))]  # newest first
    return render(request, "journeys/list.html", section="journeys", title="Journeys",
                  rows=rows, lift_text=lift_text, can_create=session.user.can("marketer"))


# ------------------------------------------------------------------ the editor

def _editor(request: Request, session: Session, state: jf.JourneyState, *,
            journey: journeys.Journey | None = None, status_code: int = 200,
            notice: str | None = None, success: str | None = None) -> Response:
    propel = propel_of(request)
    definition, _ = jf.to_definition(state)
    live = journey is not None and journey.status in ("live", "paused")
    return render(
        request, "journeys/editor.html", status_code=status_code, section="journeys",
        title=f"Edit journey: {journey.name}" if journey else "New journey",
        state=state, v=state.values, steps=state.steps, journey=journey,
        targets=[("", "End of the journey")] + [
            (s["id"], f"{s['id']} ({jf.STEP_NAMES.get(s['type'], s['type'])})")
            for s in state.steps if s["id"].strip()],
        action=f"/journeys/{journey.id}/edit" if journey else "/journeys/new",
        predictions=_prediction_names(propel, _account(session)), groups=GROUPS,
        step_types=jf.STEP_NAMES, entry_types=jf.ENTRY_NAMES, cond_kinds=jf.COND_KINDS,
        cond_ops=[(op, op) for op in jf.COND_OPS], channels=CHANNEL_NAMES,
        channel_fields=CHANNEL_FIELDS,
        notice=notice, success=success, can_save=session.user.can("marketer"),
        viewer_notice=VIEWER_NOTICE,
        live_notice=LIVE_NOTICE.format(status=journey.status, next=journey.version + 1)
        if live else None,
        definition_json=orjson.dumps(definition, option=orjson.OPT_INDENT_2).decode())


def engage_state(request: Request, session: Session, prediction_id: str, groups: list[str],
                 channel: str) -> jf.JourneyState | Response:
    """A new journey from the Engage flow: the chosen groups as entry, a first send on
    the chosen channel with the group's suggested message."""
    found = find_prediction(request, session, prediction_id)
    problem = group_problem(groups)
    if problem:
        return render_engage(request, session, found, chosen=groups, channel=channel,
                             error=problem, status_code=422)
    chosen = [g for g in GROUPS if g in groups]
    fields = draft_fields(found, chosen, channel=channel)
    spec = found.spec
    definition = {
        "name": f"{spec.name} — {', '.join(chosen)} journey",
        "entry": {"type": "prediction_groups", "prediction": spec.name, "groups": chosen,
                  "every_hours": 24},
        "reentry": {"policy": "once"}, "holdout_pct": 0.1,
        "goal": {"event": fields["goal"]["event"], "where": fields["goal"]["where"],
                 "within_days": spec.window_days} if fields["goal"] else None,
        "steps": [{"id": "first_message", "type": "send", "channel": channel,
                   "content": fields["content"], "next": None}],
    }
    state = jf.state_from_definition(definition)
    if not fields["goal"]:
        state.values["holdout"] = "0"  # an outcome to prevent: no goal to measure against
    return state


@router.get("/journeys/new")
def new_journey(request: Request, prediction: str = "", groups: list[str] = Query([]),
                channel: str = "inbox", session: Session = Depends(signed_in())
                ) -> Response:
    if channel not in CHANNEL_NAMES:
        channel = "inbox"
    if prediction:
        state = engage_state(request, session, prediction, groups, channel)
        if isinstance(state, Response):
            return state
    else:
        state = jf.state_from_definition({
            "name": "", "entry": {"type": "event", "event": ""}, "holdout_pct": 0.1,
            "goal": {"event": "Charged", "within_days": 7},
            "steps": [{"id": "first_message", "type": "send", "channel": channel,
                       "content": {"variants": [{"name": "A", "split": 100}]}}]})
    notice = None if session.user.can("marketer") else VIEWER_NOTICE
    return _editor(request, session, state, notice=notice)


def _check(state: jf.JourneyState) -> dict[str, Any] | None:
    """The valid definition, or None with every problem placed on the form."""
    definition, form_errors = jf.to_definition(state)
    problems: list[dict[str, str]] = []
    try:
        journeys.validate(definition)
    except journeys.JourneyError as exc:
        problems = exc.problems
    if form_errors or problems:
        jf.show_problems(state, problems, form_errors)
        return None
    return definition


def _save(request: Request, session: Session, state: jf.JourneyState, op: str,
          journey: journeys.Journey | None) -> Response:
    propel, account = propel_of(request), _account(session)
    definition = _check(state)
    if definition is None:
        return _editor(request, session, state, journey=journey, status_code=422)
    if op == "validate":
        return _editor(request, session, state, journey=journey,
                       success=f"The journey is valid: {len(definition['steps'])} steps, "
                               "every path ends. Nothing was saved.")
    try:
        if journey is None:
            j = journeys.create(propel, account, definition)
        else:
            j = journeys.update(propel, account, journey.id, definition)
        if op == "publish" and j.status == "draft":
            j = journeys.publish(propel, account, j.id)
    except journeys.JourneyError as exc:
        jf.show_problems(state, exc.problems)
        return _editor(request, session, state, journey=journey, status_code=422)
    if op == "publish" or j.status != "draft":
        return RedirectResponse(f"/journeys/{j.id}", status_code=303)
    return RedirectResponse(f"/journeys/{j.id}/edit?saved=1", status_code=303)


async def _post(request: Request, session: Session, journey: journeys.Journey | None
                ) -> Response:
    form = await request.form()
    state = jf.state_from_form(form)
    state.values["journey_id"] = journey.id if journey else ""
    op = str(form.get("op", "")) or "validate"
    if op in ("validate", "save", "publish"):
        return _save(request, session, state, op, journey)
    jf.apply_op(state, op)
    return _editor(request, session, state, journey=journey)


@router.post("/journeys/new")
async def create_journey(request: Request, session: Session = Depends(signed_in("marketer"))
                         ) -> Response:
    return await _post(request, session, None)


def _editable(request: Request, session: Session, journey_id: str) -> journeys.Journey:
    j = journey_or_404(propel_of(request), _account(session), journey_id)
    if j.status == "stopped":
        raise HTTPException(409, f"{j.name} is stopped, so it cannot be edited; create a "
                                 "new journey instead.")
    return j


@router.get("/journeys/{journey_id}/edit")
def edit_journey(request: Request, journey_id: str, saved: str = "",
                 session: Session = Depends(signed_in())) -> Response:
    j = _editable(request, session, journey_id)
    state = jf.state_from_definition(j.definition, j.id)
    notice = VIEWER_NOTICE if not session.user.can("marketer") else None
    return _editor(request, session, state, journey=j, notice=notice,
                   success="Draft saved." if saved and j.status == "draft" else None)


@router.post("/journeys/{journey_id}/edit")
async def update_journey(request: Request, journey_id: str,
                         session: Session = Depends(signed_in("marketer"))) -> Response:
    return await _post(request, session, _editable(request, session, journey_id))


# ------------------------------------------------------------------ a journey's page

def _version(raw: str, j: journeys.Journey) -> int | None:
    if not raw:
        return None
    if not raw.isdigit() or not any(v["version"] == int(raw) for v in j.versions):
        raise HTTPException(404, f"{j.name} has no version {raw[:20]!r}.")
    return int(raw)


def _stats_context(propel: Propel, j: journeys.Journey, version: int | None
                   ) -> dict[str, Any]:
    stats = journeys.journey_stats(propel, j.account_id, j.id, version)
    definition = journeys.get_version(propel, j.account_id, j.id, version) \
        if version else j.definition
    totals = stats["totals"]
    treated = totals["entered"] - totals["holdout"]
    return {"j": j, "stats": stats, "totals": totals, "lift": stats["lift"],
            "lift_summary": lift_text(stats["lift"]), "version": version,
            "definition": definition, "graph": _graph(definition, stats),
            "treated": treated, "live": j.status == "live",
            "exits": sorted(totals["exits"].items())}


@router.get("/journeys/{journey_id}")
def journey_page(request: Request, journey_id: str, version: str = "",
                 session: Session = Depends(signed_in())) -> Response:
    propel = propel_of(request)
    j = journey_or_404(propel, _account(session), journey_id)
    context = _stats_context(propel, j, _version(version, j))
    return render(request, "journeys/detail.html", section="journeys", title=j.name,
                  entry=entry_text(j.definition.get("entry") or {}),
                  can_act=session.user.can("marketer"), **context)


@router.get("/journeys/{journey_id}/stats-panel")
def stats_panel(request: Request, journey_id: str, version: str = "",
                session: Session = Depends(signed_in())) -> Response:
    """The numbers alone, for htmx to refresh while the journey is live."""
    propel = propel_of(request)
    j = journey_or_404(propel, _account(session), journey_id)
    return render(request, "journeys/_stats_panel.html",
                  **_stats_context(propel, j, _version(version, j)))


@router.get("/journeys/{journey_id}/path")
def user_path_page(request: Request, journey_id: str, identity: str = "",
                   session: Session = Depends(signed_in())) -> Response:
    propel = propel_of(request)
    j = journey_or_404(propel, _account(session), journey_id)
    identity = identity.replace("\x00", "").strip()[:256]
    error, entries = None, []
    if not identity:
        error = "Enter a user's identity to see their path through this journey."
    else:
        entries = journeys.user_path(propel, j.account_id, j.id, identity)
        if not entries:
            error = f"{identity} has not entered this journey."
    return render(request, "journeys/path.html", status_code=422 if not identity else 200,
                  section="journeys", title=f"{j.name}: path of {identity or 'a user'}",
                  j=j, identity=identity, entries=entries, error=error)


@router.post("/journeys/{journey_id}/{action}")
def lifecycle(request: Request, journey_id: str, action: str,
              session: Session = Depends(signed_in("marketer"))) -> Response:
    if action not in ACTIONS:
        raise HTTPException(404, "There is no such action.")
    propel = propel_of(request)
    j = journey_or_404(propel, _account(session), journey_id)
    try:
        getattr(journeys, action)(propel, j.account_id, j.id)
    except journeys.JourneyError as exc:
        return render(request, "error.html", status_code=409, title="Not possible",
                      message=f"{j.name}: {exc}.")
    return RedirectResponse(f"/journeys/{j.id}", status_code=303)
