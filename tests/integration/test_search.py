"""Hyper-parameter studies against the real server, run by real ``v1fabrik worker`` processes.

Tiny synthetic data, a tiny baseline model and ``standard_trainer`` for 4 epochs: each trial takes a
second or two, so a study of 6 trials on 2 workers takes well under a minute.
"""
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datajoint as dj
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from pipeline.datasets import synthetic
from schemas.jobs.search import register, storage
from schemas.jobs.search.spec import StudyFileError, StudySpec
from tests.integration.test_pipeline import DATASET, MODEL, TINY_MODEL
from tests.servers import free_port

TIMING = {"V1FABRIK_HEARTBEAT_S": "0.5", "V1FABRIK_GRACE_S": "4"}
EPOCHS = 4
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return Path(synthetic.generate(tmp_path_factory.mktemp("data"), **synthetic.PRESETS["tiny"]))


def study_file(path, name, n_trials=6, seeds=(1,), **overrides) -> dict:
    """A study over the learning rate and the core. In 4 epochs on the tiny data the core's width decides the
    validation correlation (about 0.1 with 6 channels, 0.02 with 3), so once one trial is complete (enough for
    the median pruner) the narrow trials are pruned. Which wide trials complete depends on which worker asks
    first: a wide trial may be pruned by a slightly better wide one."""
    spec = {
        "name": name,
        "dataset": {"fn": DATASET, "config": {"paths": [str(path)], "batch_size": 16, "include_eye_position": True}},
        "model": {"fn": MODEL, "config": TINY_MODEL, "comment": "tiny"},
        "trainer": {"fn": "pipeline.training.standard_trainer",
                    "config": {"max_iter": EPOCHS, "verbose": False, "device": "cpu"}},
        "space": {"trainer.lr_init": {"type": "float", "low": 5e-3, "high": 2e-2, "log": True},
                  "model.hidden_channels": {"type": "categorical", "choices": [3, 6]},
                  "model.grid_mean_predictor.hidden_features": {"type": "categorical", "choices": [4, 8]}},
        "n_trials": n_trials,
        "seeds": list(seeds),
        "sampler": {"name": "random", "seed": 11},
        "pruner": {"name": "median", "n_startup_trials": 1},
    }
    return {**spec, **overrides}


def _workers(db_prefix, name, count):
    env = {**os.environ, **TIMING, "V1FABRIK_SCHEMA_PREFIX": db_prefix, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "schemas.cli", "worker", "--device", "cpu", "--experiment", name]
    return [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(count)]


def _finish(workers, timeout_s=300) -> list:
    with ThreadPoolExecutor(len(workers)) as pool:  # drain every pipe at once so no worker blocks on output
        outputs = list(pool.map(lambda w: w.communicate(timeout=timeout_s)[0], workers))
    assert all(w.returncode == 0 for w in workers), "\n---\n".join(outputs)
    return outputs


def _study(db_prefix, name):
    """The study as anyone reads it: optuna.load_study on the storage URL."""
    return optuna.load_study(study_name=name, storage=storage.storage_url(db_prefix, hide_password=False))


def _check_study(fabrik, study, spec):
    """Every recorded trial finished exactly once, as its models' rows say; returns the trials by state."""
    trials = {t.number: t for t in study.trials}
    recorded = {r["trial_number"]: r for r in (fabrik.Study.Trial & {"experiment_name": spec["name"]}).to_dicts()}
    assert len(recorded) == spec["n_trials"]
    for number, row in recorded.items():
        trial = trials[number]
        assert trial.state in FINISHED, (number, trial.state)
        assert row["params"] == trial.params and set(trial.params) == set(spec["space"])
        assert trial.user_attrs["model_hash"] == row["model_hash"]
        keys = [{k: row[k] for k in fabrik.TrainedModel.primary_key if k != "seed"} | {"seed": s} for s in spec["seeds"]]
        trained = fabrik.TrainedModel & keys
        if trial.state == TrialState.COMPLETE:
            assert len(trained) == len(keys) and trial.value == pytest.approx(trained.to_arrays("score").mean(), abs=1e-12)
            assert len(trial.intermediate_values) == EPOCHS * len(keys)
        else:
            pruned = (fabrik.PrunedModel & keys).to_dicts()  # a seed that finished before the pruning stays trained
            assert pruned and not fabrik.TrainedModel.Weights & (fabrik.PrunedModel & keys).proj()
            assert not fabrik.Checkpoint & keys
            assert all(p["epoch"] < EPOCHS and len(p["history"]["validation_corr"]) == p["epoch"] for p in pruned)
            assert len(fabrik.TrainedModel.jobs.ignored & keys) + len(trained) == len(keys)
    assert not fabrik.TrainedModel.jobs.errors & fabrik.Experiment.combinations(spec["name"]).keys()
    by_state = {state: [t for t in study.trials if t.state == state] for state in TrialState}
    assert len(by_state[TrialState.COMPLETE]) + len(by_state[TrialState.PRUNED]) == spec["n_trials"]
    return by_state


def test_two_workers_run_a_study_to_exactly_n_trials_and_prune_the_bad_ones(fabrik, tiny_path, db_prefix):
    spec = study_file(tiny_path, "two-workers")
    register.register(StudySpec.from_dict(spec))
    started = time.monotonic()
    _finish(_workers(db_prefix, spec["name"], 2))
    elapsed = time.monotonic() - started

    by_state = _check_study(fabrik, _study(db_prefix, spec["name"]), spec)
    assert by_state[TrialState.PRUNED] and by_state[TrialState.COMPLETE], by_state
    assert not by_state[TrialState.FAIL] and not by_state[TrialState.RUNNING]
    # a pruned trial was below the median of the trials complete then, so below the best complete one now
    for trial in by_state[TrialState.PRUNED]:
        step = max(trial.intermediate_values)
        complete = [t.intermediate_values[step] for t in by_state[TrialState.COMPLETE]]
        assert trial.intermediate_values[step] < max(complete)
    # trials are ordinary models of the study's experiment, scored like any other
    trained = fabrik.TrainedModel & fabrik.Experiment.combinations(spec["name"])
    assert len(trained) == len(by_state[TrialState.COMPLETE])
    assert len(trained * fabrik.Study.Trial) == len(trained)
    print(f"study of {spec['n_trials']} trials on 2 workers: {elapsed:.1f} s")


def test_killing_every_worker_mid_study_and_starting_new_ones_finishes_it(fabrik, tiny_path, db_prefix):
    spec = study_file(tiny_path, "killed", n_trials=4, seeds=[1, 2], sampler={"name": "random", "seed": 12})
    register.register(StudySpec.from_dict(spec))
    workers = _workers(db_prefix, spec["name"], 2)
    deadline = time.monotonic() + 120
    while len(fabrik.Study.Trial & {"experiment_name": spec["name"]}) < 2 or not fabrik.Checkpoint:
        assert time.monotonic() < deadline, "the study did not start"
        time.sleep(0.05)
    for worker in workers:
        worker.kill()
        worker.wait()
    orphan = _study(db_prefix, spec["name"]).ask()  # a worker killed between asking and recording its trial

    _finish(_workers(db_prefix, spec["name"], 2))
    study = _study(db_prefix, spec["name"])
    by_state = _check_study(fabrik, study, spec)
    assert [t.number for t in by_state[TrialState.FAIL]] == [orphan.number]
    assert not by_state[TrialState.RUNNING]


def test_bad_study_input_is_refused_in_one_sentence_and_registers_nothing(fabrik, tiny_path, db_prefix):
    spec = study_file(tiny_path, "refused", space={"model.shifter_type": {"type": "categorical",
                                                                          "choices": ["MLP", "Static"]}})
    with pytest.raises(StudyFileError, match=r"the model function refuses configs of this space, e\.g\. \{'model.shifter_type': 'Static'\}") as refused:
        register.register(StudySpec.from_dict(spec))
    assert "\n" not in str(refused.value)
    assert not fabrik.Study & {"experiment_name": "refused"} and not fabrik.Experiment & {"experiment_name": "refused"}
    assert "refused" not in optuna.get_all_study_names(storage.open_storage(db_prefix))

    spec = study_file(tiny_path, "taken")
    register.register(StudySpec.from_dict(spec))
    assert register.register(StudySpec.from_dict(spec)) == {"experiment_name": "taken"}  # the same study: a no-op
    with pytest.raises(StudyFileError, match="a different study named 'taken' exists"):
        register.register(StudySpec.from_dict({**spec, "n_trials": 7}))

    with dj.config.override(database__port=free_port()):
        with pytest.raises(storage.StorageUnavailable, match=r"^cannot open the Optuna storage \S+://\S+:\*\*\*@") as down:
            storage.open_storage("unreachable_")
    assert "\n" not in str(down.value) and dj.config["database.password"] not in str(down.value)


def _cli(db_prefix, *args):
    return subprocess.run([sys.executable, "-m", "schemas.cli", "search", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "V1FABRIK_SCHEMA_PREFIX": db_prefix})


def test_cli_registers_a_study_file_and_prints_the_storage_url_without_the_password(fabrik, tiny_path, db_prefix,
                                                                                      tmp_path):
    done = _cli(db_prefix, "--storage-url")
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip().splitlines()[-1]
    assert url == storage.storage_url(db_prefix) and ":***@" in url and f"{db_prefix}optuna" in url
    assert dj.config["database.password"] not in done.stdout + done.stderr

    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study_file(tiny_path, "from-cli", n_trials=3), sort_keys=False))
    done = _cli(db_prefix, str(tmp_path / "study.yaml"))
    assert done.returncode == 0, done.stderr
    assert ("study 'from-cli': 3 trials of 1 seed(s) over trainer.lr_init, model.hidden_channels, "
            "model.grid_mean_predictor.hidden_features; run it with") in done.stdout
    assert (fabrik.Study & {"experiment_name": "from-cli"}).fetch1("n_trials") == 3
    assert "study 'from-cli' has no trials yet" in _cli(db_prefix, "--trials", "from-cli").stdout

    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(study_file(tiny_path, "bad-cli", space={
        "model.hidden_channels": {"type": "int", "low": 6, "high": 3}})))
    done = _cli(db_prefix, str(tmp_path / "bad.yaml"))
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        f"v1fabrik: error: {tmp_path / 'bad.yaml'}: space 'model.hidden_channels': the range [6, 3] is empty; "
        "'low' must be below 'high'")
    assert _cli(db_prefix, "--trials", "nope").stderr.strip().splitlines()[-1] == (
        "v1fabrik: error: no study named 'nope'; register one with `v1fabrik search STUDY.yaml`")
