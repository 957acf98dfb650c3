"""Registered functions for the fault-injection tests (allowed through V1FABRIK_ALLOWED_MODULES).

``slow_trainer`` is ``quick_trainer`` with a pause in every epoch, so a test can kill or stop a
worker mid-epoch; it logs the epoch each run starts from, so a test can prove a resume.
The other functions break the function contracts on purpose.
"""
import os
import time

from pipeline.registry import register
from tests.integration.fabrik_functions import quick_trainer

# One line per training run: "<model_hash>-<seed> <pid> <first epoch>".
START_LOG_ENV = "V1FABRIK_TEST_START_LOG"


@register("trainer")
def slow_trainer(model, dataloaders, seed, uid=None, cb=None, epoch_s=0.5, resume_state=None, **config):
    """``quick_trainer`` that sleeps ``epoch_s`` seconds inside every epoch (before its checkpoint)."""
    first = int(resume_state["epoch"]) + 1 if resume_state else 1
    if os.environ.get(START_LOG_ENV):
        with open(os.environ[START_LOG_ENV], "a") as log:
            log.write(f"{uid['model_hash']}-{seed} {os.getpid()} {first}\n")

    def slow_cb(**kwargs):
        time.sleep(epoch_s)
        cb(**kwargs)

    return quick_trainer(model, dataloaders, seed, uid=uid, cb=slow_cb, resume_state=resume_state, **config)


@register("trainer")
def nan_trainer(model, dataloaders, seed, uid=None, cb=None):
    """A trainer whose loss is NaN: runs standard_trainer on a model whose weights are NaN."""
    from pipeline.training import standard_trainer

    for parameter in model.parameters():
        parameter.data.fill_(float("nan"))
    return standard_trainer(model, dataloaders, seed, uid=uid, cb=cb, max_iter=1, verbose=False, device="cpu")


@register("trainer")
def list_trainer(model, dataloaders, seed, uid=None, cb=None):
    """Returns a list instead of (score, output, state_dict)."""
    return [0.5, {}]


@register("dataset")
def dict_dataset(seed=None):
    """Returns a list instead of {tier: {data_key: loader}}."""
    return [1, 2, 3]


@register("model")
def string_model(dataloaders, seed=None):
    """Returns a string instead of a torch module."""
    return "not a model"
