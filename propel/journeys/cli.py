"""``propel journeys …``: terminal adapters over ``propel.journeys``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from propel.cli_common import AccountOpt, console, err
from propel.cli_common import account_context as _context
from propel.cli_common import fail as _fail

app = typer.Typer(help="Journeys: users move through steps over time.", no_args_is_help=True)

FileArg = Annotated[Path, typer.Argument(help="The journey definition, a JSON file "
                                              "(see docs/journeys.md).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]





def _problems(exc: Any) -> typer.Exit:
    """Every problem of a definition, one a line (path: reason); exit code 2."""
    for p in exc.problems:
        err.print(f"{p['path']}: {p['reason']}" if p["path"] else p["reason"],
                  highlight=False, markup=False)
    return typer.Exit(2)


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise _fail(f"cannot read {path}: {exc.strerror or exc}", 2) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(f"{path} is not valid JSON ({exc})", 2) from None


def _run(fn: Any, *args: Any, definition: bool = False, **kwargs: Any) -> Any:
    """Call the API; a refused definition is a usage error (2) with every problem, a
    refused action (publish a live journey, …) an error (1)."""
    from propel.journeys import JourneyError

    try:
        return fn(*args, **kwargs)
    except JourneyError as exc:
        if definition or len(exc.problems) > 1 or exc.problems[0]["path"]:
            raise _problems(exc) from None
        raise _fail(str(exc)) from None
    except LookupError as exc:
        raise _fail(str(exc).strip("'\"")) from None


def _entry_text(entry: dict[str, Any]) -> str:
    kind = entry.get("type", "")
    detail = entry.get("event") or entry.get("prediction") or ""
    groups = entry.get("groups") or entry.get("to") or []
    return " ".join(x for x in (kind, detail, ",".join(groups)) if x)


@app.command("validate")
def validate(file: FileArg) -> None:
    """Check a definition without saving it (exit code 2 with every problem)."""
    from propel.journeys import JourneyError
    from propel.journeys import validate as check

    definition = _read(file)
    try:
        spec = check(definition)
    except JourneyError as exc:
        raise _problems(exc) from None
    console.print(f"valid: {spec['name']} ({len(spec['steps'])} steps)", highlight=False)


@app.command("create")
def create(file: FileArg, account: AccountOpt = None) -> None:
    """Save a draft journey from a JSON definition."""
    from propel import journeys

    definition = _read(file)
    with _context(account) as (propel, account_id):
        j = _run(journeys.create, propel, account_id, definition, definition=True)
    console.print(f"created draft [bold]{j.name}[/] ({j.id})", highlight=False)


@app.command("update")
def update(journey_id: str, file: FileArg, account: AccountOpt = None) -> None:
    """Edit a journey: a draft in place; a live or paused one gets a new version."""
    from propel import journeys

    definition = _read(file)
    with _context(account) as (propel, account_id):
        j = _run(journeys.update, propel, account_id, journey_id, definition,
                 definition=True)
    console.print(f"{j.id}: {j.status}, version {j.version}", highlight=False)


@app.command("list")
def list_(account: AccountOpt = None) -> None:
    from propel import journeys

    table = Table("id", "name", "status", "version", "entry", "entered", "in flight",
                  "converted")
    with _context(account) as (propel, account_id):
        for j in journeys.list_journeys(propel, account_id):
            totals = journeys.journey_stats(propel, account_id, j.id)["totals"]
            table.add_row(j.id, j.name, j.status, str(j.version),
                          _entry_text(j.definition.get("entry") or {}),
                          *(f"{totals[k]:,}" for k in ("entered", "in_flight", "converted")))
    console.print(table)


@app.command("show")
def show(journey_id: str, account: AccountOpt = None) -> None:
    """The journey with its current definition and versions, as JSON."""
    from propel import journeys

    with _context(account) as (propel, account_id):
        j = _run(journeys.get, propel, account_id, journey_id)
    console.print_json(json.dumps(j.as_dict()))


def _lifecycle(action: str, journey_id: str, account: str | None) -> None:
    from propel import journeys

    with _context(account) as (propel, account_id):
        j = _run(getattr(journeys, action), propel, account_id, journey_id)
    console.print(f"{j.id}: {j.status} (version {j.version})", highlight=False)


@app.command("publish")
def publish(journey_id: str, account: AccountOpt = None) -> None:
    """Go live: users start entering."""
    _lifecycle("publish", journey_id, account)


@app.command("pause")
def pause(journey_id: str, account: AccountOpt = None) -> None:
    """Nobody enters and nobody moves on until it is resumed."""
    _lifecycle("pause", journey_id, account)


@app.command("resume")
def resume(journey_id: str, account: AccountOpt = None) -> None:
    _lifecycle("resume", journey_id, account)


@app.command("stop")
def stop(journey_id: str, account: AccountOpt = None) -> None:
    """Everyone inside leaves; messages not sent yet are cancelled."""
    _lifecycle("stop", journey_id, account)


def _points(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:+.1f}"


@app.command("stats")
def stats(journey_id: str, account: AccountOpt = None, as_json: JsonOpt = False,
          version: Annotated[int | None, typer.Option(help="One version only.")] = None
          ) -> None:
    """Per step: entered, waiting, exited, messages; conversions and lift vs holdout."""
    from propel import journeys

    with _context(account) as (propel, account_id):
        result = _run(journeys.journey_stats, propel, account_id, journey_id, version)
    if as_json:
        console.print_json(json.dumps(result))
        return
    table = Table("step", "type", "entered", "waiting", "exited", "sent", "opened",
                  "clicked")
    for s in result["steps"]:
        m = s.get("messages") or {}
        table.add_row(s["id"], s["type"] or "", *(f"{s[k]:,}" for k in (
            "entered", "waiting", "exited")), *(f"{m[k]:,}" if m else "" for k in (
                "sent", "opened", "clicked")))
    console.print(table)
    t, lift = result["totals"], result["lift"]
    console.print(f"entered {t['entered']:,} (held out {t['holdout']:,}), in flight "
                  f"{t['in_flight']:,}, done {t['done']:,}; converted {t['converted']:,}, "
                  f"holdout converted {t['holdout_converted']:,}", highlight=False)
    console.print(f"lift {_points(lift['diff'])} points (95 % CI {_points(lift['low'])} to "
                  f"{_points(lift['high'])})", highlight=False)


@app.command("path")
def path(journey_id: str, identity: str, account: AccountOpt = None,
         as_json: JsonOpt = False) -> None:
    """A user's entries into the journey and the steps each took."""
    from propel import journeys

    with _context(account) as (propel, account_id):
        entries = _run(journeys.user_path, propel, account_id, journey_id, identity)
    if as_json:
        console.print_json(json.dumps({"identity": identity, "entries": entries}))
        return
    if not entries:
        console.print(f"{identity} has not entered this journey", highlight=False)
        return
    for e in entries:
        held = ", held out" if e["holdout"] else ""
        left = f", left: {e['exit_reason']}" if e["exit_reason"] else ""
        console.print(f"entry {e['entry']} (version {e['version']}{held}) at "
                      f"{e['entered_at']}: {e['state']}{left}", highlight=False)
        for s in e["steps"]:
            extra = f" [{s['message_state']}]" if s["message_state"] else ""
            console.print(f"  {s['seq']}. {s['step']} {s['at']}{extra}", highlight=False,
                          markup=False)


@app.command("advance")
def advance(now: Annotated[str | None, typer.Option(
        help="Run as if it were this time (ISO 8601, UTC if no offset).")] = None,
            batch_size: Annotated[int, typer.Option(min=1)] = 2000) -> None:
    """Run the journey engine once: entries, events, due steps (every account)."""
    from propel.cli_common import open_propel as _propel
    from propel.journeys import advance as run

    moment = None
    if now:
        try:
            moment = datetime.fromisoformat(now)
        except ValueError:
            raise _fail(f"--now {now!r} is not an ISO 8601 time, e.g. 2025-01-31T12:00",
                        2) from None
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    propel = _propel()
    try:
        counts = run(propel, now=moment, batch_size=batch_size)
    finally:
        propel.close()
    console.print(", ".join(f"{k} {v:,}" for k, v in counts.items()), highlight=False)
