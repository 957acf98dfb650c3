"""Pruning inside a training job: each epoch's validation score goes to the model's trials, whose pruner may stop it.

A pruned model keeps its history in ``PrunedModel`` and its checkpoint is deleted (no weights stay);
the job stops with ``optuna.TrialPruned``, which the worker turns into the job status 'ignore'.
"""
import logging
import math

import optuna
from optuna.trial import TrialState

from ...server.sql import atomic
from ...tables.search import PrunedModel
from ...tables.trained import Checkpoint
from .trials import trials_of

logger = logging.getLogger(__name__)


def report(key, epoch, score, state) -> None:
    """Report ``score`` of ``epoch`` to every trial that trains ``key``; raise optuna.TrialPruned when one prunes it."""
    for handle, number in trials_of(key):
        trial_id, frozen = handle.trial(number)
        if frozen.state == TrialState.PRUNED:
            _stop(key, epoch, state, f"trial {number} of study {handle.name} was pruned (another of its seeds)")
        if frozen.state != TrialState.RUNNING or score is None or not math.isfinite(score):
            continue
        step = handle.spec.step(epoch, key["seed"])
        trial = optuna.trial.Trial(handle.study, trial_id)
        if step not in frozen.intermediate_values:  # a resumed job repeats epochs it already reported
            trial.report(float(score), step)
        if trial.should_prune():
            _stop(key, epoch, state, f"trial {number} of study {handle.name} pruned at epoch {epoch}: "
                                     f"validation {score:.4f} is below the median of earlier trials")


def _stop(key, epoch, state, reason) -> None:
    """Keep the model's history, drop its checkpoint, and stop the job."""
    history = state.get("history", {}) if isinstance(state, dict) else {}
    with atomic(PrunedModel.connection):
        PrunedModel.insert1({**key, "epoch": epoch, "history": history, "reason": reason[:255]}, skip_duplicates=True)
        (Checkpoint & key).delete_quick()
    logger.info("%s", reason)
    raise optuna.TrialPruned(reason)
