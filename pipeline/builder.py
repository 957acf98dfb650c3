"""nnfabrik's builder API: resolve registered function names and build dataloaders, models, trainers.

Function names come from database rows that any lab member can write, so :func:`resolve_fn` only
imports names under allowed module prefixes: ``pipeline.`` plus the comma-separated prefixes in
``$V1FABRIK_ALLOWED_MODULES`` (e.g. ``mylab.models,mylab.data``). The check happens before any
import, and again on the resolved object's own ``__module__`` so a name cannot reach a function
re-exported from elsewhere (``pipeline.something.system`` pointing at ``os.system``).
Every other way this project turns a name into a function goes through this module.
"""
import functools
import importlib
import os
import re

import numpy as np
import torch

ALLOWED_MODULES_ENV = "V1FABRIK_ALLOWED_MODULES"
DEFAULT_ALLOWED = ("pipeline",)
_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class DisallowedFunctionError(ValueError):
    """A function name lies outside the allowed module prefixes."""


class UnknownFunctionError(ValueError):
    """A function name does not resolve to anything importable."""


def allowed_prefixes() -> tuple:
    """The allowed module prefixes: ``pipeline`` plus those in $V1FABRIK_ALLOWED_MODULES."""
    extra = os.environ.get(ALLOWED_MODULES_ENV, "")
    return DEFAULT_ALLOWED + tuple(p.strip().rstrip(".") for p in extra.split(",") if p.strip())


def _is_allowed(module_name: str) -> bool:
    return any(module_name == p or module_name.startswith(p + ".") for p in allowed_prefixes())


def fn_name(fn) -> str:
    """The dotted import path of ``fn`` (a callable or already a string)."""
    if isinstance(fn, str):
        return fn
    if not callable(fn):
        raise TypeError(f"expected a function or its dotted name, got {type(fn).__name__} {fn!r}")
    return f"{fn.__module__}.{fn.__qualname__}"


def resolve_fn(name):
    """Import the function ``name`` (dotted path, or the function itself) after the allowlist check."""
    name = fn_name(name)
    if not _DOTTED_NAME.match(name):
        raise UnknownFunctionError(f"{name!r} is not a dotted function name like 'pipeline.models.fn'")
    module_name, attr = name.rsplit(".", 1)
    if not _is_allowed(module_name):
        raise DisallowedFunctionError(
            f"function {name!r} is outside the allowed modules {list(allowed_prefixes())}; "
            f"add its package to ${ALLOWED_MODULES_ENV} to allow it"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise UnknownFunctionError(f"cannot import module {module_name!r} for function {name!r}: {error}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise UnknownFunctionError(f"module {module_name!r} has no function {attr!r}")
    if not callable(fn):
        raise TypeError(f"{name!r} is a {type(fn).__name__}, not a callable function")
    if not _is_allowed(getattr(fn, "__module__", None) or ""):
        raise DisallowedFunctionError(
            f"{name!r} resolves to {getattr(fn, '__module__', '?')}.{attr}, which is outside the allowed modules"
        )
    return fn


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
    return _check_dataloaders(dataset_fn, resolve_fn(dataset_fn)(**dataset_config))


def get_model(model_fn, model_config, dataloaders=None, seed=None, state_dict=None, strict=True):
    """Build ``model_fn(dataloaders, seed=seed, **model_config)``; load ``state_dict`` if given."""
    model = resolve_fn(model_fn)(dataloaders, seed=seed, **model_config)
    if not isinstance(model, torch.nn.Module):
        raise ContractError(f"model function {fn_name(model_fn)!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if state_dict is not None:
        model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in state_dict.items()}, strict=strict)
    return model


def get_trainer(trainer_fn, trainer_config=None):
    """The trainer function, with ``trainer_config`` bound as keyword arguments when given."""
    fn = resolve_fn(trainer_fn)
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
    """
    if seed is not None and "seed" not in dataset_config:
        dataset_config = {**dataset_config, "seed": seed}
    dataloaders = get_data(dataset_fn, dataset_config)
    model = get_model(model_fn, model_config, dataloaders, seed=seed, state_dict=state_dict, strict=strict)
    if trainer_fn is None:
        return dataloaders, model
    return dataloaders, model, get_trainer(trainer_fn, trainer_config)
