"""Likelihood models as scikit-learn style pipelines:

    BG/NBD features  →  estimator (LightGBM | logistic regression | BG/NBD alone)
                     →  calibration (isotonic, or Platt on small data)

Hyper-parameters live in ``__init__``, ``fit`` returns ``self``, learned state ends in
``_``. ``raw_score`` is the uncalibrated model output used for ranking (group
boundaries); ``predict_proba`` is the calibrated probability of the goal.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from propel.predictions.btyd import BetaGeoModel
from propel.predictions.features import FeatureSpec

KINDS = ("lightgbm", "logistic", "bgnbd")
BG_COLUMNS = ("_bg_x", "_bg_tx", "_bg_T")


class BgNbdFeatures:
    """Fits BG/NBD on the goal-event history and adds its two summaries as features:
    expected goal events in the window and probability of being alive."""

    def __init__(self, window_days: int, penalizer: float = 0.001) -> None:
        self.window_days = window_days
        self.penalizer = penalizer

    def fit(self, frame: pd.DataFrame) -> BgNbdFeatures:
        x, tx, T = (frame[c].to_numpy(float) for c in BG_COLUMNS)
        keep = T > 0
        self.model_: BetaGeoModel | None
        try:
            self.model_ = BetaGeoModel(penalizer=self.penalizer).fit(x[keep], tx[keep], T[keep])
        except ValueError:  # too few customers or nothing observed: features stay empty
            self.model_ = None
        return self

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        if self.model_ is None:
            out["bgnbd_expected"] = np.nan
            out["bgnbd_p_alive"] = np.nan
            return out
        x, tx, T = (frame[c].to_numpy(float) for c in BG_COLUMNS)
        T = np.maximum(T, tx)
        out["bgnbd_expected"] = self.model_.expected_transactions(self.window_days, x, tx, T)
        out["bgnbd_p_alive"] = self.model_.probability_alive(x, tx, T)
        return out

    def p_at_least_one(self, frame: pd.DataFrame) -> np.ndarray:
        if self.model_ is None:
            return np.full(len(frame), np.nan)
        x, tx, T = (frame[c].to_numpy(float) for c in BG_COLUMNS)
        return self.model_.probability_at_least_one(self.window_days, x, tx, np.maximum(T, tx))


class Calibrator:
    """Maps raw scores to probabilities: isotonic with enough data, else Platt."""

    def __init__(self, min_isotonic_rows: int = 2000, min_isotonic_positives: int = 100) -> None:
        self.min_isotonic_rows = min_isotonic_rows
        self.min_isotonic_positives = min_isotonic_positives

    def fit(self, raw: np.ndarray, y: np.ndarray) -> Calibrator:
        raw = np.nan_to_num(np.asarray(raw, float), nan=0.0)
        use_isotonic = len(y) >= self.min_isotonic_rows and y.sum() >= \
            self.min_isotonic_positives
        if use_isotonic:
            self.method_ = "isotonic"
            self.model_ = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4)
            self.model_.fit(raw, y)
        else:
            self.method_ = "platt"
            self.model_ = LogisticRegression(C=1e4).fit(raw.reshape(-1, 1), y)
        return self

    def transform(self, raw: np.ndarray) -> np.ndarray:
        raw = np.nan_to_num(np.asarray(raw, float), nan=0.0)
        if self.method_ == "isotonic":
            return self.model_.predict(raw)
        return self.model_.predict_proba(raw.reshape(-1, 1))[:, 1]


class LikelihoodModel:
    def __init__(self, kind: str, feature_spec: FeatureSpec, window_days: int, seed: int = 7,
                 num_threads: int = 1, max_rounds: int = 600) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        self.kind = kind
        self.feature_spec = feature_spec
        self.window_days = window_days
        self.seed = seed
        self.num_threads = num_threads
        self.max_rounds = max_rounds

    # -- features ------------------------------------------------------------------------

    def _matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        enriched = self.bg_.transform(frame)
        return enriched[self.feature_names_]

    def _numeric(self, frame: pd.DataFrame) -> np.ndarray:
        matrix = self._matrix(frame)
        numeric = matrix[[c for c in self.feature_names_ if c not in self.categorical_]]
        values = numeric.to_numpy(dtype=float, na_value=np.nan)
        values = np.where(np.isnan(values), self.fill_, values)
        return (values - self.mean_) / self.scale_

    # -- fitting -------------------------------------------------------------------------

    def fit(self, train: pd.DataFrame, y_train: np.ndarray, stop: pd.DataFrame,
            y_stop: np.ndarray, cal: pd.DataFrame, y_cal: np.ndarray) -> LikelihoodModel:
        """``stop`` decides early stopping; ``cal`` (held out from both) calibrates."""
        self.feature_names_ = self.feature_spec.columns()
        self.categorical_ = list(self.feature_spec.categorical_columns())
        self.bg_ = BgNbdFeatures(self.window_days).fit(train)
        if self.kind == "lightgbm":
            self._fit_lightgbm(train, y_train, stop, y_stop)
        elif self.kind == "logistic":
            self._fit_logistic(train, y_train)
        self.calibrator_ = Calibrator().fit(self.raw_score(cal), y_cal)
        return self

    def _fit_lightgbm(self, train: pd.DataFrame, y: np.ndarray, stop: pd.DataFrame,
                      y_stop: np.ndarray) -> None:
        params = {
            "objective": "binary", "learning_rate": 0.05, "num_leaves": 31,
            "min_data_in_leaf": 40, "feature_fraction": 0.8, "bagging_fraction": 0.8,
            "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1, "seed": self.seed,
            "deterministic": True, "force_row_wise": True, "num_threads": self.num_threads,
        }
        data = lgb.Dataset(self._matrix(train), label=y, categorical_feature=self.categorical_
                           or "auto", free_raw_data=True)
        valid = lgb.Dataset(self._matrix(stop), label=y_stop, reference=data)
        self.booster_ = lgb.train(params, data, num_boost_round=self.max_rounds,
                                  valid_sets=[valid],
                                  callbacks=[lgb.early_stopping(30, verbose=False)])
        self.best_iteration_ = int(self.booster_.best_iteration or self.max_rounds)

    def _fit_logistic(self, train: pd.DataFrame, y: np.ndarray) -> None:
        matrix = self._matrix(train)
        numeric = matrix[[c for c in self.feature_names_ if c not in self.categorical_]]
        values = numeric.to_numpy(dtype=float, na_value=np.nan)
        with warnings.catch_warnings():  # an all-empty column just gets 0
            warnings.simplefilter("ignore", RuntimeWarning)
            self.fill_ = np.nan_to_num(np.nanmedian(values, axis=0), nan=0.0)
        values = np.where(np.isnan(values), self.fill_, values)
        self.mean_ = values.mean(axis=0)
        self.scale_ = np.where(values.std(axis=0) > 0, values.std(axis=0), 1.0)
        self.linear_ = LogisticRegression(C=1.0, max_iter=2000, random_state=self.seed)
        self.linear_.fit((values - self.mean_) / self.scale_, y)

    # -- prediction ----------------------------------------------------------------------

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        if self.kind == "lightgbm":
            return self.booster_.predict(self._matrix(frame), raw_score=True,
                                         num_iteration=self.best_iteration_)
        if self.kind == "logistic":
            return self.linear_.decision_function(self._numeric(frame))
        return self.bg_.p_at_least_one(frame)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibrator_.transform(self.raw_score(frame))

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per-user additive contributions to the raw score, one column per feature."""
        if self.kind == "lightgbm":
            contrib = self.booster_.predict(self._matrix(frame), pred_contrib=True,
                                            num_iteration=self.best_iteration_)
            return pd.DataFrame(contrib[:, :-1], index=frame.index, columns=self.feature_names_)
        if self.kind == "logistic":
            names = [c for c in self.feature_names_ if c not in self.categorical_]
            return pd.DataFrame(self._numeric(frame) * self.linear_.coef_[0], index=frame.index,
                                columns=names)
        enriched = self.bg_.transform(frame)
        return pd.DataFrame({"bgnbd_expected": enriched["bgnbd_expected"]}, index=frame.index)

    def drivers(self, frame: pd.DataFrame, top: int = 15) -> list[dict[str, Any]]:
        """Global drivers: mean absolute contribution per feature on ``frame``."""
        contrib = self.contributions(frame).abs().mean().sort_values(ascending=False)
        total = float(contrib.sum()) or 1.0
        return [{"feature": name, "importance": round(float(v) / total, 4)}
                for name, v in contrib.head(top).items()]
