"""pipeline.builder: allowlisted name resolution and nnfabrik's get_data/get_model/get_trainer/get_all_parts."""
import sys
from os import system as reexported_system  # noqa: F401  (resolved by name below)

import pytest
import torch

from pipeline import builder
from pipeline.builder import DisallowedFunctionError, UnknownFunctionError

HERE = __name__


def toy_data(seed=None, n=4):
    return {"train": {"k": list(range(n))}, "seed_used": {"k": seed}}


def toy_model(dataloaders, seed=None, width=3):
    torch.manual_seed(seed or 0)
    return torch.nn.Linear(len(dataloaders["train"]["k"]), width)


def toy_trainer(model, dataloaders, seed, lr=0.1, **kwargs):
    return lr, kwargs, model.state_dict()


@pytest.fixture
def allow_here(monkeypatch):
    monkeypatch.setenv(builder.ALLOWED_MODULES_ENV, f"mylab, {HERE}")


def test_pipeline_functions_resolve_by_name_and_by_object():
    assert builder.resolve_fn("pipeline.builder.get_data") is builder.get_data
    assert builder.resolve_fn(builder.get_model) is builder.get_model


@pytest.mark.parametrize("name", ["os.system", "subprocess.run", "builtins.eval", "pipelinex.fn", "this.s"])
def test_names_outside_the_allowlist_are_refused_before_import(name):
    with pytest.raises(DisallowedFunctionError, match="outside the allowed modules"):
        builder.resolve_fn(name)
    assert "this" not in sys.modules  # importing `this` prints the Zen of Python: it never ran


def test_environment_extends_the_allowlist_on_module_boundaries(allow_here):
    assert builder.resolve_fn(f"{HERE}.toy_model") is toy_model
    with pytest.raises(DisallowedFunctionError):
        builder.resolve_fn("mylabevil.fn")


def test_a_reexported_foreign_function_is_refused(allow_here):
    with pytest.raises(DisallowedFunctionError, match="resolves to"):
        builder.resolve_fn(f"{HERE}.reexported_system")


@pytest.mark.parametrize("name, error, message", [
    ("pipeline.no_such_module.fn", UnknownFunctionError, "cannot import module"),
    ("pipeline.builder.no_such_fn", UnknownFunctionError, "has no function 'no_such_fn'"),
    ("pipeline.builder.ALLOWED_MODULES_ENV", TypeError, "not a callable"),
    ("get_data", UnknownFunctionError, "not a dotted function name"),
    ("pipeline.builder.get_data; import os", UnknownFunctionError, "not a dotted function name"),
])
def test_bad_names_give_clear_errors(name, error, message):
    with pytest.raises(error, match=message):
        builder.resolve_fn(name)


def test_get_all_parts_passes_seed_and_loads_state(allow_here):
    data, model = builder.get_all_parts(f"{HERE}.toy_data", {"n": 5}, f"{HERE}.toy_model", {"width": 2}, seed=7)
    assert data["seed_used"]["k"] == 7 and model.weight.shape == (2, 5)
    assert builder.get_data(f"{HERE}.toy_data", {"seed": 1})["seed_used"]["k"] == 1

    state = {k: v.numpy() + 1 for k, v in model.state_dict().items()}
    _, loaded, trainer = builder.get_all_parts(
        f"{HERE}.toy_data", {"n": 5, "seed": 3}, f"{HERE}.toy_model", {"width": 2}, seed=7, state_dict=state,
        trainer_fn=f"{HERE}.toy_trainer", trainer_config={"lr": 0.5, "extra": 1},
    )
    assert torch.equal(loaded.weight, torch.from_numpy(state["weight"]))
    score, kwargs, _ = trainer(loaded, data, 7)
    assert score == 0.5 and kwargs == {"extra": 1}
    assert builder.get_trainer(f"{HERE}.toy_trainer") is toy_trainer
