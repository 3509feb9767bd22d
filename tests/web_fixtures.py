"""Dashboard fixtures: a demo shop (trained and scored *Predict Conversions*, campaigns
already sent) in a real database, dashboard users in every role, and signed-in clients.

The shop is built once per test run and database (it takes seconds to build, and
every dashboard module reads it); tests that change it create their own objects with
unique names instead of relying on counts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console
from sqlalchemy import create_engine, text

from propel.accounts import create_account
from propel.accounts.users import create_user
from propel.app import create_app
from propel.core import Propel
from propel.settings import Settings

PASSWORD = "correct horse battery"
ROLES = ("admin", "marketer", "viewer")


@dataclass
class Shop:
    propel: Propel
    account_id: str
    other_account_id: str
    prediction_id: str
    emails: dict[str, str] = field(default_factory=dict)  # role -> e-mail
    other_admin: str = "admin@other.example"


def build_shop(propel: Propel, users: int = 400) -> Shop:
    from propel import predictions as preds
    from propel.demo.run import run_demo

    account_id = run_demo(propel, users=users, days=90, seed=7, account_id=None,
                          console=Console(quiet=True))
    prediction = preds.get(propel, account_id, "Predict Conversions")
    shop = Shop(propel, account_id, create_account(propel.db, "Other shop").account_id,
                prediction.id)
    for role in ROLES:
        shop.emails[role] = f"{role}@shop.example"
        create_user(propel.db, account_id, shop.emails[role], PASSWORD, role)
    create_user(propel.db, shop.other_account_id, shop.other_admin, PASSWORD, "admin")
    return shop


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres",
                                                              marks=pytest.mark.postgres)])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Shop]:
    from conftest import PG_URL

    data = tmp_path_factory.mktemp("shop")
    db_url = schema = None
    if request.param == "postgres":
        if not PG_URL:
            pytest.skip("PROPEL_TEST_POSTGRES_URL is not set")
        schema = f"w_{data.name[-8:].replace('-', '_')}_{id(data) % 100000}"
        with create_engine(PG_URL).begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in PG_URL else "?"
        db_url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    settings = Settings(data_dir=Path(data) / "data", database_url=db_url, flush_seconds=0.2,
                        secret_key="test-secret", log_format="text")
    propel = Propel(settings)
    propel.migrate()
    try:
        yield build_shop(propel)
    finally:
        propel.close()
        if schema:
            with create_engine(PG_URL).begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))


class Dashboard:
    """A TestClient on the dashboard; ``sign_in`` uses the real sign-in form."""

    def __init__(self, client: TestClient, shop: Shop) -> None:
        self.client = client
        self.shop = shop

    def sign_in(self, role: str = "marketer", email: str | None = None) -> TestClient:
        self.client.cookies.clear()
        page = self.client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        response = self.client.post("/login", data={
            "email": email or self.shop.emails[role], "password": PASSWORD,
            "csrf_token": token, "next": "/predictions"}, follow_redirects=False)
        assert response.status_code == 303, response.text
        return self.client

    def csrf(self, path: str = "/predictions") -> str:
        """The session's CSRF token, as a page carries it."""
        page = self.client.get(path)
        return re.search(r'"X-CSRF-Token": "([^"]+)"', page.text).group(1)


@pytest.fixture
def dashboard(shop: Shop) -> Iterator[Dashboard]:
    with TestClient(create_app(propel=shop.propel, background=False),
                    headers={"accept": "text/html"}) as client:
        yield Dashboard(client, shop)


class _FormReader(HTMLParser):
    """The values a browser would submit from the page's form (no button pressed)."""

    def __init__(self, form_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.form_id, self.inside = form_id, False
        self.values: list[tuple[str, str]] = []
        self.select: str | None = None
        self.options: list[tuple[str, bool]] = []
        self.textarea: str | None = None
        self.text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside:
            return
        if tag == "input" and a.get("name") and a.get("type") not in ("submit", "button"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                return
            self.values.append((a["name"], a.get("value") or ("on" if a.get("type") in (
                "checkbox", "radio") else "")))
        elif tag == "select":
            self.select, self.options = a.get("name"), []
        elif tag == "option" and self.select:
            self.options.append((a.get("value", ""), "selected" in a))
        elif tag == "textarea":
            self.textarea, self.text = a.get("name"), ""

    def handle_data(self, data):
        if self.textarea:
            self.text += data

    def handle_endtag(self, tag):
        if tag == "form":
            self.inside = False
        elif tag == "select" and self.select:
            chosen = [v for v, s in self.options if s] or [v for v, _ in self.options[:1]]
            self.values.append((self.select, chosen[0] if chosen else ""))
            self.select = None
        elif tag == "textarea" and self.textarea:
            self.values.append((self.textarea, self.text.removeprefix("\n")))
            self.textarea = None


def form_fields(html: str, form_id: str) -> list[tuple[str, str]]:
    """The (name, value) pairs a browser would submit from the form ``form_id``."""
    reader = _FormReader(form_id)
    reader.feed(html)
    return reader.values
