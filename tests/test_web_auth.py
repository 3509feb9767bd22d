"""Dashboard sign-in, sessions, roles, CSRF and throttling, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner
from web_fixtures import PASSWORD

from propel.accounts.users import SignInError, create_user, session_for, sign_in
from propel.cli import app as cli


def _login_token(client) -> str:
    page = client.get("/login")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


def test_pages_need_sign_in_and_return_after_it(dashboard):
    client = dashboard.client
    response = client.get("/predictions?x=1", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/predictions%3Fx%3D1"
    htmx = client.get("/predictions", headers={"hx-request": "true"}, follow_redirects=False)
    assert htmx.status_code == 401 and htmx.headers["hx-redirect"].startswith("/login")


def test_sign_in_sets_a_safe_cookie_and_sign_out_ends_the_session(dashboard):
    client = dashboard.sign_in("viewer")
    cookie = next(c for c in client.cookies.jar if c.name == "propel_session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert client.get("/predictions").status_code == 200
    token = dashboard.csrf()
    out = client.post("/logout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303
    client.cookies.set("propel_session", cookie.value)  # a stolen, signed-out cookie
    assert client.get("/predictions", follow_redirects=False).status_code == 303


def test_wrong_password_is_refused_without_saying_which_part_was_wrong(dashboard):
    client = dashboard.client
    token = _login_token(client)
    for email in ("viewer@shop.example", "nobody@shop.example"):
        response = client.post("/login", data={"email": email, "password": "wrong password",
                                               "csrf_token": token})
        assert response.status_code == 401
        assert "e-mail or password is not correct" in response.text
        assert "propel_session" not in response.cookies


def test_sign_in_form_without_its_token_is_refused(dashboard):
    client = dashboard.client
    client.get("/login")
    response = client.post("/login", data={"email": dashboard.shop.emails["viewer"],
                                           "password": PASSWORD, "csrf_token": "forged"})
    assert response.status_code == 403 and "expired" in response.text


def test_open_redirects_are_refused(dashboard):
    client = dashboard.client
    token = _login_token(client)
    response = client.post("/login", data={
        "email": dashboard.shop.emails["viewer"], "password": PASSWORD, "csrf_token": token,
        "next": "//evil.example/"}, follow_redirects=False)
    assert response.headers["location"] == "/predictions"


def test_unsafe_requests_without_the_csrf_token_are_refused(dashboard):
    client = dashboard.sign_in("admin")
    response = client.post("/logout", data={})
    assert response.status_code == 403 and "security token" in response.text
    response = client.post("/logout", data={"csrf_token": "not-the-token"})
    assert response.status_code == 403
    assert client.get("/predictions").status_code == 200  # still signed in


def test_throttling_locks_an_email_after_repeated_failures(shop):
    email = f"throttle-{shop.propel.settings.data_dir.name}@shop.example"
    create_user(shop.propel.db, shop.account_id, email, PASSWORD, "viewer")
    for attempt in range(5):
        with pytest.raises(SignInError, match="not correct"):
            sign_in(shop.propel.db, email, "bad guess", f"10.0.0.{attempt}")
    with pytest.raises(SignInError, match="too many failed sign-ins"):
        sign_in(shop.propel.db, email, PASSWORD, "10.0.1.1")


def test_throttling_locks_a_client_address_guessing_across_emails(shop):
    for n in range(5):
        with pytest.raises(SignInError):
            sign_in(shop.propel.db, f"guess{n}@shop.example", "bad", "192.0.2.77")
    with pytest.raises(SignInError, match="too many"):
        sign_in(shop.propel.db, shop.emails["viewer"], PASSWORD, "192.0.2.77")
    assert sign_in(shop.propel.db, shop.emails["viewer"], PASSWORD, "192.0.2.78").user


@pytest.mark.parametrize(("email", "password", "role", "message"), [
    ("not-an-email", PASSWORD, "viewer", "not a valid address"),
    ("short@shop.example", "short", "viewer", "at least 10 characters"),
    ("role@shop.example", PASSWORD, "owner", "role must be one of"),
])
def test_create_user_rejects_bad_input(shop, email, password, role, message):
    with pytest.raises(ValueError, match=message):
        create_user(shop.propel.db, shop.account_id, email, password, role)


def test_cli_creates_a_user_from_stdin_and_refuses_duplicates(shop, monkeypatch):
    settings = shop.propel.settings
    monkeypatch.setenv("PROPEL_DATA_DIR", str(settings.data_dir))
    if settings.database_url:
        monkeypatch.setenv("PROPEL_DATABASE_URL", settings.database_url)
    email = f"cli-{settings.data_dir.parent.name}@shop.example"
    args = ["users", "create", email, "--role", "viewer", "--account", shop.account_id,
            "--password-stdin"]
    result = CliRunner().invoke(cli, args, input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert sign_in(shop.propel.db, email, PASSWORD, "cli").user.role == "viewer"
    again = CliRunner().invoke(cli, args, input=PASSWORD + "\n")
    assert again.exit_code == 2 and "exists already" in again.output


def test_first_run_login_page_tells_how_to_create_a_user(client):
    page = client.get("/login")
    assert "propel users create" in page.text


def test_demo_admin_gets_a_fresh_password_on_every_run_and_old_sessions_end(shop):
    from propel.demo.run import demo_admin

    email, first = demo_admin(shop.propel, shop.account_id)
    session = sign_in(shop.propel.db, email, first, "demo")
    assert session.user.role == "admin" and session.user.account_id == shop.account_id
    again, second = demo_admin(shop.propel, shop.account_id)
    assert again == email and second != first
    assert session_for(shop.propel.db, session.token) is None
    with pytest.raises(SignInError):
        sign_in(shop.propel.db, email, first, "demo")
    assert sign_in(shop.propel.db, email, second, "demo").user.email == email
