"""The figures hold the data they were given, print the right numbers, and refuse bad input."""
import re

import numpy as np
import pytest

from pipeline.utility import plots

rng = np.random.default_rng(0)


def printed_r(ax):
    match = re.fullmatch(r"r = (-?\d\.\d{3})", ax.get_title())
    assert match, ax.get_title()
    return float(match.group(1))


def test_rf_positions_vs_truth_plots_each_axis_with_its_r():
    true = rng.uniform(-30, 30, size=(50, 2))
    learned = np.column_stack([0.02 * true[:, 0] + rng.normal(0, 0.1, 50), -0.01 * true[:, 1] + rng.normal(0, 0.5, 50)])
    fig = plots.rf_positions_vs_truth(learned, true)
    axes = fig.axes
    assert len(axes) == 2
    for i, ax in enumerate(axes):
        np.testing.assert_array_equal(ax.collections[0].get_offsets(), np.column_stack([true[:, i], learned[:, i]]))
        assert printed_r(ax) == pytest.approx(np.corrcoef(true[:, i], learned[:, i])[0, 1], abs=5e-4)
    assert printed_r(axes[0]) > 0.9 and printed_r(axes[1]) < 0  # the two axes are not mixed up


def test_constant_positions_say_r_is_undefined_instead_of_nan():
    fig = plots.rf_positions_vs_truth(np.zeros((5, 2)), rng.normal(size=(5, 2)))
    assert all(ax.get_title() == "r undefined (constant values)" for ax in fig.axes)


def test_seed_comparison_plots_pairs_identity_and_r():
    a = rng.uniform(0, 0.6, 40)
    b = a + rng.normal(0, 0.05, 40)
    ax = plots.seed_comparison(a, b, labels=("seed 1", "seed 2")).axes[0]
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), np.column_stack([a, b]))
    assert printed_r(ax) == pytest.approx(plots.pearson_r(a, b), abs=5e-4)
    assert plots.pearson_r(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    identity = ax.lines[0]
    np.testing.assert_array_equal(identity.get_xdata(), identity.get_ydata())
    assert ax.get_xlabel().endswith("seed 1") and ax.get_ylabel().endswith("seed 2")


def test_correlation_distributions_counts_every_neuron_of_every_model():
    data = {"baseline": rng.normal(0.3, 0.1, 200), "no shifter": rng.normal(0.2, 0.1, 120)}
    ax = plots.correlation_distributions(data, bins=15).axes[0]
    edges = np.histogram_bin_edges(np.concatenate(list(data.values())), bins=15)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    for outline, (name, values), label in zip(ax.patches, data.items(), legend):
        # A step outline visits each bar's top twice; the tops are the histogram counts.
        heights = outline.get_xy()[1:-1:2, 1][: len(edges) - 1]
        np.testing.assert_array_equal(heights, np.histogram(values, bins=edges)[0])
        assert label == f"{name} (mean {values.mean():.3f}, n={len(values)})"


def test_retinotopy_map_colours_cortical_positions_by_rf_position():
    cortex = rng.uniform(0, 500, size=(30, 2))
    rf = np.column_stack([cortex[:, 0] / 250 - 1, 1 - cortex[:, 1] / 250])
    fig = plots.retinotopy_map(cortex, rf)
    maps = [ax for ax in fig.axes if ax.collections and ax.get_xlabel() == "cortical x"]
    assert len(maps) == 2
    for i, ax in enumerate(maps):
        dots = ax.collections[0]
        np.testing.assert_array_equal(dots.get_offsets(), cortex)
        np.testing.assert_array_equal(dots.get_array(), rf[:, i])


def test_readout_positions_draw_both_position_sets_on_the_map_in_grid_coordinates():
    feature_map = rng.normal(size=(17, 31))
    positions = rng.uniform(-1, 1, size=(25, 2))
    shifted = positions + [0.1, -0.05]
    ax = plots.readout_positions(feature_map, positions, shifted).axes[0]
    image = ax.images[0]
    np.testing.assert_array_equal(image.get_array(), feature_map)
    assert image.get_extent() == [-1, 1, 1, -1]  # y = -1 is the top row, as in grid_sample
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), positions)
    np.testing.assert_array_equal(ax.collections[1].get_offsets(), shifted)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["unshifted", "shifted"]
    assert len(plots.readout_positions(feature_map, positions).axes[0].collections) == 1


def test_training_history_plots_both_series_and_marks_the_best_epoch():
    val = np.array([0.1, 0.25, 0.31, 0.30, 0.29])
    loss = np.array([900.0, 700.0, 650.0, 640.0, 635.0])
    corr_ax, loss_ax = plots.training_history(val, loss).axes
    np.testing.assert_array_equal(corr_ax.lines[0].get_xydata(), np.column_stack([np.arange(1, 6), val]))
    np.testing.assert_array_equal(loss_ax.lines[0].get_ydata(), loss)
    best = corr_ax.lines[1]
    assert (best.get_xdata()[0], best.get_ydata()[0]) == (3, 0.31)
    assert corr_ax.get_legend().get_texts()[0].get_text() == "best: epoch 3, 0.310"


def test_figures_render_to_png(tmp_path):
    fig = plots.seed_comparison([0.1, 0.2, 0.4], [0.15, 0.2, 0.35])
    fig.savefig(tmp_path / "seeds.png")
    assert (tmp_path / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: plots.rf_positions_vs_truth(np.zeros((5, 3)), np.zeros((5, 2))), r"learned must have shape \(N, 2\)"),
        (lambda: plots.rf_positions_vs_truth(np.zeros((5, 2)), np.zeros((4, 2))), "true has 4 neurons but learned has 5"),
        (lambda: plots.retinotopy_map(np.zeros(5), np.zeros((5, 2))), r"cortical_xy must be a non-empty array of shape \(N, 2\)"),
        (lambda: plots.seed_comparison([0.1, np.nan], [0.1, 0.2]), "corr_a has 1 non-finite values"),
        (lambda: plots.seed_comparison([], []), r"corr_a must be a non-empty array of shape \(N,\)"),
        (lambda: plots.correlation_distributions({}), "non-empty mapping"),
        (lambda: plots.correlation_distributions({"m": [[0.1]]}), r"correlations\['m'\] must be"),
        (lambda: plots.training_history([0.1, 0.2], [1.0, np.inf]), "loss has 1 non-finite values"),
        (lambda: plots.readout_positions(np.zeros(4), np.zeros((3, 2))), r"feature_map must be a non-empty array of shape \(H, W\)"),
        (lambda: plots.readout_positions(np.zeros((4, 4)), np.zeros((3, 2)), np.zeros((2, 2))), "shifted has 2 neurons but positions has 3"),
    ],
)
def test_bad_input_names_the_culprit(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_non_numeric_input_is_a_type_error():
    with pytest.raises(TypeError, match="val_corr must be numeric"):
        plots.training_history(["a", "b"], [1.0, 2.0])
