"""SENSORIUM 2022 submission files: write a model's predictions, read and check a file, score it against a dataset.

The format is sensorium's (``generate_submission_file``, read by its ``eval.py``): a CSV with one row
per trial of the tier and the columns

- ``trial_indices``: the trial's ``meta/trials/trial_idx`` (hashed strings in the competition scans);
- ``image_ids``: its ``meta/trials/frame_image_id``;
- ``prediction``: the predicted responses, a list ``[p1, p2, ...]``;
- ``neuron_ids``: the ``meta/neurons/unit_ids`` the predictions belong to, the same list on every row.

Where sensorium is silent we chose: rows in the dataset's file order; neurons in the dataset's order
(a file whose neuron ids are permuted is refused: predictions written in one order and ids in
another cannot be told apart from a correct file); numbers written as Python prints floats (the
shortest text that reads back to the same float64, as sensorium's ``str(list)`` does), so the scores of
a file equal those computed from the predictions directly; a file is scored against the responses
normalised as ``static_loaders`` does by default (divided by their std), which is what sensorium's
ground-truth files hold.
"""
import csv
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.datasets.filetree import FileTree
from pipeline.datasets.transforms import BatchTransform

from .measures import SENSORIUM, apply_measure
from .predictions import TierData

COLUMNS = ("trial_indices", "image_ids", "prediction", "neuron_ids")
TIERS = ("test", "final_test")
# The competition's scores, by sensorium eval.py's names, and the SENSORIUM measures that compute them.
SCORES = {"Single Trial Correlation": "test_correlation", "Correlation to Average": "correlation_to_average",
          "FEVE": "feve"}


class SubmissionError(ValueError):
    """A submission file SENSORIUM would not accept, or one that does not fit the dataset it is scored against."""


def default_name(tier: str) -> str:
    """sensorium's file name for ``tier`` (its ``test`` tier is the live test)."""
    return f"submission_file_{'live_test' if tier == 'test' else tier}.csv"


def _list_text(values) -> str:
    return "[" + ", ".join(map(repr, values)) + "]"


def write_submission(path, data: TierData) -> Path:
    """Write the predictions of one data key on one tier as a submission CSV; returns the path."""
    if data.trial_idx is None or data.image_ids is None:
        raise ValueError(f"data key {data.data_key} has no meta/trials/trial_idx or frame_image_id, "
                         "which a submission needs")
    if not np.isfinite(data.predictions).all():
        raise ValueError(f"the model predicts NaN or inf for data key {data.data_key}; no submission written")
    path = Path(path)
    neuron_ids = _list_text(data.unit_ids.tolist())
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for trial, image, row in zip(data.trial_idx.tolist(), data.image_ids.tolist(), data.predictions, strict=True):
            writer.writerow([trial, image, _list_text(row.tolist()), neuron_ids])
    partial.replace(path)
    return path


@dataclass
class Submission:
    """A submission file as read: trial and image ids as text, neuron ids and predictions as arrays."""

    path: Path
    trial_idx: list          # (trials,) str
    image_ids: list          # (trials,) str
    neuron_ids: np.ndarray   # (neurons,) int
    predictions: np.ndarray  # (trials, neurons) float64


def _numbers(text, dtype, what):
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise SubmissionError(f"{what} is not a list [...]")
    try:
        return np.array(text[1:-1].split(","), dtype=dtype) if text[1:-1].strip() else np.array([], dtype=dtype)
    except ValueError:
        raise SubmissionError(f"{what} is not a list of {'integers' if dtype is np.int64 else 'numbers'}") from None


def read_submission(path) -> Submission:
    """Read and check a submission file on its own: columns, one neuron list, one finite prediction per neuron."""
    path = Path(path)
    csv.field_size_limit(sys.maxsize)  # a row of 8,000 predictions is longer than csv's default limit
    with open(path, newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        missing = [c for c in COLUMNS if c not in (header or [])]
        if missing:
            raise SubmissionError(f"{path} lacks the column(s) {', '.join(missing)}; a SENSORIUM submission has "
                                  f"the columns {', '.join(COLUMNS)}")
        column = {c: header.index(c) for c in COLUMNS}
        rows = [row for row in reader if row]
    if not rows:
        raise SubmissionError(f"{path} has no rows; it needs one row per trial of the tier")
    first_ids = rows[0][column["neuron_ids"]]
    neuron_ids = _numbers(first_ids, np.int64, f"the neuron_ids of row 1 of {path}")
    predictions = np.empty((len(rows), len(neuron_ids)))
    for i, row in enumerate(rows):
        trial = row[column["trial_indices"]]
        where = f"row {i + 1} (trial {trial}) of {path}"
        if row[column["neuron_ids"]] != first_ids:
            raise SubmissionError(f"{where} lists other neuron_ids than row 1; every row must list the same neurons")
        values = _numbers(row[column["prediction"]], np.float64, f"the prediction of {where}")
        if len(values) != len(neuron_ids):
            raise SubmissionError(f"{where} has {len(values)} predictions for {len(neuron_ids)} neuron ids")
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise SubmissionError(f"{where} has {len(bad)} NaN or infinite predictions (the first for neuron "
                                  f"{neuron_ids[bad[0]]}); predict a number for every neuron")
        predictions[i] = values
    return Submission(path, [row[column["trial_indices"]] for row in rows],
                      [row[column["image_ids"]] for row in rows], neuron_ids, predictions)


def _as_text(values) -> list:
    return [str(v) for v in np.asarray(values).tolist()]


def _tier_of(submission: Submission, tree: FileTree) -> str:
    """The tier of the submitted trials; refuses trials the dataset lacks and files that mix tiers."""
    tier_of = dict(zip(_as_text(tree.trial_info.trial_idx), tree.trial_info.tiers.tolist()))
    unknown = [t for t in submission.trial_idx if t not in tier_of]
    if unknown:
        raise SubmissionError(f"{submission.path} has {len(unknown)} trial(s) that {tree.path} lacks (e.g. trial "
                              f"{unknown[0]}); is it the dataset the predictions are for?")
    tiers = sorted(set(tier_of[t] for t in submission.trial_idx))
    if len(tiers) > 1:
        raise SubmissionError(f"{submission.path} has trials of the {' and '.join(tiers)} tiers; a submission "
                              "holds the trials of one tier")
    return tiers[0]


def ground_truth(tree: FileTree, tier: str) -> TierData:
    """The responses of ``tier`` as ``static_loaders`` yields them by default (normalised), with their ids."""
    if tier not in TIERS:
        raise ValueError(f"a submission is for the tier 'test' or 'final_test', not {tier!r}")
    if "trial_idx" not in tree.trial_info or "frame_image_id" not in tree.trial_info:
        raise SubmissionError(f"{tree.path}/meta/trials has no trial_idx or frame_image_id, which scoring a "
                              "submission needs")
    trials = np.flatnonzero(tree.trial_info.tiers == tier)
    if not len(trials):
        raise SubmissionError(f"{tree.path} has no {tier} trials")
    responses = BatchTransform(tree, ["responses"])({"responses": tree.load("responses")[trials]})["responses"]
    return TierData(tree.path.name, np.asarray(tree.neurons.unit_ids), tree.trial_info.trial_idx[trials],
                    tree.trial_info.frame_image_id[trials], responses.double().numpy(), None)


def align(submission: Submission, truth: TierData, tier: str) -> np.ndarray:
    """The submitted predictions in the order of ``truth``'s trials and neurons; SubmissionError if they do not fit."""
    path = submission.path
    counts = Counter(submission.trial_idx)
    repeated = [t for t, n in counts.items() if n > 1]
    if repeated:
        rows = [i + 1 for i, t in enumerate(submission.trial_idx) if t == repeated[0]]
        raise SubmissionError(f"{path} has more than one row for {len(repeated)} trial(s) (e.g. trial {repeated[0]}, "
                              f"in rows {', '.join(map(str, rows))}); each trial has one row")
    trials = _as_text(truth.trial_idx)
    missing = [t for t in trials if t not in counts]
    if missing:
        raise SubmissionError(f"{path} has no row for {len(missing)} of the {len(trials)} {tier} trials (e.g. trial "
                              f"{missing[0]}); predict every trial of the tier")
    outside = sorted(set(counts) - set(trials))
    if outside:
        raise SubmissionError(f"{path} has {len(outside)} row(s) for trials outside the {tier} tier (e.g. trial "
                              f"{outside[0]}); a submission holds the trials of one tier")
    row_of = {t: i for i, t in enumerate(submission.trial_idx)}
    order = np.array([row_of[t] for t in trials])
    given = [submission.image_ids[i] for i in order]
    wrong = [(t, g, s) for t, g, s in zip(trials, given, _as_text(truth.image_ids)) if g != s]
    if wrong:
        raise SubmissionError(f"{path} gives {len(wrong)} trial(s) another image id than the dataset shows (e.g. "
                              f"trial {wrong[0][0]}: image {wrong[0][1]}, the dataset shows {wrong[0][2]})")
    _check_neurons(submission, truth.unit_ids)
    return submission.predictions[order]


def _check_neurons(submission: Submission, unit_ids) -> None:
    ids, path = submission.neuron_ids, submission.path
    missing, extra = np.setdiff1d(unit_ids, ids), np.setdiff1d(ids, unit_ids)
    twice = len(ids) - len(np.unique(ids))
    if len(missing) or len(extra) or twice:
        problems = [f"{len(missing)} missing (e.g. {missing[0]})" if len(missing) else "",
                    f"{len(extra)} not in the dataset (e.g. {extra[0]})" if len(extra) else "",
                    f"{twice} listed twice" if twice else ""]
        raise SubmissionError(f"the neuron_ids of {path} are not the dataset's {len(unit_ids)} neurons: "
                              f"{', '.join(p for p in problems if p)}")
    differs = np.flatnonzero(ids != unit_ids)
    if len(differs):
        p = differs[0]
        raise SubmissionError(f"the neuron_ids of {path} list the dataset's neurons in another order (position "
                              f"{p + 1} has neuron {ids[p]} where the dataset has {unit_ids[p]}); write the ids and "
                              "their predictions in the order of meta/neurons/unit_ids.npy")


def evaluate(path, dataset_path, tier=None) -> dict:
    """The competition scores of a submission file against a dataset with the responses of its tier.

    Args:
        tier: 'test' or 'final_test'; by default the tier of the file's trials.

    Returns:
        ``{"tier", "trials", "neurons", and each name of SCORES: its value}``.
    """
    submission = read_submission(path)
    tree = FileTree(dataset_path)
    tier = tier or _tier_of(submission, tree)
    truth = ground_truth(tree, tier)
    truth.require_responses(tier)
    truth.predictions = align(submission, truth, tier)
    result = {"tier": tier, "trials": len(truth.trial_idx), "neurons": len(truth.unit_ids)}
    measures = {name: (fn, config) for name, fn, config in SENSORIUM}
    for score, name in SCORES.items():
        fn, config = measures[name]
        result[score] = apply_measure(name, fn, truth, config)[1]
    return result
