"""The ``propel`` command: thin adapters over the folders' Python APIs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from propel.cli_common import AccountOpt, console, err
from propel.cli_common import check_account as _account
from propel.cli_common import open_propel as _propel
from propel.settings import Settings

app = typer.Typer(help="Propel: predictive engagement, self-hosted.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
db_app = typer.Typer(help="Operational database.", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts (tenants).", no_args_is_help=True)
keys_app = typer.Typer(help="Server API keys for /api/v1.", no_args_is_help=True)
users_app = typer.Typer(help="Dashboard users (sign-in, roles).", no_args_is_help=True)
rejections_app = typer.Typer(help="Records refused by ingest.", no_args_is_help=True)
import_app = typer.Typer(help="Bulk import straight into the lake.", no_args_is_help=True)
events_app = typer.Typer(help="Events in the lake.", no_args_is_help=True)
lake_app = typer.Typer(help="Event lake maintenance.", no_args_is_help=True)
for sub, name in ((db_app, "db"), (accounts_app, "accounts"), (keys_app, "keys"),
                  (users_app, "users"),
                  (rejections_app, "rejections"), (import_app, "import"),
                  (events_app, "events"), (lake_app, "lake")):
    app.add_typer(sub, name=name)

from propel.campaigns.cli import audiences_app, campaigns_app  # noqa: E402
from propel.channels.cli import app as channels_app  # noqa: E402
from propel.journeys.cli import app as journeys_app  # noqa: E402
from propel.predictions.cli import app as predictions_app  # noqa: E402

app.add_typer(predictions_app, name="predictions")
app.add_typer(campaigns_app, name="campaigns")
app.add_typer(audiences_app, name="audiences")
app.add_typer(channels_app, name="channels")
app.add_typer(journeys_app, name="journeys")

@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          background: bool = typer.Option(True, help="Run flusher and task consumer here."),
          workers: int = typer.Option(
              1, min=1, max=64,
              help="Server processes sharing the port, so requests use every core; "
                   "background work runs in one of them."),
          ) -> None:
    """Serve the APIs (and, embedded, the background work)."""
    import uvicorn

    from propel.app import create_app
    from propel.observability import configure_logging

    settings = Settings()
    configure_logging(settings.log_format)
    propel = _propel()
    err.print(f"Propel listening on http://{host}:{port}  (dashboard: /, API docs: /docs)"
              + (f"; {workers} worker processes" if workers > 1 else ""))
    from propel.accounts.users import count_users

    if count_users(propel.db) == 0:
        err.print("No dashboard users yet: create one with `propel users create "
                  "you@example.com --role admin --account ID` (`propel accounts list` "
                  "shows the ids), then sign in.")
    if workers > 1:
        from propel.serving import serve_workers

        propel.close()  # migrated; each worker opens its own
        serve_workers(host, port, workers, background=background)
        return
    application = create_app(propel=propel, background=background)
    from propel.serving import settle_heap

    settle_heap()
    uvicorn.run(application, host=host, port=port, log_config=None, access_log=False)


@app.command()
def worker(threads: int = 4) -> None:
    """Run background tasks from the Redis queue (with PROPEL_REDIS_URL), and flush."""
    from propel.jobs.tasks import FlusherThread, create_huey, ensure_default_schedules
    from propel.observability import configure_logging

    settings = Settings()
    configure_logging(settings.log_format)
    if not settings.redis_url:
        err.print("[red]error:[/] set PROPEL_REDIS_URL; without it `propel serve` runs tasks")
        raise typer.Exit(2)
    propel = _propel()
    ensure_default_schedules(propel)
    huey = create_huey(settings)
    huey.propel_bind(propel)
    from propel.app import JOURNEY_INTERVAL
    from propel.campaigns.delivery import DeliveryThread
    from propel.journeys.worker import JourneyThread

    loops = [FlusherThread(propel), DeliveryThread(propel),
             JourneyThread(propel, interval=JOURNEY_INTERVAL)]
    for loop in loops:
        loop.start()
    from propel.serving import settle_heap

    settle_heap()
    consumer = huey.create_consumer(workers=threads, worker_type="thread", periodic=True)
    consumer.run()
    for loop in loops:
        loop.stop()


@app.command("settings")
def show_settings() -> None:
    """Every setting, its current value and what it does."""
    settings = Settings()
    table = Table("variable", "value", "meaning")
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if name == "secret_key" and value:
            value = "(set)"
        table.add_row(f"PROPEL_{name.upper()}", str(value), field.description or "")
    console.print(table)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations."""
    propel = _propel(migrate=True)
    from propel.db.migrate import current

    console.print(f"database at revision {current(propel.db.engine)}")


@accounts_app.command("create")
def accounts_create(name: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Create an account; prints its id, CleverTap passcode and Segment write key."""
    from propel.accounts import create_account

    creds = create_account(_propel().db, name)
    if as_json:
        print(json.dumps({"account_id": creds.account_id, "passcode": creds.passcode,
                          "write_key": creds.write_key}))
        return
    console.print(f"account_id  {creds.account_id}\npasscode    {creds.passcode}\n"
                  f"write_key   {creds.write_key}\n[dim]Keep these: only digests are stored.[/]")


@accounts_app.command("rotate-write-key")
def accounts_rotate_write_key(account: AccountOpt = None,
                              as_json: bool = typer.Option(False, "--json")) -> None:
    """Replace the account's Segment write key (lost or leaked). The old key stops
    working within a minute; apps and sources must switch to the new one."""
    from propel.accounts import rotate_write_key

    propel = _propel()
    _print_secret("write_key", rotate_write_key(propel.db, _account(propel, account)), as_json)


@accounts_app.command("rotate-passcode")
def accounts_rotate_passcode(account: AccountOpt = None,
                             as_json: bool = typer.Option(False, "--json")) -> None:
    """Replace the account's CleverTap passcode (lost or leaked); the old one stops
    working at once."""
    from propel.accounts import rotate_passcode

    propel = _propel()
    _print_secret("passcode", rotate_passcode(propel.db, _account(propel, account)), as_json)


def _print_secret(name: str, value: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({name: value}))
    else:
        console.print(f"{name}  {value}\n[dim]Shown once: only its digest is stored.[/]")


@accounts_app.command("list")
def accounts_list() -> None:
    from propel.accounts import list_accounts

    table = Table("id", "name", "created")
    for acc in list_accounts(_propel().db):
        table.add_row(acc.id, acc.name, acc.created_at.isoformat(timespec="seconds"))
    console.print(table)


@keys_app.command("create")
def keys_create(account: AccountOpt = None, name: str = "default",
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Create a server API key (shown once)."""
    from propel.accounts import create_api_key

    propel = _propel()
    key_id, token = create_api_key(propel.db, _account(propel, account), name)
    if as_json:
        print(json.dumps({"key_id": key_id, "api_key": token}))
    else:
        console.print(f"key_id   {key_id}\napi_key  {token}\n[dim]Shown once.[/]")


@keys_app.command("revoke")
def keys_revoke(key_id: str, account: AccountOpt = None) -> None:
    from propel.accounts import revoke_api_key

    propel = _propel()
    if not revoke_api_key(propel.db, _account(propel, account), key_id):
        err.print(f"[red]error:[/] no active key {key_id!r} in this account")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


@keys_app.command("list")
def keys_list(account: AccountOpt = None) -> None:
    from propel.accounts import list_api_keys

    propel = _propel()
    table = Table("key_id", "name", "created", "revoked")
    for key in list_api_keys(propel.db, _account(propel, account)):
        table.add_row(key.id, key.name, key.created_at.isoformat(timespec="seconds"),
                      key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "")
    console.print(table)


@users_app.command("create")
def users_create(
    email: str,
    role: str = typer.Option("marketer", help="viewer, marketer or admin."),
    account: AccountOpt = None,
    password_stdin: bool = typer.Option(False, "--password-stdin",
                                        help="Read the password from standard input."),
) -> None:
    """Create a dashboard user; asks for the password (or reads it from stdin)."""
    from propel.accounts.users import create_user

    propel = _propel()
    account_id = _account(propel, account)
    password = _read_password(password_stdin)
    try:
        user = create_user(propel.db, account_id, email, password, role)
    except (ValueError, LookupError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"created {user.role} {user.email} in account {account_id}")


@users_app.command("set-password")
def users_set_password(
    email: str,
    password_stdin: bool = typer.Option(False, "--password-stdin",
                                        help="Read the password from standard input."),
) -> None:
    """Set a dashboard user's password; their open sessions end."""
    from propel.accounts.users import set_password

    propel = _propel()
    password = _read_password(password_stdin)
    try:
        set_password(propel.db, email, password)
    except (ValueError, LookupError) as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"password set for {email}")


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("list")
def users_list(account: AccountOpt = None) -> None:
    from propel.accounts.users import list_users

    propel = _propel()
    table = Table("email", "role", "created")
    for user in list_users(propel.db, _account(propel, account)):
        table.add_row(user.email, user.role, user.created_at.isoformat(timespec="seconds"))
    console.print(table)


@rejections_app.command("list")
def rejections_list(account: AccountOpt = None, source: str | None = None, limit: int = 50,
                    as_json: bool = typer.Option(False, "--json")) -> None:
    """Rejected records, newest first, with the field and reason."""
    from propel.ingest.service import list_rejections

    propel = _propel()
    rows = list_rejections(propel.db, _account(propel, account), source=source, limit=limit)
    if as_json:
        print(json.dumps(rows, default=str))
        return
    table = Table("id", "received", "source", "field", "reason", "record")
    for r in rows:
        table.add_row(str(r["id"]), r["received_at"][:19], r["source"], r["field"], r["reason"],
                      json.dumps(r["record"], default=str)[:60])
    console.print(table)


@events_app.command("count")
def events_count(account: AccountOpt = None,
                 event: str | None = typer.Option(None, help="Only this event name.")) -> None:
    """How many events the account holds (lake + not yet flushed)."""
    from propel.lake.reader import count_events

    propel = _propel()
    print(count_events(propel.db, propel.lake, _account(propel, account), event))


@lake_app.command("flush")
def lake_flush() -> None:
    """Flush all pending recent events to the lake now."""
    from propel.lake.flush import flush_batches

    propel = _propel()
    result = flush_batches(propel.db, propel.lake, max_rows=propel.settings.flush_rows,
                           lease_wait=60)
    console.print(f"flushed {result.rows} rows in {result.batches} batches "
                  f"({result.recovered} recovered)")


@lake_app.command("compact")
def lake_compact() -> None:
    """Rewrite small lake files into large ones."""
    from propel.jobs.tasks import TASKS

    console.print(f"compacted; {TASKS['lake.compact'](_propel())} files replaced")


@lake_app.command("vacuum")
def lake_vacuum() -> None:
    """Delete lake files unreferenced for longer than the retention."""
    from propel.jobs.tasks import TASKS

    console.print(f"vacuumed {TASKS['lake.vacuum'](_propel())} files")


def _parse_maps(maps: list[str]) -> dict[str, str]:
    mapping = {}
    for item in maps:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            err.print(f"[red]error:[/] --map takes FIELD=COLUMN, got {item!r}")
            raise typer.Exit(2)
        mapping[field.strip()] = column.strip()
    return mapping


MapOpt = Annotated[list[str] | None, typer.Option("--map", help="FIELD=COLUMN; FIELD is "
                                                  "identity, ts, name, message_id or a property")]


def _run_import(kind: str, file: Path, account: str | None, maps: list[str] | None,
                event_name: str | None, fmt: str | None, ts_format: str | None,
                delimiter: str | None, header: bool, reject_file: Path | None) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from propel.ingest.bulk import import_file
    from propel.ingest.bulk_spec import ImportError_, ImportSpec

    propel = _propel()
    spec = ImportSpec(kind=kind, path=file, mapping=_parse_maps(maps or []),
                      event_name=event_name, format=fmt, ts_format=ts_format,
                      delimiter=delimiter, header=header,
                      reject_path=reject_file or file.with_suffix(file.suffix + ".rejects.csv"))
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed:,} / {task.total:,} rows"), TimeElapsedColumn(),
                  console=err, transient=False) as progress:
        task = progress.add_task(f"importing {file.name}", total=0)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            summary = import_file(propel, _account(propel, account), spec, on_progress)
        except ImportError_ as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
    console.print(summary.describe())


@import_app.command("events")
def import_events(
    file: Path, account: AccountOpt = None, map_: MapOpt = None,
    event_name: str | None = typer.Option(None, help="Constant event name for every row."),
    fmt: str | None = typer.Option(None, "--format", help="csv, jsonl or parquet "
                                   "(default: from the file name)"),
    ts_format: str | None = typer.Option(None, help="strptime format of ts, e.g. %Y%m%d; "
                                         "default: ISO dates/timestamps or epoch seconds"),
    delimiter: str | None = typer.Option(None, help="CSV delimiter; 'whitespace' for runs "
                                         "of spaces"),
    header: bool = typer.Option(True, help="CSV has a header row (else columns are "
                                "column0, column1, ...)"),
    reject_file: Path | None = typer.Option(None, help="Where rejected rows go "
                                            "(default FILE.rejects.csv)"),
) -> None:
    """Import events from CSV, JSON lines or Parquet into the lake."""
    _run_import("events", file, account, map_, event_name, fmt, ts_format, delimiter, header,
                reject_file)


@import_app.command("profiles")
def import_profiles(
    file: Path, account: AccountOpt = None, map_: MapOpt = None,
    fmt: str | None = typer.Option(None, "--format", help="csv, jsonl or parquet"),
    delimiter: str | None = typer.Option(None, help="CSV delimiter"),
    header: bool = typer.Option(True, help="CSV has a header row"),
    reject_file: Path | None = typer.Option(None, help="Where rejected rows go"),
) -> None:
    """Import profiles (identity + typed fields + properties)."""
    _run_import("profiles", file, account, map_, None, fmt, None, delimiter, header,
                reject_file)


@app.command()
def demo(users: int = typer.Option(5000, help="Synthetic users."),
         days: int = typer.Option(90, help="Days of history."),
         seed: int = typer.Option(7, help="Random seed (same seed, same data)."),
         account: AccountOpt = None) -> None:
    """Generate a realistic synthetic app and load it through the ingest path."""
    from propel.demo.run import run_demo

    run_demo(_propel(), users=users, days=days, seed=seed, account_id=account, console=console)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
