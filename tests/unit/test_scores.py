"""Score primitives against neuralpredictors 0.3.0, and the model-level scores against direct numpy."""
import collections

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.utility import scores
from tests.reference import np_ref

ref = np_ref.measures.np_functions


def repeated_responses(rng, n_images=12, n_neurons=7, ragged=True):
    """Poisson responses to repeated images with image-dependent rates (some images with few repeats)."""
    rates = rng.gamma(2.0, 1.0, size=(n_images, n_neurons))
    counts = rng.integers(2, 8, size=n_images) if ragged else np.full(n_images, 5)
    return [rng.poisson(rates[i], size=(counts[i], n_neurons)).astype(float) for i in range(n_images)]


@pytest.mark.parametrize("seed", range(5))
def test_primitives_equal_neuralpredictors(seed):
    rng = np.random.default_rng(seed)
    y1, y2 = rng.normal(size=(40, 9)), rng.normal(size=(40, 9))
    for axis in (0, -1):
        np.testing.assert_allclose(scores.corr(y1, y2, axis=axis), ref.corr(y1, y2, axis=axis), rtol=0, atol=1e-8)

    targets = repeated_responses(rng)
    predictions = [t + rng.normal(size=t.shape) for t in targets]
    ours, theirs = scores.fev(targets, predictions, True), ref.fev(targets, predictions, True)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)
    np.testing.assert_allclose(scores.fev(targets, predictions), ref.fev(targets, predictions), rtol=0, atol=1e-8)
    np.testing.assert_allclose(
        scores.oracle_corr_jackknife(targets), ref.oracle_corr_jackknife(targets), rtol=0, atol=1e-8
    )
    np.testing.assert_allclose(
        scores.oracle_corr_conservative(targets), ref.oracle_corr_conservative(targets), rtol=0, atol=1e-8
    )


def test_nan_handling_matches_reference():
    rng = np.random.default_rng(0)
    targets = repeated_responses(rng, ragged=False)
    targets = [np.column_stack([t, np.full(len(t), 3.0)]) for t in targets]  # last neuron is constant
    once = rng.poisson(2.0, size=(1, 8)).astype(float)
    once[0, -1] = 3.0
    targets.append(once)  # an image shown once
    jackknife = scores.oracle_corr_jackknife(targets)
    np.testing.assert_allclose(jackknife, ref.oracle_corr_jackknife(targets), rtol=0, atol=1e-8)
    assert jackknife[-1] == 0 and np.isfinite(jackknife).all()
    assert np.isnan(scores.oracle_corr_conservative(targets)[-1])
    explainable, explained = scores.fev(targets, targets, return_exp_var=True)
    assert np.isnan(explainable[-1]) and np.isnan(explained[-1])
    assert scores.corr(np.ones(5), np.arange(5.0)) == 0


def test_fraction_oracle_is_slope_through_origin():
    oracles = np.array([0.2, 0.4, 0.6, 0.8])
    assert scores.fraction_oracle(0.5 * oracles, oracles) == pytest.approx(0.5, abs=1e-12)
    noisy = np.array([0.1, 0.25, 0.3, 0.42])
    assert scores.fraction_oracle(noisy, oracles) == pytest.approx(noisy @ oracles / (oracles @ oracles), abs=1e-12)
    with pytest.raises(ValueError, match="equal length"):
        scores.fraction_oracle(noisy[:3], oracles)


def test_split_by_image_groups_in_unique_order():
    ids = np.array([7, 3, 7, 5, 3, 7])
    (groups,) = scores.split_by_image(ids, np.arange(6))
    assert [g.tolist() for g in groups] == [[1, 4], [3], [0, 2, 5]]


# ---- model-level functions on a small in-memory dataset with repeats ------------------------------

Batch = collections.namedtuple("Batch", ["images", "responses", "pupil_center"])


class RepeatDataset(Dataset):
    def __init__(self, images, responses, frame_image_id):
        self.images, self.responses = images, responses
        self.trial_info = type("TrialInfo", (), {"frame_image_id": frame_image_id})()
        self.neurons = type("Neurons", (), {"unit_ids": np.arange(101, 101 + responses.shape[1])})()

    def __len__(self):
        return len(self.responses)

    def __getitem__(self, i):
        return Batch(torch.from_numpy(self.images[i]), torch.from_numpy(self.responses[i]), torch.zeros(2))


class IndexSampler(torch.utils.data.Sampler):
    def __init__(self, indices):
        self.indices = indices

    def __iter__(self):
        return iter(self.indices.tolist())

    def __len__(self):
        return len(self.indices)


class PixelModel(torch.nn.Module):
    """Neuron n responds to pixel n; dropout makes train and eval mode differ."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(1.5))
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, images, data_key=None, **kwargs):
        return self.dropout(self.gain * images.flatten(1)) + 0.1


def repeat_loaders(seed=0, n_neurons=6):
    rng = np.random.default_rng(seed)
    n_images, n_repeats = 15, 4
    frame_image_id = rng.permutation(np.repeat(np.arange(100, 100 + n_images), n_repeats))
    frame_image_id = np.concatenate([rng.integers(0, 99, size=20), frame_image_id])  # + train trials
    stimulus = rng.gamma(2.0, 1.0, size=(200, n_neurons)).astype(np.float32)
    images = stimulus[frame_image_id].reshape(-1, 1, 1, n_neurons)
    responses = rng.poisson(images.reshape(-1, n_neurons)).astype(np.float32)
    responses[:, -1] = 2.0  # a constant neuron
    dataset = RepeatDataset(images, responses, frame_image_id)
    test_indices = np.arange(20, len(dataset))
    loader = DataLoader(dataset, batch_size=7, sampler=IndexSampler(test_indices))
    return {"test": {"a": loader}}, images.reshape(-1, n_neurons)[test_indices], responses[test_indices].astype(float), frame_image_id[test_indices]


def test_model_level_scores_agree_with_numpy():
    dataloaders, images, responses, ids = repeat_loaders()
    model = PixelModel().train()
    predictions = (np.float32(1.5) * images + np.float32(0.1)).astype(float)  # what the model computes

    correlations = scores.get_correlations(model, dataloaders, tier="test")
    assert model.training, "the model's mode must be restored"
    expected = np.array([np.corrcoef(responses[:, n], predictions[:, n])[0, 1] for n in range(5)] + [0.0])
    np.testing.assert_allclose(correlations, expected, atol=1e-9)
    assert scores.get_correlations(model, dataloaders, tier="test", per_neuron=False) == pytest.approx(expected.mean(), abs=1e-6)
    assert scores.get_correlations(model, dataloaders["test"], as_dict=True)["a"].shape == (6,)

    unique = np.unique(ids)
    mean_resp = np.stack([responses[ids == i].mean(0) for i in unique])
    mean_pred = np.stack([predictions[ids == i].mean(0) for i in unique])
    expected_signal = [np.corrcoef(mean_resp[:, n], mean_pred[:, n])[0, 1] for n in range(5)] + [0.0]
    np.testing.assert_allclose(scores.get_signal_correlations(model, dataloaders), expected_signal, atol=1e-9)

    noise_var = np.mean([responses[ids == i].var(0, ddof=1) for i in unique], axis=0)
    total_var = responses.var(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_feve = 1 - (((responses - predictions) ** 2).mean(0) - noise_var) / (total_var - noise_var)
    feve = scores.get_fev(model, dataloaders)
    np.testing.assert_allclose(feve[:5], expected_feve[:5], atol=1e-9)
    assert not np.isfinite(feve[5]), "a constant neuron has undefined FEVE"
    keep = (total_var - noise_var) / total_var >= 0.15
    assert scores.get_fev(model, dataloaders, per_neuron=False) == pytest.approx(expected_feve[keep].mean(), abs=1e-6)

    oracles = scores.get_oracles(dataloaders)
    loo = np.stack([(responses[ids == ids[t]].sum(0) - responses[t]) / (np.sum(ids == ids[t]) - 1) for t in range(len(ids))])
    expected_oracle = [np.corrcoef(responses[:, n], loo[:, n])[0, 1] for n in range(5)] + [0.0]
    np.testing.assert_allclose(oracles, expected_oracle, atol=1e-9)
    assert scores.get_fraction_oracles(model, dataloaders) == pytest.approx(
        expected @ oracles / (oracles @ oracles), abs=1e-6
    )


def test_model_predictions_are_in_sampler_order_and_eval_mode():
    dataloaders, images, responses, _ = repeat_loaders(seed=1)
    targets, outputs = scores.model_predictions(PixelModel(), dataloaders["test"]["a"], "a")
    np.testing.assert_array_equal(targets, responses)
    np.testing.assert_allclose(outputs, 1.5 * images + 0.1, rtol=1e-6)


def test_missing_tier_and_image_ids_are_named():
    dataloaders, *_ = repeat_loaders()
    with pytest.raises(KeyError, match="'validation'"):
        scores.get_correlations(PixelModel(), dataloaders, tier="validation")
    plain = {"test": {"a": DataLoader(dataloaders["test"]["a"].dataset, batch_size=4)}}
    with pytest.raises(ValueError, match="frame_image_id"):
        scores.get_signal_correlations(PixelModel(), plain)
