"""Training started by hand from the dashboard, in the background.

At a million users training and the scoring after it take minutes, longer than a
browser or a proxy should hold a request open. ``start_training`` records a run in
``task_runs`` (under a schedule name of its own, ``train-now:<id>``), trains in a
thread, and gives a short training the chance to finish before the page answers.
``training_run`` reads the run back from any server process: the run's record says
how it ended, and the prediction's training lease says whether a run still marked
``running`` is alive or died with its process.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from propel.core import Propel
from propel.db.meta import utcnow
from propel.jobs import schedules
from propel.predictions import registry
from propel.predictions.exclusive import AlreadyRunning, busy, is_running
from propel.predictions.registry import Prediction
from propel.predictions.scoring import score_prediction
from propel.predictions.training import NotEnoughData, train_prediction

log = logging.getLogger("propel.predictions")
TASK = "predictions.train"
STARTING = timedelta(seconds=30)
# Errors that leave no model behind and say so in words a marketer can act on.
_EXPECTED = (NotEnoughData, registry.ArtifactError, AlreadyRunning)


@dataclass(frozen=True)
class TrainingRun:
    id: int
    state: str  # running, done, failed, stopped (its process ended mid-run)
    started_at: datetime
    version: int | None
    error: str | None


def _run_name(prediction: Prediction) -> str:
    return f"train-now:{prediction.id}"


def train_and_score(propel: Propel, prediction: Prediction) -> int:
    """Train as the API's ``/train`` does; then score with the model if it was promoted
    (or the prediction was never scored), so the groups shown match the model. Returns
    the new version's number."""
    result = train_prediction(propel, prediction)
    fresh = registry.get_by_id(propel.db, prediction.id)
    if fresh.current_version is not None and (result.promoted or fresh.last_scored_at is None):
        # the version is saved either way: a busy scoring takes it next time, and an
        # audience empty now is the scoring's to report
        with contextlib.suppress(AlreadyRunning, NotEnoughData):
            score_prediction(propel, fresh)
    return result.version.version


def _train_in_background(propel: Propel, prediction: Prediction, run_id: int) -> None:
    try:
        version = train_and_score(propel, prediction)
    except _EXPECTED as exc:
        schedules.finish_run(propel.db, run_id, "failed", error=f"Training did not start: {exc}.")
    except Exception as exc:  # recorded for the page; the thread has no one else to tell
        log.exception("training %s by hand failed", prediction.id)
        schedules.finish_run(propel.db, run_id, "failed",
                             error=f"Training failed: {type(exc).__name__}: {exc}")
    else:
        schedules.finish_run(propel.db, run_id, "ok", rows=version)


def start_training(propel: Propel, prediction: Prediction, wait_seconds: float = 3.0
                   ) -> int:
    """Start training ``prediction`` in a thread of this process; returns the run's id
    after the run has ended or ``wait_seconds`` have passed, whichever comes first.
    ``AlreadyRunning`` at once while another training of it runs."""
    if is_running(propel, prediction, "train"):
        raise busy(prediction, "train")
    run_id = schedules.start_run(propel.db, _run_name(prediction), TASK)
    thread = threading.Thread(target=_train_in_background, args=(propel, prediction, run_id),
                              name=f"propel-train-{prediction.id}", daemon=True)
    thread.start()
    thread.join(wait_seconds)
    return run_id


def training_run(propel: Propel, prediction: Prediction, run_id: int) -> TrainingRun | None:
    """The run ``run_id`` of ``prediction`` (None: no such run of this prediction)."""
    run = schedules.get_run(propel.db, run_id)
    if run is None or run["schedule"] != _run_name(prediction):
        return None
    state = {"ok": "done", "failed": "failed"}.get(run["outcome"], "running")
    young = utcnow() - run["started_at"] < STARTING  # its thread may not hold the lease yet
    if state == "running" and not young and not is_running(propel, prediction, "train"):
        # Re-read: the run may have ended between the two reads.
        run = schedules.get_run(propel.db, run_id) or run
        state = {"ok": "done", "failed": "failed"}.get(run["outcome"], "stopped")
    return TrainingRun(id=run_id, state=state, started_at=run["started_at"],
                       version=run["rows"] if state == "done" else None, error=run["error"])
