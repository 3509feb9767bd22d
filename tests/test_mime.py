"""The e-mail wire format: whatever goes in comes out of a standard MIME parser the same,
7-bit clean, with no way for content to add headers."""

from __future__ import annotations

from email import message_from_bytes
from email.policy import default

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propel.channels.mime import MAX_LINE, header_line, message_bytes

HEADERS = [("From", "Shop <news@shop.test>"), ("To", "ada@example.test"),
           ("Subject", "Hello"), ("Message-ID", "<k1@shop.test>")]


def parse(raw: bytes):
    return message_from_bytes(raw, policy=default)


def content(part) -> str:
    """A part's text with CRLF line ends read as newlines, as mail clients do."""
    return part.get_content().replace("\r\n", "\n")


def with_subject(subject: str) -> list[tuple[str, str]]:
    return [(n, subject if n == "Subject" else v) for n, v in HEADERS]


def test_multipart_alternative_text_then_html() -> None:
    raw = message_bytes("k1", HEADERS, "Plain — grüße", "<p>HTML — grüße</p>")
    msg = parse(raw)
    assert raw.isascii()
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert content(msg.get_body(("plain",))) == "Plain — grüße\n"
    assert content(msg.get_body(("html",))) == "<p>HTML — grüße</p>\n"
    assert msg["MIME-Version"] == "1.0"
    assert not msg.defects and all(not p.defects for p in msg.iter_parts())


def test_text_only_is_a_single_part() -> None:
    msg = parse(message_bytes("k1", HEADERS, "just text", ""))
    assert msg.get_content_type() == "text/plain"
    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert content(msg) == "just text\n"


def test_the_same_key_gives_the_same_bytes() -> None:
    a = message_bytes("k1", HEADERS, "t", "<p>h</p>")
    assert a == message_bytes("k1", HEADERS, "t", "<p>h</p>")
    assert a != message_bytes("k2", HEADERS, "t", "<p>h</p>")


def test_boundary_never_occurs_in_a_body() -> None:
    first = message_bytes("k1", HEADERS, "t", "<p>h</p>")
    boundary = parse(first).get_boundary()
    tricky = f"--{boundary}\nnot a part"
    msg = parse(message_bytes("k1", HEADERS, tricky, "<p>h</p>"))
    assert msg.get_boundary() != boundary
    assert content(msg.get_body(("plain",))) == tricky + "\n"


@pytest.mark.parametrize("name,value", [("Subject", "a\r\nBcc: x@evil.test"),
                                        ("X-Tag", "a\nb"), ("Subject", "a\rb")])
def test_a_line_break_in_a_header_is_refused(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        header_line(name, value)


def test_long_words_stay_verbatim_and_long_lines_are_folded() -> None:
    url = "<https://shop.test/u/" + "x" * 300 + ">"
    assert header_line("List-Unsubscribe", url) == f"List-Unsubscribe: {url}\r\n".encode()
    long = " ".join(["word"] * 400)
    folded = header_line("Subject", long)
    assert all(len(line) <= MAX_LINE for line in folded.split(b"\r\n"))
    assert parse(folded + b"\r\n")["Subject"] == long


def test_non_ascii_headers_are_encoded_unless_the_relay_speaks_utf8() -> None:
    assert header_line("Subject", "Grüße").startswith(b"Subject: =?utf-8?")
    assert parse(header_line("From", "Müller <m@shop.test>") + b"\r\n")["From"] == (
        "Müller <m@shop.test>")
    assert header_line("Subject", "Grüße", utf8=True) == "Subject: Grüße\r\n".encode()


def test_body_lines_longer_than_smtp_allows_are_quoted_printable() -> None:
    text = "a" * 2000 + "\n.leading dot\n"
    raw = message_bytes("k1", HEADERS, text, "")
    assert all(len(line) <= 78 for line in raw.split(b"\r\n"))
    msg = parse(raw)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(msg) == text


@settings(max_examples=200, deadline=None)
@given(subject=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200),
       text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=400),
       html=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_through_a_standard_parser(subject: str, text: str, html: str) -> None:
    raw = message_bytes("k", with_subject(subject), text, html)
    assert raw.isascii()
    msg = parse(raw)
    assert str(msg["Subject"]) == subject.strip() or " ".join(str(msg["Subject"]).split()) == (
        " ".join(subject.split()))

    def expected(body: str) -> str:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
        return body if body.endswith("\n") else body + "\n"

    assert content(msg.get_body(("plain",))) == expected(text)
    if html:
        assert content(msg.get_body(("html",))) == expected(html)
