"""Save-time validation of campaign content.

:func:`validate_content` checks content before it is saved (a campaign, a journey's
send step, the builder's preview): the shape of the variants and their splits, then
every template field, which it parses, refuses constructs the sandbox forbids, and
renders against sample users with *strict* undefined values (see
:mod:`propel.campaigns.render`). It raises :class:`TemplateError` listing every problem,
each naming the variant, the field and the template line, so an editor can mark them
all. Send time never comes here: rendering never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, UndefinedError

from propel.campaigns.render import (
    FIELDS,
    HTML_FIELDS,
    clean_value,
    is_safe_url,
    sample_contexts,
    tidy_field,
)
from propel.campaigns.sandbox import ENVIRONMENTS, OutputTooLong, compile_template, run_template

# Fields a variant must give, per channel (all of them: render.FIELDS).
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
VARIANT_KEYS = frozenset({"name", "split"})

MAX_VARIANTS = 10
MAX_NAME_CHARS = 40  # messages.variant is String(40)
MAX_SOURCE_CHARS = 256_000
MAX_DATA_KEYS = 50


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
    env = ENVIRONMENTS[(html, True)]
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        return exc.lineno, f"syntax error: {exc.message}"
    if (found := _forbidden(ast)) is not None:
        return found
    try:
        compile_template(source, html, True)
        compile_template(source, html, False)
    except TemplateSyntaxError as exc:
        return exc.lineno, f"syntax error: {exc.message}"
    for sample, context in samples:
        try:
            text = tidy_field(field, run_template(source, context, html=html, strict=True))
        except OutputTooLong as exc:
            return None, f"{exc} for a {sample}"
        except Exception as exc:  # any failure here is the template's: report it
            return _template_line(exc), _reason(exc, sample)
        if required and not text.strip():
            return None, f"renders empty for a {sample}"
        if field == "url" and not is_safe_url(text):
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

    ``samples``: extra template contexts (e.g. real users from
    :func:`propel.campaigns.render.build_context`) to try besides :func:`sample_contexts`.
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
        (f"sample user #{i + 1}", clean_value(s)) for i, s in enumerate(samples or ())]
    names: set[str] = set()
    for index, variant in enumerate(variants):
        _check_variant(channel, index, variant, names, tried, problems)
    _check_splits(variants, problems)
    if problems:
        first = problems[0]
        raise TemplateError(first["reason"], variant=first["variant"], field=first["field"],
                            line=first["line"], problems=problems)
