"""Tests for propel.predictions.quality: metrics agree with scikit-learn, tables behave on
simulated predictors whose true quality is known, and group assignment is exact and
reproducible under heavy ties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from propel.predictions import quality as q

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _informative(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Perfectly calibrated predictor: y ~ Bernoulli(p), so observed rate == p in expectation."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.0, 4.0, size=n)
    y = (rng.random(n) < p).astype(int)
    return y, p


def _assert_plain_json(value: object) -> None:
    """Registry/dashboard storage needs builtin types only; numpy scalars would slip through
    json.dumps(default=...) setups but break plain ones."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert type(k) is str
            _assert_plain_json(v)
    elif isinstance(value, list):
        for v in value:
            _assert_plain_json(v)
    else:
        assert value is None or type(value) in (int, float, str), (value, type(value))
        if type(value) is float:
            assert math.isfinite(value)


# --------------------------------------------------------------------------------------------
# scalar metrics
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rounding", [None, 1, 2])
def test_metrics_agree_with_sklearn(seed: int, rounding: int | None) -> None:
    # rounding creates heavy ties, which is where hand-written AUC/AP usually go wrong
    rng = np.random.default_rng(seed)
    n = 2000
    y = rng.integers(0, 2, size=n)
    p = np.clip(0.3 * y + 0.7 * rng.random(n), 0.001, 0.999)
    if rounding is not None:
        p = np.round(p, rounding)
        p = np.clip(p, 0.001, 0.999)
    assert q.auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert q.pr_auc(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert q.log_loss(y, p) == pytest.approx(skm.log_loss(y, p), rel=1e-12)
    assert q.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p), rel=1e-12)


def test_rank_metrics_accept_raw_scores_and_match_sklearn() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, size=500)
    margin = 2.0 * y + rng.normal(size=500) * 3.0  # unbounded, like a GBM margin
    assert q.auc(y, margin) == pytest.approx(skm.roc_auc_score(y, margin), abs=1e-12)
    assert q.pr_auc(y, margin) == pytest.approx(skm.average_precision_score(y, margin), abs=1e-12)


def test_perfect_and_inverted_classifier() -> None:
    y = np.array([0, 0, 0, 1, 1, 0, 1])
    p = y * 0.8 + 0.1
    assert q.auc(y, p) == 1.0
    assert q.pr_auc(y, p) == 1.0
    assert q.auc(y, 1.0 - p) == 0.0


def test_random_classifier_has_auc_near_half() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=40_000)
    p = rng.random(40_000)
    assert q.auc(y, p) == pytest.approx(0.5, abs=0.01)
    assert q.pr_auc(y, p) == pytest.approx(y.mean(), abs=0.01)


def test_constant_scores_give_auc_exactly_half() -> None:
    y = np.array([0, 1, 0, 1, 1])
    assert q.auc(y, np.full(5, 0.4)) == 0.5
    assert q.pr_auc(y, np.full(5, 0.4)) == pytest.approx(0.6)


def test_single_class_returns_none_instead_of_raising() -> None:
    p = np.array([0.1, 0.5, 0.9])
    assert q.auc([0, 0, 0], p) is None
    assert q.auc([1, 1, 1], p) is None
    assert q.pr_auc([0, 0, 0], p) is None
    assert q.pr_auc([1, 1, 1], p) == 1.0
    # the probability metrics are still defined
    assert q.brier([0, 0, 0], p) == pytest.approx(np.mean(p**2))


def test_log_loss_clips_confident_mistakes() -> None:
    value = q.log_loss([1, 0], [0.0, 1.0])
    assert value == pytest.approx(-math.log(1e-15), rel=1e-12)
    assert q.log_loss([1, 0], [0.0, 1.0], eps=1e-3) == pytest.approx(-math.log(1e-3))
    assert q.log_loss([1, 0], [1.0, 0.0]) == pytest.approx(0.0, abs=1e-12)


def test_scalar_metrics_return_builtin_float() -> None:
    y, p = _informative(200, 0)
    for value in (q.auc(y, p), q.pr_auc(y, p), q.log_loss(y, p), q.brier(y, p)):
        assert type(value) is float


def test_boolean_labels_are_accepted() -> None:
    y, p = _informative(300, 1)
    assert q.auc(y.astype(bool), p) == q.auc(y, p)


# --------------------------------------------------------------------------------------------
# error cases
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        q.auc,
        q.pr_auc,
        q.log_loss,
        q.brier,
        q.calibration_table,
        q.gains_table,
        q.size_vs_precision,
        q.quality_report,
    ],
)
def test_length_mismatch(fn) -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        fn([0, 1, 0], [0.1, 0.2])


@pytest.mark.parametrize("bad", [[0, 1, 2], [0, -1, 1], [0, 0.5, 1], [0, 1, float("nan")]])
@pytest.mark.parametrize("fn", [q.auc, q.pr_auc, q.log_loss, q.brier, q.gains_table])
def test_non_binary_labels(fn, bad) -> None:
    with pytest.raises(ValueError, match="binary|NaN"):
        fn(bad, [0.1, 0.2, 0.3])


def test_non_binary_message_names_offending_values() -> None:
    with pytest.raises(ValueError, match=r"found 2\.0"):
        q.auc([0, 1, 2], [0.1, 0.2, 0.3])


@pytest.mark.parametrize("fn", [q.log_loss, q.brier, q.calibration_table])
def test_probability_metrics_reject_out_of_range(fn) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn([0, 1], [-0.1, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fn([0, 1], [0.5, 1.5])


def test_other_input_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        q.auc([], [])
    with pytest.raises(ValueError, match="NaN or infinite"):
        q.auc([0, 1], [0.1, float("inf")])
    with pytest.raises(ValueError, match="1-d"):
        q.brier([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="eps"):
        q.log_loss([0, 1], [0.1, 0.2], eps=0)
    with pytest.raises(ValueError, match="bins"):
        q.calibration_table([0, 1], [0.1, 0.2], bins=0)
    with pytest.raises(ValueError, match="strategy"):
        q.calibration_table([0, 1], [0.1, 0.2], strategy="kmeans")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="groups"):
        q.gains_table([0, 1], [0.1, 0.2], groups=0)
    with pytest.raises(ValueError, match="share"):
        q.size_vs_precision([0, 1], [0.1, 0.2], points=(0.0, 0.5))
    with pytest.raises(ValueError, match="share"):
        q.size_vs_precision([0, 1], [0.1, 0.2], points=(1.5,))


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_calibrated_predictor_observed_matches_predicted(strategy: str) -> None:
    y, p = _informative(60_000, 11)
    table = q.calibration_table(y, p, bins=10, strategy=strategy)  # type: ignore[arg-type]
    assert sum(row["count"] for row in table) == len(y)
    assert [row["bin"] for row in table] == list(range(len(table)))
    for row in table:
        if row["count"] < 300:  # the sparse top uniform bins are too noisy to test tightly
            continue
        # binomial standard error is at most 0.5/sqrt(count); 4 SE keeps this test stable
        tol = 4 * 0.5 / math.sqrt(row["count"])
        assert row["observed_rate"] == pytest.approx(row["mean_predicted"], abs=tol)
        assert row["lower"] <= row["mean_predicted"] <= row["upper"]


def test_miscalibrated_predictor_is_visible() -> None:
    y, p = _informative(20_000, 12)
    table = q.calibration_table(y, p / 2.0, bins=5)  # halved: systematic under-prediction
    assert all(row["observed_rate"] > row["mean_predicted"] * 1.5 for row in table)


def test_quantile_bins_have_equal_counts() -> None:
    rng = np.random.default_rng(4)
    p = rng.random(1000)
    y = rng.integers(0, 2, size=1000)
    table = q.calibration_table(y, p, bins=10)
    assert [row["count"] for row in table] == [100] * 10
    assert table[0]["lower"] == p.min() and table[-1]["upper"] == p.max()


def test_uniform_bins_keep_empty_bins_with_none() -> None:
    table = q.calibration_table([0, 1, 1], [0.05, 0.07, 0.95], bins=10, strategy="uniform")
    assert len(table) == 10
    assert [row["count"] for row in table] == [2, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table[1]["mean_predicted"] is None and table[1]["observed_rate"] is None
    assert table[0]["lower"] == 0.0 and table[-1]["upper"] == 1.0
    assert table[0]["observed_rate"] == 0.5
    assert table[0]["mean_predicted"] == pytest.approx(0.06)


def test_uniform_bins_put_one_in_last_bin() -> None:
    table = q.calibration_table([1, 0], [1.0, 0.0], bins=4, strategy="uniform")
    assert table[-1]["count"] == 1 and table[0]["count"] == 1


def test_bins_are_closed_on_the_left() -> None:
    # [lower, upper): a prediction exactly on an inner edge belongs to the upper bin
    table = q.calibration_table([0, 1, 1], [0.25, 0.5, 0.75], bins=2, strategy="uniform")
    assert [row["count"] for row in table] == [1, 2]
    assert table[1]["mean_predicted"] == pytest.approx(0.625)


def test_quantile_bins_merge_tied_edges() -> None:
    # 90 % of predictions identical: quantile edges collapse, every user still lands in a bin
    p = np.r_[np.full(900, 0.01), np.linspace(0.2, 0.9, 100)]
    y = np.r_[np.zeros(900), np.ones(100)]
    table = q.calibration_table(y, p, bins=10)
    assert len(table) < 10
    assert sum(row["count"] for row in table) == 1000
    assert table[0]["mean_predicted"] == pytest.approx(0.01)
    assert table[0]["observed_rate"] == 0.0

    constant = q.calibration_table([0, 1, 1, 0], [0.3] * 4, bins=10)
    assert constant == [
        {
            "bin": 0,
            "lower": 0.3,
            "upper": 0.3,
            "count": 4,
            "mean_predicted": pytest.approx(0.3),
            "observed_rate": 0.5,
        }
    ]


# --------------------------------------------------------------------------------------------
# gains
# --------------------------------------------------------------------------------------------


def test_gains_informative_score() -> None:
    y, p = _informative(20_000, 21)
    table = q.gains_table(y, p, groups=10)
    assert [row["decile"] for row in table] == list(range(1, 11))
    assert [row["count"] for row in table] == [2000] * 10
    assert table[0]["lift"] > 2.0
    assert table[-1]["lift"] < 0.5
    rates = [row["rate"] for row in table]
    assert rates[0] > rates[4] > rates[-1]
    assert table[-1]["cumulative_share_of_positives"] == pytest.approx(1.0, abs=1e-12)
    assert table[-1]["cumulative_share_of_users"] == pytest.approx(1.0, abs=1e-12)
    cum = [row["cumulative_share_of_positives"] for row in table]
    assert cum == sorted(cum)
    assert sum(row["positives"] for row in table) == int(y.sum())
    # lift-weighted rates average back to the base rate
    assert np.mean([row["lift"] for row in table]) == pytest.approx(1.0)


def test_gains_ties_broken_by_input_order() -> None:
    # all scores equal: the first group must be the first rows, not an arbitrary sort result
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    table = q.gains_table(y, np.zeros(10), groups=5)
    assert [row["positives"] for row in table] == [2, 0, 0, 0, 0]
    assert table[0]["lift"] == pytest.approx(5.0)


def test_gains_uneven_sizes_and_small_n() -> None:
    y = np.array([1, 0, 1, 0, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    table = q.gains_table(y, p, groups=3)
    assert [row["count"] for row in table] == [3, 2, 2]
    assert [row["positives"] for row in table] == [2, 0, 1]
    small = q.gains_table([1, 0], [0.9, 0.1], groups=10)
    assert [row["count"] for row in small] == [1, 1]
    assert small[-1]["cumulative_share_of_users"] == 1.0


def test_gains_without_positives_has_none_lift() -> None:
    table = q.gains_table([0, 0, 0, 0], [0.4, 0.3, 0.2, 0.1], groups=2)
    assert all(row["lift"] is None for row in table)
    assert all(row["cumulative_share_of_positives"] is None for row in table)
    assert table[-1]["cumulative_share_of_users"] == 1.0


# --------------------------------------------------------------------------------------------
# size vs precision
# --------------------------------------------------------------------------------------------


def test_size_vs_precision_hand_computed() -> None:
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 1])
    p = np.linspace(1.0, 0.1, 10)
    rows = q.size_vs_precision(y, p, points=(0.2, 0.5, 1.0))
    assert [r["users"] for r in rows] == [2, 5, 10]
    assert [r["precision"] for r in rows] == [1.0, 0.6, 0.4]
    assert [r["recall"] for r in rows] == [0.5, 0.75, 1.0]
    assert [r["lift"] for r in rows] == pytest.approx([2.5, 1.5, 1.0])


def test_size_vs_precision_default_points_and_whole_population() -> None:
    y, p = _informative(5000, 31)
    rows = q.size_vs_precision(y, p)
    assert [r["share"] for r in rows] == list(q.DEFAULT_SHARES)
    assert rows[0]["users"] == 250
    last = rows[-1]
    assert last["users"] == 5000
    assert last["recall"] == 1.0
    assert last["precision"] == pytest.approx(y.mean())
    assert last["lift"] == pytest.approx(1.0)
    precisions = [r["precision"] for r in rows]
    recalls = [r["recall"] for r in rows]
    assert precisions[0] > precisions[-1]
    assert recalls == sorted(recalls)


def test_size_vs_precision_matches_high_group() -> None:
    # "top 20 %" in the chooser must be the same users as the High group
    y, p = _informative(1003, 32)
    keys = [f"u{i:05d}" for i in range(len(p))]
    groups = q.assign_groups(p, keys, high=0.2, medium=0.3)
    row = q.size_vs_precision(y, p, points=(0.2,))[0]
    assert row["users"] == int((groups == "High").sum())
    assert row["precision"] == pytest.approx(y[groups == "High"].mean())


def test_size_vs_precision_tiny_audience_and_no_positives() -> None:
    rows = q.size_vs_precision([0, 0, 0], [0.3, 0.2, 0.1], points=(0.1, 1.0))
    assert rows[0]["users"] == 0 and rows[0]["precision"] is None and rows[0]["lift"] is None
    assert rows[1]["precision"] == 0.0 and rows[1]["recall"] is None and rows[1]["lift"] is None


# --------------------------------------------------------------------------------------------
# group assignment
# --------------------------------------------------------------------------------------------


def _counts(groups: np.ndarray) -> dict[str, int]:
    return {g: int((groups == g).sum()) for g in q.GROUPS}


def test_all_tied_scores_split_exactly_by_key() -> None:
    rng = np.random.default_rng(41)
    keys = np.array([f"user-{i:04d}" for i in rng.permutation(1000)])
    raw = np.full(1000, 0.37)
    groups = q.assign_groups(raw, keys)
    assert _counts(groups) == {"High": 200, "Medium": 300, "Low": 500}
    by_key = dict(zip(keys.tolist(), groups.tolist(), strict=True))
    ordered = sorted(by_key)
    assert all(by_key[k] == "High" for k in ordered[:200])
    assert all(by_key[k] == "Medium" for k in ordered[200:500])
    assert all(by_key[k] == "Low" for k in ordered[500:])
    # rerun and reshuffled input: each identity keeps its group
    assert np.array_equal(q.assign_groups(raw, keys), groups)
    perm = rng.permutation(1000)
    shuffled = q.assign_groups(raw[perm], keys[perm])
    assert dict(zip(keys[perm].tolist(), shuffled.tolist(), strict=True)) == by_key


def test_score_dominates_key_and_ties_straddle_boundary() -> None:
    # ten users; the High boundary (2 users) falls inside a block of three tied scores
    raw = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    keys = np.array(["z", "c", "a", "b", "d", "e", "f", "g", "h", "i"])
    groups = q.assign_groups(raw, keys, high=0.2, medium=0.3)
    # order: z(0.9), a, b, c (0.5, by key), then d..i
    assert groups.tolist() == [
        "High",
        "Medium",
        "High",
        "Medium",
        "Medium",
        "Low",
        "Low",
        "Low",
        "Low",
        "Low",
    ]


def test_group_sizes_round_half_up() -> None:
    # N=7: round(1.4)=1 High, round(3.5)=4 -> 3 Medium, 3 Low
    g = q.assign_groups(np.arange(7.0), [str(i) for i in range(7)])
    assert _counts(g) == {"High": 1, "Medium": 3, "Low": 3}
    # 0.15 * 10 is 1.4999999999999998 in binary; half-up must still give 2
    g = q.assign_groups(np.arange(10.0), [str(i) for i in range(10)], high=0.15, medium=0.1)
    assert _counts(g) == {"High": 2, "Medium": 1, "Low": 7}
    g = q.assign_groups(np.arange(10.0), [str(i) for i in range(10)], high=0.7, medium=0.3)
    assert _counts(g) == {"High": 7, "Medium": 3, "Low": 0}


def test_assign_groups_types_and_empty() -> None:
    # N=2: round(0.4) = 0 High users, round(1.0) = 1 in High+Medium
    g = q.assign_groups([0.2, 0.1], ["a", "b"])
    assert isinstance(g, np.ndarray) and g.tolist() == ["Medium", "Low"]
    assert q.assign_groups([], []).shape == (0,)
    assert q.assign_groups([3.0, -1.0, 7.0], [1, 2, 3], high=0.34).tolist() == [
        "Medium",
        "Low",
        "High",
    ]


@pytest.mark.parametrize(
    ("high", "medium"),
    [(0.0, 0.3), (-0.1, 0.3), (0.2, -0.1), (0.8, 0.3), (float("nan"), 0.1), (True, 0.1)],
)
def test_assign_groups_rejects_bad_fractions(high: float, medium: float) -> None:
    with pytest.raises(ValueError):
        q.assign_groups([0.1, 0.2], ["a", "b"], high=high, medium=medium)


def test_assign_groups_input_errors() -> None:
    with pytest.raises(ValueError, match="unique"):
        q.assign_groups([0.1, 0.2, 0.3], ["a", "b", "a"])
    with pytest.raises(ValueError, match="length mismatch"):
        q.assign_groups([0.1, 0.2], ["a"])
    with pytest.raises(ValueError, match="NaN"):
        q.assign_groups([0.1, float("nan")], ["a", "b"])
    with pytest.raises(ValueError, match="comparable"):
        q.assign_groups([0.1, 0.2], np.array(["a", 1], dtype=object))


def test_assign_groups_by_threshold() -> None:
    prob = np.array([0.05, 0.1, 0.29, 0.3, 0.31, 0.9])
    g = q.assign_groups_by_threshold(prob, high_threshold=0.3, medium_threshold=0.1)
    assert g.tolist() == ["Low", "Medium", "Medium", "High", "High", "High"]
    same = q.assign_groups_by_threshold(prob, high_threshold=0.3, medium_threshold=0.3)
    assert "Medium" not in same.tolist()
    assert q.assign_groups_by_threshold([], 0.5, 0.2).shape == (0,)


@pytest.mark.parametrize(
    ("prob", "high", "medium", "match"),
    [
        ([0.1], 0.2, 0.3, "must not exceed"),
        ([0.1], 1.2, 0.3, r"\[0, 1\]"),
        ([0.1], 0.5, -0.1, r"\[0, 1\]"),
        ([1.1], 0.5, 0.1, r"\[0, 1\]"),
        ([float("nan")], 0.5, 0.1, "NaN"),
    ],
)
def test_assign_groups_by_threshold_errors(prob, high, medium, match) -> None:
    with pytest.raises(ValueError, match=match):
        q.assign_groups_by_threshold(prob, high, medium)


# --------------------------------------------------------------------------------------------
# group report and bundle
# --------------------------------------------------------------------------------------------


def test_group_report_backtest() -> None:
    y, p = _informative(10_000, 51)
    groups = q.assign_groups(p, [f"k{i}" for i in range(len(p))])
    report = q.group_report(y, p, groups)
    assert list(report) == ["High", "Medium", "Low"]
    assert [report[g]["size"] for g in q.GROUPS] == [2000, 3000, 5000]
    assert report["High"]["realised_rate"] > report["Medium"]["realised_rate"]
    assert report["Medium"]["realised_rate"] > report["Low"]["realised_rate"]
    for g in q.GROUPS:  # calibrated simulation: expected ~ realised
        assert report[g]["realised_rate"] == pytest.approx(report[g]["expected_rate"], abs=0.03)
    _assert_plain_json(report)


def test_group_report_without_outcomes_and_empty_groups() -> None:
    report = q.group_report(None, [0.8, 0.6, 0.2], ["High", "High", "Low"])
    assert report["High"] == {"size": 2, "expected_rate": pytest.approx(0.7), "realised_rate": None}
    assert report["Medium"] == {"size": 0, "expected_rate": None, "realised_rate": None}
    assert report["Low"]["realised_rate"] is None
    extra = q.group_report([1, 0], [0.5, 0.5], ["High", "Custom"])
    assert list(extra) == ["High", "Medium", "Low", "Custom"]
    _assert_plain_json(report)


def test_group_report_errors() -> None:
    with pytest.raises(ValueError, match="length mismatch"):
        q.group_report([0, 1], [0.1, 0.2], ["High"])
    with pytest.raises(ValueError, match="length mismatch"):
        q.group_report([0, 1, 1], [0.1, 0.2], ["High", "Low"])
    with pytest.raises(ValueError, match="binary"):
        q.group_report([0, 3], [0.1, 0.2], ["High", "Low"])


def test_quality_report_bundle_is_json_ready() -> None:
    y, p = _informative(3000, 61)
    report = q.quality_report(y, p)
    assert set(report) == {
        "auc",
        "pr_auc",
        "log_loss",
        "brier",
        "base_rate",
        "n",
        "calibration",
        "gains",
        "size_vs_precision",
    }
    assert report["n"] == 3000
    assert report["base_rate"] == pytest.approx(y.mean())
    assert report["auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert len(report["calibration"]) == 10 and len(report["gains"]) == 10
    _assert_plain_json(report)
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_quality_report_single_class_is_still_serialisable() -> None:
    report = q.quality_report([0, 0, 0, 0], [0.1, 0.2, 0.1, 0.05])
    assert report["auc"] is None and report["pr_auc"] is None
    _assert_plain_json(report)
    json.dumps(report, allow_nan=False)
