"""Bulk-import throughput: N synthetic events as Parquet and as CSV, each imported with
the Python API (``propel.ingest.bulk.import_file``) into a fresh data dir.

    .venv/bin/python benchmarks/bench_import.py                 # 5M events, both formats
    .venv/bin/python benchmarks/bench_import.py --events 1000000 --formats parquet

Each import runs in its own child process, so its peak RSS is its own. Prints events/s
(rows accepted / wall time of ``import_file``) and peak RSS, then checks the lake holds
exactly N events. Targets: Parquet >= 1,000,000 events/s, CSV >= 300,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import host
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

TARGETS = {"parquet": 1_000_000, "csv": 300_000}
NAMES = ["App Launched", "Product Viewed", "Search", "Added To Cart", "Charged",
         "Notification Clicked", "App Uninstalled"]
WEIGHTS = [0.25, 0.35, 0.15, 0.12, 0.08, 0.04, 0.01]
MAPPING = {"identity": "user_id", "name": "event", "ts": "ts", "message_id": "event_id",
           "amount": "amount", "quantity": "quantity", "currency": "currency",
           "platform": "platform", "product_id": "product_id"}
END_S = 1_748_736_000  # 2025-06-01T00:00:00Z: fixed, past, so nothing is "in the future"
DAYS = 180
BLOCK = 1_000_000


def _block(rng: np.random.Generator, start: int, n: int, users: int) -> pa.Table:
    user = rng.zipf(1.3, n) % users
    name_ix = rng.choice(len(NAMES), n, p=WEIGHTS)
    ts = END_S - rng.integers(0, DAYS * 86_400, n)
    charged = name_ix == NAMES.index("Charged")
    amount = np.round(rng.lognormal(3.0, 0.8, n), 2)
    product = rng.integers(0, 50_000, n)
    has_product = np.isin(name_ix, [1, 3, 4])
    names = pa.array(NAMES, pa.string())
    return pa.table({
        "event_id": pc.binary_join_element_wise(
            "ev-", pc.cast(pa.array(np.arange(start, start + n)), pa.string()), ""),
        "user_id": pc.binary_join_element_wise(
            "user-", pc.cast(pa.array(user), pa.string()), ""),
        "event": pc.take(names, pa.array(name_ix)),
        "ts": pa.array(ts * 1_000_000, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "amount": pa.array(amount, mask=~charged),
        "quantity": pa.array(rng.integers(1, 5, n), mask=~charged),
        "currency": pc.take(pa.array(["USD", "EUR", "GBP", "INR"]),
                            pa.array(rng.choice(4, n, p=[0.5, 0.25, 0.15, 0.1]))),
        "platform": pc.take(pa.array(["ios", "android", "web"]),
                            pa.array(rng.choice(3, n, p=[0.45, 0.45, 0.1]))),
        "product_id": pa.array(np.char.add("p", product.astype(str)), mask=~has_product),
    })


def generate(n: int, folder: Path, formats: list[str], seed: int = 7) -> dict[str, Path]:
    """Write the same n events to events.parquet and/or events.csv in ``folder``."""
    rng = np.random.default_rng(seed)
    users = max(1, n // 20)
    paths = {fmt: folder / f"events.{fmt}" for fmt in formats}
    pq_writer = csv_writer = None
    try:
        for start in range(0, n, BLOCK):
            table = _block(rng, start, min(BLOCK, n - start), users)
            if "parquet" in paths:
                pq_writer = pq_writer or pq.ParquetWriter(paths["parquet"], table.schema,
                                                          compression="snappy")
                pq_writer.write_table(table, row_group_size=BLOCK)
            if "csv" in paths:
                iso = pc.strftime(table.column("ts"), format="%Y-%m-%dT%H:%M:%SZ")
                csv_table = table.set_column(3, "ts", iso)
                csv_writer = csv_writer or pacsv.CSVWriter(paths["csv"], csv_table.schema)
                csv_writer.write_table(csv_table)
    finally:
        for writer in (pq_writer, csv_writer):
            if writer is not None:
                writer.close()
    return paths


def run_child(fmt: str, path: Path, chunk_rows: int | None, no_message_id: bool) -> dict:
    """Import one file into a fresh data dir (in this process) and measure it."""
    from propel.accounts import create_account
    from propel.core import Propel
    from propel.ingest.bulk import CHUNK_ROWS, import_file
    from propel.ingest.bulk_spec import ImportSpec
    from propel.lake.reader import count_events
    from propel.settings import Settings

    mapping = dict(MAPPING)
    if no_message_id:
        del mapping["message_id"]
    with tempfile.TemporaryDirectory(prefix="propel-bench-import-") as tmp:
        propel = Propel(Settings(data_dir=Path(tmp) / "data", secret_key="bench"))
        propel.migrate()
        account = create_account(propel.db, "Bench").account_id
        spec = ImportSpec(kind="events", path=path, mapping=mapping, format=fmt,
                          reject_path=Path(tmp) / "rejects.csv")
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        summary = import_file(propel, account, spec, chunk_rows=chunk_rows or CHUNK_ROWS)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stored = count_events(propel.db, propel.lake, account)
        lake_files = len(propel.lake.table().file_uris())
        propel.close()
    return {"format": fmt, "rows": summary.rows, "accepted": summary.accepted,
            "rejected": summary.rejected, "stored": stored, "seconds": seconds,
            "events_per_s": summary.accepted / seconds, "peak_rss_mib": rss_mib,
            "cpu_seconds": cpu, "load_after": os.getloadavg()[0],
            "lake_files": lake_files, "load_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5_000_000, help="events to generate")
    parser.add_argument("--formats", default="parquet,csv", help="comma-separated")
    parser.add_argument("--chunk-rows", type=int, default=None, help="import chunk size")
    parser.add_argument("--no-message-id", action="store_true",
                        help="do not map event_id: the importer derives message ids")
    parser.add_argument("--files", type=Path, default=None,
                        help="folder to keep the generated files in (re-used when present)")
    parser.add_argument("--child", nargs=2, metavar=("FORMAT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_child(args.child[0], Path(args.child[1]), args.chunk_rows,
                           args.no_message_id)
        print(json.dumps(result))
        return

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    with tempfile.TemporaryDirectory(prefix="propel-bench-files-") as tmp:
        folder = args.files or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / f"events-{args.events}.done"
        if not marker.exists() or not all((folder / f"events.{f}").exists() for f in formats):
            started = time.perf_counter()
            generate(args.events, folder, formats)
            marker.write_text("")
            print(f"generated {args.events:,} events in {time.perf_counter() - started:.1f}s")
        print(host.describe())
        failed = False
        for fmt in formats:
            path = folder / f"events.{fmt}"
            cmd = [sys.executable, __file__, "--child", fmt, str(path)]
            if args.chunk_rows:
                cmd += ["--chunk-rows", str(args.chunk_rows)]
            if args.no_message_id:
                cmd.append("--no-message-id")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            size = path.stat().st_size / 2**20
            ok = r["stored"] == args.events and r["accepted"] == args.events
            target = TARGETS.get(fmt, 0)
            print(f"{fmt:8} {size:6,.0f} MiB {r['accepted']:>11,} events in {r['seconds']:6.2f}s"
                  f" = {r['events_per_s']:>10,.0f} events/s (target {target:,}); "
                  f"{r['cpu_seconds']:.1f} CPU-s = {r['accepted'] / r['cpu_seconds']:,.0f} "
                  f"events per CPU-s; peak RSS {r['peak_rss_mib']:,.0f} MiB; "
                  f"{r['lake_files']:,} lake files; load {r['load_before']:.1f}->"
                  f"{r['load_after']:.1f}  {'ok' if ok else 'COUNT MISMATCH'}")
            failed |= not ok
        if failed:
            sys.exit(1)


if __name__ == "__main__":
    main()
