"""A worker: trains pending TrainedModel keys and scores them, through DataJoint's job tables.

Any number of workers on any number of machines may run at once; each key is reserved by
exactly one of them (DataJoint's atomic job reservation). A failing job is recorded in the job
table with its error and traceback, and the worker goes on with the next key.
"""
import logging
import time
from dataclasses import dataclass, field

from . import activate
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

    def run(self) -> "Worker":
        """Work until nothing is left (or forever with ``wait``); returns self with the counts."""
        activate()
        TrainedModel.device = self.device
        logger.info("worker on %s started%s", self.device or "the trainer's device",
                    f" for experiment {self.experiment!r}" if self.experiment else "")
        while True:
            did_work = self.run_once()
            if self._quota_left() == 0 or (not did_work and not self.wait):
                break
            if not did_work:
                time.sleep(self.poll_s)
        logger.info("worker finished: %d trained, %d failed", self.trained, len(self.failed))
        return self

    def run_once(self) -> bool:
        """One pass: train what is pending (up to the quota), then score what is trained; True if anything ran."""
        restriction = self._restriction()
        did_work = False
        if self._quota_left() != 0:
            result = TrainedModel.populate(
                *restriction, reserve_jobs=True, suppress_errors=True, max_calls=self._quota_left(), display_progress=True
            )
            self.trained += result["success_count"] + len(result["error_list"])
            self.failed += result["error_list"]
            did_work = bool(result["success_count"] or result["error_list"])
        for key in self._unscored(restriction):
            for table in SCORE_TABLES:
                result = table.populate(key, *restriction, reserve_jobs=True, suppress_errors=True)
                self.failed += result["error_list"]
                did_work = did_work or bool(result["success_count"] or result["error_list"])
        return did_work

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
