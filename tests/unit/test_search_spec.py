"""Study files: what is searched, how trial parameters become configs, and bad input in one sentence."""
import optuna
import pytest

from pipeline.datasets import synthetic
from schemas.jobs.search.register import check_model_builds, probes
from schemas.jobs.search.spec import StudyFileError, StudySpec

MODEL = "pipeline.models.stacked_core_full_gauss_readout"
BASE_MODEL = {"hidden_channels": 4, "layers": 2, "input_kern": 5, "hidden_kern": 3,
              "grid_mean_predictor": {"type": "cortex", "input_dimensions": 2, "hidden_layers": 1,
                                      "hidden_features": 8, "final_tanh": True}}
SPACE = {"trainer.lr_init": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "model.hidden_channels": {"type": "int", "low": 4, "high": 16, "step": 4},
         "model.grid_mean_predictor.hidden_features": {"type": "categorical", "choices": [4, 8, 16]}}


def spec(**overrides) -> dict:
    return {"name": "unit", "dataset": {"fn": "pipeline.datasets.static_loaders", "config": {"paths": ["x"]}},
            "model": {"fn": MODEL, "config": BASE_MODEL}, "trainer": {"fn": "pipeline.training.standard_trainer"},
            "space": SPACE, "n_trials": 4, **overrides}


def test_space_becomes_distributions_and_trial_params_become_nested_configs():
    study = StudySpec.from_dict(spec(seeds=[3, 5]))
    assert study.space["trainer.lr_init"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert study.space["model.hidden_channels"] == optuna.distributions.IntDistribution(4, 16, step=4)
    assert study.sampler == {"name": "tpe"} and study.pruner == {"name": "median"} and study.seeds == (3, 5)
    configs = study.configs({"trainer.lr_init": 0.003, "model.hidden_channels": 12,
                             "model.grid_mean_predictor.hidden_features": 16})
    assert configs["trainer"] == {"lr_init": 0.003}
    assert configs["model"] == {**BASE_MODEL, "hidden_channels": 12,
                                "grid_mean_predictor": {**BASE_MODEL["grid_mean_predictor"], "hidden_features": 16}}
    assert BASE_MODEL["hidden_channels"] == 4 and configs["dataset"] == {"paths": ["x"]}  # the base is not touched
    assert StudySpec.from_stored(study.to_dict()) == study
    # two seeds: epoch e of seed i is step (e-1)*2 + i + 1
    assert [study.step(e, s) for e in (1, 2) for s in (3, 5)] == [1, 2, 3, 4]


def test_seeded_samplers_continue_one_sequence_across_workers():
    def draws(seed, trial_count):
        sampler = StudySpec.from_dict(spec(sampler={"name": "random", "seed": seed})).make_sampler(trial_count)
        return sampler._rng.rng.random(3).tolist()

    assert draws(7, 3) == draws(7, 3)  # any worker asking for trial 3 draws the same
    assert len({tuple(draws(seed, count)) for seed in (7, 8) for count in (0, 1, 2)}) == 6  # no shifted copies
    grid = StudySpec.from_dict(spec(sampler="grid", space={"model.hidden_channels": SPACE["model.hidden_channels"]}))
    assert grid.make_sampler(0)._search_space == {"model.hidden_channels": [4, 8, 12, 16]}
    assert isinstance(StudySpec.from_dict(spec(pruner="none")).make_pruner(), optuna.pruners.NopPruner)


@pytest.mark.parametrize("overrides, message", [
    ({"space": {"model.hidden_chanels": SPACE["model.hidden_channels"]}},
     "space key 'model.hidden_chanels' is unknown: pipeline.models.stacked_core_full_gauss_readout takes no argument"),
    ({"space": {"model.grid_mean_predictor.hidden_feature": {"type": "int", "low": 2, "high": 9}}},
     "the base model config has no 'model.grid_mean_predictor.hidden_feature'"),
    ({"space": {"optimizer.lr": SPACE["trainer.lr_init"]}}, "must be <model|trainer|dataset>.<config key>"),
    ({"space": {"trainer.lr_init": {"type": "float", "low": 0.01, "high": 0.001}}},
     r"the range \[0.01, 0.001\] is empty"),
    ({"space": {"model.hidden_channels": {"type": "int", "low": 8, "high": 8}}}, r"the range \[8, 8\] is empty"),
    ({"space": {"trainer.lr_init": {"type": "float", "low": 0, "high": 0.1, "log": True}}}, "must be positive"),
    ({"space": {"model.layers": {"type": "categorical", "choices": []}}}, "'choices' must be a non-empty list"),
    ({"space": {"model.layers": {"type": "uniform", "low": 1, "high": 3}}}, "must be {type: float|int|categorical"),
    ({"space": {}}, "'space' must map parameter paths"),
    ({"n_trials": 0}, "'n_trials' must be a positive integer"),
    ({"seeds": [1, 1]}, "'seeds' must be a non-empty list of distinct integers"),
    ({"sampler": "cmaes"}, "'sampler' must be one of"),
    ({"pruner": {"name": "median", "n_startup": 3}}, "the sampler or pruner options are refused"),
    ({"sampler": "grid"}, "the grid sampler needs a 'step'"),
    ({"model": {"fn": "os.system"}}, "'os.system' is not a model function"),
    ({"budget": 3}, r"unknown keys \['budget'\]"),
])
def test_bad_study_files_are_refused_in_one_sentence(overrides, message):
    with pytest.raises(ValueError, match=message) as refused:
        StudySpec.from_dict(spec(**overrides))
    assert "\n" not in str(refused.value)


def test_a_space_the_model_refuses_is_found_before_anything_runs(tmp_path):
    path = synthetic.generate(tmp_path / "data", **synthetic.PRESETS["tiny"])
    study = StudySpec.from_dict(spec(
        dataset={"fn": "pipeline.datasets.static_loaders", "config": {"paths": [str(path)], "batch_size": 16}},
        space={**SPACE, "model.layers": {"type": "int", "low": 1, "high": 2}}))
    assert len(probes(study)) == 3  # low corner, high corner, the middle categorical choice
    check_model_builds(study)  # every corner builds
    refused = StudySpec.from_dict(spec(
        dataset=study.recipes["dataset"], model={"fn": MODEL, "config": {**BASE_MODEL, "shifter": True}},
        space={"model.shifter_type": {"type": "categorical", "choices": ["MLP", "x"]}}))
    with pytest.raises(StudyFileError, match=r"the model function refuses configs of this space, e\.g\. \{'model.shifter_type': 'x'\} \(ValueError: .*shifter"):
        check_model_builds(refused)
