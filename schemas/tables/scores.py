"""Score: every Measure of every TrainedModel, the SENSORIUM measures under their old table names, the scores frame.

A ``Score`` row is one measure of one trained model on the measure's tier: the aggregate, and a
``Unit`` part with one row per neuron ``(data_key, unit_id, unit_value)`` (none for a measure
without per-neuron values), inserted in one batch. An undefined value (FEVE when no neuron passes
the FEV threshold, a neuron's fraction of oracle when its oracle is 0) is NULL, never NaN. A model's
predictions on a tier are computed once and read by every measure of that tier; ``populate`` goes
one model at a time for that, and a worker takes a model's scores one after another.

A model with several data keys gets one aggregate per measure: the mean of its data keys' aggregates,
weighted by their neurons (:func:`pipeline.utility.measures.pooled_aggregate`).

Ensembles are scored by the same code, as a second table: ``EnsembleScore`` has ``scored = Ensemble``
(any table with ``load_model(key) -> (dataloaders, model)`` works), ``identity`` = the attributes that
change when such a model is rebuilt, and the same definitions.
"""
import collections
import functools

import datajoint as dj
import numpy as np
import pandas as pd

from pipeline import builder
from pipeline.utility import measures
from pipeline.utility.predictions import tier_data

from .ensembles import Ensemble
from .experiment import Experiment
from .jobtable import OwnedJobs
from .recipes import Dataset, Measure, Model, Trainer
from .trained import TrainedModel

# The old score tables, now views of Score (measure_view): class name -> measure name.
VIEWS = {"TestCorrelation": "test_correlation", "CorrelationToAverage": "correlation_to_average",
         "FEVE": "feve", "OracleCorrelation": "oracle_correlation", "FractionOracle": "fraction_oracle"}
FRAME_COLUMNS = ["dataset", "model", "trainer", "seed", "validation"]


def score_definition(parent: str) -> str:
    """The definition of a score table of the models in ``parent``."""
    return f"""
    # a Measure of a {parent} on the measure's tier
    -> {parent}
    -> Measure
    ---
    value = null : float64        # the aggregate (NULL when undefined)
    score_ts = CURRENT_TIMESTAMP : datetime
    """


UNIT_DEFINITION = """
    # one row per neuron
    -> master
    data_key : varchar(64)
    unit_id : int64
    ---
    unit_value = null : float64   # NULL when undefined
    """


def _stored(value):
    value = float(value)
    return value if np.isfinite(value) else None


class _Predictions:
    """The last ``size`` scored models, each with its dataloaders, model and ``{tier: {data_key: TierData}}``.

    Keyed by the model's table, key and identity (e.g. when it was trained): a model deleted and
    trained again is loaded anew.
    """

    def __init__(self, size=2):
        self.size, self.items = size, collections.OrderedDict()

    def get(self, scored, key, identity, tier, device) -> dict:
        cache_key = (scored.__name__, *sorted(key.items()), *identity)
        if cache_key not in self.items:
            self.items[cache_key] = (scored().load_model(key), {})
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        self.items.move_to_end(cache_key)
        (dataloaders, model), tiers = self.items[cache_key]
        if tier not in tiers:
            tiers[tier] = tier_data(model.to(device), dataloaders, tier, device)
        return tiers[tier]


_predictions = _Predictions()


class Scoring:
    """The make of a score table: ``scored`` is the table of the models it scores, ``identity`` those of
    its attributes that change when a model is replaced."""

    scored = None
    identity = ()

    def make_fetch(self, key):
        measure = (Measure & key).fetch1("measure_fn", "measure_config", "measure_tier")
        row = (self.scored & key).proj(*self.identity).fetch1()
        return (*measure, tuple(row[name] for name in self.identity))

    def make_compute(self, key, fn_name, config, tier, identity):
        """Every data key's per-neuron values and the aggregate of the measure, from the cached predictions."""
        fn = builder.resolve_fn(fn_name, "measure")
        model_key = {k: key[k] for k in self.scored.primary_key}
        data = _predictions.get(self.scored, model_key, identity, tier, TrainedModel.device or "cpu")
        results, units = [], []
        for data_key, trials in data.items():
            trials.require_responses(tier)
            per_neuron, aggregate = measures.apply_measure(fn_name, fn, trials, config)
            results.append(aggregate)
            if per_neuron is not None:
                units += [{"data_key": data_key, "unit_id": int(u), "unit_value": _stored(v)}
                          for u, v in zip(trials.unit_ids, per_neuron, strict=True)]
        aggregate = measures.pooled_aggregate(results, [len(trials.unit_ids) for trials in data.values()])
        return _stored(aggregate), units

    def make_insert(self, key, value, units):
        self.insert1({**key, "value": value})
        if units:
            self.Unit.insert([{**key, **unit} for unit in units])

    def populate(self, *restrictions, max_calls=None, **kwargs):
        """DataJoint's populate, one scored model at a time: a model's predictions are computed once per tier."""
        todo = (self.key_source & dj.AndList(restrictions)) - self.proj()
        models = (self.scored.proj() & todo).keys()
        if len(models) < 2:
            return super().populate(*restrictions, max_calls=max_calls, **kwargs)
        total = {"success_count": 0, "error_list": []}
        for model in models:
            left = None if max_calls is None else max_calls - total["success_count"] - len(total["error_list"])
            if left == 0:
                break
            result = super().populate(model, *restrictions, max_calls=left, **kwargs)
            total["success_count"] += result["success_count"]
            total["error_list"] += result["error_list"]
        return total

    @classmethod
    def by_model(cls, keys) -> list:
        """``keys`` reordered so that each model's keys follow one another, models in order of first appearance."""
        groups = collections.defaultdict(list)
        for key in keys:
            groups[tuple(key[k] for k in cls.scored.primary_key)].append(key)
        return [key for group in groups.values() for key in group]


class Score(Scoring, OwnedJobs, dj.Computed):
    scored = TrainedModel
    identity = ("trainedmodel_ts", "duration")  # no two trainings share both
    definition = score_definition("TrainedModel")

    class Unit(dj.Part):
        definition = UNIT_DEFINITION


class EnsembleScore(Scoring, OwnedJobs, dj.Computed):
    scored = Ensemble
    identity = ("ensemble_ts",)  # an ensemble deleted and created again is scored anew
    definition = score_definition("Ensemble")

    class Unit(dj.Part):
        definition = UNIT_DEFINITION


SCORE_TABLES = (Score, EnsembleScore)


def add_sensorium_measures() -> None:
    """Register the SENSORIUM measures on the test tier (no fabrikant) where they are missing."""
    keys = [{"measure_fn": builder.fn_name(fn), "measure_hash": Measure.hash(config, "test")}
            for _, fn, config in measures.SENSORIUM]
    if len(Measure & keys) == len(keys):
        return
    for name, fn, config in measures.SENSORIUM:
        Measure()._add(Measure().row(fn, config, "test", name, comment="SENSORIUM 2022"), None, skip_duplicates=True)


def measure_view(name: str):
    """The scores of the measure ``name`` as the old score tables had them.

    One row per scored TrainedModel with the column ``<name>``; ``.Unit`` has ``unit_<name>`` per neuron
    (and the measure's key as ``<name>_fn``, ``<name>_hash``, so views of two measures join); ``.populate``
    scores the measure.
    """
    measure = Measure & {"measure_name": name}
    view = TrainedModel.proj().aggr(Score & measure, **{name: "max(value)"})
    view.Unit = (Score.Unit & measure).proj(**{f"unit_{name}": "unit_value", f"{name}_fn": "measure_fn",
                                               f"{name}_hash": "measure_hash"})
    view.populate = functools.partial(Score().populate, measure.proj())
    return view


def views() -> dict:
    """The SENSORIUM measures' views under their old table names."""
    return {view: measure_view(name) for view, name in VIEWS.items()}


def __getattr__(name):
    if name in VIEWS:  # `from schemas.tables.scores import TestCorrelation` after schemas.activate()
        if Score._connection is None:
            raise AttributeError(f"{name} is a view of Score, which is not bound yet: call schemas.activate() first")
        return measure_view(VIEWS[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def measure_names() -> list:
    """Every measure's name, the SENSORIUM ones first."""
    names = Measure.to_arrays("measure_name").tolist()
    first = [name for name in VIEWS.values() if name in names]
    return first + sorted(set(names) - set(first))


def measures_frame() -> pd.DataFrame:
    """One row per measure: name, function, tier and config."""
    columns = {"measure": "measure_name", "function": "measure_fn", "tier": "measure_tier", "config": "measure_config"}
    frame = pd.DataFrame([{c: row[a] for c, a in columns.items()} for row in Measure.to_dicts()], columns=list(columns))
    order = {name: i for i, name in enumerate(measure_names())}
    return frame.sort_values("measure", key=lambda names: names.map(order), ignore_index=True)


def scores_frame(experiment=None) -> pd.DataFrame:
    """Trained models (of ``experiment``, if given) with every measure's aggregate as a column; NaN where not scored."""
    trained = TrainedModel.proj("score")
    if experiment is not None:
        trained = trained & Experiment.combinations(experiment)
    query = (trained * Dataset.proj("dataset_comment") * Model.proj("model_comment")
             * Trainer.proj("trainer_comment"))
    frame = query.to_pandas()
    names = measure_names()
    if frame.empty:
        return ensembles_frame(experiment, names)
    values = (Score * Measure.proj("measure_name") & trained).to_pandas().reset_index()
    if len(values):
        values["value"] = values["value"].astype(float)
        wide = values.pivot(index=frame.index.names, columns="measure_name", values="value")
        frame = frame.join(wide.reindex(columns=names), how="left")
    frame = frame.reindex(columns=[*frame.columns, *(n for n in names if n not in frame.columns)])
    frame = frame.reset_index().rename(columns={"dataset_comment": "dataset", "model_comment": "model",
                                                "trainer_comment": "trainer", "score": "validation"})
    frame = frame[FRAME_COLUMNS + names].sort_values(["dataset", "model", "trainer", "seed"], ignore_index=True)
    return pd.concat([frame, ensembles_frame(experiment, names)], ignore_index=True) if len(Ensemble()) else frame


def ensembles_frame(experiment=None, names=None) -> pd.DataFrame:
    """The ensembles (of ``experiment``'s trained models only, if given) as rows of :func:`scores_frame`: model
    ``ensemble of N: <comment>``, validation the mean of the members', every measure's aggregate."""
    names = measure_names() if names is None else names
    ensembles = Ensemble()
    if experiment is not None:
        ensembles = ensembles - (Ensemble.Member - Experiment.combinations(experiment)).proj()
    rows = []
    for ensemble in (ensembles * Dataset.proj("dataset_comment")).to_dicts():
        key = {"ensemble_hash": ensemble["ensemble_hash"]}
        validation = (TrainedModel & (Ensemble.Member & key)).to_arrays("score")
        values = dict(zip(*(EnsembleScore * Measure.proj("measure_name") & key).to_arrays("measure_name", "value")))
        rows.append({"dataset": ensemble["dataset_comment"], "trainer": "", "seed": None,
                     "model": f"ensemble of {len(validation)}: {ensemble['ensemble_comment']}",
                     "validation": float(validation.mean()), **{n: values.get(n) for n in names}})
    return pd.DataFrame(rows, columns=FRAME_COLUMNS + names).astype({n: float for n in ["validation", *names]})
