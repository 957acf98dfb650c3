"""Ensembles against the real server: created from trained models, loaded as one model, scored like one."""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.datasets import synthetic
from pipeline.utility import scores
from tests.integration.test_pipeline import DATASET, MODEL, TINY_MODEL, TRAINER


@pytest.fixture(scope="module")
def trained(fabrik, tmp_path_factory):
    """Three models of one tiny dataset (seeds 1-3) in the experiment 'members', and one of another dataset."""
    paths = [synthetic.generate(tmp_path_factory.mktemp("data"), **synthetic.PRESETS["tiny"], seed=s) for s in (0, 1)]
    datasets = [fabrik.Dataset().add_entry(DATASET, {"paths": [str(p)], "batch_size": 16, "include_eye_position": True})
                for p in paths]
    model = fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True)
    trainer = fabrik.Trainer().add_entry(TRAINER, {"epochs": 2}, skip_duplicates=True)
    fabrik.Experiment().add("members", [datasets[0]], [model], [trainer], [1, 2, 3])
    fabrik.Experiment().add("other", [datasets[1]], [model], [trainer], [1])
    fabrik.TrainedModel.populate(fabrik.Experiment.combinations("members"))
    fabrik.TrainedModel.populate(fabrik.Experiment.combinations("other"))
    return (fabrik.TrainedModel & fabrik.Experiment.combinations("members")).keys()


def test_ensemble_predicts_the_mean_of_its_members_and_is_scored_like_them(fabrik, trained):
    ensemble = fabrik.Ensemble()
    key = ensemble.create(trained[:2], comment="two seeds")
    assert ensemble.create(list(reversed(trained[:2]))) == key  # the same members: the same ensemble
    assert len(fabrik.Ensemble & key) == 1 and len(fabrik.Ensemble.Member & key) == 2
    row = (fabrik.Ensemble & key).fetch1()
    assert row["ensemble_comment"] == "two seeds" and row["ensemble_fabrikant"] == fabrik.Fabrikant.get_current_user()
    assert (row["dataset_fn"], row["dataset_hash"]) == (trained[0]["dataset_fn"], trained[0]["dataset_hash"])

    dataloaders, model = ensemble.load_model(key)
    members = [fabrik.TrainedModel().load_model(k, include_dataloader=False).eval() for k in trained[:2]]
    model.eval()
    batch = next(iter(dataloaders["test"][next(iter(dataloaders["test"]))]))
    data_key = next(iter(dataloaders["test"]))
    fields = batch._asdict()
    with torch.no_grad():
        expected = torch.stack([m(fields["images"], data_key=data_key, **fields) for m in members]).mean(0)
        observed = model(fields["images"], data_key=data_key, **fields)
    assert observed.shape == expected.shape and torch.allclose(observed, expected, rtol=1e-6, atol=1e-7)

    fabrik.EnsembleScore.populate(key)
    stored = dict(zip(*(fabrik.EnsembleScore * fabrik.Measure & key).to_arrays("measure_name", "value")))
    assert set(stored) >= {"test_correlation", "correlation_to_average", "feve", "oracle_correlation"}
    direct = scores.get_correlations(model, dataloaders, tier="test", device="cpu", per_neuron=False)
    assert stored["test_correlation"] == pytest.approx(direct, abs=1e-6)
    units = (fabrik.EnsembleScore.Unit * fabrik.Measure & key & {"measure_name": "test_correlation"})
    neurons = synthetic.PRESETS["tiny"]["n_neurons"]
    assert len(units) == neurons and np.isfinite(units.to_arrays("unit_value").astype(float)).all()
    # the members are scored by the same measures
    fabrik.Score.populate(trained[:2])
    member = (fabrik.Score * fabrik.Measure & trained[0] & {"measure_name": "test_correlation"}).fetch1("value")
    assert np.isfinite(member) and member != stored["test_correlation"]


def test_bad_ensembles_are_refused_in_one_sentence_and_register_nothing(fabrik, trained):
    before = len(fabrik.Ensemble())
    other = (fabrik.TrainedModel & fabrik.Experiment.combinations("other")).keys()
    with pytest.raises(ValueError, match="ensemble members must share one dataset; these come from 2"):
        fabrik.Ensemble().create([trained[0], other[0]])
    with pytest.raises(ValueError, match="at least two distinct trained models, got 1"):
        fabrik.Ensemble().create([trained[0], trained[0]])
    with pytest.raises(ValueError, match="selects 0 trained models"):
        fabrik.Ensemble().create([trained[0], {**trained[1], "seed": 99}])
    with pytest.raises(ValueError, match="selects 3 trained models"):
        fabrik.Ensemble().create([trained[0], fabrik.Experiment.combinations("members")])
    with pytest.raises(ValueError, match="'members' has 3 trained models; --top 4 needs 4"):
        fabrik.Ensemble().create_top("members", 4)
    assert len(fabrik.Ensemble()) == before


def test_cli_makes_the_ensemble_of_the_best_models(fabrik, trained, db_prefix):
    done = subprocess.run([sys.executable, "-m", "schemas.cli", "ensemble", "--experiment", "members", "--top", "3"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "V1FABRIK_SCHEMA_PREFIX": db_prefix})
    assert done.returncode == 0, done.stderr
    key = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(fabrik.Ensemble().member_keys(key), key=lambda k: k["seed"]) == sorted(trained, key=lambda k: k["seed"])
    assert (fabrik.Ensemble & key).fetch1("ensemble_comment") == "top 3 of members by validation score"

    # an ordinary worker of the experiment scores the ensemble and its members by the same measures,
    # and `v1fabrik scores` lists the ensemble beside its members
    env = {**os.environ, "V1FABRIK_SCHEMA_PREFIX": db_prefix, "OMP_NUM_THREADS": "1"}
    worker = subprocess.run([sys.executable, "-m", "schemas.cli", "worker", "--device", "cpu", "--experiment", "members"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    assert len(fabrik.EnsembleScore & key) == len(fabrik.Measure()) and not fabrik.EnsembleScore.jobs.errors
    done = subprocess.run([sys.executable, "-m", "schemas.cli", "scores", "--experiment", "members", "--format", "csv"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "V1FABRIK_SCHEMA_PREFIX": db_prefix})
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(io.StringIO(done.stdout[done.stdout.index("dataset,model,"):]))  # after DataJoint's banner
    ensemble = frame[frame["model"] == "ensemble of 3: top 3 of members by validation score"]
    assert len(ensemble) == 1 and ensemble["seed"].isna().all()
    stored = (fabrik.EnsembleScore * fabrik.Measure & key & {"measure_name": "test_correlation"}).fetch1("value")
    assert ensemble["test_correlation"].iloc[0] == pytest.approx(stored, abs=1e-12)
    members = frame[frame["seed"].notna()]
    assert len(members) == 3 and frame["model"].iloc[:3].tolist() == members["model"].tolist()  # models come first
    assert ensemble["validation"].iloc[0] == pytest.approx(members["validation"].mean(), abs=1e-12)
    assert members["test_correlation"].notna().all()
