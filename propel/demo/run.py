"""``propel demo``: a seeded synthetic shop, loaded through the same ingest path as the
APIs, so the rest of Propel (predictions, engagement) has realistic data to work on."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from propel.accounts import create_account, create_api_key
from propel.accounts.tables import accounts
from propel.core import Propel
from propel.demo.synth import SyntheticApp
from propel.ingest.records import EventRecord, IngestItem, ProfileUpdate, key_hash
from propel.ingest.service import ingest_sync
from propel.lake.flush import flush_batches
from propel.lake.reader import snapshot

DEMO_ACCOUNT = "Propel Demo Shop"
DEMO_ADMIN = "admin@demo.propel.example"
BATCH = 5000


def _demo_account(propel: Propel, console: Console) -> str:
    with propel.db.read() as conn:
        found = conn.execute(select(accounts.c.id).where(accounts.c.name == DEMO_ACCOUNT)
                             ).scalar()
    if found:
        return found
    creds = create_account(propel.db, DEMO_ACCOUNT)
    _, token = create_api_key(propel.db, creds.account_id, "demo")
    console.print(f"Created account [bold]{DEMO_ACCOUNT}[/] — keep these, they are shown once:\n"
                  f"  account id  {creds.account_id}\n  API key     {token}\n"
                  f"  write key   {creds.write_key}\n  passcode    {creds.passcode}")
    return creds.account_id


def _profile_items(account_id: str, table: pa.Table) -> list[IngestItem]:
    items = []
    for row in table.to_pylist():
        update = ProfileUpdate(
            identity=row["identity"], email=row["email"], phone=row["phone"],
            timezone=row["timezone"],
            consent={"email": row["email_opt_in"], "push": row["push_opt_in"],
                     "sms": row["sms_opt_in"]},
            properties={"country": row["country"], "platform": row["platform"],
                        "signup_date": row["signup_ts"].date().isoformat()},
            ts=int(row["signup_ts"].timestamp() * 1_000_000),
        )
        items.append(IngestItem(key_hash(account_id, f"demo-profile:{row['identity']}"),
                                profile=update))
    return items


def _event_items(account_id: str, table: pa.Table) -> list[IngestItem]:
    ts = pc.cast(table.column("ts"), pa.int64()).to_pylist()
    cols = [table.column(c).to_pylist() for c in ("message_id", "identity", "name",
                                                  "properties")]
    return [
        IngestItem(key_hash(account_id, mid),
                   event=EventRecord(message_id=mid, identity=ident, name=name, ts=t,
                                     properties=props))
        for mid, ident, name, props, t in zip(*cols, ts, strict=True)
    ]


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def run_demo(propel: Propel, *, users: int, days: int, seed: int, account_id: str | None,
             console: Console) -> str:
    started = time.perf_counter()
    account_id = account_id or _demo_account(propel, console)
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    app = SyntheticApp(seed=seed)
    console.print(f"Generating a shop with {users:,} users and {days} days of history "
                  f"(seed {seed}, up to {end.date()})")
    accepted = duplicates = 0
    with _progress(console) as progress:
        profiles = app.profiles(users, end)
        task = progress.add_task("profiles", total=profiles.num_rows)
        for start in range(0, profiles.num_rows, 1000):
            chunk = profiles.slice(start, 1000)
            result = ingest_sync(propel.db, account_id, _profile_items(account_id, chunk), [],
                                 "demo")
            progress.advance(task, chunk.num_rows)
        task = progress.add_task("events", total=None)
        for table in app.events(users, days, end):
            for start in range(0, table.num_rows, BATCH):
                chunk = table.slice(start, BATCH)
                result = ingest_sync(propel.db, account_id, _event_items(account_id, chunk), [],
                                     "demo")
                accepted += result.accepted
                duplicates += result.duplicates
                progress.advance(task, chunk.num_rows)
            flush_batches(propel.db, propel.lake, max_rows=200_000, lease_wait=60)
    _summary(propel, account_id, console)
    console.print(f"Loaded {accepted:,} new events ({duplicates:,} already there) in "
                  f"{time.perf_counter() - started:.1f}s into account {account_id}.")
    prediction = predict_conversions(propel, account_id, console)
    from propel.demo.engage import engage_demo

    engage_demo(propel, account_id, prediction, app.traits(users), seed, console)
    email, password = demo_admin(propel, account_id)
    console.print(f"Done in {time.perf_counter() - started:.1f}s. Next: [bold]make serve[/] "
                  "(or `propel serve`), open [bold]http://127.0.0.1:8000/[/] and sign in as "
                  f"[bold]{email}[/] with password [bold]{password}[/] (new on every demo "
                  "run). API reference: http://127.0.0.1:8000/docs")
    return account_id


def demo_admin(propel: Propel, account_id: str) -> tuple[str, str]:
    """The demo account's dashboard admin, with a fresh random password."""
    from propel.accounts.users import create_user, set_password

    email, password = DEMO_ADMIN, secrets.token_urlsafe(12)
    try:
        set_password(propel.db, email, password)
    except LookupError:
        create_user(propel.db, account_id, email, password, "admin")
    return email, password


def predict_conversions(propel: Propel, account_id: str, console: Console) -> Any:
    """Train and score *Predict Conversions* on the demo shop and show its groups."""
    from propel import predictions as preds
    from propel.predictions.registry import NotFound
    from propel.predictions.spec import from_template

    try:
        prediction = preds.get(propel, account_id, "Predict Conversions")
    except NotFound:
        prediction = preds.create_prediction(propel, account_id, from_template("conversions"))
    with console.status("training Predict Conversions…") as status:
        trained = preds.train_prediction(propel, prediction,
                                         progress=lambda msg: status.update(msg))
    quality = trained.metrics["quality"]
    console.print(f"Predict Conversions: model v{trained.version.version} "
                  f"({trained.version.kind}), validation AUC {quality['auc']:.3f}, "
                  f"log loss {quality['log_loss']:.3f}; {trained.reason}")
    with console.status("scoring…"):
        scored = preds.score(propel, account_id, prediction.id)
    table = Table("likelihood group", "users", "expected conversion rate (14 days)",
                  title="Predict Conversions")
    for group, size in scored.group_sizes.items():
        table.add_row(group, f"{size:,}", f"{scored.expected_rates[group]:.1%}")
    console.print(table)
    return preds.get(propel, account_id, prediction.id)


def _summary(propel: Propel, account_id: str, console: Console) -> None:
    with snapshot(propel.db, propel.lake, account_id) as (con, _):
        rows = con.execute(
            "SELECT name, count(*) AS n, count(DISTINCT identity) AS users, min(ts), max(ts) "
            "FROM events WHERE kind = 'event' GROUP BY name ORDER BY n DESC").fetchall()
    table = Table("event", "events", "users", "first", "last", title="Demo data")
    for name, n, u, first, last in rows:
        table.add_row(name, f"{n:,}", f"{u:,}", str(first.date()), str(last.date()))
    console.print(table)
