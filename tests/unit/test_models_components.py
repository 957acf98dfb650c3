"""Cores, readouts, shifters and fast paths on their own, against neuralpredictors 0.3.0."""
import warnings

import numpy as np
import pytest
import torch

from pipeline.models import stacked_core_full_gauss_readout
from pipeline.models.cores import Stacked2dCore
from pipeline.models.readouts import FullGaussian2d, normalize_source_grid
from pipeline.models.shifters import MLP
from tests.reference import np_ref
from tests.unit.models_reference import SEED_CONFIG, reference_model, stand_in_loaders

PREDICTOR = {"hidden_layers": 1, "hidden_features": 30, "final_tanh": True}


def reference_readout(**kwargs):
    with pytest.warns(UserWarning):  # "Readout is NOT initialized with mean activity"
        return np_ref.layers.readouts.FullGaussian2d(**kwargs)


@pytest.mark.parametrize("gauss_type", ["full", "uncorrelated", "isotropic"])
@pytest.mark.parametrize("predicted", [True, False])
@pytest.mark.parametrize("batch_sample", [True, False])
def test_readout_matches_reference_in_train_and_eval_mode(gauss_type, predicted, batch_sample):
    n, shape = 50, (8, 9, 13)
    rng = np.random.default_rng(0)
    kwargs = dict(in_shape=shape, outdims=n, bias=True, init_mu_range=0.5, init_sigma=0.4,
                  batch_sample=batch_sample, gauss_type=gauss_type)
    if predicted:
        kwargs.update(grid_mean_predictor=PREDICTOR, source_grid=rng.uniform(-500, 500, (n, 2)))
    ours, reference = FullGaussian2d(**kwargs), reference_readout(**kwargs)
    reference.load_state_dict(ours.state_dict(), strict=True)
    with torch.no_grad():
        ours.bias.normal_()
        ours._features.normal_()
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(4, *shape)
    shift = 0.6 * torch.randn(4, 2)  # pushes some positions outside [-1, 1]: they must not be re-clamped
    for training in (False, True):
        ours.train(training), reference.train(training)
        torch.manual_seed(5)
        expected = reference(x, shift=shift)
        torch.manual_seed(5)
        actual = ours(x, shift=shift)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.regularizer(), reference.regularizer(), rtol=1e-6, atol=0)


def test_positions_are_width_then_height_with_corner_pixel_centres():
    readout = FullGaussian2d((1, 5, 7), outdims=4, bias=False).eval()
    x = torch.zeros(1, 1, 5, 7)
    x[0, 0, 4, 0] = 1.0  # bottom-left pixel: row 4 (y = +1), column 0 (x = -1)
    with torch.no_grad():
        readout._features.fill_(1.0)
        readout._mu.copy_(torch.tensor([[-1.0, 1.0], [1.0, -1.0], [-1.0, 0.75], [0.0, 0.0]]).view(1, 4, 1, 2))
    response = readout(x)[0]
    assert response.tolist() == pytest.approx([1.0, 0.0, 0.5, 0.0])  # y = 0.75 is row 3.5
    # A shift moves every neuron; positions beyond the last pixel centre read zero padding.
    shifted = readout(x, shift=torch.tensor([[-0.5, 0.0]]))[0]
    assert shifted.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.0])


def test_learned_positions_are_clamped_in_place_like_the_reference():
    readout = FullGaussian2d((2, 4, 4), outdims=3).eval()
    with torch.no_grad():
        readout._mu.copy_(torch.tensor([2.0, -3.0, 0.5, 0.5, -0.2, 1.5]).view(1, 3, 1, 2))
    readout(torch.randn(1, 2, 4, 4))
    assert readout._mu.flatten().tolist() == pytest.approx([1.0, -1.0, 0.5, 0.5, -0.2, 1.0])


def test_injected_noise_equals_the_rngs_draw():
    readout = FullGaussian2d((3, 6, 6), outdims=10, init_sigma=0.3).train()
    x = torch.randn(2, 3, 6, 6)
    torch.manual_seed(9)
    noise = torch.empty(2, 10, 1, 2).normal_()
    torch.manual_seed(9)
    assert torch.equal(readout(x), readout(x, noise=noise))
    assert not torch.equal(readout(x, noise=noise), readout(x, noise=torch.zeros_like(noise)))
    assert torch.equal(readout(x, noise=torch.zeros_like(noise)), readout.eval()(x))


def test_source_grid_is_centred_and_scaled_by_the_global_max():
    coords = np.array([[0.0, 10.0], [4.0, 30.0], [8.0, 20.0]])
    grid = normalize_source_grid(coords).numpy()
    # centred: x - 4, y - 20; global max-abs is 10 (from y), so the aspect ratio is kept
    np.testing.assert_allclose(grid, [[-0.4, -1.0], [0.0, 1.0], [0.4, 0.0]], rtol=1e-6)


@pytest.mark.parametrize("coords", [np.ones((3, 2)), np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros(3)])
def test_bad_source_grids_are_refused(coords):
    with pytest.raises(ValueError, match="source_grid"):
        normalize_source_grid(coords)


@pytest.mark.parametrize(
    "config",
    [
        dict(layers=3, skip=2, stack=None, depth_separable=False, gamma_input=2.0),
        dict(layers=3, linear=True, pad_input=True, depth_separable=True, stack=-2, hidden_dilation=2),
        dict(layers=2, batch_norm=False, bias=True, final_nonlinearity=False, input_regularizer="LaplaceL2"),
    ],
)
def test_core_variants_match_reference(config):
    kwargs = dict(input_channels=2, hidden_channels=6, input_kern=5, hidden_kern=3, momentum=0.9,
                  laplace_padding=None, use_avg_reg=False, **config)
    kwargs.setdefault("input_regularizer", "LaplaceL2norm")
    torch.manual_seed(0)
    ours = Stacked2dCore(**kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LaplaceL2 is deprecated upstream
        reference = np_ref.layers.cores.Stacked2dCore(**kwargs)
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(3, 2, 14, 15)
    for training in (True, False):
        ours.train(training), reference.train(training)
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.regularizer(), reference.regularizer(), rtol=1e-6, atol=0)


def test_shifter_checks_its_input_and_appends_trial_index():
    shifter = MLP(input_features=3, hidden_channels=4, shift_layers=2)
    assert shifter(torch.randn(5, 2), trial_idx=torch.randn(5, 1)).shape == (5, 2)
    with pytest.raises(ValueError, match=r"\(batch, 3\)"):
        shifter(torch.randn(5, 2))


def test_explicit_shift_wins_over_the_shifter():
    loaders = stand_in_loaders("k", 9, (1, 16, 16))
    model = stacked_core_full_gauss_readout(loaders, 0, **SEED_CONFIG).eval()
    images, pupil = torch.randn(2, 1, 16, 16), torch.randn(2, 2)
    shift = torch.tensor([[0.3, -0.2], [0.0, 0.1]])
    with torch.no_grad():
        expected = torch.nn.functional.elu(model.readout(model.core(images), data_key="k", shift=shift)) + 1
        assert torch.equal(model(images, data_key="k", pupil_center=pupil, shift=shift), expected)


@pytest.mark.parametrize("fast, tolerance", [(dict(channels_last=True), 1e-5),
                                             (dict(channels_last=True, autocast_dtype="bfloat16"), 5e-2)])
def test_fast_paths_keep_the_reference_outputs(fast, tolerance):
    loaders = stand_in_loaders("k", 30, (1, 36, 64))
    reference = reference_model(loaders, 1, **SEED_CONFIG).eval()
    model = stacked_core_full_gauss_readout(loaders, 1, **SEED_CONFIG, **fast).eval()
    model.load_state_dict(reference.state_dict())
    images, pupil = torch.randn(4, 1, 36, 64), torch.randn(4, 2)
    with torch.no_grad():
        expected = reference(images, data_key="k", pupil_center=pupil)
        actual = model(images, data_key="k", pupil_center=pupil)
    assert actual.dtype == torch.float32
    assert ((actual - expected).abs() / expected).max() <= tolerance


def test_unknown_autocast_dtype_is_refused():
    with pytest.raises(ValueError, match="float8"):
        stacked_core_full_gauss_readout(stand_in_loaders("k", 3, (1, 16, 16)), 0, autocast_dtype="float8")
