"""TrainedModel: one trained model per Dataset x Model x Trainer x Seed, with its weights and checkpoint.

Training runs in ``make_compute`` with no open transaction. The trainer's callback hands each epoch's
checkpoint to the process's :class:`TrainingHooks`, which decide when to write it (the key's single
``Checkpoint`` row, autocommitted) and when to stop, so a job that dies resumes from its last
checkpointed epoch; ``make_insert`` writes the result and weights and deletes the checkpoint in one
transaction, and only while this process still holds the job's reservation.

A model whose config starts from a trained core (``core_from``, see :mod:`.recipes`) gets that
model's ``core.*`` weights as the model function's ``pretrained_core``; until its parent is trained it
is not in ``key_source``, so its job waits rather than fails. ``load_model(include_dataloader=False)``
rebuilds a model from its dataset's :class:`~.datainfo.DataInfo`, without the data files.
"""
import contextlib
import functools
import inspect
import logging
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path

import datajoint as dj
import numpy as np
import torch

from pipeline import builder
from pipeline.training.checkpoints import state_from_arrays, state_to_arrays

from ..server.sql import atomic, replace1
from .datainfo import DataInfo
from .jobtable import JobLost, OwnedJobs
from .recipes import CORE_FROM, TRAINED_KEY, Dataset, Fabrikant, Model, Seed, Trainer, core_parent

logger = logging.getLogger(__name__)


class TrainingHooks:
    """How a training job meets the process that runs it. This default (a notebook's ``populate()``)
    trains straight through and writes every epoch's checkpoint; a worker installs its own
    (:mod:`schemas.jobs.lifecycle`): signal handling, a checkpoint schedule, outages survived, and
    stopping a job that it lost to a sweep.
    """

    def guard(self):
        """Context around one job's training."""
        return contextlib.nullcontext()

    def epoch_done(self, save) -> None:
        """After each epoch: ``save()`` writes the checkpoint; may raise to stop the job."""
        save()

    def epoch_scored(self, key, epoch, score, state) -> None:
        """After each epoch, before :meth:`epoch_done`: the trainer's validation ``score`` (None or NaN when it
        gave none); may raise to stop the job (a worker's study pruner does)."""

    def before_insert(self) -> None:
        """The result is in memory; called before make_insert."""


def _plain(obj):
    """Tensors in a nested dict/list/tuple as numpy arrays, so a trainer's output is storable as ``<blob>``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj] if isinstance(obj, list) else tuple(_plain(v) for v in obj)
    return obj


def weights_to_numpy(state_dict) -> dict:
    """A torch state_dict as ``{name: numpy array}`` (exact copy, CPU)."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in state_dict.items()}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``<package version>+g<commit>[.dirty]`` of the running v1fabrik.

    From a git checkout the commit is git's; an installed copy (a Docker image) carries the commit it
    was built from in its package version already (``V1FABRIK_BUILD_COMMIT`` in setup.py).
    """
    try:
        version = metadata.version("v1fabrik")
    except metadata.PackageNotFoundError:
        version = "unknown"
    here = Path(__file__).resolve()

    def git(*args):
        return subprocess.run(["git", *args], cwd=here.parent, capture_output=True, text=True, timeout=10)

    try:
        tracked = git("ls-files", "--error-unmatch", here.name).returncode == 0
        commit = git("rev-parse", "--short=12", "HEAD").stdout.strip() if tracked else ""
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip()) if tracked else False
    except (OSError, subprocess.SubprocessError):
        return version
    if not commit:
        return version
    return f"{version.split('+')[0]}+g{commit}{'.dirty' if dirty else ''}"


def _accepts(fn, name) -> bool:
    params = inspect.signature(fn).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


class Checkpoint(dj.Manual):
    definition = """
    # the latest resumable training state of a job; one row per key, replaced every epoch
    -> Dataset
    -> Model
    -> Trainer
    -> Seed
    ---
    epoch : int32                 # last finished epoch
    state : <blob>                # trainer state as pipeline.training.checkpoints.state_to_arrays
    checkpoint_host = "" : varchar(255)
    checkpoint_ts = CURRENT_TIMESTAMP : datetime
    """


class TrainedModel(OwnedJobs, dj.Computed):
    definition = """
    # a trained model: score, training history and provenance; weights in the part table
    -> Dataset
    -> Model
    -> Trainer
    -> Seed
    ---
    score : float64               # the trainer's score (validation correlation for standard_trainer)
    output : <blob>               # the trainer's output, e.g. the per-epoch history
    ->[nullable] Fabrikant        # who ran the worker
    comment = "" : varchar(800)   # trainer, model and dataset comments joined by "."
    code_version : varchar(128)   # v1fabrik version + git commit (+ ".dirty")
    host : varchar(255)
    device : varchar(32)
    duration : float64            # seconds spent in training
    trainedmodel_ts = CURRENT_TIMESTAMP : datetime
    """

    # Device used by make_compute; the worker sets it (None: the trainer config decides).
    device = None
    hooks = TrainingHooks()

    class Weights(dj.Part):
        definition = """
        # the trained weights
        -> master
        ---
        state_dict : <blob>       # {parameter name: numpy array}; exact round trip, no pickle
        """

    @property
    def key_source(self):
        """Every Dataset x Model x Trainer x Seed, except models whose ``core_from`` parent is not trained yet."""
        return (Dataset.proj() * Model.proj() * Trainer.proj() * Seed.proj()) - _untrained_parents().proj()

    @classmethod
    def awaited_cores(cls, *restrictions) -> list:
        """Keys of the untrained models whose cores models in ``restrictions`` start from (those wait for them)."""
        awaited = _untrained_parents()
        for restriction in restrictions:
            awaited = awaited & restriction
        return [{name: row[f"core_{name}"] for name in TRAINED_KEY} for row in awaited.to_dicts()]

    @classmethod
    def core_weights(cls, key) -> dict:
        """``{name: array}`` of the trained model ``key``'s core (``core.`` stripped), for a model starting from it."""
        stored = (cls.Weights & key).to_arrays("state_dict")
        if not len(stored):
            raise ValueError(f"{CORE_FROM} names {_describe(key)}, which is not trained")
        core = {name.removeprefix("core."): value for name, value in stored[0].items() if name.startswith("core.")}
        if not core:
            raise ValueError(f"{CORE_FROM} names {_describe(key)}, whose weights have no core.* entries")
        return core

    # --- tripartite make -------------------------------------------------------------------
    def make_fetch(self, key):
        """The three recipes, the seed and when the parent whose core the model starts from was trained (cheap)."""
        recipes = []
        for table in (Dataset, Model, Trainer):
            r = table.role
            recipes.append((table & key).fetch1(f"{r}_fn", f"{r}_config", f"{r}_comment"))
        parent = core_parent(recipes[1][1])
        parent_trained = None
        if parent is not None:
            trained = (TrainedModel & parent).to_arrays("trainedmodel_ts")
            if not len(trained):
                raise ValueError(f"{_describe(key)} starts from the core of {_describe(parent)}, which is not trained")
            parent_trained = str(trained[0])
        return (*recipes, key["seed"], parent_trained)

    def make_compute(self, key, dataset, model, trainer, seed, parent_trained):
        """Build data and model, train (resuming from a checkpoint), return the result. No transaction.

        ``parent_trained`` only serves DataJoint's check that make_fetch's result did not change meanwhile.
        """
        with self.hooks.guard():
            result = self._train(key, dataset, model, trainer, seed)
        self.hooks.before_insert()
        return result

    def _train(self, key, dataset, model, trainer, seed):
        (dataset_fn, dataset_config, _), (model_fn, model_config, _), (trainer_fn, trainer_config, _) = dataset, model, trainer
        for name, role in ((dataset_fn, "dataset"), (model_fn, "model")):
            builder.resolve_fn(name, role)  # every name is checked before anything is called
        trainer_fn = builder.resolve_fn(trainer_fn, "trainer")
        dataloaders, net = builder.get_all_parts(dataset_fn, dataset_config, model_fn, _with_parent_core(model_config),
                                                 seed=seed)
        kwargs = dict(trainer_config)
        if self.device is not None and _accepts(trainer_fn, "device"):
            kwargs["device"] = self.device
        checkpoint = (Checkpoint & key).to_dicts()
        if checkpoint:
            if _accepts(trainer_fn, "resume_state"):
                logger.info("resuming %s from its checkpoint at epoch %d", _describe(key), checkpoint[0]["epoch"])
                kwargs["resume_state"] = state_from_arrays(checkpoint[0]["state"])
            else:
                logger.warning("%s has a checkpoint but its trainer takes no resume_state; starting over", _describe(key))

        def epoch_done(epoch=None, state=None, score=None, **_):
            if state is not None:
                self.hooks.epoch_scored(key, epoch, score, state)
                self.hooks.epoch_done(functools.partial(self._save_checkpoint, key, epoch, state))

        start = time.time()
        result = trainer_fn(model=net, dataloaders=dataloaders, seed=seed, uid=key, cb=epoch_done, **kwargs)
        score, output, state_dict = builder.check_trainer_result(trainer[0], result)
        duration = time.time() - start
        if not np.isfinite(score):
            raise ValueError(f"trainer {trainer[0]} returned a non-finite score {score} for {_describe(key)}")
        device = str(next(net.parameters(), torch.empty(0)).device)
        comment = ".".join(recipe[2] for recipe in (trainer, model, dataset))[:800]
        return score, _plain(output), weights_to_numpy(state_dict), comment, device, duration

    def _save_checkpoint(self, key, epoch, state) -> None:
        """Replace ``key``'s checkpoint, unless this process reserved the job and no longer holds it (JobLost)."""
        row = {**key, "epoch": epoch, "state": state_to_arrays(state), "checkpoint_host": socket.gethostname()}
        with atomic(self.connection):
            self._check_held(key)
            replace1(Checkpoint, row)

    def _check_held(self, key) -> None:
        if self.jobs.reserved_here(key) and not self.jobs.holds(key, lock=True):
            raise JobLost(f"{_describe(key)} was handed to another worker after this one was declared dead")

    def make_insert(self, key, score, output, weights, comment, device, duration):
        """Write the result and weights and drop the checkpoint, in make's transaction, if the job is still ours."""
        self._check_held(key)
        self.insert1(
            {
                **key,
                "score": score,
                "output": output,
                "fabrikant_name": Fabrikant.get_current_user(),
                "comment": comment,
                "code_version": code_version(),
                "host": socket.gethostname()[:255],
                "device": device,
                "duration": duration,
            }
        )
        self.Weights.insert1({**key, "state_dict": weights})
        (Checkpoint & key).delete_quick()

    # --- reading results ---------------------------------------------------------------------
    def get_full_config(self, key=None, include_state_dict=True, include_trainer=True) -> dict:
        """The keyword arguments of :func:`pipeline.builder.get_all_parts` for ``key``: configs, seed, weights."""
        key = self._one_key(key)
        config = {}
        for table in (Dataset, Model) + ((Trainer,) if include_trainer else ()):
            fn, cfg = table().fn_config(key)
            config[f"{table.role}_fn"], config[f"{table.role}_config"] = fn, cfg
        config["model_config"] = _with_parent_core(config["model_config"])
        config["seed"] = key["seed"]
        if include_state_dict:
            config["state_dict"] = (self.Weights & key).fetch1("state_dict")
        return config

    def load_model(self, key=None, include_dataloader=True, include_trainer=False, include_state_dict=True, seed=None):
        """Rebuild ``(dataloaders, model[, trainer])`` of ``key`` with its stored weights.

        With ``include_dataloader=False``: ``model`` (or ``(model, trainer)``), built from its dataset's
        :class:`DataInfo` instead of the data, so the data files need not exist here.
        """
        key = self._one_key(key)
        config = self.get_full_config(key, include_state_dict=include_state_dict, include_trainer=include_trainer)
        if seed is not None:
            config["seed"] = seed
        if include_dataloader:
            return builder.get_all_parts(**config)
        model = builder.get_model(config["model_fn"], config["model_config"], seed=config["seed"],
                                  state_dict=config.get("state_dict"), data_info=DataInfo.of(key))
        if include_trainer:
            return model, builder.get_trainer(config["trainer_fn"], config["trainer_config"])
        return model

    def _one_key(self, key):
        if key is None:
            return self.fetch1("KEY")
        keys = (self & key).keys()
        if len(keys) != 1:
            raise ValueError(f"{len(keys)} trained models match {key}; give a key that selects exactly one")
        return keys[0]


def _untrained_parents():
    """The ``Model.CoreFrom`` rows whose parent TrainedModel does not exist (yet)."""
    return Model.CoreFrom - TrainedModel.proj(**{f"core_{name}": name for name in TRAINED_KEY})


def _with_parent_core(model_config) -> dict:
    """The model config as the model function takes it: ``core_from`` replaced by the parent's core weights."""
    parent = core_parent(model_config)
    if parent is None:
        return model_config
    config = {name: value for name, value in model_config.items() if name != CORE_FROM}
    return {**config, "pretrained_core": TrainedModel.core_weights(parent)}


def _describe(key) -> str:
    return f"{key['dataset_fn']}/{key['model_fn']}/{key['trainer_fn']} seed {key['seed']}"
