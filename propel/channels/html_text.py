"""The plain-text part of an HTML e-mail.

Mail with HTML only scores worse with spam filters and is unreadable in text clients,
so every e-mail gets a text part: the campaign's own, or this reading of its HTML.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser


class _TextExtractor(HTMLParser):
    BLOCK = frozenset({"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "ul",
                       "ol", "section", "article", "header", "footer", "blockquote", "pre",
                       "hr", "center", "main", "nav", "aside", "dl", "dt", "dd", "form"})
    SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0
        self.links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skip += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and not self.skip:
                self.parts.append(alt)
        elif tag == "a":
            self.links.append((dict(attrs).get("href"), len(self.parts)))
        if tag in self.BLOCK:
            self.parts.append("\n\n")
        if tag == "pre":
            self.pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "a":
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skip = max(self.skip - 1, 0)
        elif tag == "a" and self.links:
            href, start = self.links.pop()
            label = "".join(self.parts[start:]).strip()
            if href and re.match(r"(?i)https?://", href) and href != label:
                self.parts.append(f" ({href})" if label else href)
        if tag == "pre":
            self.pre = max(self.pre - 1, 0)
        if tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))


def html_to_text(html: str) -> str:
    """A readable plain-text part for an HTML e-mail: paragraphs and line breaks kept,
    links as ``label (url)``, scripts and styles dropped, entities decoded."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [re.sub(r"[ \t\f\v\r]+", " ", line).strip()
             for line in "".join(parser.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
