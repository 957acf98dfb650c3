"""The reference transform chain of sensorium's ``static_loader``, applied to whole batches at once.

The reference (spec §1.3.3) runs ``NeuroNormalizer`` → ``AddBehaviorAsChannels`` →
``AddPupilCenterAsChannels`` → ``ScaleInputs`` → ``Subsample`` → ``ToTensor`` per item. We compute
the same in float64 torch ops, cast to float32 at the end, in a cheaper order: rescale before
normalising (the rescale is linear with rows summing to one, so it commutes with ``(x - m) / s``),
select neurons before normalising them, and append the constant behaviour / eye planes after
rescaling (rescaling leaves constant planes unchanged). The results differ from the reference only
by float64 rounding, far below float32 resolution.
"""
import functools
import logging

import numpy as np
import torch

from .filetree import DatasetFormatError, FileTree

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def rescale_taps(n_in: int, scale: float):
    """Along one axis, ``skimage.transform.rescale``'s two source indices and weight per output pixel.

    skimage (order 1, ``mode="reflect"``, no anti-aliasing) calls ``scipy.ndimage.zoom`` with
    ``grid_mode=True``: output pixel o samples the input at ``(o + 0.5) * n_in / n_out - 0.5``
    (bilinear interpolation with ``align_corners=False``), and samples outside the image are mirrored
    about the edge pixels (``… x2 x1 | x0 x1 …``). For downscaling, this equals
    ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)``; for upscaling the edge
    rows differ from torch, which clamps instead of mirroring, so we do it ourselves.

    Returns:
        (lower, upper, weight): output o = (1 - weight[o]) * x[lower[o]] + weight[o] * x[upper[o]].
    """
    n_out = max(int(np.round(scale * n_in)), 1)
    coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    floor = np.floor(coords)
    return (torch.from_numpy(_mirror(floor.astype(np.int64), n_in)),
            torch.from_numpy(_mirror(floor.astype(np.int64) + 1, n_in)), torch.from_numpy(coords - floor))


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Rescale the last two axes of ``images`` exactly as skimage's ``rescale`` (see ``rescale_taps``)."""
    for axis in (-2, -1):
        lower, upper, weight = rescale_taps(images.shape[axis], scale)
        if len(lower) == images.shape[axis] and not weight.any():  # identity, e.g. scale=1
            continue
        weight = weight.reshape(-1, 1) if axis == -2 else weight
        images = images.index_select(axis, lower) * (1 - weight) + images.index_select(axis, upper) * weight
    return images


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Map indices outside [0, n) back inside by mirroring about the edge pixels (ndimage "mirror")."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * (n - 1)
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


class BatchTransform:
    """Rescale, normalise, add channels and select neurons for a batch of raw arrays.

    Args:
        tree: the file tree whose ``meta/statistics/*/all`` supply the normalisation.
        fields: batch field names, in order.
        normalize: apply ``NeuroNormalizer`` (spec §1.3.4).
        exclude: field names ``NeuroNormalizer`` leaves untouched.
        inputs_mean, inputs_std: replace the image statistics. As in the reference, ``inputs_std`` is
            only used when ``inputs_mean`` is given.
        behavior_channels, eye_channels: append behaviour / pupil-centre planes to the images.
        scale: image rescaling factor (None: none).
        neuron_idx: response columns to keep, in this order.
    """

    def __init__(self, tree: FileTree, fields, *, normalize=True, exclude=None, inputs_mean=None,
                 inputs_std=None, behavior_channels=False, eye_channels=False, scale=None, neuron_idx=None):
        self.fields = tuple(fields)
        self.behavior_channels = behavior_channels
        self.eye_channels = eye_channels
        self.scale = scale
        self.neuron_idx = np.asarray(neuron_idx if neuron_idx is not None else np.arange(tree.n_neurons))
        self.normalisation = {}
        if normalize:
            self._set_normalisation(tree, [exclude] if isinstance(exclude, str) else list(exclude or []),
                                    inputs_mean, inputs_std)

    def _set_normalisation(self, tree, exclude, inputs_mean, inputs_std):
        """Per field, the batch becomes ``(x - offset) / spread`` (the reference's NeuroNormalizer)."""
        if inputs_mean is None:
            if inputs_std is not None:
                logger.warning("inputs_std is ignored without inputs_mean (as in the reference NeuroNormalizer)")
            inputs_mean, inputs_std = tree.stat("images", "mean"), tree.stat("images", "std")
        elif inputs_std is None:
            raise ValueError("inputs_mean was given without inputs_std; give both or neither")
        norm = {"images": (inputs_mean, np.float64(inputs_std))}
        std = tree.stat("responses", "std")
        threshold = 0.01 * std.mean()
        norm["responses"] = (0.0, np.where(std > threshold, std, threshold)[self.neuron_idx])
        if "pupil_center" in self.fields:
            norm["pupil_center"] = (tree.stat("pupil_center", "mean"), tree.stat("pupil_center", "std"))
        if "behavior" in self.fields:
            norm["behavior"] = (0.0, tree.stat("behavior", "std"))
        trial_idx = np.arange(tree.n_trials)
        norm["trial_idx"] = (trial_idx.mean(), trial_idx.std())
        for field, (offset, spread) in norm.items():
            if field in self.fields and field not in exclude:
                if not np.all(spread > 0):
                    raise DatasetFormatError(f"{tree.path}/meta/statistics/{field}/all/std.npy has zeros: "
                                             f"cannot normalise {field}")
                self.normalisation[field] = torch.as_tensor(offset, dtype=torch.float64), torch.as_tensor(spread)

    def __call__(self, raw: dict) -> dict:
        """Map ``{field: raw batch array}`` to ``{field: float32 tensor}``."""
        out = {field: torch.from_numpy(np.asarray(raw[field])) for field in self.fields}
        out["responses"] = out["responses"][:, self.neuron_idx]
        if self.scale is not None:
            out["images"] = rescale(out["images"], self.scale)  # float64 from here (weights are float64)
        out = {field: value.double() for field, value in out.items()}
        for field, (offset, spread) in self.normalisation.items():
            out[field] = (out[field] - offset) / spread
        out = {field: value.float() for field, value in out.items()}
        planes = [out["behavior"]] if self.behavior_channels else []
        planes += [out["pupil_center"]] if self.eye_channels else []
        if planes:
            images = out["images"]
            extra = torch.cat(planes, dim=1)[:, :, None, None].expand(-1, -1, *images.shape[2:])
            out["images"] = torch.cat([images, extra], dim=1)
        return {field: value.contiguous() for field, value in out.items()}
