"""The bytes of an e-mail exactly as they go on the wire.

Built directly instead of through the standard library's ``EmailMessage``, whose
header registry parses and refolds every header of every message: about a millisecond
of CPU each, more than everything else delivery does for a message. Here a plain ASCII
header is written as it is, and only a header that needs it (non-ASCII text, a line
longer than SMTP allows) goes through the standard library's folder, which encodes it
as RFC 2047 encoded-words (or leaves UTF-8 as it is when the relay speaks SMTPUTF8).

Bodies are 7-bit clean — plain ASCII as it is, anything else quoted-printable — so
they pass any relay unchanged and a DKIM signature over them survives relays without
8BITMIME. Lines end in CRLF; dot-stuffing is the SMTP client's job.
"""

from __future__ import annotations

import binascii
import hashlib
from email.policy import EmailPolicy

MAX_LINE = 998  # RFC 5322 2.1.1, without the CRLF


# The standard folder, for the headers that need it.
_POLICIES = {utf8: EmailPolicy(linesep="\r\n", utf8=utf8) for utf8 in (False, True)}


def header_line(name: str, value: str, *, utf8: bool = False) -> bytes:
    """One header as wire bytes. ``ValueError`` for a value with a line break: that
    would let content inject headers."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {name} header contains a line break")
    if value.isascii() or utf8:
        line = f"{name}: {value}\r\n"
        # A long word (a signed URL in List-Unsubscribe) must stay verbatim: the
        # standard folder would turn it into an encoded-word and break the link.
        if len(line) <= MAX_LINE + 2:
            return line.encode("utf-8")
    policy = _POLICIES[utf8]
    folded = policy.header_factory(name, value).fold(policy=policy)
    return folded.encode("utf-8" if utf8 else "ascii")


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def body_part(text: str, subtype: str) -> tuple[bytes, bytes]:
    """(content headers, encoded body) of one text part."""
    text = _lines(text)
    if not text.endswith("\n"):
        text += "\n"
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\n'.encode()
    if text.isascii() and all(len(line) <= MAX_LINE for line in text.split("\n")):
        body = text.replace("\n", "\r\n").encode("ascii")
        return head + b"Content-Transfer-Encoding: 7bit\r\n", body
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    return (head + b"Content-Transfer-Encoding: quoted-printable\r\n",
            encoded.replace(b"\n", b"\r\n"))


def _boundary(key: str, bodies: list[bytes]) -> bytes:
    """Derived from the message key, so a resend is byte-for-byte the same message
    (but for its Date); ``=_`` cannot occur in quoted-printable text."""
    digest = hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
    boundary = f"=_propel_{digest}".encode()
    while any(boundary in body for body in bodies):
        boundary += b"_"
    return boundary


def message_bytes(key: str, headers: list[tuple[str, str]], text: str, html: str, *,
                  utf8: bool = False) -> bytes:
    """The whole message: ``headers`` in order, then MIME-Version and the body, which
    is multipart/alternative (text, then HTML) when there is HTML."""
    out = [header_line(name, value, utf8=utf8) for name, value in headers]
    out.append(b"MIME-Version: 1.0\r\n")
    if not html:
        head, body = body_part(text, "plain")
        out += [head, b"\r\n", body]
        return b"".join(out)
    parts = [body_part(text, "plain"), body_part(html, "html")]
    boundary = _boundary(key, [body for _, body in parts])
    out.append(b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n')
    # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1), hence one
    # after each body, which ends in its own.
    for head, body in parts:
        out += [b"--", boundary, b"\r\n", head, b"\r\n", body, b"\r\n"]
    out += [b"--", boundary, b"--\r\n"]
    return b"".join(out)
