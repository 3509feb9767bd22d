"""The Users look-up page: profile, events, prediction scores with reasons, messages,
app inbox; unknown users and other accounts' users are not found."""

from __future__ import annotations

import html
import re
from urllib.parse import quote

import pytest
from sqlalchemy import select

from propel import profiles
from propel.campaigns.tables import campaigns, inbox_messages, messages
from propel.lake.events import recent_events_of
from propel.predictions.scoring import current_scores


def _received(shop, channel: str) -> tuple[str, str, str]:
    """(identity, campaign id, campaign name) of a demo user who was sent a message
    that was opened, through ``channel``."""
    with shop.propel.db.read() as conn:
        row = conn.execute(
            select(messages.c.identity, campaigns.c.id, campaigns.c.name)
            .join(campaigns, campaigns.c.id == messages.c.campaign_id)
            .where(messages.c.account_id == shop.account_id, messages.c.state == "sent",
                   messages.c.opened_at.is_not(None), campaigns.c.channel == channel)
            .order_by(messages.c.identity).limit(1)).first()
    assert row is not None, f"the demo shop sent no opened {channel} message"
    return row.identity, row.id, row.name


def _text(page) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page.text))


def test_lookup_form_has_a_labelled_identity_input(dashboard):
    page = dashboard.sign_in("viewer").get("/users")
    assert page.status_code == 200
    assert "<h1>Users</h1>" in page.text
    assert re.search(r'<label for="identity">Identity</label>', page.text)
    assert 'id="identity" name="identity"' in page.text
    assert ">Look up</button>" in page.text
    assert 'aria-current="page">Users' in page.text


def test_lookup_form_goes_to_the_users_page_with_the_identity_encoded(dashboard):
    client = dashboard.sign_in("viewer")
    response = client.get("/users", params={"identity": " a b/c?d "}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/users/" + quote("a b/c?d", safe="")


def test_blank_identity_is_asked_for_again(dashboard):
    page = dashboard.sign_in("viewer").get("/users", params={"identity": "  "})
    assert page.status_code == 422
    assert "Enter an identity" in page.text
    assert 'aria-describedby="identity-error"' in page.text


def test_user_page_shows_profile_events_scores_and_messages(dashboard, shop):
    identity, campaign_id, campaign_name = _received(shop, "email")
    client = dashboard.sign_in("viewer")
    page = client.get("/users", params={"identity": identity})  # follows the redirect
    assert page.status_code == 200
    text = _text(page)
    assert f"<h1>{html.escape(identity)}</h1>" in page.text
    stored = profiles.get_profile(shop.propel.db, shop.account_id, identity)
    assert stored is not None and stored.email and stored.email in text
    some_property = next(iter(stored.properties))
    assert some_property in text
    # events: the newest event of the user, from the lake
    [newest] = recent_events_of(shop.propel.db, shop.propel.lake, shop.account_id,
                                [identity], 1)
    assert newest["name"] in text and newest["ts"][:19].replace("T", " ") in text
    # the prediction: group, score, reasons
    [score] = [s for s in current_scores(shop.propel, shop.account_id, identity)
               if s["prediction_id"] == shop.prediction_id]
    assert f'href="/predictions/{shop.prediction_id}"' in page.text
    assert f'group-{score["group"]}">{score["group"]}<' in page.text
    assert str(score["score"]) in text
    assert score["reasons"], "the demo scores carry reasons"
    assert score["reasons"][0]["feature"] in text
    assert "the score" in text  # raises / lowers the score
    # messages: campaign link, channel and status
    row = re.search(rf'<a href="/campaigns/{campaign_id}">{re.escape(html.escape(campaign_name))}'
                    r'</a>.*?</tr>', page.text, re.S)
    assert row is not None
    assert "email" in row.group(0)
    assert re.search(r">(opened|clicked)<", row.group(0))


def test_user_page_lists_app_inbox_messages(dashboard, shop):
    identity, campaign_id, _ = _received(shop, "inbox")
    with shop.propel.db.read() as conn:
        title = conn.execute(select(inbox_messages.c.title).where(
            inbox_messages.c.account_id == shop.account_id,
            inbox_messages.c.identity == identity)).scalar()
    assert title
    page = dashboard.sign_in("viewer").get("/users/" + quote(identity, safe=""))
    assert page.status_code == 200
    inbox = page.text.split('id="inbox-h"', 1)[1].split("</section>", 1)[0]
    assert html.escape(title) in inbox
    assert f'/campaigns/{campaign_id}"' in inbox


@pytest.mark.parametrize("identity", ["nobody-here-42", "x" * 300, "a%00b"])
def test_unknown_user_is_a_clear_404(dashboard, identity):
    page = dashboard.sign_in("viewer").get("/users/" + identity)
    assert page.status_code == 404
    assert "No user" in page.text and "in this account" in page.text
    assert 'id="identity"' in page.text  # the form to try again


def test_another_accounts_user_is_not_visible(dashboard, shop):
    identity, _, _ = _received(shop, "email")
    client = dashboard.sign_in(email=shop.other_admin)
    page = client.get("/users/" + quote(identity, safe=""))
    assert page.status_code == 404
    assert f"No user {html.escape(identity)} in this account" in page.text


def test_identities_with_slashes_and_spaces_round_trip(dashboard, shop):
    from propel.ingest import native
    from propel.ingest.service import ingest_sync

    identity = f"ext/{shop.propel.settings.data_dir.parent.name} user"
    items, rejected = native.parse_all([{"identity": identity, "email": "slash@shop.example",
                                         "properties": {"plan": "gold"}}],
                                       shop.account_id, native.parse_profile)
    assert not rejected
    ingest_sync(shop.propel.db, shop.account_id, items, [], "api")
    client = dashboard.sign_in("viewer")
    page = client.get("/users", params={"identity": identity})
    assert page.status_code == 200, page.text
    assert "slash@shop.example" in page.text and "gold" in page.text
    assert "No campaign has messaged this user." in page.text


def test_user_pages_need_sign_in(dashboard):
    dashboard.client.cookies.clear()
    response = dashboard.client.get("/users/someone", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=/users/someone")
