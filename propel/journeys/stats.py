"""Journey metrics: per step, and the journey's conversions and lift.

Per step: ``entered`` (times users reached it: step-log rows), ``waiting`` (users at it
now), ``exited`` (entered minus those still there), and for send steps the outbox
states with opens and clicks. Lift is intent-to-treat, as for campaigns: everyone who
entered and was not held out, whatever happened to them later, against the holdout
drawn at entry; a conversion counts when the goal event came within ``within_days``
of the entry. The interval is the campaigns' (Newcombe's hybrid score).
"""

from __future__ import annotations

from typing import Any

from propel.campaigns.stats import METHOD, lift
from propel.core import Propel
from propel.journeys import store
from propel.journeys.service import get


def _steps(counts: dict[str, Any], spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = {s["id"]: {"id": s["id"], "type": s["type"], "entered": 0, "waiting": 0,
                     "exited": 0} for s in spec["steps"]}
    for step, n in counts["log"]:
        out.setdefault(step, {"id": step, "type": None, "entered": 0, "waiting": 0,
                              "exited": 0})["entered"] += int(n)
    for step, _state, n in counts["at"]:
        if step in out:
            out[step]["waiting"] += int(n)
    for step, state, n, opened, clicked in counts["messages"]:
        m = out.setdefault(step, {"id": step, "type": "send", "entered": 0, "waiting": 0,
                                  "exited": 0}).setdefault("messages", {
            "queued": 0, "sent": 0, "suppressed": 0, "failed": 0, "in_doubt": 0,
            "pending": 0, "opened": 0, "clicked": 0})
        key = state if state in m and state != "queued" else (
            "queued" if state == "queued" else "pending")
        m[key] += int(n)
        m["opened"] += int(opened)
        m["clicked"] += int(clicked)
    for s in out.values():
        s["exited"] = max(0, s["entered"] - s["waiting"])
        if s["type"] == "send":
            s.setdefault("messages", {"queued": 0, "sent": 0, "suppressed": 0, "failed": 0,
                                      "in_doubt": 0, "pending": 0, "opened": 0,
                                      "clicked": 0})
    return list(out.values())


def journey_stats(propel: Propel, account_id: str, journey_id: str,
                  version: int | None = None) -> dict[str, Any]:
    """Metrics of one version, or of all versions together (steps by id)."""
    j = get(propel, account_id, journey_id)
    with propel.db.read() as conn:
        counts = store.step_counts(conn, journey_id, version)
        entries = store.entry_counts(conn, journey_id, version)
        spec = store.definition(conn, journey_id, version or j.version)
    totals = {"entered": 0, "holdout": 0, "in_flight": 0, "done": 0, "exits": {},
              "converted": 0, "holdout_converted": 0}
    for holdout, state, reason, n, converted in entries:
        n, converted = int(n), int(converted)
        totals["entered"] += n
        if holdout:
            totals["holdout"] += n
            totals["holdout_converted"] += converted
            continue
        totals["converted"] += converted
        if state in store.IN_FLIGHT:
            totals["in_flight"] += n
        else:
            totals["done"] += n
            totals["exits"][reason or "end"] = totals["exits"].get(reason or "end", 0) + n
    treated = totals["entered"] - totals["holdout"]
    return {"journey_id": journey_id, "status": j.status, "version": version,
            "current_version": j.version, "method": METHOD, "totals": totals,
            "lift": lift(treated, totals["converted"], totals["holdout"],
                         totals["holdout_converted"]),
            "steps": _steps(counts, spec)}


def user_path(propel: Propel, account_id: str, journey_id: str, identity: str
              ) -> list[dict[str, Any]]:
    """Each entry of the user, with the steps taken in order."""
    get(propel, account_id, journey_id)
    with propel.db.read() as conn:
        entries = store.user_entries(conn, journey_id, identity)
        steps = store.user_steps(conn, [e.id for e in entries]) if entries else []
    out = []
    for e in entries:
        out.append({
            "entry": e.entry_no, "version": e.version, "entered_at": e.entered_at.isoformat(),
            "holdout": bool(e.holdout), "state": e.state, "step": e.step,
            "due_at": e.due_at.isoformat() if e.due_at else None,
            "converted_at": e.converted_at.isoformat() if e.converted_at else None,
            "exit_reason": e.exit_reason,
            "exited_at": e.exited_at.isoformat() if e.exited_at else None,
            "steps": [{"step": s.step, "seq": s.seq, "at": s.at.isoformat(),
                       "outcome": s.outcome, "message_key": s.message_key,
                       "message_state": s.message_state}
                      for s in steps if s.entry_id == e.id]})
    return out
