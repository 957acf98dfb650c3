"""pipeline.builder: role-checked name resolution and nnfabrik's get_data/get_model/get_trainer/get_all_parts."""
import sys
from os import system as reexported_system  # noqa: F401  (resolved by name below)

import pytest
import torch

from pipeline import builder
from pipeline.models import stacked_core_full_gauss_readout
from pipeline.registry import UnregisteredFunctionError, register

HERE = __name__
CALLED = []  # the toy functions that ran


@register("dataset")
def toy_data(seed=None, n=4):
    CALLED.append("toy_data")
    return {"train": {"k": list(range(n))}, "seed_used": {"k": seed}}


@register("model")
def toy_model(dataloaders, seed=None, width=3):
    torch.manual_seed(seed or 0)
    return torch.nn.Linear(len(dataloaders["train"]["k"]), width)


@register("trainer")
def toy_trainer(model, dataloaders, seed, lr=0.1, **kwargs):
    return lr, kwargs, model.state_dict()


def test_registered_functions_resolve_by_name_and_by_object_for_their_role():
    shipped = builder.resolve_fn("pipeline.models.stacked_core_full_gauss_readout", "model")
    assert shipped is stacked_core_full_gauss_readout
    assert builder.resolve_fn(toy_model, "model") is toy_model
    with pytest.raises(UnregisteredFunctionError, match=f"'{HERE}.toy_model' is not a trainer function"):
        builder.resolve_fn(toy_model, "trainer")


def test_the_old_error_names_are_the_registry_error():
    assert builder.DisallowedFunctionError is builder.UnknownFunctionError is UnregisteredFunctionError
    assert issubclass(UnregisteredFunctionError, ValueError)


@pytest.mark.parametrize("name", ["os.system", "subprocess.run", "builtins.eval", "pipelinex.fn", "this.s"])
def test_names_outside_the_allowlist_are_refused_before_import(name):
    with pytest.raises(UnregisteredFunctionError, match="outside the allowed modules"):
        builder.resolve_fn(name, "model")
    assert "this" not in sys.modules  # importing `this` prints the Zen of Python: it never ran


def test_a_reexported_foreign_function_is_refused_even_where_allowed(monkeypatch):
    monkeypatch.setenv(builder.ALLOWED_MODULES_ENV, f"mylab, {HERE}")
    with pytest.raises(UnregisteredFunctionError, match="register it with `@register"):
        builder.resolve_fn(f"{HERE}.reexported_system", "model")


def test_every_name_is_checked_before_any_function_is_called():
    CALLED.clear()
    with pytest.raises(UnregisteredFunctionError, match="'os.system' is not a trainer function"):
        builder.get_all_parts(toy_data, {}, toy_model, {}, trainer_fn="os.system", trainer_config={})
    with pytest.raises(UnregisteredFunctionError, match=f"'{HERE}.toy_data' is not a model function"):
        builder.get_all_parts(toy_data, {}, toy_data, {})
    assert CALLED == []


def test_get_all_parts_passes_seed_and_loads_state():
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
