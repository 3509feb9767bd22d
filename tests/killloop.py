"""A reusable kill -9 harness.

``ServerProcess`` runs ``propel serve`` as a subprocess of its own (data dir, database
URL, crash points, flush interval and log format from the environment). ``KillLoop``
drives load from threads, restarts the server whenever it dies (an armed crash point
SIGKILLs it) and, optionally, SIGKILLs it from outside at random moments; it stops
after ``max_cycles`` deaths or ``max_seconds``, whichever comes first (on a slow
machine it may go on to ``min_cycles`` deaths, never past ``hard_seconds``), so a run
is always bounded.

Load functions take a :class:`LoadContext` and loop until ``ctx.stopping`` is set;
``ctx.url`` is the current server's base URL and ``ctx.up`` is set while the server
answers. Failed requests are theirs to retry (with the same idempotency keys).

    server = ServerProcess(ServerConfig(data_dir=tmp / "data"), tmp / "server.log")
    loop = KillLoop(server, load=[my_load] * 4, max_seconds=30, max_cycles=10,
                    min_cycles=3, hard_seconds=90, kill_every=(2, 5),
                    faults=random_faults(["ingest.after_commit"], quiet_every=3))
    stats = loop.run()          # the server is left killed; restart it cleanly to check
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PROPEL = str(Path(sys.executable).with_name("propel"))
CRASH_LINE = re.compile(r"propel: crash point (\S+): SIGKILL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerConfig:
    data_dir: Path
    database_url: str | None = None  # None: the embedded SQLite in data_dir
    flush_seconds: float = 0.3
    log_format: str = "text"
    secret_key: str = "killloop-secret"
    extra_env: dict[str, str] = field(default_factory=dict)
    serve_args: tuple[str, ...] = ()  # e.g. ("--workers", "2")

    def env(self, faults: str = "") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPEL_")}
        env.update(PROPEL_DATA_DIR=str(self.data_dir), PROPEL_FAULTS=faults,
                   PROPEL_FLUSH_SECONDS=str(self.flush_seconds),
                   PROPEL_LOG_FORMAT=self.log_format, PROPEL_SECRET_KEY=self.secret_key)
        if self.database_url:
            env["PROPEL_DATABASE_URL"] = self.database_url
        env.update(self.extra_env)
        return env


def cli(config: ServerConfig, *args: str, timeout: float = 120) -> str:
    """Run ``propel ARGS`` against the config's data; its stdout (raises on failure)."""
    proc = subprocess.run([PROPEL, *args], env=config.env(), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"propel {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


class ServerProcess:
    """One ``propel serve`` at a time; every run's output goes to one log file."""

    def __init__(self, config: ServerConfig, log_path: Path, port: int | None = None) -> None:
        self.config = config
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill9()  # whatever happened, no server outlives its test

    def start(self, faults: str = "") -> None:
        assert not self.alive(), "server already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"\n=== start {self.starts} port={self.port} faults={faults!r} "
                      f"at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            # a session of its own: terminal signals meant for pytest do not reach it
            self.proc = subprocess.Popen(
                [PROPEL, "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 *self.config.serve_args],
                env=self.config.env(faults), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 60) -> bool:
        """True once /healthz answers; False if the process died or time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return False
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        return False

    def start_ready(self, faults: str = "", timeout: float = 60, attempts: int = 3) -> None:
        """Start and wait for /healthz, on a new port if the old one cannot be bound."""
        for _ in range(attempts):
            self.start(faults)
            if self.wait_ready(timeout):
                return
            self.kill9()
            self.port = free_port()
        raise RuntimeError(f"propel serve did not become ready:\n{self.log_tail()}")

    def kill9(self) -> int | None:
        """SIGKILL this server and its worker processes (its session's process group;
        nothing else) and reap it."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (uvicorn shuts down gracefully: the flusher stops), then SIGKILL.
        After a graceful shutdown uvicorn re-raises the signal: the code is -15."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill9()

    def last_run_log(self) -> str:
        """The output of the latest start only."""
        text = self.log_tail(chars=10_000_000)
        return text[text.rfind("\n=== start "):]

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def crash_points_fired(self) -> Counter:
        try:
            return Counter(CRASH_LINE.findall(self.log_path.read_text(errors="replace")))
        except OSError:
            return Counter()


@dataclass
class LoadContext:
    server: ServerProcess
    stopping: threading.Event
    up: threading.Event
    rng: random.Random
    index: int

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class Run:
    """One start of the server: its crash points, and how it ended."""

    faults: str
    started_at: float  # seconds since the loop began
    ready_after: float | None = None  # seconds from start to /healthz; None: never ready
    end: str = ""  # "crash" (died on its own), "kill" (by the loop), "end" (loop over)
    ended_at: float | None = None
    code: int | None = None


@dataclass
class LoopStats:
    seconds: float = 0.0
    runs: list[Run] = field(default_factory=list)
    crash_points: Counter = field(default_factory=Counter)  # from the server log
    load_errors: list[BaseException] = field(default_factory=list)

    @property
    def starts(self) -> int:
        return len(self.runs)

    @property
    def crashes(self) -> int:
        return sum(r.end == "crash" for r in self.runs)

    @property
    def kills(self) -> int:
        return sum(r.end == "kill" for r in self.runs)

    @property
    def cycles(self) -> int:
        return self.crashes + self.kills

    @property
    def start_seconds(self) -> float:
        ready = [r.ready_after for r in self.runs if r.ready_after is not None]
        return sum(ready) / len(ready) if ready else 0.0

    def describe(self) -> str:
        runs = "; ".join(f"{r.started_at:.0f}s [{r.faults or 'no faults'}] -> {r.end or '?'}"
                         for r in self.runs)
        return (f"{self.seconds:.1f}s, {self.starts} starts (ready in {self.start_seconds:.1f}s "
                f"on average), {self.crashes} crashes {dict(self.crash_points)}, "
                f"{self.kills} external kills; runs: {runs}")


def random_faults(points: Sequence[str], probabilities: dict[str, float] | None = None,
                  most: int = 2, quiet_every: int = 0) -> Callable[[random.Random, int], str]:
    """A faults chooser for KillLoop: each start arms the next point in turn (so every
    point gets its turn) plus up to ``most - 1`` random others, at the given
    probabilities (default 0.3). With ``quiet_every=n`` the first start and every n-th
    after it arm nothing, so those runs end by an external kill."""
    probabilities = probabilities or {}

    def choose(rng: random.Random, start: int) -> str:
        if quiet_every and start % quiet_every == 0:
            return ""
        turn = start - (start // quiet_every + 1 if quiet_every else 0)
        chosen = {points[turn % len(points)]}
        chosen.update(rng.sample(list(points), k=rng.randint(0, min(most, len(points)) - 1)))
        return ",".join(f"{p}={probabilities.get(p, 0.3)}" for p in sorted(chosen))

    return choose


class KillLoop:
    def __init__(self, server: ServerProcess, *, load: Sequence[Callable[[LoadContext], None]],
                 max_seconds: float, max_cycles: int = 1_000, min_cycles: int = 0,
                 hard_seconds: float | None = None,
                 faults: str | Callable[[random.Random, int], str] = "",
                 kill_every: tuple[float, float] | None = (2.0, 5.0),
                 kill_armed_after: tuple[float, float] | None = None,
                 seed: int | None = None, ready_timeout: float = 60,
                 final: str = "kill") -> None:
        """Runs for ``max_seconds`` or ``max_cycles`` deaths, whichever comes first; but
        on a slow machine (a start can take many seconds) it goes on past
        ``max_seconds`` until ``min_cycles`` deaths, never past ``hard_seconds``
        (default: twice ``max_seconds``).

        ``kill_every``: seconds after the server is ready before the loop SIGKILLs it
        (uniform in the range); None for no external kills. ``kill_armed_after``: the
        same for runs with crash points armed (default: ``kill_every``), typically
        longer, to give the crash points their chance. ``final``: what to do with the
        server at the end, "kill" (SIGKILL, under load), "stop" (SIGTERM) or "keep"."""
        self.server = server
        self.load = list(load)
        self.max_seconds = max_seconds
        self.max_cycles = max_cycles
        self.min_cycles = min_cycles
        self.hard_seconds = hard_seconds if hard_seconds is not None else 2 * max_seconds
        self.faults = faults
        self.kill_every = kill_every
        self.kill_armed_after = kill_armed_after or kill_every
        self.rng = random.Random(seed)
        self.ready_timeout = ready_timeout
        self.final = final
        self.stopping = threading.Event()
        self.up = threading.Event()
        self.stats = LoopStats()
        self._began = 0.0

    def _now(self) -> float:
        return time.monotonic() - self._began

    def _deadline(self) -> float:
        """max_seconds, or hard_seconds while fewer than min_cycles deaths were seen."""
        span = self.max_seconds if self.stats.cycles >= self.min_cycles else self.hard_seconds
        return self._began + min(span, self.hard_seconds)

    def _faults_for(self, start: int) -> str:
        return self.faults(self.rng, start) if callable(self.faults) else self.faults

    def _ended(self, run: Run, end: str, code: int | None) -> None:
        run.end, run.ended_at, run.code = end, self._now(), code

    def _start(self) -> Run | None:
        """Start a server and wait for it. A server that SIGKILLs itself while starting
        (the flusher's first pass passes crash points too) is a crash cycle like any
        other; one that exits otherwise or never answers is a start failure (a new
        port is tried, three in a row fail the run). None: out of time or cycles."""
        failures = 0
        while self.stats.cycles < self.max_cycles:
            if self.stats.runs and self._deadline() - time.monotonic() < self.stats.start_seconds:
                return None  # the server would barely be up before the end
            self.up.clear()
            run = Run(self._faults_for(self.stats.starts), self._now())
            self.stats.runs.append(run)
            self.server.start(run.faults)
            if self.server.wait_ready(self.ready_timeout):
                run.ready_after = self._now() - run.started_at
                self.up.set()
                return run
            hung = self.server.alive()
            code = self.server.kill9()
            if not hung and code == -signal.SIGKILL:
                self._ended(run, "crash", code)
                continue
            self._ended(run, "start failed", code)
            failures += 1
            if failures >= 3:
                raise RuntimeError(f"propel serve did not start:\n{self.server.log_tail()}")
            self.server.port = free_port()
        return None

    def _run_load(self, fn: Callable[[LoadContext], None], ctx: LoadContext) -> None:
        try:
            fn(ctx)
        except BaseException as exc:  # handed to the caller in stats.load_errors
            self.stats.load_errors.append(exc)

    def _start_load(self) -> list[threading.Thread]:
        threads = []
        for i, fn in enumerate(self.load):
            ctx = LoadContext(self.server, self.stopping, self.up,
                              random.Random(self.rng.random()), i)
            threads.append(threading.Thread(target=self._run_load, args=(fn, ctx),
                                            name=f"killloop-load-{i}", daemon=True))
            threads[-1].start()
        return threads

    def run(self) -> LoopStats:
        self._began = time.monotonic()
        threads: list[threading.Thread] = []
        run: Run | None = None
        try:
            while (run := self._start()) is not None:
                threads = threads or self._start_load()
                span = self.kill_armed_after if run.faults else self.kill_every
                kill_at = time.monotonic() + self.rng.uniform(*span) if span else float("inf")
                while (self.server.alive() and time.monotonic() < min(kill_at, self._deadline())
                       and not self.stats.load_errors):
                    time.sleep(0.02)
                self.up.clear()
                if not self.server.alive():
                    self._ended(run, "crash", self.server.kill9())  # kill9 reaps it
                elif self.stats.load_errors or time.monotonic() >= self._deadline():
                    break
                else:
                    self._ended(run, "kill", self.server.kill9())
        finally:
            self.up.clear()
            last = self.stats.runs[-1] if self.stats.runs else None
            if last is not None and not last.end:
                if not self.server.alive():  # died on its own just as time ran out
                    self._ended(last, "crash", self.server.kill9())
                elif self.final == "kill":  # under load: requests die in flight
                    self._ended(last, "end", self.server.kill9())
                else:
                    self._ended(last, "end", None)
            self.stopping.set()
            for t in threads:
                t.join(timeout=30)
            if self.final == "stop":
                self.server.stop()
            self.stats.seconds = self._now()
            self.stats.crash_points = self.server.crash_points_fired()
        return self.stats
