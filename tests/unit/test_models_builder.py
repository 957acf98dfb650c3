"""The model function: parameter counts, initial weights identical to the reference, config errors."""
import pytest
import torch

from pipeline.models import stacked_core_full_gauss_readout
from tests.unit.models_reference import SEED_CONFIG, reference_model, stand_in_loaders

# Parameter counts do not depend on resolution: 16×16 images keep these tests cheap.
TINY = (16, 16)


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "channels, n_neurons, shifter, expected",
    [
        (1, 7538, True, 560_011),  # seed notebook
        (4, 7538, True, 575_563),  # include_behavior: sensorium_p_sota_model.pth
        (1, 7776, False, 576_376),  # sensorium_sota_model.pth
        (1, 7538, False, 559_954),
    ],
)
def test_parameter_counts_match_spec(channels, n_neurons, shifter, expected):
    loaders = stand_in_loaders("27204-5-13", n_neurons, (channels, *TINY))
    model = stacked_core_full_gauss_readout(loaders, 42, **dict(SEED_CONFIG, shifter=shifter))
    assert n_trainable(model) == expected


@pytest.mark.parametrize(
    "config",
    [
        SEED_CONFIG,
        dict(SEED_CONFIG, init_sigma=0.1, init_mu_range=0.3, shifter=False),  # training notebooks
        # learned positions, other Gaussian types, plain convs, skip connections, all layers stacked
        dict(hidden_channels=8, layers=3, input_kern=5, hidden_kern=3, gauss_type="uncorrelated", skip=2),
        dict(hidden_channels=8, layers=3, input_kern=5, hidden_kern=[3, 5], gauss_type="isotropic", pad_input=True, stack=-1),
        dict(hidden_channels=8, layers=2, input_kern=5, linear=True, core_bias=True, hidden_dilation=2, stack=[0]),
        dict(hidden_channels=8, layers=2, input_kern=5, batch_norm=False, core_bias=True),
    ],
)
def test_initial_weights_equal_reference_bit_for_bit(config):
    loaders = stand_in_loaders("21067-10-18", 37, (1, *TINY))
    ours = stacked_core_full_gauss_readout(loaders, 7, **config)
    state_after_ours = torch.get_rng_state()
    reference = reference_model(loaders, 7, **config)
    assert torch.equal(torch.get_rng_state(), state_after_ours), "the builders consume different amounts of RNG"
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert list(ours_state) == list(reference_state)
    for name, value in reference_state.items():
        assert torch.equal(ours_state[name], value), name


def test_two_data_keys_share_one_core():
    loaders = stand_in_loaders("a", 11, (1, *TINY))
    loaders["train"]["b"] = stand_in_loaders("b", 13, (1, *TINY), seed=1)["train"]["b"]
    model = stacked_core_full_gauss_readout(loaders, 3, **SEED_CONFIG)
    reference = reference_model(loaders, 3, **SEED_CONFIG)
    assert set(model.readout) == set(model.shifter) == {"a", "b"}
    for name, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    model.eval()
    images, pupil = torch.randn(2, 1, *TINY), torch.randn(2, 2)
    assert model(images, data_key="a", pupil_center=pupil).shape == (2, 11)
    assert model(images, data_key="b", pupil_center=pupil).shape == (2, 13)


def test_flat_loader_dict_is_accepted():
    loaders = stand_in_loaders("k", 5, (1, *TINY))
    assert n_trainable(stacked_core_full_gauss_readout(loaders["train"], 0, **SEED_CONFIG)) == 69 * 5 + 39_680 + 152 + 57


@pytest.mark.parametrize(
    "config, culprit",
    [
        (dict(attention_conv=True), "attention_conv"),
        (dict(shifter=True, shifter_type="StaticAffine"), "StaticAffine"),
        (dict(gauss_type="diagonal"), "diagonal"),
        (dict(init_sigma=0.0), "init_sigma"),
        (dict(input_regularizer="GaussianLaplaceL2"), "GaussianLaplaceL2"),
        (dict(grid_mean_predictor=dict(SEED_CONFIG["grid_mean_predictor"], type="retina")), "retina"),
    ],
)
def test_bad_config_gives_a_clear_error(config, culprit):
    loaders = stand_in_loaders("k", 5, (1, *TINY))
    with pytest.raises(ValueError, match=culprit):
        stacked_core_full_gauss_readout(loaders, 0, **config)


def test_unknown_or_missing_data_key_is_named():
    loaders = stand_in_loaders("a", 5, (1, *TINY))
    loaders["train"]["b"] = stand_in_loaders("b", 5, (1, *TINY))["train"]["b"]
    model = stacked_core_full_gauss_readout(loaders, 0, **dict(SEED_CONFIG, shifter=False)).eval()
    images = torch.randn(1, 1, *TINY)
    with pytest.raises(ValueError, match="'c'"):
        model(images, data_key="c")
    with pytest.raises(ValueError, match="data_key is required"):
        model(images)


def test_missing_pupil_center_with_shifter_is_an_error():
    model = stacked_core_full_gauss_readout(stand_in_loaders("k", 5, (1, *TINY)), 0, **SEED_CONFIG).eval()
    with pytest.raises(ValueError, match="pupil_center"):
        model(torch.randn(1, 1, *TINY), data_key="k")


def test_degenerate_cortical_positions_are_refused():
    loaders = stand_in_loaders("k", 5, (1, *TINY))
    loaders["train"]["k"].dataset.neurons.cell_motor_coordinates[:] = 1.0
    with pytest.raises(ValueError, match="same cortical position"):
        stacked_core_full_gauss_readout(loaders, 0, **SEED_CONFIG)
