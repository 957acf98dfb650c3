"""static_loaders against the reference: neuralpredictors 0.3.0 FileTreeDataset + transforms, chained
exactly as sensorium's static_loader does (spec §1.3), on the same synthetic files."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from skimage.transform import rescale
from torch.utils.data import DataLoader, SubsetRandomSampler

from pipeline.datasets import static_loaders
from pipeline.datasets.synthetic import generate
from pipeline.datasets.transforms import rescale as our_rescale
from tests.reference import np_ref

T = np_ref.data.transforms


def reference_loaders(path, batch_size, normalize=True, include_behavior=False, include_eye_position=None,
                      scale=None, neuron_n=None, neuron_base_seed=None, include_trial_info_keys=None):
    """sensorium.datasets.static_loader (single path), assembled from neuralpredictors 0.3.0 pieces."""
    data_keys = ["images", "responses"] + ["behavior"] * bool(include_behavior)
    data_keys += ["pupil_center"] * bool(include_eye_position) + list(include_trial_info_keys or [])
    dat = np_ref.data.datasets.FileTreeDataset(path, *data_keys)
    idx = np.where(np.ones(len(dat.neurons.area), dtype=bool))[0]
    if neuron_n is not None:
        state = np.random.get_state()
        if neuron_base_seed is not None:
            np.random.seed(neuron_base_seed * neuron_n)
        neuron_ids = np.random.choice(dat.neurons.unit_ids, size=neuron_n, replace=False)
        np.random.set_state(state)
        idx = [np.where(dat.neurons.unit_ids == unit_id)[0][0] for unit_id in neuron_ids]
    chain = [T.Subsample(idx), T.ToTensor(cuda=False)]
    if scale is not None:
        chain.insert(0, T.ScaleInputs(scale=scale))
    if include_behavior:
        chain.insert(0, T.AddBehaviorAsChannels())
    if normalize:
        chain.insert(0, T.NeuroNormalizer(dat))
    dat.transforms.extend(chain)
    key = f"{dat.neurons.animal_ids[0]}-{dat.neurons.sessions[0]}-{dat.neurons.scan_idx[0]}"
    loaders = OrderedDict()
    for tier in ("train", "validation", "test"):
        subset = np.where(dat.trial_info.tiers == tier)[0]
        sampler = SubsetRandomSampler(subset) if tier == "train" else np_ref.data.samplers.SubsetSequentialSampler(subset)
        loaders[tier] = OrderedDict({key: DataLoader(dat, sampler=sampler, batch_size=batch_size)})
    return loaders


def parity_dataset(folder, image_dtype="uint8"):
    return str(generate(folder, n_neurons=30, n_train=21, n_validation=7, n_test_images=3, n_repeats=3,
                        image_size=(144, 256), seed=5, image_dtype=image_dtype))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return parity_dataset(tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module", params=["float32", "float64"])
def float_dataset(tmp_path_factory, request):
    return parity_dataset(tmp_path_factory.mktemp(f"parity-{request.param}"), request.param)


CONFIGS = [
    {},
    {"scale": 0.25, "include_eye_position": True},
    {"scale": 0.25, "include_behavior": True, "include_eye_position": True},
    {"scale": 1, "include_eye_position": True},
    {"normalize": False, "scale": 0.5, "include_behavior": True},
    {"neuron_n": 12, "neuron_base_seed": 3, "scale": 0.25},
    {"include_eye_position": True, "include_trial_info_keys": ["trial_idx"]},
]


def config_id(config):
    return ",".join(f"{k}={v}" for k, v in config.items()) or "defaults"


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_batches_match_reference(dataset, config):
    assert_matches_reference(dataset, config)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[2], CONFIGS[4]], ids=config_id)
def test_float_images_match_reference(float_dataset, config):
    assert_matches_reference(float_dataset, config)


def assert_matches_reference(dataset, config):
    """Every tier's batches equal the reference's to float32 resolution, in the same order."""
    ours = static_loaders([dataset], batch_size=8, **config)
    ref = reference_loaders(dataset, batch_size=8, **config)
    assert list(ours) == list(ref) == ["train", "validation", "test"]
    for tier in ref:
        assert list(ours[tier]) == list(ref[tier])
        for key, ref_loader in ref[tier].items():
            loader = ours[tier][key]
            np.testing.assert_array_equal(loader.sampler.indices, ref_loader.sampler.indices)
            np.testing.assert_array_equal(loader.dataset.neurons.unit_ids, ref_loader.dataset.neurons.unit_ids)
            assert len(loader.dataset) == len(ref_loader.dataset)
            torch.manual_seed(11)
            ref_batches = list(ref_loader)
            torch.manual_seed(11)
            our_batches = list(loader)
            assert len(our_batches) == len(ref_batches)
            for a, b in zip(our_batches, ref_batches):
                assert type(a).__name__ == type(b).__name__ and a._fields == b._fields
                for field, x, y in zip(a._fields, a, b):
                    assert x.dtype == y.dtype == torch.float32 and x.shape == y.shape, field
                    assert (x - y).abs().max().item() <= 1e-6, field


@pytest.mark.parametrize("scale", [0.25, 0.3, 0.5, 1, 1.5, 2.0])
def test_rescale_matches_skimage(scale):
    images = np.random.default_rng(0).normal(size=(3, 2, 18, 32))
    expected = np.stack([rescale(img, scale=scale, mode="reflect", anti_aliasing=False, clip=True,
                                 preserve_range=True, channel_axis=0) for img in images])
    np.testing.assert_allclose(our_rescale(torch.from_numpy(images), scale).numpy(), expected, atol=1e-12)


def test_downscaling_is_torch_bilinear_without_antialias():
    images = np.random.default_rng(1).normal(size=(2, 1, 144, 256))
    ours = our_rescale(torch.from_numpy(images), 0.25).numpy()
    torch_out = torch.nn.functional.interpolate(torch.from_numpy(images), size=(36, 64), mode="bilinear",
                                                align_corners=False, antialias=False)
    np.testing.assert_allclose(ours, torch_out.numpy(), atol=1e-12)
