"""``propel channels …``: channel settings per account, and a test send."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from propel.cli_common import AccountOpt, console, err
from propel.cli_common import check_account as _account
from propel.cli_common import open_propel as _propel

app = typer.Typer(help="Channel settings (SMTP, webhook, push, SMS).", no_args_is_help=True)


@app.command("set")
def set_(channel: str, settings: Annotated[str, typer.Argument(help="JSON settings")],
         account: AccountOpt = None) -> None:
    """Save a channel's settings, e.g. propel channels set email '{"host": ...}'."""
    from propel.channels.base import ChannelError
    from propel.channels.registry import set_config

    propel = _propel()
    try:
        saved = set_config(propel.db, _account(propel, account), channel, json.loads(settings))
    except json.JSONDecodeError as exc:
        err.print(f"[red]error:[/] settings are not valid JSON: {exc}")
        raise typer.Exit(2) from None
    except ChannelError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(saved))


@app.command("show")
def show(channel: str, account: AccountOpt = None) -> None:
    """A channel's settings, secrets masked."""
    from propel.channels.base import ChannelError
    from propel.channels.registry import get_config

    propel = _propel()
    try:
        config = get_config(propel.db, _account(propel, account), channel)
    except ChannelError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    console.print_json(json.dumps(config))


@app.command("test")
def test(channel: str, to: str | None = typer.Option(None, help="Address, phone or token."),
         account: AccountOpt = None) -> None:
    """Send a test message through the channel."""
    from propel.channels.base import ChannelError
    from propel.channels.registry import send_test

    propel = _propel()
    try:
        outcome = asyncio.run(send_test(propel, _account(propel, account), channel, to))
    except ChannelError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    if not outcome.delivered:
        err.print(f"[red]not delivered:[/] {outcome.error}")
        raise typer.Exit(1)
    console.print(f"delivered ({outcome.provider_ref or outcome.key})")
