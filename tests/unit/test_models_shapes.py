"""The seed notebook's walk through the model, on a 144×256 synthetic dataset with 7538 neurons."""
import pytest
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.synthetic import generate
from pipeline.models import stacked_core_full_gauss_readout
from tests.unit.models_reference import SEED_CONFIG

DATA_KEY = "27204-5-13"


@pytest.fixture(scope="module")
def seed_notebook(tmp_path_factory):
    """The notebook's model (seed 42, eval mode), one train batch of 32, and the core's output on it."""
    path = generate(tmp_path_factory.mktemp("data"), n_neurons=7538, n_train=32, n_validation=1,
                    n_test_images=1, n_repeats=1, image_size=(144, 256), animal_id=27204, session=5, scan_idx=13)
    loaders = static_loaders([str(path)], 32, normalize=True, include_behavior=False, include_eye_position=True,
                             scale=1)
    model = stacked_core_full_gauss_readout(loaders, 42, **SEED_CONFIG).eval()
    batch = next(iter(loaders["train"][DATA_KEY]))
    with torch.no_grad():
        core_output = model.core(batch.images)
    return model, batch, core_output


def test_seed_config_has_560011_parameters(seed_notebook):
    model, _, _ = seed_notebook
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 560_011


def test_core_output_shape(seed_notebook):
    _, batch, core_output = seed_notebook
    assert batch.images.shape == (32, 1, 144, 256)
    assert core_output.shape == (32, 64, 136, 248)


def test_readout_and_shifter_shapes_and_the_shift_matters(seed_notebook):
    model, batch, core_output = seed_notebook
    with torch.no_grad():
        readout_output = model.readout[DATA_KEY](core_output)
        shifter_output = model.shifter[DATA_KEY](batch.pupil_center)
        shifted = model.readout[DATA_KEY](core_output, shift=shifter_output)
    assert readout_output.shape == (32, 7538)
    assert shifter_output.shape == (32, 2)
    assert shifted.shape == (32, 7538)
    assert not torch.equal(readout_output, shifted)
    assert (shifted - readout_output).abs().max() > 1e-4
