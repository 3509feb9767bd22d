"""The behavioural model's knobs and the plumbing that the population and the event
simulation share: time units, RNG streams and per-block seeding, user identities and the
life-cycle exposure (healthy, declining, churned) that drives activity.

Everything is drawn per fixed block of ``BLOCK`` users from
``SeedSequence([seed, stream, block])``, so output never depends on chunk sizes.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

TS = pa.timestamp("us", tz="UTC")  # the type of every timestamp column

DAY_US = 86_400_000_000
SECOND_US = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BLOCK = 10_000  # users per RNG block: fixed so results never depend on chunk sizes
POPULATION_STREAM, EVENT_STREAM, CATALOG_STREAM = 0, 1, 2  # RNG streams


@dataclass(frozen=True)
class AppParams:
    """The knobs of the behavioural model, with defaults tuned to ~50 events per user per
    90 days and a ~11% two-week purchase rate. Frozen so an app value can be a cache key
    and shared by benchmarks without anyone mutating it mid-run."""

    seed: int = 7
    activity_median: float = 0.085  # organic sessions/day of the median healthy user
    activity_sigma: float = 1.0  # log-sd: heavy users are much heavier, as in real apps
    propensity_median: float = 0.05  # P(purchase | session) of the median user
    propensity_sigma: float = 0.9  # logit-sd
    lifetime_median_days: float = 365.0  # median time from signup to the start of decline
    new_user_share: float = 0.20  # share of users signed up in the last 90 days
    tenure_mean_days: float = 90.0  # older users: extra tenure beyond 90 days, exponential
    push_sends_per_day: float = 0.5  # organic pushes to opted-in users
    uninstall_share: float = 0.55  # churners who uninstall rather than just go quiet

    def __post_init__(self) -> None:
        seed = operator.index(self.seed)  # numpy integers are fine, floats are not
        if seed < 0:
            raise ValueError("seed must be a non-negative integer")
        object.__setattr__(self, "seed", int(seed))


def to_epoch_us(end: datetime) -> int:
    """``end`` in microseconds since the epoch; a naive ``end`` is taken as UTC."""
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    return (end - EPOCH) // timedelta(microseconds=1)


def user_blocks(users: int) -> list[tuple[int, int]]:
    """(block, users in it) of every RNG block covering ``users`` users."""
    users = operator.index(users)
    if users < 0:
        raise ValueError("users must be >= 0")
    return [(b, min(BLOCK, users - b * BLOCK)) for b in range(math.ceil(users / BLOCK))]


def id_width(users: int) -> int:
    """Digits of the zero-padded identity number (``u000123``) for ``users`` users."""
    return max(6, len(str(max(users - 1, 0))))


def concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    """The tables concatenated, or an empty ``schema`` table when there are none."""
    return pa.concat_tables(tables) if tables else schema.empty_table()


def identities(block: int, n: int, width: int) -> pa.Array:
    """Identities of the first ``n`` users of ``block``."""
    idx = pa.array(np.arange(block * BLOCK, block * BLOCK + n, dtype=np.int64))
    return pc.binary_join_element_wise("u", pc.utf8_lpad(pc.cast(idx, pa.string()), width, "0"),
                                       "")


def life_exposure(t: np.ndarray, signup: np.ndarray, healthy: np.ndarray,
                  decline: np.ndarray) -> np.ndarray:
    """Activity-weighted time alive up to ``t`` (days): 1 while healthy, a linear ramp
    from 1 to 0 during decline, 0 before signup and after churn."""
    x = t - signup
    ramp = np.clip(x - healthy, 0.0, decline)
    return np.clip(x, 0.0, healthy) + ramp - ramp * ramp / (2.0 * decline)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
