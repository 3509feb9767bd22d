"""Dashboard pages: the campaign builder (Who × What × When), new and edit.

A thin adapter over ``propel.campaigns.service`` (create, update, publish),
``propel.audiences`` (properties, live count) and ``propel.campaigns.preview``. The
form's own buttons (add a condition or a variant, change the channel) post the whole
form and get it back re-rendered, so nothing typed is lost and no script is required.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

from propel import audiences
from propel.accounts.users import Session
from propel.api.auth import propel_of
from propel.api.campaigns import reference_problem
from propel.audiences.rules import CHANNELS as REACH_CHANNELS
from propel.campaigns import service
from propel.campaigns.content_validation import TemplateError, validate_content
from propel.campaigns.engage import GROUPS, draft_fields
from propel.campaigns.preview import preview_for
from propel.web import audience_form, builder_form
from propel.web.auth import signed_in
from propel.web.builder_form import BuilderState
from propel.web.campaign_stats import next_run_text
from propel.web.engage import find_prediction, group_problem, render_engage
from propel.web.templating import render

router = APIRouter(include_in_schema=False)
VIEWER_NOTICE = "Viewers cannot create campaigns. You can look at this form; a marketer " \
                "or an admin can save and publish it."


# ------------------------------------------------------------------ helpers

def _account(session: Session) -> str:
    return session.user.account_id


def _properties(request: Request, session: Session) -> list[dict[str, Any]]:
    return audiences.available_properties(propel_of(request), _account(session))


def _types(props: list[dict[str, Any]]) -> dict[str, str]:
    return {p["name"]: p["type"] for p in props}


def _count_text(request: Request, session: Session, state: BuilderState,
                types: dict[str, str]) -> str:
    """The live audience size, or why it cannot be counted yet."""
    fields, errors = builder_form.to_fields(state, types)
    problem = next((m for k, m in errors.items() if k.startswith("a-") or k == "audience_json"),
                   None)
    if problem:
        return f"Cannot count yet: {problem}"
    try:
        n = audiences.count(propel_of(request), _account(session), fields["audience"])
    except audiences.AudienceError as exc:
        return f"Cannot count yet: {exc}"
    return f"{n:,} user{'' if n == 1 else 's'}"


def _editable(request: Request, session: Session, campaign_id: str) -> service.Campaign:
    try:
        if "\x00" in campaign_id or len(campaign_id) > 64:  # never a valid id
            raise LookupError(campaign_id)
        return service.get_campaign(propel_of(request), _account(session), campaign_id)
    except LookupError:
        raise HTTPException(404, f"No campaign {campaign_id!r} in this account.") from None


def _saved(request: Request, session: Session, campaign_id: str) -> service.Campaign | None:
    try:
        return service.get_campaign(propel_of(request), _account(session), campaign_id) \
            if campaign_id else None
    except LookupError:
        return None


def _page(request: Request, session: Session, state: BuilderState, *, status_code: int = 200,
          notice: str | None = None, partial: bool = False,
          preview: dict[str, Any] | None = None) -> Response:
    """The builder page (or only its form, for htmx)."""
    props = _properties(request, session)
    known = {p["name"] for p in props}
    extra = sorted(_named_properties(state.audience) - known) if state.audience else []
    if state.audience is not None:
        audience_form.with_paths(state.audience)
    campaign_id = state.values["campaign_id"]
    saved = _saved(request, session, campaign_id)
    context = dict(
        status=saved.status if saved else "draft",
        next_run=next_run_text(saved) if saved and saved.status == "running" else None,
        state=state, v=state.values, errors=state.errors, props=props, extra_props=extra,
        count=_count_text(request, session, state, _types(props)), ops=audience_form.OPS,
        no_value=audience_form.NO_VALUE, channels=builder_form.CHANNEL_NAMES,
        channel_fields=builder_form.CHANNEL_FIELDS[state.channel],
        reach_channels=REACH_CHANNELS,
        timezones=[(z, z) for z in builder_form.timezones()],
        weekdays=list(enumerate_str(builder_form.WEEKDAYS)), notice=notice, preview=preview,
        can_save=session.user.can("marketer"), viewer_notice=VIEWER_NOTICE,
        action=f"/campaigns/{campaign_id}/edit" if campaign_id else "/campaigns/new",
        section="campaigns", title="Edit campaign" if campaign_id else "New campaign")
    template = "campaigns/_builder_form.html" if partial else "campaigns/builder.html"
    return render(request, template, status_code=status_code, **context)


def enumerate_str(names: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(str(i), name) for i, name in enumerate(names)]


def _named_properties(tree: audience_form.Node) -> set[str]:
    if tree["kind"] == "group":
        return set().union(*(_named_properties(i) for i in tree["items"]))
    return {tree["property"]} if tree["kind"] == "property" and tree["property"] else set()


def _problems(exc: Exception) -> list[dict[str, Any]]:
    cause = exc.__cause__ or exc.__context__
    return cause.problems if isinstance(cause, TemplateError) else []


def _locked(request: Request, c: service.Campaign) -> Response:
    return render(request, "campaigns/builder_locked.html", status_code=409,
                  section="campaigns", title="Cannot edit", campaign=c)


def _save(request: Request, session: Session, state: BuilderState, action: str,
          campaign_id: str | None = None) -> Response:
    """Validate, then create or update in one service call (all or nothing), and
    publish when asked; a refusal re-renders the form with the errors in place."""
    propel, account = propel_of(request), _account(session)
    fields, errors = builder_form.to_fields(state, _types(_properties(request, session)))
    if not errors and (problem := reference_problem(propel, account, fields)):
        errors = {"form": problem}
    if errors:
        state.errors = errors
        return _page(request, session, state, status_code=422)
    try:
        if campaign_id:
            c = service.get_campaign(propel, account, campaign_id)
            if service.is_between_runs(propel, c):
                fields = _changed_while_running(request, session, c, fields)
            c = service.update_campaign(propel, account, campaign_id, **fields)
        else:
            c = service.create_campaign(propel, account, **fields)
        if action == "publish" and c.status == "draft":
            c = service.publish(propel, account, c.id)
    except service.CampaignError as exc:
        state.errors = builder_form.service_errors(state, str(exc), _problems(exc))
        return _page(request, session, state, status_code=422)
    if action == "publish":
        return RedirectResponse(f"/campaigns/{c.id}", status_code=303)
    return RedirectResponse(f"/campaigns/{c.id}/edit?saved=1", status_code=303)


def _changed_while_running(request: Request, session: Session, c: service.Campaign,
                           fields: dict[str, Any]) -> dict[str, Any]:
    """The fields of a recurring campaign between runs that the form may send: those
    editable then, and any other one only when it differs from what the saved campaign
    reads back as through the form (so the service names it as fixed)."""
    saved, _ = builder_form.to_fields(builder_form.state_from_fields(vars(c), c.id),
                                      _types(_properties(request, session)))
    return {key: value for key, value in fields.items()
            if key in service.BETWEEN_RUNS or value != saved.get(key)}


# ------------------------------------------------------------------ pages

@router.get("/campaigns/new")
def new_campaign(request: Request, prediction: str = "", groups: list[str] = Query([]),
                 channel: str = "inbox", type: str = "campaign",
                 session: Session = Depends(signed_in())) -> Response:
    if type == "journey":  # the Engage dialog without scripts: one form, two editors
        query = urlencode([("prediction", prediction), *[("groups", g) for g in groups],
                           ("channel", channel)])
        return RedirectResponse(f"/journeys/new?{query}", status_code=303)
    if channel not in builder_form.CHANNEL_NAMES:
        channel = "inbox"
    if not prediction:
        state = builder_form.state_from_fields(builder_form.new_fields(channel))
    else:
        found = find_prediction(request, session, prediction)
        problem = group_problem(groups)
        if problem:
            return render_engage(request, session, found, chosen=groups, channel=channel,
                                 error=problem, status_code=422)
        chosen = ", ".join(g for g in GROUPS if g in groups)
        fields = draft_fields(found, groups, channel=channel,
                              name=f"{found.spec.name} — {chosen}")
        if fields["goal"] is None:  # an outcome to prevent: no conversion goal suggested
            fields["goal"] = {"event": "", "where": [], "window_hours": 7 * 24}
        state = builder_form.state_from_fields(fields)
    notice = None if session.user.can("marketer") else VIEWER_NOTICE
    return _page(request, session, state, notice=notice)


@router.post("/campaigns/new")
async def create(request: Request, session: Session = Depends(signed_in("marketer"))
                 ) -> Response:
    form = await request.form()
    state = builder_form.state_from_form(form)
    state.values["campaign_id"] = ""
    return _save(request, session, state, str(form.get("action", "save")))


@router.get("/campaigns/{campaign_id}/edit")
def edit_campaign(request: Request, campaign_id: str, saved: str = "",
                  session: Session = Depends(signed_in())) -> Response:
    c = _editable(request, session, campaign_id)
    if not service.is_editable(propel_of(request), c):
        return _locked(request, c)
    state = builder_form.state_from_fields(vars(c), campaign_id=c.id)
    notice = None
    if saved:
        notice = "Draft saved." if c.status == "draft" else "Changes saved."
    if not session.user.can("marketer"):
        notice = VIEWER_NOTICE
    return _page(request, session, state, notice=notice)


@router.post("/campaigns/{campaign_id}/edit")
async def update(request: Request, campaign_id: str,
                 session: Session = Depends(signed_in("marketer"))) -> Response:
    c = _editable(request, session, campaign_id)
    if not service.is_editable(propel_of(request), c):
        return _locked(request, c)
    form = await request.form()
    state = builder_form.state_from_form(form)
    state.values["campaign_id"] = c.id
    return _save(request, session, state, str(form.get("action", "save")), campaign_id=c.id)


# ------------------------------------------------------------------ htmx endpoints

@router.post("/campaigns/builder/form")
async def rerender(request: Request, session: Session = Depends(signed_in())) -> Response:
    """The form's own buttons: add/remove rows and variants, change the channel."""
    form = await request.form()
    state = builder_form.state_from_form(form)
    builder_form.apply_op(state, str(form.get("op", "")))
    return _page(request, session, state, partial=bool(request.headers.get("hx-request")))


@router.post("/campaigns/builder/count")
async def count(request: Request, session: Session = Depends(signed_in())) -> Response:
    state = builder_form.state_from_form(await request.form())
    text = _count_text(request, session, state, _types(_properties(request, session)))
    return render(request, "campaigns/_builder_count.html", count=text)


def _preview(request: Request, session: Session, state: BuilderState, identity: str
             ) -> dict[str, Any]:
    """Each variant rendered for one user, or the reason it cannot be."""
    identity = identity.replace("\x00", "").strip()
    if not identity:
        return {"error": "Enter a user's identity to preview the message for them."}
    fields, _ = builder_form.to_fields(state, {})
    try:
        validate_content(fields["channel"], fields["content"])
    except TemplateError as exc:
        return {"error": "Fix the content first: " + "; ".join(
            builder_form.problem_text(p) for p in exc.problems)}
    draft = service.Campaign(id="preview", account_id=_account(session),
                             name=fields["name"] or "Preview", status="draft",
                             channel=fields["channel"], audience={"and": []},
                             content=fields["content"])
    try:
        shown = preview_for(propel_of(request), draft, identity)
    except LookupError:
        return {"error": f"No user {identity!r} in this account. Check the identity "
                         "and try again."}
    return {"identity": shown["identity"], "variants": shown["variants"],
            "channel": fields["channel"]}


@router.post("/campaigns/builder/preview")
async def preview(request: Request, session: Session = Depends(signed_in())) -> Response:
    form = await request.form()
    state = builder_form.state_from_form(form)
    shown = _preview(request, session, state, str(form.get("preview_identity", "")))
    if request.headers.get("hx-request"):
        return render(request, "campaigns/_builder_preview.html", preview=shown)
    return _page(request, session, state, preview=shown)
