"""HTTP ingest throughput through the Segment-compatible batch endpoint.

Starts ``propel serve`` as a subprocess (embedded SQLite by default, or PostgreSQL with
``--postgres URL``) with the flusher running, then for ``--duration`` seconds drives
``POST /v1/batch`` (HTTP Basic, write key as user) from ``--clients`` threads in a
separate load process, ``--batch`` events per request. Each client re-sends a failed
request with the same message ids, as Segment's libraries do. Meanwhile a lake reader
counts the events in the lake every few seconds.

At the end it waits for the flusher to drain, then checks that every acknowledged
event is stored exactly once (lake + recent, no message id twice), and prints the
sustained events/s, the server's CPU per event, request latency p50/p99, the flush lag
(for every 10th acknowledged request, from its 200 to the ``lake_batches.flushed_at``
of the batch holding its events; and per batch ``flushed_at - oldest_received_at``)
and what the lake reader saw.

    .venv/bin/python benchmarks/bench_ingest.py                       # 120 s on SQLite
    .venv/bin/python benchmarks/bench_ingest.py --duration 30 --postgres \\
        postgresql+psycopg://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/bench_ingest.py --profile 20          # + py-spy top
    .venv/bin/python benchmarks/bench_ingest.py --workers 2           # serve --workers 2

Target: >= 25,000 events/s on SQLite.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import host
import httpx

PROPEL = str(Path(sys.executable).with_name("propel"))
TARGET = 25_000
NAMES = ["Product Viewed", "Added To Cart", "Search", "Charged", "App Launched"]


# --- the load process -----------------------------------------------------------------


def _template(run: str, client: int, batch: int) -> bytes:
    """One request body with ``@@SEQ@@`` where the request number goes: bodies are
    built once, and each request only substitutes its number into the ids."""
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    events = []
    for i in range(batch):
        events.append({
            "type": "track",
            "messageId": f"{run}-{client:02d}-@@SEQ@@-{i:03d}",
            "userId": f"user-{(client * 7919 + i * 104729) % 50_000}",
            "event": NAMES[i % len(NAMES)],
            "timestamp": now,
            "properties": {"price": 10 + i % 90, "currency": "USD", "sku": f"sku-{i}",
                           "position": i},
            "context": {"library": {"name": "bench", "version": "1"}},
        })
    return json.dumps({"batch": events, "sentAt": now}).encode()


class _Connection:
    """One keep-alive HTTP/1.1 connection on the standard library's client: a fraction
    of httpx's CPU per request, which matters when load and server share two cores."""

    def __init__(self, url: str, write_key: str) -> None:
        self.netloc = url.split("//", 1)[1]
        token = base64.b64encode(f"{write_key}:".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
        self.http = http.client.HTTPConnection(self.netloc, timeout=30)

    def post(self, path: str, payload: bytes) -> int | str:
        try:
            self.http.request("POST", path, body=payload, headers=self.headers)
            response = self.http.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException) as exc:
            self.http.close()
            self.http = http.client.HTTPConnection(self.netloc, timeout=30)
            return type(exc).__name__

    def close(self) -> None:
        self.http.close()


def run_load(url: str, write_key: str, run: str, clients: int, batch: int, seconds: float,
             out: Path) -> None:
    """Runs in its own process: ``clients`` threads posting until ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    results: dict[int, dict] = {}

    def client(n: int) -> None:
        body = _template(run, n, batch)
        acked: list[int] = []
        latencies: list[float] = []
        ack_times: list[float] = []
        errors: Counter = Counter()
        seq = 0
        conn = _Connection(url, write_key)
        while time.monotonic() < deadline:
            payload = body.replace(b"@@SEQ@@", b"%07d" % seq)
            for _attempt in range(20):  # same ids again until acknowledged
                started = time.perf_counter()
                status = conn.post("/v1/batch", payload)
                took = time.perf_counter() - started
                if status == 200:
                    latencies.append(took)
                    acked.append(seq)
                    ack_times.append(time.time())
                    break
                errors[str(status)] += 1
                time.sleep(0.2)
            seq += 1
        conn.close()
        results[n] = {"acked": acked, "latencies": latencies, "ack_times": ack_times,
                      "errors": dict(errors)}

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.write_text(json.dumps(results))


# --- the harness ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_schema(url: str) -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    sep = "&" if "?" in url else "?"
    return schema, f"{url}{sep}options=-csearch_path%3D{schema}"


def _drop_pg_schema(url: str, schema: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    engine.dispose()


def _cli(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([PROPEL, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    if proc.returncode:
        raise RuntimeError(f"propel {' '.join(args)}: {proc.stderr[-2000:]}")
    return proc.stdout


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children_cpu() -> float:
    """CPU seconds of this process's reaped children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) and its live children
    (``serve --workers``) have used, from /proc."""
    fields = _stat(pid)
    if fields is None:
        return float("nan")
    total = int(fields[11]) + int(fields[12])
    for stat in Path("/proc").glob("[0-9]*/stat"):
        child = _stat(int(stat.parent.name))
        if child is not None and int(child[1]) == pid:
            total += int(child[11]) + int(child[12])
    return total / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class LakeReader(threading.Thread):
    """Counts the events in the lake (its latest version) every ``every`` seconds, as a
    dashboard or a scoring job would, while the flusher writes."""

    def __init__(self, lake_uri: str, every: float) -> None:
        super().__init__(name="lake-reader", daemon=True)
        self.uri, self.every = lake_uri, every
        self.samples: list[tuple[float, int, float]] = []  # (time, count, seconds taken)
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        while not self.stop.wait(self.every):
            started = time.perf_counter()
            try:
                table = DeltaTable(self.uri)
                count = table.to_pyarrow_dataset().count_rows()
            except TableNotFoundError:
                count = 0
            except Exception as exc:  # noqa: BLE001 - reported at the end
                self.errors.append(repr(exc))
                continue
            self.samples.append((time.time(), count, time.perf_counter() - started))


def _profile(pid: int, seconds: int, out: Path, gil: bool) -> subprocess.Popen | None:
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("py-spy is not installed in this venv: pip install py-spy", file=sys.stderr)
        return None
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "97",
           "--format", "raw", "--output", str(out), "--nonblocking", "--subprocesses"]
    if gil:
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _top_frames(folded: Path, limit: int = 15) -> list[str]:
    """The frames most often on top of the stack (where the time goes), then Propel's
    own functions most often anywhere on it (which code path it is on)."""
    leaf, inclusive, total = Counter(), Counter(), 0
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        frames = stack.split(";")
        leaf[frames[-1]] += int(n)
        for frame in set(frames):
            if "propel/" in frame and "propel/cli.py" not in frame:
                inclusive[frame] += int(n)
    if not total:
        return []
    out = ["top of stack:"]
    out += [f"  {100 * n / total:5.1f}%  {frame[:130]}" for frame, n in leaf.most_common(limit)]
    out.append("Propel functions on the stack:")
    out += [f"  {100 * n / total:5.1f}%  {frame[:130]}"
            for frame, n in inclusive.most_common(limit)]
    return out


def _ack_to_lake(propel: object, run: str, results: dict, every: int) -> list[float]:
    """Seconds from a request's acknowledgement (client clock) to the flush that moved
    its events to the lake, for every ``every``-th acknowledged request: its first
    message id -> recent_events.batch_no -> lake_batches.flushed_at."""
    from sqlalchemy import select

    from propel.ingest.tables import recent_events
    from propel.lake.tables import lake_batches

    sampled = {}
    for c, r in results.items():
        for seq, acked_at in list(zip(r["acked"], r["ack_times"], strict=True))[::every]:
            sampled[f"{run}-{int(c):02d}-{seq:07d}-000"] = acked_at
    ids = list(sampled)
    lags = []
    with propel.db.read() as conn:
        flushed = dict(conn.execute(select(lake_batches.c.batch_no, lake_batches.c.flushed_at))
                       .all())
        for start in range(0, len(ids), 500):
            rows = conn.execute(select(recent_events.c.message_id, recent_events.c.batch_no)
                                .where(recent_events.c.message_id.in_(ids[start:start + 500])))
            for message_id, batch_no in rows:
                at = flushed.get(batch_no)
                if at is not None:
                    lags.append(max(0.0, at.timestamp() - sampled[message_id]))
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1,
                        help="server processes (propel serve --workers)")
    parser.add_argument("--batch", type=int, default=100, help="events per request")
    parser.add_argument("--flush-seconds", type=float, default=1.0,
                        help="PROPEL_FLUSH_SECONDS of the server")
    parser.add_argument("--sample-every", type=int, default=10,
                        help="measure ack->lake lag for every N-th acknowledged request")
    parser.add_argument("--reader-every", type=float, default=3.0,
                        help="seconds between lake reads")
    parser.add_argument("--postgres", metavar="URL", default=None,
                        help="run on PostgreSQL (a fresh schema) instead of SQLite")
    parser.add_argument("--sqlite-synchronous", default=None,
                        help="PROPEL_SQLITE_SYNCHRONOUS (default: the server's, FULL)")
    parser.add_argument("--profile", type=int, default=0, metavar="SECONDS",
                        help="py-spy the server for this long mid-run; print its hotspots")
    parser.add_argument("--gil", action="store_true",
                        help="with --profile: sample only the thread holding the GIL")
    parser.add_argument("--keep", type=Path, default=None,
                        help="data folder to use and keep (default: a temporary one)")
    parser.add_argument("--load", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        url, key, run, clients, batch, out = args.load
        run_load(url, key, run, int(clients), int(batch), args.duration, Path(out))
        return

    tmp = tempfile.TemporaryDirectory(prefix="propel-bench-ingest-")
    folder = args.keep or Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPEL_")}
    env.update(PROPEL_DATA_DIR=str(data), PROPEL_FLUSH_SECONDS=str(args.flush_seconds),
               PROPEL_LOG_FORMAT="text", PROPEL_SECRET_KEY="bench-secret")
    if args.sqlite_synchronous:
        env["PROPEL_SQLITE_SYNCHRONOUS"] = args.sqlite_synchronous
    schema = None
    if args.postgres:
        schema, db_url = _pg_schema(args.postgres)
        env["PROPEL_DATABASE_URL"] = db_url
        _cli(env, "db", "upgrade")
    database = "PostgreSQL" if args.postgres else "SQLite"
    write_key = json.loads(_cli(env, "accounts", "create", "Bench", "--json"))["write_key"]

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "server.log").open("ab")
    # In this session (and scheduler group) on purpose: see benchmarks/README.md.
    server = subprocess.Popen([PROPEL, "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", str(args.workers)],
                              env=env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # workers import all of Propel first
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"propel serve did not start; see {folder / 'server.log'}")
            time.sleep(0.1)

        from propel.settings import Settings

        settings = Settings(data_dir=data, database_url=env.get("PROPEL_DATABASE_URL"))
        reader = LakeReader(os.path.join(settings.resolved_lake_uri, "events"),
                            args.reader_every)
        reader.start()
        run = uuid.uuid4().hex[:6]
        out = folder / "load.json"
        print(host.describe(), flush=True)
        load_avg = os.getloadavg()[0]
        print(f"{database}: {args.clients} clients x {args.batch} events/request for "
              f"{args.duration:.0f}s, flush every {args.flush_seconds}s; load average "
              f"{load_avg:.2f} on {os.cpu_count()} cores", flush=True)
        server_cpu = _cpu_seconds(server.pid)
        children_cpu = _children_cpu()
        started = time.time()
        load = subprocess.Popen([sys.executable, __file__, "--duration", str(args.duration),
                                 "--load", url, write_key, run, str(args.clients),
                                 str(args.batch), str(out)])
        spy = None
        if args.profile:
            time.sleep(min(10.0, args.duration / 4))
            spy = _profile(server.pid, args.profile, folder / "server.folded", args.gil)
        load.wait()
        load_seconds = time.time() - started
        load_cpu = _children_cpu() - children_cpu  # the load process, now reaped
        server_cpu = _cpu_seconds(server.pid) - server_cpu
        load_after = os.getloadavg()[0]
        if spy is not None:
            spy.wait()
        results = json.loads(out.read_text())

        # Drain: wait until the flusher has moved everything acknowledged to the lake.
        from propel.core import Propel
        from propel.lake.flush import pending_stats
        from propel.lake.reader import snapshot
        from propel.lake.tables import lake_batches

        propel = Propel(settings)
        drain_started = time.time()
        while time.time() - drain_started < 120:
            pending, _ = pending_stats(propel.db)
            with propel.db.read() as conn:
                unmarked = conn.execute(lake_batches.select().where(
                    lake_batches.c.flushed_at.is_(None))).first()
            if not pending and unmarked is None:
                break
            time.sleep(0.5)
        drained_after = time.time() - drain_started
        reader.stop.set()
        reader.join(timeout=30)

        # Exactly once: every acknowledged id stored once; no id stored twice.
        import pyarrow as pa

        acked_ids = [f"{run}-{int(c):02d}-{seq:07d}-{i:03d}"
                     for c, r in results.items() for seq in r["acked"]
                     for i in range(args.batch)]
        with snapshot(propel.db, propel.lake) as (con, _pin):
            con.register("acked", pa.table({"message_id": pa.array(acked_ids)}))
            stored, distinct = con.execute(
                "SELECT count(*), count(DISTINCT message_id) FROM events "
                f"WHERE message_id LIKE '{run}-%'").fetchall()[0]
            missing = con.execute(
                "SELECT count(*) FROM acked a ANTI JOIN events e USING (message_id)"
            ).fetchall()[0][0]
            in_lake = con.execute(
                f"SELECT count(*) FROM _lake_events WHERE message_id LIKE '{run}-%'"
            ).fetchall()[0][0]
        with propel.db.read() as conn:
            batches = conn.execute(lake_batches.select()).all()
        ack_lags = _ack_to_lake(propel, run, results, args.sample_every)
        propel.close()
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=30)
        log.close()
        if schema:
            _drop_pg_schema(args.postgres, schema)

    latencies = [x for r in results.values() for x in r["latencies"]]
    ack_times = sorted(t for r in results.values() for t in r["ack_times"])
    errors = Counter()
    for r in results.values():
        errors.update(r["errors"])
    acked = len(acked_ids)
    lags = [(b.flushed_at.timestamp() - b.oldest_received_at / 1e6) for b in batches
            if b.flushed_at is not None]
    sizes = [b.row_count for b in batches]
    # Sustained: acknowledged events over the load window, and per 10 s window.
    windows = Counter(int((t - started) // 10) for t in ack_times)
    per_window = [windows[w] * args.batch / 10 for w in sorted(windows)][:-1] or [0]
    ok = missing == 0 and stored == distinct and acked <= distinct
    print(f"acknowledged {acked:,} events in {load_seconds:.1f}s = "
          f"{acked / load_seconds:,.0f} events/s sustained (target {TARGET:,} on SQLite); "
          f"per 10 s window min {min(per_window):,.0f} / median "
          f"{statistics.median(per_window):,.0f} / max {max(per_window):,.0f}")
    print(f"server process used {server_cpu:.1f} CPU-s during the load = "
          f"{acked / server_cpu if server_cpu else 0:,.0f} events per server CPU-second "
          f"({1e6 * server_cpu / max(acked, 1):.0f} µs per event)")
    print(f"load generator used {load_cpu:.1f} CPU-s ({load_cpu / load_seconds:.2f} cores) "
          f"on {os.cpu_count()} cores shared with the server")
    print(f"requests: {len(latencies):,} ok, latency p50 {_pct(latencies, .5) * 1000:.1f} ms, "
          f"p99 {_pct(latencies, .99) * 1000:.1f} ms, max {max(latencies or [0]) * 1000:.0f} ms;"
          f" failed attempts (retried): {dict(errors) or 'none'}")
    print(f"flush lag ack->lake ({len(ack_lags):,} sampled requests): p50 "
          f"{_pct(ack_lags, .5):.2f}s, p99 {_pct(ack_lags, .99):.2f}s, max "
          f"{max(ack_lags or [0]):.2f}s")
    print(f"flush: {len(batches)} batches, rows/batch median "
          f"{statistics.median(sizes or [0]):,.0f}; oldest row's wait per batch p50 "
          f"{_pct(lags, .5):.2f}s, p99 {_pct(lags, .99):.2f}s, max {max(lags or [0]):.2f}s; "
          f"drained {drained_after:.1f}s after the load stopped")
    reads = reader.samples
    if reads:
        during = max((r[1] for r in reads if r[0] <= started + load_seconds), default=0)
        print(f"lake reader: {len(reads)} counts, each took p50 "
              f"{_pct([r[2] for r in reads], .5):.2f}s / max {max(r[2] for r in reads):.2f}s; "
              f"last count during load {during:,}; errors {len(reader.errors)}")
    print(f"exactly once: {stored:,} stored, {distinct:,} distinct ids, {in_lake:,} in the "
          f"lake, {missing:,} acknowledged ids missing -> {'OK' if ok else 'FAILED'}")
    print(f"load average {load_avg:.2f} before, {load_after:.2f} after")
    if args.profile and (folder / "server.folded").exists():
        print("server hotspots (share of samples whose stack holds the frame"
              f"{', GIL holder only' if args.gil else ''}):")
        for line in _top_frames(folder / "server.folded"):
            print("  " + line)
    if args.keep:
        print(f"kept {folder}")
    tmp.cleanup()
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
