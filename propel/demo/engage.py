"""The demo's last act: engage Predict Conversions' High, Medium and Low groups (e-mail
to a local SMTP sink, app inbox, webhook to a local sink), simulate how the synthetic
users respond, and report the lift over the holdout per group.

The simulation is the only made-up part, and it is stated: a user converts (places an
order) within the attribution window with their own weekly purchase probability; a
user who was actually messaged converts with an extra ``UPLIFT × responsiveness``
(responsiveness is a latent trait of the synthetic users). Everything else — audience,
holdout, delivery, tracking, attribution, the lift and its interval — is Propel's real
machinery, so the measured lift can be checked against the known true one.
"""

from __future__ import annotations

import secrets
import socket
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table
from sqlalchemy import select, update

from propel.campaigns import service
from propel.campaigns.delivery import DeliveryEngine
from propel.campaigns.dispatch import dispatch_campaign, finish_dispatches
from propel.campaigns.engage import engage
from propel.campaigns.tables import dispatches, messages
from propel.core import Propel
from propel.demo.synth import purchase_probability
from propel.ingest.records import EventRecord, IngestItem, key_hash
from propel.ingest.service import ingest_sync
from propel.serving import run_event_loop

UPLIFT = 0.5  # extra conversion probability per unit of responsiveness, if messaged
CHANNEL_BY_GROUP = {"High": "email", "Medium": "inbox", "Low": "webhook"}


class _Sinks:
    """A local SMTP server and webhook receiver that count what arrives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.mails: list[Any] = []
        self.hooks: list[bytes] = []
        sink = self

        class Handler:
            async def handle_EHLO(self, server: Any, session: Any, envelope: Any,  # noqa: N802
                                  hostname: str, responses: list[str]) -> list[str]:
                # aiosmtpd serves pipelined commands in order; offering PIPELINING, as
                # production relays do, lets the demo send the way Propel sends to them.
                session.host_name = hostname
                return [*responses[:-1], "250-PIPELINING", responses[-1]]

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                sink.mails.append(envelope)
                return "250 OK"

        self.smtp_port = _free_port()
        self.smtp = Controller(Handler(), hostname="127.0.0.1", port=self.smtp_port)
        self.smtp.start()

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                sink.hooks.append(self.rfile.read(int(self.headers.get("content-length", 0))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.smtp.stop()
        self.http.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _configure(propel: Propel, account_id: str, sinks: _Sinks) -> None:
    from propel.channels.registry import set_config

    set_config(propel.db, account_id, "email", {
        "host": "127.0.0.1", "port": sinks.smtp_port, "security": "none",
        "from_address": "Propel Demo <demo@shop.example>"})
    set_config(propel.db, account_id, "webhook", {
        "url": f"http://127.0.0.1:{sinks.http.server_address[1]}/propel",
        "secret": secrets.token_urlsafe(24)})


def _deliver(propel: Propel) -> int:
    return run_event_loop(DeliveryEngine(propel).drain(), propel.settings)


def _simulate(propel: Propel, account_id: str, campaign_ids: list[str], traits: Any,
              seed: int) -> dict[str, float]:
    """Backdate the runs by a day and play out opens, clicks and orders; returns the
    true intent-to-treat uplift per group (what the lift should estimate)."""
    from propel.campaigns.tracking import mark_clicked, mark_opened

    rng = np.random.default_rng(seed)
    ident = traits.column("identity").to_pylist()
    base = dict(zip(ident, purchase_probability(traits, 7), strict=True))
    resp = dict(zip(ident, traits.column("responsiveness").to_numpy(), strict=True))
    start = datetime.now(UTC) - timedelta(days=1)
    truth: dict[str, list[float]] = {}
    items = []
    with propel.db.read() as conn:
        rows = conn.execute(select(messages.c.key, messages.c.identity, messages.c.state,
                                   messages.c.grp, messages.c.campaign_id).where(
            messages.c.campaign_id.in_(campaign_ids))).all()
    opened, clicked = [], []
    for key, who, state, grp, _ in rows:
        delivered = state == "sent"
        extra = UPLIFT * resp.get(who, 0.0) * (1 - base.get(who, 0.0)) if delivered else 0.0
        if state != "holdout":
            truth.setdefault(grp or "all", []).append(extra)
        if delivered and rng.random() < min(0.9, 0.25 + 2 * resp.get(who, 0.0)):
            opened.append(key)
            if rng.random() < min(0.9, 3 * resp.get(who, 0.0)):
                clicked.append(key)
        if rng.random() < base.get(who, 0.0) + extra:
            at = start + timedelta(hours=float(rng.uniform(0.5, 20)))
            mid = f"demo-order:{key}"
            props = {"amount": round(float(rng.gamma(2.0, 30.0)) + 5, 2), "currency": "USD"}
            items.append(IngestItem(key_hash(account_id, mid), event=EventRecord(
                message_id=mid, identity=who, name="Charged", ts=int(at.timestamp() * 1e6),
                properties=orjson.dumps(props).decode())))

    def _apply(conn: Any) -> None:
        conn.execute(update(dispatches).where(dispatches.c.campaign_id.in_(campaign_ids))
                     .values(started_at=start))
        conn.execute(update(messages).where(messages.c.campaign_id.in_(campaign_ids),
                                            messages.c.state == "sent").values(
            sent_at=start + timedelta(minutes=1)))
        for key in opened:
            mark_opened(conn, key)
        for key in clicked:
            mark_clicked(conn, key)

    propel.db.write(_apply)
    ingest_sync(propel.db, account_id, items, [], "demo")
    return {g: float(np.mean(v)) for g, v in truth.items() if v}


def engage_demo(propel: Propel, account_id: str, prediction: Any, traits: Any, seed: int,
                console: Console) -> list[str]:
    from propel.campaigns.attribution import attribute_conversions
    from propel.campaigns.stats import campaign_stats

    sinks = _Sinks()
    try:
        _configure(propel, account_id, sinks)
        made = []
        for group, channel in CHANNEL_BY_GROUP.items():
            (campaign,) = engage(propel, prediction, [group], channel=channel, holdout_pct=0.2)
            service.publish(propel, account_id, campaign.id)
            dispatch_campaign(propel, account_id, campaign.id)
            made.append(campaign)
        with console.status("sending…"):
            sent = _deliver(propel)
            finish_dispatches(propel)
        console.print(f"Sent {sent:,} messages: {len(sinks.mails):,} e-mails reached the local "
                      f"SMTP server, {len(sinks.hooks):,} webhooks reached the local receiver; "
                      "the rest are in app inboxes.")
    finally:
        sinks.close()
    ids = [c.id for c in made]
    truth = _simulate(propel, account_id, ids, traits, seed)
    table = Table("group", "channel", "targeted", "holdout", "sent", "opened", "clicked",
                  "conv. messaged", "conv. holdout", "lift (95% CI)", "true uplift",
                  title="Engagement results (lift is intent-to-treat, Newcombe interval)")
    for campaign in made:
        attribute_conversions(propel, campaign.id)
        stats = campaign_stats(propel.db, campaign.id)
        group = campaign.audience["value"][0]
        t, lift = stats["totals"], stats["lift"]
        table.add_row(group, campaign.channel, f"{t['targeted']:,}", f"{t['holdout']:,}",
                      f"{t['sent']:,}", f"{t['opened']:,}", f"{t['clicked']:,}",
                      _rate(lift["treated_rate"]), _rate(lift["holdout_rate"]),
                      f"{lift['diff']:+.1%} ({lift['low']:+.1%} … {lift['high']:+.1%})"
                      if lift["diff"] is not None else "-", f"{truth.get(group, 0.0):+.1%}")
    console.print(table)
    console.print("Full stats: propel campaigns stats CAMPAIGN_ID (or the API's "
                  "/api/v1/campaigns/{id}/stats); campaigns: " + ", ".join(ids))
    return ids


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
