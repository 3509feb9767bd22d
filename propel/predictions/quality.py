"""Model-quality reporting for goal-likelihood predictions.

Everything here returns plain Python ``float``/``int``/``None``/``str`` inside ``dict``/``list``
(never numpy scalars) because the results are stored in the model registry as JSON and rendered
by the terminal and the dashboard; numpy scalars would make ``json.dumps`` fail far away from
the code that produced them.

Undefined quantities are ``None`` rather than ``nan``: ``nan`` is not valid JSON, and a
dashboard can show "n/a" for ``None`` without special-casing floats.

The metrics are implemented in numpy rather than delegated to scikit-learn so that the edge
cases (a single class, empty bins, tied scores) behave the same in every scikit-learn version
and return ``None`` instead of warning; the tests check agreement with scikit-learn where both
are defined.

Scores versus probabilities: ranking metrics (``auc``, ``pr_auc``, ``gains_table``,
``size_vs_precision``) accept any finite score, e.g. raw margins, because only the order
matters. Metrics that compare predictions with outcomes (``log_loss``, ``brier``,
``calibration_table``, ``group_report``) require probabilities in ``[0, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "GROUPS",
    "DEFAULT_SHARES",
    "assign_groups",
    "assign_groups_by_threshold",
    "auc",
    "brier",
    "calibration_table",
    "gains_table",
    "group_report",
    "log_loss",
    "pr_auc",
    "quality_report",
    "size_vs_precision",
]

ArrayLike = npt.ArrayLike

#: Likelihood groups from most to least likely; reports always list them in this order so
#: dashboards do not have to sort labels.
GROUPS: tuple[str, str, str] = ("High", "Medium", "Low")

#: Audience shares offered by the size-vs-precision chooser.
DEFAULT_SHARES: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# Decimal fractions are not exact in binary (0.15 * 10 == 1.4999999999999998); without this
# slack "round half up" would round such products down and surprise whoever picked the share.
_ROUND_SLACK = 1e-9


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


def _labels(y: ArrayLike, name: str = "y") -> np.ndarray:
    """Return 0/1 labels as float so that means and cumulative sums need no casting.

    Labels other than 0/1 (e.g. counts of purchases, or -1/1 coding) are rejected rather than
    binarised: guessing the encoding would silently produce plausible but wrong metrics.
    """
    try:
        arr = np.asarray(y, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric 0/1 labels: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.any(np.isnan(arr)):
        raise ValueError(f"{name} contains NaN")
    bad = ~((arr == 0.0) | (arr == 1.0))
    if np.any(bad):
        examples = ", ".join(repr(float(v)) for v in np.unique(arr[bad])[:5])
        raise ValueError(f"{name} must contain only binary labels 0/1, found {examples}")
    return arr


def _scores(
    p: ArrayLike, name: str = "p", *, probability: bool, allow_empty: bool = False
) -> np.ndarray:
    """Return finite 1-d float scores, optionally restricted to probabilities.

    Metrics are undefined on no data, so empty input is an error unless the caller (group
    assignment) has a meaningful empty answer: a scheduled run over an empty audience should
    produce no groups rather than crash.
    """
    try:
        arr = np.asarray(p, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d array, got shape {arr.shape}")
    if arr.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if probability and arr.size and (np.any(arr < 0.0) or np.any(arr > 1.0)):
        raise ValueError(
            f"{name} must be probabilities in [0, 1], got range "
            f"[{float(arr.min())!r}, {float(arr.max())!r}]"
        )
    return arr


def _pair(y: ArrayLike, p: ArrayLike, *, probability: bool) -> tuple[np.ndarray, np.ndarray]:
    yy = _labels(y)
    pp = _scores(p, probability=probability)
    if yy.shape[0] != pp.shape[0]:
        raise ValueError(f"length mismatch: y has {yy.shape[0]} rows, p has {pp.shape[0]}")
    return yy, pp


def _count(share: float, n: int) -> int:
    """Number of users in the top ``share`` of ``n``, rounding half up.

    Python's ``round`` rounds half to even (``round(2.5) == 2``), which would make a 50 %
    audience of 5 users contain 2 users but one of 7 users contain 4; half-up is the rule
    people expect when they read "top 50 %".
    """
    return min(n, max(0, math.floor(share * n + 0.5 + _ROUND_SLACK)))


def _ranking(p: np.ndarray) -> np.ndarray:
    """Indices from highest to lowest score, ties in input order.

    A stable sort on ``-p`` is used instead of reversing an ascending sort, because reversing
    would also reverse the order of tied rows and make "top k" depend on the sort direction.
    """
    return np.argsort(-p, kind="stable")


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num / den)


# --------------------------------------------------------------------------------------------
# scalar metrics
# --------------------------------------------------------------------------------------------


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank (like ``scipy.stats.rankdata``).

    Averaging ties is what makes AUC equal the Mann-Whitney probability
    P(score_pos > score_neg) + 0.5 P(tie); without it AUC would depend on row order.
    """
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    n = values.shape[0]
    # start index of each run of equal values in the sorted array
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    run_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=float)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc(y: ArrayLike, p: ArrayLike) -> float | None:
    """Area under the ROC curve, or ``None`` when ``y`` holds only one class.

    ``None`` instead of an exception because a backtest window with no conversions is a
    normal (if unhelpful) situation, and the rest of the report is still worth storing.
    """
    yy, pp = _pair(y, p, probability=False)
    n_pos = float(yy.sum())
    n_neg = float(yy.shape[0] - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(pp)
    u = float(ranks[yy == 1.0].sum()) - n_pos * (n_pos + 1.0) / 2.0
    return float(u / (n_pos * n_neg))


def pr_auc(y: ArrayLike, p: ArrayLike) -> float | None:
    """Average precision (step-wise area under the precision-recall curve).

    Uses the same definition as scikit-learn's ``average_precision_score`` (no interpolation:
    trapezoidal PR-AUC is optimistic). Returns ``None`` when there are no positives, because
    recall is undefined; with no negatives every threshold has precision 1, so it is 1.0.
    PR-AUC is reported alongside ROC-AUC because goal events are usually rare, and ROC-AUC
    hides how many false positives a marketer would have to contact.
    """
    yy, pp = _pair(y, p, probability=False)
    n_pos = float(yy.sum())
    if n_pos == 0:
        return None
    order = _ranking(pp)
    ys = yy[order]
    ps = pp[order]
    # one operating point per distinct score: the last row of each run of ties
    last = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1.0)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def log_loss(y: ArrayLike, p: ArrayLike, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood, with the probability of the observed outcome floored at
    ``eps`` (equivalent to clipping ``p`` to ``[eps, 1 - eps]``).

    Clipping keeps one confidently wrong 0/1 prediction from turning the whole report into
    ``inf`` (which is not JSON); ``eps`` is exposed so callers can match other tools. The
    floor is applied to ``1 - p`` directly rather than computing ``1 - (1 - eps)``, which is
    not exactly ``eps`` in floating point, so both kinds of confident mistake cost the same.
    """
    if not (0.0 < eps < 0.5):
        raise ValueError(f"eps must be in (0, 0.5), got {eps!r}")
    yy, pp = _pair(y, p, probability=True)
    p_observed = np.where(yy == 1.0, pp, 1.0 - pp)
    return float(-np.mean(np.log(np.maximum(p_observed, eps))))


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Mean squared error of the probabilities.

    Reported next to log-loss because it is bounded (0..1) and so readable on a dashboard,
    and it is not dominated by a handful of extreme mistakes.
    """
    yy, pp = _pair(y, p, probability=True)
    return float(np.mean((pp - yy) ** 2))


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------


def calibration_table(
    y: ArrayLike,
    p: ArrayLike,
    bins: int = 10,
    strategy: Literal["quantile", "uniform"] = "quantile",
) -> list[dict[str, Any]]:
    """Mean predicted probability against observed rate, per bin of predicted probability.

    ``quantile`` (the default) gives bins of roughly equal size, so every row carries enough
    users to be trusted even when predictions bunch near 0, as they do for rare goals. Tied
    quantile edges are merged, so heavy ties yield fewer than ``bins`` rows; bins left empty
    by interpolated edges are dropped, as they carry no information.

    ``uniform`` uses the fixed grid 0, 1/bins, ..., 1 and keeps empty bins (with ``None``
    rates) so that tables from different models line up row by row.

    Each bin is ``[lower, upper)`` except the last, which includes ``upper``.
    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if strategy not in ("quantile", "uniform"):
        raise ValueError(f"strategy must be 'quantile' or 'uniform', got {strategy!r}")
    yy, pp = _pair(y, p, probability=True)

    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, int(bins) + 1)
    else:
        edges = np.unique(np.quantile(pp, np.linspace(0.0, 1.0, int(bins) + 1)))
        if edges.shape[0] == 1:  # every prediction identical: one degenerate bin
            edges = np.r_[edges, edges]
    n_bins = edges.shape[0] - 1
    idx = np.clip(np.searchsorted(edges, pp, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=pp, minlength=n_bins)
    sum_y = np.bincount(idx, weights=yy, minlength=n_bins)

    rows: list[dict[str, Any]] = []
    for i in range(n_bins):
        count = int(counts[i])
        if count == 0 and strategy == "quantile":
            continue
        rows.append(
            {
                "bin": len(rows),
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": count,
                "mean_predicted": _ratio(sum_p[i], count),
                "observed_rate": _ratio(sum_y[i], count),
            }
        )
    return rows


def gains_table(y: ArrayLike, p: ArrayLike, groups: int = 10) -> list[dict[str, Any]]:
    """Cumulative gains / lift by score group, best-scored group first.

    Users are ordered by score descending with ties in input order, then cut into ``groups``
    slices whose sizes differ by at most one (earlier slices take the remainder). Cutting by
    position rather than by score value keeps every row the requested size even when many
    users share a score, which is common for tree models. Empty slices (``n < groups``) are
    omitted. ``lift`` is the slice rate over the overall rate (``None`` if there are no
    positives); ``decile`` is 1-based, whatever ``groups`` is, to match how marketers speak.
    """
    if isinstance(groups, bool) or not isinstance(groups, int | np.integer) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    yy, pp = _pair(y, p, probability=False)
    n = yy.shape[0]
    total_pos = float(yy.sum())
    base_rate = total_pos / n
    ys = yy[_ranking(pp)]

    rows: list[dict[str, Any]] = []
    cum_users = 0
    cum_pos = 0.0
    for g, chunk in enumerate(np.array_split(ys, int(groups)), start=1):
        count = int(chunk.shape[0])
        if count == 0:
            continue
        positives = float(chunk.sum())
        cum_users += count
        cum_pos += positives
        rate = positives / count
        rows.append(
            {
                "decile": g,
                "count": count,
                "positives": int(positives),
                "rate": float(rate),
                "lift": _ratio(rate, base_rate),
                "cumulative_share_of_positives": _ratio(cum_pos, total_pos),
                "cumulative_share_of_users": float(cum_users / n),
            }
        )
    return rows


def size_vs_precision(
    y: ArrayLike, p: ArrayLike, points: Sequence[float] = DEFAULT_SHARES
) -> list[dict[str, Any]]:
    """Precision, recall and lift of targeting the top ``share`` of users by score.

    This is the audience-size chooser: a bigger audience reaches more of the eventual
    converters (recall) at the cost of contacting more non-converters (precision). The
    audience size is ``share * n`` rounded half up, exactly as ``assign_groups`` sizes its
    groups, so "top 20 %" here is the same set of users as the High group. Ties are broken by
    input order. ``precision`` is ``None`` for an audience of 0 users; ``recall`` and ``lift``
    are ``None`` when there are no positives.
    """
    shares = [float(s) for s in points]
    for s in shares:
        if not (0.0 < s <= 1.0):
            raise ValueError(f"every share must be in (0, 1], got {s!r}")
    yy, pp = _pair(y, p, probability=False)
    n = yy.shape[0]
    total_pos = float(yy.sum())
    base_rate = total_pos / n
    cum_pos = np.r_[0.0, np.cumsum(yy[_ranking(pp)])]

    rows: list[dict[str, Any]] = []
    for s in shares:
        k = _count(s, n)
        hits = float(cum_pos[k])
        precision = _ratio(hits, k)
        rows.append(
            {
                "share": s,
                "users": k,
                "precision": precision,
                "recall": _ratio(hits, total_pos),
                "lift": None if precision is None else _ratio(precision, base_rate),
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# likelihood groups
# --------------------------------------------------------------------------------------------


def _require_number(name: str, value: object) -> None:
    """Reject booleans and strings early: ``True`` as a fraction is a caller bug, not 1.0."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a number, got {value!r}")


def _check_fractions(high: float, medium: float) -> None:
    for name, value in (("high", high), ("medium", medium)):
        _require_number(name, value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if not high > 0:
        raise ValueError(f"high must be > 0, got {high!r}")
    if not medium >= 0:
        raise ValueError(f"medium must be >= 0, got {medium!r}")
    if high + medium > 1.0 + _ROUND_SLACK:
        raise ValueError(f"high + medium must be <= 1, got {high} + {medium} = {high + medium}")


def assign_groups(
    raw: ArrayLike, keys: ArrayLike, high: float = 0.2, medium: float = 0.3
) -> np.ndarray:
    """Split users into High/Medium/Low by rank of the raw model output.

    Ranking (rather than thresholding probabilities) makes the group sizes exactly what the
    campaign was planned for, even when a model outputs many identical scores. The order is
    raw score descending, then ``keys`` ascending (e.g. identity strings), so the assignment
    depends only on the data, not on row order, and a rerun gives the same users the same
    group. Keys must therefore be unique. Group sizes are
    ``n_high = round(high * N)`` and ``n_medium = round((high + medium) * N) - n_high``
    (rounding half up), so sizes stay consistent with ``size_vs_precision`` shares.

    ``raw`` may be anything monotone in the probability (margin, log-odds, probability);
    using the raw margin avoids ties created by probabilities saturating at 0 or 1.
    """
    _check_fractions(high, medium)
    scores = _scores(raw, "raw", probability=False, allow_empty=True)
    key_arr = np.asarray(keys)
    if key_arr.ndim != 1:
        raise ValueError(f"keys must be a 1-d array, got shape {key_arr.shape}")
    if key_arr.shape[0] != scores.shape[0]:
        raise ValueError(
            f"length mismatch: raw has {scores.shape[0]} rows, keys has {key_arr.shape[0]}"
        )
    n = scores.shape[0]
    # Sort the keys once and reuse that order both to detect duplicates and as integer
    # tie-break ranks: sorting strings is the expensive part, and np.unique plus a lexsort on
    # the strings would do it twice (about 3x slower for a million identities).
    try:
        key_order = np.argsort(key_arr, kind="stable")
    except TypeError as exc:
        raise ValueError(f"keys must be mutually comparable (e.g. all strings): {exc}") from exc
    sorted_keys = key_arr[key_order]
    dup = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    if dup.size:
        raise ValueError(
            "keys must be unique, otherwise tied users would be ordered by row position "
            f"({dup.size} duplicate key(s), e.g. {dup[0].tolist()!r})"
        )
    key_rank = np.empty(n, dtype=np.int64)
    key_rank[key_order] = np.arange(n)
    order = np.lexsort((key_rank, -scores))  # lexsort: the last key is the primary one

    n_high = _count(high, n)
    n_top = _count(high + medium, n)
    out = np.full(n, GROUPS[2], dtype="<U6")
    out[order[:n_top]] = GROUPS[1]
    out[order[:n_high]] = GROUPS[0]
    return out


def assign_groups_by_threshold(
    prob: ArrayLike, high_threshold: float, medium_threshold: float
) -> np.ndarray:
    """Split users by fixed probability cut-offs: ``>= high`` is High, ``>= medium`` Medium.

    The alternative to ranking when the business thinks in absolute terms ("anyone above
    30 % is worth a discount"); group sizes then vary with the population. Boundaries are
    inclusive so that a threshold equal to a commonly-predicted value is predictable.
    """
    pp = _scores(prob, "prob", probability=True, allow_empty=True)
    for name, value in (("high_threshold", high_threshold), ("medium_threshold", medium_threshold)):
        _require_number(name, value)
        if not (0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if medium_threshold > high_threshold:
        raise ValueError(
            f"medium_threshold ({medium_threshold}) must not exceed "
            f"high_threshold ({high_threshold})"
        )
    out = np.full(pp.shape[0], GROUPS[2], dtype="<U6")
    out[pp >= medium_threshold] = GROUPS[1]
    out[pp >= high_threshold] = GROUPS[0]
    return out


def group_report(y: ArrayLike | None, p: ArrayLike, groups: ArrayLike) -> dict[str, dict[str, Any]]:
    """Expected (mean predicted) versus realised (mean observed) rate for each group.

    Used for backtests: if High's realised rate is not clearly above Medium's, the grouping
    is not worth acting on regardless of AUC. ``y`` may be ``None`` for a live prediction run
    whose outcomes are not known yet. High, Medium and Low are always present (an empty group
    is worth seeing, with ``None`` rates); any other labels follow in sorted order.
    """
    pp = _scores(p, probability=True)
    g = np.asarray(groups).astype(str)
    if g.ndim != 1:
        raise ValueError(f"groups must be a 1-d array, got shape {g.shape}")
    if g.shape[0] != pp.shape[0]:
        raise ValueError(f"length mismatch: p has {pp.shape[0]} rows, groups has {g.shape[0]}")
    yy: np.ndarray | None = None
    if y is not None:
        yy = _labels(y)
        if yy.shape[0] != pp.shape[0]:
            raise ValueError(f"length mismatch: y has {yy.shape[0]} rows, p has {pp.shape[0]}")

    labels = list(GROUPS) + sorted(set(g.tolist()) - set(GROUPS))
    report: dict[str, dict[str, Any]] = {}
    for label in labels:
        mask = g == label
        size = int(mask.sum())
        report[label] = {
            "size": size,
            "expected_rate": _ratio(float(pp[mask].sum()), size),
            "realised_rate": None if yy is None else _ratio(float(yy[mask].sum()), size),
        }
    return report


# --------------------------------------------------------------------------------------------
# bundle
# --------------------------------------------------------------------------------------------


def quality_report(
    y: ArrayLike,
    p: ArrayLike,
    *,
    bins: int = 10,
    groups: int = 10,
    points: Sequence[float] = DEFAULT_SHARES,
) -> dict[str, Any]:
    """Everything the registry stores about a model's quality, as one JSON-ready dict.

    Inputs are validated once up front so that a bad input fails with one clear message
    instead of partway through building the report.
    """
    yy, pp = _pair(y, p, probability=True)
    n = int(yy.shape[0])
    return {
        "n": n,
        "base_rate": float(yy.sum() / n),
        "auc": auc(yy, pp),
        "pr_auc": pr_auc(yy, pp),
        "log_loss": log_loss(yy, pp),
        "brier": brier(yy, pp),
        "calibration": calibration_table(yy, pp, bins=bins),
        "gains": gains_table(yy, pp, groups=groups),
        "size_vs_precision": size_vs_precision(yy, pp, points=points),
    }
