"""Named experiments: sets of Dataset x Model x Trainer x Seed combinations that workers can be pointed at."""
import itertools

import datajoint as dj

from ..server.sql import atomic
from .recipes import Dataset, Fabrikant, Model, Seed, Trainer


class ExperimentConflict(ValueError):
    """An experiment of this name belongs to somebody else."""


class Experiment(dj.Manual):
    definition = """
    # a named set of Dataset x Model x Trainer x Seed combinations that workers can be pointed at
    experiment_name : varchar(64)
    ---
    -> Fabrikant.proj(experiment_fabrikant="fabrikant_name")
    experiment_comment = "" : varchar(2000)
    experiment_ts = CURRENT_TIMESTAMP : datetime
    """

    class Restriction(dj.Part):
        definition = """
        # one combination of the experiment
        -> master
        -> Dataset
        -> Model
        -> Trainer
        -> Seed
        """

    def add(self, name, datasets, models, trainers, seeds, comment="", fabrikant=None, join=False) -> int:
        """Register every combination of the given recipe keys and seeds in one transaction; returns their count.

        Adding to an experiment of your own is idempotent. An experiment of the same name made by somebody
        else is refused (ExperimentConflict) unless ``join`` is set.
        """
        rows = [
            {"experiment_name": name, **d, **m, **t, "seed": s}
            for d, m, t, s in itertools.product(datasets, models, trainers, seeds)
        ]
        with atomic(self.connection):
            fabrikant = fabrikant or Fabrikant.ensure_current_user()
            owner = (self & {"experiment_name": name}).to_arrays("experiment_fabrikant")
            if len(owner) and owner[0] != fabrikant and not join:
                raise ExperimentConflict(f"experiment {name!r} belongs to {owner[0]!r}, not to {fabrikant!r}: "
                                         "choose another name, or join it explicitly (join=True, --join)")
            if not len(owner):
                self.insert1({"experiment_name": name, "experiment_fabrikant": fabrikant,
                              "experiment_comment": comment})
            self.Restriction.insert(rows, skip_duplicates=True)
        return len(rows)

    @classmethod
    def combinations(cls, name):
        """The Dataset x Model x Trainer x Seed keys of experiment ``name``, as a restriction."""
        if not cls & {"experiment_name": name}:
            raise ValueError(f"no experiment named {name!r}; register it first (v1fabrik register)")
        return (cls.Restriction & {"experiment_name": name}).proj()
