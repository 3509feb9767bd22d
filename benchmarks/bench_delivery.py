"""Delivery throughput, end to end: render, caps, record, send.

A campaign of N users is dispatched and delivered by the real delivery engine to a
loopback SMTP sink (aiosmtpd, counting unique Message-IDs) and to a loopback webhook
receiver (aiohttp's server, counting unique Idempotency-Keys), both in a process of
their own. Prints messages/s for each, and the CPU time per message of the senders
and of the receivers, which decides the rate when all of them share two cores.

    python benchmarks/bench_delivery.py --users 20000 [--processes 2] [--postgres URL]

``--processes N`` delivers with N worker processes side by side, as N ``propel worker``
processes would. The SMTP sink offers PIPELINING, as production relays do
(``--no-pipelining``: it does not, and every command waits for its reply).
``--smtp-sink postfix`` receives the e-mails with Postfix's ``smtp-sink`` (Debian
package ``postfix``) instead of aiosmtpd: a receiver in C, costing about what a
production relay does. Target: >= 2,000 messages/s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import multiprocessing
import os
import pstats
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import host  # noqa: E402
from bench_ingest import _drop_pg_schema, _pg_schema  # noqa: E402


def _users(propel: Any, account: str, n: int) -> None:
    from propel.ingest.records import IngestItem, ProfileUpdate, key_hash
    from propel.ingest.service import ingest_sync

    for start in range(0, n, 2000):
        items = [IngestItem(key_hash(account, f"p{i}"), profile=ProfileUpdate(
            identity=f"u{i:07d}", email=f"u{i}@bench.example", consent={"email": True},
            properties={"first_name": f"User{i}", "plan": "pro"}))
            for i in range(start, min(n, start + 2000))]
        ingest_sync(propel.db, account, items, [], "bench")


def _cpu() -> float:
    """CPU seconds of this process and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _drain(settings: Any) -> int:
    from propel.campaigns.delivery import DeliveryEngine
    from propel.core import Propel
    from propel.serving import run_event_loop, settle_heap

    propel = Propel(settings)
    settle_heap()  # as `propel worker` does
    try:
        return run_event_loop(DeliveryEngine(propel, batch_size=1000).drain(), settings)
    finally:
        propel.close()


def _run(propel: Any, account: str, channel: str, content: dict, processes: int
         ) -> tuple[int, float]:
    from propel.campaigns import service
    from propel.campaigns.delivery import DeliveryEngine
    from propel.campaigns.dispatch import dispatch_campaign
    from propel.serving import run_event_loop, settle_heap

    c = service.create_campaign(propel, account, name=f"bench {channel}", channel=channel,
                                audience={"property": "plan", "op": "=", "value": "pro"},
                                content={"variants": [{"name": "A", "split": 100,
                                                       **content}]},
                                holdout_pct=0.0, caps={"per_day": 5})
    service.publish(propel, account, c.id)
    settle_heap()  # as `propel worker` and `propel serve` do; not part of the timing
    started = time.perf_counter()
    dispatch_campaign(propel, account, c.id)

    if processes == 1:
        sent = run_event_loop(DeliveryEngine(propel, batch_size=1000).drain(),
                              propel.settings)
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            sent = sum(pool.map(_drain, [propel.settings] * processes))
    return sent, time.perf_counter() - started


def _serve_sinks(pipe: Any, pipelining: bool) -> None:
    """The receivers, in a process of their own as real ones would be: an SMTP sink
    counting unique Message-IDs and a webhook receiver counting unique keys. Sends the
    ports, then answers each "count" with the two counts and the process's CPU seconds,
    until "stop"."""
    from aiohttp import web
    from aiosmtpd.controller import Controller

    ids: set[str] = set()
    keys: set[str] = set()

    class Sink:
        async def handle_EHLO(self, server: Any, session: Any, envelope: Any,  # noqa: N802
                              hostname: str, responses: list[str]) -> list[str]:
            # aiosmtpd serves pipelined commands in order but does not offer PIPELINING;
            # the relays Propel sends through (Postfix, the sending services) do.
            session.host_name = hostname
            if not pipelining:
                return responses
            return [*responses[:-1], "250-PIPELINING", responses[-1]]

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            for line in envelope.content.split(b"\r\n"):
                if line.lower().startswith(b"message-id:"):
                    ids.add(line.split(b":", 1)[1].strip().decode())
                    break
            return "250 OK"

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        keys.add(request.headers.get("idempotency-key", ""))
        return web.Response(status=200)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        smtp_port = s.getsockname()[1]
    smtp = Controller(Sink(), hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/h", hook)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.SockSite(runner, socket.create_server(("127.0.0.1", 0)))
    loop.run_until_complete(site.start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    pipe.send((smtp_port, site._sock.getsockname()[1]))
    while pipe.recv() == "count":
        pipe.send((len(ids), len(keys), _cpu()))
    smtp.stop()
    loop.call_soon_threadsafe(loop.stop)


class PostfixSink:
    """Postfix's ``smtp-sink`` (a small SMTP server in C, offering PIPELINING), appending
    every message it accepts to one file: a receiver that costs about what a
    production relay does, where aiosmtpd's Python costs as much as the sender."""

    def __init__(self, folder: Path, pipelining: bool) -> None:
        program = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        folder.mkdir()
        folder.chmod(0o777)  # it drops to "nobody" when started as root
        self.dump = folder / "dump"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen([program, *user, *([] if pipelining else ["-p"]),
                                      "-D", str(self.dump), f"127.0.0.1:{self.port}", "256"])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def unique_ids(self) -> int:
        if not self.dump.exists():
            return 0
        with self.dump.open("rb") as lines:
            return len({line.split(b":", 1)[1].strip() for line in lines
                        if line[:11].lower() == b"message-id:"})

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--postgres", help="PostgreSQL URL (default: embedded SQLite)")
    parser.add_argument("--processes", type=int, default=1,
                        help="delivery worker processes side by side (default 1)")
    parser.add_argument("--no-pipelining", action="store_true",
                        help="the SMTP sink does not offer PIPELINING (one round trip a command)")
    parser.add_argument("--smtp-sink", choices=("aiosmtpd", "postfix"), default="aiosmtpd",
                        help="the SMTP receiver: aiosmtpd (default) or Postfix's smtp-sink")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the deliveries here")
    args = parser.parse_args()

    from propel.accounts import create_account
    from propel.campaigns import delivery, dispatch, render  # noqa: F401  (imported untimed)
    from propel.channels import email, webhook  # noqa: F401
    from propel.channels.registry import set_config
    from propel.core import Propel
    from propel.settings import Settings

    ours, theirs = multiprocessing.Pipe()
    sinks = multiprocessing.Process(target=_serve_sinks, args=(theirs, not args.no_pipelining),
                                    daemon=True)
    sinks.start()
    smtp_port, http_port = ours.recv()
    sink_dir = Path(tempfile.mkdtemp())
    sink_dir.chmod(0o755)  # smtp-sink runs as "nobody" and writes below it
    postfix = PostfixSink(sink_dir / "postfix", not args.no_pipelining) \
        if args.smtp_sink == "postfix" else None
    if postfix:
        smtp_port = postfix.port
    profiler = cProfile.Profile() if args.profile else None
    # PostgreSQL: a fresh schema, dropped afterwards, so no earlier run's messages are
    # delivered (or waited for) in this one.
    schema, database_url = _pg_schema(args.postgres) if args.postgres else (None, None)
    with tempfile.TemporaryDirectory() as tmp:
        propel = Propel(Settings(data_dir=Path(tmp), database_url=database_url,
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
        print(f"{host.describe()}; receivers in separate processes (SMTP: {args.smtp_sink}); "
              f"{args.processes} delivery process(es)")
        for index, (channel, content) in enumerate((
                ("email", {"subject": "Hi {{ user.first_name | default('there') }}",
                           "html": "<p>Hello {{ user.first_name | default('') }}, "
                                   "<a href='https://shop.example/x'>shop</a></p>"}),
                ("webhook", {"title": "Hi", "body": "Hello {{ user.plan | default('') }}"}))):
            ours.send("count")
            sink_before, cpu_before = ours.recv()[2], _cpu()
            if postfix and channel == "email":
                sink_before += postfix.cpu()
            if profiler:
                profiler.enable()
            sent, seconds = _run(propel, account, channel, content, args.processes)
            if profiler:
                profiler.disable()
            ours.send("count")
            counts = list(ours.recv())
            if postfix and channel == "email":
                counts[0], counts[2] = postfix.unique_ids(), counts[2] + postfix.cpu()
            senders = (_cpu() - cpu_before) / sent * 1000
            receiver = (counts[2] - sink_before) / sent * 1000
            print(f"{channel:8s} {db:10s} {sent:,} messages in {seconds:.1f}s = "
                  f"{sent / seconds:,.0f} messages/s ({sent / seconds / 2000:.2f} of the "
                  f"2,000/s target); receiver saw {counts[index]:,} unique; CPU per "
                  f"message: senders {senders:.2f} ms, receiver {receiver:.2f} ms")
        propel.close()
    if schema:
        _drop_pg_schema(args.postgres, schema)
    ours.send("stop")
    sinks.join(timeout=10)
    if postfix:
        postfix.stop()
    shutil.rmtree(sink_dir, ignore_errors=True)
    if profiler:
        profiler.dump_stats(args.profile)
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
