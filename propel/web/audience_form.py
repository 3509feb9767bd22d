"""The audience editor's form: a rule tree (``propel.audiences``) shown as nested groups
of condition rows, read back from the posted form.

Each node has a path (``r``, ``r-0``, ``r-0-2``: the root group, its first item, that
item's third item) and posts its fields as ``a:{path}:{field}``. Paths are renumbered
on every render, so adding and removing rows never leaves gaps.
"""

from __future__ import annotations

import math
import re
from typing import Any

from propel import audiences
from propel.audiences.rules import CHANNELS, MAX_DEPTH, MAX_NODES, OPERATORS
from propel.predictions.spec import SpecError, parse_where

Node = dict[str, Any]
ROOT = "r"
JOINS = ("and", "or")
KINDS = ("property", "event", "reachable", "group")
# Operators offered in the editor, with how they read.
OPS: list[tuple[str, str]] = [
    ("=", "equals"), ("!=", "does not equal"), ("in", "is one of"),
    ("not in", "is not one of"), ("contains", "contains"),
    ("not contains", "does not contain"), (">", "greater than"),
    (">=", "at least"), ("<", "less than"), ("<=", "at most"),
    ("between", "between"), ("before", "before (date)"), ("after", "after (date)"),
    ("is set", "is set"), ("is not set", "is not set")]
NO_VALUE = ("is set", "is not set")
NUMERIC = (">", ">=", "<", "<=")
_FIELD = re.compile(r"^a:(r(?:-\d+)*):kind$")
_ERROR_PATH = re.compile(r"^([^:]*): (.*)$", re.S)


class Unrepresentable(ValueError):
    """A stored rule uses something the row editor cannot show (it is edited as JSON)."""


def new_node(kind: str) -> Node:
    if kind == "group":
        return {"kind": "group", "join": "and", "negate": False, "items": []}
    if kind == "event":
        return {"kind": "event", "negate": False, "did": "did", "event": "",
                "min_count": "1", "within_days": "", "where": ""}
    if kind == "reachable":
        return {"kind": "reachable", "negate": False, "channel": "email"}
    return {"kind": "property", "negate": False, "property": "", "op": "=", "value": ""}


# ------------------------------------------------------------------ rule JSON -> editor

def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    return "" if value is None else str(value)


def _where_text(where: list[Any]) -> str:
    parts = []
    for c in where:
        op = OPERATORS.get(str(c.get("op", "")).lower(), c.get("op"))
        if op == "is set":
            parts.append(f"{c['property']} exists")
        elif op in ("=", "!=", ">", ">=", "<", "<=", "in", "contains"):
            value = c.get("value")
            shown = f"[{_text(value)}]" if isinstance(value, list) else _text(value)
            parts.append(f"{c['property']} {op} {shown}")
        else:
            raise Unrepresentable(f"event filter operator {op!r}")
    return " and ".join(parts)


def from_rule(rule: Any, negate: bool = False) -> Node:
    """The editor tree for a (valid) rule; the root is always a group."""
    node = _node_from_rule(rule, negate)
    if node["kind"] != "group" or node["negate"]:
        return {"kind": "group", "join": "and", "negate": False, "items": [node]}
    return node


def _node_from_rule(rule: Any, negate: bool) -> Node:
    if not isinstance(rule, dict):
        raise Unrepresentable("not an object")
    if "not" in rule:
        return _node_from_rule(rule["not"], not negate)
    for join in JOINS:
        if join in rule:
            return {"kind": "group", "join": join, "negate": negate,
                    "items": [_node_from_rule(r, False) for r in rule[join]]}
    if "property" in rule:
        op = OPERATORS.get(" ".join(str(rule.get("op", "")).lower().replace("_", " ").split()))
        return {"kind": "property", "negate": negate, "property": rule["property"],
                "op": op or "=", "value": _text(rule.get("value"))}
    if "event" in rule:
        if rule.get("between") is not None:
            raise Unrepresentable("event between dates")
        return {"kind": "event", "negate": negate,
                "did": "did" if rule.get("did", True) else "did_not", "event": rule["event"],
                "min_count": _text(rule.get("min_count", 1)),
                "within_days": _text(rule.get("within_days")),
                "where": _where_text(rule.get("where", []))}
    if "reachable" in rule:
        return {"kind": "reachable", "negate": negate, "channel": rule["reachable"]}
    raise Unrepresentable("unknown rule")


# ------------------------------------------------------------------ form -> editor

def from_form(form: Any) -> Node:
    """The tree as posted (an absent or broken tree reads as an empty "all" group)."""
    # bounded like the rules themselves, so a forged form cannot nest without end
    paths = sorted((m.group(1) for key in form if (m := _FIELD.match(key))
                    and m.group(1).count("-") <= MAX_DEPTH),
                   key=lambda p: [int(x) for x in p.split("-")[1:]])[:MAX_NODES]
    nodes: dict[str, Node] = {}
    for path in paths:
        kind = str(form.get(f"a:{path}:kind"))
        node = new_node(kind if kind in KINDS else "property")
        for key in node:
            if key not in ("kind", "items", "negate"):
                node[key] = str(form.get(f"a:{path}:{key}", node[key]))
        node["negate"] = form.get(f"a:{path}:negate") == "on"
        if node["kind"] == "group" and node["join"] not in JOINS:
            node["join"] = "and"
        nodes[path] = node
    root = nodes.get(ROOT)
    if root is None or root["kind"] != "group":
        return new_node("group")
    for path in paths:
        parent = nodes.get(path.rsplit("-", 1)[0]) if path != ROOT else None
        if parent is not None and parent["kind"] == "group":
            parent["items"].append(nodes[path])
    return root


def find(tree: Node, path: str) -> Node | None:
    node = tree
    for step in path.split("-")[1:]:
        items = node.get("items") or []
        if not step.isdigit() or int(step) >= len(items):
            return None
        node = items[int(step)]
    return node


def apply_op(tree: Node, op: str) -> str | None:
    """Apply ``add-<kind>:<group path>`` or ``remove:<path>``; the path of the row to
    focus next, or None when the op does not apply."""
    action, _, path = op.partition(":")
    if action.startswith("add-") and action[4:] in KINDS:
        group = find(tree, path)
        if group is None or group["kind"] != "group":
            return None
        group["items"].append(new_node(action[4:]))
        return f"{path}-{len(group['items']) - 1}"
    if action == "remove" and path != ROOT and "-" in path:
        parent = find(tree, path.rsplit("-", 1)[0])
        index = int(path.rsplit("-", 1)[1])
        if parent is None or index >= len(parent.get("items", [])):
            return None
        parent["items"].pop(index)
        return path.rsplit("-", 1)[0]
    return None


def with_paths(tree: Node, path: str = ROOT) -> Node:
    """Stamp every node with its path (for field names and ids)."""
    tree["path"] = path
    for i, item in enumerate(tree.get("items", [])):
        with_paths(item, f"{path}-{i}")
    return tree


# ------------------------------------------------------------------ editor -> rule JSON

def _number(text: str) -> int | float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() \
        else value


def _scalar(text: str, kind: str) -> Any:
    if kind == "number":
        number = _number(text)
        return text if number is None else number
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _value(node: Node, kind: str) -> Any:
    op, text = node["op"], node["value"].strip()
    if op in NO_VALUE:
        return None
    if not text:
        raise ValueError("Enter a value")
    if op in ("in", "not in"):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise ValueError("Enter one or more values, separated by commas")
        return [_scalar(t, kind) for t in items]
    if op == "between":
        parts = [t.strip() for t in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError("Enter two values separated by a comma, e.g. 10, 20")
        numbers = [_number(p) for p in parts]
        return numbers if all(n is not None for n in numbers) else parts
    if op in NUMERIC:
        number = _number(text)
        if number is None:
            raise ValueError("Enter a number")
        return number
    if op in ("contains", "not contains", "before", "after"):
        return text
    return _scalar(text, kind)


def _where(text: str) -> list[dict[str, Any]]:
    out = []
    for part in re.split(r"\s+and\s+", text.strip()) if text.strip() else []:
        try:
            c = parse_where(part)
        except SpecError as exc:
            raise ValueError(str(exc).removeprefix("where: ")) from None
        op = "is set" if c.op == "exists" else c.op
        out.append({"property": c.property, "op": op} | ({} if op == "is set"
                                                         else {"value": c.value}))
    return out


def _whole(text: str, what: str, low: int, high: int, blank: int | None) -> int | None:
    text = text.strip()
    if not text:
        return blank
    if not re.fullmatch(r"\d+", text) or not low <= int(text) <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high:,}")
    return int(text)


def _condition(node: Node, types: dict[str, str]) -> dict[str, Any]:
    kind = node["kind"]
    if kind == "property":
        if not node["property"].strip():
            raise ValueError("Choose a property")
        out = {"property": node["property"], "op": node["op"]}
        value = _value(node, types.get(node["property"], "string"))
        return out if value is None else out | {"value": value}
    if kind == "event":
        if not node["event"].strip():
            raise ValueError("Enter an event name")
        out = {"event": node["event"].strip()}
        if node["did"] == "did_not":
            out["did"] = False
        count = _whole(node["min_count"], "At least", 1, 1_000_000, 1)
        if count != 1:
            out["min_count"] = count
        days = _whole(node["within_days"], "In the last (days)", 1, 3650, None)
        if days is not None:
            out["within_days"] = days
        where = _where(node["where"])
        return out | ({"where": where} if where else {})
    if node["channel"] not in CHANNELS:
        raise ValueError("Choose a channel")
    return {"reachable": node["channel"]}


def to_rule(tree: Node, types: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The rule JSON and per-row errors ({path: message}); the rule is checked with the
    same validation campaigns use, and its errors are put on the row they are about."""
    errors: dict[str, str] = {}
    rule_paths: dict[str, str] = {}

    def build(node: Node, rule_path: str) -> dict[str, Any]:
        inner = f"{rule_path}.not" if node["negate"] and rule_path else (
            "not" if node["negate"] else rule_path)
        rule_paths[node["path"]] = inner
        if node["kind"] == "group":
            key = node["join"]
            if key == "or" and not node["items"]:
                errors[node["path"]] = "Add at least one condition to an \"any\" group"
            sep = f"{inner}." if inner else ""
            out: dict[str, Any] = {key: [build(item, f"{sep}{key}[{i}]")
                                         for i, item in enumerate(node["items"])]}
        else:
            try:
                out = _condition(node, types)
            except ValueError as exc:
                errors[node["path"]] = str(exc)
                out = {"and": []}
        return {"not": out} if node["negate"] else out

    with_paths(tree)
    items = tree["items"]
    if tree["join"] == "and" and not tree["negate"] and len(items) == 1 \
            and items[0]["kind"] != "group":
        rule = build(items[0], "")  # one condition is stored as itself
        rule_paths[ROOT] = "\x00"
    else:
        rule = build(tree, "")
    if not errors:
        try:
            audiences.validate(rule)
        except audiences.AudienceError as exc:
            errors[_row_for(str(exc), rule_paths)] = _reason(str(exc))
    return rule, errors


def _reason(message: str) -> str:
    match = _ERROR_PATH.match(message)
    return match.group(2) if match else message


def _row_for(message: str, rule_paths: dict[str, str]) -> str:
    match = _ERROR_PATH.match(message)
    where = match.group(1) if match else ""
    where = "" if where == "rule" else where
    best, length = ROOT, -1
    for path, rule_path in rule_paths.items():
        if rule_path == "\x00":
            continue
        if (where == rule_path or where.startswith(rule_path + ".")
                or where.startswith(rule_path + "[") or not rule_path) \
                and len(rule_path) > length:
            best, length = path, len(rule_path)
    return best
