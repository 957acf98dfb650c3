"""static_loaders behaviour beyond reference parity: shapes, data keys, workers, pickling, options."""
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.filetree import FileTree
from pipeline.datasets.synthetic import PRESETS, generate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("tiny"), seed=4, **PRESETS["tiny"])


def test_seed_notebook_shapes_at_full_resolution(tmp_path):
    path = generate(tmp_path, n_neurons=7538, n_train=40, n_validation=8, n_test_images=4, n_repeats=2,
                    image_size=(144, 256), seed=0)
    loaders = static_loaders([str(path)], batch_size=32, normalize=True, include_behavior=False,
                             include_eye_position=True, scale=1)
    batch = next(iter(loaders["train"]["90000-1-1"]))
    assert type(batch).__name__ == "DataPoint" and batch._fields == ("images", "responses", "pupil_center")
    assert batch.images.shape == (32, 1, 144, 256)
    assert batch.responses.shape == (32, 7538)
    assert batch.pupil_center.shape == (32, 2)
    assert loaders["train"]["90000-1-1"].dataset.neurons.cell_motor_coordinates.shape == (7538, 3)


def test_tiers_cover_every_trial_once(tiny):
    loaders = static_loaders([str(tiny)], batch_size=7)
    key = "90004-1-1"
    indices = np.concatenate([loaders[t][key].sampler.indices for t in ("train", "validation", "test")])
    assert sorted(indices) == list(range(len(loaders["train"][key].dataset)))
    test = loaders["test"][key]
    assert list(test.sampler.indices) == sorted(test.sampler.indices)
    assert sum(len(b.responses) for b in test) == len(test.sampler.indices) == 6 * 4


def test_data_keys_follow_the_reference_naming(tiny, tmp_path):
    named = tmp_path / "static27204-5-13-GrayImageNet-94c6ff995dac583098847cfecd43e7b6"
    shutil.copytree(tiny, named)
    loaders = static_loaders([str(named), str(tiny)], batch_size=8)
    assert list(loaders["validation"]) == ["27204-5-13", "90004-1-1"]
    with pytest.raises(ValueError, match="share the data key '90004-1-1'"):
        static_loaders([str(tiny), str(tiny)], batch_size=8)


def test_final_test_tier_when_present(tiny, tmp_path):
    copy = shutil.copytree(tiny, tmp_path / tiny.name)
    tiers = np.load(copy / "meta/trials/tiers.npy")
    tiers[np.flatnonzero(tiers == "test")[:4]] = "final_test"
    np.save(copy / "meta/trials/tiers.npy", tiers)
    loaders = static_loaders([str(copy)], batch_size=8)
    assert list(loaders) == ["train", "validation", "test", "final_test"]
    assert len(loaders["final_test"]["90004-1-1"].sampler) == 4


def test_batches_survive_worker_processes_and_pickle(tiny):
    config = dict(batch_size=8, include_behavior=True, include_eye_position=True, scale=0.5)
    serial = list(static_loaders([str(tiny)], **config)["test"]["90004-1-1"])
    parallel = list(static_loaders([str(tiny)], num_workers=2, pin_memory=False, **config)["test"]["90004-1-1"])
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel):
        assert type(a) is type(b) and all(torch.equal(x, y) for x, y in zip(a, b))
    restored = pickle.loads(pickle.dumps(serial[0]))
    assert restored._fields == ("images", "responses", "behavior", "pupil_center")
    assert restored.images.shape == (8, 4, 18, 32) and torch.equal(restored.images, serial[0].images)


def test_train_order_is_reproducible_with_a_seed(tiny):
    def order(seed):
        loader = static_loaders([str(tiny)], batch_size=60, seed=seed)["train"]["90004-1-1"]
        return next(iter(loader)).responses

    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))


def test_dataset_item_matches_its_batch_row(tiny):
    loader = static_loaders([str(tiny)], batch_size=5, include_eye_position=True)["validation"]["90004-1-1"]
    batch = next(iter(loader))
    item = loader.dataset[int(loader.sampler.indices[2])]
    assert item._fields == batch._fields and all(torch.equal(x, y[2]) for x, y in zip(item, batch))


def test_neuron_selection_keeps_metadata_aligned(tiny):
    ids = [7, 3, 22]
    loader = static_loaders([str(tiny)], batch_size=8, neuron_ids=[ids], normalize=False)["test"]["90004-1-1"]
    np.testing.assert_array_equal(loader.dataset.neurons.unit_ids, ids)
    raw = np.load(tiny / f"data/responses/{loader.sampler.indices[0]}.npy")
    np.testing.assert_array_equal(next(iter(loader)).responses[0].numpy(), raw[np.array(ids) - 1])
    with pytest.raises(ValueError, match=r"neuron_ids \[999\] are not in"):
        static_loaders([str(tiny)], batch_size=8, neuron_ids=[[999]])


def test_dead_and_contradictory_options(tiny, caplog):
    with caplog.at_level(logging.WARNING):
        static_loaders([str(tiny)], batch_size=8, cuda=True, overwrite_data_path=True)
    assert "cuda=True is ignored" in caplog.text and "overwrite_data_path is ignored" in caplog.text
    with pytest.raises(ValueError, match="inputs_mean was given without inputs_std"):
        static_loaders([str(tiny)], batch_size=8, inputs_mean=100.0)
    with pytest.raises(TypeError, match="paths must be a list"):
        static_loaders(str(tiny), batch_size=8)
    with pytest.raises(ValueError, match="meta/trials/bogus.npy does not exist"):
        static_loaders([str(tiny)], batch_size=8, include_trial_info_keys=["bogus"])


def test_memmap_store_gives_the_same_batches(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("V1FABRIK_CACHE", str(tmp_path / "cache"))
    config = dict(batch_size=8, include_behavior=True, include_eye_position=True, scale=0.5)
    plain = list(static_loaders([str(tiny)], **config)["validation"]["90004-1-1"])
    first = static_loaders([str(tiny)], memmap=True, **config)["validation"]["90004-1-1"]
    stores = sorted(p.name for p in (tmp_path / "cache").rglob("*.npy"))
    assert stores == ["behavior.npy", "images.npy", "pupil_center.npy", "responses.npy"]
    again = static_loaders([str(tiny)], memmap=True, **config)["validation"]["90004-1-1"]
    assert isinstance(again.dataset.store["images"], np.memmap)
    for loader in (first, again):
        for a, b in zip(plain, loader):
            assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("config", [dict(), dict(normalize=False), dict(inputs_mean=90.0, inputs_std=40.0),
                                    dict(scale=1, include_behavior=True)])
def test_uint8_lookup_gives_the_float64_result_bit_for_bit(tiny, config):
    dataset = static_loaders([str(tiny)], batch_size=8, **config)["train"]["90004-1-1"].dataset
    raw = {key: value[:8] for key, value in dataset.store.items()}
    assert raw["images"].dtype == np.uint8 and dataset.transform.uint8_images is not None
    looked_up = dataset.transform(raw)
    dataset.transform.uint8_images = None  # as for per-pixel statistics: float64 arithmetic
    computed = dataset.transform(raw)
    assert looked_up.keys() == computed.keys() and all(torch.equal(looked_up[k], computed[k]) for k in computed)


def test_per_pixel_image_statistics_are_not_looked_up(tiny):
    mean = np.full((1, 36, 64), 90.0)
    mean[..., 0] = 10.0
    loader = static_loaders([str(tiny)], batch_size=8, inputs_mean=mean, inputs_std=40.0)["test"]["90004-1-1"]
    assert loader.dataset.transform.uint8_images is None
    images = next(iter(loader)).images.double()
    raw = loader.dataset.store["images"][loader.sampler.indices[:8]].astype(np.float64)
    np.testing.assert_allclose(images.numpy(), (raw - mean) / 40.0, rtol=1e-6)


@pytest.fixture(scope="module", params=["uint8", "float32", "float64"])
def tiny_of_each_dtype(tmp_path_factory, request):
    return generate(tmp_path_factory.mktemp(request.param), seed=4, image_dtype=request.param, **PRESETS["tiny"])


@pytest.mark.parametrize("config", [dict(), dict(scale=1), dict(scale=0.5), dict(scale=0.25),
                                    dict(scale=0.25, normalize=False), dict(inputs_mean=90.0, inputs_std=40.0)])
def test_images_transformed_while_read_give_the_per_batch_result_bit_for_bit(tiny_of_each_dtype, tmp_path,
                                                                             monkeypatch, config):
    monkeypatch.setenv("V1FABRIK_CACHE", str(tmp_path / "cache"))
    path = tiny_of_each_dtype
    dtype = FileTree(path).layout("images")[1]
    config = dict(batch_size=16, include_behavior=True, include_eye_position=True, **config)
    loader = static_loaders([str(path)], **config)["test"]["90004-1-1"]
    per_batch = static_loaders([str(path)], memmap=True, **config)["test"]["90004-1-1"]  # stores raw images
    scale = config.get("scale") or 1
    raw_uint8 = dtype == "uint8" and scale > 0.5  # float32 would take more memory than the raw images
    images = loader.dataset.store["images"]
    assert images.dtype == (np.uint8 if raw_uint8 else np.float32) and images.shape[-1] == 64 * scale
    assert per_batch.dataset.store["images"].dtype == dtype and per_batch.dataset.transform.scale == config.get("scale")
    for a, b in zip(loader, per_batch, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
