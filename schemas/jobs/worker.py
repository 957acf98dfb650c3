"""A worker: trains pending TrainedModel keys and scores them, through DataJoint's job tables.

Any number of workers on any number of machines may run at once; each key is reserved by exactly
one of them (DataJoint's atomic job reservation). Each worker refreshes the queue once a pass and
then takes the pending keys in its own random order, one ``populate`` call per key, so that K
workers do not all contend for the same first key and the database work per job stays the same
whatever K. A failing job is recorded in the job table with its error and traceback, and the
worker goes on with the next key.

A worker heartbeats (:mod:`.heartbeat`) and the sweeper takes over the jobs of dead workers
(:mod:`.sweep`); SIGTERM/SIGINT, transient errors and database outages put its job back in the
queue instead of failing it (:mod:`.preemption`, :mod:`.recovery`). A worker asked to stop
reserves nothing new. Each pass first stores the DataInfo of datasets that have none; a model that
starts from another's core waits (no job yet) until that core is trained, and a worker with nothing
else to do waits while another worker trains it. A worker whose queue is empty starts the next
trial of a hyper-parameter study (:mod:`.search`), and a trial ends with its models' jobs.
"""
import logging
import random
import time
from dataclasses import dataclass, field

import optuna

from .. import activate
from ..server.connection import is_connection_error, is_lock_conflict
from ..tables import SCORE_TABLES, DataInfo, Experiment, TrainedModel
from ..tables.jobtable import JobLost
from . import lifecycle, preemption, recovery
from .heartbeat import Heartbeat
from .search import trials
from .sweep import stale_reservations

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
        hooks = lifecycle.install()
        heartbeat = Heartbeat(self.device, on_lost=hooks.lost.set).start()
        recovery.release_own()  # a previous process with our pid may have died holding jobs
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
        waited = False  # the last pass found nothing while jobs waited for the sweep
        while not self._stopping():
            try:
                did_work = self.run_once()
            except SystemExit as stop:  # DataJoint's own SIGTERM handler, outside our training guard
                logger.warning("stopped by %s; the sweep re-pends the job", stop)
                self.preempted = True
                break
            except Exception as error:
                if is_lock_conflict(error):  # e.g. two workers refreshing the job table at once
                    logger.warning("lost a lock race with another worker (%s); trying again", error)
                    if TrainedModel.connection.in_transaction:
                        TrainedModel.connection.cancel_transaction()
                    time.sleep(random.uniform(0.1, 1.0))
                    continue
                if not is_connection_error(error):
                    raise
                recovery.wait_for_database()
                logger.warning("%d job(s) back to pending after losing the database", recovery.release_own())
                continue
            if self._stopping() or self._quota_left() == 0:
                break
            if not did_work:
                if stale_reservations(interval_s) or self._cores_in_training():  # work will come soon
                    waited = True
                    time.sleep(interval_s)
                    continue
                if waited:  # the sweep may have re-pended a job after this pass looked: look once more
                    waited = False
                    continue
                if not self.wait:
                    break
                time.sleep(self.poll_s)

    def run_once(self) -> bool:
        """One pass: train what is pending (up to the quota), then score what is trained; True if anything ran."""
        restriction = self._restriction()
        did_work = self._populate(DataInfo, restriction)
        if self._quota_left() != 0:
            did_work = self._populate(TrainedModel, restriction) or did_work
        for table in SCORE_TABLES:
            did_work = self._populate(table, restriction) or did_work
        if not did_work and self._quota_left() != 0:
            did_work = trials.ask_next(self.experiment)  # search: an empty queue starts a study's next trial
        return did_work

    def _populate(self, table, restriction) -> bool:
        """Refresh ``table``'s queue, then run its pending keys one by one in a random order; True if any ran.

        A training job ends the pass: by then most keys listed before it are reserved by other workers, and
        trying each of them would cost database reads that grow with the number of workers.
        """
        table.jobs.refresh(*restriction, delay=-1)
        pending = table.jobs.pending & "scheduled_time <= CURRENT_TIMESTAMP(3)"
        for condition in restriction:
            pending = pending.restrict(condition, semantic_check=False)
        keys = pending.keys()
        random.shuffle(keys)
        if table not in (TrainedModel, DataInfo):
            keys = table.by_model(keys)  # a model's scores one after another: its predictions are computed once
        ran = False
        for key in keys:
            if self._stopping() or (table is TrainedModel and self._quota_left() == 0):
                break
            if not table.jobs.pending_now(key):  # taken or finished by another worker since the listing
                continue
            result = table.populate(key, reserve_jobs=True, refresh=False, suppress_errors=True,
                                    return_exception_objects=True)
            failed = self._settle(table, result["error_list"])
            if table is TrainedModel:
                self.trained += result["success_count"] + failed
                if result["success_count"] or failed:
                    trials.job_ended(key)  # search: a trial ends with its models' jobs
            ran = ran or bool(result["success_count"] or result["error_list"])
            if ran and table is TrainedModel:
                break
        return ran

    def _settle(self, table, errors) -> int:
        """Hand back preempted jobs, retry transient failures, record the rest; returns how many ended without a
        result (failed for good, or pruned by their study)."""
        failed = 0
        for key, error in errors:
            if isinstance(error, preemption.Preempted):
                recovery.hand_back(table, key)
                self.preempted = True
            elif isinstance(error, optuna.TrialPruned):  # search: not an error; the job is never run again
                trials.mark_pruned(key)
                failed += 1
            elif isinstance(error, JobLost):
                logger.warning("%s job %s: result dropped (%s)", table.__name__, key, error)
            elif not (recovery.is_transient(error) and recovery.retry_transient(table, key, error)):
                self.failed.append((key, f"{type(error).__name__}: {error}"))
                failed += 1
        return failed

    def _cores_in_training(self) -> bool:
        """True while another worker trains a core that models in reach start from (they get jobs after it)."""
        awaited = TrainedModel.awaited_cores(*self._restriction())
        if not awaited:
            return False
        if TrainedModel.jobs.reserved & awaited:
            return True
        logger.info("%d model(s) wait for cores nobody is training: %s", len(awaited), awaited[:3])
        return False

    def _stopping(self) -> bool:
        self.preempted = self.preempted or preemption.requested()
        return self.preempted

    def _quota_left(self):
        return None if self.max_jobs is None else max(self.max_jobs - self.trained, 0)

    def _restriction(self) -> tuple:
        return (Experiment.combinations(self.experiment),) if self.experiment else ()
