"""Browser tests: Debian's Chromium, driven by Playwright, against a live ``propel serve``.

One server runs for the whole browser suite. It is seeded the way a new user starts
after the README's quick start: ``propel demo`` (a shop with a trained and scored
*Predict Conversions* and three sent campaigns), then dashboard users in every role
created with ``propel users create``. The account's e-mail channel points at a real
local SMTP server, so sent e-mails can be read back.

``PROPEL_CHROMIUM`` overrides the browser executable; ``PROPEL_TEST_OUTPUT`` the folder
that receives a full-page screenshot of every failing test and the server's log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from peers import free_port
from peers.smtp import SmtpPeer

from .helpers import PASSWORD, Server

CHROMIUM = os.environ.get("PROPEL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
HERE = Path(__file__).parent
OUTPUT = Path(os.environ.get("PROPEL_TEST_OUTPUT") or HERE / "output")


try:
    import playwright.sync_api  # noqa: F401
except ImportError:  # the test modules import it; without it there is nothing to run
    collect_ignore_glob = ["test_*.py"]


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (install Debian's chromium or set " \
               "PROPEL_CHROMIUM)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _missing()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    page = getattr(item, "funcargs", {}).get("page")
    if report.failed and report.when in ("setup", "call") and page is not None:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid.split("::", 1)[-1])
        try:
            page.screenshot(path=str(OUTPUT / f"{name}.png"), full_page=True)
        except Exception as exc:  # a crashed page must not hide the test's own failure
            report.sections.append(("screenshot", f"no screenshot: {exc}"))


# -- the server -------------------------------------------------------------------------

def _propel_cmd() -> list[str]:
    return [sys.executable, "-m", "propel"]


def _start(env: dict[str, str], *args: str, stdin: str | None = None
           ) -> tuple[subprocess.Popen, tuple[str, ...], str | None]:
    process = subprocess.Popen([*_propel_cmd(), *args], env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    return process, args, stdin


def _finish(started: tuple[subprocess.Popen, tuple[str, ...], str | None],
            timeout: float = 300) -> str:
    process, args, stdin = started
    out, err = process.communicate(stdin, timeout=timeout)
    if process.returncode != 0:
        raise RuntimeError(f"propel {' '.join(args)} failed ({process.returncode}):\n"
                           f"{out}\n{err}")
    return out


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> str:
    return _finish(_start(env, *args), timeout)


def _environment(data_dir: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROPEL_")}
    env.update(PROPEL_DATA_DIR=str(data_dir), PROPEL_PUBLIC_URL=url,
               PROPEL_SECRET_KEY="browser-test-secret", PROPEL_LOG_FORMAT="text",
               COLUMNS="200", NO_COLOR="1")
    return env


def _inbox_credentials(data_dir: Path) -> tuple[str, str]:
    """The account's app inbox client key and signing secret (what an app's server holds)."""
    from propel.accounts import inbox_credentials
    from propel.core import Propel
    from propel.settings import Settings

    with Propel(Settings(data_dir=data_dir, database_url=None, lake_uri=None,
                         redis_url=None, secret_key="browser-test-secret")) as propel:
        account = _account_of(propel)
        creds = inbox_credentials(propel.db, account)
    return creds.client_key, creds.signing_secret


def _account_of(propel: Any) -> str:
    from propel.accounts import list_accounts

    return next(a.id for a in list_accounts(propel.db) if a.name == "Propel Demo Shop")


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = 90
                  ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"propel serve exited ({process.returncode}):\n"
                               f"{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"propel serve not healthy after {timeout}s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="package")
def smtp() -> Iterator[SmtpPeer]:
    with SmtpPeer() as peer:
        yield peer


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpPeer) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("propel-browser")
    data_dir = root / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _environment(data_dir, url)
    out = _run(env, "demo", "--users", "400", "--days", "90")
    found = re.search(r"into account (\S+?)\.?\s", out)
    assert found, f"no account id in the demo's output:\n{out}"
    account_id = found.group(1)
    env["PROPEL_ACCOUNT"] = account_id
    log = root / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*_propel_cmd(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        emails = {role: f"{role}@shop.example" for role in ("admin", "marketer", "viewer")}
        # Each command pays Python's start-up; running them side by side saves the wait.
        commands = [_start(env, "users", "create", email, "--role", role, "--password-stdin",
                           stdin=PASSWORD + "\n") for role, email in emails.items()]
        commands.append(_start(env, "channels", "set", "email", json.dumps({
            "host": smtp.host, "port": smtp.port, "security": "none",
            "from_address": "Shop <shop@shop.example>"})))
        key = _start(env, "keys", "create", "--name", "browser", "--json")
        client_key, inbox_secret = _inbox_credentials(data_dir)
        for command in commands:
            _finish(command)
        api_key = json.loads(_finish(key))["api_key"]
        _wait_healthy(url, process, log)
        server = Server(url=url, account_id=account_id, api_key=api_key, emails=emails,
                        client_key=client_key, inbox_secret=inbox_secret, smtp=smtp, log=log)
        server.prediction_id = server.prediction("Predict Conversions")["id"]
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        # The server's log sits next to the screenshots, for reading a failure after.
        OUTPUT.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, OUTPUT / "serve.log")


# -- the browser ------------------------------------------------------------------------

@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser: Any, server: Server) -> Iterator[Any]:
    ctx = browser.new_context(base_url=server.url, viewport={"width": 1366, "height": 768},
                              bypass_csp=True)
    ctx.set_default_timeout(15_000)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any) -> Any:
    return context.new_page()
