"""Gaussian readouts: each neuron reads the core's feature map at one (sampled) position."""
import logging

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)

GAUSS_SIGMA_SHAPES = {"full": (2, 2), "uncorrelated": (1, 2), "isotropic": (1, 1)}


def resolve_data_key(module_dict, data_key):
    """The data key to use: ``data_key`` itself, or the only key when it is None."""
    if data_key is None:
        if len(module_dict) != 1:
            raise ValueError(f"data_key is required: the model has several data keys {list(module_dict)}")
        return next(iter(module_dict))
    if data_key not in module_dict:
        raise ValueError(f"unknown data_key {data_key!r}; the model knows {list(module_dict)}")
    return data_key


def normalize_source_grid(coordinates):
    """Centre cortical coordinates per dimension and divide by their global max-abs (float32 result).

    Computed in the input's float precision, as the reference does, so the buffer matches it bit for bit.
    """
    grid = np.asarray(coordinates)
    if not np.issubdtype(grid.dtype, np.floating):
        grid = grid.astype(np.float64)
    if grid.ndim != 2 or not np.isfinite(grid).all():
        raise ValueError(f"source_grid must be a finite (neurons, dims) array, got shape {grid.shape}")
    grid = grid - grid.mean(axis=0, keepdims=True)
    extent = np.abs(grid).max()
    if extent == 0:
        raise ValueError("source_grid is degenerate: all neurons have the same cortical position")
    return torch.from_numpy((grid / extent).astype(np.float32))


def cortex_position_network(in_features, hidden_features=20, hidden_layers=0, final_tanh=False):
    """MLP from normalised cortical coordinates to grid positions: Linear, (ELU, Linear)×hidden_layers, [Tanh]."""
    widths = [in_features] + [hidden_features] * hidden_layers + [2]
    layers = [nn.Linear(widths[0], widths[1])]
    for width_in, width_out in zip(widths[1:-1], widths[2:]):
        layers += [nn.ELU(), nn.Linear(width_in, width_out)]
    if final_tanh:
        layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class FullGaussian2d(nn.Module):
    """Per-neuron Gaussian position, feature weights and bias on a (C, H, W) feature map.

    In training mode each image and neuron gets its own position ``mu + Σ z`` (z standard normal),
    clamped to [-1, 1]; in eval mode the (clamped) mean ``mu`` is used. A shift, one per image, is
    added after the clamp. Positions are ``grid_sample`` coordinates (x = width, y = height,
    align_corners=True). Parameter names match neuralpredictors 0.3.0.

    Args:
        in_shape: (channels, height, width) of the core output.
        outdims: number of neurons.
        bias: learn a per-neuron bias.
        init_mu_range: learned positions start uniform in ±init_mu_range (only without a predictor).
        init_sigma: 'full': Σ entries start uniform in ±init_sigma; else the std starts at init_sigma.
        batch_sample: one position sample per image (True) or one per batch.
        align_corners: passed to ``grid_sample``.
        gauss_type: 'full' (2×2 Σ), 'uncorrelated' (one std per axis) or 'isotropic'.
        grid_mean_predictor: config of the cortex position network (``hidden_features``,
            ``hidden_layers``, ``final_tanh``), or None to learn positions directly.
        source_grid: (outdims, dims) cortical coordinates, required with a predictor.
        mean_activity: initial bias (None: zero).
        feature_reg_weight: weight of the L1 feature regularizer.
    """

    def __init__(
        self,
        in_shape,
        outdims,
        bias=True,
        init_mu_range=0.1,
        init_sigma=1.0,
        batch_sample=True,
        align_corners=True,
        gauss_type="full",
        grid_mean_predictor=None,
        source_grid=None,
        mean_activity=None,
        feature_reg_weight=1.0,
    ):
        super().__init__()
        if not 0.0 < init_mu_range <= 1.0 or init_sigma <= 0.0:
            raise ValueError(
                f"init_mu_range must be in (0, 1] and init_sigma positive, got {init_mu_range} and {init_sigma}"
            )
        if gauss_type not in GAUSS_SIGMA_SHAPES:
            raise ValueError(f"gauss_type {gauss_type!r} is not one of {list(GAUSS_SIGMA_SHAPES)}")
        self.in_shape = tuple(in_shape)
        self.outdims = outdims
        self.init_mu_range = init_mu_range
        self.init_sigma = init_sigma
        self.batch_sample = batch_sample
        self.align_corners = align_corners
        self.gauss_type = gauss_type
        self.mean_activity = mean_activity
        self.feature_reg_weight = feature_reg_weight
        self.grid_shape = (1, outdims, 1, 2)

        # Creation order matters: it fixes the RNG stream shared with the reference.
        self._predicted_grid = grid_mean_predictor is not None
        if self._predicted_grid:
            if source_grid is None or len(source_grid) != outdims:
                raise ValueError(f"the grid mean predictor needs a source_grid with one row per neuron ({outdims})")
            grid = normalize_source_grid(source_grid)
            self.mu_transform = cortex_position_network(grid.shape[1], **grid_mean_predictor)
            self.register_buffer("source_grid", grid)
        else:
            self._mu = nn.Parameter(torch.empty(self.grid_shape))
        self.sigma = nn.Parameter(torch.empty(1, outdims, *GAUSS_SIGMA_SHAPES[gauss_type]))
        self._features = nn.Parameter(torch.empty(1, in_shape[0], 1, outdims))
        self.bias = nn.Parameter(torch.empty(outdims)) if bias else None
        self.initialize()

    def initialize(self, mean_activity=None):
        """(Re)draw positions and Σ, set features to 1/channels and the bias to the mean activity or 0."""
        if not self._predicted_grid:
            self._mu.data.uniform_(-self.init_mu_range, self.init_mu_range)
        if self.gauss_type == "full":
            self.sigma.data.uniform_(-self.init_sigma, self.init_sigma)
        else:
            self.sigma.data.fill_(self.init_sigma)
        self._features.data.fill_(1 / self.in_shape[0])
        if self.bias is not None:
            mean_activity = self.mean_activity if mean_activity is None else mean_activity
            if mean_activity is None:
                self.bias.data.zero_()
            else:
                self.bias.data.copy_(torch.as_tensor(mean_activity))

    @property
    def features(self):
        return self._features

    @property
    def mu(self):
        """Mean positions, shape (1, N, 1, 2)."""
        if self._predicted_grid:
            return self.mu_transform(self.source_grid).view(self.grid_shape)
        return self._mu

    def sample_grid(self, batch_size, sample=None, noise=None):
        """Positions (batch_size, N, 1, 2): sampled if ``sample`` (default: in training mode), else the mean.

        Args:
            noise: optional standard-normal draws (batch_size, N, 1, 2) to use instead of the RNG;
                implies sampling. Without it the draws come from the global torch RNG exactly as in
                the reference, so equal seeds give equal positions.
        """
        if not self._predicted_grid:
            with torch.no_grad():
                self._mu.clamp_(-1, 1)  # learned positions are kept inside the feature map
        mu = self.mu
        sample = self.training if sample is None else sample
        if noise is None and not sample:
            return mu.clamp(-1, 1).expand(batch_size, -1, -1, -1)
        if noise is None:
            noise = mu.new_empty((batch_size,) + self.grid_shape[1:]).normal_()
        if self.gauss_type == "full":
            offsets = noise @ self.sigma.transpose(-1, -2)
        else:
            offsets = noise * self.sigma
        return (offsets + mu).clamp(-1, 1)

    def forward(self, x, sample=None, shift=None, noise=None):
        """Responses (B, N) to a feature map x (B, C, H, W); ``shift`` (B, 2) moves every neuron's position."""
        batch_size = x.shape[0]
        if tuple(x.shape[1:]) != self.in_shape:
            logger.warning("feature map %s differs from the readout's in_shape %s", tuple(x.shape[1:]), self.in_shape)
        if self.batch_sample:
            grid = self.sample_grid(batch_size, sample=sample, noise=noise)
        else:
            grid = self.sample_grid(1, sample=sample, noise=noise).expand(batch_size, -1, -1, -1)
        if shift is not None:
            grid = grid + shift[:, None, None, :]
        sampled = F.grid_sample(x, grid, align_corners=self.align_corners).squeeze(-1)
        y = (sampled * self._features.view(1, -1, self.outdims)).sum(1)
        return y if self.bias is None else y + self.bias

    def feature_l1(self, reduction="sum"):
        """L1 norm of the feature weights, summed or averaged."""
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        magnitudes = self._features.abs()
        return magnitudes.sum() if reduction == "sum" else magnitudes.mean()

    def regularizer(self, reduction="sum"):
        """``feature_reg_weight`` × the feature L1 norm."""
        return self.feature_reg_weight * self.feature_l1(reduction)


class MultipleFullGaussian2d(nn.ModuleDict):
    """One ``FullGaussian2d`` per data key, initialised in the reference's RNG order.

    Args:
        in_shape_dict: data key → core output shape (C, H, W).
        n_neurons_dict: data key → number of neurons.
        gamma_readout: weight of each readout's L1 feature regularizer.
        grid_mean_predictor: config of the cortex position network, or None.
        grid_mean_predictor_type: 'cortex' (the only type) when a predictor is given.
        source_grids: data key → (N, dims) cortical coordinates, with a predictor.
        mean_activity_dict: data key → initial bias, or None for zero biases.
        **readout_kwargs: passed to every ``FullGaussian2d``.
    """

    def __init__(
        self,
        in_shape_dict,
        n_neurons_dict,
        gamma_readout=1.0,
        grid_mean_predictor=None,
        grid_mean_predictor_type=None,
        source_grids=None,
        mean_activity_dict=None,
        **readout_kwargs,
    ):
        super().__init__()
        if grid_mean_predictor is not None and grid_mean_predictor_type != "cortex":
            raise ValueError(f"grid mean predictor type {grid_mean_predictor_type!r} does not exist; use 'cortex'")
        mean_activity_dict = mean_activity_dict or {}
        for data_key, n_neurons in n_neurons_dict.items():
            self[data_key] = FullGaussian2d(
                in_shape_dict[data_key],
                n_neurons,
                grid_mean_predictor=grid_mean_predictor,
                source_grid=None if grid_mean_predictor is None else source_grids[data_key],
                mean_activity=mean_activity_dict.get(data_key),
                feature_reg_weight=gamma_readout,
                **readout_kwargs,
            )
        # The reference initialises every readout a second time once all exist (Σ is drawn twice).
        for readout in self.values():
            readout.initialize()

    def forward(self, x, data_key=None, **kwargs):
        return self[resolve_data_key(self, data_key)](x, **kwargs)

    def regularizer(self, data_key=None, reduction="sum"):
        return self[resolve_data_key(self, data_key)].regularizer(reduction)
