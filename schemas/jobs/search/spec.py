"""A study file: what to search, checked before anything is registered.

::

    name: lr-and-regularisation          # the study, and the experiment its trials join
    comment: learnable preset, 2 workers
    dataset: {fn: pipeline.datasets.static_loaders, config: {paths: [...], batch_size: 64}}
    model:   {fn: pipeline.models.stacked_core_full_gauss_readout, config: {...}}
    trainer: {fn: pipeline.training.standard_trainer, config: {max_iter: 20}}
    space:                               # <model|trainer|dataset>.<config key>[.<nested key>...]
      trainer.lr_init: {type: float, low: 0.001, high: 0.03, log: true}
      model.hidden_channels: {type: int, low: 8, high: 64, step: 8}
      model.grid_mean_predictor.hidden_features: {type: categorical, choices: [8, 16, 30]}
    n_trials: 16
    seeds: [1]                           # every trial trains one model per seed; its value is their mean
    sampler: tpe                         # tpe (default), random or grid; or {name: tpe, seed: 0, ...}
    pruner: median                       # median (default) or none; or {name: median, n_warmup_steps: 2, ...}

A space key names a keyword argument of the function (or a key of its base config) and, for nested
keys, a key that the base config already has. Trial values are Optuna parameters named by these
paths. Every mistake is refused with one sentence naming the study file's entry.
"""
import copy
import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import yaml

from pipeline import builder

ROLES = ("dataset", "model", "trainer")
KEYS = {"name", "comment", "space", "n_trials", "seeds", "sampler", "pruner", *ROLES}
SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
            "grid": optuna.samplers.GridSampler}
PRUNERS = {"median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner}


class StudyFileError(ValueError):
    """A study file is malformed; the message names the entry."""


@dataclass(frozen=True)
class StudySpec:
    """A checked study: base recipes, the space as Optuna distributions, and how to sample and prune."""

    name: str
    comment: str
    recipes: dict        # {role: {"fn", "config", "comment"}}
    space: dict          # {path: optuna distribution}
    n_trials: int
    seeds: tuple
    sampler: dict        # {"name": ..., options}
    pruner: dict

    # --- reading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path) -> "StudySpec":
        """Read and check a YAML study file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"study file {path} does not exist")
        return cls.from_dict(yaml.safe_load(path.read_text()), where=str(path))

    @classmethod
    def from_dict(cls, spec, where="study") -> "StudySpec":
        """Check a parsed study file (or the ``spec`` stored with a study)."""
        if not isinstance(spec, dict):
            raise StudyFileError(f"{where}: expected a mapping with {sorted(KEYS)}")
        unknown, missing = set(spec) - KEYS, {"name", "space", "n_trials", *ROLES} - set(spec)
        if unknown or missing:
            raise StudyFileError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        name = spec["name"]
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise StudyFileError(f"{where}: 'name' must be a string of 1 to 64 characters, got {name!r}")
        recipes = {role: _recipe(spec[role], f"{where}: {role}", role) for role in ROLES}
        space = spec["space"]
        if not isinstance(space, dict) or not space:
            raise StudyFileError(f"{where}: 'space' must map parameter paths to {{type, ...}}; it is empty")
        n_trials, seeds = spec["n_trials"], spec.get("seeds", [1])
        if not _is_int(n_trials) or n_trials < 1:
            raise StudyFileError(f"{where}: 'n_trials' must be a positive integer, got {n_trials!r}")
        if not isinstance(seeds, list) or not seeds or not all(map(_is_int, seeds)) or len(set(seeds)) < len(seeds):
            raise StudyFileError(f"{where}: 'seeds' must be a non-empty list of distinct integers, got {seeds!r}")
        distributions = {path: _distribution(path, entry, recipes, where) for path, entry in space.items()}
        sampler = _choice(spec.get("sampler", "tpe"), SAMPLERS, "sampler", where)
        pruner = _choice(spec.get("pruner", "median"), PRUNERS, "pruner", where)
        if sampler["name"] == "grid":
            _grid(distributions, where)
        result = cls(name, spec.get("comment", ""), recipes, distributions, n_trials, tuple(seeds), sampler, pruner)
        try:  # options the sampler or the pruner refuses fail here
            result.make_sampler(0), result.make_pruner()
        except (TypeError, ValueError) as error:
            raise StudyFileError(f"{where}: the sampler or pruner options are refused ({error})") from None
        return result

    def to_dict(self) -> dict:
        """The study file as plain data (what the Study table stores)."""
        return {"name": self.name, "comment": self.comment, **copy.deepcopy(self.recipes),
                "space": {p: optuna.distributions.distribution_to_json(d) for p, d in self.space.items()},
                "n_trials": self.n_trials, "seeds": list(self.seeds), "sampler": dict(self.sampler),
                "pruner": dict(self.pruner)}

    @classmethod
    def from_stored(cls, stored: dict) -> "StudySpec":
        """The spec :meth:`to_dict` stored."""
        space = {p: optuna.distributions.json_to_distribution(d) for p, d in stored["space"].items()}
        return cls(stored["name"], stored["comment"], {r: stored[r] for r in ROLES}, space, stored["n_trials"],
                   tuple(stored["seeds"]), stored["sampler"], stored["pruner"])

    # --- using ------------------------------------------------------------------------------
    def configs(self, params: dict) -> dict:
        """``{role: config}``: the base configs with a trial's parameter values put in at their paths."""
        configs = {role: copy.deepcopy(self.recipes[role]["config"]) for role in ROLES}
        for path, value in params.items():
            role, *keys = path.split(".")
            parent = configs[role]
            for key in keys[:-1]:
                parent = parent[key]
            parent[keys[-1]] = value.item() if hasattr(value, "item") else value
        return configs

    def make_sampler(self, trial_count: int):
        """The sampler; a seeded one is seeded from ``(seed, trial_count)``, so that workers asking in turn
        continue one reproducible sequence instead of repeating it (and another seed gives another one)."""
        options = {k: v for k, v in self.sampler.items() if k != "name"}
        if options.get("seed") is not None:
            options["seed"] = int(np.random.SeedSequence([options["seed"], trial_count]).generate_state(1)[0])
        if self.sampler["name"] == "grid":
            return optuna.samplers.GridSampler(_grid(self.space, self.name), **options)
        return SAMPLERS[self.sampler["name"]](**options)

    def make_pruner(self):
        return PRUNERS[self.pruner["name"]](**{k: v for k, v in self.pruner.items() if k != "name"})

    def step(self, epoch: int, seed: int) -> int:
        """The Optuna step of ``epoch`` (1-based) of the trial's model with ``seed``: with k seeds, epoch e of
        the i-th seed is step (e-1)·k + i + 1, so the pruner compares the same seed's same epoch across trials."""
        return (epoch - 1) * len(self.seeds) + self.seeds.index(seed) + 1


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _recipe(entry, where, role) -> dict:
    if not isinstance(entry, dict) or "fn" not in entry or set(entry) - {"fn", "config", "comment"}:
        raise StudyFileError(f"{where} must have 'fn' and may have 'config' and 'comment'")
    config = entry.get("config") or {}
    if not isinstance(config, dict):
        raise StudyFileError(f"{where}: 'config' must be a mapping, got {type(config).__name__}")
    builder.resolve_fn(entry["fn"], role)
    return {"fn": entry["fn"], "config": config, "comment": entry.get("comment", "")}


def _check_path(path, recipes, where) -> None:
    """Refuse a space key that names nothing the function takes."""
    role, _, rest = path.partition(".")
    if role not in ROLES or not rest or "" in rest.split("."):
        raise StudyFileError(f"{where}: space key {path!r} must be <model|trainer|dataset>.<config key>[.<nested key>]")
    first, *nested = rest.split(".")
    recipe = recipes[role]
    if not nested:
        params = inspect.signature(builder.resolve_fn(recipe["fn"], role)).parameters
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        named = first in params and params[first].kind not in variadic
        if not named and not (takes_any and first in recipe["config"]):
            raise StudyFileError(f"{where}: space key {path!r} is unknown: {recipe['fn']} takes no argument {first!r}")
        return
    parent = recipe["config"]
    for i, key in enumerate([first, *nested]):
        if not isinstance(parent, dict) or key not in parent:
            known = ".".join([role, first, *nested][: i + 2])
            raise StudyFileError(f"{where}: space key {path!r} is unknown: the base {role} config has no {known!r}")
        parent = parent[key]


def _distribution(path, entry, recipes, where):
    _check_path(path, recipes, where)
    what = f"{where}: space {path!r}"
    if not isinstance(entry, dict) or entry.get("type") not in ("float", "int", "categorical"):
        raise StudyFileError(f"{what} must be {{type: float|int|categorical, ...}}, got {entry!r}")
    kind, options = entry["type"], {k: v for k, v in entry.items() if k != "type"}
    allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
               "categorical": {"choices"}}[kind]
    if set(options) - allowed:
        raise StudyFileError(f"{what}: unknown options {sorted(set(options) - allowed)} for type {kind}")
    if kind == "categorical":
        choices = options.get("choices")
        if not isinstance(choices, list) or not choices:
            raise StudyFileError(f"{what}: 'choices' must be a non-empty list")
        if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise StudyFileError(f"{what}: choices must be numbers, strings, booleans or null, got {choices!r}")
        return optuna.distributions.CategoricalDistribution(choices)
    if "low" not in options or "high" not in options:
        raise StudyFileError(f"{what}: 'low' and 'high' are required")
    low, high = options["low"], options["high"]
    number = _is_int if kind == "int" else (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))
    if not number(low) or not number(high):
        raise StudyFileError(f"{what}: 'low' and 'high' must be {'integers' if kind == 'int' else 'numbers'}")
    if low >= high:
        raise StudyFileError(f"{what}: the range [{low}, {high}] is empty; 'low' must be below 'high'")
    if options.get("log") and low <= 0:
        raise StudyFileError(f"{what}: a log-scale range must be positive, got low={low}")
    try:
        if kind == "int":
            return optuna.distributions.IntDistribution(low, high, log=bool(options.get("log")),
                                                        step=options.get("step", 1))
        return optuna.distributions.FloatDistribution(float(low), float(high), log=bool(options.get("log")),
                                                      step=options.get("step"))
    except ValueError as error:
        raise StudyFileError(f"{what}: {error}") from None


def _choice(entry, table, what, where) -> dict:
    options = {"name": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, dict) else {}
    if options.get("name") not in table:
        raise StudyFileError(f"{where}: '{what}' must be one of {sorted(table)} (or {{name: ..., options}}), "
                             f"got {entry!r}")
    return options


def _grid(space, where) -> dict:
    """The grid of every parameter; refused for a float range without a step."""
    grid = {}
    for path, d in space.items():
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            grid[path] = list(d.choices)
        elif d.step is None or d.log:
            raise StudyFileError(f"{where}: the grid sampler needs a 'step' (and no log scale) for {path!r}")
        else:
            count = int(round((d.high - d.low) / d.step)) + 1
            grid[path] = [d.low + i * d.step for i in range(count)]
    return grid
