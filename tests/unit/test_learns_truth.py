"""The seed model, trained by ``standard_trainer``, recovers the ground truth of a synthetic population.

The issue's bar, on the "realistic" preset with the seed config (recorded in
``benchmarks/results/training.md``): test correlations >= 0.85 x those of the noiseless ground-truth
rates and learned RF positions at r >= 0.9 per axis. Here, in seconds on a CPU: the "learnable" preset
(200 neurons, 18x32 images, a strong signal) and the same model function with a smaller core
(16 channels, 3 layers, 5x5 kernels), trained for 8 epochs, against proportionally looser bounds.
"""
import numpy as np
import pytest
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.synthetic import PRESETS, generate, load_ground_truth, to_core_grid
from pipeline.models import stacked_core_full_gauss_readout
from pipeline.training import standard_trainer
from pipeline.utility.ground_truth import learned_rf_positions, true_rf_positions, truth_scores

SMALL_SEED_MODEL = dict(
    input_kern=5, hidden_kern=5, hidden_channels=16, layers=3, depth_separable=True, stack=-1,
    gamma_input=6.3831, gamma_readout=0.0076, gauss_type="full", shifter=True,
    grid_mean_predictor={"type": "cortex", "input_dimensions": 2, "hidden_layers": 1, "hidden_features": 30,
                         "final_tanh": True},
    # The seed's init_sigma=1 samples the whole 14x28 feature map at first; 0.3 localises within 8 epochs.
    init_sigma=0.3,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("learnable"), seed=1, **PRESETS["learnable"])
    dataloaders = static_loaders([str(path)], batch_size=16, include_eye_position=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # several threads on a shared 2-core machine are many times slower
    try:
        model = stacked_core_full_gauss_readout(dataloaders, 2, **SMALL_SEED_MODEL)
        standard_trainer(model, dataloaders, 2, max_iter=8, lr_init=0.009, device="cpu", verbose=False)
        return truth_scores(model, dataloaders, path)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_test_correlations_approach_the_ground_truth(trained):
    assert trained["truth_single_trial"] > 0.8  # the preset's signal is as strong as intended
    assert trained["model_single_trial"] >= 0.55 * trained["truth_single_trial"], trained
    # the model sees no behaviour, so it stays below the rates without their behavioural gain
    assert trained["model_single_trial"] < trained["truth_single_trial_without_behaviour"] < trained["truth_single_trial"], \
        trained
    assert trained["model_to_average"] >= 0.65 * trained["truth_to_average"], trained


@pytest.mark.slow
def test_learned_rf_positions_match_the_true_centres(trained):
    assert trained["rf_r_x"] >= 0.9 and trained["rf_r_y"] >= 0.9, trained
    assert trained["rf_median_error"] < 0.25, trained  # same frame: x = width, y = height, cropped core grid


@pytest.mark.parametrize("include_behavior", [False, True], ids=["image", "image+behaviour channels"])
def test_true_positions_follow_the_core_crop(tmp_path, include_behavior):
    path = generate(tmp_path, seed=1, **PRESETS["tiny"])
    dataloaders = static_loaders([str(path)], batch_size=8, include_eye_position=True, include_behavior=include_behavior)
    model = stacked_core_full_gauss_readout(dataloaders, 0, **{**SMALL_SEED_MODEL, "input_kern": 7, "layers": 1})
    (data_key, loader), = dataloaders["test"].items()
    truth = load_ground_truth(path)
    expected = to_core_grid(truth["rf_centers"], (36, 64), crop=3)
    np.testing.assert_allclose(true_rf_positions(model, loader, truth), expected)
    assert learned_rf_positions(model, data_key).shape == expected.shape
