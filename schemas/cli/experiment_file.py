"""``v1fabrik register EXPERIMENT.yaml``: register recipes, seeds and an experiment from one file.

The file (every list may hold one or more entries; ``comment`` is optional everywhere)::

    name: baseline-synthetic
    comment: seed notebook model on synthetic data
    datasets:
      - fn: pipeline.datasets.static_loaders
        config: {paths: [data/static90000-1-1-Synthetic-s0], batch_size: 64, scale: 0.25}
    models:
      - fn: pipeline.models.stacked_core_full_gauss_readout
        config: {hidden_channels: 64, ...}
    trainers:
      - fn: pipeline.training.standard_trainer
        config: {max_iter: 20}
    seeds: [1, 2]

Registering is idempotent: entries that exist are reused, so the same file can be registered
again after adding a seed or a model.
"""
from pathlib import Path

import yaml

from ..server.sql import atomic
from ..tables import Dataset, Experiment, Model, Seed, Trainer

SECTIONS = {"datasets": Dataset, "models": Model, "trainers": Trainer}
KEYS = {"name", "comment", "seeds", *SECTIONS}


class ExperimentFileError(ValueError):
    """The experiment file is missing something or holds something unexpected."""


def load(path) -> dict:
    """Read and check an experiment file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {path} does not exist")
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict):
        raise ExperimentFileError(f"{path}: expected a mapping with {sorted(KEYS)}")
    unknown = set(spec) - KEYS
    missing = {"name", "seeds", *SECTIONS} - set(spec)
    if unknown or missing:
        raise ExperimentFileError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    for section in SECTIONS:
        entries = spec[section]
        if not isinstance(entries, list) or not entries:
            raise ExperimentFileError(f"{path}: '{section}' must be a non-empty list of {{fn, config, comment}}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or "fn" not in entry or set(entry) - {"fn", "config", "comment"}:
                raise ExperimentFileError(f"{path}: {section}[{i}] must have 'fn' and may have 'config' and 'comment'")
    seeds = spec["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ExperimentFileError(f"{path}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    return spec


def register(path, join=False) -> dict:
    """Register every entry and the experiment of ``path``; returns the name and the number of combinations.

    ``join`` adds to an experiment of the same name that somebody else made (refused otherwise).
    """
    spec = load(path)
    with atomic(Experiment.connection):  # all of the file or nothing
        keys = {
            section: [
                table().add_entry(e["fn"], e.get("config") or {}, comment=e.get("comment", ""), skip_duplicates=True)
                for e in spec[section]
            ]
            for section, table in SECTIONS.items()
        }
        Seed.insert([{"seed": s} for s in spec["seeds"]], skip_duplicates=True)
        n = Experiment().add(spec["name"], keys["datasets"], keys["models"], keys["trainers"], spec["seeds"],
                             comment=spec.get("comment", ""), join=join)
    return {"name": spec["name"], "combinations": n}
