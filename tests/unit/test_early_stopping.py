"""The early-stopping state machine + plateau scheduler against neuralpredictors 0.3.0's generator.

Both are driven by a scripted sequence of validation scores: a one-number "model" whose weight is
the epoch that produced it, so the score of a state is ``scores[weight]`` and rollbacks are visible.
"""
import importlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.training.early_stopping import Action, EarlyStopping
from tests.reference import np_ref  # noqa: F401  (installs the import shims)

reference_early_stopping = importlib.import_module("neuralpredictors.training.early_stopping").early_stopping
LR = 0.009


class EpochModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def train_epoch(self, epoch):
        with torch.no_grad():
            self.weight.fill_(epoch)


def optimizer_and_scheduler(model, patience, tolerance):
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=0.3, patience=patience, threshold=tolerance, threshold_mode="abs", min_lr=1e-4
    )
    return optimizer, scheduler


def run_reference(scores, patience, max_iter, lr_decay_steps, interval, tolerance):
    """[(epoch, weight at its start, lr during it)], final weight."""
    model = EpochModel()
    optimizer, scheduler = optimizer_and_scheduler(model, patience, tolerance)
    log = []
    stopper = reference_early_stopping(
        model, lambda m: scores[int(m.weight)], interval=interval, patience=patience, max_iter=max_iter,
        tolerance=tolerance, scheduler=scheduler, lr_decay_steps=lr_decay_steps,
    )
    for epoch, _ in stopper:
        log.append((epoch, int(model.weight), optimizer.param_groups[0]["lr"]))
        model.train_epoch(epoch)
    return log, int(model.weight)


def run_ours(scores, patience, max_iter, lr_decay_steps, interval, tolerance):
    """The same, with the glue of ``standard_trainer``'s epoch loop."""
    model = EpochModel()
    optimizer, scheduler = optimizer_and_scheduler(model, patience, tolerance)
    stopper = EarlyStopping(patience, max_iter, tolerance, lr_decay_steps, interval)
    stopper.begin(scores[0])
    best_state, log = 0, []
    while stopper.running:
        log.append((stopper.epoch + 1, int(model.weight), optimizer.param_groups[0]["lr"]))
        model.train_epoch(stopper.epoch + 1)
        if stopper.epoch_done():
            score = scores[int(model.weight)]
            scheduler.step(score)
            improved, action = stopper.update(score)
            best_state = int(model.weight) if improved else best_state
            if action is Action.ROLLBACK:
                model.train_epoch(best_state)
    model.train_epoch(best_state)
    return log, int(model.weight)


SCORE_VALUES = [0.1, 0.2, 0.3, 0.3 + 5e-7, 0.3 + 2e-6, 0.4, 0.45, math.nan]


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    patience=st.integers(1, 4),
    max_iter=st.integers(1, 30),
    lr_decay_steps=st.integers(1, 4),
    interval=st.integers(1, 3),
)
def test_schedule_matches_reference(data, patience, max_iter, lr_decay_steps, interval):
    n = max_iter + interval + 1
    scores = data.draw(st.lists(st.sampled_from(SCORE_VALUES), min_size=n, max_size=n), label="scores")
    args = (scores, patience, max_iter, lr_decay_steps, interval, 1e-6)
    assert run_ours(*args) == run_reference(*args)


def test_seed_schedule_with_rollbacks_and_lr_cuts():
    """A hand-made run: improvements, a plateau, rollbacks, the LR cut on the 6th bad epoch, the floor."""
    scores = [0.0] + [0.1 * i for i in range(1, 6)] + [0.4] * 60
    log, final = run_ours(scores, patience=5, max_iter=200, lr_decay_steps=4, interval=1, tolerance=1e-6)
    assert (log, final) == run_reference(scores, 5, 200, 4, 1, 1e-6)
    assert final == 5, "the best state (epoch 5) is restored"
    assert [epoch for epoch, weight, _ in log if weight == 5 and epoch > 6] == [11, 16, 21]  # after each rollback
    assert [round(lr, 8) for _, _, lr in log][10:12] == [0.009, 0.0027]
    assert len(log) == 5 + 4 * 5


def test_state_round_trip_resumes_the_schedule():
    scores = [0.0, 0.1, 0.2, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3]
    straight = EarlyStopping(patience=2, max_iter=8, lr_decay_steps=3)
    straight.begin(scores[0])
    resumed, actions = None, []
    for epoch in range(1, 9):
        if not straight.running:
            break
        straight.epoch_done()
        actions.append(straight.update(scores[epoch]))
        if epoch == 3:
            resumed = EarlyStopping(patience=2, max_iter=8, lr_decay_steps=3)
            resumed.load_state_dict(straight.state_dict())
    resumed_actions = actions[:3]
    while resumed.running:
        resumed.epoch_done()
        resumed_actions.append(resumed.update(scores[resumed.epoch]))
    assert resumed_actions == actions and resumed.state_dict() == straight.state_dict()
    assert Action.ROLLBACK in [a for _, a in actions]


@pytest.mark.parametrize("name", ["patience", "max_iter", "lr_decay_steps", "interval"])
def test_bad_settings_are_named(name):
    with pytest.raises(ValueError, match=name):
        EarlyStopping(**{name: 0})
