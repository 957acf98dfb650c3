"""Models that open without their data (DataInfo) and cores that transfer to new recordings (core_from).

Tiny synthetic recordings and a tiny baseline model; training is ``quick_trainer`` (a second or two).
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.datasets import synthetic
from tests.integration import fabrik_functions

DATASET = "pipeline.datasets.static_loaders"
MODEL = "pipeline.models.stacked_core_full_gauss_readout"
TRAINER = f"{fabrik_functions.__name__}.quick_trainer"
TINY_MODEL = {
    "hidden_channels": 4, "input_kern": 5, "hidden_kern": 3, "layers": 2, "gamma_input": 1.0,
    "gamma_readout": 0.01, "shifter": True, "init_sigma": 0.3,
    "grid_mean_predictor": {"type": "cortex", "input_dimensions": 2, "hidden_layers": 1,
                            "hidden_features": 8, "final_tanh": True},
}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Three tiny synthetic recordings of one simulated population family (different neurons and images)."""
    folder = tmp_path_factory.mktemp("recordings")
    return [synthetic.generate(folder, **synthetic.PRESETS["tiny"], seed=seed) for seed in (1, 2, 3)]


def add_dataset(fabrik, paths, comment):
    config = {"paths": [str(p) for p in paths], "batch_size": 16, "include_eye_position": True}
    return fabrik.Dataset().add_entry(DATASET, config, comment=comment, skip_duplicates=True)


def test_express_loading_equals_data_loading_bit_for_bit(fabrik, recordings, tmp_path):
    paths = [shutil.copytree(p, tmp_path / p.name) for p in recordings[:2]]  # a copy we can take away
    dataset = add_dataset(fabrik, paths, "two recordings, movable")
    model = fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True)
    trainer = fabrik.Trainer().add_entry(TRAINER, {"epochs": 1}, skip_duplicates=True)
    key = {**dataset, **model, **trainer, "seed": 1}
    fabrik.TrainedModel.populate(key)
    assert not fabrik.DataInfo & dataset  # a trained model from before DataInfo existed

    dataloaders, with_data = fabrik.TrainedModel().load_model(key)
    inputs = {data_key: next(iter(loader)) for data_key, loader in dataloaders["test"].items()}
    express = fabrik.TrainedModel().load_model(key, include_dataloader=False)  # computes and stores DataInfo
    assert len(fabrik.DataInfo & dataset) == 1
    info = (fabrik.DataInfo & dataset).fetch1("data_info")
    assert list(info) == list(dataloaders["train"]) and len(info) == 2
    for data_key, item in info.items():
        unit_ids = dataloaders["train"][data_key].dataset.neurons.unit_ids
        np.testing.assert_array_equal(item["neurons"]["unit_ids"], unit_ids)

    for path in paths:
        shutil.rmtree(path)
    with pytest.raises(FileNotFoundError):
        fabrik.Dataset().get_dataloader(dataset)
    models = [express, fabrik.TrainedModel().load_model(key, include_dataloader=False)]  # now without any data
    with torch.no_grad():
        for data_key, batch in inputs.items():
            expected = with_data.eval()(batch.images, data_key=data_key, pupil_center=batch.pupil_center)
            for loaded in models:
                assert torch.equal(loaded.eval()(batch.images, data_key=data_key, pupil_center=batch.pupil_center),
                                   expected)
    for name, value in with_data.state_dict().items():
        assert torch.equal(models[1].state_dict()[name], value), name

    (fabrik.DataInfo & dataset).delete(prompt=False)
    with pytest.raises(LookupError, match=f"{dataset['dataset_hash']} has no DataInfo row.*DataInfo.populate"):
        fabrik.TrainedModel().load_model(key, include_dataloader=False)


def frozen_child(fabrik, parent_key):
    return fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "core_from": parent_key, "freeze_core": True},
                                    comment="frozen core from the two-recording parent", skip_duplicates=True)


def run_workers(db_prefix, experiment, n):
    env = {**os.environ, "V1FABRIK_SCHEMA_PREFIX": db_prefix, "OMP_NUM_THREADS": "1",
           "V1FABRIK_HEARTBEAT_S": "1", "V1FABRIK_GRACE_S": "30"}
    command = [sys.executable, "-m", "schemas.cli", "worker", "--device", "cpu", "--experiment", experiment]
    workers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(n)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * n, outputs


@pytest.mark.parametrize("child_first", [True, False], ids=["child registered first", "parent trained first"])
def test_child_trained_by_workers_uses_its_parents_core(fabrik, recordings, db_prefix, child_first):
    pretrain = add_dataset(fabrik, recordings[:2], "two recordings")
    target = add_dataset(fabrik, recordings[2:], "third recording")
    model = fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True)
    trainer = fabrik.Trainer().add_entry(TRAINER, {"epochs": 2}, skip_duplicates=True)
    seed = 2 if child_first else 3
    parent = {**pretrain, **model, **trainer, "seed": seed}
    name = f"transfer, child first: {child_first}"
    fabrik.Experiment().add(name, [pretrain], [model], [trainer], [seed])
    if child_first:
        child_model = frozen_child(fabrik, parent)
        child = {**target, **child_model, **trainer, "seed": 1}
        fabrik.Experiment().add(name, [target], [child_model], [trainer], [1])
        assert not fabrik.TrainedModel.key_source & child  # waits for its parent: no job, no error
        assert fabrik.TrainedModel.populate(child, reserve_jobs=True)["success_count"] == 0
        assert fabrik.TrainedModel.awaited_cores() == [parent]
        run_workers(db_prefix, name, 2)
    else:
        run_workers(db_prefix, name, 1)
        child_model = frozen_child(fabrik, parent)
        child = {**target, **child_model, **trainer, "seed": 1}
        fabrik.Experiment().add(name, [target], [child_model], [trainer], [1])
        run_workers(db_prefix, name, 1)

    assert not fabrik.TrainedModel.jobs.errors & [parent, child]
    assert fabrik.Model.CoreFrom & child_model
    assert (fabrik.Model.CoreFrom & child_model).fetch1("core_seed") == seed
    assert len(fabrik.DataInfo & [pretrain, target]) == 2  # the workers described both datasets
    parent_weights = (fabrik.TrainedModel.Weights & parent).fetch1("state_dict")
    child_weights = (fabrik.TrainedModel.Weights & child).fetch1("state_dict")
    core = [name for name in parent_weights if name.startswith("core.")]
    assert core and all(np.array_equal(child_weights[name], parent_weights[name]) for name in core)
    data_keys = {name: {n.split(".")[1] for n in weights if n.startswith(("readout.", "shifter."))}
                 for name, weights in (("parent", parent_weights), ("child", child_weights))}
    assert len(data_keys["parent"]) == 2 and len(data_keys["child"]) == 1  # one readout and shifter per recording
    assert not data_keys["parent"] & data_keys["child"]
    # the child's config, as get_full_config gives it, builds its model with the parent's core
    config = fabrik.TrainedModel().get_full_config(child, include_state_dict=False)
    assert "core_from" not in config["model_config"] and config["model_config"]["freeze_core"] is True
    assert all(np.array_equal(config["model_config"]["pretrained_core"][n.removeprefix("core.")], parent_weights[n])
               for n in core)


def test_bad_core_references_are_named(fabrik, recordings):
    pretrain = add_dataset(fabrik, recordings[:2], "two recordings")
    model = fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True)
    trainer = fabrik.Trainer().add_entry(TRAINER, {"epochs": 2}, skip_duplicates=True)
    parent = {**pretrain, **model, **trainer, "seed": 1}
    rows = len(fabrik.Model()), len(fabrik.Model.CoreFrom())
    with pytest.raises(ValueError, match="core_from must be a TrainedModel key"):
        fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "core_from": {**model, "seed": 1}})
    with pytest.raises(ValueError, match="names a Trainer that does not exist"):
        fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "core_from": {**parent, "trainer_hash": "0" * 32}})
    with pytest.raises(ValueError, match="names a Seed that does not exist"):
        fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "core_from": {**parent, "seed": 99}})
    assert (len(fabrik.Model()), len(fabrik.Model.CoreFrom())) == rows  # nothing half-written
