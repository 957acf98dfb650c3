"""Experiment YAML files (schemas.cli.experiment_file.load): accepted shape and one-line errors naming the problem."""
import pytest

from schemas.cli.experiment_file import ExperimentFileError, load

VALID = """
name: demo
datasets:
  - fn: pipeline.datasets.static_loaders
    config: {paths: [a], batch_size: 8}
models:
  - {fn: pipeline.models.stacked_core_full_gauss_readout, comment: seed notebook}
trainers:
  - fn: pipeline.training.standard_trainer
seeds: [1, 2]
"""


def write(tmp_path, text):
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_a_valid_file_loads(tmp_path):
    spec = load(write(tmp_path, VALID))
    assert spec["seeds"] == [1, 2] and spec["datasets"][0]["config"]["batch_size"] == 8


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("seeds: [1, 2]", "seeds: [1, two]"), "'seeds' must be a non-empty list of integers"),
    (lambda t: t.replace("seeds: [1, 2]", ""), r"missing keys \['seeds'\]"),
    (lambda t: t + "sedes: [3]\n", r"unknown keys \['sedes'\]"),
    (lambda t: t.replace("  - fn: pipeline.training.standard_trainer", "  - function: x"), r"trainers\[0\] must have 'fn'"),
    (lambda t: t.replace("models:\n  - {fn: pipeline.models.stacked_core_full_gauss_readout, comment: seed notebook}",
                         "models: []"), "'models' must be a non-empty list"),
    (lambda t: "- just a list", "expected a mapping"),
])
def test_bad_files_name_the_problem(tmp_path, edit, message):
    with pytest.raises(ExperimentFileError, match=message):
        load(write(tmp_path, edit(VALID)))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load(tmp_path / "nowhere.yaml")
