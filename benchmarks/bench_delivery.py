"""Delivery throughput, end to end: render, caps, record, send.

A campaign of N users is dispatched and delivered by the real delivery engine to a
loopback SMTP sink (aiosmtpd, counting unique Message-IDs) and to a loopback webhook
receiver (counting unique Idempotency-Keys). Prints messages/s for each.

    python benchmarks/bench_delivery.py --users 20000 [--postgres URL]

Target: >= 2,000 messages/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import pstats
import secrets
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _users(propel: Any, account: str, n: int) -> None:
    from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
    from propel.ingest.service import ingest_sync

    for start in range(0, n, 2000):
        items = [IngestItem(key_hash(account, f"p{i}"), profile=ProfileUpdate(
            identity=f"u{i:07d}", email=f"u{i}@bench.example", consent={"email": True},
            properties={"first_name": f"User{i}", "plan": "pro"}))
            for i in range(start, min(n, start + 2000))]
        ingest_sync(propel.db, account, items, [], "bench")


def _run(propel: Any, account: str, channel: str, content: dict) -> tuple[int, float]:
    from propel.campaigns import service
    from propel.campaigns.delivery import DeliveryEngine
    from propel.campaigns.dispatch import dispatch_campaign

    c = service.create_campaign(propel, account, name=f"bench {channel}", channel=channel,
                                audience={"property": "plan", "op": "=", "value": "pro"},
                                content={"variants": [{"name": "A", "split": 100,
                                                       **content}]},
                                holdout_pct=0.0, caps={"per_day": 5})
    service.publish(propel, account, c.id)
    started = time.perf_counter()
    dispatch_campaign(propel, account, c.id)

    sent = asyncio.run(DeliveryEngine(propel, batch_size=1000).drain())
    return sent, time.perf_counter() - started


def _serve_sinks(pipe: Any) -> None:
    """The receivers, in a process of their own as real ones would be: an SMTP sink
    counting unique Message-IDs and a webhook receiver counting unique keys. Sends the
    ports, then answers each "count" with the two counts, until "stop"."""
    from aiosmtpd.controller import Controller

    ids: set[str] = set()
    keys: set[str] = set()

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            for line in envelope.content.split(b"\r\n"):
                if line.lower().startswith(b"message-id:"):
                    ids.add(line.split(b":", 1)[1].strip().decode())
                    break
            return "250 OK"

    class Hook(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", 0)))
            keys.add(self.headers.get("idempotency-key", ""))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        smtp_port = s.getsockname()[1]
    smtp = Controller(Sink(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    pipe.send((smtp_port, http.server_address[1]))
    while pipe.recv() == "count":
        pipe.send((len(ids), len(keys)))
    smtp.stop()
    http.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--postgres", help="PostgreSQL URL (default: embedded SQLite)")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the deliveries here")
    args = parser.parse_args()

    from propel.accounts import create_account
    from propel.campaigns import delivery, dispatch, render  # noqa: F401  (imported untimed)
    from propel.channels import email, webhook  # noqa: F401
    from propel.channels.registry import set_config
    from propel.core import Propel
    from propel.settings import Settings

    ours, theirs = multiprocessing.Pipe()
    sinks = multiprocessing.Process(target=_serve_sinks, args=(theirs,), daemon=True)
    sinks.start()
    smtp_port, http_port = ours.recv()
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        propel = Propel(Settings(data_dir=Path(tmp), database_url=args.postgres,
                                 secret_key="bench", write_timeout_seconds=600))
        propel.migrate()
        account = create_account(propel.db, f"bench-{secrets.token_hex(3)}").account_id
        _users(propel, account, args.users)
        set_config(propel.db, account, "email", {"host": "127.0.0.1", "port": smtp_port,
                                                 "security": "none",
                                                 "from_address": "bench@bench.example"})
        set_config(propel.db, account, "webhook", {
            "url": f"http://127.0.0.1:{http_port}/h", "secret": secrets.token_urlsafe(24)})
        db = "PostgreSQL" if args.postgres else "SQLite"
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
              f"receivers in a separate process")
        for index, (channel, content) in enumerate((
                ("email", {"subject": "Hi {{ user.first_name | default('there') }}",
                           "html": "<p>Hello {{ user.first_name | default('') }}, "
                                   "<a href='https://shop.example/x'>shop</a></p>"}),
                ("webhook", {"title": "Hi", "body": "Hello {{ user.plan | default('') }}"}))):
            if profiler:
                profiler.enable()
            sent, seconds = _run(propel, account, channel, content)
            if profiler:
                profiler.disable()
            ours.send("count")
            seen = ours.recv()[index]
            print(f"{channel:8s} {db:10s} {sent:,} messages in {seconds:.1f}s = "
                  f"{sent / seconds:,.0f} messages/s ({sent / seconds / 2000:.2f} of the "
                  f"2,000/s target); receiver saw {seen:,} unique")
        propel.close()
    ours.send("stop")
    sinks.join(timeout=10)
    if profiler:
        profiler.dump_stats(args.profile)
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
