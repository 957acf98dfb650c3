"""A study's trials on the ordinary workers: asked when a worker's queue is empty, settled as their jobs end.

Asking and recording a trial happen under the study's database lock, and so does settling (telling
Optuna how trials ended), so a trial that is RUNNING in Optuna but not recorded in ``Study.Trial``,
seen under the lock, was asked by a worker that died before recording it: it is failed and does not
count. A recorded trial ends with its models' jobs: complete when every seed is trained (its value is
the mean validation score), pruned when any seed was pruned (the other seeds' jobs are set to 'ignore'),
failed when a job failed. Settling derives all of that from the tables, so any worker, any time, brings
Optuna up to date after a crash; workers settle before they ask, so a study killed mid-way continues
where it was.
"""
import contextlib
import functools
import hashlib
import logging
import random
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState

from ...server.sql import atomic, server_lock
from ...tables import Dataset, Experiment, Model, TrainedModel, Trainer
from ...tables.hashing import config_hash
from ...tables.search import PrunedModel, Study
from ...tables.trained import Checkpoint
from .spec import ROLES, StudySpec
from .storage import open_storage

logger = logging.getLogger(__name__)

RECIPE_TABLES = {"dataset": Dataset, "model": Model, "trainer": Trainer}
PRUNED_MESSAGE = "TrialPruned:%"  # how DataJoint records a job stopped by optuna.TrialPruned


@dataclass
class StudyHandle:
    """A study as a worker uses it: its checked spec, owner and Optuna study (with the spec's pruner)."""

    name: str
    spec: StudySpec
    owner: str
    study: optuna.Study

    def trial(self, number: int):
        """``(storage id, FrozenTrial)`` of trial ``number``, fresh from the storage (Optuna has no public
        lookup by number, hence its storage here)."""
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        return trial_id, storage.get_trial(trial_id)

    def model_keys(self, trial_row) -> list:
        """The TrainedModel keys of a ``Study.Trial`` row: its recipes with every seed of the study."""
        recipe = {k: trial_row[k] for k in TrainedModel.primary_key if k != "seed"}
        return [{**recipe, "seed": seed} for seed in self.spec.seeds]


def prefix() -> str:
    """The schema prefix the tables are bound under."""
    return Study.database.removesuffix("fabrik")


def lock_name(name: str) -> str:
    """The database lock of study ``name`` (hashed: MySQL lock names are at most 64 characters)."""
    return "v1fabrik:study:" + hashlib.md5(f"{Study.database}/{name}".encode()).hexdigest()


_handles = {}  # (schema, study name) -> StudyHandle
_finished = set()  # (schema, study name) of studies this process saw with every trial recorded and none running


def load(name: str) -> StudyHandle:
    """The study ``name`` of the bound schema (cached per process)."""
    if (Study.database, name) not in _handles:
        if not Study & {"experiment_name": name}:
            raise ValueError(f"no study named {name!r}; register one with `v1fabrik search STUDY.yaml`")
        row = (Study & {"experiment_name": name}).fetch1()
        spec = StudySpec.from_stored(row["spec"])
        study = optuna.load_study(study_name=name, storage=open_storage(prefix()), pruner=spec.make_pruner())
        _handles[Study.database, name] = StudyHandle(name, spec, row["study_fabrikant"], study)
    return _handles[Study.database, name]


def ask_next(experiment=None) -> bool:
    """Settle the studies (of ``experiment`` only, if given) and start the next trial of one that has trials
    left; True when a trial was recorded (its jobs are pending now)."""
    names = [n for n in _study_names(experiment) if (Study.database, n) not in _finished]
    random.shuffle(names)
    for name in names:
        with server_lock(lock_name(name)):
            handle = load(name)
            running = settle(handle)
            recorded = len(Study.Trial & {"experiment_name": name})
            if recorded < handle.spec.n_trials:
                _ask_and_record(handle)
                return True
            if not running:
                _finished.add((Study.database, name))
    return False


def job_ended(key) -> None:
    """Settle the trials whose model ``key`` just finished, failed or was pruned."""
    recipe = {k: key[k] for k in TrainedModel.primary_key if k != "seed"}
    for name in set((Study.Trial & recipe).to_arrays("experiment_name")):
        with server_lock(lock_name(name)):
            settle(load(name))


def mark_pruned(key) -> None:
    """The job of ``key`` stopped with optuna.TrialPruned: mark it 'ignore', so that it never runs again."""
    if TrainedModel.jobs.errors & key & f"error_message LIKE '{PRUNED_MESSAGE}'":
        TrainedModel.jobs.ignore(key)


def settle(handle: StudyHandle) -> int:
    """Tell Optuna how the study's RUNNING trials ended (call under the study lock); returns how many still run."""
    recorded = {row["trial_number"]: row for row in (Study.Trial & {"experiment_name": handle.name}).to_dicts()}
    running = 0
    for trial in handle.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        row = recorded.get(trial.number)
        if row is None:
            logger.warning("study %s: trial %d was asked but never recorded (its worker died); failing it",
                           handle.name, trial.number)
            handle.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            continue
        running += not _tell_outcome(handle, trial.number, handle.model_keys(row))
    return running


def _tell_outcome(handle, number, keys) -> bool:
    """Tell Optuna trial ``number``'s outcome if its models' jobs have one; True when told."""
    pruned = PrunedModel & keys
    pruned_jobs = TrainedModel.jobs.errors & keys & f"error_message LIKE '{PRUNED_MESSAGE}'"
    if pruned or pruned_jobs:
        for key in keys:  # the trial's other seeds never run (nor resume: a killed worker's checkpoint goes)
            if not (TrainedModel & key or TrainedModel.jobs.reserved & key or TrainedModel.jobs.ignored & key):
                TrainedModel.jobs.ignore(key)
                (Checkpoint & key).delete_quick()
        handle.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        logger.info("study %s: trial %d pruned", handle.name, number)
        return True
    # a job whose pruning was seen half-way (its PrunedModel row written after the check above) is no failure
    if TrainedModel.jobs.errors & keys & f"error_message NOT LIKE '{PRUNED_MESSAGE}'":
        handle.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        logger.warning("study %s: trial %d failed (see v1fabrik status)", handle.name, number)
        return True
    scores = (TrainedModel & keys).to_arrays("score")
    if len(scores) < len(keys):
        return False
    handle.study.tell(number, float(np.mean(scores)), skip_if_finished=True)
    logger.info("study %s: trial %d complete, validation %.4f", handle.name, number, np.mean(scores))
    return True


def _ask_and_record(handle: StudyHandle) -> None:
    """Ask Optuna for a trial and register its recipes, experiment rows and ``Study.Trial`` row in one transaction."""
    spec = handle.spec
    handle.study.sampler = spec.make_sampler(len(handle.study.get_trials(deepcopy=False)))
    trial = handle.study.ask(dict(spec.space))
    try:
        configs = spec.configs(trial.params)
        for role in ROLES:  # before the rows: a trial recorded is a trial with its keys in Optuna
            trial.set_user_attr(f"{role}_hash", config_hash(configs[role]))
        with atomic(Study.connection):
            keys = {}
            for role in ROLES:
                recipe = spec.recipes[role]
                comment = f"{recipe['comment']} [{handle.name} #{trial.number}]".strip()[-256:]
                keys[role] = RECIPE_TABLES[role]().add_entry(recipe["fn"], configs[role], comment=comment,
                                                             fabrikant=handle.owner, skip_duplicates=True)
            Experiment().add(handle.name, [keys["dataset"]], [keys["model"]], [keys["trainer"]], list(spec.seeds),
                             fabrikant=handle.owner)
            Study.Trial.insert1({"experiment_name": handle.name, "trial_number": trial.number,
                                 "params": dict(trial.params), **keys["dataset"], **keys["model"], **keys["trainer"]})
    except BaseException:
        with contextlib.suppress(Exception):  # else the next settle fails it: it is not recorded
            handle.study.tell(trial, state=TrialState.FAIL)
        raise
    logger.info("study %s: trial %d started with %s", handle.name, trial.number, trial.params)


def _study_names(experiment) -> list:
    studies = Study & {"experiment_name": experiment} if experiment else Study
    return list(studies.to_arrays("experiment_name"))


@functools.lru_cache(maxsize=64)
def _trials_of(database: str, key_items: tuple) -> tuple:
    """``((handle, trial number), ...)`` of the trials that train the model with this key in ``database``."""
    key = dict(key_items)
    recipe = {k: key[k] for k in TrainedModel.primary_key if k != "seed"}
    found = []
    for name, number in zip(*(Study.Trial & recipe).to_arrays("experiment_name", "trial_number")):
        handle = load(name)
        if key["seed"] in handle.spec.seeds:
            found.append((handle, int(number)))
    return tuple(found)


def trials_of(key) -> tuple:
    """``((handle, trial number), ...)`` of the trials that train the model ``key`` (cached per process)."""
    return _trials_of(Study.database, tuple(sorted((k, key[k]) for k in TrainedModel.primary_key)))
