"""The synthetic V1 population: format, determinism, and a ground truth that explains the data."""
import numpy as np
import pytest

from pipeline.datasets.filetree import FileTree
from pipeline.datasets.synthetic import (PRESETS, behaviour_gain, generate, ground_truth_path, load_ground_truth,
                                         to_core_grid)
from pipeline.utility.scores import corr as _corr


def corr(a, b):
    """Per-column correlation over rows (trials)."""
    return _corr(a, b, axis=0)


@pytest.fixture(scope="module")
def population(tmp_path_factory):
    """Enough trials and repeats to measure correlations: 60 neurons, 20 test images x 8 repeats."""
    path = generate(tmp_path_factory.mktemp("pop"), n_neurons=60, n_train=300, n_validation=40,
                    n_test_images=20, n_repeats=8, image_size=(36, 64), seed=9)
    return path, FileTree(path), load_ground_truth(path)


def test_tiers_and_repeats(population):
    _, tree, _ = population
    tiers, ids = tree.trial_info.tiers, tree.trial_info.frame_image_id
    assert {t: int((tiers == t).sum()) for t in ("train", "validation", "test")} == {
        "train": 300, "validation": 40, "test": 160}
    test_ids, counts = np.unique(ids[tiers == "test"], return_counts=True)
    assert len(test_ids) == 20 and set(counts) == {8}
    assert len(np.unique(ids[tiers != "test"])) == 340 and not set(test_ids) & set(ids[tiers != "test"])
    assert sorted(tree.trial_info.trial_idx) == list(range(500))
    assert len(tree.trial_info.frame_image_class) == 500


def test_repeats_show_identical_images_and_differ_in_responses(population):
    _, tree, _ = population
    images, responses = tree.load("images"), tree.load("responses")
    repeats = np.flatnonzero(tree.trial_info.frame_image_id == tree.trial_info.frame_image_id[tree.trial_info.tiers == "test"][0])
    assert all(np.array_equal(images[repeats[0]], images[k]) for k in repeats)
    assert not np.array_equal(responses[repeats[0]], responses[repeats[1]])


def test_format_matches_the_reference_layout(population):
    path, tree, _ = population
    assert tree.load("images").dtype == np.uint8 and tree.load("images").shape == (500, 1, 36, 64)
    assert tree.load("behavior").shape == (500, 3) and tree.load("pupil_center").shape == (500, 2)
    assert tree.neurons.cell_motor_coordinates.shape == (60, 3)
    for key in ("unit_ids", "animal_ids", "sessions", "scan_idx", "area", "layer"):
        assert len(tree.neurons[key]) == 60
    train = tree.trial_info.tiers == "train"
    responses = tree.load("responses")[train].astype(np.float64)
    np.testing.assert_allclose(tree.statistics.responses.all.std, responses.std(0), rtol=1e-12)
    images = tree.load("images")[train].astype(np.float64)
    for name, value in (("mean", images.mean()), ("std", images.std()), ("median", np.median(images)),
                        ("min", images.min()), ("max", images.max())):
        np.testing.assert_allclose(tree.statistics.images.all[name], value, rtol=1e-10)
    assert ground_truth_path(path).parent == path.parent and not list(path.rglob("*ground_truth*"))


def test_deterministic_per_seed(tmp_path):
    a = generate(tmp_path / "a", seed=1, **PRESETS["tiny"])
    b = generate(tmp_path / "b", seed=1, **PRESETS["tiny"])
    c = generate(tmp_path / "c", seed=2, **PRESETS["tiny"])
    for field in ("images", "responses", "behavior", "pupil_center"):
        assert np.array_equal(FileTree(a).load(field), FileTree(b).load(field))
    assert not np.array_equal(FileTree(a).load("responses"), FileTree(c).load("responses"))
    truth_a, truth_b = load_ground_truth(a), load_ground_truth(b)
    assert all(np.array_equal(truth_a[k], truth_b[k]) for k in truth_a)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate(tmp_path / "a", seed=1, **PRESETS["tiny"])


def test_ground_truth_explains_test_responses(population):
    _, tree, truth = population
    test = tree.trial_info.tiers == "test"
    responses, rates = tree.load("responses")[test], truth["rates"][test]
    true_corr = np.nanmean(corr(responses, rates))
    shuffled = np.nanmean(corr(responses, rates[np.random.default_rng(0).permutation(len(rates))]))
    assert true_corr > 0.4 and abs(shuffled) < 0.1
    assert np.all(rates >= 0) and np.allclose(responses.mean(0), rates.mean(0), rtol=0.5, atol=0.05)


def test_behavioural_gain_is_stored_and_is_what_a_model_without_behaviour_misses(population):
    _, tree, truth = population
    behavior = tree.load("behavior").astype(np.float64)
    standard = (behavior - behavior.mean(0)) / behavior.std(0)
    np.testing.assert_allclose(truth["running"], standard[:, 2], atol=1e-5)
    np.testing.assert_allclose(truth["pupil"], standard[:, 0], atol=1e-5)
    gain = behaviour_gain(truth)
    assert gain.shape == truth["rates"].shape and gain.min() >= np.exp(-2) and gain.max() <= np.exp(2)
    running_neurons = truth["running_coef"] > 0.3
    without = truth["rates"] / gain
    # the gain carries the running modulation: gone from the behaviour-free rates
    assert np.nanmean(corr(truth["rates"][:, running_neurons], standard[:, 2:3])) > 0.2
    assert abs(np.nanmean(corr(without[:, running_neurons], standard[:, 2:3]))) < 0.1
    test = tree.trial_info.tiers == "test"
    responses = tree.load("responses")[test]
    assert 0.2 < np.nanmean(corr(responses, without[test])) < np.nanmean(corr(responses, truth["rates"][test]))


def test_retinotopy_is_smooth_and_eye_shift_is_stored(population):
    _, tree, truth = population
    cortex = tree.neurons.cell_motor_coordinates
    assert corr(cortex[:, :1], truth["rf_centers"][:, :1])[0] > 0.8
    assert np.all(np.abs(truth["rf_centers"]) <= 0.85)
    expected = (tree.load("pupil_center") - truth["eye_shift_center"]) @ truth["eye_shift_matrix"].T
    np.testing.assert_allclose(truth["shifts"], expected, atol=1e-4)
    assert 0.02 < truth["shifts"].std(0).min() < 0.2


def test_images_have_a_natural_spectrum(population):
    _, tree, _ = population
    images = tree.load("images")[:50, 0].astype(np.float64)
    power = (np.abs(np.fft.fft2(images - images.mean(axis=(1, 2), keepdims=True))) ** 2).mean(0)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(36), np.fft.fftfreq(64), indexing="ij"))
    band = (f > 0.03) & (f < 0.3)
    slope = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
    assert -2.6 < slope < -1.6
    assert images.std(axis=(1, 2)).std() > 3  # contrast varies between images


def test_to_core_grid_maps_the_cropped_edges_to_plus_minus_one():
    image_size, crop = (36, 64), 4
    first, last = crop, 64 - 1 - crop
    centers = np.array([[2 * first / 63 - 1, 2 * crop / 35 - 1], [2 * last / 63 - 1, 2 * (35 - crop) / 35 - 1]])
    np.testing.assert_allclose(to_core_grid(centers, image_size, crop), [[-1, -1], [1, 1]], atol=1e-12)


def test_missing_ground_truth(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ground truth"):
        load_ground_truth(tmp_path / "static1-1-1-x")


@pytest.mark.parametrize("option", ["spike_scale", "overdispersion"])
def test_noise_options_must_be_positive(tmp_path, option):
    with pytest.raises(ValueError, match=option):
        generate(tmp_path, seed=1, **{**PRESETS["tiny"], option: 0})


def test_spike_scale_multiplies_expected_counts(tmp_path):
    def rates_by_trial(path):  # the file order is drawn after the spikes, so it differs between the two
        order = np.argsort(np.load(path / "meta/trials/trial_idx.npy"))
        return load_ground_truth(path)["rates"][order]

    base = rates_by_trial(generate(tmp_path / "a", seed=1, **PRESETS["tiny"]))
    strong = rates_by_trial(generate(tmp_path / "b", seed=1, spike_scale=4.0, **PRESETS["tiny"]))
    np.testing.assert_allclose(strong, 4 * base, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_images_can_be_stored_as_floats_of_the_same_values(tmp_path, dtype):
    stored_as_uint8 = FileTree(generate(tmp_path / "a", seed=1, **PRESETS["tiny"]))
    stored_as_float = FileTree(generate(tmp_path / "b", seed=1, image_dtype=dtype, **PRESETS["tiny"]))
    images = stored_as_float.load("images")
    assert images.dtype == dtype and np.array_equal(images, stored_as_uint8.load("images"))
    assert np.array_equal(stored_as_float.load("responses"), stored_as_uint8.load("responses"))
    for name, value in stored_as_uint8.statistics.images.all.items():
        assert np.array_equal(stored_as_float.statistics.images.all[name], value), name


def test_image_dtype_must_be_uint8_or_float(tmp_path):
    with pytest.raises(ValueError, match="image_dtype must be uint8 or a float type, not int16"):
        generate(tmp_path, seed=1, image_dtype="int16", **PRESETS["tiny"])
