"""Current prediction groups and scores as profile properties, for any page of users:
``Predict Conversions`` = ``High`` and ``Predict Conversions score`` = 87.5."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from propel.db.engine import Database
from propel.predictions.tables import predictions, user_predictions

_CHUNK = 500


def score_properties(db: Database, account_id: str, identities: list[str]
                     ) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with db.read() as conn:
        for start in range(0, len(identities), _CHUNK):
            rows = conn.execute(
                select(user_predictions.c.identity, predictions.c.name, user_predictions.c.grp,
                       user_predictions.c.score)
                .join(predictions, predictions.c.id == user_predictions.c.prediction_id)
                .where(user_predictions.c.account_id == account_id,
                       user_predictions.c.identity.in_(identities[start:start + _CHUNK]))
            ).all()
            for identity, name, group, score in rows:
                props = out.setdefault(identity, {})
                props[name] = group
                props[f"{name} score"] = score
    return out
