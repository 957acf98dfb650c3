"""``standard_trainer``: sensorium's trainer for the baseline CNN, resumable from any epoch."""
import functools
import logging
import math
import time

import torch
from tqdm.auto import tqdm

from ..registry import register
from ..utility import scores
from ..utility.allocator import keep_freed_memory
from ..utility.devices import move_to_device, resolve_device
from ..utility.seeding import set_random_seed
from .checkpoints import capture_rng, copy_state_dict, restore_rng
from .early_stopping import Action, EarlyStopping
from .losses import LOSSES, batch_objective

logger = logging.getLogger(__name__)

STOP_FUNCTIONS = {"get_correlations": scores.get_correlations}
HISTORY_FIELDS = ("epoch", "train_loss", "validation_corr", "lr", "seconds", "rollback")
STATE_FORMAT = 1


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite."""


def cycle(loader):
    """Batches of ``loader`` forever; a fresh iterator (a new shuffle) each time it runs out."""
    while True:
        yield from loader


def round_robin(loaders):
    """``(data_key, batch)`` alternating over the data keys until the longest loader is exhausted.

    Shorter loaders start over within the epoch (neuralpredictors' ``LongCycler``).
    """
    cycles = {k: cycle(loader) for k, loader in loaders.items()}
    for _ in range(max(len(loader) for loader in loaders.values())):
        for data_key, batches in cycles.items():
            yield data_key, next(batches)


def _to_cpu(tree):
    """Copy of a nested state with every tensor cloned onto the CPU."""
    if torch.is_tensor(tree):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_cpu(v) for v in tree)
    return tree


def _tiers(dataloaders):
    missing = [tier for tier in ("train", "validation") if tier not in dataloaders]
    if missing:
        raise ValueError(f"the trainer needs dataloader tiers 'train' and 'validation'; missing: {missing}")
    return dataloaders["train"], dataloaders["validation"]


def _choose(registry, name, what):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r}; available: {sorted(registry)}")
    return registry[name]


@register("trainer", aliases=["pipeline.training.standard_trainer"])
def standard_trainer(
    model,
    dataloaders,
    seed,
    uid=None,
    cb=None,
    *,
    avg_loss=False,
    scale_loss=True,
    loss_function="PoissonLoss",
    stop_function="get_correlations",
    loss_accum_batch_n=None,
    device="auto",
    verbose=True,
    interval=1,
    patience=5,
    epoch=0,
    lr_init=0.005,
    max_iter=200,
    maximize=True,
    tolerance=1e-6,
    restore_best=True,
    lr_decay_steps=3,
    lr_decay_factor=0.3,
    min_lr=1e-4,
    detach_core=False,
    core_lr=None,
    resume_state=None,
):
    """Train ``model`` with Adam, a plateau LR schedule and early stopping on the validation correlation.

    Same semantics and defaults as sensorium's ``standard_trainer`` (see README), except
    ``device="auto"``, no ``track_training`` (the history is always kept) and resumable state.

    Args:
        model: an encoder with ``.core.regularizer()`` and ``.readout.regularizer(data_key)``.
        dataloaders: ``{tier: {data_key: DataLoader}}`` with at least ``train`` and ``validation``.
        seed: seeds every RNG (after the model moves to the device).
        uid: passed through to ``cb`` (nnfabrik passes the job's primary key).
        cb: callback. Called once before training as ``cb(uid=, epoch=None, model=, state=None)``:
            a returned state (see ``resume_state``) resumes from it. Then after every epoch as
            ``cb(uid=, epoch=, model=, state=, score=)`` with the state to resume from that epoch and the
            epoch's validation correlation (NaN when not evaluated; a study's pruner reads it). The RNGs are
            restored after each call, so a callback that scores the model leaves the training unchanged.
        verbose: show a tqdm progress bar per epoch (a log line per epoch is always written).
        interval, patience, epoch, max_iter, maximize, tolerance, restore_best, lr_decay_steps:
            early stopping, as in neuralpredictors' ``early_stopping`` (``epoch`` is the start).
        lr_decay_factor, min_lr: the ReduceLROnPlateau factor and floor (its patience and
            threshold are ``patience`` and ``tolerance``).
        loss_accum_batch_n: batches per optimizer step; default one per data key (a full cycle).
        core_lr: learning rate of ``model.core``'s parameters when fine-tuning a transferred core
            (None: ``lr_init`` like the rest); the plateau schedule scales both rates.
        resume_state: a state from the callback (plain data; see ``checkpoints.state_to_arrays``).

    Returns:
        (score, output, state_dict): the final mean validation correlation; ``output`` with the
        per-epoch ``history`` (lists: epoch, train_loss = mean batch objective, validation_corr
        (NaN on epochs without evaluation when interval > 1), lr, seconds, rollback),
        ``initial_validation_corr`` (untrained) and ``validation_corr``; the (best) model weights.
    """
    device = resolve_device(device)
    train_loaders, validation_loaders = _tiers(dataloaders)
    criterion = _choose(LOSSES, loss_function, "loss_function")(avg=avg_loss)
    objective = functools.partial(
        _choose(STOP_FUNCTIONS, stop_function, "stop_function"),
        dataloaders=validation_loaders,
        device=device,
        per_neuron=False,
    )
    model.to(device)
    if device.type == "cpu":
        keep_freed_memory()  # large activations would otherwise be faulted in afresh every step
    set_random_seed(seed)
    model.train()
    optimizer = torch.optim.Adam(_parameter_groups(model, core_lr), lr=lr_init)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="max" if maximize else "min",
        factor=lr_decay_factor,
        patience=patience,
        threshold=tolerance,
        threshold_mode="abs",
        min_lr=min_lr,
    )
    stopper = EarlyStopping(patience, max_iter, tolerance, lr_decay_steps, interval, maximize, epoch=epoch)
    if resume_state is None and cb is not None:
        resume_state = _call_isolated(cb, capture_rng(train_loaders), train_loaders, uid=uid, epoch=None, model=model,
                                      state=None)
    if resume_state is None:
        initial_corr = objective(model)
        stopper.begin(initial_corr)
        best_state = copy_state_dict(model)
        history = {field: [] for field in HISTORY_FIELDS}
    else:
        initial_corr, best_state, history = _resume(resume_state, model, optimizer, scheduler, stopper, train_loaders)
        logger.info("resuming after epoch %d", stopper.epoch)

    dataset_lengths = {k: len(loader.dataset) for k, loader in train_loaders.items()}
    step_every = len(train_loaders) if loss_accum_batch_n is None else loss_accum_batch_n
    n_batches = len(train_loaders) * max(len(loader) for loader in train_loaders.values())
    while stopper.running:
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad()
        total_loss = torch.zeros((), device=device)
        batches = tqdm(round_robin(train_loaders), total=n_batches, desc=f"Epoch {stopper.epoch + 1}", disable=not verbose)
        for batch_no, (data_key, batch) in enumerate(batches):
            fields = move_to_device(batch._asdict(), device)
            loss = batch_objective(
                model, fields, data_key, criterion, dataset_lengths[data_key], scale_loss, detach_core
            )
            loss.backward()
            total_loss += loss.detach()
            if (batch_no + 1) % step_every == 0:
                optimizer.step()
                optimizer.zero_grad()
        train_loss = total_loss.item() / n_batches
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"the training loss became {train_loss} in epoch {stopper.epoch + 1}; "
                f"lower lr_init (now {lr_init}) or check the data for NaN/inf"
            )

        validation_corr, action = math.nan, Action.CONTINUE
        if stopper.epoch_done():
            validation_corr = objective(model)
            scheduler.step(validation_corr)
            improved, action = stopper.update(validation_corr)
            if improved:
                best_state = copy_state_dict(model)
            if action is Action.ROLLBACK and restore_best:
                model.load_state_dict(best_state)
        seconds = time.perf_counter() - started
        for field, value in zip(
            HISTORY_FIELDS, (stopper.epoch, train_loss, validation_corr, lr, seconds, action is Action.ROLLBACK)
        ):
            history[field].append(value)
        logger.info(
            "epoch %d: train loss %.5g, validation correlation %.5f, lr %.3g, %.1f s%s",
            stopper.epoch, train_loss, validation_corr, lr, seconds,
            ", rolled back to the best state" if action is Action.ROLLBACK and restore_best else "",
        )
        if cb is not None:
            state = _capture(model, optimizer, scheduler, stopper, initial_corr, best_state, history, train_loaders)
            _call_isolated(cb, state["rng"], train_loaders, uid=uid, epoch=stopper.epoch, model=model, state=state,
                           score=validation_corr)

    if restore_best:
        model.load_state_dict(best_state)
    model.eval()
    score = objective(model)
    if not math.isfinite(score):
        raise NonFiniteLossError(f"the final validation correlation is {score}")
    output = {"history": history, "initial_validation_corr": initial_corr, "validation_corr": score}
    return score, output, model.state_dict()


def _parameter_groups(model, core_lr):
    """All parameters in one group, or, with ``core_lr``, the core's in a second group of their own rate.

    The history's ``lr`` is the first group's: the readouts' and shifters'.
    """
    if core_lr is None:
        return model.parameters()
    core = {id(parameter) for parameter in model.core.parameters()}
    rest = [parameter for parameter in model.parameters() if id(parameter) not in core]
    return [{"params": rest}, {"params": list(model.core.parameters()), "lr": core_lr}]


def _call_isolated(cb, rng, train_loaders, **kwargs):
    """Call ``cb(**kwargs)``, then put the RNGs back at ``rng``, so nothing the callback draws changes the training.

    A DataLoader iterator draws a seed from torch's RNG, so merely scoring the model would otherwise
    move every later shuffle, and a run resumed from ``rng`` would part from the uninterrupted one.
    """
    try:
        return cb(**kwargs)
    finally:
        restore_rng(rng, train_loaders)


def _capture(model, optimizer, scheduler, stopper, initial_corr, best_state, history, train_loaders):
    """Everything needed to continue exactly after this epoch, as plain data on the CPU."""
    return {
        "format": STATE_FORMAT,
        "model": copy_state_dict(model),
        "optimizer": _to_cpu(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "early_stopping": stopper.state_dict(),
        "initial_validation_corr": initial_corr,
        "best_state": best_state,
        "history": {field: list(values) for field, values in history.items()},
        "rng": capture_rng(train_loaders),
    }


def _resume(state, model, optimizer, scheduler, stopper, train_loaders):
    """Load a captured state into the training objects; returns (initial_corr, best_state, history)."""
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"resume_state is not a training state of format {STATE_FORMAT} (from the trainer's callback)")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    stopper.load_state_dict(state["early_stopping"])
    restore_rng(state["rng"], train_loaders)
    history = {field: list(state["history"][field]) for field in HISTORY_FIELDS}
    return state["initial_validation_corr"], state["best_state"], history
