"""data_info: what the model function needs from the data, and models rebuilt from it alone."""
import numpy as np
import pytest
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.data_info import data_info
from pipeline.datasets.synthetic import PRESETS, generate, ground_truth_path, load_ground_truth
from pipeline.models import stacked_core_full_gauss_readout
from tests.unit.models_reference import SEED_GRID_PREDICTOR

MODEL = dict(hidden_channels=6, layers=2, input_kern=5, hidden_kern=3, shifter=True, init_sigma=0.3,
             grid_mean_predictor=SEED_GRID_PREDICTOR)


@pytest.fixture(scope="module")
def dataloaders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    paths = [generate(folder, **PRESETS["tiny"], seed=seed) for seed in (1, 2)]
    return static_loaders([str(p) for p in paths], batch_size=16, include_eye_position=True, scale=0.5)


def test_data_info_describes_every_data_key_and_leaves_the_rngs_alone(dataloaders):
    torch.manual_seed(4)
    before = torch.get_rng_state()
    info = data_info(dataloaders)
    assert torch.equal(torch.get_rng_state(), before)
    assert list(info) == list(dataloaders["train"])
    for key, item in info.items():
        loader = dataloaders["train"][key]
        dataset = loader.dataset
        assert item["fields"] == ("images", "responses", "pupil_center")
        assert item["dims"] == {"images": (16, 1, 18, 32), "responses": (16, 40), "pupil_center": (16, 2)}
        assert item["n_neurons"] == 40
        np.testing.assert_array_equal(item["neurons"]["unit_ids"], dataset.neurons.unit_ids)
        np.testing.assert_array_equal(item["neurons"]["cell_motor_coordinates"], dataset.neurons.cell_motor_coordinates)
        responses = torch.cat([batch.responses for batch in loader]).double()
        np.testing.assert_allclose(item["mean_responses"], responses.mean(0).numpy(), rtol=1e-12)
        for tier, trials in item["trials"].items():
            indices = dataloaders[tier][key].sampler.indices
            assert trials["n"] == len(indices)
            np.testing.assert_array_equal(trials["frame_image_id"], dataset.trial_info.frame_image_id[indices])
        assert set(item["normalisation"]) == {"images", "responses", "pupil_center"}
        offset, spread = item["normalisation"]["responses"]
        raw = dataset.store["responses"][indices[:3]]
        np.testing.assert_allclose(((raw - offset) / spread).astype(np.float32),
                                   dataset.__getitems__(indices[:3]).responses.numpy(), rtol=1e-6)
    torch.manual_seed(99)
    again = data_info(dataloaders)  # the same numbers whatever the caller's RNG state
    assert all(again[key]["mean_responses"].tobytes() == info[key]["mean_responses"].tobytes() for key in info)


@pytest.mark.parametrize("config", [MODEL, dict(MODEL, grid_mean_predictor=None, gauss_type="isotropic")])
def test_model_from_data_info_equals_model_from_loaders_bit_for_bit(dataloaders, config):
    from_loaders = stacked_core_full_gauss_readout(dataloaders, 3, **config).eval()
    from_info = stacked_core_full_gauss_readout(None, 3, data_info=data_info(dataloaders), **config).eval()
    assert list(from_info.state_dict()) == list(from_loaders.state_dict())
    for name, value in from_loaders.state_dict().items():
        assert torch.equal(from_info.state_dict()[name], value), name
    for key, loader in dataloaders["test"].items():
        batch = next(iter(loader))
        with torch.no_grad():
            assert torch.equal(from_info(batch.images, data_key=key, pupil_center=batch.pupil_center),
                               from_loaders(batch.images, data_key=key, pupil_center=batch.pupil_center))


def test_missing_inputs_are_named(dataloaders):
    with pytest.raises(ValueError, match="data_info"):
        stacked_core_full_gauss_readout(None, 0, **MODEL)
    with pytest.raises(ValueError, match="'train' tier"):
        data_info({"test": dataloaders["test"]})
    info = data_info(dataloaders)
    for item in info.values():
        del item["neurons"]["cell_motor_coordinates"]
    with pytest.raises(ValueError, match="neurons.cell_motor_coordinates"):
        stacked_core_full_gauss_readout(None, 0, data_info=info, **MODEL)


def test_data_info_carries_the_true_rf_centres_of_a_synthetic_dataset_only(tmp_path):
    path = generate(tmp_path / "one", **PRESETS["tiny"], seed=3)
    loaders = static_loaders([str(path)], batch_size=16, neuron_ids=[[5, 1, 40]])
    (item,) = data_info(loaders).values()
    np.testing.assert_array_equal(item["true_rf_centers"], load_ground_truth(path)["rf_centers"][[4, 0, 39]])
    ground_truth_path(path).unlink()  # a recording has no ground truth
    (item,) = data_info(static_loaders([str(path)], batch_size=16)).values()
    assert item["true_rf_centers"] is None
