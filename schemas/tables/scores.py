"""Per-neuron test metrics of every TrainedModel, from :mod:`pipeline.utility.scores`, and
:func:`scores_frame`, one row per trained model with every aggregate.

Each score table has a master row (the aggregate, as the scores function defines it) and a
``Unit`` part with one row per neuron ``(data_key, unit_id, value)``; all unit rows of a model
go in with one batched insert. A value that is undefined (e.g. FEVE when no neuron passes the
FEV threshold, or a neuron's fraction of oracle when its oracle is 0) is stored as NULL, never NaN.
"""
import collections
import logging

import datajoint as dj
import numpy as np
import pandas as pd

from pipeline.utility import scores

from .experiment import Experiment
from .jobtable import OwnedJobs
from .recipes import Dataset, Model, Trainer
from .trained import TrainedModel

logger = logging.getLogger(__name__)

TIER = "test"


class _ModelCache:
    """The last few ``(dataloaders, model)`` loaded, so the score tables of one trained model load it once.

    Keyed by the TrainedModel row (its key, timestamp and measured training time, which no two trainings
    share): a model deleted and trained again is loaded anew.
    """

    def __init__(self, size=2):
        self.size, self.items = size, collections.OrderedDict()

    def load(self, key):
        cache_key = (*sorted(key.items()), *(TrainedModel & key).fetch1("trainedmodel_ts", "duration"))
        if cache_key not in self.items:
            self.items[cache_key] = TrainedModel().load_model(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return self.items[cache_key]


_models = _ModelCache()


def _definition(measure: str, what: str) -> str:
    return f"""
    # {what} on the {TIER} tier
    -> TrainedModel
    ---
    {measure} = null : float64      # aggregate over neurons (NULL when undefined)
    {measure}_ts = CURRENT_TIMESTAMP : datetime
    """


def _unit_definition(measure: str) -> str:
    return f"""
    # one row per neuron
    -> master
    data_key : varchar(64)
    unit_id : int64
    ---
    unit_{measure} = null : float64
    """


def _stored(value):
    value = float(value)
    return value if np.isfinite(value) else None


class _ScoreTable:
    """Shared make of the score tables.

    Subclasses set ``measure`` (the column name) and ``score_fn`` (a model-level function of
    :mod:`pipeline.utility.scores`), or override ``compute``.
    """

    measure = None
    score_fn = None

    @classmethod
    def compute(cls, model, dataloaders, device):
        """``(aggregate, {data_key: per-neuron values})`` of a model on the test tier."""
        return (
            cls.score_fn(model, dataloaders, tier=TIER, device=device, per_neuron=False),
            cls.score_fn(model, dataloaders, tier=TIER, device=device, as_dict=True),
        )

    def make_fetch(self, key):
        return (key,)

    def make_compute(self, key, _key):
        dataloaders, model = _models.load(key)
        device = TrainedModel.device or "cpu"
        aggregate, per_key = self.compute(model.to(device), dataloaders, device)
        units = []
        for data_key, values in per_key.items():
            unit_ids = dataloaders[TIER][data_key].dataset.neurons.unit_ids
            units += [
                {"data_key": data_key, "unit_id": int(u), f"unit_{self.measure}": _stored(v)}
                for u, v in zip(unit_ids, values, strict=True)
            ]
        return _stored(aggregate), units

    def make_insert(self, key, aggregate, units):
        self.insert1({**key, self.measure: aggregate})
        self.Unit.insert([{**key, **unit} for unit in units])


class TestCorrelation(_ScoreTable, OwnedJobs, dj.Computed):
    __test__ = False  # not a pytest test class
    measure = "test_correlation"
    score_fn = staticmethod(scores.get_correlations)
    definition = _definition(measure, "single-trial correlation between predictions and responses")

    class Unit(dj.Part):
        definition = _unit_definition("test_correlation")


class CorrelationToAverage(_ScoreTable, OwnedJobs, dj.Computed):
    measure = "correlation_to_average"
    score_fn = staticmethod(scores.get_signal_correlations)
    definition = _definition(measure, "correlation of predictions with responses averaged over repeats")

    class Unit(dj.Part):
        definition = _unit_definition("correlation_to_average")


class FEVE(_ScoreTable, OwnedJobs, dj.Computed):
    measure = "feve"
    score_fn = staticmethod(scores.get_fev)
    definition = _definition(measure, "fraction of explainable variance explained (mean over neurons with FEV >= 0.15)")

    class Unit(dj.Part):
        definition = _unit_definition("feve")


class OracleCorrelation(_ScoreTable, OwnedJobs, dj.Computed):
    measure = "oracle_correlation"
    definition = _definition(measure, "jackknife oracle correlation of the data (model-independent)")

    class Unit(dj.Part):
        definition = _unit_definition("oracle_correlation")

    @staticmethod
    def compute(model, dataloaders, device):
        return (
            scores.get_oracles(dataloaders, tier=TIER, per_neuron=False),
            scores.get_oracles(dataloaders, tier=TIER, as_dict=True),
        )


class FractionOracle(_ScoreTable, OwnedJobs, dj.Computed):
    measure = "fraction_oracle"
    definition = _definition(measure, "fraction of oracle: slope of test correlation against oracle; per neuron the ratio")

    class Unit(dj.Part):
        definition = _unit_definition("fraction_oracle")

    @staticmethod
    def compute(model, dataloaders, device):
        correlations = scores.get_correlations(model, dataloaders, tier=TIER, device=device, as_dict=True)
        oracles = scores.get_oracles(dataloaders, tier=TIER, as_dict=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = {k: correlations[k] / oracles[k] for k in correlations}
        return scores.get_fraction_oracles(model, dataloaders, tier=TIER, device=device), ratios


SCORE_TABLES = (TestCorrelation, CorrelationToAverage, FEVE, OracleCorrelation, FractionOracle)

SCORE_COLUMNS = ["dataset", "model", "trainer", "seed", "validation", "test_correlation",
                 "correlation_to_average", "feve", "oracle_correlation", "fraction_oracle"]


def scores_frame(experiment=None) -> pd.DataFrame:
    """Trained models (of ``experiment``, if given) with the aggregate of every score table; NaN where not scored yet."""
    trained = TrainedModel.proj("score")
    if experiment is not None:
        trained = trained & Experiment.combinations(experiment)
    query = (trained * Dataset.proj("dataset_comment") * Model.proj("model_comment")
             * Trainer.proj("trainer_comment"))
    frame = query.to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    for table in SCORE_TABLES:
        frame = frame.join(table.proj(table.measure).to_pandas(), how="left")
    frame = frame.reset_index().rename(columns={"dataset_comment": "dataset", "model_comment": "model",
                                                "trainer_comment": "trainer", "score": "validation"})
    return frame[SCORE_COLUMNS].sort_values(["dataset", "model", "trainer", "seed"], ignore_index=True)
