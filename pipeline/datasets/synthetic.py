"""A simulated mouse-V1 recording in the SENSORIUM static format, with its ground truth.

The model, per neuron n and trial t:

- cortical position (x, y, z) in µm; a smooth retinotopic map from (x, y) to the receptive-field (RF)
  centre plus scatter;
- a Gabor RF (orientation, spatial frequency, phase, size on the scale of mouse V1: a few cycles per
  screen width, envelope σ ≈ 4-15 % of the width), read out as a simple cell (linear, even filter)
  or a complex cell (energy of a quadrature pair);
- the eye position shifts every RF by ``shift_t = (pupil_center_t - eye_shift_center) @ eye_shift_matrix.T``
  (grid units);
- ``rate = amplitude_n · gain_n · exp(κ_n·running_t + λ_n·pupil_t) · softplus(β(z_tn − θ_n))/β``, with
  ``z`` the drive standardised per neuron;
- response = amplitude_n · Poisson(rate / amplitude_n · G), G ~ Gamma(k, 1/k) (overdispersed).

Stimuli are 1/f^(2α) random-phase images (α ≈ 1) with varied contrast and luminance, whole numbers
0-255 at the declared resolution, stored as uint8 (or, with ``image_dtype``, as floats of the same
values). Neuron responses are computed on a block-averaged copy (≈36×64), which is exact enough for
RFs this smooth and keeps generation fast.

Coordinates: ``rf_centers`` are in the stimulus' grid coordinates, ``[-1, 1]`` from the first to the
last pixel centre (``align_corners=True``), column 0 = x (width), column 1 = y (height). The readout of
a core without input padding sees a cropped image; ``to_core_grid`` converts.
"""
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

PRESETS = {
    "tiny": dict(n_neurons=40, n_train=60, n_validation=20, n_test_images=6, n_repeats=4, image_size=(36, 64)),
    "default": dict(n_neurons=500, n_train=1500, n_validation=200, n_test_images=50, n_repeats=10,
                    image_size=(144, 256)),
    "realistic": dict(n_neurons=5000, n_train=5000, n_validation=500, n_test_images=100, n_repeats=10,
                      image_size=(144, 256)),
    # small and strong enough for a CPU model to learn in seconds (the "it learns the truth" test)
    "learnable": dict(n_neurons=200, n_train=1000, n_validation=100, n_test_images=10, n_repeats=5,
                      image_size=(18, 32), spike_scale=5.0, overdispersion=20.0),
}

_FIELD_SIZE_UM = 800.0
_SIM_HEIGHT = 36  # neuron responses are computed at about this height


def ground_truth_path(dataset_path) -> Path:
    """Where the ground truth of a synthetic dataset lives: beside the folder, not inside it."""
    path = Path(dataset_path)
    return path.with_name(path.name.removesuffix(".zip") + ".ground_truth.npz")


def load_ground_truth(dataset_path) -> dict:
    """The ground truth saved by ``generate`` for ``dataset_path`` (folder or zip) as a dict of arrays.

    Keys: ``rates`` (n_trials, N) noiseless expected responses, raw units, file-index order;
    ``rf_centers`` (N, 2) at zero eye shift; ``eye_shift_matrix`` (2, 2) and ``eye_shift_center`` (2,);
    ``shifts`` (n_trials, 2); per-neuron ``complex_cell``, ``orientation``, ``spatial_frequency``
    (cycles per image width), ``phase``, ``sigma`` (fraction of image width), ``gain``, ``amplitude``;
    the behavioural gain's inputs: ``running`` and ``pupil`` (n_trials,) standardised, ``running_coef``
    and ``pupil_coef`` (N,) (see ``behaviour_gain``).
    """
    path = ground_truth_path(dataset_path)
    if not path.exists():
        raise FileNotFoundError(f"no ground truth at {path}: was {dataset_path} made by v1fabrik synth?")
    with np.load(path, allow_pickle=False) as data:
        return dict(data)


def to_core_grid(centers: np.ndarray, image_size, crop: int) -> np.ndarray:
    """Convert stimulus grid coordinates to those of a core output cropped by ``crop`` pixels per side."""
    size = np.array(image_size[::-1], dtype=float)  # (width, height), matching column order x, y
    pixels = (np.asarray(centers) + 1) / 2 * (size - 1) - crop
    return 2 * pixels / (size - 2 * crop - 1) - 1


def generate(path, *, n_neurons, n_train, n_validation, n_test_images, n_repeats, image_size=(144, 256),
             seed=0, animal_id=None, session=1, scan_idx=1, overdispersion=3.0, spike_scale=1.0,
             image_dtype="uint8", overwrite=False) -> Path:
    """Write a synthetic static dataset into folder ``path`` and its ground truth beside it.

    Args:
        path: the parent folder; the dataset folder is ``static<animal>-<session>-<scan>-Synthetic-s<seed>``.
        n_test_images, n_repeats: the test tier shows each of ``n_test_images`` images ``n_repeats`` times.
        image_size: (height, width) of the stored images.
        animal_id: defaults to ``90000 + seed % 10000``, so different seeds give different data keys.
        overdispersion: the Gamma shape k of the trial-to-trial gain noise (larger is closer to Poisson).
        spike_scale: multiplies every neuron's gain, hence its expected spike count (larger: less noise).
        image_dtype: the images' on-disk dtype, uint8 or a float type; the pixel values (and so the
            responses and statistics) are the same in every dtype.
        overwrite: replace an existing dataset of the same name.

    Returns:
        The dataset folder.
    """
    height, width = image_size
    if min(n_neurons, n_train, n_validation, n_test_images, n_repeats, height, width) < 1:
        raise ValueError("generate: neuron, trial, image and size counts must all be positive")
    if not (overdispersion > 0 and spike_scale > 0):
        raise ValueError(f"generate: overdispersion ({overdispersion}) and spike_scale ({spike_scale}) must be positive")
    image_dtype = np.dtype(image_dtype)
    if image_dtype != np.uint8 and not np.issubdtype(image_dtype, np.floating):
        raise ValueError(f"generate: image_dtype must be uint8 or a float type, not {image_dtype}")
    animal_id = 90000 + seed % 10000 if animal_id is None else animal_id
    out = Path(path) / f"static{animal_id}-{session}-{scan_idx}-Synthetic-s{seed}"
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    rng = np.random.default_rng(seed)

    neurons = _neurons(rng, n_neurons)
    neurons["gain"] *= spike_scale
    n_images = n_train + n_validation + n_test_images
    images = _images(rng, n_images, height, width)
    image_of_trial = np.concatenate([np.arange(n_train + n_validation),
                                     np.repeat(np.arange(n_train + n_validation, n_images), n_repeats)])
    tiers = np.array(["train"] * n_train + ["validation"] * n_validation + ["test"] * (n_test_images * n_repeats))
    chronology = rng.permutation(len(tiers))  # chronology[k]: when the k-th listed trial was shown
    behavior, pupil_center = _behavior(rng, len(tiers))
    behavior, pupil_center = behavior[chronology], pupil_center[chronology]
    eye_center = pupil_center.mean(axis=0)
    eye_matrix = np.array([[0.012, 0.002], [-0.001, 0.010]]) * rng.uniform(0.8, 1.2)
    shifts = (pupil_center - eye_center) @ eye_matrix.T
    drive = _drive(images, image_of_trial, shifts, neurons)
    standard = (behavior - behavior.mean(axis=0)) / behavior.std(axis=0)
    running, pupil = standard[:, 2], standard[:, 0]
    rates = _rates(drive, _behaviour_gain(running, pupil, neurons["running_coef"], neurons["pupil_coef"]), neurons)
    counts = rng.poisson(rates / neurons["amplitude"] * rng.gamma(overdispersion, 1 / overdispersion, rates.shape))
    responses = (counts * neurons["amplitude"]).astype(np.float32)

    file_order = rng.permutation(len(tiers))  # file index k holds listed trial file_order[k]
    trials = {
        "tiers": tiers[file_order],
        "frame_image_id": image_of_trial[file_order].astype(np.int64),
        "frame_image_class": np.full(len(tiers), "synthetic"),
        "trial_idx": chronology[file_order].astype(np.int64),
    }
    data = {
        "images": images[image_of_trial[file_order]][:, None].astype(image_dtype, copy=False),
        "responses": responses[file_order],
        "behavior": behavior[file_order].astype(np.float32),
        "pupil_center": pupil_center[file_order].astype(np.float32),
    }
    meta_neurons = {
        "unit_ids": np.arange(1, n_neurons + 1, dtype=np.int64),
        "animal_ids": np.full(n_neurons, animal_id, dtype=np.int64),
        "sessions": np.full(n_neurons, session, dtype=np.int64),
        "scan_idx": np.full(n_neurons, scan_idx, dtype=np.int64),
        "area": np.full(n_neurons, "V1"),
        "layer": np.full(n_neurons, "L2/3"),
        "cell_motor_coordinates": neurons["position"],
    }
    _write(out, data, trials, meta_neurons, overwrite)
    np.savez(ground_truth_path(out), rates=rates[file_order].astype(np.float32), shifts=shifts[file_order],
             rf_centers=neurons["center"], eye_shift_matrix=eye_matrix, eye_shift_center=eye_center,
             image_size=np.array(image_size), running=running[file_order], pupil=pupil[file_order],
             **{k: neurons[k] for k in ("complex_cell", "orientation", "spatial_frequency", "phase", "sigma",
                                        "gain", "amplitude", "running_coef", "pupil_coef")})
    logger.info("wrote synthetic dataset %s (%d neurons, %d trials)", out, n_neurons, len(tiers))
    return out


def _neurons(rng, n):
    """Per-neuron parameters: positions (µm), RF centres via a smooth retinotopic map, Gabor and gain."""
    position = np.column_stack([rng.uniform(0, _FIELD_SIZE_UM, (n, 2)), rng.uniform(100, 350, n)])
    u = position[:, :2] / _FIELD_SIZE_UM - 0.5
    angle = rng.uniform(-0.3, 0.3)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    smooth = np.column_stack([1.3 * u[:, 0] + 0.3 * u[:, 0] * u[:, 1], -1.1 * u[:, 1] + 0.3 * u[:, 0] ** 2])
    center = np.clip(smooth @ rotation.T + rng.normal(0, 0.05, (n, 2)), -0.85, 0.85)
    sf = np.exp(rng.uniform(np.log(3.0), np.log(8.0), n))
    return {
        "position": position,
        "center": center,
        "complex_cell": rng.random(n) < 0.5,
        "orientation": rng.uniform(0, np.pi, n),
        "spatial_frequency": sf,
        "phase": rng.uniform(0, 2 * np.pi, n),
        "sigma": rng.uniform(0.3, 0.5, n) / sf,
        "threshold": rng.uniform(0.0, 1.0, n),
        "gain": rng.lognormal(0.3, 0.4, n),
        "amplitude": rng.lognormal(0.0, 0.5, n),
        "running_coef": rng.normal(0.2, 0.15, n),
        "pupil_coef": rng.normal(0.1, 0.15, n),
    }


def _images(rng, n, height, width, chunk=256):
    """``n`` uint8 images with a 1/f^(2α) power spectrum (α ~ U(0.9, 1.2)), varied contrast and mean."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    out = np.empty((n, height, width), dtype=np.uint8)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        alpha = rng.uniform(0.9, 1.2, (m, 1, 1))
        spectrum = np.fft.rfft2(rng.standard_normal((m, height, width))) / radius ** alpha
        spectrum[:, 0, 0] = 0
        img = np.fft.irfft2(spectrum, s=(height, width))
        img /= img.std(axis=(1, 2), keepdims=True)
        contrast = rng.lognormal(np.log(40), 0.35, (m, 1, 1))
        luminance = rng.uniform(90, 165, (m, 1, 1))
        out[start:start + m] = np.clip(np.rint(luminance + contrast * img), 0, 255)
    return out


def _behavior(rng, n):
    """Chronological behaviour (pupil dilation, its derivative, running speed) and pupil centre."""
    arousal = np.empty(n)
    arousal[0] = rng.normal()
    for t in range(1, n):
        arousal[t] = 0.95 * arousal[t - 1] + np.sqrt(1 - 0.95 ** 2) * rng.normal()
    pupil = np.clip(25 + 6 * arousal + 1.5 * rng.normal(size=n), 5, None)
    dilation = np.diff(pupil, prepend=pupil[0])
    running = np.where(arousal + rng.normal(0, 0.5, n) > 0.8, np.abs(rng.normal(8, 4, n)), np.abs(rng.normal(0, 0.3, n)))
    jitter = rng.normal(0, 1, (n, 2)) * [6.0, 4.0]
    pupil_center = np.array([310.0, 240.0]) + jitter + 0.3 * running[:, None] * [1.0, -0.5]
    return np.column_stack([pupil, dilation, running]), pupil_center


def _sim_grid(height, width):
    """Block-averaging factor and the stimulus grid coordinates of the block centres (x, y)."""
    factor = max(1, height // _SIM_HEIGHT)
    h, w = height // factor, width // factor
    centre = lambda m, size: (2 * (factor * np.arange(m) + (factor - 1) / 2) / (size - 1) - 1)  # noqa: E731
    return factor, centre(w, width), centre(h, height)


def _drive(images, image_of_trial, shifts, neurons):
    """Filter outputs (n_trials, N): images shifted by −shift (same as shifting every RF) through the Gabors."""
    n_images, height, width = images.shape
    factor, gx, gy = _sim_grid(height, width)
    h, w = len(gy), len(gx)
    small = images[:, :h * factor, :w * factor].reshape(n_images, h, factor, w, factor).mean(axis=(2, 4))
    small = torch.from_numpy(((small - 127.5) / 127.5).astype(np.float32))[:, None]
    # sample image at (g + shift), in the block grid's own align_corners=True coordinates
    to_own = lambda g, c: (g - c[0]) / (c[-1] - c[0]) * 2 - 1  # noqa: E731
    base = torch.stack(torch.meshgrid(torch.tensor(gy), torch.tensor(gx), indexing="ij")[::-1], dim=-1)
    even, odd = _gabors(neurons, gx, gy, width / height)
    filters = torch.from_numpy(np.concatenate([even, odd], axis=1))
    n = even.shape[1]
    drive = np.empty((len(image_of_trial), n), dtype=np.float64)
    for start in range(0, len(image_of_trial), 512):
        stop = min(start + 512, len(image_of_trial))
        shift = torch.from_numpy(shifts[start:stop])[:, None, None, :]
        grid = base[None] + shift
        grid = torch.stack([to_own(grid[..., 0], gx), to_own(grid[..., 1], gy)], dim=-1).float()
        moved = F.grid_sample(small[image_of_trial[start:stop]], grid, mode="bilinear", padding_mode="border",
                              align_corners=True)
        out = (moved.reshape(stop - start, -1) @ filters).double().numpy()
        simple, quad = out[:, :n], out[:, n:]
        drive[start:stop] = np.where(neurons["complex_cell"], np.hypot(simple, quad), simple)
    return drive


def _gabors(neurons, gx, gy, aspect, chunk=1024):
    """Unit-norm even/odd Gabor filters (pixels, N), float32; lengths in fractions of image width."""
    n = len(neurons["center"])
    even, odd = (np.empty((len(gx) * len(gy), n), dtype=np.float32) for _ in range(2))
    for start in range(0, n, chunk):
        part = slice(start, min(start + chunk, n))
        param = lambda name: neurons[name][part, None, None]  # noqa: E731
        xx = ((gx[None, :] - neurons["center"][part, :1]) / 2)[:, None, :]
        yy = ((gy[None, :] - neurons["center"][part, 1:]) / 2 / aspect)[:, :, None]
        along = xx * np.cos(param("orientation")) + yy * np.sin(param("orientation"))
        envelope = np.exp(-(xx ** 2 + yy ** 2) / (2 * param("sigma") ** 2))
        carrier = 2 * np.pi * param("spatial_frequency") * along + param("phase")
        for target, wave in ((even, np.cos(carrier)), (odd, np.sin(carrier))):
            f = (envelope * wave).reshape(len(xx), -1)
            target[:, part] = (f / np.linalg.norm(f, axis=1, keepdims=True)).T
    return even, odd


def _behaviour_gain(running, pupil, running_coef, pupil_coef):
    """(n_trials, N) gain exp(κ·running + λ·pupil), clipped to [e⁻², e²]; running and pupil standardised."""
    return np.exp(np.clip(np.outer(running, running_coef) + np.outer(pupil, pupil_coef), -2, 2))


def behaviour_gain(truth: dict, trials=slice(None), neurons=slice(None)) -> np.ndarray:
    """The behavioural gain of ``truth``'s (from ``load_ground_truth``) trials x neurons, file order (default: all).

    ``truth["rates"] / behaviour_gain(truth)`` is the most a model without behaviour input (such as
    the seed notebook config) can predict: the stimulus seen through the eye position. (Running also
    moves the eye a little, so a model that read gain off the pupil centre could do slightly better.)
    """
    return _behaviour_gain(truth["running"][trials], truth["pupil"][trials],
                           truth["running_coef"][neurons], truth["pupil_coef"][neurons])


def _rates(drive, modulation, neurons):
    """Expected responses (raw units): output nonlinearity, per-neuron gain, behavioural gain ``modulation``."""
    z = (drive - drive.mean(axis=0)) / drive.std(axis=0)
    beta = 2.0
    tuned = np.logaddexp(0, beta * (z - neurons["threshold"])) / beta
    return neurons["amplitude"] * neurons["gain"] * modulation * tuned


def _write(out, data, trials, meta_neurons, overwrite):
    """Write the file tree into a temporary sibling folder, then move it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        for field, values in data.items():
            folder = tmp / "data" / field
            folder.mkdir(parents=True)
            for k, value in enumerate(values):
                np.save(folder / f"{k}.npy", value)
        for group, arrays in (("trials", trials), ("neurons", meta_neurons)):
            (tmp / "meta" / group).mkdir(parents=True)
            for name, value in arrays.items():
                np.save(tmp / "meta" / group / f"{name}.npy", value)
        train = trials["tiers"] == "train"
        for field, values in data.items():
            for subset in ("all", "stimulus_frame"):
                folder = tmp / "meta/statistics" / field / subset
                folder.mkdir(parents=True)
                for name, value in _statistics(field, values[train]).items():
                    np.save(folder / f"{name}.npy", value)
        (tmp / "config.json").write_text(json.dumps({"links": {}}))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
        if out.exists() and overwrite:
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _statistics(field, values):
    """mean/std/min/max/median over train trials: scalars for images (exact, via a histogram), else per column."""
    if field == "images":  # whole numbers 0-255 in every image dtype
        counts = np.bincount(values.astype(np.uint8, copy=False).ravel(), minlength=256).astype(np.float64)
        levels = np.arange(256, dtype=np.float64)
        mean = counts @ levels / counts.sum()
        total = int(counts.sum())
        ranked = np.searchsorted(np.cumsum(counts), [(total - 1) // 2 + 1, total // 2 + 1])  # sorted[r] for both middles
        median = ranked.mean()
        stats = {"mean": mean, "std": np.sqrt(counts @ (levels - mean) ** 2 / counts.sum()),
                 "min": float(np.flatnonzero(counts)[0]), "max": float(np.flatnonzero(counts)[-1]), "median": median}
        return {k: np.array(v, dtype=np.float64) for k, v in stats.items()}
    values = values.astype(np.float64)
    return {"mean": values.mean(0), "std": values.std(0), "min": values.min(0), "max": values.max(0),
            "median": np.median(values, 0)}
