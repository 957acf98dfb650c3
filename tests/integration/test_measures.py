"""Measures and submissions against the real server: Score gives the old tables' numbers from one forward pass per
model and tier, a lab's measure from its own package is scored by a worker, and an exported submission evaluates
to the stored measures.
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.utility import scores
from schemas.cli import main as cli
from schemas.cli.scores import format_scores
from schemas.tables import scores as score_tables
from schemas.tables.scores import scores_frame
from tests.integration.test_pipeline import DATASET, MODEL, TINY_MODEL, TRAINER
from tests.unit.test_submission import tiny_with_final_test

SENSORIUM = ["test_correlation", "correlation_to_average", "feve", "oracle_correlation", "fraction_oracle"]
VIEW_OF = {name: view for view, name in score_tables.VIEWS.items()}
LAB = "v1fabrik_testlab.measures"


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    return tiny_with_final_test(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def recipes(fabrik, data_path):
    """Dataset, Model and Trainer keys, and an experiment of seeds 1 and 2."""
    dataset = fabrik.Dataset().add_entry(DATASET, {"paths": [str(data_path)], "batch_size": 16,
                                                   "include_eye_position": True})
    model = fabrik.Model().add_entry(MODEL, TINY_MODEL)
    trainer = fabrik.Trainer().add_entry(TRAINER, {"epochs": 2})
    fabrik.Experiment().add("measures", [dataset], [model], [trainer], [1, 2])
    fabrik.TrainedModel.populate(fabrik.Experiment.combinations("measures"))
    return {**dataset, **model, **trainer}


def _count(monkeypatch, module, name) -> list:
    """From now on, count the calls of ``module.name`` (in the returned list)."""
    calls, original = [], getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kw: calls.append(args) or original(*args, **kw))
    return calls


def _count_inserts(connection, monkeypatch) -> list:
    count, send = [0], connection.query

    def query(sql, *args, **kwargs):
        count[0] += sql.lstrip().upper().startswith("INSERT")
        return send(sql, *args, **kwargs)

    monkeypatch.setattr(connection, "query", query)
    return count


def test_sensorium_measures_keep_their_numbers_and_names_from_one_forward_pass(fabrik, recipes, monkeypatch):
    key = {**recipes, "seed": 1}
    dataloaders, net = fabrik.TrainedModel().load_model(key)
    old = {  # the old score tables' numbers, from the model-level functions they called
        "test_correlation": (scores.get_correlations(net, dataloaders, tier="test", as_dict=True),
                             scores.get_correlations(net, dataloaders, tier="test", per_neuron=False)),
        "correlation_to_average": (scores.get_signal_correlations(net, dataloaders, tier="test", as_dict=True),
                                   scores.get_signal_correlations(net, dataloaders, tier="test", per_neuron=False)),
        "feve": (scores.get_fev(net, dataloaders, tier="test", as_dict=True),
                 scores.get_fev(net, dataloaders, tier="test", per_neuron=False)),
        "oracle_correlation": (scores.get_oracles(dataloaders, tier="test", as_dict=True),
                               scores.get_oracles(dataloaders, tier="test", per_neuron=False)),
        "fraction_oracle": (None, scores.get_fraction_oracles(net, dataloaders, tier="test")),
    }
    data_key = next(iter(dataloaders["test"]))
    unit_ids = dataloaders["test"][data_key].dataset.neurons.unit_ids
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = old["test_correlation"][0][data_key] / old["oracle_correlation"][0][data_key]
    old["fraction_oracle"] = ({data_key: ratios}, old["fraction_oracle"][1])

    passes = _count(monkeypatch, score_tables, "tier_data")
    inserts = _count_inserts(fabrik.TrainedModel.connection, monkeypatch)
    assert fabrik.Score.populate(key)["success_count"] == 5
    assert len(passes) == 1 and passes[0][2] == "test", "one forward pass for the five test-tier measures"
    assert inserts[0] == 10, "per measure: the master row and one batched insert of its units"

    import schemas  # the old table names still answer, as views of Score
    from schemas.tables.scores import TestCorrelation
    assert (TestCorrelation & key).fetch1("test_correlation") == old["test_correlation"][1]
    for name in SENSORIUM:
        view = getattr(schemas, VIEW_OF[name])
        stored = (view & key).fetch1(name)
        assert stored == old[name][1] or stored is None and np.isnan(old[name][1]), name
        units = (view.Unit & key).to_pandas().reset_index()
        assert len(units) == len(unit_ids) == 40 and set(units.data_key) == {data_key}
        values = units.set_index("unit_id").loc[unit_ids, f"unit_{name}"].astype(float).to_numpy()
        expected = old[name][0][data_key]
        np.testing.assert_array_equal(values, np.where(np.isfinite(expected), expected, np.nan), err_msg=name)
    joined = (schemas.TestCorrelation * schemas.CorrelationToAverage * schemas.FEVE) & key
    assert joined.fetch1("test_correlation", "feve") == (old["test_correlation"][1], old["feve"][1])
    assert len(schemas.TestCorrelation.Unit * schemas.FEVE.Unit & key) == 40

    # `v1fabrik scores`: a column per measure with the stored aggregates; CSV keeps them exactly.
    frame = scores_frame("measures")
    row = frame[frame.seed == 1]
    assert list(frame.columns) == ["dataset", "model", "trainer", "seed", "validation", *SENSORIUM]
    assert [row[name].item() for name in SENSORIUM] == [
        (fabrik.Score * fabrik.Measure & key & {"measure_name": name}).fetch1("value") for name in SENSORIUM]
    assert np.isnan(frame[frame.seed == 2]["feve"].item()), "seed 2 is not scored yet"
    numbers = ["seed", "validation", *SENSORIUM]
    from_csv = pd.read_csv(io.StringIO(format_scores(frame, "csv")))
    pd.testing.assert_frame_equal(from_csv[numbers], frame[numbers], check_dtype=False, check_exact=True)


def test_populate_runs_one_forward_pass_per_model_and_tier(fabrik, recipes, monkeypatch):
    fabrik.Measure().add_entry("pipeline.utility.measures.single_trial_correlation", tier="validation")
    combinations = fabrik.Experiment.combinations("measures")
    todo = ((fabrik.Score.key_source & combinations) - fabrik.Score) * fabrik.Measure.proj("measure_tier")
    pairs = sorted(set(zip(*todo.to_arrays("seed", "measure_tier"))))
    assert len(todo) > len(pairs) >= 3  # seed 2's five test measures and both seeds' validation one
    score_tables._predictions.items.clear()
    passes = _count(monkeypatch, score_tables, "tier_data")
    fabrik.Score.populate(combinations, reserve_jobs=True)
    assert len(fabrik.Score & combinations) == 2 * len(fabrik.Measure()) and not fabrik.Score.jobs.errors
    assert len(passes) == len(pairs), "one forward pass per model and tier"
    assert sorted(tier for _, _, tier, _ in passes) == sorted(tier for _, tier in pairs)
    validation = (fabrik.Score * fabrik.Measure & {"measure_name": "single_trial_correlation_validation"}
                  & {"seed": 1}).fetch1("value")
    assert validation == (fabrik.TrainedModel & recipes & {"seed": 1}).fetch1("score")  # the trainer's own score


def test_a_lab_measure_from_its_own_package_is_scored_by_a_worker(fabrik, recipes, installed_lab, db_prefix, capsys,
                                                                  monkeypatch):
    monkeypatch.setenv("V1FABRIK_SCHEMA_PREFIX", db_prefix)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(installed_lab)}
    env.pop("V1FABRIK_ALLOWED_MODULES")  # the entry points alone make the lab's functions nameable

    def v1fabrik(*args):
        done = subprocess.run([sys.executable, "-m", "schemas.cli", *args], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr

    v1fabrik("add", "measure", f"{LAB}.mean_squared_error", "--tier", "validation", "--config", '{"power": 2}')
    sys.path.insert(0, str(installed_lab))
    try:
        from v1fabrik_testlab import measures as lab
    finally:
        sys.path.remove(str(installed_lab))
    fabrik.Measure().add_entry(lab.population_correlation, name="population")
    v1fabrik("worker", "--device", "cpu", "--experiment", "measures")

    shown = _run(capsys, "scores", "--experiment", "measures")
    header = next(line.split() for line in shown.splitlines() if line.lstrip().startswith("dataset"))
    assert header[5:10] == SENSORIUM and {"mean_squared_error_validation", "population"} <= set(header[10:])
    listed = " ".join(shown.split())
    assert f"mean_squared_error_validation {LAB}.mean_squared_error validation {{'power': 2}}" in listed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the worker (OMP_NUM_THREADS=1): the same float32 predictions, bit for bit
    try:
        for seed in (1, 2):
            _check_lab_scores(fabrik, lab, {**recipes, "seed": seed})
    finally:
        torch.set_num_threads(threads)


def _check_lab_scores(fabrik, lab, key):
    """The worker's scores of the lab measures equal the lab functions on the stored model's predictions."""
    dataloaders, net = fabrik.TrainedModel().load_model(key)
    (validation,) = dataloaders["validation"].values()
    responses, predictions = scores.model_predictions(net, validation, next(iter(dataloaders["validation"])))
    per_neuron, aggregate = lab.mean_squared_error(responses, predictions)
    mse = fabrik.Score * fabrik.Measure & key & {"measure_name": "mean_squared_error_validation"}
    assert mse.fetch1("value") == aggregate
    units = (fabrik.Score.Unit & mse.proj()).to_pandas().reset_index().set_index("unit_id")
    np.testing.assert_array_equal(units.loc[validation.dataset.neurons.unit_ids, "unit_value"], per_neuron)
    (test,) = dataloaders["test"].values()
    responses, predictions = scores.model_predictions(net, test, next(iter(dataloaders["test"])))
    population = fabrik.Score * fabrik.Measure & key & {"measure_name": "population"}
    assert population.fetch1("value") == lab.population_correlation(responses, predictions,
                                                                    scores.image_ids(test))[1]
    assert not fabrik.Score.Unit & population.proj(), "an aggregate-only measure has no unit rows"
    assert len(fabrik.Score & key) == len(fabrik.Measure())


def _run(capsys, *argv) -> str:
    assert cli.main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("tier", ["test", "final_test"])
def test_an_exported_submission_evaluates_to_the_stored_measures(fabrik, recipes, data_path, tmp_path, capsys, tier,
                                                                 db_prefix, monkeypatch):
    monkeypatch.setenv("V1FABRIK_SCHEMA_PREFIX", db_prefix)  # for the commands' schemas.activate()
    for name in ("single_trial_correlation", "correlation_to_average", "feve"):
        if tier == "final_test":
            config = {"fev_threshold": 0.15} if name == "feve" else {}
            fabrik.Measure().add_entry(f"pipeline.utility.measures.{name}", config, tier="final_test",
                                       skip_duplicates=True)
    key = {**recipes, "seed": 2}
    fabrik.Score.populate(key)
    out = tmp_path / "predictions.csv"
    written = _run(capsys, "export", "--experiment", "measures", "--seed", 2, "--tier", tier, "--out", out)
    assert written.strip() == str(out)
    result = json.loads(_run(capsys, "evaluate", out, "--dataset", data_path, "--format", "json"))
    assert (result["tier"], result["trials"], result["neurons"]) == (tier, 12, 40)
    names = {"test": ["test_correlation", "correlation_to_average", "feve"],
             "final_test": ["single_trial_correlation_final_test", "correlation_to_average_final_test",
                            "feve_final_test"]}[tier]
    stored = [(fabrik.Score * fabrik.Measure & key & {"measure_name": n}).fetch1("value") for n in names]
    assert [result[s] for s in ("Single Trial Correlation", "Correlation to Average", "FEVE")] == stored
    table = _run(capsys, "evaluate", out, "--dataset", data_path)
    assert f"Single Trial Correlation  {stored[0]!r}" in table and f"12 {tier} trials x 40 neurons" in table


def _error(capsys, *argv) -> str:
    """The one error line a failing command prints."""
    assert cli.main(list(argv)) == 1
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("v1fabrik: error: ")]
    return line


def test_commands_name_the_model_to_choose_and_refuse_bad_measures(fabrik, recipes, capsys, db_prefix, monkeypatch):
    monkeypatch.setenv("V1FABRIK_SCHEMA_PREFIX", db_prefix)
    assert _error(capsys, "export", "--experiment", "measures").startswith(
        "v1fabrik: error: 2 trained models match, give --seed or a JSON key that selects one: "
        f"seed 1 model_hash {recipes['model_hash']} trainer_hash {recipes['trainer_hash']}")
    assert "the key must be a JSON object of dataset_fn, " in _error(capsys, "export", '{"model": 1}')
    assert "no trained model matches" in _error(capsys, "export", "--experiment", "measures", "--seed", "3")
    assert "measure pipeline.utility.measures.feve cannot be called with the config {'fev_treshold': 0.2}" in _error(
        capsys, "add", "measure", "pipeline.utility.measures.feve", "--config", '{"fev_treshold": 0.2}')
    assert _error(capsys, "add", "measure", "pipeline.utility.measures.feve", "--config", '{"fev_threshold": 0.2}') == (
        "v1fabrik: error: measure name 'feve' is taken by pipeline.utility.measures.feve {'fev_threshold': 0.15} on "
        "the test tier; choose another name")
    assert "'os.system' is not a measure function" in _error(capsys, "add", "measure", "os.system")
    assert not fabrik.Measure & {"measure_fn": "os.system"}
