"""The DataJoint pipeline against a real database server: recipes, workers, weights, resume (scores: test_measures).

Tiny synthetic data and a tiny baseline model keep every training job to about a second.
"""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline import builder
from pipeline.datasets import synthetic
from pipeline.training.checkpoints import state_from_arrays
from pipeline.utility import scores
from schemas.cli import status
from schemas.tables.hashing import UnhashableConfigError
from schemas.tables.recipes import DuplicateEntryError
from tests.integration import fabrik_functions

HELPERS = fabrik_functions.__name__
TRAINER = f"{HELPERS}.quick_trainer"
DATASET = "pipeline.datasets.static_loaders"
MODEL = "pipeline.models.stacked_core_full_gauss_readout"
TINY_MODEL = {
    "hidden_channels": 4, "input_kern": 5, "hidden_kern": 3, "layers": 2, "gamma_input": 1.0,
    "gamma_readout": 0.01, "shifter": True,
    "grid_mean_predictor": {"type": "cortex", "input_dimensions": 2, "hidden_layers": 1,
                            "hidden_features": 8, "final_tanh": True},
}


@pytest.fixture(scope="module")
def dataset_key(fabrik, tmp_path_factory):
    """A Dataset entry for a tiny synthetic dataset."""
    path = synthetic.generate(tmp_path_factory.mktemp("data"), **synthetic.PRESETS["tiny"])
    config = {"paths": [str(path)], "batch_size": 16, "include_eye_position": True}
    return fabrik.Dataset().add_entry(DATASET, config, comment="tiny")


def _trainer(fabrik, **config):
    return fabrik.Trainer().add_entry(TRAINER, {"epochs": 2, **config}, skip_duplicates=True)


def test_canonical_hashing_gives_one_key_per_config(fabrik):
    model = fabrik.Model()
    key = model.add_entry(MODEL, TINY_MODEL, comment="tiny")
    reordered = dict(reversed(list(TINY_MODEL.items())))
    assert model.add_entry(MODEL, reordered, skip_duplicates=True) == key
    with pytest.raises(DuplicateEntryError, match="already exists"):
        model.add_entry(MODEL, reordered)
    as_float = {**TINY_MODEL, "layers": 2.0}
    assert model.add_entry(MODEL, as_float, skip_duplicates=True)["model_hash"] != key["model_hash"]
    with pytest.raises(UnhashableConfigError, match="shifter"):
        model.add_entry(MODEL, {**TINY_MODEL, "shifter": {True}})
    assert len(model & {"model_fn": MODEL}) == 2
    stored_fn, stored = model.fn_config(key)
    assert stored_fn == MODEL and stored == TINY_MODEL


def test_allowlist_refuses_at_add_entry_and_at_populate(fabrik, dataset_key):
    with pytest.raises(builder.DisallowedFunctionError, match="os.system"):
        fabrik.Model().add_entry("os.system", {"command": "touch /tmp/pwned"})
    assert not fabrik.Model & {"model_fn": "os.system"}

    # Rows written behind the API's back, naming a shell and a module whose import has side effects.
    hostile = [{"model_fn": "os.system", "model_hash": "0" * 32, "model_config": {"command": "echo pwned"},
                "model_fabrikant": fabrik.Fabrikant.ensure_current_user()},
               {"model_fn": "this.s", "model_hash": "1" * 32, "model_config": {},
                "model_fabrikant": fabrik.Fabrikant.ensure_current_user()}]
    fabrik.Model.insert(hostile)
    trainer = _trainer(fabrik)
    restriction = [{"model_fn": "os.system"}, {"model_fn": "this.s"}]
    result = fabrik.TrainedModel.populate(restriction, trainer, {"seed": 1}, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 2
    messages = (fabrik.TrainedModel.jobs.errors & restriction).to_arrays("error_message")
    assert len(messages) == 2
    assert all(m.startswith("UnregisteredFunctionError") and "outside the allowed modules" in m for m in messages)
    assert "this" not in sys.modules
    assert not fabrik.TrainedModel & restriction and not fabrik.Checkpoint & restriction
    (fabrik.Model & restriction).delete(prompt=False)


def test_type_error_in_model_config_becomes_a_job_error_and_others_complete(fabrik, dataset_key):
    bad = fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "hidden_chanels": 4}, comment="typo")
    good = fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True)
    trainer = _trainer(fabrik)
    result = fabrik.TrainedModel.populate(
        [bad, good], trainer, {"seed": 1}, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 1 and len(result["error_list"]) == 1
    error = (fabrik.TrainedModel.jobs.errors & bad).to_dicts()[0]
    assert error["error_message"].startswith("TypeError") and "hidden_chanels" in error["error_message"]
    assert "Traceback" in error["error_stack"]
    assert len(fabrik.TrainedModel & good & trainer & {"seed": 1}) == 1

    # `v1fabrik status`: the error is counted in TrainedModel's row and listed with its culprit.
    report = status.report()
    row = next(line.split() for line in report.splitlines() if line.startswith("TrainedModel "))
    assert dict(zip(status.COLUMNS[1:], map(int, row[1:])))["error"] == 1
    assert any("TrainedModel" in line and "TypeError" in line and "hidden_chanels" in line
               for line in report.split("latest errors")[1].splitlines())
    (fabrik.Model & bad).delete(prompt=False)


def test_three_worker_processes_train_six_keys_exactly_once(fabrik, dataset_key, db_prefix, tmp_path):
    models = [fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "hidden_channels": c}, comment=f"c{c}",
                                       skip_duplicates=True) for c in (3, 5)]
    trainer = _trainer(fabrik, lr=0.005)
    fabrik.Experiment().add("six", [dataset_key], models, [trainer], [1, 2, 3])
    log = tmp_path / "trainings.log"
    env = {**os.environ, "V1FABRIK_SCHEMA_PREFIX": db_prefix, fabrik_functions.TRAINING_LOG_ENV: str(log),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "schemas.cli", "worker", "--device", "cpu", "--experiment", "six"]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(3)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], outputs

    trained = fabrik.TrainedModel & fabrik.Experiment.combinations("six")
    runs = log.read_text().split("\n")[:-1]
    assert len(runs) == 6 and len({r.split()[0] for r in runs}) == 6  # six keys, each trained once
    assert len(trained) == 6 and len(fabrik.TrainedModel.Weights & trained) == 6
    assert not fabrik.Checkpoint & trained
    assert len(fabrik.Score & trained) == 6 * len(fabrik.Measure())  # every measure of every model

    # The stored weights reproduce the in-memory model of the same training, prediction for prediction.
    key = (trained & models[1] & {"seed": 2}).keys()[0]
    torch.set_num_threads(1)
    config = fabrik.TrainedModel().get_full_config(key, include_state_dict=False)
    dataloaders, model, trainer_fn = builder.get_all_parts(**config)
    _, _, state = trainer_fn(model=model, dataloaders=dataloaders, seed=2, uid=key)
    stored = (fabrik.TrainedModel.Weights & key).fetch1("state_dict")
    assert stored.keys() == state.keys()
    assert all(np.array_equal(stored[k], state[k].numpy()) and stored[k].dtype == state[k].numpy().dtype for k in state)
    loaders, loaded = fabrik.TrainedModel().load_model(key)
    data_key = next(iter(loaders["test"]))
    expected = scores.model_predictions(model, dataloaders["test"][data_key], data_key)[1]
    assert np.array_equal(scores.model_predictions(loaded, loaders["test"][data_key], data_key)[1], expected)


def test_interrupted_training_resumes_from_its_checkpoint(fabrik, dataset_key, caplog):
    model = fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True)
    trainer = _trainer(fabrik, epochs=3, crash_after_epoch=1)
    key = {**dataset_key, **model, **trainer, "seed": 2}
    result = fabrik.TrainedModel.populate(key, reserve_jobs=True, suppress_errors=True)
    assert len(result["error_list"]) == 1 and "SimulatedCrash" in result["error_list"][0][1]
    checkpoint = (fabrik.Checkpoint & key).fetch1()
    assert checkpoint["epoch"] == 1 and not fabrik.TrainedModel & key

    (fabrik.TrainedModel.jobs & key).delete()  # what an operator (or the sweeper) does with a dead job
    with caplog.at_level(logging.INFO, logger="schemas.tables.trained"):
        result = fabrik.TrainedModel.populate(key, reserve_jobs=True)
    assert result["success_count"] == 1
    assert any("from its checkpoint at epoch 1" in r.getMessage() for r in caplog.records)
    output = (fabrik.TrainedModel & key).fetch1("output")
    assert len(output["loss"]) == 3 and output["loss"][0] == state_from_arrays(checkpoint["state"])["history"][0]
    assert not fabrik.Checkpoint & key
