"""What every ``propel`` command group shares: the consoles, the ``--account`` option,
opening Propel for a command, and failing with a message and an exit code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from propel.core import Propel
from propel.settings import Settings

console = Console()
err = Console(stderr=True)
AccountOpt = Annotated[str | None, typer.Option("--account", "-a", envvar="PROPEL_ACCOUNT",
                                                 help="Account id (or PROPEL_ACCOUNT).")]


def open_propel(migrate: bool | None = None) -> Propel:
    settings = Settings()
    if "PROPEL_WRITE_TIMEOUT_SECONDS" not in os.environ:
        # A command's large writes may queue behind a busy server; waiting is right here,
        # unlike for an HTTP request that a client can retry.
        settings.write_timeout_seconds = 600
    propel = Propel(settings)
    # The embedded default sets itself up; a server database is migrated on purpose.
    if migrate or (migrate is None and propel.settings.is_sqlite):
        propel.migrate()
    return propel


def check_account(propel: Propel, account: str | None) -> str:
    from propel.accounts import get_account

    if not account:
        raise fail("give --account ID (or set PROPEL_ACCOUNT)", 2)
    if get_account(propel.db, account) is None:
        raise fail(f"no account {account!r}; see `propel accounts list`", 2)
    return account


@contextmanager
def account_context(account: str | None) -> Iterator[tuple[Propel, str]]:
    """(propel, account id) for one command; the database is closed when it ends."""
    propel = open_propel()
    try:
        yield propel, check_account(propel, account)
    finally:
        propel.close()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print the error; the caller raises what this returns."""
    err.print(f"[red]error:[/] {message}", highlight=False)
    return typer.Exit(code)
