"""pytest fixtures for the peers: each starts a real server on a free loopback port and
stops it after the test. Load with ``pytest_plugins = ["peers.fixtures"]``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import Blackhole, Certificate, self_signed
from .fcm import FcmPeer
from .smtp import SMTP_LOGIN, SmtpPeer
from .twilio import TwilioPeer
from .webhook import WEBHOOK_SECRET, WebhookReceiver


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1; its cert_file is the CA to trust."""
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def smtp_peer() -> Iterator[SmtpPeer]:
    """Plain SMTP, no AUTH."""
    with SmtpPeer() as peer:
        yield peer


@pytest.fixture
def smtp_starttls_peer(tls_cert: Certificate) -> Iterator[SmtpPeer]:
    """STARTTLS required, then AUTH required with ``SMTP_LOGIN``."""
    with SmtpPeer(mode="starttls", cert=tls_cert, credentials=SMTP_LOGIN) as peer:
        yield peer


@pytest.fixture
def smtp_tls_peer(tls_cert: Certificate) -> Iterator[SmtpPeer]:
    """Implicit TLS (like port 465), AUTH required with ``SMTP_LOGIN``."""
    with SmtpPeer(mode="tls", cert=tls_cert, credentials=SMTP_LOGIN) as peer:
        yield peer


@pytest.fixture
def webhook_peer() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(WEBHOOK_SECRET) as peer:
        yield peer


@pytest.fixture
def fcm_peer() -> Iterator[FcmPeer]:
    with FcmPeer() as peer:
        yield peer


@pytest.fixture
def twilio_peer() -> Iterator[TwilioPeer]:
    with TwilioPeer() as peer:
        yield peer


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    """Accepts TCP connections and never answers."""
    with Blackhole() as hole:
        yield hole
