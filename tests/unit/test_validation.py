"""Bad input without a database: config sizes, function contracts, worker settings, signal handling."""
import os
import signal

import numpy as np
import pytest
import torch

from pipeline import builder
from pipeline.validation import require_positive_ints
from schemas.jobs import heartbeat, lifecycle, preemption, recovery


@pytest.mark.parametrize("value, error, message", [
    (0, ValueError, "layers must be at least 1, got 0"), (-2, ValueError, "at least 1, got -2"),
    ("4", TypeError, "layers must be a positive whole number, got str '4'"), (2.0, TypeError, "got float"),
    (True, TypeError, "got bool"), ([3, 0], ValueError, "got 0"),
])
def test_sizes_must_be_positive_whole_numbers(value, error, message):
    with pytest.raises(error, match=message):
        require_positive_ints(layers=value)


@pytest.mark.parametrize("value", [1, 7, [3, 5], (7,), np.int64(2), [np.int32(1), 4]])
def test_sizes_accept_positive_ints_lists_of_them_and_numpy_ints(value):
    assert require_positive_ints(layers=value) is None  # accepted: no error, nothing returned


@pytest.mark.parametrize("result, message", [
    ([0.5, {}], "returned list"), ((0.5, {}), "returned tuple"), ((0.5, {}, "weights"), "returned tuple"),
    (("high", {}, {}), "returned a str score"), ((True, {}, {}), "returned a bool score"),
])
def test_trainer_results_that_break_the_contract_name_the_trainer(result, message):
    with pytest.raises(builder.ContractError, match=f"trainer 'my.trainer' {message}"):
        builder.check_trainer_result("my.trainer", result)


def test_trainer_result_accepts_numbers_and_scalar_tensors():
    assert builder.check_trainer_result("t.t", (torch.tensor(0.25), {}, {}))[0] == 0.25
    assert builder.check_trainer_result("t.t", (1, {"h": []}, {"w": 1}))[:2] == (1.0, {"h": []})


def test_functions_returning_the_wrong_type_are_refused(monkeypatch):
    monkeypatch.setenv(builder.ALLOWED_MODULES_ENV, "tests.integration")
    with pytest.raises(builder.ContractError, match="dict_dataset' returned a list"):
        builder.get_data("tests.integration.fault_functions.dict_dataset", {})
    with pytest.raises(builder.ContractError, match="string_model' returned a str, not a torch.nn.Module"):
        builder.get_model("tests.integration.fault_functions.string_model", {})


@pytest.mark.parametrize("env, message", [
    ({"V1FABRIK_HEARTBEAT_S": "soon"}, "V1FABRIK_HEARTBEAT_S='soon' is not a number"),
    ({"V1FABRIK_GRACE_S": "0"}, "must be positive"),
    ({"V1FABRIK_HEARTBEAT_S": "10", "V1FABRIK_GRACE_S": "15"}, "at least twice"),
])
def test_bad_heartbeat_settings_are_refused(monkeypatch, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        heartbeat.timing()


def test_bad_retry_and_wait_settings_are_refused(monkeypatch):
    monkeypatch.setenv(recovery.RETRIES_ENV, "-1")
    with pytest.raises(ValueError, match="V1FABRIK_TRANSIENT_RETRIES='-1'"):
        recovery.retry_budget()
    monkeypatch.setenv(preemption.TIMEOUT_ENV, "-5")
    with pytest.raises(ValueError, match="must be zero or more"):
        preemption.timeout_s()


def test_transient_errors_are_connection_losses_lock_races_and_cuda_oom_only():
    import pymysql

    assert recovery.is_transient(pymysql.err.OperationalError(2003, "Can't connect"))
    assert recovery.is_transient(pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock"))
    assert not recovery.is_connection_error(pymysql.err.OperationalError(1213, "Deadlock found"))
    assert recovery.is_transient(torch.OutOfMemoryError("CUDA out of memory"))
    assert not recovery.is_transient(pymysql.err.OperationalError(1045, "Access denied"))
    assert not recovery.is_transient(ValueError("hidden_channels must be at least 1"))


@pytest.fixture
def handlers():
    """Restore this process's signal handlers and the preemption state after the test."""
    saved = {s: signal.getsignal(s) for s in preemption.SIGNALS}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)
    preemption.cancel_deadline()
    preemption._requested.clear()


def test_first_signal_waits_for_a_checkpoint_second_signal_stops_at_once(handlers, monkeypatch):
    monkeypatch.setenv(preemption.TIMEOUT_ENV, "30")
    preemption.install()
    preemption.checkpoint_reached()  # nothing requested: a no-op
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested()
    with pytest.raises(preemption.Preempted, match="at a checkpoint"):
        preemption.checkpoint_reached()
    with pytest.raises(preemption.Preempted, match="SIGINT received again"):
        os.kill(os.getpid(), signal.SIGINT)


def test_guard_reinstalls_our_handler_over_datajoints_and_restores_it(handlers):
    preemption.install()

    def datajoint_handler(signum, frame):
        raise SystemExit("SIGTERM received")

    signal.signal(signal.SIGTERM, datajoint_handler)
    with preemption.guard():
        assert signal.getsignal(signal.SIGTERM) is preemption._handle
    assert signal.getsignal(signal.SIGTERM) is datajoint_handler


def test_checkpoints_come_after_the_first_epoch_then_at_most_every_interval_and_on_stop(monkeypatch):
    monkeypatch.setenv(lifecycle.CHECKPOINT_ENV, "30")
    now = [100.0]
    schedule = lifecycle.CheckpointSchedule(clock=lambda: now[0])
    assert schedule.due()
    schedule.written()
    now[0] = 129.9
    assert not schedule.due()
    assert schedule.due(stopping=True)
    now[0] = 130.0
    assert schedule.due()

    monkeypatch.setenv(lifecycle.CHECKPOINT_ENV, "0")
    every_epoch = lifecycle.CheckpointSchedule(clock=lambda: now[0])
    every_epoch.written()
    assert every_epoch.due()
    monkeypatch.setenv(lifecycle.CHECKPOINT_ENV, "-1")
    with pytest.raises(ValueError, match="V1FABRIK_CHECKPOINT_EVERY_S='-1' must be zero or more"):
        lifecycle.CheckpointSchedule()
