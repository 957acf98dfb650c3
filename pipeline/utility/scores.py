"""The metrics the SENSORIUM benchmark reports: correlations, oracles and FEVE.

Primitives (``corr``, ``fev``, ``oracle_corr_jackknife``, ``oracle_corr_conservative``) match
neuralpredictors 0.3.0 ``measures.np_functions``. The model-level functions match sensorium's
``utility/scores.py``, with three documented differences:

- they run the model in eval mode (and restore its previous mode); sensorium leaves that to the caller;
- they compute in float64 (sensorium correlates float32 arrays), which changes results by ~1e-7;
- ``get_fev(per_neuron=True)`` returns the FEVE of every neuron, aligned with ``unit_ids``; the
  ``fev_threshold`` applies to the aggregate (mean over neurons with FEV >= threshold), whereas
  sensorium returns only the neurons above threshold.

NaN handling, as in the reference: ``corr`` adds ``eps`` to the standard deviations, so a constant
neuron correlates 0, not NaN. ``get_correlations`` and ``get_signal_correlations`` set any remaining NaN
to 0 (with a warning). The jackknife oracle sets its NaN leave-one-out means (images shown once) to 0.
The FEV and the conservative oracle of a constant neuron are 0/0 = NaN and its FEVE is -inf (or NaN);
such neurons drop out of the thresholded FEVE mean because NaN >= threshold is false.
"""
import contextlib
import logging

import numpy as np
import torch

from .devices import move_to_device

logger = logging.getLogger(__name__)


# ---- primitives (neuralpredictors measures.np_functions) ------------------------------------------


def corr(y1, y2, axis=-1, eps=1e-8, **kwargs):
    """Pearson correlation along ``axis``; population std plus ``eps`` in the denominator.

    Extra keyword arguments go to the final mean (e.g. ``keepdims``).
    """
    y1, y2 = np.asarray(y1), np.asarray(y2)
    z1 = (y1 - y1.mean(axis=axis, keepdims=True)) / (y1.std(axis=axis, keepdims=True) + eps)
    z2 = (y2 - y2.mean(axis=axis, keepdims=True)) / (y2.std(axis=axis, keepdims=True) + eps)
    return (z1 * z2).mean(axis=axis, **kwargs)


def fev(targets, predictions, return_exp_var=False):
    """Fraction of explainable variance explained (FEVE) per neuron.

    Args:
        targets: one ``(repeats, neurons)`` array of responses per image.
        predictions: model predictions in the same layout.
        return_exp_var: also return the fraction of explainable variance (FEV), as ``[fev, feve]``.
    """
    stacked_targets = np.vstack(targets)
    noise_var = np.mean([np.var(t, axis=0, ddof=1) for t in targets], axis=0)
    total_var = np.var(stacked_targets, axis=0, ddof=1)
    pred_var = np.mean((stacked_targets - np.vstack(predictions)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        explainable = (total_var - noise_var) / total_var
        explained = 1 - (pred_var - noise_var) / (total_var - noise_var)
    return [explainable, explained] if return_exp_var else explained


def oracle_corr_jackknife(repeated_outputs):
    """Leave-one-out oracle: correlation of each trial with the mean of the other repeats of its image."""
    oracles = []
    for outputs in repeated_outputs:
        with np.errstate(divide="ignore", invalid="ignore"):
            oracle = (outputs.sum(axis=0, keepdims=True) - outputs) / (outputs.shape[0] - 1)
        if np.isnan(oracle).any():
            logger.warning("%.1f%% NaNs in the oracle (images shown once); set to 0", 100 * np.isnan(oracle).mean())
            oracle[np.isnan(oracle)] = 0
        oracles.append(oracle)
    return corr(np.vstack(repeated_outputs), np.vstack(oracles), axis=0)


def oracle_corr_conservative(repeated_outputs):
    """Conservative oracle from the variance of image means and the mean within-image variance."""
    noise_var = np.mean([outputs.var(axis=0) for outputs in repeated_outputs], axis=0)
    signal_var = np.var([outputs.mean(axis=0) for outputs in repeated_outputs], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return signal_var / np.sqrt(signal_var * (signal_var + noise_var))


def fraction_oracle(correlations, oracles):
    """Least-squares slope through the origin of test correlation against oracle (Lurz et al. 2021)."""
    oracles, correlations = np.asarray(oracles, dtype=float), np.asarray(correlations, dtype=float)
    if oracles.shape != correlations.shape or oracles.ndim != 1:
        raise ValueError(
            f"fraction_oracle needs two per-neuron vectors of equal length, got {correlations.shape} and {oracles.shape}"
        )
    slope, *_ = np.linalg.lstsq(oracles[:, None], correlations, rcond=None)
    return float(slope[0])


def repeat_means(groups):
    """``(images, neurons)``: the mean over repeats of each ``(repeats, neurons)`` group."""
    return np.stack([group.mean(axis=0) for group in groups])


def thresholded_mean(feve, keep, fev_threshold):
    """Mean FEVE over the neurons in ``keep`` (FEV >= ``fev_threshold``); NaN, with a warning, when there are none."""
    if not keep.any():
        logger.warning("no neuron has FEV >= %s; the mean FEVE is undefined (NaN)", fev_threshold)
        return float("nan")
    return float(feve[keep].mean())


def split_by_image(image_ids, *arrays):
    """Group the rows of each array by image id, in ``np.unique`` order; returns one list per array."""
    image_ids = np.asarray(image_ids)
    unique_ids, group = np.unique(image_ids, return_inverse=True)
    order = np.argsort(group, kind="stable")
    bounds = np.cumsum(np.bincount(group))[:-1]
    return [np.split(np.asarray(a)[order], bounds) for a in arrays]


# ---- model level (sensorium utility/scores.py) ----------------------------------------------------


@contextlib.contextmanager
def eval_mode(model):
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_predictions(model, dataloader, data_key, device="cpu"):
    """Responses and eval-mode predictions over a loader, in sampler order, as float64 arrays.

    Returns:
        (targets, outputs), each ``(trials, neurons)``; targets are the loader's (normalised) responses.
    """
    targets, outputs = [], []
    with torch.no_grad(), eval_mode(model):
        for batch in dataloader:
            fields = move_to_device(batch._asdict(), device)
            images = fields.pop("images")
            outputs.append(model(images, data_key=data_key, **fields).cpu())
            targets.append(batch.responses)
    return torch.cat(targets).double().numpy(), torch.cat(outputs).double().numpy()


def _tier(dataloaders, tier):
    """``dataloaders[tier]`` when a tier is named, else the ``{data_key: loader}`` dict itself."""
    if tier is None:
        return dataloaders
    if tier not in dataloaders:
        raise KeyError(f"no tier {tier!r} in the dataloaders (tiers: {sorted(dataloaders)})")
    return dataloaders[tier]


def image_ids(loader):
    """``frame_image_id`` of each trial the loader yields, in sampler order."""
    try:
        ids = loader.dataset.trial_info.frame_image_id
        indices = loader.sampler.indices
    except AttributeError as error:
        raise ValueError(
            "repeats are grouped by loader.dataset.trial_info.frame_image_id[loader.sampler.indices], "
            f"which this loader lacks ({error})"
        ) from None
    return np.asarray(ids)[np.asarray(indices)]


def nan_to_zero(values, what):
    """``values`` with NaN set to 0, warning how many there were (``what`` names them)."""
    if np.isnan(values).any():
        logger.warning("%d NaN %s set to 0", np.isnan(values).sum(), what)
        values = np.where(np.isnan(values), 0.0, values)
    return values


def _combine(per_key, as_dict, per_neuron):
    """Per-neuron arrays per data key -> dict, concatenated array, or mean as float."""
    if as_dict:
        return per_key if per_neuron else {k: float(np.mean(v)) for k, v in per_key.items()}
    joined = np.hstack(list(per_key.values()))
    return joined if per_neuron else float(np.mean(joined))


def get_correlations(model, dataloaders, tier=None, device="cpu", as_dict=False, per_neuron=True):
    """Single-trial correlation per neuron between responses and predictions (NaN -> 0)."""
    per_key = {}
    for data_key, loader in _tier(dataloaders, tier).items():
        targets, outputs = model_predictions(model, loader, data_key, device)
        per_key[data_key] = nan_to_zero(corr(targets, outputs, axis=0), f"correlations for data key {data_key}")
    return _combine(per_key, as_dict, per_neuron)


def _repeats(model, loader, data_key, device):
    targets, outputs = model_predictions(model, loader, data_key, device)
    return split_by_image(image_ids(loader), targets, outputs)


def get_signal_correlations(model, dataloaders, tier="test", device="cpu", as_dict=False, per_neuron=True):
    """Correlation to average: per-neuron correlation of repeat-averaged responses and predictions."""
    per_key = {}
    for data_key, loader in _tier(dataloaders, tier).items():
        targets, outputs = _repeats(model, loader, data_key, device)
        per_key[data_key] = nan_to_zero(corr(repeat_means(targets), repeat_means(outputs), axis=0),
                                        f"correlations for data key {data_key}")
    return _combine(per_key, as_dict, per_neuron)


def get_fev(model, dataloaders, tier="test", device="cpu", as_dict=False, per_neuron=True, fev_threshold=0.15):
    """FEVE per neuron (all neurons), or its mean over the neurons whose FEV >= ``fev_threshold``."""
    feve, keep = {}, {}
    for data_key, loader in _tier(dataloaders, tier).items():
        targets, outputs = _repeats(model, loader, data_key, device)
        explainable, feve[data_key] = fev(targets, outputs, return_exp_var=True)
        keep[data_key] = explainable >= fev_threshold
    if per_neuron:
        return feve if as_dict else np.hstack(list(feve.values()))
    if as_dict:
        return {k: thresholded_mean(feve[k], keep[k], fev_threshold) for k in feve}
    return thresholded_mean(np.hstack(list(feve.values())), np.hstack(list(keep.values())), fev_threshold)


def get_oracles(dataloaders, tier="test", as_dict=False, per_neuron=True, conservative=False):
    """Oracle correlation per neuron from the repeats of each image (jackknife, or the conservative one)."""
    oracle = oracle_corr_conservative if conservative else oracle_corr_jackknife
    per_key = {}
    for data_key, loader in _tier(dataloaders, tier).items():
        responses = torch.cat([batch.responses for batch in loader]).double().numpy()
        (repeated,) = split_by_image(image_ids(loader), responses)
        per_key[data_key] = oracle(repeated)
    return _combine(per_key, as_dict, per_neuron)


def get_fraction_oracles(model, dataloaders, tier="test", device="cpu", conservative=False):
    """Fraction of oracle of a model: ``fraction_oracle`` of its single-trial test correlations."""
    return fraction_oracle(
        get_correlations(model, dataloaders, tier=tier, device=device),
        get_oracles(dataloaders, tier=tier, conservative=conservative),
    )
