"""Figures for the notebooks and the demo: plain arrays in, a matplotlib Figure out.

Figures are built on the Agg canvas without pyplot, so nothing touches the global backend or
pyplot's figure registry: save them with ``fig.savefig(path)``, or show them in Jupyter with
``display(fig)``.
"""
from collections.abc import Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def rf_positions_vs_truth(learned, true) -> Figure:
    """Learned RF positions against ground-truth RF centres, one scatter per axis with Pearson r.

    Args:
        learned: (N, 2) learned positions (x, y), e.g. the readout's grid means.
        true: (N, 2) true RF centres (x, y) of the same neurons, in any units.
    """
    learned = _points("learned", learned)
    true = _points("true", true, like=("learned", learned))
    fig, axes = _figure(1, 2, width=9, height=4)
    for i, (ax, name) in enumerate(zip(axes, "xy")):
        _scatter_with_r(ax, true[:, i], learned[:, i], f"true RF centre {name}", f"learned position {name}")
    return fig


def seed_comparison(corr_a, corr_b, labels=("seed A", "seed B")) -> Figure:
    """Per-neuron test correlation of one model trained with two seeds, with r and the identity line."""
    corr_a = _vector("corr_a", corr_a)
    corr_b = _vector("corr_b", corr_b, like=("corr_a", corr_a))
    fig, (ax,) = _figure(1, 1, width=4.5, height=4.5)
    _scatter_with_r(ax, corr_a, corr_b, f"test correlation, {labels[0]}", f"test correlation, {labels[1]}")
    low, high = min(corr_a.min(), corr_b.min()), max(corr_a.max(), corr_b.max())
    ax.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1, label="identity")
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def correlation_distributions(correlations: Mapping, bins: int = 30) -> Figure:
    """Histograms of per-neuron test correlation, one outline per model, means in the legend.

    Args:
        correlations: model name -> (N,) per-neuron correlations (N may differ between models).
        bins: number of bins shared by all models.
    """
    if not isinstance(correlations, Mapping) or not correlations:
        raise ValueError("correlations must be a non-empty mapping of model name -> per-neuron correlations")
    values = {str(name): _vector(f"correlations[{name!r}]", v) for name, v in correlations.items()}
    edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=bins)
    fig, (ax,) = _figure(1, 1, width=6, height=4)
    for name, v in values.items():
        ax.hist(v, bins=edges, histtype="step", linewidth=1.5, label=f"{name} (mean {v.mean():.3f}, n={len(v)})")
    ax.set_xlabel("per-neuron test correlation")
    ax.set_ylabel("neurons")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # headroom for the legend
    ax.legend(frameon=False, loc="upper right")
    return fig


def retinotopy_map(cortical_xy, rf_positions) -> Figure:
    """Each neuron at its cortical position, coloured by its learned RF x (left) and y (right).

    Args:
        cortical_xy: (N, 2) cortical positions (e.g. the first two columns of cell_motor_coordinates).
        rf_positions: (N, 2) learned RF positions (x, y) of the same neurons.
    """
    cortical_xy = _points("cortical_xy", cortical_xy)
    rf_positions = _points("rf_positions", rf_positions, like=("cortical_xy", cortical_xy))
    fig, axes = _figure(1, 2, width=10, height=4.5)
    for i, (ax, name) in enumerate(zip(axes, "xy")):
        dots = ax.scatter(cortical_xy[:, 0], cortical_xy[:, 1], c=rf_positions[:, i], cmap="viridis", s=12)
        fig.colorbar(dots, ax=ax, label=f"learned RF {name}")
        ax.set_xlabel("cortical x")
        ax.set_ylabel("cortical y")
        ax.set_aspect("equal", adjustable="datalim")
    return fig


def readout_positions(feature_map, positions, shifted=None) -> Figure:
    """Where each neuron reads out on a core output map, optionally also after the shifter's shift.

    Args:
        feature_map: (H, W) image of the core output, e.g. its mean over channels for one trial.
        positions: (N, 2) readout positions (x, y) in grid coordinates: [-1, 1] from the first to the
            last pixel centre, y = -1 at the top row (``torch.nn.functional.grid_sample``'s convention).
        shifted: (N, 2) the same positions after the shift of one trial, or None.
    """
    feature_map = _finite("feature_map", feature_map, ndim=2, like=None, shape="(H, W)")
    positions = _points("positions", positions)
    fig, (ax,) = _figure(1, 1, width=7, height=7 * feature_map.shape[0] / feature_map.shape[1] + 0.8)
    ax.imshow(feature_map, cmap="gray", extent=(-1, 1, 1, -1), aspect="auto")
    ax.scatter(positions[:, 0], positions[:, 1], s=14, color="tab:orange", label="unshifted")
    if shifted is not None:
        shifted = _points("shifted", shifted, like=("positions", positions))
        ax.scatter(shifted[:, 0], shifted[:, 1], s=14, marker="x", color="tab:cyan", label="shifted")
    ax.set_xlabel("readout x (grid units)")
    ax.set_ylabel("readout y (grid units)")
    ax.legend(frameon=True, loc="upper right")
    return fig


def training_history(val_corr, loss) -> Figure:
    """Validation correlation and training loss per epoch (epochs counted from 1), best epoch marked."""
    val_corr = _vector("val_corr", val_corr)
    loss = _vector("loss", loss)
    fig, (ax_corr, ax_loss) = _figure(2, 1, width=6, height=5, sharex=True)
    epochs = np.arange(1, len(val_corr) + 1)
    best = int(np.argmax(val_corr))
    ax_corr.plot(epochs, val_corr, marker=".")
    ax_corr.plot(epochs[best], val_corr[best], marker="*", markersize=12, linestyle="none",
                 label=f"best: epoch {epochs[best]}, {val_corr[best]:.3f}")
    ax_corr.set_ylabel("validation correlation")
    ax_corr.legend(frameon=False)
    ax_loss.plot(np.arange(1, len(loss) + 1), loss, marker=".")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_xlabel("epoch")
    return fig


def pearson_r(x, y) -> float:
    """Pearson correlation of two equal-length vectors (the r the figures print)."""
    return float(np.corrcoef(x, y)[0, 1])


def _figure(rows, cols, width, height, sharex=False):
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, sharex=sharex, squeeze=False).ravel()


def _scatter_with_r(ax, x, y, xlabel, ylabel):
    ax.scatter(x, y, s=10, alpha=0.7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"r = {pearson_r(x, y):.3f}" if np.ptp(x) > 0 and np.ptp(y) > 0 else "r undefined (constant values)")


def _vector(name, values, like=None):
    return _finite(name, values, ndim=1, like=like)


def _points(name, values, like=None):
    points = _finite(name, values, ndim=2, like=like)
    if points.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) with columns x, y, got {points.shape}")
    return points


def _finite(name, values, ndim, like, shape=None):
    """``values`` as a finite float array of ``ndim`` dims, as long as ``like`` = (name, array) if given."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be numeric, got {type(values).__name__}: {error}") from None
    if array.ndim != ndim or len(array) == 0:
        shape = shape or ("(N,)" if ndim == 1 else "(N, 2)")
        raise ValueError(f"{name} must be a non-empty array of shape {shape}, got shape {array.shape}")
    if like is not None and len(array) != len(like[1]):
        raise ValueError(f"{name} has {len(array)} neurons but {like[0]} has {len(like[1])}")
    bad = np.count_nonzero(~np.isfinite(array))
    if bad:
        raise ValueError(f"{name} has {bad} non-finite values (NaN or inf); drop or fix those neurons first")
    return array
