"""Real local peers for tests: servers on 127.0.0.1, on free ports, that speak the
protocols Propel's channels speak (SMTP, a webhook receiver, FCM HTTP v1, Twilio's
Messages API) and can be told to misbehave the way real providers do.

Channels are tested against these rather than mocks so that what is verified is what
goes over the wire: real MIME, real TLS, real connection reuse, real timeouts.

Modules:
    ``http``     HttpPeer: any ASGI app served by uvicorn in a thread
    ``smtp``     SmtpPeer: aiosmtpd, records mail, rejects / defers chosen recipients
    ``webhook``  WebhookReceiver: verifies signatures, counts idempotency keys
    ``fcm``      FcmPeer: FCM v1 messages:send plus a Google OAuth token endpoint
    ``twilio``   TwilioPeer: Twilio's Messages.json
    ``fixtures`` pytest fixtures for all of the above (use ``pytest_plugins``)

This package: ``free_port``, ``Blackhole`` (accepts connections, never answers) and
``self_signed`` (a certificate for 127.0.0.1, for TLS peers).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Blackhole:
    """A TCP server that accepts connections and never says a word: the peer that
    hangs, for testing that a channel gives up within its timeout."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blackhole", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self._conns.append(conn)  # held open, never read from or written to

    def __enter__(self) -> Blackhole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._sock.close()


@dataclass
class Certificate:
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def self_signed(folder: Path, host: str = "127.0.0.1") -> Certificate:
    """A self-signed certificate valid for ``host`` (and localhost); clients trust it
    by using ``cert_file`` as their CA bundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Certificate(cert_file, key_file)
