"""pipeline.registry: only functions registered for a role resolve, and nothing else a row names is imported."""
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from pipeline import builder, registry
from pipeline.datasets import static_loaders
from pipeline.models import stacked_core_full_gauss_readout
from pipeline.registry import DuplicateRegistrationError, UnregisteredFunctionError, register
from pipeline.training import standard_trainer

REPO = Path(__file__).resolve().parents[2]
LAB = "v1fabrik_testlab.models.linear_model"


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by the test are forgotten afterwards."""
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))


@pytest.mark.parametrize("role, fn, names", [
    ("dataset", static_loaders, ["pipeline.datasets.static_loaders", "pipeline.datasets.loaders.static_loaders"]),
    ("model", stacked_core_full_gauss_readout,
     ["pipeline.models.stacked_core_full_gauss_readout",
      "pipeline.models.baseline_cnn.stacked_core_full_gauss_readout"]),
    ("trainer", standard_trainer, ["pipeline.training.standard_trainer", "pipeline.training.trainer.standard_trainer"]),
])
def test_shipped_functions_resolve_by_their_path_and_their_package_alias(role, fn, names):
    for name in names:
        assert registry.resolve(name, role) is fn
        assert registry.roles_of(name) == (role,)
        assert name in registry.registered(role)
    assert not set(names) & set(registry.registered("measure"))


@pytest.mark.parametrize("name, role, says", [
    ("pipeline.datasets.synthetic.generate", "dataset",
     "registered for no role): register it with `@register('dataset')`"),
    ("pipeline.training.standard_trainer", "model",
     "registered as trainer): name a function registered with `@register('model')`"),
    ("pipeline.training.trainer._resume", "trainer", "registered for no role): it is private"),
    ("pipeline.datasets.synthetic._write", "dataset", "registered for no role): it is private"),
    ("pipeline.utility.plots.training_history", "measure", "register it with `@register('measure')`"),
    ("os.system", "model", "'os' is outside the allowed modules ['pipeline'"),
    ("subprocess.run", "trainer", "'subprocess' is outside the allowed modules"),
    ("pipelinex.fn", "model", "'pipelinex' is outside the allowed modules"),
    ("pipeline.no_such_module.fn", "model", "importing 'pipeline.no_such_module' failed"),
    ("pipeline.builder.no_such_fn", "model", "module 'pipeline.builder' has no 'no_such_fn'"),
    ("pipeline.builder.ALLOWED_MODULES_ENV", "model", "it is a str, not a function"),
    ("get_data", "dataset", "it is not a dotted name"),
    ("pipeline.builder.get_data; import os", "dataset", "it is not a dotted name"),
])
def test_refusals_are_one_sentence_naming_the_function_its_role_and_the_roles_it_has(monkeypatch, name, role, says):
    monkeypatch.delenv(registry.ALLOWED_MODULES_ENV, raising=False)
    with pytest.raises(UnregisteredFunctionError) as refused:
        builder.resolve_fn(name, role)
    message = str(refused.value)
    assert message.startswith(f"{name!r} is not a {role} function (") and says in message
    assert "\n" not in message and ". " not in message
    assert ("(registered for no role)" in message) == (registry.roles_of(name) == ())


def test_a_refused_dataset_function_writes_nothing(tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    hostile = {"path": str(sentinel / "static-hostile"), "overwrite": True, "n_neurons": 2, "n_train": 2,
               "n_validation": 1, "n_test_images": 1, "n_repeats": 1, "image_size": [4, 4]}
    for name in ("pipeline.datasets.synthetic.generate", "pipeline.training.standard_trainer"):
        with pytest.raises(UnregisteredFunctionError, match="is not a dataset function"):
            builder.get_data(name, hostile)
    with pytest.raises(UnregisteredFunctionError, match="is not a dataset function"):
        builder.get_all_parts("pipeline.datasets.synthetic.generate", hostile,
                              "pipeline.models.stacked_core_full_gauss_readout", {})
    assert list(sentinel.iterdir()) == []


def test_registration_rules(scratch_registry):
    def local():
        pass

    with pytest.raises(ValueError, match="roles must be some of dataset, model, trainer, measure; got 'modle'"):
        register("modle")
    with pytest.raises(ValueError, match="only public module-level functions"):
        register("model")(local)
    with pytest.raises(ValueError, match="must be a public name in a parent package of tests.unit.test_registry"):
        register("model", aliases=["pipeline.models.mine"])(lab_helper)


def lab_helper(dataloaders, seed):
    """A module-level function the registration tests register."""


def test_a_function_may_have_several_roles_and_may_register_again(scratch_registry):
    register("measure")(lab_helper)
    register("model", aliases=["tests.unit.lab_helper"])(lab_helper)
    assert registry.roles_of("tests.unit.test_registry.lab_helper") == ("model", "measure")
    assert registry.resolve("tests.unit.lab_helper", "measure") is lab_helper

    reloaded = types.FunctionType(lab_helper.__code__, lab_helper.__globals__)  # as after importlib.reload
    register("model")(reloaded)
    assert registry.resolve("tests.unit.lab_helper", "model") is reloaded


def test_a_name_taken_by_another_function_is_an_error(scratch_registry):
    register("model", aliases=["tests.unit.lab_helper"])(lab_helper)
    other = types.FunctionType(lab_helper.__code__, lab_helper.__globals__, "other")
    other.__qualname__ = "other"
    with pytest.raises(DuplicateRegistrationError,
                       match="cannot register tests.unit.test_registry.other as 'tests.unit.lab_helper': "
                             "tests.unit.test_registry.lab_helper is registered under that name"):
        register("model", aliases=["tests.unit.lab_helper"])(other)
    assert registry.resolve("tests.unit.lab_helper", "model") is lab_helper


PROBE = """
import json, sys
from pipeline import registry
out = {}
for name, role in [(sys.argv[1], "model"), ("v1fabrik_testlab.models.n_inputs", "model"), ("this.s", "model")]:
    try:
        out[name] = registry.resolve(name, role).__qualname__
    except registry.UnregisteredFunctionError as error:
        out[name] = str(error)
out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("v1fabrik_testlab", "this"))
out["models"] = registry.registered("model")
print(json.dumps(out))
"""


def probe(name=LAB, pythonpath=(), **env):
    """Resolve ``name`` and two names that must be refused in a fresh interpreter; what it saw."""
    env = {**{k: v for k, v in os.environ.items() if k != registry.ALLOWED_MODULES_ENV},
           "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, pythonpath)]), **env}
    done = subprocess.run([sys.executable, "-c", PROBE, name], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_lab_package_registers_through_its_entry_point(installed_lab):
    seen = probe(pythonpath=[installed_lab])
    assert seen[LAB] == "linear_model" and LAB in seen["models"]
    assert "register it with `@register('model')`" in seen["v1fabrik_testlab.models.n_inputs"]
    assert "outside the allowed modules ['pipeline', " in seen["this.s"] and "'v1fabrik_testlab.models'" in seen["this.s"]
    assert "this" not in seen["imported"]


def test_a_lab_module_registers_through_the_environment():
    seen = probe(pythonpath=[REPO / "tests" / "lab_package"], V1FABRIK_ALLOWED_MODULES="mylab, v1fabrik_testlab")
    assert seen[LAB] == "linear_model"
    assert "register it with `@register('model')`" in seen["v1fabrik_testlab.models.n_inputs"]
    assert "this" not in seen["imported"]


def test_an_importable_module_outside_the_allowed_ones_is_never_imported():
    seen = probe(pythonpath=[REPO / "tests" / "lab_package"])
    assert seen[LAB].startswith(f"{LAB!r} is not a model function (registered for no role): "
                                "'v1fabrik_testlab.models' is outside the allowed modules ['pipeline'")
    assert seen["imported"] == []  # neither the lab module nor `this` (which prints the Zen of Python) ran
