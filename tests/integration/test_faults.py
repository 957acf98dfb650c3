"""Fault injection against the real server: killed, preempted and racing workers, hostile rows, bad input.

Workers are real ``v1fabrik worker`` processes with a fast heartbeat (0.5 s, grace 2 s); jobs use
``slow_trainer`` (a tiny model, a fraction of a second per epoch) so a test can strike mid-epoch.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pipeline import builder
from pipeline.datasets import synthetic
from schemas.server import local as dbserver
from schemas.cli.status import report
from tests.integration import fault_functions
from tests.integration.test_pipeline import DATASET, MODEL, TINY_MODEL
from tests.servers import client_env, free_port

HELPERS = "tests.integration"
SLOW = f"{fault_functions.__name__}.slow_trainer"
TIMING = {"V1FABRIK_HEARTBEAT_S": "0.5", "V1FABRIK_GRACE_S": "4"}  # grace leaves slack for a loaded CI machine


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """Folder of a tiny synthetic dataset."""
    return Path(synthetic.generate(tmp_path_factory.mktemp("data"), **synthetic.PRESETS["tiny"]))


def tiny_config(path):
    return {"paths": [str(path)], "batch_size": 32, "include_eye_position": True}


@pytest.fixture(scope="module")
def tiny(fabrik, tiny_path):
    """``(folder, Dataset key)`` of the tiny synthetic dataset."""
    return tiny_path, fabrik.Dataset().add_entry(DATASET, tiny_config(tiny_path), skip_duplicates=True)


def _experiment(fabrik, tiny, name, models, epochs, epoch_s, seeds=(1,)):
    """Register ``name``: the tiny dataset x ``models`` hidden-channel variants x slow_trainer x seeds."""
    model_keys = [fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "hidden_channels": c}, skip_duplicates=True)
                  for c in models]
    trainer = fabrik.Trainer().add_entry(SLOW, {"epochs": epochs, "epoch_s": epoch_s}, skip_duplicates=True)
    fabrik.Experiment().add(name, [tiny[1]], model_keys, [trainer], list(seeds))
    return fabrik.Experiment.combinations(name)


def _worker(db_prefix, experiment, log_dir, env=None, cwd=None):
    env = {**(env or os.environ), **TIMING, "V1FABRIK_SCHEMA_PREFIX": db_prefix, "OMP_NUM_THREADS": "1",
           fault_functions.START_LOG_ENV: str(log_dir / "starts.log"),
           "V1FABRIK_TEST_TRAINING_LOG": str(log_dir / "finished.log")}
    command = [sys.executable, "-m", "schemas.cli", "worker", "--device", "cpu", "--experiment", experiment]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, timeout_s=90, what="condition"):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _lines(path):
    return path.read_text().split("\n")[:-1] if path.exists() else []


def test_killed_worker_job_is_taken_over_and_resumes_from_its_checkpoint(fabrik, tiny, db_prefix, tmp_path):
    combos = _experiment(fabrik, tiny, "kill9", [3], epochs=3, epoch_s=1.0)
    first = _worker(db_prefix, "kill9", tmp_path)
    _wait_for(lambda: len(fabrik.Checkpoint & combos) == 1, what="the first checkpoint")
    first.kill()  # SIGKILL mid-epoch 2: the job stays reserved under a silent worker
    first.wait()
    assert len(fabrik.TrainedModel.jobs.reserved & combos.keys()) == 1
    time.sleep(2 * float(TIMING["V1FABRIK_HEARTBEAT_S"]))
    with pytest.MonkeyPatch.context() as env:
        for name, value in TIMING.items():
            env.setenv(name, value)
        shown = report().split("stale reservations")
    assert len(shown) == 2 and f":{first.pid}, last beat" in shown[1]  # `v1fabrik status` names the dead worker

    second = _worker(db_prefix, "kill9", tmp_path)
    output = second.communicate(timeout=120)[0]
    assert second.returncode == 0, output
    assert len(fabrik.TrainedModel & combos) == 1 and not fabrik.Checkpoint & combos
    assert not fabrik.TrainedModel.jobs & combos.keys()
    starts = [line.split() for line in _lines(tmp_path / "starts.log")]
    assert [s[1:] for s in starts] == [[str(first.pid), "1"], [str(second.pid), "2"]]  # resumed after epoch 1
    assert len((fabrik.TrainedModel & combos).fetch1("output")["loss"]) == 3


def test_sigterm_returns_the_job_to_pending_and_another_worker_finishes_it(fabrik, tiny, db_prefix, tmp_path):
    combos = _experiment(fabrik, tiny, "sigterm", [5], epochs=3, epoch_s=1.0)
    first = _worker(db_prefix, "sigterm", tmp_path)
    _wait_for(lambda: len(fabrik.Checkpoint & combos) == 1, what="the first checkpoint")
    first.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    output = first.communicate(timeout=30)[0]
    assert first.returncode == 0, output
    # Bounded: the rest of one 1 s epoch plus shutdown, far inside the 60 s forced-stop deadline (slack for a loaded CI).
    assert time.monotonic() - signalled < 20
    assert len(fabrik.TrainedModel.jobs.pending & combos.keys()) == 1 and not fabrik.TrainedModel.jobs.errors & combos.keys()
    # It stopped at a checkpoint: epoch 2's, or epoch 1's when the signal came while that one was being written.
    saved = (fabrik.Checkpoint & combos).fetch1("epoch")
    assert saved in (1, 2)

    second = _worker(db_prefix, "sigterm", tmp_path)
    assert second.wait(timeout=120) == 0
    assert len(fabrik.TrainedModel & combos) == 1 and not fabrik.Checkpoint & combos
    assert [line.split()[2] for line in _lines(tmp_path / "starts.log")] == ["1", str(saved + 1)]


def test_four_workers_two_killed_complete_twelve_keys_exactly_once(fabrik, tiny, db_prefix, tmp_path):
    combos = _experiment(fabrik, tiny, "twelve", [2, 4, 6, 7], epochs=2, epoch_s=0.3, seeds=(1, 2, 3))
    workers = [_worker(db_prefix, "twelve", tmp_path) for _ in range(4)]
    _wait_for(lambda: len(fabrik.Checkpoint & combos) >= 1, what="the first checkpoint")
    rng = random.Random(8)
    for victim in rng.sample(workers, 2):
        time.sleep(rng.uniform(0.2, 2.0))
        victim.kill()
    with ThreadPoolExecutor(len(workers)) as pool:  # drain every pipe at once so no worker blocks on output
        outputs = list(pool.map(lambda w: w.communicate(timeout=240)[0], workers))
    assert sorted(w.returncode for w in workers) == [-signal.SIGKILL, -signal.SIGKILL, 0, 0], "\n---\n".join(outputs)

    assert len(fabrik.TrainedModel & combos) == 12 and len(fabrik.TrainedModel.Weights & combos) == 12
    assert not fabrik.Checkpoint & combos and not fabrik.TrainedModel.jobs & combos.keys()
    killed = {str(w.pid) for w in workers if w.returncode < 0}
    finished = [line.split() for line in _lines(tmp_path / "finished.log")]
    survivors = [key for key, pid in finished if pid not in killed]
    assert len(survivors) == len(set(survivors))  # no key trained to the end twice by the live workers
    assert {key for key, _ in finished} == {f"{k['model_hash']}-{k['seed']}" for k in combos.to_dicts()}


# Run in the working folder of a private server (its datajoint.json and .secrets/): register one job.
REGISTER = """
import json, sys, schemas
schemas.activate()
recipes = json.loads(sys.argv[1])
keys = [getattr(schemas, kind)().add_entry(fn, config) for kind, (fn, config) in recipes.items()]
schemas.Seed.insert1({"seed": 1})
schemas.Experiment().add("restart", *([key] for key in keys), [1])
"""
COUNT = """
import json, schemas
schemas.activate()
combos = schemas.Experiment.combinations("restart")
print(json.dumps({"results": len(schemas.TrainedModel & combos), "weights": len(schemas.TrainedModel.Weights & combos),
                  "checkpoints": len(schemas.Checkpoint & combos), "jobs": len(schemas.TrainedModel.jobs & combos.keys())}))
"""


@pytest.fixture
def private_server(tmp_path):
    """``(server, working folder, client environment)`` of a MariaDB server of this test's own."""
    srv = dbserver.server("mariadb", home=tmp_path / "home", port=free_port())
    workdir = tmp_path / "work"
    workdir.mkdir()
    dbserver.up(srv, workdir)
    yield srv, workdir, client_env(**{builder.ALLOWED_MODULES_ENV: HELPERS})
    dbserver.down(srv)


@pytest.mark.db
def test_database_restart_during_training_loses_nothing(private_server, tiny_path, tmp_path):
    srv, workdir, env = private_server
    prefix = "restart_"

    def python(code, *args):
        done = subprocess.run([sys.executable, "-c", code, *args], cwd=workdir, env={**env, "V1FABRIK_SCHEMA_PREFIX": prefix},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    python(REGISTER, json.dumps({"Dataset": [DATASET, tiny_config(tiny_path)], "Model": [MODEL, TINY_MODEL],
                                 "Trainer": [SLOW, {"epochs": 3, "epoch_s": 1.0}]}))
    worker = _worker(prefix, "restart", tmp_path, env=env, cwd=workdir)
    _wait_for(lambda: _lines(tmp_path / "starts.log"), what="training to start")
    dbserver.down(srv)
    time.sleep(1.5)  # three missed heartbeats
    dbserver.up(srv, workdir)
    output = worker.communicate(timeout=120)[0]

    assert worker.returncode == 0, output
    # the worker saw the outage: its heartbeat, and any checkpoint due then, failed and it went on
    assert "heartbeat failed (OperationalError" in output, output
    assert len(_lines(tmp_path / "starts.log")) == 1  # it trained on through the outage, no restart
    assert json.loads(python(COUNT).splitlines()[-1]) == {"results": 1, "weights": 1, "checkpoints": 0, "jobs": 0}


def test_hostile_rows_are_refused_and_run_nothing(fabrik, tiny, tmp_path):
    dataset_key = tiny[1]
    sentinel = tmp_path / "pwned"
    user = fabrik.Fabrikant.ensure_current_user()
    hostile = [
        ("os.system", {"command": f"touch {sentinel}"}),
        ("subprocess.run", {"args": ["touch", str(sentinel)]}),
        ("pipeline.training.trainer.tqdm", {}),  # a re-exported outsider: refused by its __module__
        ("builtins.exec", {"source": f"open({str(sentinel)!r}, 'w')"}),
    ]
    conn = fabrik.Model.connection
    for i, (fn, config) in enumerate(hostile):
        fabrik.Model.insert1({"model_fn": fn, "model_hash": f"{i:032d}", "model_config": config, "model_fabrikant": user})
    # and one straight through SQL, without DataJoint's insert
    conn.query(f"UPDATE {fabrik.Model.full_table_name} SET model_fn=%s WHERE model_hash=%s",
               args=("subprocess.call", f"{1:032d}"))
    # a config value that looks like a function path is a value, never imported
    trainer = fabrik.Trainer().add_entry("pipeline.training.standard_trainer", {"loss_function": "os.system"},
                                         skip_duplicates=True)
    good_model = fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True)
    keys = [{**dataset_key, "model_fn": fn, "model_hash": f"{i:032d}"} for i, (fn, _) in enumerate(hostile)]
    keys[1]["model_fn"] = "subprocess.call"
    dotted_value = {**dataset_key, **good_model, **trainer, "seed": 1}
    slow = fabrik.Trainer().add_entry(SLOW, {"epochs": 1, "epoch_s": 0}, skip_duplicates=True)
    result = fabrik.TrainedModel.populate([{**k, **slow, "seed": 1} for k in keys] + [dotted_value],
                                          reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == 5
    errors = {(e["model_fn"], e["trainer_fn"]): e["error_message"] for e in
              (fabrik.TrainedModel.jobs.errors & (keys + [dotted_value])).to_dicts()}
    for fn in ("os.system", "subprocess.call", "pipeline.training.trainer.tqdm", "builtins.exec"):
        assert errors[fn, SLOW].startswith("UnregisteredFunctionError"), errors[fn, SLOW]
    assert "unknown loss_function 'os.system'" in errors[dotted_value["model_fn"], dotted_value["trainer_fn"]]
    assert not sentinel.exists()
    assert not fabrik.TrainedModel & (keys + [dotted_value])
    (fabrik.TrainedModel.jobs & (keys + [dotted_value])).delete()
    (fabrik.Model & keys).delete(prompt=False)


WRONG_ROLE = [  # (table, function, the role it was given, what the one-line refusal says)
    ("Dataset", "pipeline.datasets.synthetic.generate", "dataset", "registered for no role"),
    ("Model", "pipeline.training.standard_trainer", "model", "registered as trainer"),
    ("Dataset", "pipeline.datasets.synthetic._write", "dataset", "private"),
    ("Trainer", "pipeline.utility.plots.training_history", "trainer", "registered for no role"),
    ("Model", "pipeline.models.baseline_cnn.core_output_shape", "model", "register it with `@register('model')`"),
]


def _hostile_config(table, sentinel):
    """A config that would write into ``sentinel`` (or fill the disk) if the function ever ran."""
    if table == "Dataset":
        return {"path": str(sentinel), "out": str(sentinel), "overwrite": True, "n_neurons": 10, "n_train": 10**9,
                "n_validation": 1, "n_test_images": 1, "n_repeats": 1}
    return {}


def test_functions_of_another_role_are_refused_at_add_entry_and_at_populate(fabrik, tiny, tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    user = fabrik.Fabrikant.ensure_current_user()
    good = {"Dataset": tiny[1], "Model": fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True),
            "Trainer": fabrik.Trainer().add_entry(SLOW, {"epochs": 1, "epoch_s": 0}, skip_duplicates=True)}
    keys = []
    for i, (table_name, fn, role, says) in enumerate(WRONG_ROLE):
        table = getattr(fabrik, table_name)
        with pytest.raises(builder.UnregisteredFunctionError) as refused:
            table().add_entry(fn, _hostile_config(table_name, sentinel))
        message = str(refused.value)
        assert fn in message and f"not a {role} function" in message and says in message, message
        assert "\n" not in message
        assert not table & {f"{role}_fn": fn}
        # The same row written behind the API's back (or by an older version without roles).
        row = {f"{role}_fn": fn, f"{role}_hash": f"{i:032d}", f"{role}_config": _hostile_config(table_name, sentinel),
               f"{role}_fabrikant": user}
        table.insert1(row)
        keys.append({**good, table_name: {k: row[k] for k in (f"{role}_fn", f"{role}_hash")}})
    combos = [{**k["Dataset"], **k["Model"], **k["Trainer"], "seed": 1} for k in keys]
    result = fabrik.TrainedModel.populate(combos, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == len(WRONG_ROLE)
    messages = (fabrik.TrainedModel.jobs.errors & combos).to_arrays("error_message")
    assert len(messages) == len(WRONG_ROLE)
    for (_, fn, role, says) in WRONG_ROLE:
        assert any(m.startswith("UnregisteredFunctionError") and fn in m and says in m for m in messages), (fn, messages)
    assert list(sentinel.iterdir()) == []  # nothing was written where the rows said
    assert not fabrik.TrainedModel & combos and not fabrik.Checkpoint & combos
    (fabrik.TrainedModel.jobs & combos).delete()


def _broken_copy(base: Path, name: str, damage) -> str:
    copy = base.parent / name
    shutil.copytree(base, copy)
    damage(copy / "data" / "responses" / "3.npy")
    return str(copy)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:60])


def _nan(path):
    values = np.load(path)
    values[0] = np.nan
    np.save(path, values)


def _drop_neuron(path):
    np.save(path, np.load(path)[:-1])


def test_every_bad_input_is_a_clear_job_error_and_nothing_is_stored(fabrik, tiny):
    base, dataset_key = tiny
    datasets = {
        "missing file": ({"paths": [_broken_copy(base, "missing", Path.unlink)], "batch_size": 8}, "holds 103 trials"),
        "truncated npy": ({"paths": [_broken_copy(base, "truncated", _truncate)], "batch_size": 8}, "cannot read"),
        "NaN responses": ({"paths": [_broken_copy(base, "nan", _nan)], "batch_size": 8}, "contains NaN"),
        "neuron count": ({"paths": [_broken_copy(base, "neurons", _drop_neuron)], "batch_size": 8}, "has shape (39,)"),
        "zero batch": ({"paths": [str(base)], "batch_size": 0}, "batch_size"),
        "unknown key": ({"paths": [str(base)], "batch_size": 8, "batchsize": 8}, "batchsize"),
    }
    models = {
        "negative size": ({**TINY_MODEL, "hidden_channels": -3}, "hidden_channels"),
        "zero size": ({**TINY_MODEL, "input_kern": 0}, "input_kern"),
        "wrong type": ({**TINY_MODEL, "hidden_channels": "4"}, "hidden_channels"),
    }
    slow = fabrik.Trainer().add_entry(SLOW, {"epochs": 1, "epoch_s": 0}, skip_duplicates=True)
    good_model = fabrik.Model().add_entry(MODEL, TINY_MODEL, skip_duplicates=True)
    expected = {}
    for name, (config, message) in datasets.items():
        key = fabrik.Dataset().add_entry(DATASET, config, comment=name)
        expected[name] = ({**key, **good_model, **slow}, message)
    for name, (config, message) in models.items():
        key = fabrik.Model().add_entry(MODEL, config, comment=name)
        expected[name] = ({**dataset_key, **key, **slow}, message)
    for name, fn, message in [("NaN loss", "nan_trainer", "NonFiniteLossError"),
                              ("trainer returns a list", "list_trainer", "must return (score, output, state_dict)")]:
        trainer = fabrik.Trainer().add_entry(f"{HELPERS}.fault_functions.{fn}", {}, skip_duplicates=True)
        expected[name] = ({**dataset_key, **good_model, **trainer}, message)
    for name, kind, fn, message in [("dataset returns a list", "Dataset", "dict_dataset", "returned a list"),
                                    ("model returns a str", "Model", "string_model", "not a torch.nn.Module")]:
        key = getattr(fabrik, kind)().add_entry(f"{HELPERS}.fault_functions.{fn}", {}, skip_duplicates=True)
        parts = {**dataset_key, **good_model, **slow, **key}
        expected[name] = (parts, message)
    keys = [{**key, "seed": 1} for key, _ in expected.values()]

    result = fabrik.TrainedModel.populate(keys, reserve_jobs=True, suppress_errors=True)
    assert result["success_count"] == 0 and len(result["error_list"]) == len(expected)
    for name, (key, message) in expected.items():
        job = (fabrik.TrainedModel.jobs & {**key, "seed": 1}).fetch1()
        assert job["status"] == "error" and message in job["error_message"], (name, job["error_message"])
        assert "Traceback" in job["error_stack"], name
    assert not fabrik.TrainedModel & keys and not fabrik.Checkpoint & keys
    (fabrik.TrainedModel.jobs & keys).delete()
