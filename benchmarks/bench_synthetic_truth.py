"""How well the synthetic ground truth explains its own responses (the ceiling a model can reach).

    .venv/bin/python benchmarks/bench_synthetic_truth.py DATASET

Prints per-neuron means over the test tier: single-trial correlation of the noiseless rates with the
responses (with and without the behavioural gain: the latter is the ceiling of a model without
behaviour input, such as the seed notebook config; and with the part of the gain the eye position
predicts), their correlation to the repeat-averaged responses, the jackknife oracle correlation,
and the fraction of explainable variance (FEV). Record in benchmarks/results/synthetic_truth.md.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.datasets.filetree import FileTree  # noqa: E402
from pipeline.datasets.synthetic import behaviour_gain, load_ground_truth  # noqa: E402
from pipeline.utility.scores import corr, fev, oracle_corr_jackknife, split_by_image  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    args = parser.parse_args()
    tree, truth = FileTree(args.dataset), load_ground_truth(args.dataset)
    test, train = (tree.trial_info.tiers == tier for tier in ("test", "train"))
    responses, rates = tree.load("responses")[test].astype(np.float64), truth["rates"][test].astype(np.float64)
    by_image = split_by_image(tree.trial_info.frame_image_id[test], responses, rates)
    mean_responses = np.stack([r.mean(0) for r in by_image[0]])
    mean_rates = np.stack([r.mean(0) for r in by_image[1]])
    explainable, _ = fev(by_image[0], by_image[1], return_exp_var=True)
    without_behaviour = rates / behaviour_gain(truth, test)
    rows = {
        "single-trial correlation (truth vs responses)": corr(rates, responses, axis=0),
        "single-trial correlation without the behavioural gain (no behaviour input)":
            corr(without_behaviour, responses, axis=0),
        "the same, times the gain predicted from eye position":
            corr(without_behaviour * gain_from_eye(tree, truth, train, test), responses, axis=0),
        "correlation to average (truth vs repeat mean)": corr(mean_rates, mean_responses, axis=0),
        "jackknife oracle correlation": oracle_corr_jackknife(by_image[0]),
        "fraction of explainable variance (FEV)": explainable,
    }
    print(f"dataset: {args.dataset}: {responses.shape[1]} neurons, {int(test.sum())} test trials, "
          f"{len(by_image[0])} images")
    print("\n| measure (test tier) | mean over neurons | median | 10th-90th percentile |\n|---|---|---|---|")
    for name, values in rows.items():
        lo, hi = np.percentile(values, [10, 90])
        print(f"| {name} | {values.mean():.3f} | {np.median(values):.3f} | {lo:.3f} - {hi:.3f} |")


def gain_from_eye(tree, truth, train, test):
    """The behavioural gain of the test trials as far as the pupil centre predicts it (running also moves the eye).

    Per neuron least squares on (1, x, y, x², y², xy) of the pupil centre, fitted on the train tier. A
    model that read gain from eye position could reach this row; the seed model's shifter only moves RFs.
    """
    eye = tree.load("pupil_center").astype(np.float64)
    features = np.column_stack([np.ones(len(eye)), eye, eye ** 2, eye[:, :1] * eye[:, 1:]])
    coef, *_ = np.linalg.lstsq(features[train], behaviour_gain(truth, train), rcond=None)
    return features[test] @ coef


if __name__ == "__main__":
    main()
