"""A job's life against the real server (issue 16): it runs once, and only its owner writes it.

- a worker declared dead keeps nothing it computes afterwards: its result is dropped, its job goes
  back to the queue (or stays with its new owner), and another worker finishes it;
- SIGTERM stops workers at their next checkpoint, hands every job back, and nothing new starts;
- one heartbeat at a time sweeps, another takes over when it stops, and a sweeper whose session was
  dropped stops sweeping;
- the score tables' model cache never scores a replaced model with the old weights;
- Experiment.add and Fabrikant.ensure_current_user refuse cleanly and write nothing;
- standard_trainer resumed from a real Checkpoint row ends bit for bit where an uninterrupted run ends.

Workers are real ``v1fabrik worker`` processes with a fast heartbeat; their output goes to files in
the test's tmp_path (a pipe could fill up and block a worker that runs for a while).
"""
import datetime
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import datajoint as dj
import numpy as np
import pytest
import torch

from pipeline import builder
from pipeline.datasets import synthetic
from pipeline.training import standard_trainer
from pipeline.utility import scores
from schemas.jobs import recovery, sweep
from schemas.jobs.heartbeat import Heartbeat
from schemas.server.connection import private_connection
from schemas.tables.experiment import ExperimentConflict
from schemas.tables.jobtable import JobLost, own_id
from schemas.tables.recipes import FabrikantConflict
from schemas.tables.scores import SCORE_TABLES
from schemas.tables.trained import TrainingHooks
from tests.integration import fault_functions
from tests.integration.test_pipeline import DATASET, MODEL, TINY_MODEL

SLOW = f"{fault_functions.__name__}.slow_trainer"
STANDARD = "pipeline.training.standard_trainer"
FAST_BEAT = {"V1FABRIK_HEARTBEAT_S": "0.5", "V1FABRIK_GRACE_S": "4"}


# --- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """Folder of a tiny synthetic dataset."""
    return Path(synthetic.generate(tmp_path_factory.mktemp("data"), **synthetic.PRESETS["tiny"]))


def _dataset_config(path, batch_size=16):
    return {"paths": [str(path)], "batch_size": batch_size, "include_eye_position": True}


def _recipes(fabrik, tiny_path, trainer_fn, trainer_config, hidden_channels=4, batch_size=16):
    """Dataset, Model and Trainer keys of the tiny data, a tiny model and the given trainer."""
    dataset = fabrik.Dataset().add_entry(DATASET, _dataset_config(tiny_path, batch_size), skip_duplicates=True)
    model = fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "hidden_channels": hidden_channels}, skip_duplicates=True)
    trainer = fabrik.Trainer().add_entry(trainer_fn, trainer_config, skip_duplicates=True)
    return dataset, model, trainer


def _worker(db_prefix, experiment, log_dir, name, timing, **env):
    """Start a ``v1fabrik worker`` process on the experiment; its output goes to ``log_dir/<name>.log``."""
    env = {**os.environ, **timing, "V1FABRIK_SCHEMA_PREFIX": db_prefix, "OMP_NUM_THREADS": "1",
           fault_functions.START_LOG_ENV: str(log_dir / "starts.log"), **env}
    command = [sys.executable, "-m", "schemas.cli", "worker", "--device", "cpu", "--experiment", experiment]
    with open(log_dir / f"{name}.log", "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    process.log = log_dir / f"{name}.log"
    return process


def _output(worker) -> str:
    return worker.log.read_text()


def _stop_all(workers):
    """Kill whatever of ``workers`` still runs (after a failed assertion)."""
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def _wait_for(condition, timeout_s=60, what="condition", poll_s=0.05, workers=()):
    """Poll ``condition`` until true and return its value; fail after ``timeout_s`` or when one of ``workers`` exits."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        exited = [w for w in workers if w.poll() is not None]
        assert not exited, f"a worker exited ({exited[0].returncode}) while waiting for {what}:\n{_output(exited[0])}"
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}:\n" + "\n---\n".join(
            _output(w) for w in workers)
        time.sleep(poll_s)
    return value


def _starts(log_dir) -> list:
    """``[(pid, first epoch)]`` of every training run slow_trainer logged, in order."""
    path = log_dir / "starts.log"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []
    return [(int(pid), int(epoch)) for _, pid, epoch in (line.split() for line in lines)]


def _server_now(connection):
    return connection.query("SELECT CURRENT_TIMESTAMP(3)").fetchone()[0]


def _set_last_beat(fabrik, ident, age_s, connection=None):
    """Register ``ident`` in LiveWorker (if it is not) with its last beat ``age_s`` seconds ago (server time)."""
    connection = connection or dj.conn()
    q = connection.adapter.quote_identifier
    last_beat = _server_now(connection) - datetime.timedelta(seconds=age_s)
    table = fabrik.LiveWorker.full_table_name
    if not fabrik.LiveWorker & ident:
        fabrik.LiveWorker.insert1({**ident, "device": "cpu"})
    connection.query(f"UPDATE {table} SET {q('last_beat')}=%s WHERE {q('host')}=%s AND {q('pid')}=%s",
                     args=(last_beat, ident["host"], ident["pid"]))


def _declare_dead_and_sweep(fabrik, ident) -> int:
    """Age ``ident``'s heartbeat by an hour, then sweep from another connection as the sweeper would.

    Returns how many jobs the sweep re-pended.
    """
    connection = private_connection()
    try:
        _set_last_beat(fabrik, ident, 3600, connection)
        return sweep.sweep(connection, 600.0, recovery.job_tables())
    finally:
        connection.close()


def _reserve_as(fabrik, key, host, pid) -> None:
    """Put ``key``'s TrainedModel job in the queue reserved by worker ``host:pid`` (as its reserve would)."""
    jobs = fabrik.TrainedModel.jobs
    pk = {k: key[k] for k in fabrik.TrainedModel.primary_key}
    (jobs & pk).delete_quick()
    jobs.insert1({**pk, "status": "reserved", "priority": 5, "host": host, "pid": pid,
                  "reserved_time": _server_now(dj.conn())})


def _job(fabrik, key) -> dict:
    return (fabrik.TrainedModel.jobs & {k: key[k] for k in fabrik.TrainedModel.primary_key}).fetch1()


def _error_rows(fabrik, keys) -> int:
    return sum(len(table.jobs.errors & keys) for table in (fabrik.TrainedModel, *SCORE_TABLES))


# --- 5. who: fabrikants and experiments (first: it needs the current user unregistered) ----------------


def test_fabrikant_name_taken_by_another_database_user_is_refused_and_nothing_written(fabrik):
    user = fabrik.Fabrikant.database_user()
    assert fabrik.Fabrikant.get_current_user() is None, "this test must run before anything registers the user"
    fabrik.Fabrikant.insert1({"fabrikant_name": user[:32], "dj_username": f"not_{user}"[:64]})

    with pytest.raises(FabrikantConflict) as refused:
        fabrik.Fabrikant.ensure_current_user()
    message = str(refused.value)
    assert "\n" not in message and repr(user[:32]) in message and repr(f"not_{user}") in message
    assert fabrik.Fabrikant.to_dicts() == [{"fabrikant_name": user[:32], "dj_username": f"not_{user}"[:64],
                                            "full_name": "", "email": "", "affiliation": ""}]
    assert not fabrik.Fabrikant & {"dj_username": user}

    (fabrik.Fabrikant & {"fabrikant_name": user[:32]}).delete_quick()
    assert fabrik.Fabrikant.ensure_current_user() == user[:32]  # the name free again: the user registers
    assert len(fabrik.Fabrikant & {"dj_username": user}) == 1


def test_experiment_of_another_fabrikant_is_refused_unless_joined(fabrik, tiny_path):
    dataset, model, trainer = _recipes(fabrik, tiny_path, STANDARD, {"max_iter": 1, "verbose": False})
    fabrik.Fabrikant.insert1({"fabrikant_name": "colleague", "dj_username": "colleague_db"}, skip_duplicates=True)
    assert fabrik.Experiment().add("shared", [dataset], [model], [trainer], [1], fabrikant="colleague") == 1
    restriction = fabrik.Experiment.Restriction & {"experiment_name": "shared"}

    with pytest.raises(ExperimentConflict) as refused:
        fabrik.Experiment().add("shared", [dataset], [model], [trainer], [2, 3])
    message = str(refused.value)
    assert "\n" not in message and "'colleague'" in message and "join" in message
    assert len(restriction) == 1 and set(restriction.to_arrays("seed")) == {1}

    assert fabrik.Experiment().add("shared", [dataset], [model], [trainer], [2, 3], join=True) == 2
    assert len(restriction) == 3 and set(restriction.to_arrays("seed")) == {1, 2, 3}
    assert (fabrik.Experiment & {"experiment_name": "shared"}).fetch1("experiment_fabrikant") == "colleague"
    assert fabrik.Experiment().add("shared", [dataset], [model], [trainer], [1], fabrikant="colleague") == 1
    assert len(restriction) == 3  # adding again is idempotent for the owner


def test_experiment_with_one_bad_key_writes_nothing(fabrik, tiny_path):
    dataset, model, trainer = _recipes(fabrik, tiny_path, STANDARD, {"max_iter": 1, "verbose": False})
    missing_model = {"model_fn": MODEL, "model_hash": "f" * 32}
    experiments, restrictions = len(fabrik.Experiment()), len(fabrik.Experiment.Restriction())
    for models, seeds in (([model, missing_model], [1, 2]), ([model], [1, 99])):  # a missing recipe; a missing seed
        with pytest.raises(dj.errors.IntegrityError):
            fabrik.Experiment().add("broken", [dataset], models, [trainer], seeds)
        assert not fabrik.Experiment & {"experiment_name": "broken"}
        assert not fabrik.Experiment.Restriction & {"experiment_name": "broken"}
    assert (len(fabrik.Experiment()), len(fabrik.Experiment.Restriction())) == (experiments, restrictions)
    assert not dj.conn().in_transaction


# --- 1. a swept worker's result is dropped --------------------------------------------------------------


class _SweptHooks(TrainingHooks):
    """The notebook hooks, but this process is declared dead and swept at a chosen point of the job.

    Args:
        during_epoch: sweep right after this epoch's checkpoint is written (None: not during training).
        before_insert: sweep once the result is in memory, before make_insert.
        new_owner: after the sweep, another worker ``(host, pid)`` reserves the job.
    """

    def __init__(self, fabrik, key, during_epoch=None, before_insert=False, new_owner=None):
        self.fabrik, self.key, self.new_owner = fabrik, key, new_owner
        self.during_epoch, self.sweep_before_insert = during_epoch, before_insert
        self.epochs, self.swept = 0, []

    def _sweep(self):
        self.swept.append(_declare_dead_and_sweep(self.fabrik, own_id()))
        if self.new_owner:
            _reserve_as(self.fabrik, self.key, *self.new_owner)

    def epoch_done(self, save):
        save()
        self.epochs += 1
        if self.epochs == self.during_epoch:
            self._sweep()

    def before_insert(self):
        if self.sweep_before_insert:
            self._sweep()


@pytest.mark.parametrize("case", ["before insert, left pending", "before insert, taken by another worker",
                                  "during training"])
def test_swept_job_result_is_dropped_in_process(fabrik, tiny_path, monkeypatch, case):
    seed = {"before insert, left pending": 1, "before insert, taken by another worker": 2, "during training": 3}[case]
    dataset, model, trainer = _recipes(fabrik, tiny_path, STANDARD, {"max_iter": 3, "verbose": False, "device": "cpu"})
    key = {**dataset, **model, **trainer, "seed": seed}
    other = ("other-host", 4242) if case == "before insert, taken by another worker" else None
    hooks = _SweptHooks(fabrik, key, during_epoch=1 if case == "during training" else None,
                        before_insert=case.startswith("before insert"), new_owner=other)
    monkeypatch.setattr(fabrik.TrainedModel, "hooks", hooks)

    result = fabrik.TrainedModel.populate(key, reserve_jobs=True, suppress_errors=True, return_exception_objects=True)

    assert hooks.swept == [1]  # the sweeper re-pended exactly this job
    assert result["success_count"] == 0 and len(result["error_list"]) == 1
    (failed_key, error), = result["error_list"]
    assert isinstance(error, JobLost) and failed_key == key and "handed to another worker" in str(error)
    assert not fabrik.TrainedModel & key and not fabrik.TrainedModel.Weights & key
    job = _job(fabrik, key)
    if other:  # the new owner's reservation is left as it was
        assert (job["status"], job["host"], job["pid"], job["error_message"]) == ("reserved", *other, "")
    else:
        assert (job["status"], job["host"], job["pid"], job["error_message"]) == ("pending", "", 0, "")
    assert not fabrik.TrainedModel.jobs.errors & key
    # The checkpoint stays where the job was lost (the epoch after the sweep was not written): a resume starts there.
    assert (fabrik.Checkpoint & key).fetch1("epoch") == (1 if case == "during training" else 3)
    assert not fabrik.LiveWorker & own_id()

    if other:
        (fabrik.TrainedModel.jobs & key).delete_quick()
    monkeypatch.setattr(fabrik.TrainedModel, "hooks", TrainingHooks())
    assert fabrik.TrainedModel.populate(key, reserve_jobs=True, suppress_errors=True)["success_count"] == 1
    assert len(fabrik.TrainedModel & key) == 1 and not fabrik.Checkpoint & key and not fabrik.TrainedModel.jobs & key


def test_swept_worker_drops_its_result_and_another_worker_finishes(fabrik, tiny_path, db_prefix, tmp_path):
    dataset, model, trainer = _recipes(fabrik, tiny_path, SLOW, {"epochs": 2, "epoch_s": 4.0}, hidden_channels=3)
    fabrik.Experiment().add("swept", [dataset], [model], [trainer], [1])
    combos = fabrik.Experiment.combinations("swept")
    key = {**dataset, **model, **trainer, "seed": 1}
    # A dead worker's job outside the experiment, still inside the grace period: while it waits to be swept,
    # a worker with nothing to do polls every beat instead of exiting, so the idle worker is ready to take
    # over the moment the busy one is swept.
    ghost = {"host": "ghost-host", "pid": 4343}
    ghost_key = {**key, "seed": 3}
    _set_last_beat(fabrik, ghost, 10)
    _reserve_as(fabrik, ghost_key, **ghost)
    timing = {"V1FABRIK_HEARTBEAT_S": "0.5", "V1FABRIK_GRACE_S": "120"}  # only the test sweeps
    workers = [_worker(db_prefix, "swept", tmp_path, f"worker{i}", timing) for i in range(2)]
    try:
        _wait_for(lambda: len(fabrik.Checkpoint & key), what="the first checkpoint", workers=workers)
        holder = _job(fabrik, key)["pid"]
        a = next(w for w in workers if w.pid == holder)
        b = next(w for w in workers if w.pid != holder)
        _wait_for(lambda: fabrik.LiveWorker & {"pid": b.pid}, timeout_s=10, what="the idle worker to register",
                  workers=workers)

        def swept():
            """Age A's heartbeat and sweep, as the sweeper would (a worker's own sweeper may get there first)."""
            _declare_dead_and_sweep(fabrik, {"host": own_id()["host"], "pid": a.pid})
            job = _job(fabrik, key)
            return job["status"] != "reserved" or job["pid"] != a.pid

        _wait_for(swept, timeout_s=10, what="the sweep of worker A", workers=workers)
        _wait_for(lambda: fabrik.TrainedModel & key, timeout_s=60, what="worker B to finish the job", workers=workers)
        _wait_for(lambda: len(fabrik.Score & key) == len(fabrik.Measure()), timeout_s=60, what="the job's scores",
                  workers=workers)
        (fabrik.TrainedModel.jobs & ghost_key).delete_quick()  # nothing left to wait for: both workers exit
        (fabrik.LiveWorker & ghost).delete_quick()
        for worker in workers:
            assert worker.wait(timeout=30) == 0, _output(worker)
    finally:
        (fabrik.TrainedModel.jobs & ghost_key).delete_quick()
        (fabrik.LiveWorker & ghost).delete_quick()
        _stop_all(workers)

    a_output = _output(a)
    assert "this worker was declared dead" in a_output, a_output  # A's heartbeat noticed
    assert "result dropped" in a_output and "JobLost" not in _output(b), a_output
    # A started at epoch 1 and stopped at the end of epoch 2 without writing it; B resumed after epoch 1.
    assert _starts(tmp_path) == [(a.pid, 1), (b.pid, 2)]
    assert len(fabrik.TrainedModel & combos) == 1 and len(fabrik.TrainedModel.Weights & combos) == 1
    assert len((fabrik.TrainedModel & key).fetch1("output")["loss"]) == 2
    assert not fabrik.Checkpoint & combos and not fabrik.TrainedModel.jobs & key
    assert _error_rows(fabrik, key) == 0


# --- 2. SIGTERM: nothing new starts, everything unfinished goes back ---------------------------------------


def test_sigterm_two_workers_hand_back_every_job_and_start_nothing_new(fabrik, tiny_path, db_prefix, tmp_path):
    models = [fabrik.Model().add_entry(MODEL, {**TINY_MODEL, "hidden_channels": c}, skip_duplicates=True)
              for c in (2, 5)]
    dataset, _, trainer = _recipes(fabrik, tiny_path, SLOW, {"epochs": 4, "epoch_s": 1.0})
    fabrik.Experiment().add("sigterm4", [dataset], models, [trainer], [1, 2])
    combos = fabrik.Experiment.combinations("sigterm4")
    keys = [{k: row[k] for k in fabrik.TrainedModel.primary_key} for row in combos.keys()]
    assert len(keys) == 4
    workers = [_worker(db_prefix, "sigterm4", tmp_path, f"worker{i}", FAST_BEAT) for i in range(2)]
    try:
        _wait_for(lambda: {pid for pid, _ in _starts(tmp_path)} == {w.pid for w in workers},
                  what="both workers training", workers=workers)
        started = _starts(tmp_path)
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            assert worker.wait(timeout=30) == 0, _output(worker)
    finally:
        _stop_all(workers)

    assert all("SIGTERM received" in _output(w) for w in workers)
    assert _starts(tmp_path) == started  # the stopping workers reserved nothing new
    trained = fabrik.TrainedModel & combos
    assert len(trained) == len(started) - 2  # (0 unless a worker finished a whole 4 s job before the other started)
    jobs = fabrik.TrainedModel.jobs & keys
    assert _error_rows(fabrik, keys) == 0 and not jobs.reserved
    assert len(jobs.pending) == len(keys) - len(trained) >= 2
    as_set = lambda rows: {tuple(sorted(row.items())) for row in rows}  # noqa: E731
    assert as_set(jobs.pending.keys()) == as_set(keys) - as_set(trained.keys())  # every unfinished key is pending
    # The two interrupted jobs stopped at a checkpoint (the one written on the way out) and resume from it.
    epochs = (fabrik.Checkpoint & combos).to_arrays("epoch")
    assert len(epochs) == 2 and all(1 <= e < 4 for e in epochs)
    assert not fabrik.LiveWorker & [{"pid": w.pid} for w in workers]  # both deregistered


# --- 3. one sweeper at a time ------------------------------------------------------------------------------


def test_one_heartbeat_sweeps_at_a_time_and_another_takes_over(fabrik, tiny_path, monkeypatch):
    for name, value in {"V1FABRIK_HEARTBEAT_S": "0.5", "V1FABRIK_GRACE_S": "2"}.items():
        monkeypatch.setenv(name, value)
    idents = [{"host": f"beat-host-{i}", "pid": 5000 + i} for i in range(4)]
    beats = [Heartbeat("cpu", ident=ident) for ident in idents]
    try:
        for heartbeat in beats:
            heartbeat.start()
        _wait_for(lambda: min(h.beats for h in beats) >= 5, timeout_s=10, what="five beats of each worker")
        assert len(fabrik.LiveWorker & idents) == 4
        sweepers = [h for h in beats if h.sweeping]
        assert len(sweepers) == 1
        first = sweepers[0]
        assert all(h.sweeps == 0 for h in beats if h is not first)
        # One sweep per beat of the sweeper, not one per beat of every worker.
        beats_now, sweeps_now = first.beats, first.sweeps  # read apart from the thread: allow one in flight
        assert beats_now - 1 <= sweeps_now <= beats_now + 1
        assert sum(h.sweeps for h in beats) <= max(h.beats for h in beats) + 1

        first.stop()  # its connection closes, and the server releases the lock
        rest = [h for h in beats if h is not first]
        beats_then = {id(h): h.beats for h in rest}
        second = _wait_for(lambda: [h for h in rest if h.sweeping], timeout_s=5, what="another sweeper")
        assert len(second) == 1 and max(h.beats - beats_then[id(h)] for h in rest) <= 3  # within a few beats
        second = second[0]
        assert not fabrik.LiveWorker & first.ident

        # A dead worker (silent for an hour) that holds a job: the new sweeper gives the job back.
        dead = {"host": "dead-host", "pid": 6000}
        dataset, model, trainer = _recipes(fabrik, tiny_path, STANDARD, {"max_iter": 1, "verbose": False})
        key = {**dataset, **model, **trainer, "seed": 2}
        _set_last_beat(fabrik, dead, 3600)
        _reserve_as(fabrik, key, **dead)
        _wait_for(lambda: _job(fabrik, key)["status"] == "pending", timeout_s=3, what="the dead worker's job re-pended")
        assert not fabrik.LiveWorker & dead
        assert (_job(fabrik, key)["host"], _job(fabrik, key)["pid"]) == ("", 0)
        time.sleep(1.0)
        assert [h for h in rest if h.sweeping] == [second]
        assert all(h.sweeps == 0 for h in rest if h is not second)
        assert len(fabrik.LiveWorker & idents) == 3  # the live ones were never swept
    finally:
        for heartbeat in beats:
            if not heartbeat._stopped.is_set():
                heartbeat.stop()
    assert not fabrik.LiveWorker & idents
    (fabrik.TrainedModel.jobs & key).delete_quick()


def _drop_session_holding(connection, lock) -> None:
    """End the database session that holds the named ``lock`` (as a server restart or a network cut would)."""
    if connection.adapter.backend == "postgresql":
        pid = connection.query("SELECT pid FROM pg_locks WHERE locktype='advisory' AND granted AND objid=%s",
                               args=(zlib.crc32(lock.encode()),)).fetchone()[0]
        connection.query("SELECT pg_terminate_backend(%s)", args=(pid,))
    else:
        session = connection.query("SELECT IS_USED_LOCK(%s)", args=(lock[:64],)).fetchone()[0]
        connection.query(f"KILL {int(session)}")


def test_sweeper_that_lost_its_session_stops_sweeping(fabrik, monkeypatch):
    for name, value in {"V1FABRIK_HEARTBEAT_S": "0.5", "V1FABRIK_GRACE_S": "2"}.items():
        monkeypatch.setenv(name, value)
    beats = [Heartbeat("cpu", ident={"host": f"reconnect-host-{i}", "pid": 5100 + i}) for i in range(2)]
    try:
        for heartbeat in beats:
            heartbeat.start()
        _wait_for(lambda: min(h.beats for h in beats) >= 3, timeout_s=10, what="three beats of each worker")
        assert sum(h.sweeping for h in beats) == 1
        _drop_session_holding(dj.conn(), sweep.lock_name())
        counts = [h.beats for h in beats]
        _wait_for(lambda: min(h.beats - c for h, c in zip(beats, counts)) >= 4, timeout_s=10, what="four more beats")
        assert sum(h.sweeping for h in beats) == 1  # fails: the old sweeper reconnected and sweeps on, lockless
        sweeps = [h.sweeps for h in beats]
        time.sleep(1.5)
        assert sum(h.sweeps - s for h, s in zip(beats, sweeps)) <= 4  # about one sweep per beat, not two
    finally:
        for heartbeat in beats:
            heartbeat.stop()


# --- 4. the score tables' model cache ------------------------------------------------------------------------


def test_replaced_model_is_scored_with_its_new_weights(fabrik, tiny_path):
    dataset, model, trainer = _recipes(fabrik, tiny_path, STANDARD, {"max_iter": 2, "verbose": False, "device": "cpu"})
    key = {**dataset, **model, **trainer, "seed": 1}
    fabrik.TrainedModel.populate(key)
    fabrik.TestCorrelation.populate(key)
    old = (fabrik.TestCorrelation & key).fetch1("test_correlation")

    row = (fabrik.TrainedModel & key).fetch1()
    weights = (fabrik.TrainedModel.Weights & key).fetch1("state_dict")
    (fabrik.TrainedModel & key).delete(prompt=False)
    assert not fabrik.TestCorrelation & key
    new_weights = {name: -2 * value if name.endswith("._features") else value for name, value in weights.items()}
    del row["trainedmodel_ts"]
    fabrik.TrainedModel.insert1({**row, "duration": row["duration"] + 1.0}, allow_direct_insert=True)
    fabrik.TrainedModel.Weights.insert1({**key, "state_dict": new_weights}, allow_direct_insert=True)

    fabrik.TestCorrelation.populate(key)  # the same process, whose cache holds the old model
    stored = (fabrik.TestCorrelation & key).fetch1("test_correlation")
    dataloaders, net = builder.get_all_parts(DATASET, _dataset_config(tiny_path), MODEL,
                                             {**TINY_MODEL, "hidden_channels": 4}, seed=1, state_dict=new_weights)
    direct = scores.get_correlations(net, dataloaders, tier="test", device="cpu", per_neuron=False)
    assert stored == direct and stored != old
    per_neuron = scores.get_correlations(net, dataloaders, tier="test", device="cpu", as_dict=True)
    data_key, values = next(iter(per_neuron.items()))
    unit_ids = dataloaders["test"][data_key].dataset.neurons.unit_ids
    units = (fabrik.TestCorrelation.Unit & key).to_pandas().reset_index().set_index("unit_id")
    np.testing.assert_array_equal(units.loc[unit_ids, "unit_test_correlation"].to_numpy(), values)


# --- 6. standard_trainer's full state through a real Checkpoint row -------------------------------------------


def test_standard_trainer_killed_and_resumed_ends_bit_exact(fabrik, tiny_path, db_prefix, tmp_path):
    config = {"max_iter": 10, "device": "cpu", "verbose": False}
    dataset, model, trainer = _recipes(fabrik, tiny_path, STANDARD, config, batch_size=4)
    fabrik.Experiment().add("resume", [dataset], [model], [trainer], [2])
    key = {**dataset, **model, **trainer, "seed": 2}
    timing = {"V1FABRIK_HEARTBEAT_S": "0.5", "V1FABRIK_GRACE_S": "3", "V1FABRIK_CHECKPOINT_EVERY_S": "0"}
    first = _worker(db_prefix, "resume", tmp_path, "first", timing)
    workers = [first]
    try:
        _wait_for(lambda: len(fabrik.Checkpoint & key), timeout_s=90, what="the first checkpoint", poll_s=0.02,
                  workers=workers)
        first.kill()
        first.wait()
        assert not fabrik.TrainedModel & key, "the job finished before it was killed"
        killed_after = (fabrik.Checkpoint & key).fetch1("epoch")
        assert 1 <= killed_after < config["max_iter"] - 1
        # a worker that finds the job reserved by a worker that beat a moment ago leaves it to that worker
        _wait_for(lambda: sweep.stale_reservations(float(timing["V1FABRIK_HEARTBEAT_S"])), timeout_s=10,
                  what="the killed worker to miss its beats")
        second = _worker(db_prefix, "resume", tmp_path, "second", timing)
        workers.append(second)
        assert second.wait(timeout=120) == 0, _output(second)
    finally:
        _stop_all(workers)
    output = _output(second)
    assert f"from its checkpoint at epoch {killed_after}" in output and f"resuming after epoch {killed_after}" in output
    assert len(fabrik.TrainedModel & key) == 1 and not fabrik.Checkpoint & key and not fabrik.TrainedModel.jobs & key
    stored = (fabrik.TrainedModel.Weights & key).fetch1("state_dict")
    stored_score, stored_output = (fabrik.TrainedModel & key).fetch1("score", "output")

    # The same training, uninterrupted, in this process (one thread, as the workers).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataloaders, net = builder.get_all_parts(DATASET, _dataset_config(tiny_path, 4), MODEL,
                                                 {**TINY_MODEL, "hidden_channels": 4}, seed=2)
        score, output, state = standard_trainer(net, dataloaders, 2, **config)
    finally:
        torch.set_num_threads(threads)
    assert len(output["history"]["epoch"]) > killed_after + 1  # the resumed worker trained more than one epoch
    assert stored.keys() == state.keys()
    for name, tensor in state.items():
        expected = tensor.numpy()
        assert stored[name].dtype == expected.dtype and np.array_equal(stored[name], expected), name
    assert stored_score == score
    for field in ("epoch", "train_loss", "validation_corr", "lr", "rollback"):
        np.testing.assert_array_equal(stored_output["history"][field], output["history"][field], err_msg=field)
