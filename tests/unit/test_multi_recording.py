"""Training on two recordings at once, one epoch, against sensorium's trainer loop on neuralpredictors 0.3.0.

Two synthetic recordings of different sizes (4 and 3 training batches, 40 and 30 neurons) share one
core; each has its own readout and shifter. The reference epoch is sensorium's ``standard_trainer``
(spec §3): ``LongCycler`` over the training loaders, ``sqrt(len(dataset) / batch) · PoissonLoss +
regularizers`` per batch, an Adam step after every cycle over the data keys.
"""
import math
import random

import numpy as np
import pytest
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.synthetic import PRESETS, generate
from pipeline.models import stacked_core_full_gauss_readout
from pipeline.training import standard_trainer
from tests.reference import np_ref
from tests.unit.models_reference import SEED_GRID_PREDICTOR, reference_model

MODEL = dict(hidden_channels=6, layers=2, input_kern=5, hidden_kern=3, depth_separable=True, shifter=True,
             init_sigma=0.3, gamma_readout=0.05, gamma_input=2.0, grid_mean_predictor=SEED_GRID_PREDICTOR)
LR = 0.005


@pytest.fixture(scope="module")
def dataloaders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("two")
    paths = [generate(folder, **PRESETS["tiny"], seed=1),
             generate(folder, **{**PRESETS["tiny"], "n_train": 44, "n_neurons": 30}, seed=2)]
    return static_loaders([str(p) for p in paths], batch_size=16, include_eye_position=True, scale=0.5)


def record_training_calls(model):
    """``[(data_key, batch size)]`` of every training-mode readout call, appended as they happen."""
    calls = []
    for key, readout in model.readout.items():
        readout.register_forward_hook(
            lambda module, args, out, key=key: calls.append((key, len(out))) if module.training else None)
    return calls


def reference_epoch(model, dataloaders, seed):
    """One epoch of sensorium's standard_trainer on ``model``; returns the mean batch loss."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    model.train()
    criterion = np_ref.measures.modules.PoissonLoss(avg=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    model.eval()  # early stopping scores the untrained model first: one pass over each validation loader
    with torch.no_grad():
        for key, loader in dataloaders["validation"].items():
            for batch in loader:
                model(batch.images, data_key=key, pupil_center=batch.pupil_center)
    model.train()
    train = dataloaders["train"]
    losses = []
    for batch_no, (key, batch) in enumerate(np_ref.training.cyclers.LongCycler(train)):
        scale = math.sqrt(len(train[key].dataset) / batch.images.shape[0])
        regularizers = model.core.regularizer() + model.readout.regularizer(key)
        output = model(batch.images, data_key=key, **batch._asdict())
        loss = scale * criterion(output, batch.responses) + regularizers
        loss.backward()
        losses.append(loss.item())
        if (batch_no + 1) % len(train) == 0:
            optimizer.step()
            optimizer.zero_grad()
    return float(np.mean(losses))


def test_one_epoch_on_two_recordings_equals_the_reference(dataloaders):
    torch.set_num_threads(1)
    ours = stacked_core_full_gauss_readout(dataloaders, 7, **MODEL)
    reference = reference_model(dataloaders, 7, **MODEL)
    for name, value in reference.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    initial = {name: value.clone() for name, value in reference.state_dict().items()}
    ours_calls, reference_calls = record_training_calls(ours), record_training_calls(reference)

    _, output, _ = standard_trainer(ours, dataloaders, seed=11, max_iter=1, lr_init=LR, restore_best=False,
                                    device="cpu", verbose=False)
    reference_loss = reference_epoch(reference, dataloaders, seed=11)

    keys = list(dataloaders["train"])
    # 2 keys x 4 batches: the 3-batch recording starts over (a fresh shuffle) for its 4th batch
    assert [key for key, _ in ours_calls] == keys * 4
    assert [size for key, size in ours_calls if key == keys[1]] == [16, 16, 12, 16]
    assert ours_calls == reference_calls
    # the mean batch loss carries each recording's own scale sqrt(len(dataset) / batch)
    assert len({len(loader.dataset) for loader in dataloaders["train"].values()}) == 2
    assert output["history"]["train_loss"][0] == pytest.approx(reference_loss, rel=1e-5)
    for name, value in reference.state_dict().items():  # both moved the same way, up to float32 rounding
        if value.dtype.is_floating_point:
            moved = (value - initial[name]).abs().max()  # 0 for constant buffers (the Laplace filter)
            assert (ours.state_dict()[name] - value).abs().max() <= 1e-4 * moved, name
        else:
            assert torch.equal(ours.state_dict()[name], value), name
