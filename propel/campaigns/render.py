"""Personalised message content: Jinja2 templates in a sandbox.

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

* :func:`validate_content` (at save time) parses every field, refuses constructs the
  sandbox forbids, and renders each field against sample users — a typical one and one
  with nothing but an identity and the channel's address — with *strict* undefined
  values: printing or computing with a value some user lacks is an error, unless it
  goes through ``default`` (or a test such as ``is defined`` / ``if``). Errors name the
  variant, the field and the template line.
* :func:`render` (at send time) never raises: a missing value prints as empty, and a
  field that still fails for one user's data (say, a loop over a number, or arithmetic
  on a text property) is logged and rendered again without that user's properties,
  predictions and event — as for the minimal sample user, which validation proved
  works — and left empty only if even that fails (an unvalidated template). HTML fields
  are auto-escaped; text fields are not.

The sandbox (``ImmutableSandboxedEnvironment``) blocks private/internal attributes
(``''.__class__``), mutation of context data, and template includes; ``range`` is capped,
string repetition, powers and format widths are bounded, attribute/call steps are
budgeted per field, and output is capped, so one template cannot take a worker down.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.filters import do_center, do_format, do_indent
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

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
REQUIRED: dict[str, tuple[str, ...]] = {
    "email": ("subject",),
    "push": ("body",),
    "sms": ("body",),
    "inbox": ("title", "body"),
    "webhook": (),
}
# At least one of these must be given.
ONE_OF: dict[str, tuple[str, ...]] = {
    "email": ("html", "text"),
    "webhook": ("title", "body", "url", "data"),
}
HTML_FIELDS = frozenset({"html"})
SINGLE_LINE = frozenset({"subject", "title", "url"})
VARIANT_KEYS = frozenset({"name", "split"})

MAX_VARIANTS = 10
MAX_NAME_CHARS = 40  # messages.variant is String(40)
MAX_SOURCE_CHARS = 256_000
MAX_OUTPUT_CHARS = 1_000_000
MAX_DATA_KEYS = 50
MAX_RANGE = 1_000
MAX_STEPS = 200_000  # attribute look-ups, item look-ups, calls and range items per field
MAX_FORMAT_WIDTH = 1_000
MAX_POWER_BITS = 4_096
_UNSAFE_SCHEMES = ("javascript:", "data:", "vbscript:", "file:")


class TemplateError(ValueError):
    """Content that cannot be saved; ``problems`` lists every problem found, the
    attributes describe the first."""

    def __init__(self, reason: str, *, variant: str | None = None, field: str | None = None,
                 line: int | None = None, problems: list[dict[str, Any]] | None = None) -> None:
        self.reason = reason
        self.variant = variant
        self.field = field
        self.line = line
        self.problems = problems or [self.as_dict()]
        super().__init__(self._describe())

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "field": self.field, "line": self.line,
                "reason": self.reason}

    def _describe(self) -> str:
        where = []
        if self.variant is not None:
            where.append(f"variant {self.variant!r}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        if self.line is not None:
            where.append(f"line {self.line}")
        text = f"{', '.join(where)}: {self.reason}" if where else self.reason
        more = len(self.problems) - 1
        return f"{text} (and {more} more problem{'s' if more > 1 else ''})" if more else text


# ---------------------------------------------------------------------------- sandbox

@dataclass
class _Budget:
    steps: int = MAX_STEPS


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "propel_template_budget", default=None)


def _spend(n: int = 1) -> None:
    budget = _budget.get()
    if budget is not None:
        budget.steps -= n
        if budget.steps < 0:
            raise SecurityError(f"template does too much work (over {MAX_STEPS} steps)")


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BRACE_SPEC = re.compile(r"\{[^{}]*?:([^{}]*)\}")


def _check_format(spec: str) -> None:
    """printf-style or str.format specs with huge (or computed) widths would allocate
    huge strings."""
    widths: list[str] = []
    if "%" in spec:
        for match in _PRINTF.finditer(spec):
            widths += [g for g in match.groups() if g]
    if "{" in spec:
        if re.search(r"\{[^{}]*:[^{}]*\{", spec):
            raise SecurityError("computed format widths are not allowed")
        for match in _BRACE_SPEC.finditer(spec):
            widths += re.findall(r"\d+", match.group(1))
    for width in widths:
        if width == "*" or len(width) > 4 or int(width) > MAX_FORMAT_WIDTH:
            raise SecurityError(f"format widths above {MAX_FORMAT_WIDTH} are not allowed")


class _Range:
    """``range`` capped in size, whose items count against the step budget."""

    def __init__(self, *args: int) -> None:
        self._range = range(*args)
        if len(self._range) > MAX_RANGE:
            raise SecurityError(f"range() is limited to {MAX_RANGE} items")

    def __iter__(self) -> Iterator[int]:
        for item in self._range:
            _spend()
            yield item

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index: Any) -> Any:
        return self._range[index]

    def __contains__(self, item: object) -> bool:
        return item in self._range


def _default(value: Any, default_value: Any = "", boolean: bool = False) -> Any:
    """Jinja's ``default``, also for None (a profile field with no value)."""
    if value is None or isinstance(value, Undefined) or (boolean and not value):
        return default_value
    return value


def _center(value: Any, width: int = 80) -> str:
    if isinstance(width, int) and width > MAX_FORMAT_WIDTH:
        raise SecurityError(f"center() width above {MAX_FORMAT_WIDTH} is not allowed")
    return do_center(value, width)


def _indent(value: Any, width: Any = 4, *args: Any, **kwargs: Any) -> str:
    if isinstance(width, int) and width > MAX_FORMAT_WIDTH:
        raise SecurityError(f"indent() width above {MAX_FORMAT_WIDTH} is not allowed")
    return do_indent(value, width, *args, **kwargs)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    _check_format(str(value))
    return do_format(value, *args, **kwargs)


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, *, html: bool, strict: bool) -> None:
        super().__init__(autoescape=html, undefined=_StrictUndefined if strict else _Undefined,
                         finalize=_finalize, keep_trailing_newline=True,
                         auto_reload=False, cache_size=0)
        self.globals = {"range": _Range, "dict": dict, "cycler": self.globals["cycler"],
                        "joiner": self.globals["joiner"], "namespace": Namespace}
        self.filters.update(default=_default, d=_default, center=_center, indent=_indent,
                            format=_format)

    # Data (plain dicts: user, event, predictions…) answers keys only, so a property
    # called ``items`` or ``values`` is that property, never the dict's method (iterate
    # pairs with the ``items`` filter).
    def getattr(self, obj: Any, attribute: str) -> Any:
        _spend()
        if type(obj) is dict:
            return obj[attribute] if attribute in obj else self.undefined(obj=obj,
                                                                          name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _spend()
        if type(obj) is dict:
            try:
                return obj[argument]
            except (KeyError, TypeError):
                return self.undefined(obj=obj, name=argument)
        return super().getitem(obj, argument)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _spend()
        return super().call(__context, __obj, *args, **kwargs)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _spend()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and \
                        len(seq) * times > MAX_OUTPUT_CHARS:
                    raise SecurityError("repetition result is too large")
        elif operator == "**":
            if isinstance(left, int | float) and isinstance(right, int | float) and \
                    abs(left) > 1 and right > 0 and \
                    right * math.log2(abs(left)) > MAX_POWER_BITS:
                raise SecurityError("power result is too large")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(str(value.__self__))
        return wrapped


def _finalize(value: Any) -> Any:
    return "" if value is None else value


class _Undefined(ChainableUndefined):
    """Send time: a missing value prints empty, chains, and absorbs arithmetic."""

    __slots__ = ()

    def _absorb(self, *_: Any) -> _Undefined:
        return self

    def _false(self, *_: Any) -> bool:
        return False

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _absorb
    __truediv__ = __rtruediv__ = __floordiv__ = __rfloordiv__ = _absorb
    __mod__ = __rmod__ = __pow__ = __rpow__ = __pos__ = __neg__ = _absorb
    __call__ = _absorb
    __lt__ = __le__ = __gt__ = __ge__ = _false

    def __int__(self) -> int:
        return 0

    def __float__(self) -> float:
        return 0.0


class _StrictUndefined(ChainableUndefined):
    """Validation: a missing value may be tested, looped over (as empty) or given a
    default, but printing it or computing with it is an error. A value refused by
    the sandbox is an error whatever is done with it."""

    __slots__ = ()

    def _unsafe(self) -> bool:
        return self._undefined_exception is SecurityError

    def __str__(self) -> str:
        self._fail_with_undefined_error()
        return ""  # not reached

    __html__ = __str__

    def __getattr__(self, name: str) -> Any:
        if name[:2] == "__" and name[-2:] == "__":
            raise AttributeError(name)
        if self._unsafe():
            self._fail_with_undefined_error()
        return self

    def __getitem__(self, _name: Any) -> Any:
        if self._unsafe():
            self._fail_with_undefined_error()
        return self

    def __bool__(self) -> bool:
        if self._unsafe():
            self._fail_with_undefined_error()
        return False

    def __iter__(self) -> Iterator[Any]:
        if self._unsafe():
            self._fail_with_undefined_error()
        return iter(())


_ENVS = {(html, strict): _Sandbox(html=html, strict=strict)
         for html in (False, True) for strict in (False, True)}


@lru_cache(maxsize=256)
def _compile(source: str, html: bool, strict: bool) -> Any:
    return _ENVS[(html, strict)].from_string(source)


# ---------------------------------------------------------------------------- context

class _Context(dict):
    """A context :func:`build_context` already cleaned: :func:`render` uses it as is."""


def _clean(value: Any, depth: int = 0) -> Any:
    """Drop None-valued keys (so they count as missing) and copy mappings."""
    if isinstance(value, Mapping) and depth < 8:
        return {str(k): _clean(v, depth + 1) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple) and depth < 8:
        return [_clean(v, depth + 1) for v in value]
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
    return _Context(_clean({"user": fields, "predictions": _predictions(predictions),
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

class _TooLong(Exception):
    pass


def _run(source: str, context: Mapping[str, Any], *, html: bool, strict: bool) -> str:
    template = _compile(source, html, strict)
    token = _budget.set(_Budget())
    try:
        pieces: list[str] = []
        size = 0
        for piece in template.generate(context):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                if strict:
                    raise _TooLong(f"renders more than {MAX_OUTPUT_CHARS} characters")
                pieces.append(piece[: MAX_OUTPUT_CHARS - (size - len(piece))])
                break
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _budget.reset(token)


def _tidy(field: str, text: str) -> str:
    if field in SINGLE_LINE:
        text = " ".join(text.split())  # no CR/LF: subjects become headers
    return text


def _safe_url(url: str) -> bool:
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
        text = _tidy(field, _run(source, context, html=html, strict=False))
    except Exception as exc:  # send time never fails: see the module docstring
        log.warning("template field %r failed for one user (%s: %s); rendered without "
                    "their properties", field, exc.__class__.__name__, exc)
        try:
            text = _tidy(field, _run(source, _essentials(context), html=html, strict=False))
        except Exception:  # not validated, or the typed fields themselves break it
            log.warning("template field %r failed again; left empty", field)
            return ""
    if field == "url" and not _safe_url(text):
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
        ctx = _clean(context) if isinstance(context, Mapping) else {}
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


# ---------------------------------------------------------------------------- validation

def _template_line(exc: BaseException) -> int | None:
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


_NO_ATTR = re.compile(r"^'[^']*' has no attribute '(.*)'$|^'(.*)' is undefined$")


def _reason(exc: BaseException, sample: str) -> str:
    if isinstance(exc, SecurityError):
        return f"not allowed: {exc}"
    if isinstance(exc, UndefinedError):
        match = _NO_ATTR.match(str(exc))
        if match and "unsafe" not in str(exc):
            name = match.group(1) or match.group(2)
            return (f"{name!r} has no value for a {sample}; give it a fallback, e.g. "
                    f"{{{{ … | default('…') }}}}, or test it with {{% if … is defined %}}")
        if "unsafe" in str(exc):
            return f"not allowed: {exc}"
        return f"{exc} (for a {sample})"
    return f"fails for a {sample}: {exc.__class__.__name__}: {exc}"


def _forbidden(ast: nodes.Template) -> tuple[int, str] | None:
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        return node.lineno, "not allowed: templates cannot extend, include or import others"
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else (
            node.arg.value if isinstance(node.arg, nodes.Const) else None)
        if isinstance(name, str) and name.startswith("_"):
            return node.lineno, f"not allowed: access to private attribute {name!r}"
    return None


def _check_field(channel: str, field: str, source: Any, samples: list[tuple[str, dict]],
                 required: bool) -> tuple[int | None, str] | None:
    """None if fine, else (line, reason)."""
    if not isinstance(source, str):
        return None, "must be a string (a template)"
    if len(source) > MAX_SOURCE_CHARS:
        return None, f"is longer than {MAX_SOURCE_CHARS} characters"
    if "\x00" in source:
        return None, "must not contain NUL characters"
    if required and not source.strip():
        return None, "is required"
    html = field in HTML_FIELDS
    env = _ENVS[(html, True)]
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return exc.lineno, f"syntax error: {exc.message}"
    if (found := _forbidden(ast)) is not None:
        return found
    try:
        _compile(source, html, True)
        _compile(source, html, False)
    except TemplateSyntaxError as exc:
        return exc.lineno, f"syntax error: {exc.message}"
    for sample, context in samples:
        try:
            text = _tidy(field, _run(source, context, html=html, strict=True))
        except _TooLong as exc:
            return None, f"{exc} for a {sample}"
        except Exception as exc:  # any failure here is the template's: report it
            return _template_line(exc), _reason(exc, sample)
        if required and not text.strip():
            return None, f"renders empty for a {sample}"
        if field == "url" and not _safe_url(text):
            return None, f"renders a URL with a forbidden scheme for a {sample}"
    return None


def _check_variant(channel: str, index: int, variant: Any, names: set[str],
                   samples: list[tuple[str, dict]], problems: list[dict[str, Any]]) -> None:
    label = f"#{index + 1}"

    def problem(field: str | None, reason: str, line: int | None = None) -> None:
        problems.append({"variant": label, "field": field, "line": line, "reason": reason})

    if not isinstance(variant, Mapping):
        problem(None, "must be an object")
        return
    name = variant.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        problem("name", f"must be 1 to {MAX_NAME_CHARS} characters")
    else:
        label = name
        if name in names:
            problem("name", "is used by another variant")
        names.add(name)
    allowed = FIELDS[channel]
    for key in variant:
        if key not in allowed and key not in VARIANT_KEYS:
            problem(str(key), f"is not a field of {channel} content; use {', '.join(allowed)}")
    for field in REQUIRED[channel]:
        if _blank(variant.get(field)):
            problem(field, "is required")
    one_of = ONE_OF.get(channel)
    if one_of and all(_blank(variant.get(f)) for f in one_of):
        problem(one_of[0], f"one of {', '.join(one_of)} is required")
    for field in allowed:
        source = variant.get(field)
        if _blank(source):
            continue
        if field == "data":
            _check_data(channel, source, samples, problem)
            continue
        found = _check_field(channel, field, source, samples, field in REQUIRED[channel])
        if found is not None:
            problem(field, found[1], found[0])


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str | Mapping) and not (
        value.strip() if isinstance(value, str) else value))


def _check_data(channel: str, data: Any, samples: list[tuple[str, dict]], problem: Any) -> None:
    if not isinstance(data, Mapping):
        problem("data", "must be an object of string templates")
        return
    if len(data) > MAX_DATA_KEYS:
        problem("data", f"has more than {MAX_DATA_KEYS} keys")
        return
    for key, value in data.items():
        if not isinstance(key, str) or not key or len(key) > 64:
            problem("data", "keys must be 1 to 64 characters")
            continue
        found = _check_field(channel, "data", value, samples, required=False)
        if found is not None:
            problem(f"data.{key}", found[1], found[0])


def _check_splits(variants: list[Any], problems: list[dict[str, Any]]) -> None:
    splits = [v.get("split") for v in variants if isinstance(v, Mapping)]
    if all(s is None for s in splits):
        return  # equal shares
    for v in variants:
        if not isinstance(v, Mapping):
            continue
        split = v.get("split")
        label = v.get("name") if isinstance(v.get("name"), str) else None
        if split is None or isinstance(split, bool) or not isinstance(split, int | float) \
                or not math.isfinite(split) or not 0 <= split <= 100:
            problems.append({"variant": label, "field": "split", "line": None,
                             "reason": "must be a number from 0 to 100 (a percentage)"})
            return
    total = sum(float(s) for s in splits)
    if abs(total - 100) > 1e-6:
        problems.append({"variant": None, "field": "split", "line": None,
                         "reason": f"variant splits must add up to 100; they add up to "
                                   f"{total:g}"})


def validate_content(channel: str, content: Any,
                     samples: Iterable[Mapping[str, Any]] | None = None) -> None:
    """Raise :class:`TemplateError` unless ``content`` renders for every sample user.

    ``samples``: extra template contexts (e.g. real users from :func:`build_context`)
    to try besides :func:`sample_contexts`.
    """
    if channel not in FIELDS:
        raise TemplateError(f"unknown channel; one of {', '.join(FIELDS)}", field="channel")
    if not isinstance(content, Mapping):
        raise TemplateError("content must be an object with a list of variants",
                            field="variants")
    variants = content.get("variants")
    if not isinstance(variants, list) or not variants:
        raise TemplateError("must be a non-empty list", field="variants")
    if len(variants) > MAX_VARIANTS:
        raise TemplateError(f"at most {MAX_VARIANTS} variants", field="variants")
    extra = [key for key in content if key != "variants"]
    problems: list[dict[str, Any]] = []
    if extra:
        problems.append({"variant": None, "field": str(extra[0]), "line": None,
                         "reason": "unknown key; content holds only 'variants'"})
    tried = sample_contexts(channel) + [
        (f"sample user #{i + 1}", _clean(s)) for i, s in enumerate(samples or ())]
    names: set[str] = set()
    for index, variant in enumerate(variants):
        _check_variant(channel, index, variant, names, tried, problems)
    _check_splits(variants, problems)
    if problems:
        first = problems[0]
        raise TemplateError(first["reason"], variant=first["variant"], field=first["field"],
                            line=first["line"], problems=problems)
