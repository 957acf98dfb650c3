"""One training job inside a worker: signals, the checkpoint schedule, outages, a job lost to a sweep.

:class:`WorkerHooks` are the :class:`schemas.tables.trained.TrainingHooks` that a worker installs
(:func:`install`). Around a job they put the worker's signal handlers (:mod:`.preemption`); after each epoch
they write the checkpoint when it is due (after the first epoch, then at most every
``$V1FABRIK_CHECKPOINT_EVERY_S`` seconds, default 30, and always once the worker is asked to stop),
going on training while the database is unreachable, and stop the job when the worker was asked to
stop or was declared dead; before the result is inserted they wait for the database to answer.
"""
import contextlib
import logging
import threading
import time

from ..server.connection import is_connection_error
from ..tables.jobtable import JobLost
from ..tables.trained import TrainedModel, TrainingHooks
from . import preemption
from .recovery import wait_for_database
from .search import pruning
from .settings import seconds

logger = logging.getLogger(__name__)

CHECKPOINT_ENV = "V1FABRIK_CHECKPOINT_EVERY_S"
DEFAULT_CHECKPOINT_EVERY_S = 30.0


class CheckpointSchedule:
    """When a job writes its checkpoint: after its first epoch, then at most every
    ``$V1FABRIK_CHECKPOINT_EVERY_S`` seconds (0: every epoch), and always once the worker is asked
    to stop. On a fast GPU this keeps the 4 MiB write out of most epochs; a killed job loses at most
    that interval plus one epoch.
    """

    def __init__(self, clock=time.monotonic):
        self.every_s = seconds(CHECKPOINT_ENV, DEFAULT_CHECKPOINT_EVERY_S)
        self.clock = clock
        self.last_written = None

    def due(self, stopping: bool = False) -> bool:
        return stopping or self.last_written is None or self.clock() - self.last_written >= self.every_s

    def written(self) -> None:
        self.last_written = self.clock()


class WorkerHooks(TrainingHooks):
    """The training hooks of a worker process; ``lost`` is set by its heartbeat when it was declared dead."""

    def __init__(self):
        self.lost = threading.Event()
        self.schedule = CheckpointSchedule()

    @contextlib.contextmanager
    def guard(self):
        self.lost.clear()
        self.schedule = CheckpointSchedule()
        with preemption.guard():
            yield

    def epoch_done(self, save) -> None:
        if self.lost.is_set():
            raise JobLost("this worker was declared dead while training; its job went back to the queue")
        if self.schedule.due(stopping=preemption.requested()) and _written(save):
            self.schedule.written()
        preemption.checkpoint_reached()

    def epoch_scored(self, key, epoch, score, state) -> None:
        """Report the epoch to the model's study trials, whose pruner may stop the job (optuna.TrialPruned);
        while the database is unreachable the epoch goes unreported and training goes on."""
        try:
            pruning.report(key, epoch, score, state)
        except Exception as error:
            if not (is_connection_error(error) or is_connection_error(getattr(error, "orig", None))):
                raise  # optuna.TrialPruned, or a real error
            logger.warning("epoch %s not reported to its study, the database is unreachable (%s); training goes on",
                           epoch, type(error).__name__)

    def before_insert(self) -> None:
        wait_for_database()  # the result is in memory: keep it through a database restart


def _written(save) -> bool:
    """Run ``save``; on a lost database warn and return False (training goes on)."""
    try:
        save()
        return True
    except Exception as error:
        if not is_connection_error(error):
            raise
        logger.warning("checkpoint not written, the database is unreachable (%s); training goes on",
                       type(error).__name__)
        return False


def install() -> WorkerHooks:
    """Make every TrainedModel job of this process run with :class:`WorkerHooks`; returns them."""
    if not isinstance(TrainedModel.hooks, WorkerHooks):
        TrainedModel.hooks = WorkerHooks()
    return TrainedModel.hooks
