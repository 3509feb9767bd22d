"""``propel predictions …``: terminal adapters over ``propel.predictions``."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from propel.cli_common import AccountOpt, console, err
from propel.cli_common import check_account as _account
from propel.cli_common import open_propel as _propel

app = typer.Typer(help="Predict the likelihood of a goal event; High / Medium / Low groups.",
                  no_args_is_help=True)

AsOfOpt = Annotated[str | None, typer.Option("--as-of", help="YYYY-MM-DD: as if at the start "
                                             "of that day (UTC)")]


def _context(account: str | None) -> tuple[Any, str]:

    propel = _propel()
    return propel, _account(propel, account)


def _as_of(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        err.print(f"[red]error:[/] --as-of takes a date as YYYY-MM-DD, not {text!r}")
        raise typer.Exit(2) from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _fail(exc: Exception) -> None:
    err.print(f"[red]error:[/] {exc}")
    raise typer.Exit(1)


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from propel import predictions as preds
    from propel.predictions.registry import NotFound
    from propel.predictions.spec import SpecError

    try:
        return fn(*args, **kwargs)
    except (preds.NotEnoughData, preds.NotTrained, preds.AlreadyRunning, NotFound, SpecError,
            ValueError) as exc:
        _fail(exc)


# (high, medium) when only the mode is given
GROUP_DEFAULTS = {"percentile": (0.2, 0.3), "probability": (0.5, 0.2)}


@app.command("create")
def create(
    name: str, account: AccountOpt = None,
    template: str | None = typer.Option(None, help="conversions, churn, retention, uninstalls"),
    goal_event: str | None = typer.Option(None, help="Event that reaches the goal."),
    where: list[str] | None = typer.Option(None, help="Goal condition, e.g. 'amount > 0' "
                                           "(repeatable)."),
    window_days: int | None = typer.Option(None, help="Prediction window in days."),
    absent: bool = typer.Option(False, help="The goal is NOT doing the event (churn)."),
    polarity: str | None = typer.Option(None, help="desired or undesired"),
    active_within_days: int | None = typer.Option(None, help="Score only users active "
                                                  "in the last N days."),
    new_within_days: int | None = typer.Option(None, help="Score only users first seen "
                                               "in the last N days (new users)."),
    exclude_event: list[str] | None = typer.Option(None, help="Leave out users who did "
                                                   "this event, e.g. an uninstall "
                                                   "(repeatable)."),
    groups_mode: str = typer.Option("percentile", help="percentile: --high and --medium "
                                    "are shares of users; probability: they are "
                                    "likelihood thresholds."),
    high: float | None = typer.Option(None, help="High: top share of users (default 0.2), "
                                      "or from this likelihood (default 0.5)."),
    medium: float | None = typer.Option(None, help="Medium: next share (default 0.3), or "
                                        "from this likelihood (default 0.2)."),
    score_every_days: int | None = typer.Option(None, help="Scoring cadence (default 1)."),
    retrain_every_days: int | None = typer.Option(None, help="Retraining cadence "
                                                  "(default 15)."),
) -> None:
    """Create a prediction (from a template, or a custom goal + window)."""
    from propel import predictions as preds
    from propel.predictions.spec import (
        Audience,
        Groups,
        PredictionSpec,
        from_template,
        parse_where,
    )

    propel, account_id = _context(account)
    fields: dict[str, Any] = {"name": name, "goal_event": goal_event,
                              "window_days": window_days, "polarity": polarity,
                              "score_every_days": score_every_days,
                              "retrain_every_days": retrain_every_days}
    if absent:
        fields["goal_absent"] = True

    def build() -> PredictionSpec:
        if where:
            fields["goal_where"] = tuple(parse_where(w) for w in where)
        if active_within_days or new_within_days or exclude_event:
            fields["audience"] = Audience(active_within_days=active_within_days,
                                          new_within_days=new_within_days,
                                          exclude_events=tuple(exclude_event or ()))
        if high is not None or medium is not None or groups_mode != "percentile":
            default_high, default_medium = GROUP_DEFAULTS.get(groups_mode, (0.2, 0.3))
            fields["groups"] = Groups(mode=groups_mode,
                                      high=high if high is not None else default_high,
                                      medium=medium if medium is not None else default_medium)
        if template:
            return from_template(template, **fields)
        if not goal_event or not window_days:
            raise ValueError("give --template, or --goal-event and --window-days")
        return PredictionSpec(**{k: v for k, v in fields.items() if v is not None})

    spec = _run(build)
    prediction = _run(preds.create_prediction, propel, account_id, spec)
    console.print(f"created [bold]{spec.name}[/] ({prediction.id}): {spec.goal_text} within "
                  f"{spec.window_days} days, {spec.polarity}; scores every "
                  f"{spec.score_every_days} day(s), retrains every "
                  f"{spec.retrain_every_days} days")


@app.command("list")
def list_(account: AccountOpt = None) -> None:
    from propel.predictions import registry, scoring

    propel, account_id = _context(account)
    table = Table("name", "id", "goal", "window", "status", "version", "last scored",
                  "High / Medium / Low")
    for p in registry.list_all(propel.db, account_id):
        sizes = scoring.group_sizes(propel, p.id)
        table.add_row(p.spec.name, p.id, p.spec.goal_text, f"{p.spec.window_days} d",
                      p.status, str(p.current_version or "-"),
                      p.last_scored_at.strftime("%Y-%m-%d %H:%M") if p.last_scored_at else "-",
                      " / ".join(f"{sizes[g]:,}" for g in ("High", "Medium", "Low")))
    console.print(table)


@app.command("train")
def train(name: str, account: AccountOpt = None, as_of: AsOfOpt = None,
          seed: int = typer.Option(7, help="Random seed (same data + seed, same model).")
          ) -> None:
    """Train a new version and apply the promotion rule."""
    from propel import predictions as preds

    propel, account_id = _context(account)
    with console.status("training…") as status:
        result = _run(preds.train, propel, account_id, name, as_of=_as_of(as_of), seed=seed,
                      progress=lambda msg: status.update(msg))
    v = result.version
    console.print(f"version {v.version} ({v.kind}) — {result.reason}")
    _quality(v.metrics)


@app.command("score")
def score(name: str, account: AccountOpt = None, as_of: AsOfOpt = None) -> None:
    """Score every user of the audience with the current model."""
    from propel import predictions as preds

    propel, account_id = _context(account)
    with console.status("scoring…"):
        result = _run(preds.score, propel, account_id, name, as_of=_as_of(as_of))
    table = Table("group", "users", "expected rate", title=f"{name} (model v"
                  f"{result.model_version}, {result.rows:,} users, {result.changed:,} "
                  "changed group)")
    for group, size in result.group_sizes.items():
        table.add_row(group, f"{size:,}", f"{result.expected_rates[group]:.1%}")
    console.print(table)


def _quality(metrics: dict[str, Any]) -> None:
    q = metrics.get("quality") or {}
    table = Table("model", "AUC", "PR-AUC", "log loss", "Brier", title="Validation (newest "
                  f"snapshot, {metrics['validation']['users']:,} users, "
                  f"{metrics['validation']['positives']:,} reached the goal)")
    for kind, rep in metrics.get("candidates", {}).items():
        if "error" in rep:
            table.add_row(kind, "-", "-", "-", "-")
            continue
        mark = " ✓" if kind == metrics.get("chosen") else ""
        table.add_row(kind + mark, _f(rep["auc"]), _f(rep["pr_auc"]), _f(rep["log_loss"]),
                      _f(rep["brier"]))
    console.print(table)
    groups = Table("group", "users", "expected", "realised", title="Groups on validation")
    for group, row in metrics.get("groups_backtest", {}).items():
        groups.add_row(group, f"{row['size']:,}", _pct(row["expected_rate"]),
                       _pct(row["realised_rate"]))
    console.print(groups)
    calib = Table("bin", "users", "predicted", "observed", title="Calibration")
    for row in q.get("calibration", []):
        calib.add_row(str(row["bin"]), f"{row['count']:,}", _pct(row["mean_predicted"]),
                      _pct(row["observed_rate"]))
    console.print(calib)
    gains = Table("decile", "users", "rate", "lift", "cum. share of goal", title="Gains")
    for row in q.get("gains", []):
        gains.add_row(str(row["decile"]), f"{row['count']:,}", _pct(row["rate"]),
                      _f(row["lift"], 2), _pct(row["cumulative_share_of_positives"]))
    console.print(gains)
    sizes = Table("top share", "users", "precision", "recall", "lift",
                  title="Audience size vs precision (targeting the top users by score)")
    for row in q.get("size_vs_precision", []):
        sizes.add_row(f"{row['share']:.0%}", f"{row['users']:,}", _pct(row["precision"]),
                      _pct(row["recall"]), _f(row["lift"], 2))
    console.print(sizes)
    drivers = Table("feature", "importance", title="Top drivers")
    for row in metrics.get("drivers", [])[:10]:
        drivers.add_row(row["feature"], f"{row['importance']:.1%}")
    console.print(drivers)


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


@app.command("show")
def show(name: str, account: AccountOpt = None) -> None:
    """The prediction, its current model's quality report and its versions."""
    from propel import predictions as preds
    from propel.predictions import registry, scoring

    propel, account_id = _context(account)
    p = _run(preds.get, propel, account_id, name)
    console.print(f"[bold]{p.spec.name}[/] ({p.id}) — {p.spec.goal_text} within "
                  f"{p.spec.window_days} days, {p.spec.polarity}; status {p.status}")
    sizes = scoring.group_sizes(propel, p.id)
    console.print("groups: " + ", ".join(f"{g} {n:,}" for g, n in sizes.items()))
    versions = registry.list_versions(propel.db, p.id)
    table = Table("version", "kind", "trained", "as of", "promoted", "reason")
    for v in versions:
        table.add_row(str(v.version), v.kind, v.trained_at.strftime("%Y-%m-%d %H:%M"),
                      v.as_of.date().isoformat(), "yes" if v.promoted else "no", v.reason)
    console.print(table)
    current = next((v for v in versions if v.version == p.current_version), None)
    if current is None:
        console.print("no model yet: run `propel predictions train`")
        return
    _quality(current.metrics)


@app.command("backtest")
def backtest(name: str, as_of: Annotated[str, typer.Option("--as-of", help="YYYY-MM-DD")],
             account: AccountOpt = None, as_json: bool = typer.Option(False, "--json")
             ) -> None:
    """Score as of a past date and compare with what happened in the window after it."""
    from propel import predictions as preds

    propel, account_id = _context(account)
    report = _run(preds.backtest, propel, account_id, name, _as_of(as_of))
    if as_json:
        print(json.dumps(report))
        return
    console.print(f"{report['prediction']} as of {report['as_of']} (model v"
                  f"{report['model_version']}): AUC {_f(report['auc'])}, PR-AUC "
                  f"{_f(report['pr_auc'])}, log loss {_f(report['log_loss'])}, Brier "
                  f"{_f(report['brier'])}")
    if report["in_sample"]:
        console.print(f"[yellow]in sample: the model learnt from outcomes up to "
                      f"{report['model_saw_outcomes_until']}, this window's included, so "
                      "these figures flatter it; backtest a later date[/]")
    if not report["window_complete"]:
        console.print("[yellow]the window after this date is not over yet: realised rates "
                      "are partial[/]")
    table = Table("group", "users", "expected", "realised")
    for group, row in report["groups"].items():
        table.add_row(group, f"{row['size']:,}", _pct(row["expected_rate"]),
                      _pct(row["realised_rate"]))
    console.print(table)


@app.command("export")
def export(name: str, output: Annotated[Path, typer.Option("--output", "-o")],
           fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
           account: AccountOpt = None) -> None:
    """Current scores: identity, probability, score, group, model_version, scored_at."""
    from propel import predictions as preds

    propel, account_id = _context(account)
    rows = _run(preds.export_scores, propel, account_id, name, fmt, output)
    console.print(f"wrote {rows:,} rows to {output}")
