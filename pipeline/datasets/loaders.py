"""``static_loaders``: sensorium's dataset function, same arguments, same batches, faster.

Differences from the reference, all deliberate (README "Datasets"):
- arrays are read once into memory and batches are transformed as a whole (``__getitems__``); images
  are rescaled and normalised once, as they are read, when the result takes no more memory than the
  raw images (float32/float64 images at scale ≤ 1; uint8 ones at scale ≤ 0.5);
- zips are extracted into a user cache, never next to the data; ``config.json`` is never written;
- batches are always CPU tensors (``cuda`` is ignored with a warning), picklable, so
  ``num_workers > 0`` works;
- a bare string ``exclude`` names one field (the reference matches it as a substring).
"""
import functools
import logging
import os
from collections import OrderedDict, namedtuple
from itertools import zip_longest

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler

from ..registry import register
from ..utility.seeding import set_random_seed
from ..validation import require_positive_ints
from .filetree import AttrDict, FileTree
from .transforms import BatchTransform, rescale

logger = logging.getLogger(__name__)

TIERS = ("train", "validation", "test", "final_test")


@functools.lru_cache(maxsize=None)
def data_point(fields: tuple) -> type:
    """The batch namedtuple class for ``fields``, named as in the reference; instances pickle by value."""
    name = "DefaultDataPoint" if fields == ("images", "responses") else "DataPoint"
    return type(name, (namedtuple(name, fields),), {"__slots__": (), "__reduce__": _reduce_point})


def _reduce_point(point):
    return _rebuild_point, (point._fields, tuple(point))


def _rebuild_point(fields, values):
    return data_point(fields)(*values)


def _batch_as_is(batch):
    """``collate_fn``: ``StaticDataset.__getitems__`` already returns a whole batch."""
    return batch


class SubsetSequentialSampler(torch.utils.data.Sampler):
    """Yields ``indices`` in the given order (neuralpredictors' sampler of the same name)."""

    def __init__(self, indices):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class StaticDataset(Dataset):
    """All trials of one file tree, every tier; the tiers' loaders differ only by sampler.

    Attributes:
        data_keys: the batch fields, in order.
        neurons: ``meta/neurons`` arrays restricted to (and ordered as) the selected response columns.
        trial_info: ``meta/trials`` arrays over all trials.
        statistics: ``meta/statistics`` as nested attribute dicts.
        store: ``{field: array over all trials}``, raw, except images read through ``image_reduce``
            (see ``FileTree.load``), which are then stored transformed.
        normalisation: ``{field: (offset, spread)}``, the ``(x - offset) / spread`` the batches get
            (whether on read or per batch); ``static_loader`` sets it.
    """

    def __init__(self, tree: FileTree, data_keys, transform: BatchTransform, memmap: bool = False,
                 image_reduce=None):
        self.path = tree.path
        self.data_keys = tuple(data_keys)
        self.transform = transform
        self.neurons = AttrDict({k: v[transform.neuron_idx] for k, v in tree.neurons.items()})
        self.trial_info = tree.trial_info
        self.statistics = tree.statistics
        self._len = tree.n_trials
        self.store = {
            key: tree.trial_info[key][:, None] if key in tree.trial_info
            else tree.load(key, memmap, reduce=image_reduce if key == "images" else None)
            for key in self.data_keys
        }

    def __len__(self):
        return self._len

    def __getitems__(self, indices):
        """One transformed batch (a namedtuple of CPU float32 tensors) for the file indices given."""
        indices = np.asarray(indices)
        tensors = self.transform({key: value[indices] for key, value in self.store.items()})
        return data_point(self.data_keys)(*(tensors[key] for key in self.data_keys))

    def __getitem__(self, index):
        batch = self.__getitems__([index])
        return type(batch)(*(value[0] for value in batch))

    def __repr__(self):
        return f"StaticDataset {self.path} (n={self._len} items)\n\t{', '.join(self.data_keys)}"


def data_key_for(path: str, neurons) -> str:
    """The data key sensorium derives from a dataset path (spec §1.3.6)."""
    if "preproc" in path:
        return path.split("static")[-1].split(".")[0].replace("preproc", "").replace("_nobehavior", "")
    for kind in ("ColorImageNet", "GrayImageNet"):
        if kind in path:
            return path.split("static")[-1].split(f"-{kind}")[0]
    return f"{neurons.animal_ids[0]}-{neurons.sessions[0]}-{neurons.scan_idx[0]}"


def _select_neurons(tree, areas, layers, neuron_ids, neuron_n, exclude_neuron_n, neuron_base_seed):
    """Response columns to keep, drawn exactly as the reference does (spec §1.3.2)."""
    if neuron_ids is not None and (neuron_n is not None or neuron_base_seed is not None or areas is not None
                                   or layers is not None or exclude_neuron_n):
        raise ValueError("neuron_ids cannot be combined with areas, layers, neuron_n or neuron_base_seed")
    if exclude_neuron_n and neuron_base_seed is None:
        raise ValueError("exclude_neuron_n needs neuron_base_seed")
    keep = np.ones(tree.n_neurons, dtype=bool)
    if areas is not None:
        keep &= np.isin(tree.neurons.area, areas)
    if layers is not None:
        keep &= np.isin(tree.neurons.layer, layers)
    idx = np.flatnonzero(keep)
    unit_ids = tree.neurons.unit_ids
    if neuron_n is not None:
        if exclude_neuron_n + neuron_n > len(unit_ids):
            raise ValueError(f"neuron_n={neuron_n} (+ exclude_neuron_n={exclude_neuron_n}) exceeds the "
                             f"{len(unit_ids)} neurons in {tree.path}")
        state = np.random.get_state()
        if neuron_base_seed is not None:
            np.random.seed(neuron_base_seed * neuron_n)
        neuron_ids = np.random.choice(unit_ids, size=exclude_neuron_n + neuron_n, replace=False)[exclude_neuron_n:]
        np.random.set_state(state)
    if neuron_ids is not None:
        missing = [u for u in neuron_ids if not np.any(unit_ids == u)]
        if missing:
            raise ValueError(f"neuron_ids {missing[:5]} are not in {tree.path}/meta/neurons/unit_ids.npy")
        idx = np.array([np.flatnonzero(unit_ids == u)[0] for u in neuron_ids])
    return idx


def _tier_indices(tree, tier, image_ids, image_n, image_base_seed):
    """``{tier: file indices}`` in the reference's order (spec §1.3.7)."""
    tiers = tree.trial_info.tiers
    unknown = sorted(set(np.unique(tiers).tolist()) - set(TIERS))
    if unknown:
        raise ValueError(f"{tree.path}/meta/trials/tiers.npy has unknown tiers {unknown}; known: {list(TIERS)}")
    present = [t for t in TIERS if t in tiers or t != "final_test"]
    if tier is not None and tier not in present:
        raise ValueError(f"tier {tier!r} is not in {tree.path}/meta/trials/tiers.npy; choose from {present}")
    if image_ids is not None and (image_n is not None or image_base_seed is not None):
        raise ValueError("image_ids cannot be combined with image_n or image_base_seed")
    out = OrderedDict()
    for name in [tier] if tier else present:
        subset = np.flatnonzero(tiers == name)
        if name == "train" and image_ids is not None:
            frame_ids = tree.trial_info.frame_image_id
            subset = np.array([np.flatnonzero(frame_ids == i)[0] for i in image_ids])
            if np.any(tiers[subset] != "train"):
                raise ValueError("image_ids contain validation or test images")
        elif name == "train" and image_n is not None:
            state = np.random.get_state()
            if image_base_seed is not None:
                np.random.seed(image_base_seed * image_n)
            subset = np.random.choice(np.flatnonzero(tiers == "train"), size=image_n, replace=False)
            np.random.set_state(state)
        out[name] = subset
    return out


def _images_on_read(tree: FileTree, transform: BatchTransform):
    """``transform``'s image steps as a ``FileTree.load`` reduce, if their float32 result is no larger
    than the raw images (float32/float64 images at scale ≤ 1, uint8 ones at scale ≤ 0.5); else None.

    Rescaling and normalising work image by image, so doing them once as the images are read gives
    the same batches bit for bit; they then cost once per job instead of once per epoch, and the
    raw images are never held whole.
    """
    reduce = functools.partial(_transform_images, scale=transform.scale,
                               normalisation=transform.normalisation.get("images"))
    shape, dtype = tree.layout("images")
    row = np.zeros((1, *shape), dtype)
    return reduce if reduce(row).nbytes <= row.nbytes else None


def _transform_images(images: np.ndarray, scale, normalisation) -> np.ndarray:
    """What ``BatchTransform`` does to images before adding channels: rescale, normalise, float32."""
    if scale is not None:
        images = rescale(torch.from_numpy(images), scale).numpy()
    values = images.astype(np.float64, copy=False)
    if normalisation is not None:
        offset, spread = normalisation
        values = (values - offset) / spread
    return values.astype(np.float32)


def static_loader(path, batch_size, *, areas=None, layers=None, tier=None, neuron_ids=None, neuron_n=None,
                  exclude_neuron_n=0, neuron_base_seed=None, image_ids=None, image_n=None, image_base_seed=None,
                  normalize=True, exclude=None, include_behavior=False, add_behavior_as_channels=True,
                  inputs_mean=None, inputs_std=None, scale=None, include_eye_position=None,
                  add_eye_pos_as_channels=None, include_trial_info_keys=None, num_workers=0, pin_memory=False,
                  memmap=False, get_key=False):
    """``{tier: DataLoader}`` for one dataset (folder or zip); ``(data_key, loaders)`` with ``get_key``.

    ``memmap=True`` caches each data folder as one ``.npy`` in the user cache and memory-maps it.
    """
    path = os.fspath(path)
    data_keys = ["images", "responses"]
    data_keys += ["behavior"] if include_behavior else []
    data_keys += ["pupil_center"] if include_eye_position else []
    data_keys += list(include_trial_info_keys or [])
    if add_eye_pos_as_channels and not include_eye_position:
        raise ValueError("add_eye_pos_as_channels needs include_eye_position=True")
    tree = FileTree(path)
    for key in data_keys[2:]:
        if key not in ("behavior", "pupil_center") and key not in tree.trial_info:
            raise ValueError(f"include_trial_info_keys: {tree.path}/meta/trials/{key}.npy does not exist")
    neuron_idx = _select_neurons(tree, areas, layers, neuron_ids, neuron_n, exclude_neuron_n, neuron_base_seed)
    transform = BatchTransform(
        tree, data_keys, normalize=normalize, exclude=exclude, inputs_mean=inputs_mean, inputs_std=inputs_std,
        behavior_channels=bool(include_behavior and add_behavior_as_channels),
        eye_channels=bool(add_eye_pos_as_channels), scale=scale, neuron_idx=neuron_idx,
    )
    normalisation = dict(transform.normalisation)  # before the images' part moves to the read
    images_on_read = None if memmap else _images_on_read(tree, transform)
    if images_on_read:  # the batches' images are then only cast (float32 -> float64 -> float32, exact)
        transform.scale = None
        transform.normalisation.pop("images", None)
    dataset = StaticDataset(tree, data_keys, transform, memmap, image_reduce=images_on_read)
    dataset.normalisation = normalisation
    loaders = OrderedDict()
    for name, subset in _tier_indices(tree, tier, image_ids, image_n, image_base_seed).items():
        sampler = SubsetRandomSampler(subset) if name == "train" else SubsetSequentialSampler(subset)
        loaders[name] = DataLoader(dataset, sampler=sampler, batch_size=batch_size, collate_fn=_batch_as_is,
                                   num_workers=num_workers, pin_memory=pin_memory)
    return (data_key_for(path, dataset.neurons), loaders) if get_key else loaders


@register("dataset", aliases=["pipeline.datasets.static_loaders"])
def static_loaders(paths, batch_size, seed=None, *, neuron_ids=None, image_ids=None, cuda=None,
                   overwrite_data_path=None, **config):
    """sensorium's dataset function: ``{tier: {data_key: DataLoader}}`` for one or more datasets.

    Takes the same arguments and defaults as ``sensorium.datasets.static_loaders`` (see
    ``static_loader``), plus ``num_workers``, ``pin_memory`` and ``memmap``. ``neuron_ids`` / ``image_ids`` are
    lists with one entry per path. ``cuda`` and ``overwrite_data_path`` are accepted and ignored:
    batches stay on the CPU (the trainer moves them) and paths are used as given.
    """
    if cuda:
        logger.warning("static_loaders: cuda=True is ignored; batches are CPU tensors, moved by the trainer")
    if overwrite_data_path:
        logger.warning("static_loaders: overwrite_data_path is ignored; paths are used as given")
    if isinstance(paths, (str, os.PathLike)):
        raise TypeError(f"paths must be a list of dataset paths, got the single path {paths!r}")
    require_positive_ints(batch_size=batch_size)
    if seed is not None:
        set_random_seed(seed)
    loaders = OrderedDict()
    for path, unit_ids, frame_ids in zip_longest(paths, neuron_ids or [], image_ids or []):
        key, tiers = static_loader(path, batch_size, neuron_ids=unit_ids, image_ids=frame_ids, get_key=True, **config)
        if key in next(iter(loaders.values()), {}):
            raise ValueError(f"two datasets share the data key {key!r} (second: {path})")
        for name, loader in tiers.items():
            loaders.setdefault(name, OrderedDict())[key] = loader
    return loaders
