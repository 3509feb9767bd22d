"""Predictions: speed at scale and model quality across data sets.

    .venv/bin/python benchmarks/bench_predictions.py speed              # 1M users, 90 days
    .venv/bin/python benchmarks/bench_predictions.py speed --users 100000,300000,1000000
    .venv/bin/python benchmarks/bench_predictions.py quality            # the quality table
    .venv/bin/python benchmarks/bench_predictions.py quality --sets demo-5k,cdnow-28

``speed``: per size, a fresh data dir with a SyntheticApp shop (events written to
Parquet in time order and loaded with bulk import, profile-change records written to
the lake as ingest stores them), then *Predict Conversions* trained and scored as of the
data's end, each phase in a child process so its peak memory (VmHWM) is its own; prints
the time of each part and checks the targets at the largest size (scoring <= 60 s,
training <= 180 s, peak <= 4 GiB). ``--data DIR`` keeps the data dirs for re-runs.

``quality``: per data set (``demo-5k``, ``syn-<N>k-s<seed>[-variant]``,
``cdnow-<window>[-all]``, see ``data_set``), the training pipeline's own steps, then
AUC / log loss of LightGBM, the blend, logistic regression and BG/NBD on the validation users and
on a forward window the pipeline never saw, as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import host
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
CDNOW = ROOT / "tests" / "data" / "CDNOW_sample.txt"
END = datetime(2025, 6, 1, tzinfo=UTC)

# --- loading data --------------------------------------------------------------------------

_FLAT = """
SELECT message_id, identity, name, ts,
  CASE WHEN name = 'Charged'
       THEN TRY_CAST(json_extract_string(properties, '$.amount') AS DOUBLE) END AS amount,
  CASE WHEN name = 'Charged'
       THEN TRY_CAST(json_extract_string(properties, '$.items') AS INTEGER) END AS items,
  CASE WHEN name = 'Charged' THEN 'USD' END AS currency,
  CASE WHEN name = 'App Launched'
       THEN json_extract_string(properties, '$.source') END AS source,
  CASE WHEN name = 'Notification Clicked'
       THEN json_extract_string(properties, '$.campaign') END AS campaign
FROM chunk
"""
EVENT_MAP = {"message_id": "message_id", "identity": "identity", "name": "name", "ts": "ts",
             "amount": "amount", "items": "items", "currency": "currency", "source": "source",
             "campaign": "campaign"}


def write_events(app: Any, users: int, days: int, end: datetime, path: Path) -> int:
    """The synthetic app's events as one Parquet file in time order (as events arrive),
    so each import chunk lands in few daily partitions; properties as flat columns (the
    importer builds the JSON again)."""
    raw = path.with_suffix(".unsorted.parquet")
    con = duckdb.connect(config={"memory_limit": "3GB", "threads": 2})
    writer = None
    rows = 0
    try:
        for chunk in app.events(users, days, end, chunk_users=50_000):
            con.register("chunk", chunk)
            flat = con.sql(_FLAT).to_arrow_table()
            con.unregister("chunk")
            writer = writer or pq.ParquetWriter(raw, flat.schema, compression="snappy")
            writer.write_table(flat, row_group_size=1 << 20)
            rows += flat.num_rows
        writer.close()
        writer = None
        con.execute(f"SET temp_directory = '{path.parent / 'duckdb-tmp'}'")
        con.execute(f"COPY (SELECT * FROM read_parquet('{raw}') ORDER BY ts) TO '{path}' "
                    "(FORMAT parquet, COMPRESSION snappy, ROW_GROUP_SIZE 1048576)")
    finally:
        if writer is not None:
            writer.close()
        con.close()
        raw.unlink(missing_ok=True)
    return rows


def write_profiles(propel: Any, account_id: str, app: Any, users: int, end: datetime) -> int:
    """Profile-change records straight into the lake, as the ingest path stores them
    (``kind = 'profile'``, ``ts`` = signup time, as ``propel demo`` sends them), so
    point-in-time features see each profile from the user's signup on. Ingest applies
    profiles one at a time (about 600 a second here), far too slow for a million users;
    predictions only read the lake."""
    from deltalake import write_deltalake

    from propel.lake.store import PARTITIONS, SCHEMA
    from propel.profiles import PROFILE_CHANGE

    t = app.profiles(users, end)
    n = t.num_rows

    def field(name: str, value: Any, comma: bool = True) -> Any:
        return pc.binary_join_element_wise(f'"{name}":', value, "," if comma else "", "")

    def text(col: str) -> Any:
        return pc.binary_join_element_wise('"', t[col], '"', "")

    def flag(col: str) -> Any:
        return pc.if_else(t[col], "true", "false")

    empty = pa.scalar("", pa.string())
    props = pc.binary_join_element_wise(
        "{",
        pc.if_else(pc.is_valid(t["email"]), field("email", text("email")), empty),
        pc.if_else(pc.is_valid(t["phone"]), field("phone", text("phone")), empty),
        field("timezone", text("timezone")),
        field("consent", pc.binary_join_element_wise(
            '{"email":', flag("email_opt_in"), ',"push":', flag("push_opt_in"), ',"sms":',
            flag("sms_opt_in"), "}", "")),
        field("country", text("country")), field("platform", text("platform")),
        field("signup_date", pc.binary_join_element_wise(
            '"', pc.strftime(t["signup_ts"], format="%Y-%m-%d"), '"', ""), comma=False),
        "}", "")
    table = pa.table({
        "account_id": pa.repeat(pa.scalar(account_id), n),
        "event_date": pc.cast(t["signup_ts"], pa.date32()),
        "kind": pa.repeat(pa.scalar("profile"), n),
        "message_id": pc.binary_join_element_wise("p:bench:", t["identity"], ""),
        "identity": t["identity"],
        "name": pa.repeat(pa.scalar(PROFILE_CHANGE), n),
        "ts": t["signup_ts"],
        "received_at": pa.repeat(pa.scalar(datetime.now(UTC), SCHEMA.field("ts").type), n),
        "source": pa.repeat(pa.scalar("bench"), n),
        "properties": props,
    }).cast(SCHEMA)
    write_deltalake(propel.lake.events_uri, table, mode="append", partition_by=PARTITIONS)
    return n


def import_events(propel: Any, account_id: str, path: Path, mapping: dict[str, str],
                  **options: Any) -> Any:
    from propel.ingest.bulk import import_file
    from propel.ingest.bulk_spec import ImportSpec

    spec = ImportSpec(kind="events", path=path, mapping=mapping,
                      reject_path=path.with_suffix(".rejects.csv"), **options)
    summary = import_file(propel, account_id, spec)
    if summary.rejected:
        raise RuntimeError(f"import rejected rows: {summary.describe()}")
    return summary


def open_propel(data_dir: Path) -> Any:
    from propel.core import Propel
    from propel.settings import Settings

    # scoring replaces all of a prediction's scores in one write, which takes longer than
    # the default 10 s write timeout for a million users (see docs/predictions.md)
    propel = Propel(Settings(data_dir=data_dir, secret_key="bench", log_format="text",
                             sqlite_synchronous="NORMAL", write_timeout_seconds=900))
    propel.migrate()
    return propel


def account_of(propel: Any, name: str = "Bench") -> str:
    from sqlalchemy import select

    from propel.accounts import create_account
    from propel.accounts.tables import accounts

    with propel.db.read() as conn:
        found = conn.execute(select(accounts.c.id).where(accounts.c.name == name)).scalar()
    return found or create_account(propel.db, name).account_id


def load_synthetic(data_dir: Path, app: Any, users: int, days: int = 90,
                   end: datetime = END, profiles: bool = True) -> tuple[Any, str, dict]:
    """A fresh data dir holding the app's profiles and events (or the one already there,
    marked done by ``loaded.json``)."""
    marker = data_dir / "loaded.json"
    propel = open_propel(data_dir)
    account = account_of(propel)
    if marker.exists():
        return propel, account, json.loads(marker.read_text())
    stats: dict[str, Any] = {}
    started = time.perf_counter()
    if profiles:
        stats["profiles"] = write_profiles(propel, account, app, users, end)
    stats["profile_seconds"] = time.perf_counter() - started
    path = data_dir / "events.parquet"
    started = time.perf_counter()
    stats["events"] = write_events(app, users, days, end, path)
    stats["generate_seconds"] = time.perf_counter() - started
    started = time.perf_counter()
    import_events(propel, account, path, EVENT_MAP)
    stats["import_seconds"] = time.perf_counter() - started
    path.unlink()
    marker.write_text(json.dumps(stats))
    return propel, account, stats


def load_cdnow(data_dir: Path) -> tuple[Any, str, dict]:
    marker = data_dir / "loaded.json"
    propel = open_propel(data_dir)
    account = account_of(propel)
    if not marker.exists():
        import_events(propel, account, CDNOW,
                      {"identity": "column0", "ts": "column2", "cds": "column3",
                       "amount": "column4"},
                      event_name="Charged", delimiter="whitespace", header=False,
                      ts_format="%Y%m%d")
        marker.write_text(json.dumps({"events": 6919}))
    return propel, account, json.loads(marker.read_text())


# --- quality -------------------------------------------------------------------------------

# SyntheticApp parameters per variant: different shops, not tuned to anything.
APP_VARIANTS: dict[str, dict[str, float]] = {
    "": {},
    "heavy": {"activity_median": 0.25, "propensity_median": 0.03,
              "lifetime_median_days": 120.0},
    "sparse": {"activity_median": 0.03, "propensity_median": 0.10, "activity_sigma": 1.3},
    "churny": {"lifetime_median_days": 60.0, "new_user_share": 0.4, "propensity_sigma": 1.4},
    "flat": {"activity_sigma": 0.5, "propensity_sigma": 0.4},
}
QUALITY_SETS = ("demo-5k", "syn-3k-s1", "syn-3k-s2", "syn-3k-s3", "syn-10k-s1", "syn-10k-s2",
                "syn-30k-s1", "syn-10k-s3-heavy", "syn-10k-s4-sparse", "syn-10k-s5-churny",
                "syn-10k-s6-flat", "cdnow-28", "cdnow-60", "cdnow-90", "cdnow-28-all",
                "cdnow-90-all")


@dataclass
class DataSet:
    name: str
    propel: Any
    account: str
    spec: Any
    train_end: datetime | None  # None: the day after the last event
    forward: bool  # hold out the window after train_end as a forward test


def data_set(name: str, root: Path) -> DataSet:
    """``demo-5k``: ``propel demo``'s shop (5,000 users, 90 days, seed 7), trained up to
    its end. ``syn-<N>k-s<seed>[-variant]``: N thousand users of a SyntheticApp with 90
    days of history plus one window held out as a forward test. ``cdnow-<window>[-all]``:
    the CDNOW sample (real purchases), goal Charged in the window, audience active within
    90 days (or everyone with ``-all``), the last window held out as a forward test."""
    from propel.demo.synth import SyntheticApp
    from propel.predictions.spec import Audience, PredictionSpec, from_template

    parts = name.split("-")
    folder = root / name
    if parts[0] == "cdnow":
        window = int(parts[1])
        propel, account, _ = load_cdnow(root / "cdnow")
        audience = Audience() if "all" in parts else Audience(active_within_days=90)
        spec = PredictionSpec(name=name, goal_event="Charged", window_days=window,
                              audience=audience)
        return DataSet(name, propel, account, spec, None, True)
    spec = from_template("conversions")
    if parts[0] == "demo":
        users = int(parts[1].rstrip("k")) * 1000
        propel, account, _ = load_synthetic(folder, SyntheticApp(seed=7), users, days=90)
        return DataSet(name, propel, account, spec, END, False)
    users = int(parts[1].rstrip("k")) * 1000
    app = SyntheticApp(seed=int(parts[2][1:]), **APP_VARIANTS[parts[3] if len(parts) > 3 else ""])
    propel, account, _ = load_synthetic(folder, app, users, days=90 + spec.window_days)
    return DataSet(name, propel, account, spec, END - timedelta(days=spec.window_days), True)


def evaluate(ds: DataSet, seed: int = 7) -> dict[str, Any]:
    """What ``train_prediction`` does (same functions, same order), without the registry,
    plus each candidate on the forward window."""
    from propel.lake.reader import snapshot
    from propel.predictions import quality
    from propel.predictions import training as tr
    from propel.predictions.features import choose_feature_spec, register_aliases

    spec = ds.spec
    with snapshot(ds.propel.db, ds.propel.lake, ds.account) as (con, _):
        register_aliases(con, tr.load_aliases(ds.propel, ds.account))
        first, last, n_events = tr._data_range(con)
        end = tr.start_of_day(last) + timedelta(days=1)
        if ds.forward and ds.train_end is None:
            end -= timedelta(days=spec.window_days)
        elif ds.train_end is not None:
            end = min(end, ds.train_end)
        plan = tr.plan_snapshots(first, end, spec.window_days)
        tr.sample_users(con, n_events, len(plan.dates), seed)
        feature_spec = choose_feature_spec(con, spec, plan.validate)
        snaps = tr.collect_snapshots(con, spec, feature_spec, plan.dates, seed)
        fwd = tr.collect_snapshots(con, spec, feature_spec, [end], seed)[0] \
            if ds.forward else None
    cands = tr.fit_candidates(spec, feature_spec, plan, snaps, seed)
    chosen, _, reason, _ = tr._decide(cands.models, cands.reports, None, cands.evaluation)
    out: dict[str, Any] = {"data": ds.name, "window": spec.window_days, "chosen": chosen,
                           "reason": reason, "training": cands.training,
                           "validation_users": len(cands.evaluation[1]),
                           "validation_base_rate": float(cands.evaluation[1].mean()),
                           "kinds": {}}
    for kind, model in cands.models.items():
        rep = cands.reports[kind]
        row = {"auc": rep["auc"], "log_loss": rep["log_loss"], "brier": rep["brier"],
               "calibration": rep["calibration"]}
        if fwd is not None:
            p = model.predict_proba(fwd.frame)
            row.update(fwd_auc=quality.auc(fwd.y, p), fwd_log_loss=quality.log_loss(fwd.y, p))
        out["kinds"][kind] = row
    if fwd is not None:
        out.update(forward_users=len(fwd.y), forward_base_rate=float(fwd.y.mean()))
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def quality_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per data set, AUC / log loss per kind on validation (held-out
    half of the newest labelled snapshot) and forward (the next window, never seen)."""
    kinds = ("lightgbm", "blend", "logistic", "bgnbd")
    head = ("| data set | window | val users (rate) | "
            + " | ".join(f"{k} val AUC / LL" for k in kinds)
            + " | fwd users (rate) | "
            + " | ".join(f"{k} fwd AUC / LL" for k in kinds) + " | promoted |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        k = r["kinds"]

        def pair(kind: str, prefix: str, k: dict = k) -> str:
            if kind not in k:
                return "n/a"
            return (f"{_fmt(k[kind].get(prefix + 'auc'), 3)} / "
                    f"{_fmt(k[kind].get(prefix + 'log_loss'))}")

        fwd = (f"{r['forward_users']:,} ({r['forward_base_rate']:.3f})"
               if "forward_users" in r else "-")
        lines.append(
            f"| {r['data']} | {r['window']} | {r['validation_users']:,} "
            f"({r['validation_base_rate']:.3f}) | "
            + " | ".join(pair(x, "") for x in kinds) + f" | {fwd} | "
            + " | ".join(pair(x, "fwd_") if "forward_users" in r else "-" for x in kinds)
            + f" | {r['chosen']} |")
    return "\n".join(lines)


def promoted_summary(results: list[dict[str, Any]]) -> str:
    """Markdown: the promoted model against each baseline, mean over the data sets of
    the difference in log loss (negative is better) and AUC, on validation and forward,
    and on how many data sets it is strictly better."""
    lines = ["| promoted vs | val Δ LL (better) | fwd Δ LL (better) | val Δ AUC (better) | "
             "fwd Δ AUC (better) |", "|---|---|---|---|---|"]
    for base in ("logistic", "bgnbd"):
        cells = []
        for metric, lower in (("log_loss", True), ("fwd_log_loss", True), ("auc", False),
                              ("fwd_auc", False)):
            diffs = [r["kinds"][r["chosen"]][metric] - r["kinds"][base][metric]
                     for r in results if base in r["kinds"]
                     and r["kinds"][r["chosen"]].get(metric) is not None
                     and r["kinds"][base].get(metric) is not None]
            better = sum((d < 0) if lower else (d > 0) for d in diffs)
            cells.append(f"{sum(diffs) / len(diffs):+.4f} ({better}/{len(diffs)})"
                         if diffs else "-")
        lines.append(f"| {base} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_quality(args: argparse.Namespace) -> None:
    root = args.data or Path(tempfile.mkdtemp(prefix="propel-bench-quality-"))
    results = []
    for name in args.sets.split(","):
        started = time.perf_counter()
        ds = data_set(name.strip(), root)
        result = evaluate(ds)
        ds.propel.close()
        result["seconds"] = time.perf_counter() - started
        results.append(result)
        lgb = result["kinds"].get("lightgbm", {})
        print(f"{name}: chosen {result['chosen']} ({result['reason']}); lightgbm val AUC "
              f"{_fmt(lgb.get('auc'), 3)} in {result['seconds']:.0f}s", flush=True)
    print()
    print(quality_table(results))
    print()
    print(promoted_summary(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


# --- speed ---------------------------------------------------------------------------------


class PeakMemory:
    """Peak resident memory of this process: the kernel's high-water mark (VmHWM), which
    also counts memory freed again before the end, unlike a sampling thread."""

    @staticmethod
    def mib() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(module: Any, name: str, bucket: dict[str, float]) -> None:
    """Wrap ``module.name`` so its wall time adds up in ``bucket[name]`` (a name the
    module no longer has is skipped: this only measures)."""
    inner = getattr(module, name, None)
    if inner is None:
        return

    def wrapper(*a: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            bucket[name] = bucket.get(name, 0.0) + time.perf_counter() - started

    setattr(module, name, wrapper)


def phase_child(phase: str, data_dir: Path) -> dict[str, Any]:
    """One phase (train or score) in this process, so peak memory is that phase's."""
    from propel.predictions import create_prediction, registry, scoring, training
    from propel.predictions.blend import BlendModel
    from propel.predictions.model import LikelihoodModel
    from propel.predictions.spec import from_template

    propel = open_propel(data_dir)
    account = account_of(propel)
    times: dict[str, float] = {}
    blend_times: dict[str, float] = {}  # a blend's time includes its members' (above)
    base = PeakMemory.mib()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    if phase == "train":
        try:
            prediction = registry.get(propel.db, account, "Predict Conversions")
        except registry.NotFound:
            prediction = create_prediction(propel, account, from_template("conversions"))
        for name in ("compute_features", "labels", "choose_feature_spec", "sample_users"):
            _timed(training, name, times)
        _timed(training, "fit_candidates", times)
        result = training.train_prediction(propel, prediction, as_of=END)
        out = {"chosen": result.metrics["chosen"], "reason": result.reason,
               "rows": result.metrics["training"]["rows"],
               "user_share": result.metrics["training"]["user_share"],
               "lightgbm": result.metrics["training"].get("lightgbm"),
               "fit_seconds": result.metrics["training"].get("fit_seconds"),
               "auc": result.metrics["quality"]["auc"],
               "log_loss": result.metrics["quality"]["log_loss"]}
    else:
        prediction = registry.get(propel.db, account, "Predict Conversions")
        for name in ("compute_features", "_reasons_json", "_replace_scores",
                     "_append_history"):
            _timed(scoring, name, times)
        for name in ("raw_score", "predict_proba", "contributions"):
            _timed(LikelihoodModel, name, times)
        for name in ("raw_score", "predict_proba", "contributions"):
            _timed(BlendModel, name, blend_times)
        result = scoring.score_prediction(propel, prediction, as_of=END)
        out = {"rows": result.rows, "changed": result.changed, "groups": result.group_sizes,
               "blend": {f"blend.{k}": round(v, 2) for k, v in blend_times.items()}}
    out.update(seconds=time.perf_counter() - started, parts=times,
               peak_mib=PeakMemory.mib(), start_mib=base, load_before=load,
               load_after=os.getloadavg()[0])
    propel.close()
    return out


def run_speed(args: argparse.Namespace) -> None:
    from propel.demo.synth import SyntheticApp

    root = args.data or Path(tempfile.mkdtemp(prefix="propel-bench-speed-"))
    print(f"{host.describe()}; data in {root}", flush=True)
    rows = []
    for users in (int(u) for u in args.users.split(",")):
        folder = root / f"users-{users}"
        started = time.perf_counter()
        propel, _, stats = load_synthetic(folder, SyntheticApp(seed=args.seed), users,
                                          days=args.days)
        files = len(propel.lake.table().file_uris())
        propel.close()
        print(f"{users:,} users: {stats['events']:,} events, {files:,} lake files "
              f"(load {time.perf_counter() - started:.0f}s: generate "
              f"{stats['generate_seconds']:.0f}s, import {stats['import_seconds']:.0f}s)",
              flush=True)
        row: dict[str, Any] = {"users": users, "events": stats["events"]}
        for phase in ("train", "score"):
            cmd = [sys.executable, __file__, "phase", phase, str(folder)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            row[phase] = result
            parts = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(
                result["parts"].items(), key=lambda kv: -kv[1]))
            print(f"  {phase}: {result['seconds']:.1f}s, peak RSS {result['peak_mib']:,.0f} "
                  f"MiB (load {result['load_before']:.1f}->{result['load_after']:.1f}); "
                  f"{parts}", flush=True)
            extra = {k: v for k, v in result.items() if k not in (
                "parts", "seconds", "peak_mib", "start_mib", "load_before", "load_after")}
            print(f"    {json.dumps(extra, default=str)}", flush=True)
        rows.append(row)
    print()
    print("| users | events | train s | train peak MiB | score s | score features s | "
          "score peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['users']:,} | {r['events']:,} | {r['train']['seconds']:.0f} | "
              f"{r['train']['peak_mib']:,.0f} | {r['score']['seconds']:.0f} | "
              f"{r['score']['parts'].get('compute_features', 0):.0f} | "
              f"{r['score']['peak_mib']:,.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    targets = {"score": 60, "train": 180}
    big = rows[-1]
    misses = [f"{p} {big[p]['seconds']:.0f}s > {t}s" for p, t in targets.items()
              if big[p]["seconds"] > t]
    misses += [f"{p} peak {big[p]['peak_mib']:,.0f} MiB > 4096 MiB" for p in targets
               if big[p]["peak_mib"] > 4096]
    print("targets (largest size): " + ("met" if not misses else "missed: " + "; ".join(misses)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    speed = sub.add_parser("speed", help="time training and scoring at scale")
    speed.add_argument("--users", default="1000000",
                       help="comma-separated sizes, e.g. 100000,300000,1000000")
    speed.add_argument("--days", type=int, default=90, help="days of history")
    speed.add_argument("--seed", type=int, default=7)
    speed.add_argument("--data", type=Path, default=None,
                       help="folder for the data dirs (re-used when present)")
    speed.add_argument("--json", type=Path, default=None, help="write the results here")
    qual = sub.add_parser("quality", help="AUC and log loss per data set and model")
    qual.add_argument("--sets", default=",".join(QUALITY_SETS),
                      help="comma-separated data sets: demo-5k, syn-<N>k-s<seed>[-variant] "
                           f"(variants: {', '.join(v for v in APP_VARIANTS if v)}), "
                           "cdnow-<window>[-all]")
    qual.add_argument("--data", type=Path, default=None,
                      help="folder for the data dirs (re-used when present)")
    qual.add_argument("--json", type=Path, default=None, help="write the results here")
    phase = sub.add_parser("phase", help=argparse.SUPPRESS)
    phase.add_argument("phase", choices=("train", "score"))
    phase.add_argument("data_dir", type=Path)
    args = parser.parse_args()
    if args.command == "phase":
        print(json.dumps(phase_child(args.phase, args.data_dir), default=str))
    elif args.command == "speed":
        run_speed(args)
    else:
        run_quality(args)


if __name__ == "__main__":
    main()
