"""Personalised message content: Jinja2 templates rendered for one user.

A campaign's content is ``{"variants": [{"name", "split", <channel fields>}, ...]}``.
Every field is a template that sees::

    user         {identity, email, phone, timezone, ...profile properties}
    predictions  {name: {"group", "score"}}
    event        {...properties of the triggering event} (empty when there is none)
    campaign     {"name"}
    unsubscribe_url   the message's unsubscribe page (e-mail), when the sender gives it

so ``{{ user.first_name | default("there") }}`` and
``{{ predictions["Predict Conversions"].group | default("") }}`` work.

Two modes, one grammar:

* :func:`propel.campaigns.content_validation.validate_content` (at save time) parses
  every field, refuses constructs the sandbox forbids, and renders each field against
  sample users (:func:`sample_contexts`) — a typical one and one with nothing but an
  identity and the channel's address — with *strict* undefined values: printing or
  computing with a value some user lacks is an error, unless it goes through
  ``default`` (or a test such as ``is defined`` / ``if``). Errors name the variant, the
  field and the template line.
* :func:`render` (at send time) never raises: a missing value prints as empty, and a
  field that still fails for one user's data (say, a loop over a number, or arithmetic
  on a text property) is logged and rendered again without that user's properties,
  predictions and event — as for the minimal sample user, which validation proved
  works — and left empty only if even that fails (an unvalidated template). HTML fields
  are auto-escaped; text fields are not.

This module owns the template context (:func:`build_context`, the sample users),
rendering, :func:`preview` and the choice of A/B variant (:func:`choose_variant`).
Templates run in the sandbox of :mod:`propel.campaigns.sandbox`, which bounds the work
and output of each one.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from propel.campaigns.sandbox import run_template
from propel.channels.html_text import html_to_text

log = logging.getLogger("propel.render")

# Fields per channel, in output order. ``data`` is an object of string templates.
FIELDS: dict[str, tuple[str, ...]] = {
    "email": ("subject", "html", "text"),
    "push": ("title", "body", "url", "data"),
    "sms": ("body",),
    "inbox": ("title", "body", "url", "data"),
    "webhook": ("title", "body", "url", "data"),
}
HTML_FIELDS = frozenset({"html"})
SINGLE_LINE = frozenset({"subject", "title", "url"})
_UNSAFE_SCHEMES = ("javascript:", "data:", "vbscript:", "file:")


# ---------------------------------------------------------------------------- context

class _Context(dict):
    """A context :func:`build_context` already cleaned: :func:`render` uses it as is."""


def clean_value(value: Any, depth: int = 0) -> Any:
    """Drop None-valued keys (so they count as missing) and copy mappings."""
    if isinstance(value, Mapping) and depth < 8:
        return {str(k): clean_value(v, depth + 1) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple) and depth < 8:
        return [clean_value(v, depth + 1) for v in value]
    return value


def _predictions(scores: Any) -> dict[str, dict[str, Any]]:
    """{name: {group, score}} from that mapping itself or from ``current_scores`` rows."""
    if isinstance(scores, Mapping):
        return {str(k): dict(v) for k, v in scores.items() if isinstance(v, Mapping)}
    out: dict[str, dict[str, Any]] = {}
    for row in scores or ():
        if isinstance(row, Mapping) and row.get("prediction"):
            out[str(row["prediction"])] = {"group": row.get("group"), "score": row.get("score")}
    return out


def build_context(user: Any = None, *, predictions: Any = None,
                  event: Mapping[str, Any] | None = None, campaign_name: str = "",
                  unsubscribe_url: str | None = None) -> dict[str, Any]:
    """The template context for one user.

    ``user``: a :class:`propel.profiles.Profile`, a profile row (``properties`` as JSON
    text) or a plain mapping of user fields. ``predictions``: ``{name: {group, score}}``
    or the rows of ``propel.predictions.scoring.current_scores``.
    """
    fields: dict[str, Any] = {}
    if isinstance(user, Mapping):
        fields = dict(user)
    elif user is not None:
        props = getattr(user, "properties", None) or {}
        if isinstance(props, str):
            import orjson

            try:
                props = orjson.loads(props)
            except orjson.JSONDecodeError:
                props = {}
        fields = {**(props if isinstance(props, Mapping) else {}),
                  **{name: getattr(user, name, None)
                     for name in ("identity", "email", "phone", "timezone")}}
    return _Context(clean_value({"user": fields, "predictions": _predictions(predictions),
                            "event": dict(event or {}), "campaign": {"name": campaign_name},
                            "unsubscribe_url": unsubscribe_url}))


_SAMPLE_UNSUBSCRIBE = "https://propel.example.com/u/sample-token"


def _typical(channel: str) -> dict[str, Any]:
    return build_context(
        {"identity": "sample-user-1042", "email": "ada@example.com", "phone": "+14155550123",
         "timezone": "Europe/London", "first_name": "Ada", "last_name": "Lovelace",
         "name": "Ada Lovelace", "city": "London", "country": "GB", "language": "en",
         "plan": "pro", "orders": 3, "lifetime_value": 129.5},
        predictions={"Predict Conversions": {"group": "High", "score": 87.5},
                     "Predict Churn": {"group": "Low", "score": 12.0}},
        event={"name": "Added to Cart", "product_name": "Walnut desk", "price": 349.0,
               "currency": "EUR", "quantity": 1},
        campaign_name="Sample campaign", unsubscribe_url=_SAMPLE_UNSUBSCRIBE)


def _minimal(channel: str) -> dict[str, Any]:
    """The least a recipient can have: an identity and the channel's address."""
    user: dict[str, Any] = {"identity": "sample-user-7"}
    if channel == "email":
        user["email"] = "someone@example.com"
    elif channel == "sms":
        user["phone"] = "+447700900123"
    return build_context(user, campaign_name="Sample campaign",
                         unsubscribe_url=_SAMPLE_UNSUBSCRIBE)


def sample_contexts(channel: str) -> list[tuple[str, dict[str, Any]]]:
    """The users every template is tried on at save time, by name."""
    return [("typical user", _typical(channel)),
            ("user with only an identity", _minimal(channel))]


# ---------------------------------------------------------------------------- rendering

def tidy_field(field: str, text: str) -> str:
    if field in SINGLE_LINE:
        text = " ".join(text.split())  # no CR/LF: subjects become headers
    return text


def is_safe_url(url: str) -> bool:
    squashed = re.sub(r"[\x00-\x20]", "", url).lower()
    return not squashed.startswith(_UNSAFE_SCHEMES)


_ESSENTIAL = ("identity", "email", "phone", "timezone")


def _essentials(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context without the data that can make a template fail: only the typed
    profile fields, no properties, predictions or event. Validation proved every
    template renders (non-empty where required) for such a user."""
    user = context.get("user") if isinstance(context.get("user"), Mapping) else {}
    return {"user": {k: user[k] for k in _ESSENTIAL if k in user}, "predictions": {},
            "event": {}, "campaign": context.get("campaign") or {},
            "unsubscribe_url": context.get("unsubscribe_url")}


def _render_field(field: str, source: str, context: Mapping[str, Any]) -> str:
    html = field in HTML_FIELDS
    try:
        text = tidy_field(field, run_template(source, context, html=html, strict=False))
    except Exception as exc:  # send time never fails: see the module docstring
        log.warning("template field %r failed for one user (%s: %s); rendered without "
                    "their properties", field, exc.__class__.__name__, exc)
        try:
            text = tidy_field(field, run_template(source, _essentials(context), html=html,
                                                  strict=False))
        except Exception:  # not validated, or the typed fields themselves break it
            log.warning("template field %r failed again; left empty", field)
            return ""
    if field == "url" and not is_safe_url(text):
        log.warning("template url rendered an unsafe scheme; dropped")
        return ""
    return text


def render(channel: str, variant: Mapping[str, Any], context: Mapping[str, Any]
           ) -> dict[str, Any]:
    """The variant's fields rendered for one user: every field of the channel as a
    string (empty when not given), except ``data``: an object of strings. For e-mail
    without a text part, ``text`` is derived from the rendered HTML. Never raises."""
    fields = FIELDS.get(channel, ())
    if not isinstance(variant, Mapping):
        variant = {}
    if isinstance(context, _Context):  # cleaned when it was built
        ctx: Mapping[str, Any] = context
    else:
        ctx = clean_value(context) if isinstance(context, Mapping) else {}
    out: dict[str, Any] = {}
    for field in fields:
        source = variant.get(field)
        if field == "data":
            data = source if isinstance(source, Mapping) else {}
            out["data"] = {str(k): _render_field("data", v, ctx) for k, v in data.items()
                           if isinstance(v, str)}
        else:
            out[field] = _render_field(field, source, ctx) if isinstance(source, str) else ""
    if channel == "email" and not out["text"].strip() and out["html"]:
        try:
            out["text"] = html_to_text(out["html"])
        except Exception:  # HTMLParser is lenient, but send time must not fail
            log.warning("could not derive a text part from the HTML", exc_info=True)
    return out


def preview(propel: Any, account_id: str, channel: str, content: Mapping[str, Any],
            identity: str, *, variant: str | None = None,
            event: Mapping[str, Any] | None = None, campaign_name: str = ""
            ) -> dict[str, dict[str, Any]]:
    """Each variant (or just ``variant``) rendered for one real user, with their profile
    and current prediction groups, as it would be sent now. Raises LookupError for an
    unknown user or variant."""
    from propel.predictions.scoring import current_scores
    from propel.profiles import get_profile

    profile = get_profile(propel.db, account_id, identity)
    if profile is None:
        raise LookupError(f"no user {identity!r} in this account")
    context = build_context(profile, predictions=current_scores(propel, account_id,
                                                                profile.identity),
                            event=event, campaign_name=campaign_name)
    variants = [v for v in (content.get("variants") or []) if isinstance(v, Mapping)]
    chosen = [v for v in variants if variant is None or v.get("name") == variant]
    if not chosen:
        raise LookupError(f"no variant {variant!r}" if variant else "content has no variants")
    return {str(v.get("name")): render(channel, v, context) for v in chosen}


# ---------------------------------------------------------------------------- variants

def _weights(variants: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """(name, split) pairs; when no variant gives a split, they share equally."""
    given = any(isinstance(v, Mapping) and v.get("split") is not None for v in variants)
    out = []
    for i, v in enumerate(variants):
        v = v if isinstance(v, Mapping) else {}
        name = str(v.get("name") or chr(ord("A") + i % 26))
        if not given:
            weight = 1.0
        else:
            try:
                weight = max(float(v.get("split") or 0), 0.0)
            except (TypeError, ValueError):
                weight = 0.0
            if not math.isfinite(weight):
                weight = 0.0
        out.append((name, weight))
    return out


def choose_variant(variants: Sequence[Mapping[str, Any]], key: str) -> str:
    """The variant for a message key: a point on [0, total split) from a hash of the key,
    so the same key always gets the same variant and keys spread by the splits."""
    pairs = _weights(variants)
    if not pairs:
        raise ValueError("no variants to choose from")
    total = sum(w for _, w in pairs)
    if total <= 0:
        return pairs[0][0]
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"propel-ab").digest()
    point = int.from_bytes(digest, "big") / 2**64 * total
    acc = 0.0
    for name, weight in pairs:
        acc += weight
        if point < acc:
            return name
    return next(name for name, weight in reversed(pairs) if weight > 0)
