"""A worker: trains pending TrainedModel keys and scores them, through DataJoint's job tables.

Any number of workers on any number of machines may run at once; each key is reserved by
exactly one of them (DataJoint's atomic job reservation). A failing job is recorded in the job
table with its error and traceback, and the worker goes on with the next key.

A worker heartbeats and takes over the jobs of dead workers; SIGTERM/SIGINT, transient errors
and database outages put its job back in the queue instead of failing it (see
:mod:`schemas.recovery`, :mod:`schemas.preemption`).
"""
import functools
import logging
import random
import time
from dataclasses import dataclass, field

from . import activate, preemption, recovery
from .heartbeat import Heartbeat
from .recipes import Experiment
from .scoring import SCORE_TABLES
from .trained import TrainedModel

logger = logging.getLogger(__name__)

POLL_S = 30


@dataclass
class Worker:
    """Populate loop of one process on one device.

    Args:
        device: torch device for training and scoring ("cuda:0", "cpu"); None lets the trainer config decide.
        experiment: only work on the combinations of this experiment.
        max_jobs: stop after this many training jobs (successful or failed).
        wait: keep polling for new work instead of stopping when none is left.
    """

    device: str = None
    experiment: str = None
    max_jobs: int = None
    wait: bool = False
    poll_s: float = POLL_S
    trained: int = 0
    failed: list = field(default_factory=list)
    preempted: bool = False

    def run(self) -> "Worker":
        """Work until nothing is left (or forever with ``wait``, or until SIGTERM); returns self with the counts."""
        activate()
        TrainedModel.device = self.device
        preemption.install()
        heartbeat = Heartbeat(functools.partial(recovery.sweep, jobs=recovery.job_tables()), self.device).start()
        recovery.release_own()  # a previous process with our pid may have died holding jobs
        recovery.sweep(TrainedModel.connection, heartbeat.grace_s, recovery.job_tables())
        logger.info("worker on %s started%s", self.device or "the trainer's device",
                    f" for experiment {self.experiment!r}" if self.experiment else "")
        try:
            self._loop(heartbeat.interval_s)
        finally:
            preemption.cancel_deadline()
            heartbeat.stop()
        logger.info("worker %s: %d trained, %d failed", "preempted" if self.preempted else "finished",
                    self.trained, len(self.failed))
        return self

    def _loop(self, interval_s):
        while not self.preempted:
            try:
                did_work = self.run_once()
            except SystemExit as stop:  # DataJoint's own SIGTERM handler, outside our training guard
                logger.warning("stopped by %s; the sweep re-pends the job", stop)
                self.preempted = True
                break
            except Exception as error:
                if recovery.is_lock_conflict(error):  # e.g. two workers refreshing the job table at once
                    logger.warning("lost a lock race with another worker (%s); trying again", error)
                    if TrainedModel.connection.in_transaction:
                        TrainedModel.connection.cancel_transaction()
                    time.sleep(random.uniform(0.1, 1.0))
                    continue
                if not recovery.is_connection_error(error):
                    raise
                recovery.wait_for_database()
                logger.warning("%d job(s) back to pending after losing the database", recovery.release_own())
                continue
            self.preempted = self.preempted or preemption.requested()
            if self.preempted or self._quota_left() == 0:
                break
            if not did_work:
                if recovery.stale_reservations(interval_s):  # a dead worker's jobs will be re-pended soon
                    time.sleep(interval_s)
                    continue
                if not self.wait:
                    break
                time.sleep(self.poll_s)

    def run_once(self) -> bool:
        """One pass: train what is pending (up to the quota), then score what is trained; True if anything ran."""
        restriction = self._restriction()
        did_work = False
        if self._quota_left() != 0:
            result = TrainedModel.populate(*restriction, reserve_jobs=True, suppress_errors=True, max_calls=self._quota_left(),
                                           display_progress=True, return_exception_objects=True)
            self.trained += result["success_count"] + self._settle(TrainedModel, result["error_list"])
            did_work = bool(result["success_count"] or result["error_list"])
        for key in self._unscored(restriction):
            for table in SCORE_TABLES:
                if self.preempted:
                    return did_work
                result = table.populate(key, *restriction, reserve_jobs=True, suppress_errors=True,
                                        return_exception_objects=True)
                self._settle(table, result["error_list"])
                did_work = did_work or bool(result["success_count"] or result["error_list"])
        return did_work

    def _settle(self, table, errors) -> int:
        """Hand back preempted jobs, retry transient failures, record the rest; returns how many failed for good."""
        failed = 0
        for key, error in errors:
            if isinstance(error, preemption.Preempted):
                recovery.hand_back(table, key)
                self.preempted = True
            elif not (recovery.is_transient(error) and recovery.retry_transient(table, key, error)):
                self.failed.append((key, f"{type(error).__name__}: {error}"))
                failed += 1
        return failed

    def _quota_left(self):
        return None if self.max_jobs is None else max(self.max_jobs - self.trained, 0)

    def _restriction(self) -> tuple:
        return (Experiment.combinations(self.experiment),) if self.experiment else ()

    @staticmethod
    def _unscored(restriction) -> list:
        """Keys of trained models that miss a row in some score table."""
        trained = TrainedModel()
        for condition in restriction:
            trained = trained & condition
        missing = {}
        for table in SCORE_TABLES:
            for key in (trained - table).keys():
                missing[tuple(sorted(key.items()))] = key
        return list(missing.values())
