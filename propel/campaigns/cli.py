"""``propel campaigns …`` and ``propel audiences …``: terminal adapters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from propel.cli_common import AccountOpt, console, err
from propel.cli_common import account_context as _context
from propel.cli_common import fail as _fail

campaigns_app = typer.Typer(help="Campaigns: Who × What × When.", no_args_is_help=True)
audiences_app = typer.Typer(help="Audiences: who matches a rule.", no_args_is_help=True)


def _json_arg(text: str, what: str) -> Any:
    path = Path(text[1:]) if text.startswith("@") else None
    try:
        return json.loads(path.read_text() if path else text)
    except (OSError, json.JSONDecodeError) as exc:
        err.print(f"[red]error:[/] {what} is not valid JSON ({exc}); give JSON or @file")
        raise typer.Exit(2) from None


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from propel import audiences
    from propel.campaigns.service import CampaignError

    try:
        return fn(*args, **kwargs)
    except (CampaignError, audiences.AudienceError, LookupError, ValueError) as exc:
        raise _fail(str(exc)) from None


def _campaign_fields(propel: Any, account_id: str, spec: Any) -> dict[str, Any]:
    """The fields of ``create_campaign`` from JSON, checked as the HTTP API checks them:
    an object, known fields only, the right types, references that hold."""
    from pydantic import ValidationError

    from propel.api.campaigns import CampaignIn, reference_problem

    if not isinstance(spec, dict):
        raise _fail("campaign must be a JSON object (name, channel, audience, content, ...)",
                    2)
    try:
        fields = CampaignIn.model_validate(spec).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'campaign'}: {e['msg']}"
                             for e in exc.errors())
        raise _fail(f"campaign is not valid: {problems}") from None
    problem = reference_problem(propel, account_id, fields)
    if problem:
        raise _fail(problem)
    return fields


def _check_channel(propel: Any, account_id: str, name: str) -> None:
    """Refuse to send through a channel that is not set up, before anything is queued."""
    from propel.channels.base import ChannelError
    from propel.channels.registry import build_channel

    try:
        channel = build_channel(propel, account_id, name)
    except ChannelError as exc:
        raise _fail(str(exc)) from None
    asyncio.run(channel.aclose())


@campaigns_app.command("create")
def create(spec: Annotated[str, typer.Argument(help="Campaign JSON (name, channel, audience, "
                                               "content, schedule, ...) or @file.json")],
           account: AccountOpt = None) -> None:
    """Create a draft campaign from JSON."""
    from propel.campaigns.service import create_campaign

    spec_json = _json_arg(spec, "campaign")
    with _context(account) as (propel, account_id):
        fields = _campaign_fields(propel, account_id, spec_json)
        c = _run(create_campaign, propel, account_id, **fields)
    console.print(f"created draft [bold]{c.name}[/] ({c.id})", highlight=False)


@campaigns_app.command("list")
def list_(account: AccountOpt = None) -> None:
    from propel.campaigns.service import list_campaigns
    from propel.campaigns.stats import headline

    table = Table("id", "name", "channel", "status", "targeted", "sent", "opened", "clicked",
                  "converted")
    with _context(account) as (propel, account_id):
        for c in list_campaigns(propel, account_id):
            h = headline(propel.db, c.id)
            table.add_row(c.id, c.name, c.channel, c.status, *(f"{h[k]:,}" for k in (
                "targeted", "sent", "opened", "clicked", "converted")))
    console.print(table)


@campaigns_app.command("show")
def show(campaign_id: str, account: AccountOpt = None) -> None:
    from propel.campaigns.service import get_campaign

    with _context(account) as (propel, account_id):
        c = _run(get_campaign, propel, account_id, campaign_id)
    console.print_json(json.dumps(c.as_dict()))


@campaigns_app.command("send")
def send(campaign_id: str, account: AccountOpt = None,
         wait: bool = typer.Option(True, help="Deliver here until the run is finished.")
         ) -> None:
    """Publish a draft (or run a due one) and deliver it from this process."""
    from propel.campaigns.delivery import DeliveryEngine
    from propel.campaigns.dispatch import dispatch_campaign, finish_dispatches
    from propel.campaigns.service import get_campaign, publish
    from propel.serving import run_event_loop

    with _context(account) as (propel, account_id):
        c = _run(get_campaign, propel, account_id, campaign_id)
        if c.status in ("completed", "stopped"):
            raise _fail(f"the campaign is {c.status}; duplicate it to send it again")
        _check_channel(propel, account_id, c.channel)
        if c.status == "draft":
            c = _run(publish, propel, account_id, campaign_id)
        if c.schedule["type"] != "now" and not wait:
            console.print(f"scheduled for {c.next_run_at}")
            return
        dispatch_id = dispatch_campaign(propel, account_id, campaign_id)
        if dispatch_id is None:
            console.print(f"nothing due now (next run {c.next_run_at})")
            return
        if wait:
            # this campaign only: others due now are the server's to deliver
            engine = DeliveryEngine(propel, campaign_id=campaign_id)
            total = run_event_loop(engine.drain(), propel.settings)
            finish_dispatches(propel)
            console.print(f"dispatch {dispatch_id}: {total:,} messages handled")
        _print_stats(propel, campaign_id)


@campaigns_app.command("stop")
def stop(campaign_id: str, account: AccountOpt = None) -> None:
    from propel.campaigns.service import stop as stop_campaign

    with _context(account) as (propel, account_id):
        _run(stop_campaign, propel, account_id, campaign_id)
    console.print(f"stopped {campaign_id}")


@campaigns_app.command("stats")
def stats(campaign_id: str, account: AccountOpt = None,
          as_json: bool = typer.Option(False, "--json")) -> None:
    """Funnel, per group and variant, and lift over the holdout."""
    from propel.campaigns.attribution import attribute_conversions
    from propel.campaigns.service import get_campaign
    from propel.campaigns.stats import campaign_stats

    with _context(account) as (propel, account_id):
        _run(get_campaign, propel, account_id, campaign_id)
        attribute_conversions(propel, campaign_id)
        if as_json:
            print(json.dumps(campaign_stats(propel.db, campaign_id)))
            return
        _print_stats(propel, campaign_id)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2%}" if value < 0 or value > 0 else "0.00%"


def print_stats_table(stats: dict[str, Any], title: str) -> None:
    cols = ("targeted", "holdout", "suppressed", "sent", "failed", "in_doubt", "opened",
            "clicked", "converted")
    table = Table("slice", *cols, "conv. rate", "holdout rate", "lift (95% CI)", title=title)

    def row(label: str, s: dict[str, Any]) -> None:
        lift = s.get("lift") or {}
        ci = (f"{_pct(lift.get('diff'))} ({_pct(lift.get('low'))} … {_pct(lift.get('high'))})"
              if lift.get("diff") is not None else "-")
        rate_t, rate_h = lift.get("treated_rate"), lift.get("holdout_rate")
        table.add_row(label, *(f"{s.get(c, 0):,}" for c in cols),
                      "-" if rate_t is None else f"{rate_t:.2%}",
                      "-" if rate_h is None else f"{rate_h:.2%}", ci)

    row("all", {**stats["totals"], "lift": stats.get("lift")})
    for group, s in stats.get("groups", {}).items():
        row(f"group {group}", s)
    for variant, s in stats.get("variants", {}).items():
        row(f"variant {variant}", s)
    console.print(table)


def _print_stats(propel: Any, campaign_id: str) -> None:
    from propel.campaigns.attribution import attribute_conversions
    from propel.campaigns.stats import campaign_stats

    attribute_conversions(propel, campaign_id)
    print_stats_table(campaign_stats(propel.db, campaign_id), campaign_id)


@audiences_app.command("count")
def count(rule: Annotated[str, typer.Argument(help="Audience rule JSON or @file.json")],
          account: AccountOpt = None) -> None:
    from propel import audiences

    parsed = _json_arg(rule, "rule")
    with _context(account) as (propel, account_id):
        print(_run(audiences.count, propel, account_id, parsed))


@audiences_app.command("export")
def export(rule: Annotated[str, typer.Argument(help="Audience rule JSON or @file.json")],
           output: Annotated[Path, typer.Option("--output", "-o")],
           account: AccountOpt = None) -> None:
    """Members as CSV (identity, email, phone, prediction groups)."""
    from propel import audiences

    parsed = _json_arg(rule, "rule")
    with _context(account) as (propel, account_id):
        try:
            n = _run(audiences.export_csv, propel, account_id, parsed, output)
        except OSError as exc:
            raise _fail(f"cannot write {output}: {exc.strerror or exc}") from None
    console.print(f"wrote {n:,} members to {output}", highlight=False)
