"""How well a trained model recovered the ground truth of a synthetic dataset (``pipeline.datasets.synthetic``).

Used by the training benchmark, ``make demo`` and the "it learns the truth" test.
"""
import numpy as np
import torch

from ..datasets.synthetic import behaviour_gain, ground_truth_path, load_ground_truth, to_core_grid
from . import scores


def learned_rf_positions(model, data_key) -> np.ndarray:
    """Where the readout looks at the mean eye position: (N, 2) as (x=width, y=height) in the core output's grid.

    That is the readout's eval-mode mean position plus the shifter's shift for a normalised pupil
    centre of 0 (the mean): a shifter can absorb any constant offset of the positions, and the true
    RF centres are given at the mean eye position too.
    """
    with torch.no_grad(), scores.eval_mode(model):
        readout = model.readout[data_key]
        positions = readout.mu.clamp(-1, 1).reshape(-1, 2)
        if getattr(model, "shifter", None) is not None:
            first = model.shifter[data_key].mlp[0]
            positions = positions + model.shifter[data_key](first.weight.new_zeros(1, first.in_features))
        return positions.cpu().numpy()


def true_rf_positions(model, loader, truth: dict) -> np.ndarray:
    """The true RF centres (N, 2) of the loader's neurons, in the grid of ``model``'s core output.

    ``truth`` is the dataset's ``load_ground_truth``.
    """
    input_shape = next(iter(loader)).images.shape[1:]  # behaviour may add channels to the image
    return to_core_output_grid(model, input_shape, truth["rf_centers"][_neuron_rows(loader)])


def to_core_output_grid(model, input_shape, centers) -> np.ndarray:
    """``centers`` (N, 2, stimulus grid) in the grid of ``model``'s core output for inputs of shape
    ``(channels, height, width)``. The crop is measured: the core's output size against the input's
    (align_corners=True coordinates on both, as the readout's ``grid_sample``)."""
    channels, *image_shape = input_shape
    parameter = next(model.core.parameters())
    with torch.no_grad(), scores.eval_mode(model.core):
        core_shape = tuple(model.core(torch.zeros(1, channels, *image_shape, dtype=parameter.dtype,
                                                  device=parameter.device)).shape[-2:])
    crops = {(a - b) / 2 for a, b in zip(image_shape, core_shape)}
    if len(crops) != 1:
        raise ValueError(f"the core crops {tuple(image_shape)} to {core_shape} unevenly; cannot map RF centres onto it")
    return to_core_grid(centers, image_shape, crops.pop())


def true_rf_centers(loader):
    """The true RF centres (N, 2, stimulus grid) of the loader's neurons when its dataset is a synthetic one
    with its ground truth beside it; else None. Reads only the centres from the ground-truth file."""
    path = getattr(loader.dataset, "path", None)
    if path is None or not ground_truth_path(path).exists():
        return None
    with np.load(ground_truth_path(path), allow_pickle=False) as truth:
        return truth["rf_centers"][_neuron_rows(loader)]


def truth_scores(model, dataloaders, dataset_path, device="cpu") -> dict:
    """Test-tier scores of the model next to those of the noiseless ground-truth rates, and RF recovery.

    Returns a dict of floats: ``model_single_trial``/``truth_single_trial`` (mean per-neuron correlation
    with the single-trial responses), ``truth_single_trial_without_behaviour`` (the same for the rates
    without their behavioural gain: the ceiling of a model without behaviour input, such as the seed
    notebook config), ``model_to_average``/``truth_to_average`` (with the mean over
    repeats), ``rf_r_x``/``rf_r_y`` (Pearson r of learned and true RF positions per axis) and
    ``rf_median_error`` (median distance between them, in core-output grid units, [-1, 1] per axis).
    """
    if len(dataloaders["test"]) != 1:
        raise ValueError(f"truth_scores needs exactly one test data key, got {sorted(dataloaders['test'])}")
    (data_key, loader), = dataloaders["test"].items()
    truth = load_ground_truth(dataset_path)
    responses, predictions = scores.model_predictions(model, loader, data_key, device)
    rows, neurons = np.asarray(loader.sampler.indices), _neuron_rows(loader)
    rates = truth["rates"][rows][:, neurons]
    without_behaviour = rates / behaviour_gain(truth, rows, neurons)
    groups = scores.split_by_image(scores.image_ids(loader), responses, predictions, rates)
    means = [np.stack([trials.mean(0) for trials in group]) for group in groups]
    learned = learned_rf_positions(model, data_key)
    true = true_rf_positions(model, loader, truth)
    return {
        "model_single_trial": float(np.nanmean(scores.corr(responses, predictions, axis=0))),
        "truth_single_trial": float(np.nanmean(scores.corr(responses, rates, axis=0))),
        "truth_single_trial_without_behaviour": float(np.nanmean(scores.corr(responses, without_behaviour, axis=0))),
        "model_to_average": float(np.nanmean(scores.corr(means[0], means[1], axis=0))),
        "truth_to_average": float(np.nanmean(scores.corr(means[0], means[2], axis=0))),
        **{f"rf_{name}": value for name, value in rf_recovery(learned, true).items()},
    }


def rf_recovery(learned: np.ndarray, true: np.ndarray) -> dict:
    """How well learned RF positions (N, 2) match the true ones in the same grid: ``r_x``, ``r_y`` (Pearson r per
    axis) and ``median_error`` (median distance)."""
    return {"r_x": float(np.corrcoef(learned[:, 0], true[:, 0])[0, 1]),
            "r_y": float(np.corrcoef(learned[:, 1], true[:, 1])[0, 1]),
            "median_error": float(np.median(np.hypot(*(learned - true).T)))}


def _neuron_rows(loader) -> np.ndarray:
    """Row of each of the loader's neurons in the ground truth (unit ids are 1..N in file order)."""
    return np.asarray(loader.dataset.neurons.unit_ids) - 1
