"""The Jinja2 sandbox message templates run in, and its limits.

Templates are written by users of the platform and run for every recipient, so they
run in an ``ImmutableSandboxedEnvironment`` that blocks private/internal attributes
(``''.__class__``), mutation of context data, and template includes; ``range`` is capped,
string repetition, powers and format widths are bounded, attribute/call steps are
budgeted per field, and output is capped, so one template cannot take a worker down.

This module owns the environments (lenient for send time, strict for save-time
validation; HTML or text), their filters and undefined values, and :func:`run_template`, which
renders one template under the step budget and the output cap. What a template sees and
what is done with its output is :mod:`propel.campaigns.render`'s business; the checks
made when content is saved are in :mod:`propel.campaigns.content_validation`.
"""

from __future__ import annotations

import contextvars
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import ChainableUndefined, Undefined
from jinja2.exceptions import SecurityError
from jinja2.filters import do_center, do_format, do_indent
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

MAX_OUTPUT_CHARS = 1_000_000
MAX_RANGE = 1_000
MAX_STEPS = 200_000  # attribute look-ups, item look-ups, calls and range items per field
MAX_FORMAT_WIDTH = 1_000
MAX_POWER_BITS = 4_096


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


ENVIRONMENTS = {(html, strict): _Sandbox(html=html, strict=strict)
                for html in (False, True) for strict in (False, True)}


@lru_cache(maxsize=256)
def compile_template(source: str, html: bool, strict: bool) -> Any:
    return ENVIRONMENTS[(html, strict)].from_string(source)


# ---------------------------------------------------------------------------- running

class OutputTooLong(Exception):
    """A template's output passed MAX_OUTPUT_CHARS."""


def run_template(source: str, context: Mapping[str, Any], *, html: bool, strict: bool) -> str:
    template = compile_template(source, html, strict)
    token = _budget.set(_Budget())
    try:
        pieces: list[str] = []
        size = 0
        for piece in template.generate(context):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                if strict:
                    raise OutputTooLong(f"renders more than {MAX_OUTPUT_CHARS} characters")
                pieces.append(piece[: MAX_OUTPUT_CHARS - (size - len(piece))])
                break
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _budget.reset(token)
