"""The blend candidate: the average of the fitted candidates' calibrated log-odds,
calibrated once more on the same calibration users.

Why: LightGBM, the logistic regression and BG/NBD make different mistakes (log versus
raw feature scales, trees versus a straight line, a behavioural model with no
features), and on small data which of them is best is mostly noise: on the CDNOW
sample the three swap places between the validation and the forward window. An equal
average hedges between them without fitting anything (weights fitted on a few hundred
calibration users followed that noise), and the final two-parameter calibration only
corrects the average's scale. The blend is a candidate like the others: it is promoted
only when its validation log loss beats the best baseline's and LightGBM's does not
(see ``training._decide``).

Its raw score (used for ranking) is the weighted sum of the members' calibrated
log-odds. Its contributions are the members' contributions, each scaled by its weight
and by the slope of its calibration line, column by column (BG/NBD's own answer is
credited to ``bgnbd_expected``, centred on the calibration users' mean), so they add
up to ``raw_score - base_value_``: exactly when every member is Platt-calibrated,
approximately after isotonic calibration (a straight line fitted to the step function
on the calibration users stands in for it).

Large frames are processed in chunks of rows: every member builds its own feature
matrices, and holding all of them for a million users at once would not fit the
scoring memory budget.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import pandas as pd

from propel.predictions.features import FeatureSpec
from propel.predictions.model import Calibrator, LikelihoodModel

KIND = "blend"
BGNBD_COLUMN = "bgnbd_expected"


def blend_members(models: dict[str, LikelihoodModel], cal: pd.DataFrame
                  ) -> dict[str, LikelihoodModel]:
    """The fitted candidates worth blending: those whose raw score varies on the
    calibration users (a candidate that gives everyone the same score, such as BG/NBD
    when it could not be fitted, would only add a constant). Empty unless LightGBM is
    among them with at least one other: the blend hedges LightGBM with the baselines;
    a blend of the baselines alone would be one more candidate judged on the same few
    evaluation users, raising the odds of promoting one by luck, with no new learner."""
    members = {k: m for k, m in models.items()
               if np.ptp(np.nan_to_num(np.asarray(m.raw_score(cal), float), nan=0.0)) > 0}
    if "lightgbm" not in members or len(members) < 2:
        return {}
    return members


class BlendModel:
    """An average of fitted ``LikelihoodModel`` members; ``fit`` calibrates it."""

    kind = KIND

    def __init__(self, members: dict[str, LikelihoodModel],
                 weights: dict[str, float] | None = None, calibration: str = "auto",
                 chunk_rows: int = 200_000) -> None:
        self.members = dict(members)
        self.weights = weights
        self.calibration = calibration
        self.chunk_rows = chunk_rows

    # what the registry, training and scoring read from any model
    @property
    def _first(self) -> LikelihoodModel:
        return next(iter(self.members.values()))

    @property
    def feature_spec(self) -> FeatureSpec:
        return self._first.feature_spec

    @property
    def seed(self) -> int:
        return self._first.seed

    @property
    def window_days(self) -> int:
        return self._first.window_days

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_last", None)
        return state

    # -- fitting -------------------------------------------------------------------------

    def fit(self, cal: pd.DataFrame, y_cal: np.ndarray) -> BlendModel:
        """Weights, each member's contribution scale, and the calibration, all from the
        calibration users (never from the users the candidates are judged on)."""
        if len(self.members) < 2:
            raise ValueError("a blend needs at least two fitted candidates")
        self.__dict__.pop("_last", None)
        raw_weights = self.weights or {k: 1.0 for k in self.members}
        total = sum(raw_weights[k] for k in self.members)
        self.weights_ = {k: float(raw_weights[k]) / total for k in self.members}
        self.slopes_: dict[str, float] = {}
        self.centres_: dict[str, float] = {}
        self.columns_: list[str] = []
        base = 0.0
        for name, member in self.members.items():
            raw = np.nan_to_num(member.raw_score(cal), nan=0.0)  # as the calibrators read it
            odds = member.log_odds(cal)
            if member.kind == "bgnbd":
                self.centres_[name] = float(np.mean(raw)) if len(raw) else 0.0
            contrib = self._member_contributions(name, member, cal, raw)
            slope, intercept = self._line(member, raw, odds)
            self.slopes_[name] = slope
            # what the member's contributions leave out of its raw score (the linear
            # intercept, the trees' mean output): a constant, so its mean is exact
            offset = float(np.mean(raw - contrib.to_numpy(float).sum(axis=1))) \
                if len(raw) else 0.0
            base += self.weights_[name] * (slope * offset + intercept)
            self.columns_ += [c for c in contrib.columns if c not in self.columns_]
            member.forget()
        self.base_value_ = float(base)
        self.calibrator_ = Calibrator(method=self.calibration).fit(self.raw_score(cal), y_cal)
        return self

    @staticmethod
    def _line(member: LikelihoodModel, raw: np.ndarray, odds: np.ndarray
              ) -> tuple[float, float]:
        """The member's calibration as a line in its raw score: Platt's own slope and
        intercept, or a least-squares line through the isotonic log-odds."""
        cal = member.calibrator_
        if cal.method_ == "platt":
            return float(cal.model_.coef_[0, 0]), float(cal.model_.intercept_[0])
        raw = np.nan_to_num(np.asarray(raw, float), nan=0.0)
        if len(raw) < 2 or np.ptp(raw) == 0:
            return 0.0, float(np.mean(odds)) if len(odds) else 0.0
        slope, intercept = np.polyfit(raw, odds, 1)
        return float(slope), float(intercept)

    def _member_contributions(self, name: str, member: LikelihoodModel,
                              frame: pd.DataFrame, raw: np.ndarray | None = None
                              ) -> pd.DataFrame:
        """Additive contributions to the member's raw score. BG/NBD's own contributions
        are its input, not a share of its answer; here its whole (centred) answer is
        credited to the expected number of goal events."""
        if member.kind != "bgnbd":
            return member.contributions(frame)
        raw = member.raw_score(frame) if raw is None else raw
        raw = np.nan_to_num(np.asarray(raw, float), nan=0.0)
        return pd.DataFrame({BGNBD_COLUMN: raw - self.centres_.get(name, 0.0)},
                            index=frame.index)

    # -- prediction ----------------------------------------------------------------------

    def _chunks(self, frame: pd.DataFrame) -> list[tuple[int, pd.DataFrame]]:
        if len(frame) <= self.chunk_rows:
            return [(0, frame)]
        return [(start, frame.iloc[start:start + self.chunk_rows])
                for start in range(0, len(frame), self.chunk_rows)]

    def _cached(self, frame: pd.DataFrame) -> dict[str, Any] | None:
        last = self.__dict__.get("_last")
        if last is not None and last[0]() is frame and last[1] == frame.shape:
            return last[2]
        return None

    def _pass(self, frame: pd.DataFrame, contributions: bool) -> dict[str, Any]:
        """Raw score and, if asked, contributions, chunk by chunk: a member's matrices
        for a chunk serve both before it moves on."""
        raw = np.zeros(len(frame))
        out = None
        if contributions:
            index = {c: j for j, c in enumerate(self.columns_)}
            # column-major: each member column is added to one contiguous run of memory
            out = np.zeros((len(frame), len(self.columns_)), dtype=np.float32, order="F")
        for start, part in self._chunks(frame):
            rows = slice(start, start + len(part))
            for name, member in self.members.items():
                raw[rows] += self.weights_[name] * member.log_odds(part)
                if out is not None:
                    scale = np.float32(self.weights_[name] * self.slopes_[name])
                    contrib = self._member_contributions(name, member, part)
                    values = contrib.to_numpy(np.float32)
                    for j, column in enumerate(contrib.columns):
                        out[rows, index[column]] += scale * values[:, j]
                if part is not frame:
                    member.forget()
        memo = {"raw": raw, "contributions": out}
        self.__dict__["_last"] = (weakref.ref(frame), frame.shape, memo)
        return memo

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Weighted sum of the members' calibrated log-odds. Kept for the last frame, as
        ``LikelihoodModel`` keeps its own. A frame of more than one chunk gets its
        contributions in the same pass (scoring asks for both; a second pass would
        build every member's matrices again) and keeps them until they are asked for."""
        memo = self._cached(frame) or self._pass(frame, len(frame) > self.chunk_rows)
        return memo["raw"].copy()

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        return self.calibrator_.transform(self.raw_score(frame))

    def contributions(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per-user contributions to the raw score, one column per feature: each
        member's, times its weight and calibration slope. They sum to ``raw_score``
        less ``base_value_`` (see the module docstring)."""
        memo = self._cached(frame)
        if memo is None or memo["contributions"] is None:
            memo = self._pass(frame, True)
        out = memo["contributions"]
        memo["contributions"] = None  # handed over: not kept twice
        return pd.DataFrame(out, index=frame.index, columns=self.columns_, copy=False)

    def drivers(self, frame: pd.DataFrame, top: int = 15) -> list[dict[str, Any]]:
        """Global drivers: mean absolute contribution per feature on ``frame``."""
        contrib = self.contributions(frame).abs().mean().sort_values(ascending=False)
        total = float(contrib.sum()) or 1.0
        return [{"feature": name, "importance": round(float(v) / total, 4)}
                for name, v in contrib.head(top).items()]

    def training_summary(self) -> dict[str, Any]:
        return {"members": list(self.members), "weights": self.weights_,
                "calibration_slopes": self.slopes_}
