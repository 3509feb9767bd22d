"""One run at a time per prediction and kind.

A manual train (API, CLI, dashboard) and the scheduled retrain, or two scorings, never
overlap: two trainings would each compare themselves with the same current version and
register against it, and two scorings would each emit ``Likelihood Changed`` for the
same group changes. The guard is a database lease (``propel.lake.store.writer_lease``:
renewed while the run lives, taken over when its process has died), so it holds across
processes and hosts. The schedules' own leases only keep a schedule from overlapping
itself, not from overlapping a manual run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from propel.core import Propel
from propel.jobs.leases import LeaseUnavailable
from propel.lake.store import lease_held, writer_lease
from propel.predictions.registry import Prediction

_DOING = {"train": "trained", "score": "scored"}


class AlreadyRunning(RuntimeError):
    """Another run of the same kind holds this prediction."""


def _lease_name(prediction: Prediction, kind: str) -> str:
    return f"prediction-{kind}:{prediction.id}"


def busy(prediction: Prediction, kind: str) -> AlreadyRunning:
    return AlreadyRunning(f"{prediction.spec.name!r} is being {_DOING[kind]} by another run "
                          "right now; try again when it has finished")


def is_running(propel: Propel, prediction: Prediction, kind: str) -> bool:
    """Whether a live run of ``kind`` holds the prediction now, in any process."""
    return lease_held(propel.db, _lease_name(prediction, kind))


@contextmanager
def one_at_a_time(propel: Propel, prediction: Prediction, kind: str) -> Iterator[None]:
    """Hold the prediction's ``kind`` lease ("train" or "score") for the block, or raise
    ``AlreadyRunning`` at once."""
    with ExitStack() as stack:
        try:
            stack.enter_context(writer_lease(propel.db, name=_lease_name(prediction, kind)))
        except LeaseUnavailable:
            raise busy(prediction, kind) from None
        yield
