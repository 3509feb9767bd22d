"""A seeded synthetic e-commerce mobile app: profiles, hidden traits and an event stream.

The demo and the benchmarks need data whose *future* is learnable from its *past*, so
the generator is a small, explicit behavioural model rather than random noise:

* every user has hidden traits (activity rate, purchase propensity, price level, churn
  hazard, responsiveness to pushes, preferred hour) drawn once from a correlated
  population, so heavy users keep being heavy and buyers keep buying;
* sessions are a Poisson process at ``activity_rate`` per day, modulated by weekday and
  placed at the user's preferred local hour (IANA time zones, DST-aware), plus sessions
  started by clicking organic pushes at ``push_click_rate``;
* each session runs a funnel (views -> cart -> charge) whose conversion rates follow the
  propensity, so one session converts with probability ``purchase_propensity``;
* a user's life is healthy for ``healthy_days`` (exponential with ``churn_hazard``), then
  activity ramps linearly down over ``decline_days`` before the user goes silent
  (sometimes with an ``App Uninstalled``), so churn shows up in recency/frequency trends
  before it happens; some users sign up inside the generated period.

Because the model is explicit, :func:`purchase_probability` can state the true chance of
a purchase in a window, which is what a calibration check needs.

Everything is drawn per fixed block of users from ``SeedSequence([seed, stream, block])``,
so output depends only on the seed and arguments: never on ``chunk_users``, the process, or
the order of calls. Profiles and traits of user *i* also do not depend on how many users are
requested. Message ids are ``demo-<seed>-<n>``; regenerating a demo therefore re-sends the
same ids, and ingest deduplicates instead of doubling the data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from propel.demo.synth_events import EVENT_NAMES, EVENT_SCHEMA, stream_events
from propel.demo.synth_model import (
    AppParams,
    concat,
    id_width,
    life_exposure,
    to_epoch_us,
    user_blocks,
)
from propel.demo.synth_population import PROFILE_SCHEMA, TRAIT_SCHEMA, profiles_block, traits_block

__all__ = [
    "DEFAULT_END",
    "EVENT_NAMES",
    "EVENT_SCHEMA",
    "PROFILE_SCHEMA",
    "TRAIT_SCHEMA",
    "SyntheticApp",
    "generate_profiles",
    "generate_traits",
    "iter_events",
    "purchase_probability",
]

# A fixed, past default keeps output reproducible and passes ingest's "not in the future"
# check; the demo passes ``end=now`` explicitly.
DEFAULT_END = datetime(2025, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SyntheticApp(AppParams):
    """A synthetic app: the knobs of :class:`~propel.demo.synth_model.AppParams` (the
    behavioural model) and the generators of its profiles, traits and events."""

    def profiles(self, users: int, end: datetime = DEFAULT_END) -> pa.Table:
        return concat([profiles_block(self, b, n, to_epoch_us(end), id_width(users))
                       for b, n in user_blocks(users)], PROFILE_SCHEMA)

    def traits(self, users: int) -> pa.Table:
        return concat([traits_block(self, b, n, id_width(users))
                       for b, n in user_blocks(users)], TRAIT_SCHEMA)

    def events(self, users: int, days: int, end: datetime = DEFAULT_END,
               chunk_users: int = 50_000) -> Iterator[pa.Table]:
        return stream_events(self, users, days, end, chunk_users)


def generate_profiles(users: int, seed: int = 7, *, end: datetime = DEFAULT_END) -> pa.Table:
    """Contact and consent data per user. ``end`` must match the one given to
    :func:`iter_events`, because ``signup_ts`` is placed relative to it (some users sign
    up inside the event window and their first ``App Launched`` is at ``signup_ts``)."""
    return SyntheticApp(seed=seed).profiles(users, end)


def generate_traits(users: int, seed: int = 7) -> pa.Table:
    """The hidden truth behind the events: never shown to the product, used to check that
    predictions recover it (calibration, uplift from ``responsiveness``). Times are in
    days relative to ``end`` so they hold for any ``end``."""
    return SyntheticApp(seed=seed).traits(users)


def iter_events(users: int, days: int, end: datetime = DEFAULT_END, seed: int = 7,
                chunk_users: int = 50_000) -> Iterator[pa.Table]:
    """Events of ``days`` days before ``end``, one table per ``chunk_users`` users so that
    1M users x 90 days (~50M events) never has to sit in memory at once. Rows are sorted
    by (identity, ts); output is identical for every ``chunk_users``."""
    return SyntheticApp(seed=seed).events(users, days, end, chunk_users)


def purchase_probability(traits: pa.Table, window_days: float, *,
                         start_days_before_end: float | None = None) -> np.ndarray:
    """True P(>=1 ``Charged`` in a window) per user of ``traits``, for calibration checks.

    The window defaults to the last ``window_days`` before ``end`` and must lie inside the
    generated period. It accounts for the user being not yet signed up, declining or
    churned during the window (the latent life-cycle in ``traits``) and for a signup-day
    first session. Weekday and hour-of-day modulation average out exactly over whole
    weeks, so use a multiple of 7 days for an exact answer; sessions cut off by ``end`` or
    by churn cause a negligible bias.
    """
    start = float(window_days if start_days_before_end is None else start_days_before_end)
    col = {name: traits.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
           for name in ("activity_rate", "push_click_rate", "purchase_propensity",
                        "signup_days_ago", "healthy_days", "decline_days")}
    signup = -col["signup_days_ago"]
    lo, hi = -start, -start + float(window_days)
    args = (signup, col["healthy_days"], col["decline_days"])
    exposure = life_exposure(np.float64(hi), *args) - life_exposure(np.float64(lo), *args)
    q = col["purchase_propensity"]
    sessions = (col["activity_rate"] + col["push_click_rate"]) * exposure
    first = (signup >= lo) & (signup < hi)
    return 1.0 - np.where(first, 1.0 - q, 1.0) * np.exp(-q * sessions)

