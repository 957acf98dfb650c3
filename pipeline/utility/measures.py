"""Measures: the functions a ``Measure`` row may name (role ``measure``), the five SENSORIUM ones, and their contract.

The contract: ``measure_fn(responses, predictions, **measure_config)`` on one data key of one tier.

- ``responses`` and ``predictions`` are float64 ``(trials, neurons)`` arrays in the loader's order;
- a measure with a parameter named ``image_ids`` also gets the trials' image ids
  (``meta/trials/frame_image_id``; the repeats of an image share it): what oracles, FEVE and the
  correlation to average need;
- it returns ``(per_neuron, aggregate)``: a ``(neurons,)`` array, or None for a measure that has no
  per-neuron values, and a number. NaN or inf mean "undefined" (stored as NULL).

The SENSORIUM measures give the numbers of the model-level functions of :mod:`.scores` (the same
primitives, the same NaN handling) from predictions computed once.
"""
import inspect

import numpy as np

from ..builder import ContractError
from ..registry import register
from . import scores

IMAGE_IDS = "image_ids"


@register("measure")
def single_trial_correlation(responses, predictions):
    """Per-neuron correlation over single trials (NaN -> 0); aggregate: the mean over neurons."""
    per_neuron = scores.nan_to_zero(scores.corr(responses, predictions, axis=0), "single-trial correlations")
    return per_neuron, float(np.mean(per_neuron))


@register("measure")
def correlation_to_average(responses, predictions, image_ids):
    """Per-neuron correlation of the repeat-averaged responses and predictions (NaN -> 0); aggregate: the mean."""
    targets, outputs = scores.split_by_image(image_ids, responses, predictions)
    means = scores.corr(scores.repeat_means(targets), scores.repeat_means(outputs), axis=0)
    per_neuron = scores.nan_to_zero(means, "correlations to average")
    return per_neuron, float(np.mean(per_neuron))


@register("measure")
def feve(responses, predictions, image_ids, fev_threshold=0.15):
    """Per-neuron FEVE; aggregate: its mean over the neurons whose FEV >= ``fev_threshold``."""
    targets, outputs = scores.split_by_image(image_ids, responses, predictions)
    explainable, explained = scores.fev(targets, outputs, return_exp_var=True)
    return explained, scores.thresholded_mean(explained, explainable >= fev_threshold, fev_threshold)


@register("measure")
def oracle_correlation(responses, predictions, image_ids, conservative=False):
    """Oracle correlation of the data (the predictions are unused): jackknife, or the conservative one."""
    (repeated,) = scores.split_by_image(image_ids, responses)
    oracle = (scores.oracle_corr_conservative if conservative else scores.oracle_corr_jackknife)(repeated)
    return oracle, float(np.mean(oracle))


@register("measure")
def fraction_oracle(responses, predictions, image_ids, conservative=False):
    """Fraction of oracle: per neuron single-trial correlation / oracle; aggregate: the slope of one on the other."""
    correlations, _ = single_trial_correlation(responses, predictions)
    oracles, _ = oracle_correlation(responses, predictions, image_ids, conservative)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = correlations / oracles
    return ratios, scores.fraction_oracle(correlations, oracles)


# The SENSORIUM 2022 measures, scored on the test tier of every trained model: (name, function, config).
SENSORIUM = (
    ("test_correlation", single_trial_correlation, {}),
    ("correlation_to_average", correlation_to_average, {}),
    ("feve", feve, {"fev_threshold": 0.15}),
    ("oracle_correlation", oracle_correlation, {}),
    ("fraction_oracle", fraction_oracle, {}),
)


def _wants_image_ids(fn) -> bool:
    return IMAGE_IDS in inspect.signature(fn).parameters


def check_config(name: str, fn, config: dict) -> None:
    """Refuse a config that ``fn`` (registered as ``name``) cannot be called with."""
    if IMAGE_IDS in config:
        raise ValueError(f"the config of measure {name} sets {IMAGE_IDS!r}, which v1fabrik passes itself")
    extra = {IMAGE_IDS: None} if _wants_image_ids(fn) else {}
    try:
        inspect.signature(fn).bind(None, None, **config, **extra)
    except TypeError as error:
        raise TypeError(f"measure {name} cannot be called with the config {config}: {error}") from None


def apply_measure(name: str, fn, data, config: dict) -> tuple:
    """``(per_neuron float64 array or None, aggregate float)`` of ``fn`` (registered as ``name``) on one
    :class:`~pipeline.utility.predictions.TierData`, checked against the contract."""
    kwargs = dict(config)
    if _wants_image_ids(fn):
        if data.image_ids is None:
            raise ValueError(f"measure {name} needs the trials' image ids, but data key {data.data_key} has no "
                             "meta/trials/frame_image_id")
        kwargs[IMAGE_IDS] = data.image_ids
    result = fn(data.responses, data.predictions, **kwargs)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ContractError(f"measure {name} returned {type(result).__name__} {result!r:.60}; it must return "
                            "(per-neuron values or None, aggregate)")
    per_neuron, aggregate = result
    if np.ndim(aggregate) != 0 or np.asarray(aggregate).dtype.kind not in "iuf":
        raise ContractError(f"measure {name} returned the aggregate {aggregate!r:.60}; it must be a number")
    if per_neuron is not None:
        per_neuron = np.asarray(per_neuron)
        n_neurons = data.responses.shape[1]
        if per_neuron.shape != (n_neurons,) or per_neuron.dtype.kind not in "iuf":
            raise ContractError(f"measure {name} returned per-neuron values of shape {per_neuron.shape} and dtype "
                                f"{per_neuron.dtype}; data key {data.data_key} needs {n_neurons} numbers (or None)")
        per_neuron = per_neuron.astype(np.float64)
    return per_neuron, float(aggregate)


def pooled_aggregate(aggregates, n_neurons) -> float:
    """The aggregate over several data keys: their aggregates' mean weighted by neurons; NaN if one is undefined."""
    aggregates = np.asarray(aggregates, dtype=np.float64)
    if len(aggregates) == 1:
        return float(aggregates[0])
    if not np.isfinite(aggregates).all():
        return float("nan")
    return float(np.average(aggregates, weights=n_neurons))
