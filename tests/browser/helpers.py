"""What the browser tests share: the live server's handles (JSON API, app inbox API,
the SMTP server's mailbox), signing in, and reading the pages' tables."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from peers.smtp import ReceivedMail, SmtpPeer

PASSWORD = "correct horse battery staple"
PREDICTION = "Predict Conversions"
AXE = Path(__file__).parent / "axe-core" / "axe.min.js"


def token() -> str:
    """A unique word to find this test's campaign, message or e-mail by."""
    return "t" + secrets.token_hex(4)


@dataclass
class Server:
    url: str
    account_id: str
    api_key: str
    emails: dict[str, str]
    client_key: str
    inbox_secret: str
    smtp: SmtpPeer
    log: Path
    prediction_id: str = ""
    _http: httpx.Client | None = field(default=None, repr=False)

    # -- JSON API --------------------------------------------------------------------

    @property
    def http(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=30, headers={
                "Authorization": f"Bearer {self.api_key}"})
        return self._http

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    def prediction(self, name: str) -> dict[str, Any]:
        found = [p for p in self.api("GET", "/api/v1/predictions")["predictions"]
                 if p["name"] == name]
        assert found, f"no prediction {name!r}"
        return found[0]

    def group_rule(self, *groups: str) -> dict[str, Any]:
        return {"or": [{"property": PREDICTION, "op": "=", "value": g} for g in groups]}

    def audience_count(self, rule: dict[str, Any]) -> int:
        return int(self.api("POST", "/api/v1/audiences/count", json={"audience": rule})["count"])

    def members(self, rule: dict[str, Any], limit: int = 200) -> list[dict[str, Any]]:
        return self.api("POST", "/api/v1/audiences/preview",
                        json={"audience": rule, "limit": limit})["users"]

    def campaigns(self) -> list[dict[str, Any]]:
        return self.api("GET", "/api/v1/campaigns")["campaigns"]

    def campaign_named(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.campaigns() if c["name"] == name), None)

    def user(self, identity: str) -> dict[str, Any]:
        return self.api("GET", f"/api/v1/users/{identity}")

    # -- app inbox API (as the app's client would call it) -----------------------------

    def inbox(self, identity: str) -> list[dict[str, Any]]:
        from propel.accounts import user_signature

        r = httpx.get(f"{self.url}/inbox/v1/messages", timeout=30, headers={
            "X-Propel-Client-Key": self.client_key, "X-Propel-User": identity,
            "X-Propel-User-Signature": user_signature(self.inbox_secret, identity)})
        assert r.status_code == 200, f"inbox of {identity}: {r.status_code} {r.text}"
        return r.json()["messages"]

    def wait_for_inbox(self, identities: list[str], word: str, timeout: float = 90
                       ) -> tuple[str, dict[str, Any]]:
        """The first of ``identities`` whose inbox holds a message with ``word`` in its
        title, and that message."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for identity in identities[:15]:
                for message in self.inbox(identity):
                    if word in (message["title"] or ""):
                        return identity, message
            time.sleep(0.5)
        raise AssertionError(f"no inbox message with {word!r} for any of {identities[:15]} "
                             f"within {timeout}s")

    # -- the SMTP server's mailbox -----------------------------------------------------

    def mails_with(self, word: str) -> list[ReceivedMail]:
        return [m for m in list(self.smtp.received) if word in str(m.message["Subject"])]

    def wait_for_mails(self, word: str, timeout: float = 90) -> list[ReceivedMail]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mails_with(word):
                time.sleep(1)  # let the rest of the batch arrive
                return self.mails_with(word)
            time.sleep(0.5)
        raise AssertionError(f"no e-mail with {word!r} in its subject within {timeout}s")


# -- pages ------------------------------------------------------------------------------

def sign_in(page: Any, server: Server, role: str, next_path: str = "") -> None:
    from playwright.sync_api import expect

    page.goto("/login" + (f"?next={next_path}" if next_path else ""))
    page.get_by_label("E-mail").fill(server.emails[role])
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(re.compile(r"/login"))


def number(text: str) -> int:
    """The first whole number in a cell's text ("1,234 (95.1%)" → 1234)."""
    found = re.search(r"\d[\d,]*", text)
    assert found, f"no number in {text!r}"
    return int(found.group(0).replace(",", ""))


def funnel(page: Any, stage: str) -> int:
    """The count in the row headed ``stage`` of the table captioned "Funnel"."""
    table = page.get_by_role("table", name="Funnel")
    row = table.get_by_role("row").filter(
        has=page.get_by_role("rowheader", name=stage, exact=True))
    return number(row.get_by_role("cell").first.inner_text())


def wait_for_funnel(page: Any, stage: str, minimum: int = 1, timeout: float = 45) -> int:
    """Wait, without reloading, until the stats page's funnel shows ``stage`` at
    ``minimum`` or more: while a campaign sends, the page refreshes its numbers itself."""
    deadline = time.monotonic() + timeout
    seen = funnel(page, stage)
    while seen < minimum and time.monotonic() < deadline:
        page.wait_for_timeout(500)
        seen = funnel(page, stage)
    assert seen >= minimum, f"funnel {stage!r} stayed at {seen} for {timeout}s without " \
        "a reload (the stats region should refresh itself while the campaign sends)"
    return seen


def csrf_token(page: Any) -> str:
    """The signed-in page's CSRF token (the sign-out form carries it)."""
    value = page.locator("form[action='/logout'] input[name='csrf_token']").get_attribute(
        "value")
    assert value, "no CSRF token on the page"
    return value


def axe_violations(page: Any, impacts: tuple[str, ...] = ("serious", "critical")) -> list[str]:
    """axe-core's violations of the given impacts, one line each (rule, impact, help and
    the offending nodes' selectors and HTML)."""
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate("""async () => {
        const result = await axe.run(document, {resultTypes: ['violations']});
        return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map(n => n.target.join(' ') + '  ' + n.html.slice(0, 160))}));
    }""")
    return [f"{v['id']} ({v['impact']}): {v['help']}\n      " + "\n      ".join(v["nodes"][:8])
            for v in violations if v["impact"] in impacts]


def horizontal_overflow(page: Any) -> str | None:
    """None when the page does not scroll sideways; else the widths and the widest
    elements that stick out of the viewport."""
    info = page.evaluate("""() => {
        const width = window.innerWidth;
        const scroll = document.documentElement.scrollWidth;
        const out = [];
        for (const el of document.querySelectorAll('body *')) {
            const r = el.getBoundingClientRect();
            if (r.right > width + 1 && r.width > 0) {
                const id = el.id ? '#' + el.id : '';
                const cls = el.className && typeof el.className === 'string'
                    ? '.' + el.className.trim().split(/\\s+/).join('.') : '';
                out.push(el.tagName.toLowerCase() + id + cls + ' right=' + Math.round(r.right));
            }
        }
        return {width, scroll, out: out.slice(0, 10)};
    }""")
    if info["scroll"] <= info["width"]:
        return None
    return (f"scrollWidth {info['scroll']} > innerWidth {info['width']}; "
            f"overflowing: {info['out']}")
