"""Starting from a trained core: pretrained_core, freeze_core and the trainer's core_lr."""
import pytest
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.synthetic import PRESETS, generate
from pipeline.models import stacked_core_full_gauss_readout
from pipeline.training import standard_trainer

MODEL = dict(hidden_channels=6, layers=2, input_kern=5, hidden_kern=3, shifter=True, init_sigma=0.3,
             init_mu_range=0.3, gamma_readout=0.01)
TRAINER = dict(max_iter=2, device="cpu", verbose=False, lr_init=0.01)


@pytest.fixture(scope="module")
def dataloaders(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("one"), **PRESETS["tiny"], seed=5)
    return static_loaders([str(path)], batch_size=16, include_eye_position=True, scale=0.5)


@pytest.fixture(scope="module")
def parent_core(dataloaders):
    """A core that has seen some training (every weight and BatchNorm statistic moved)."""
    torch.set_num_threads(1)
    parent = stacked_core_full_gauss_readout(dataloaders, 1, **MODEL)
    standard_trainer(parent, dataloaders, seed=1, **TRAINER)
    return {name: value.numpy() for name, value in parent.core.state_dict().items()}


def core_state(model):
    return {name: value.clone() for name, value in model.core.state_dict().items()}


def test_pretrained_core_is_loaded_and_the_readouts_start_as_without_it(dataloaders, parent_core):
    plain = stacked_core_full_gauss_readout(dataloaders, 2, **MODEL)
    child = stacked_core_full_gauss_readout(dataloaders, 2, pretrained_core=parent_core, **MODEL)
    for name, value in child.core.state_dict().items():
        assert torch.equal(value, torch.as_tensor(parent_core[name])), name
    for part in ("readout", "shifter"):
        for name, value in getattr(plain, part).state_dict().items():
            assert torch.equal(getattr(child, part).state_dict()[name], value), name


def test_frozen_core_is_unchanged_after_training(dataloaders, parent_core):
    torch.set_num_threads(1)
    child = stacked_core_full_gauss_readout(dataloaders, 2, pretrained_core=parent_core, freeze_core=True, **MODEL)
    readout_before = {name: value.clone() for name, value in child.readout.state_dict().items()}
    child.train()
    assert not child.core.training and child.readout.training  # BatchNorm keeps its running statistics
    _, output, weights = standard_trainer(child, dataloaders, seed=3, **{**TRAINER, "restore_best": False})
    for name, value in child.core.state_dict().items():
        assert torch.equal(value, torch.as_tensor(parent_core[name])), name
        assert torch.equal(weights[f"core.{name}"], value), name
    assert any(not torch.equal(child.readout.state_dict()[name], value) for name, value in readout_before.items())
    assert len(output["history"]["epoch"]) == 2


def test_core_lr_gives_the_core_its_own_learning_rate(dataloaders, parent_core):
    torch.set_num_threads(1)
    child = stacked_core_full_gauss_readout(dataloaders, 2, pretrained_core=parent_core, **MODEL)
    _, output, _ = standard_trainer(child, dataloaders, seed=3, core_lr=0.0, **{**TRAINER, "restore_best": False})
    parameters = dict(child.core.named_parameters())
    for name, value in parameters.items():
        assert torch.equal(value.detach(), torch.as_tensor(parent_core[name])), name  # learning rate 0
    assert any(not torch.equal(value, torch.as_tensor(parent_core[name]))  # fine-tuning: BatchNorm statistics move
               for name, value in child.core.state_dict().items() if name not in parameters)
    assert output["history"]["lr"] == [TRAINER["lr_init"]] * 2  # the history reports the readouts' rate


def test_a_core_that_does_not_fit_is_named(dataloaders, parent_core):
    with pytest.raises(ValueError, match=r"pretrained_core does not fit this core: features\.layer0\.conv\.weight"):
        stacked_core_full_gauss_readout(dataloaders, 2, pretrained_core=parent_core, **{**MODEL, "hidden_channels": 8})
    incomplete = {name: value for name, value in parent_core.items() if "layer1" not in name}
    with pytest.raises(ValueError, match="layer1.*missing"):
        stacked_core_full_gauss_readout(dataloaders, 2, pretrained_core=incomplete, **MODEL)
