"""The published SENSORIUM checkpoints in our models: strict loading and parity with the reference.

Relative errors: outputs are firing rates > 0, compared element by element; gradients are compared
per tensor, relative to the tensor's largest reference magnitude.
"""
import os
from pathlib import Path

import pytest
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.synthetic import generate
from pipeline.models import stacked_core_full_gauss_readout
from tests.unit.models_reference import SEED_CONFIG, reference_model

# shared/ lies beside the repository (in CI too); V1FABRIK_CHECKPOINTS points elsewhere.
CHECKPOINTS = Path(os.environ.get("V1FABRIK_CHECKPOINTS")
                   or Path(__file__).resolve().parents[3] / "shared" / "reference" / "checkpoints")
# file: (animal, session, scan), neurons, include_behavior (4 input channels), shifter
# (checkpoints/README.md). The checkpoints were trained at 36×64.
CASES = {
    "sensorium_p_sota_model.pth": ((27204, 5, 13), 7538, True, True),
    "sensorium_sota_model.pth": ((26872, 17, 20), 7776, False, False),
}
BATCH = 4


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    """(ours, reference, data key, random inputs) with the checkpoint loaded strictly into both.

    Both models are built by their builders for a synthetic dataset with the checkpoint's data key,
    neuron count and input channels.
    """
    checkpoint = CHECKPOINTS / request.param
    if not checkpoint.is_file():
        pytest.fail(f"{checkpoint} not found: put shared/ beside the repository or set V1FABRIK_CHECKPOINTS to a "
                    "folder with the SENSORIUM checkpoints (sinzlab/sensorium, "
                    "notebooks/model_tutorial/model_checkpoints/pretrained/)", pytrace=False)
    (animal, session, scan), n_neurons, behavior, shifter = CASES[request.param]
    path = generate(tmp_path_factory.mktemp("data"), n_neurons=n_neurons, n_train=BATCH, n_validation=1,
                    n_test_images=1, n_repeats=1, image_size=(36, 64), animal_id=animal, session=session,
                    scan_idx=scan)
    loaders = static_loaders([str(path)], BATCH, include_behavior=behavior, include_eye_position=shifter)
    data_key = f"{animal}-{session}-{scan}"
    assert list(loaders["train"]) == [data_key]
    config = dict(SEED_CONFIG, shifter=shifter, init_sigma=0.1, init_mu_range=0.3)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ours = stacked_core_full_gauss_readout(loaders, 42, **config)
    reference = reference_model(loaders, 42, **config)
    ours.load_state_dict(state, strict=True)
    reference.load_state_dict(state, strict=True)
    generator = torch.Generator().manual_seed(1)
    channels = 4 if behavior else 1
    inputs = {
        "images": torch.randn(BATCH, channels, 36, 64, generator=generator),
        "pupil_center": torch.randn(BATCH, 2, generator=generator) if shifter else None,
    }
    return ours, reference, data_key, inputs


def max_relative_error(ours, reference):
    return ((ours - reference).abs() / reference.abs()).max().item()


def test_checkpoint_weights_are_used_verbatim(pair):
    ours, reference, _, _ = pair
    for name, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name


def test_eval_outputs_match_reference(pair):
    ours, reference, data_key, inputs = pair
    ours.eval(), reference.eval()
    with torch.no_grad():
        expected = reference(inputs["images"], data_key=data_key, pupil_center=inputs["pupil_center"])
        actual = ours(inputs["images"], data_key=data_key, pupil_center=inputs["pupil_center"])
    assert actual.shape == expected.shape == (BATCH, ours.readout[data_key].outdims)
    assert max_relative_error(actual, expected) <= 1e-5


def test_eval_outputs_accept_the_trainers_keyword_call(pair):
    ours, _, data_key, inputs = pair
    ours.eval()
    batch = {"images": inputs["images"], "responses": torch.zeros(BATCH, 1)}
    if inputs["pupil_center"] is not None:
        batch["pupil_center"] = inputs["pupil_center"]
    with torch.no_grad():
        positional = ours(inputs["images"], data_key=data_key, **batch)
        keywords_only = ours(data_key=data_key, **batch)
    assert torch.equal(positional, keywords_only)


def run_training_step(model, data_key, inputs, weights, **noise):
    """Training-mode outputs and gradients of ``Σ w·rates + core and readout regularizers``."""
    model.train()
    model.zero_grad()
    rates = model(inputs["images"], data_key=data_key, pupil_center=inputs["pupil_center"], **noise)
    loss = (rates * weights).sum() + model.core.regularizer() + model.readout.regularizer(data_key)
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    return rates.detach(), gradients, buffers


def test_training_mode_outputs_and_gradients_match_reference(pair):
    ours, reference, data_key, inputs = pair
    n_neurons = ours.readout[data_key].outdims
    weights = torch.rand(BATCH, n_neurons, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    noise = torch.empty(BATCH, n_neurons, 1, 2).normal_()
    # On CPU our core runs channels-last; fed a channels-last image the reference uses the same kernels.
    images = inputs["images"]
    same_layout = dict(inputs, images=torch.empty_like(images, memory_format=torch.channels_last).copy_(images))
    torch.manual_seed(3)  # the reference draws the same standard normals from the global RNG
    expected, expected_grads, expected_buffers = run_training_step(reference, data_key, same_layout, weights)
    actual, grads, buffers = run_training_step(ours, data_key, inputs, weights, noise=noise)

    assert max_relative_error(actual, expected) <= 1e-5
    # The layout alone moves the reference's own training-mode outputs by up to 4e-5 (BatchNorm over 4 images).
    torch.manual_seed(3)
    nchw_reference, _, _ = run_training_step(reference, data_key, inputs, weights)
    assert max_relative_error(actual, nchw_reference) <= 1e-4
    eval_rates = ours.eval()(inputs["images"], data_key=data_key, pupil_center=inputs["pupil_center"])
    assert (actual - eval_rates.detach()).abs().max() > 1e-3, "training mode did not sample positions"
    assert grads.keys() == expected_grads.keys()
    for name, expected_grad in expected_grads.items():
        assert expected_grad.abs().max() > 0, name
        error = (grads[name] - expected_grad).abs().max() / expected_grad.abs().max()
        assert error <= 1e-5, f"{name}: relative gradient error {error:.2e}"
    for name, expected_buffer in expected_buffers.items():  # BatchNorm running statistics
        torch.testing.assert_close(buffers[name], expected_buffer, rtol=1e-5, atol=1e-7, msg=name)

    # Without injected noise the readout draws the same normals from the global RNG as the reference.
    torch.manual_seed(3)
    from_rng, _, _ = run_training_step(ours, data_key, inputs, weights)
    assert torch.equal(from_rng, actual)


def test_regularizers_match_reference(pair):
    ours, reference, data_key, _ = pair
    with torch.no_grad():
        core_term, expected_core = ours.core.regularizer(), reference.core.regularizer()
        readout_term, expected_readout = ours.readout.regularizer(data_key), reference.readout.regularizer(data_key)
    assert abs(core_term.item() - expected_core.item()) <= 1e-6 * expected_core.item()
    assert abs(readout_term.item() - expected_readout.item()) <= 1e-6 * expected_readout.item()
    features = reference.readout[data_key]._features
    assert readout_term.item() == pytest.approx(0.0076 * features.abs().sum().item(), rel=1e-6)
