"""The notebooks, executed top to bottom with nbclient on small data; a failing cell fails the test.

The notebooks read their sizes, data and figure folders from ``V1FABRIK_NOTEBOOK_*`` environment
variables and the schema prefix from ``V1FABRIK_SCHEMA_PREFIX``, so they run here on the tiny
synthetic preset against the test database. The kernel runs in ``notebooks/``, as a user's would,
so that DataJoint finds the same configuration as the tests.
"""
import re

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from pipeline.datasets import synthetic
from tests.servers import REPO

NOTEBOOKS = REPO / "notebooks"
NAMES = ["01_baseline_cnn.ipynb", "02_run_experiments.ipynb", "03_query_scores.ipynb", "04_search_and_ensembles.ipynb",
         "05_transfer.ipynb"]
PRESET = "tiny"
EXPERIMENT = "notebook baseline vs no shifter"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
    """Small data and private data/figure folders for the notebooks, through their environment variables."""
    folder = tmp_path_factory.mktemp("notebooks")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("V1FABRIK_NOTEBOOK_PRESET", PRESET)
        env.setenv("V1FABRIK_NOTEBOOK_EPOCHS", "1")
        env.setenv("V1FABRIK_NOTEBOOK_DATA", str(folder / "data"))
        env.setenv("V1FABRIK_NOTEBOOK_FIGURES", str(folder / "figures"))
        yield env, folder / "figures"


def execute(name):
    """Run the notebook ``name`` in a fresh kernel in ``notebooks/``; returns the executed notebook."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return notebook


def result(notebook, source_start):
    """The text result of the one code cell whose source starts with ``source_start``."""
    cells = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith(source_start)]
    assert len(cells) == 1, f"{len(cells)} cells start with {source_start!r}"
    texts = [o["data"]["text/plain"] for o in cells[0].outputs if o.get("output_type") == "execute_result"]
    assert len(texts) == 1, cells[0].outputs
    return texts[0]


def images(notebook) -> int:
    """Number of PNG figures the notebook displayed."""
    return sum("image/png" in o.get("data", {}) for c in notebook.cells if c.cell_type == "code" for o in c.outputs)


def assert_pngs(folder, names):
    assert sorted(p.name for p in folder.glob("*.png") if p.name in names) == sorted(names)
    assert all((folder / name).read_bytes()[:8] == PNG for name in names)


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_baseline_cnn_notebook_shows_the_seed_notebook_shapes(notebook_env):
    _, figures = notebook_env
    notebook = execute("01_baseline_cnn.ipynb")
    neurons = synthetic.PRESETS[PRESET]["n_neurons"]
    assert result(notebook, "batch.images.shape") == (
        f"(torch.Size([32, 1, 144, 256]), torch.Size([32, {neurons}]), torch.Size([32, 2]))")
    assert result(notebook, "images = batch.images") == "torch.Size([32, 64, 136, 248])"
    assert result(notebook, "with torch.no_grad():\n    readout_output =") == f"torch.Size([32, {neurons}])"
    assert result(notebook, "with torch.no_grad():\n    shifter_output") == (
        f"(torch.Size([32, 2]), torch.Size([32, {neurons}]))")
    assert result(notebook, "torch.equal(readout_output, readout_output_shifted)") == "False"
    assert "(layer3): Sequential(\n        (ds_conv): DepthSeparableConv2d(" in result(notebook, "model = ")
    assert images(notebook) == 1
    assert_pngs(figures, ["01_readout_positions.png"])


@pytest.mark.slow
def test_experiment_notebook_trains_and_query_notebook_plots_its_results(db_prefix, notebook_env):
    env, figures = notebook_env
    env.setenv("V1FABRIK_SCHEMA_PREFIX", db_prefix)
    import schemas

    experiments = execute("02_run_experiments.ipynb")
    combinations = schemas.Experiment.combinations(EXPERIMENT)
    trained = schemas.TrainedModel & combinations
    assert len(combinations) == 4 and len(trained) == 4 and len(schemas.TrainedModel.Weights & trained) == 4
    assert set(trained.to_arrays("seed")) == {1, 2}
    assert len(schemas.TestCorrelation & trained) == 4
    assert re.fullmatch(r"\((\S+), \1\)", result(experiments, "key = "))  # recomputed == stored score
    assert images(experiments) == 1

    scores = execute("03_query_scores.ipynb")
    frame = result(scores, "scores_frame(EXPERIMENT)")
    assert frame.count("baseline CNN, no shifter") == 2 and frame.count("baseline CNN") == 4
    assert images(scores) == 4
    assert_pngs(figures, ["02_training_history.png", "03_correlation_distributions.png", "03_retinotopy.png",
                          "03_rf_positions_vs_truth.png", "03_seed_comparison.png"])
    neurons = synthetic.PRESETS[PRESET]["n_neurons"]
    units = (schemas.TestCorrelation.Unit & trained).to_arrays("unit_test_correlation")
    assert len(units) == 4 * neurons and np.isfinite(units.astype(float)).all()


@pytest.mark.slow
def test_transfer_notebook_pretrains_a_core_and_transfers_it(db_prefix, notebook_env):
    env, figures = notebook_env
    env.setenv("V1FABRIK_SCHEMA_PREFIX", db_prefix)
    import schemas

    notebook = execute("05_transfer.ipynb")
    combinations = schemas.Experiment.combinations("notebook core transfer")
    assert len(schemas.TrainedModel & combinations) == 4
    assert not schemas.TrainedModel.jobs.errors.restrict(combinations, semantic_check=False)
    training = next(c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("combinations = "))
    printed = "".join(o.get("text", "") for o in training.outputs)
    assert "models waiting for a core: 2\nafter the first populate: 2 trained" in printed  # the children waited
    assert len(schemas.Model.CoreFrom & combinations) == 2
    assert result(notebook, "key = children").endswith("True)")  # predictions without the data equal those with it
    assert images(notebook) == 1
    assert_pngs(figures, ["05_transfer_correlations.png"])


@pytest.mark.slow
def test_search_notebook_runs_a_study_and_ensembles_the_best_config(db_prefix, notebook_env):
    env, figures = notebook_env
    env.setenv("V1FABRIK_SCHEMA_PREFIX", db_prefix)
    env.setenv("V1FABRIK_NOTEBOOK_EPOCHS", "3")
    env.setenv("V1FABRIK_NOTEBOOK_TRIALS", "4")
    env.setenv("V1FABRIK_NOTEBOOK_SEEDS", "2")
    import schemas

    notebook = execute("04_search_and_ensembles.ipynb")
    study = f"notebook search {PRESET}"
    states = eval(result(notebook, "states = "))  # {state: count}, e.g. {'COMPLETE': 3, 'PRUNED': 1}
    assert sum(states.get(s, 0) for s in ("COMPLETE", "PRUNED")) == 4 and set(states) <= {"COMPLETE", "PRUNED"}
    assert len(schemas.Study.Trial & {"experiment_name": study}) == 4
    ensemble = schemas.Ensemble & {"ensemble_comment": f"best trial of {study}"}
    assert len(ensemble) == 1 and len(schemas.Ensemble.Member & ensemble) == 2
    assert len(schemas.EnsembleScore & ensemble) == len(schemas.Measure())
    assert result(notebook, "dataloaders, model = ") == "('EnsembleModel', 2)"
    assert images(notebook) == 3
    assert_pngs(figures, ["04_study_history.png", "04_param_importances.png", "04_ensemble_vs_members.png"])
