"""standard_trainer on the tiny synthetic dataset with a small baseline-shaped model.

Covers determinism, exact resume in a fresh process, the schedule against neuralpredictors'
early stopping, the loss against the reference objective, the state's flat-array round trip and errors.
"""
import contextlib
import importlib
import io
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.datasets import static_loaders
from pipeline.datasets.synthetic import PRESETS, generate
from pipeline.models import stacked_core_full_gauss_readout
from pipeline.training import NonFiniteLossError, standard_trainer, state_from_arrays, state_to_arrays
from pipeline.training.losses import PoissonLoss, batch_objective
from tests.reference import np_ref
from tests.unit.models_reference import reference_model

REPO = Path(__file__).resolve().parents[2]
MODEL_CONFIG = dict(
    input_kern=5, hidden_kern=3, hidden_channels=8, layers=2, depth_separable=True, stack=-1,
    gamma_input=6.3831, gamma_readout=0.0076, gauss_type="full", shifter=True,
    grid_mean_predictor={"type": "cortex", "input_dimensions": 2, "hidden_layers": 1, "hidden_features": 30,
                         "final_tanh": True},
)
# patience 1 so that 6 epochs contain rollbacks and LR cuts
TRAINER_CONFIG = dict(max_iter=6, patience=1, lr_decay_steps=4, lr_init=0.02, device="cpu", verbose=False)


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("tiny"), **PRESETS["tiny"], seed=3)


def build(dataset_path, seed=7):
    dataloaders = static_loaders([str(dataset_path)], batch_size=16, include_eye_position=True)
    return dataloaders, stacked_core_full_gauss_readout(dataloaders, seed, **MODEL_CONFIG)


def train(dataset_path, **config):
    dataloaders, model = build(dataset_path)
    return standard_trainer(model, dataloaders, seed=11, **{**TRAINER_CONFIG, **config})


def run_in_fresh_process(dataset_path, checkpoint, weights_out):
    """Resume from ``checkpoint`` (.npz) in a new Python process; saves the final weights as .npz."""
    torch.set_num_threads(1)
    state = state_from_arrays(dict(np.load(checkpoint, allow_pickle=False)))
    score, output, weights = train(dataset_path, resume_state=state)
    np.savez(weights_out, score=score, **{k: v.numpy() for k, v in weights.items()})


def test_resume_in_fresh_process_is_bit_exact(dataset_path, tmp_path):
    torch.set_num_threads(1)
    score, output, weights = train(dataset_path)
    again_score, _, again = train(dataset_path)
    assert again_score == score and all(torch.equal(again[k], weights[k]) for k in weights), "not deterministic"
    history = output["history"]
    assert history["epoch"] == [1, 2, 3, 4, 5, 6]
    assert any(history["rollback"]) and len(set(history["lr"])) > 1, "the run should exercise rollbacks and LR cuts"

    class Preempted(Exception):
        pass

    def checkpoint_then_preempt(uid, epoch, model, state, **_):
        if epoch == 3:
            np.savez(tmp_path / "epoch3.npz", **state_to_arrays(state))
            raise Preempted

    with pytest.raises(Preempted):
        train(dataset_path, cb=checkpoint_then_preempt)
    code = (
        "import sys; from tests.unit.test_trainer import run_in_fresh_process as run; "
        "run(sys.argv[1], sys.argv[2], sys.argv[3])"
    )
    args = [str(dataset_path), str(tmp_path / "epoch3.npz"), str(tmp_path / "resumed.npz")]
    subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, check=True, timeout=300)
    resumed = np.load(tmp_path / "resumed.npz")
    assert float(resumed["score"]) == score
    for name, tensor in weights.items():
        np.testing.assert_array_equal(resumed[name], tensor.numpy(), err_msg=name)


def test_callback_can_supply_the_resume_state(dataset_path):
    states = {}

    def keep(uid, epoch, model, state, **_):
        states[epoch] = state

    score, output, _ = train(dataset_path, cb=keep, max_iter=3)
    assert list(states) == [None, 1, 2, 3]  # None: the call before training, asking for a state
    resumed_score, resumed_output, _ = train(dataset_path, cb=lambda epoch, **_: states[2] if epoch is None else None, max_iter=3)
    assert resumed_score == score
    assert resumed_output["history"]["validation_corr"] == output["history"]["validation_corr"]


def test_a_callback_drawing_random_numbers_leaves_the_training_unchanged(dataset_path):
    """A callback that scores the model (a DataLoader iterator draws a seed) must not move the shuffles after it."""
    torch.set_num_threads(1)
    _, _, plain = train(dataset_path, max_iter=3)
    dataloaders, _ = build(dataset_path)

    def score_and_draw(epoch, **_):
        next(iter(dataloaders["test"][next(iter(dataloaders["test"]))]))
        torch.rand(3), np.random.rand(3), random.random()

    _, _, observed = train(dataset_path, max_iter=3, cb=score_and_draw)
    for name, tensor in plain.items():
        assert torch.equal(observed[name], tensor), name


def test_history_follows_the_reference_schedule(dataset_path):
    """Replaying the run's validation scores through neuralpredictors' early stopping gives the same epochs, LRs, rollbacks."""
    _, output, _ = train(dataset_path, max_iter=12, patience=2, lr_decay_steps=3)
    history = output["history"]
    scores = [output["initial_validation_corr"]] + history["validation_corr"]
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=TRAINER_CONFIG["lr_init"])
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.3, patience=2, threshold=1e-6, threshold_mode="abs", min_lr=1e-4
    )
    early_stopping = importlib.import_module("neuralpredictors.training.early_stopping").early_stopping
    state = {"epoch": 0}  # the "weights": which epoch produced them
    model.register_buffer("produced_by", torch.zeros(()))
    epochs, lrs, rollbacks = [], [], []
    for epoch, _ in early_stopping(
        model, lambda m: scores[int(m.produced_by)], interval=1, patience=2, max_iter=12, tolerance=1e-6,
        scheduler=scheduler, lr_decay_steps=3,
    ):
        rollbacks.append(int(model.produced_by) != state["epoch"])
        epochs.append(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
        model.produced_by.fill_(epoch)
        state["epoch"] = epoch
    assert epochs == history["epoch"]
    assert lrs == history["lr"]
    assert rollbacks[0] is False and rollbacks[1:] == history["rollback"][:-1]
    assert output["validation_corr"] == pytest.approx(max(scores), abs=1e-6), "the best state is restored"


def test_loss_and_regularizers_equal_the_reference_objective(dataset_path):
    dataloaders, model = build(dataset_path)
    reference = reference_model(dataloaders, 7, **MODEL_CONFIG)
    batch = next(iter(next(iter(dataloaders["train"].values()))))
    data_key = next(iter(dataloaders["train"]))
    length = len(dataloaders["train"][data_key].dataset)
    model.eval(), reference.eval()
    ours = batch_objective(model, batch._asdict(), data_key, PoissonLoss(), length)
    criterion = np_ref.measures.modules.PoissonLoss(avg=False)
    out = reference(batch.images, data_key=data_key, **{k: v for k, v in batch._asdict().items() if k != "images"})
    regularizers = reference.core.regularizer() + reference.readout.regularizer(data_key)
    expected = math.sqrt(length / len(batch.images)) * criterion(out, batch.responses) + regularizers
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (model.core.regularizer() + model.readout.regularizer(data_key)).item() == pytest.approx(regularizers.item(), rel=1e-6)


@pytest.mark.parametrize("avg", [False, True])
@pytest.mark.parametrize("per_neuron", [False, True])
def test_poisson_loss_equals_reference(avg, per_neuron):
    generator = torch.Generator().manual_seed(0)
    output = torch.rand(5, 3, 7, generator=generator) + 0.1
    target = torch.poisson(torch.rand(5, 3, 7, generator=generator) * 4, generator=generator)
    with pytest.warns(UserWarning) if avg else contextlib.nullcontext():
        reference = np_ref.measures.modules.PoissonLoss(per_neuron=per_neuron, avg=avg)
    torch.testing.assert_close(PoissonLoss(per_neuron=per_neuron, avg=avg)(output, target), reference(output, target), rtol=0, atol=0)


def test_state_round_trips_exactly_through_arrays():
    state = {
        "model": {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3)},
        "optimizer": {"state": {0: {"step": torch.tensor(2.0)}}, "param_groups": [{"betas": (0.9, 0.999), "foreach": None, "amsgrad": False, "params": [0]}]},
        "scheduler": {"best": -math.inf, "mode": "max", "min_lrs": [1e-4], "threshold": 1e-6},
        "rng": {"python": (3, tuple(range(5)), None), "numpy": ("MT19937", np.arange(4, dtype=np.uint32), 2, 0, 0.0)},
        "history": {"validation_corr": [0.1, math.nan], "rollback": [False, True]},
    }
    arrays = state_to_arrays(state)
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    back = state_from_arrays(dict(np.load(buffer, allow_pickle=False)))
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert list(back["optimizer"]["state"]) == [0] and back["scheduler"]["best"] == -math.inf
    assert back["rng"]["python"] == (3, (0, 1, 2, 3, 4), None)
    assert back["rng"]["numpy"][1].dtype == np.uint32
    assert back["model"]["n"].dtype == torch.int64 and torch.equal(back["model"]["w"], state["model"]["w"])
    assert math.isnan(back["history"]["validation_corr"][1]) and back["history"]["rollback"] == [False, True]
    with pytest.raises(TypeError, match="set"):
        state_to_arrays({"bad": {1, 2}})
    with pytest.raises(ValueError, match="__structure__"):
        state_from_arrays({"a0": np.zeros(2)})


def test_nan_loss_names_the_epoch(dataset_path):
    dataloaders, model = build(dataset_path)
    with torch.no_grad():
        model.readout[next(iter(dataloaders["train"]))].bias.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        standard_trainer(model, dataloaders, seed=1, **TRAINER_CONFIG)


def test_bad_config_is_named(dataset_path):
    dataloaders, model = build(dataset_path)
    with pytest.raises(ValueError, match="'validation'"):
        standard_trainer(model, {"train": dataloaders["train"]}, seed=1)
    with pytest.raises(ValueError, match="loss_function 'MSE'"):
        standard_trainer(model, dataloaders, seed=1, loss_function="MSE")
    with pytest.raises(ValueError, match="device 'tpu'"):
        standard_trainer(model, dataloaders, seed=1, device="tpu")
    with pytest.raises(ValueError, match="format"):
        standard_trainer(model, dataloaders, seed=1, device="cpu", resume_state={"epoch": 3})
