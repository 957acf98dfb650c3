"""SENSORIUM submission files: written as sensorium reads them, scored like the measures, bad files named."""
import ast
import csv
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.datasets import static_loaders, synthetic
from pipeline.utility import measures, submission
from pipeline.utility.predictions import tier_data
from pipeline.utility.submission import SubmissionError

SCORES = {name: fn_config for name, *fn_config in measures.SENSORIUM}


class MeanModel(torch.nn.Module):
    """Predicts every neuron from the image's mean: enough to make predictions worth scoring."""

    def __init__(self, n_neurons):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(n_neurons, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(n_neurons, generator=generator))

    def forward(self, images, data_key=None, **kwargs):
        return torch.nn.functional.elu(images.mean((1, 2, 3))[:, None] * self.weight + self.bias) + 1


def tiny_with_final_test(folder):
    """A tiny synthetic dataset in ``folder`` whose last three test images (12 trials) became the final test."""
    path = synthetic.generate(folder, **synthetic.PRESETS["tiny"])
    tiers = np.load(path / "meta/trials/tiers.npy")
    ids = np.load(path / "meta/trials/frame_image_id.npy")
    final = np.isin(ids, np.unique(ids[tiers == "test"])[-3:])
    np.save(path / "meta/trials/tiers.npy", np.where(final, "final_test", tiers))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_with_final_test(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def predicted(dataset):
    """``{tier: TierData}`` of MeanModel on the test and final-test tiers."""
    dataloaders = static_loaders([str(dataset)], batch_size=5)
    model = MeanModel(synthetic.PRESETS["tiny"]["n_neurons"])
    return {tier: next(iter(tier_data(model, dataloaders, tier).values())) for tier in submission.TIERS}


@pytest.fixture
def written(tmp_path, predicted):
    """The test tier's submission file and its rows (header first)."""
    path = submission.write_submission(tmp_path / "predictions.csv", predicted["test"])
    with open(path, newline="") as file:
        return path, list(csv.reader(file))


@pytest.mark.parametrize("tier", submission.TIERS)
def test_a_written_file_reads_as_sensorium_reads_it_and_scores_like_the_measures(tmp_path, dataset, predicted, tier):
    data = predicted[tier]
    path = submission.write_submission(tmp_path / submission.default_name(tier), data)
    assert path.name == {"test": "submission_file_live_test.csv", "final_test": "submission_file_final_test.csv"}[tier]

    frame = pd.read_csv(path)  # as sensorium's eval.load_submission_data reads it
    assert list(frame.columns) == ["trial_indices", "image_ids", "prediction", "neuron_ids"]
    assert frame.trial_indices.tolist() == data.trial_idx.tolist()
    assert frame.image_ids.tolist() == data.image_ids.tolist()
    assert (frame.neuron_ids == frame.neuron_ids[0]).all()
    assert ast.literal_eval(frame.neuron_ids[0]) == data.unit_ids.tolist() == list(range(1, 41))
    predictions = np.array([ast.literal_eval(row) for row in frame.prediction])
    np.testing.assert_array_equal(predictions, data.predictions)  # every float read back exactly
    assert len(frame) == {"test": 12, "final_test": 12}[tier]

    result = submission.evaluate(path, dataset)  # the tier is that of the file's trials
    assert (result["tier"], result["trials"], result["neurons"]) == (tier, 12, 40)
    for score, name in submission.SCORES.items():
        fn, config = SCORES[name]
        assert result[score] == measures.apply_measure(name, fn, data, config)[1], score
    assert -1 < result["Single Trial Correlation"] < 1 and result["Single Trial Correlation"] != 0


def _rewrite(path, rows):
    with open(path, "w", newline="") as file:
        csv.writer(file).writerows(rows)


def _other_tier_row(predicted, rows):
    final = predicted["final_test"]
    return [str(final.trial_idx[0]), str(final.image_ids[0]), rows[1][2], rows[1][3]]


def _swap_neurons(rows):
    ids = ast.literal_eval(rows[1][3])
    ids[0], ids[1] = ids[1], ids[0]
    return [rows[0]] + [r[:3] + [str(ids)] for r in rows[1:]]


def _nan(rows):
    values = ast.literal_eval(rows[3][2])
    prediction = "[" + ", ".join(["nan"] + list(map(repr, values[1:]))) + "]"
    return rows[:3] + [rows[3][:2] + [prediction, rows[3][3]]] + rows[4:]


BAD_FILES = {
    "missing row": (lambda rows, p: rows[:3] + rows[4:],
                    r"has no row for 1 of the 12 test trials \(e\.g\. trial \d+\)"),
    "duplicated trial": (lambda rows, p: rows + [rows[2]],
                         r"has more than one row for 1 trial\(s\) \(e\.g\. trial \d+, in rows 2, 13\); each trial "
                         r"has one row"),
    "wrong neuron order": (lambda rows, p: _swap_neurons(rows),
                           r"list the dataset's neurons in another order \(position 1 has neuron 2 where the "
                           r"dataset has 1\)"),
    "NaN": (lambda rows, p: _nan(rows), r"row 3 \(trial \d+\) of .* has 1 NaN or infinite predictions \(the first for "
                                        r"neuron 1\)"),
    "missing column": (lambda rows, p: [[r[0], r[2], r[3]] for r in rows], "lacks the column.s. image_ids"),
    "no rows": (lambda rows, p: rows[:1], "has no rows"),
    "mixed tiers": (lambda rows, p: rows + [_other_tier_row(p, rows)], "has trials of the final_test and test tiers"),
    "unknown trial": (lambda rows, p: rows[:1] + [["123456"] + rows[1][1:]] + rows[2:], "has 1 trial.s. that .* lacks"),
    "wrong image": (lambda rows, p: rows[:1] + [[rows[1][0], "999"] + rows[1][2:]] + rows[2:],
                    r"gives 1 trial.s. another image id than the dataset shows \(e\.g\. trial \d+: image 999"),
    "neuron missing": (lambda rows, p: [rows[0]] + [[r[0], r[1], "[" + r[2][1:].split(",", 1)[1],
                                                     "[" + r[3][1:].split(",", 1)[1]] for r in rows[1:]],
                       r"are not the dataset's 40 neurons: 1 missing \(e\.g\. 1\)"),
    "rows disagree on neurons": (lambda rows, p: rows[:2] + [rows[2][:3] + [_swap_neurons(rows)[1][3]]] + rows[3:],
                                 "row 2 .* lists other neuron_ids than row 1"),
    "short row": (lambda rows, p: rows[:1] + [rows[1][:2] + ["[" + rows[1][2][1:].split(",", 1)[1], rows[1][3]]]
                  + rows[2:], "row 1 .* has 39 predictions for 40 neuron ids"),
    "not numbers": (lambda rows, p: rows[:1] + [rows[1][:2] + ["[0.1, high]", rows[1][3]]] + rows[2:],
                    "the prediction of row 1 .* is not a list of numbers"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_each_bad_file_gets_one_sentence(written, dataset, predicted, case):
    path, rows = written
    mutate, says = BAD_FILES[case]
    _rewrite(path, mutate(rows, predicted))
    with pytest.raises(SubmissionError, match=says) as error:
        submission.evaluate(path, dataset)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_file_for_the_wrong_tier_and_withheld_responses_are_refused(written, dataset, tmp_path):
    path, _ = written
    with pytest.raises(SubmissionError, match=r"has no row for 12 of the 12 final_test trials"):
        submission.evaluate(path, dataset, tier="final_test")
    withheld = shutil.copytree(dataset, tmp_path / dataset.name)
    for trial in np.flatnonzero(np.load(withheld / "meta/trials/tiers.npy") == "test"):
        response = withheld / "data/responses" / f"{trial}.npy"
        np.save(response, np.zeros_like(np.load(response)))
    with pytest.raises(ValueError, match=f"the test responses of data key {withheld.name} are all zero, i.e. withheld"):
        submission.evaluate(path, withheld)


def test_unwritable_predictions_write_no_file(tmp_path, predicted):
    data = predicted["test"]
    bad = type(data)(**{**data.__dict__, "predictions": np.where(np.eye(12, 40, dtype=bool), np.nan, data.predictions)})
    with pytest.raises(ValueError, match="the model predicts NaN or inf for data key 90000-1-1; no submission written"):
        submission.write_submission(tmp_path / "out.csv", bad)
    without_ids = type(data)(**{**data.__dict__, "trial_idx": None})
    with pytest.raises(ValueError, match="has no meta/trials/trial_idx"):
        submission.write_submission(tmp_path / "out.csv", without_ids)
    assert not list(tmp_path.iterdir())
