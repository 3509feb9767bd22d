"""Inputs for the BG/NBD model (``btyd``): a transaction log summarised into
``(frequency, recency, T)``, and data simulated from the model's own generative process
so that estimation can be checked against known parameters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["rfm_from_transactions", "simulate_bgnbd"]

ArrayLike = npt.ArrayLike


def rfm_from_transactions(
    customer_ids: Sequence[Any] | np.ndarray,
    dates: Sequence[Any] | np.ndarray,
    calibration_end: Any,
    freq_unit_days: float = 7.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Summarise a transaction log into BG/NBD inputs ``(ids, frequency, recency, T)``.

    * Purchases on the same calendar day are merged: the model's Poisson process counts
      purchase occasions, and several order lines on one day (a basket split by the shop
      system) are not independent arrivals. This matches FHL 2005's CDNOW preparation.
    * ``frequency`` = number of distinct purchase days up to and including
      ``calibration_end``, minus one (the first purchase starts the clock and is not counted).
    * ``recency`` = last - first purchase day, ``T`` = ``calibration_end`` - first purchase
      day, both in units of ``freq_unit_days`` (7 = weeks).
    * Customers whose first purchase is after ``calibration_end`` are left out (they have no
      calibration history); transactions after ``calibration_end`` are ignored.

    ``dates`` may be anything numpy converts to ``datetime64`` (``datetime.date``/``datetime``
    objects, ISO strings, a ``datetime64`` array or a pandas datetime column's ``.to_numpy()``);
    times of day are truncated to the day. ``ids`` is sorted.
    """
    ids = np.asarray(customer_ids)
    try:
        days = np.asarray(dates, dtype="datetime64[D]")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"dates could not be converted to datetime64: {exc}") from exc
    if ids.ndim != 1 or days.ndim != 1:
        raise ValueError("customer_ids and dates must be 1-d")
    if ids.shape[0] != days.shape[0]:
        raise ValueError(
            f"customer_ids and dates have different lengths: {ids.shape[0]} != {days.shape[0]}"
        )
    if np.any(np.isnat(days)):
        raise ValueError("dates contains missing values (NaT)")
    if not (np.isfinite(freq_unit_days) and freq_unit_days > 0):
        raise ValueError("freq_unit_days must be > 0")
    end = np.datetime64(calibration_end, "D")
    if np.isnat(end):
        raise ValueError("calibration_end must be a date")

    keep = days <= end
    uniq_ids, inverse = np.unique(ids[keep], return_inverse=True)
    day_num = days[keep].astype(np.int64)
    # one row per (customer, day): sorted by customer, then day
    pairs = np.unique(np.column_stack([inverse.ravel(), day_num]), axis=0)
    _, first_idx, n_days = np.unique(pairs[:, 0], return_index=True, return_counts=True)
    first = pairs[first_idx, 1]
    last = pairs[first_idx + n_days - 1, 1]
    end_num = end.astype(np.int64)
    frequency = (n_days - 1).astype(float)
    recency = (last - first) / freq_unit_days
    T = (end_num - first) / freq_unit_days
    return uniq_ids, frequency, recency.astype(float), T.astype(float)


def simulate_bgnbd(
    n: int,
    r: float,
    alpha: float,
    a: float,
    b: float,
    T: ArrayLike,
    seed: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``(frequency, recency, T)`` for ``n`` customers from the BG/NBD generative process.

    Exists so that estimation and predictions can be tested against data whose true
    parameters are known. ``T`` is a scalar or one observation length per customer.
    Vectorised over customers: each loop round advances every still-active customer by one
    inter-purchase time, so the loop runs about as many rounds as the busiest customer buys.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if min(r, alpha, a, b) <= 0:
        raise ValueError("r, alpha, a and b must be > 0")
    rng = np.random.default_rng(seed)
    T_arr = np.broadcast_to(np.asarray(T, dtype=float), (n,)).copy()
    if np.any(T_arr < 0) or not np.all(np.isfinite(T_arr)):
        raise ValueError("T must be finite and >= 0")
    lam = rng.gamma(shape=r, scale=1.0 / alpha, size=n)  # may underflow to 0 for tiny r
    p = rng.beta(a, b, size=n)
    frequency = np.zeros(n)
    recency = np.zeros(n)
    clock = np.zeros(n)
    active = np.arange(n)  # alive and not yet past T
    while active.size:
        with np.errstate(divide="ignore"):  # lambda == 0 -> infinite wait, never buys
            clock[active] += rng.exponential(1.0, size=active.size) / lam[active]
        bought = clock[active] <= T_arr[active]
        active = active[bought]
        frequency[active] += 1
        recency[active] = clock[active]
        survives = rng.random(active.size) >= p[active]
        active = active[survives]
    return frequency, recency, T_arr
