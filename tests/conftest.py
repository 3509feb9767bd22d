"""Shared fixtures: a real database (SQLite, and PostgreSQL when
PROPEL_TEST_POSTGRES_URL is set), a real lake in a temporary folder, accounts,
and a live HTTP server on loopback for real clients."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from propel.accounts import AccountCredentials, create_account, create_api_key
from propel.app import create_app
from propel.core import Propel
from propel.settings import Settings

pytest_plugins = ["peers.fixtures", "web_fixtures"]

PG_URL = os.environ.get("PROPEL_TEST_POSTGRES_URL")
DATABASES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=DATABASES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None means the embedded default (SQLite in the data dir)."""
    if request.param == "sqlite":
        yield None
        return
    if not PG_URL:
        pytest.skip("PROPEL_TEST_POSTGRES_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def settings(db_url: str | None, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=db_url, flush_seconds=0.2,
                    secret_key="test-secret", log_format="text")


@pytest.fixture
def propel(settings: Settings) -> Iterator[Propel]:
    p = Propel(settings)
    p.migrate()
    yield p
    p.close()


@dataclass
class Tenant:
    creds: AccountCredentials
    api_key: str

    @property
    def id(self) -> str:
        return self.creds.account_id

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    @property
    def clevertap(self) -> dict[str, str]:
        return {"X-CleverTap-Account-Id": self.creds.account_id,
                "X-CleverTap-Passcode": self.creds.passcode}

    @property
    def segment_auth(self) -> tuple[str, str]:
        return (self.creds.write_key, "")


def make_tenant(propel: Propel, name: str = "Shop") -> Tenant:
    creds = create_account(propel.db, name)
    _, token = create_api_key(propel.db, creds.account_id)
    return Tenant(creds, token)


@pytest.fixture
def tenant(propel: Propel) -> Tenant:
    return make_tenant(propel, "Shop")


@pytest.fixture
def other_tenant(propel: Propel) -> Tenant:
    return make_tenant(propel, "Other")


@pytest.fixture
def client(propel: Propel) -> Iterator[TestClient]:
    with TestClient(create_app(propel=propel, background=False)) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, propel: Propel, background: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(create_app(propel=propel, background=background),
                                host="127.0.0.1", port=self.port, log_config=None,
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("live server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def live_server(propel: Propel) -> Iterator[LiveServer]:
    with LiveServer(propel) as server:
        yield server


@pytest.fixture
def cli(propel: Propel, tenant: Tenant):
    """cli(*args, account=...) -> (exit code, stdout, stderr with whitespace folded): the
    ``propel`` command against this test's database (SQLite or PostgreSQL) and lake."""
    from typer.testing import CliRunner

    from propel.cli import app

    env = {"PROPEL_DATA_DIR": str(propel.settings.data_dir), "PROPEL_ACCOUNT": tenant.id,
           "PROPEL_DATABASE_URL": propel.settings.database_url or "",
           "PROPEL_SECRET_KEY": "test-secret", "PROPEL_LOG_FORMAT": "text",
           "PROPEL_FAULTS": "", "COLUMNS": "200"}

    def run(*args: str, account: str | None = None) -> tuple[int, str, str]:
        result = CliRunner().invoke(app, list(args), env={
            **env, "PROPEL_ACCOUNT": tenant.id if account is None else account})
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception  # a traceback is never the answer
        return result.exit_code, result.stdout, " ".join(result.stderr.split())

    return run


@pytest.fixture
def berlin_time() -> Iterator[None]:
    """The process's local time zone is Europe/Berlin (one hour ahead of UTC), so a
    date read in local time instead of UTC lands on another day."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()
