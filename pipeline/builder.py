"""nnfabrik's builder API: build dataloaders, models and trainers from the function names rows store.

Function names come from database rows that any lab member can write, so every name goes through
:func:`resolve_fn` with its role: only functions registered for that role in :mod:`pipeline.registry`
come out, and nothing outside the allowed modules is imported on the way.
"""
import functools

import numpy as np
import torch

from .registry import ALLOWED_MODULES_ENV, UnregisteredFunctionError, resolve  # noqa: F401  (part of this API)

# The names these errors had before the registry; one class now.
DisallowedFunctionError = UnknownFunctionError = UnregisteredFunctionError


def fn_name(fn) -> str:
    """The dotted import path of ``fn`` (a callable or already a string)."""
    if isinstance(fn, str):
        return fn
    if not callable(fn):
        raise TypeError(f"expected a function or its dotted name, got {type(fn).__name__} {fn!r}")
    return f"{fn.__module__}.{fn.__qualname__}"


def resolve_fn(name, role: str):
    """The function registered as ``name`` (dotted path, or the function itself) for ``role``."""
    return resolve(fn_name(name), role)


class ContractError(TypeError):
    """A registered function returned something other than its contract says."""


def _check_dataloaders(name, dataloaders):
    if not isinstance(dataloaders, dict) or not all(isinstance(v, dict) for v in dataloaders.values()):
        raise ContractError(f"dataset function {fn_name(name)!r} returned a {type(dataloaders).__name__}; "
                            "it must return {tier: {data_key: DataLoader}}")
    return dataloaders


def check_trainer_result(name, result):
    """``(score, output, state_dict)`` from a trainer's return value, or ContractError naming the trainer."""
    if not (isinstance(result, tuple) and len(result) == 3 and isinstance(result[2], dict)):
        raise ContractError(f"trainer {fn_name(name)!r} returned {type(result).__name__} {result!r:.60}; "
                            "it must return (score, output, state_dict)")
    score, output, state_dict = result
    if isinstance(score, bool) or not isinstance(score, (int, float, np.number)) and not (
            torch.is_tensor(score) and score.numel() == 1):
        raise ContractError(f"trainer {fn_name(name)!r} returned a {type(score).__name__} score; it must be a number")
    return float(score), output, state_dict


def get_data(dataset_fn, dataset_config):
    """Call the dataset function with its config: ``dataset_fn(**dataset_config)``."""
    return _check_dataloaders(dataset_fn, resolve_fn(dataset_fn, "dataset")(**dataset_config))


def get_model(model_fn, model_config, dataloaders=None, seed=None, state_dict=None, strict=True, data_info=None):
    """Build ``model_fn(dataloaders, seed=seed, **model_config)``; load ``state_dict`` if given.

    With ``data_info`` (:func:`pipeline.datasets.data_info.data_info`) the function is called with
    ``data_info=data_info`` as well, as nnfabrik does, so it needs no dataloaders.
    """
    extra = {} if data_info is None else {"data_info": data_info}
    model = resolve_fn(model_fn, "model")(dataloaders, seed=seed, **model_config, **extra)
    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"model function {fn_name(model_fn)!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if state_dict is not None:
        model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in state_dict.items()}, strict=strict)
    return model


def get_trainer(trainer_fn, trainer_config=None):
    """The trainer function, with ``trainer_config`` bound as keyword arguments when given."""
    fn = resolve_fn(trainer_fn, "trainer")
    return functools.partial(fn, **trainer_config) if trainer_config is not None else fn


def get_all_parts(
    dataset_fn,
    dataset_config,
    model_fn,
    model_config,
    seed=None,
    state_dict=None,
    strict=True,
    trainer_fn=None,
    trainer_config=None,
):
    """Build ``(dataloaders, model)``, plus the trainer when ``trainer_fn`` is given.

    As in nnfabrik, ``seed`` is passed to the dataset function unless its config sets one.
    Every name is checked against its role before any function is called.
    """
    for name, role in ((dataset_fn, "dataset"), (model_fn, "model"), (trainer_fn, "trainer")):
        if name is not None:
            resolve_fn(name, role)
    if seed is not None and "seed" not in dataset_config:
        dataset_config = {**dataset_config, "seed": seed}
    dataloaders = get_data(dataset_fn, dataset_config)
    model = get_model(model_fn, model_config, dataloaders, seed=seed, state_dict=state_dict, strict=strict)
    if trainer_fn is None:
        return dataloaders, model
    return dataloaders, model, get_trainer(trainer_fn, trainer_config)
