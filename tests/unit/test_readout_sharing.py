"""Readouts shared across recordings (share_features, share_grid, gamma_grid_dispersion) against the reference."""
import numpy as np
import pytest
import torch

from pipeline.models import stacked_core_full_gauss_readout
from tests.unit.models_reference import SEED_GRID_PREDICTOR, reference_model, stand_in_loaders

TINY = (16, 16)
CORE = dict(hidden_channels=6, layers=2, input_kern=5, hidden_kern=3, shifter=True, init_sigma=0.3)
# Three recordings of 11 matched neurons: permuted, one with two neurons recorded twice.
MATCH_IDS = {"a": [4, 0, 9, 2, 7, 1, 10, 3, 8, 5, 6], "b": [3, 3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 10],
             "c": list(range(10, -1, -1))}


def matched_loaders():
    """Train/validation loaders of three recordings whose datasets carry ``neurons.multi_match_id``."""
    loaders = {"train": {}, "validation": {}}
    for seed, (key, ids) in enumerate(MATCH_IDS.items()):
        one = stand_in_loaders(key, len(ids), (1, *TINY), seed=seed)
        one["train"][key].dataset.neurons.multi_match_id = np.array(ids)
        for tier in loaders:
            loaders[tier].update(one[tier])
    return loaders


SHARING = [
    dict(share_features=True),
    dict(share_features=True, grid_mean_predictor=SEED_GRID_PREDICTOR, gauss_type="uncorrelated"),
    dict(share_grid=True, gamma_grid_dispersion=0.3),
    dict(share_grid=True, share_features=True, gauss_type="isotropic", gamma_grid_dispersion=0.05),
]


@pytest.mark.parametrize("config", SHARING)
def test_shared_readouts_equal_the_reference(config):
    config = {**CORE, **config}
    loaders = matched_loaders()
    ours = stacked_core_full_gauss_readout(loaders, 5, **config)
    rng_after_ours = torch.get_rng_state()
    reference = reference_model(loaders, 5, **config)
    assert torch.equal(torch.get_rng_state(), rng_after_ours), "the builders consume different amounts of RNG"
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state)
    for name, value in reference_state.items():
        assert torch.equal(ours_state[name], value), name
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())

    with torch.no_grad():  # move every parameter off its initial value, the same way in both models
        for ours_p, reference_p in zip(ours.parameters(), reference.parameters()):
            ours_p.add_(0.05 * torch.randn_like(ours_p))
            reference_p.copy_(ours_p)
    images, pupil = torch.randn(4, 1, *TINY), torch.randn(4, 2)
    gamma = config.get("gamma_grid_dispersion", 0)
    for key in MATCH_IDS:
        for training in (False, True):
            ours.train(training), reference.train(training)
            torch.manual_seed(3)
            expected = reference(images, data_key=key, pupil_center=pupil)
            torch.manual_seed(3)
            actual = ours(images, data_key=key, pupil_center=pupil)
            torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
            ours.zero_grad(), reference.zero_grad()
            (actual.sum() + ours.readout.regularizer(key)).backward()
            expected_regularizer = reference.readout.regularizer(key)
            if gamma:
                expected_regularizer = expected_regularizer + gamma * reference.readout[key].mu_dispersion
            (expected.sum() + expected_regularizer).backward()
            expected_regularizer = torch.as_tensor(expected_regularizer, dtype=torch.float32)
            torch.testing.assert_close(ours.readout.regularizer(key), expected_regularizer, rtol=1e-6, atol=0)
            for (name, ours_p), reference_p in zip(ours.named_parameters(), reference.parameters()):
                zero = torch.zeros_like(ours_p)  # in eval mode the reference's Σ gets a zero gradient, ours none
                torch.testing.assert_close(_grad(ours_p, zero), _grad(reference_p, zero), rtol=1e-4, atol=1e-6,
                                           msg=name)


def _grad(parameter, zero):
    return zero if parameter.grad is None else parameter.grad


def test_one_step_on_one_recording_moves_the_shared_parameters_of_all():
    model = stacked_core_full_gauss_readout(matched_loaders(), 0, **CORE, share_features=True, share_grid=True)
    a, b = model.readout["a"], model.readout["b"]
    assert b._features is a._features and b._mu is a._mu
    assert b.regularizer() == 0 and a.regularizer() > 0  # the shared features are regularised once
    before = a.features.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(2, 1, *TINY), data_key="b", pupil_center=torch.randn(2, 2)).sum().backward()
    optimizer.step()
    assert not torch.equal(a.features, before)
    # neurons with one match id read one feature vector: recording b's two copies of id 3 differ by their scales only
    ratio = b.features[0, :, 0, 0] / b.features[0, :, 0, 1]
    torch.testing.assert_close(ratio, torch.full_like(ratio, (b.scales[0, 0, 0, 0] / b.scales[0, 0, 0, 1]).item()))


def test_shared_weights_round_trip_through_the_state_dict():
    loaders = matched_loaders()
    config = {**CORE, "share_features": True, "share_grid": True}
    trained = stacked_core_full_gauss_readout(loaders, 0, **config).eval()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    fresh = stacked_core_full_gauss_readout(loaders, 1, **config).eval()
    fresh.load_state_dict(trained.state_dict())
    images, pupil = torch.randn(3, 1, *TINY), torch.randn(3, 2)
    for key in MATCH_IDS:
        batch = dict(data_key=key, pupil_center=pupil)
        assert torch.equal(fresh(images, **batch), trained(images, **batch))


@pytest.mark.parametrize(
    "config, culprit",
    [
        (dict(share_grid=True, grid_mean_predictor=SEED_GRID_PREDICTOR), "grid_mean_predictor"),
        (dict(gamma_grid_dispersion=0.1, grid_mean_predictor=SEED_GRID_PREDICTOR), "grid_mean_predictor"),
        (dict(share_features=True, shared_match_ids={"a": MATCH_IDS["a"]}), r"\['b', 'c'\]"),
        (dict(share_grid=True, shared_match_ids={**MATCH_IDS, "c": list(range(1, 12))}), "'c' differ"),
        (dict(share_features=True, shared_match_ids={**MATCH_IDS, "a": [0, 1]}), "one id per neuron"),
    ],
)
def test_bad_sharing_configs_are_named(config, culprit):
    with pytest.raises(ValueError, match=culprit):
        stacked_core_full_gauss_readout(matched_loaders(), 0, **CORE, **config)


def test_sharing_without_match_ids_in_the_data_is_named():
    with pytest.raises(ValueError, match="multi_match_id"):
        stacked_core_full_gauss_readout(stand_in_loaders("k", 5, (1, *TINY)), 0, **CORE, share_features=True)
