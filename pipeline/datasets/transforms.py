"""The reference transform chain of sensorium's ``static_loader``, applied to whole batches at once.

The reference (spec §1.3.3) runs ``NeuroNormalizer`` → ``AddBehaviorAsChannels`` →
``AddPupilCenterAsChannels`` → ``ScaleInputs`` → ``Subsample`` → ``ToTensor`` per item. We compute
the same in float64 numpy, cast to float32 at the end, in a cheaper order: rescale before
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
    return _mirror(floor.astype(np.int64), n_in), _mirror(floor.astype(np.int64) + 1, n_in), coords - floor


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Rescale the last two axes of ``images`` exactly as skimage's ``rescale`` (see ``rescale_taps``).

    The four taps of each output pixel are gathered in the input's dtype first (cheap for uint8) and
    blended in float64 on the smaller output, rows first. An identity rescale (e.g. scale=1) returns
    ``images`` unchanged. Computed in numpy: these small element-wise steps are slower in torch's
    multi-threaded kernels when the training process keeps the cores busy.
    """
    (rows_lo, rows_hi, row_w), (cols_lo, cols_hi, col_w) = (rescale_taps(n, scale) for n in images.shape[-2:])
    if not (row_w.any() or col_w.any()) and (len(rows_lo), len(cols_lo)) == images.shape[-2:]:
        return images
    row_w = row_w.reshape(-1, 1)
    rows = [np.take(images.numpy(), index, axis=-2) for index in (rows_lo, rows_hi)]
    lo, hi = ([np.take(row, index, axis=-1) for row in rows] for index in (cols_lo, cols_hi))
    lo, hi = (top * (1 - row_w) + bottom * row_w for top, bottom in (lo, hi))
    return torch.from_numpy(lo * (1 - col_w) + hi * col_w)


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
                self.normalisation[field] = np.asarray(offset, dtype=np.float64), np.asarray(spread, dtype=np.float64)

    @functools.cached_property
    def uint8_images(self):
        """float32 value of each uint8 pixel after normalisation, or None for per-pixel statistics.

        A table lookup gives the same float32 numbers as the float64 arithmetic, ~10x faster.
        """
        offset, spread = self.normalisation.get("images", (0.0, 1.0))
        if np.size(offset) > 1 or np.size(spread) > 1:
            return None
        return ((np.arange(256, dtype=np.float64) - offset) / spread).astype(np.float32).reshape(-1)

    def __call__(self, raw: dict) -> dict:
        """Map ``{field: raw batch array}`` to ``{field: float32 tensor}``.

        Computed in numpy (float64, then float32), one thread: on batch-sized arrays this is faster
        than torch's multi-threaded kernels when the training step keeps the cores busy.
        """
        out = {field: np.asarray(raw[field]) for field in self.fields}
        out["responses"] = out["responses"][:, self.neuron_idx]
        if self.scale is not None:
            out["images"] = rescale(torch.from_numpy(out["images"]), self.scale).numpy()  # float64 unless identity
        looked_up = "images" in out and out["images"].dtype == np.uint8 and self.uint8_images is not None
        for field, value in out.items():
            if looked_up and field == "images":
                out[field] = self.uint8_images[value]
                continue
            value = value.astype(np.float64, copy=False)
            if field in self.normalisation:
                offset, spread = self.normalisation[field]
                value = (value - offset) / spread
            out[field] = value.astype(np.float32)
        planes = [out["behavior"]] if self.behavior_channels else []
        planes += [out["pupil_center"]] if self.eye_channels else []
        if planes:
            images = out["images"]
            extra = np.concatenate(planes, axis=1)[:, :, None, None]
            out["images"] = np.concatenate([images, np.broadcast_to(extra, (*extra.shape[:2], *images.shape[2:]))], axis=1)
        return {field: torch.from_numpy(np.ascontiguousarray(value)) for field, value in out.items()}
