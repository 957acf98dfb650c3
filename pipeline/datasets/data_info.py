"""What a model function needs from the data, so that a trained model opens without its data files.

``data_info(dataloaders)`` returns ``{data_key: info}`` for every data key of the training tier, with

- ``fields``: the batch fields in order (the first two are the model's input and target);
- ``dims``: the shape of one training batch of each field (nnfabrik's ``get_dims_for_loader_dict``);
- ``n_neurons``: the number of neurons;
- ``neurons``: the dataset's per-neuron arrays (``unit_ids``, ``cell_motor_coordinates``,
  ``multi_match_id``, ...), ``{}`` when its dataset has none;
- ``mean_responses``: each neuron's mean training response as the loader returns it (float64);
- ``trials``: per tier, ``n`` trials and, when the dataset has them, their ``frame_image_id`` in the
  loader's order;
- ``normalisation``: ``{field: (offset, spread)}``, the loader's ``(x - offset) / spread``, ``{}``
  when unknown;
- ``true_rf_centers``: for a synthetic dataset with its ground truth beside it, the neurons' true RF
  centres (N, 2) in the stimulus grid (what the dashboard compares the learned positions with); else None.

Model functions take it in place of the dataloaders (``model_fn(None, seed, data_info=...)``).
"""
import numpy as np
import torch

from ..utility import ground_truth


def dims_per_data_key(loaders):
    """Shape of every batch field, per data key, from one batch of each loader (as nnfabrik does)."""
    return {key: {name: tuple(value.shape) for name, value in next(iter(loader))._asdict().items()}
            for key, loader in loaders.items()}


def data_info(dataloaders) -> dict:
    """``{data_key: info}`` of ``{tier: {data_key: DataLoader}}`` (see the module docstring).

    Reads every training batch once, with the torch RNG forked and seeded, so the result does not
    depend on the shuffle and the caller's random streams are left as they were.
    """
    if "train" not in dataloaders or not dataloaders["train"]:
        raise ValueError(f"data_info needs a 'train' tier with at least one data key; got tiers {list(dataloaders)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dims = dims_per_data_key(dataloaders["train"])
        return {key: _describe(key, dims[key], dataloaders) for key in dataloaders["train"]}


def _describe(key, dims, dataloaders) -> dict:
    loader = dataloaders["train"][key]
    fields = tuple(dims)
    dataset = loader.dataset
    return {
        "fields": fields,
        "dims": dims,
        "n_neurons": dims[fields[1]][1],
        "neurons": _arrays(getattr(dataset, "neurons", None)),
        "mean_responses": _mean_responses(loader, fields[1]),
        "trials": {tier: _trials(loaders[key]) for tier, loaders in dataloaders.items() if key in loaders},
        "normalisation": {field: tuple(pair) for field, pair in getattr(dataset, "normalisation", {}).items()},
        "true_rf_centers": ground_truth.true_rf_centers(loader),
    }


def _arrays(neurons) -> dict:
    """A dataset's per-neuron arrays (a dict like ours or a namespace like neuralpredictors') as a plain dict."""
    if neurons is None:
        return {}
    items = neurons.items() if isinstance(neurons, dict) else vars(neurons).items()
    return {name: np.asarray(value) for name, value in items}


def _mean_responses(loader, target) -> np.ndarray:
    total, count = 0.0, 0
    for batch in loader:
        responses = getattr(batch, target).double()
        total = total + responses.sum(0)
        count += len(responses)
    return (total / count).numpy()


def _trials(loader) -> dict:
    """Number of trials of one tier's loader and, when its dataset has them, their image ids in loader order."""
    indices = getattr(loader.sampler, "indices", None)
    image_ids = getattr(getattr(loader.dataset, "trial_info", None), "frame_image_id", None)
    trials = {"n": len(indices) if indices is not None else len(loader.dataset)}
    if indices is not None and image_ids is not None:
        trials["frame_image_id"] = np.asarray(image_ids)[np.asarray(indices)]
    return trials
