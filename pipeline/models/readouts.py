"""Gaussian readouts: each neuron reads the core's feature map at one (sampled) position."""
import logging

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .cpu_kernels import applies as kernels_apply
from .fused import gaussian_readout

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


def _sharing_index(match_ids, outdims, what):
    """Each neuron's index into the sorted unique ``match_ids``, and how many unique ids there are."""
    match_ids = np.asarray(match_ids)
    if match_ids.shape != (outdims,):
        raise ValueError(f"{what}: match_ids must hold one id per neuron ({outdims}), got shape {match_ids.shape}")
    unique, index = np.unique(match_ids, return_inverse=True)
    return index.astype(np.int64), len(unique)


def _check_shared_shape(parameter, shape, what):
    if tuple(parameter.shape) != shape:
        raise ValueError(f"{what} has shape {tuple(parameter.shape)}; this readout's match ids need {shape}")


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
        shared_features: ``{"match_ids": (outdims,) ids, "shared_features": Parameter or None}``: one
            feature vector per unique match id, times a per-neuron ``scales``; given another
            readout's ``_features`` this readout uses them (and does not regularise them).
        shared_grid: ``{"match_ids": ..., "shared_grid": Parameter or None}``: one position per unique
            match id; given another readout's ``_mu``, it is read through this readout's own affine
            ``mu_transform`` (initially the identity). Not with a grid predictor.
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
        shared_features=None,
        shared_grid=None,
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
        self._shared_grid = shared_grid is not None
        if self._predicted_grid and self._shared_grid:
            raise ValueError("a readout cannot both predict its grid (grid_mean_predictor) and share one (shared_grid)")
        if self._predicted_grid:
            if source_grid is None or len(source_grid) != outdims:
                raise ValueError(f"the grid mean predictor needs a source_grid with one row per neuron ({outdims})")
            grid = normalize_source_grid(source_grid)
            self.mu_transform = cortex_position_network(grid.shape[1], **grid_mean_predictor)
            self.register_buffer("source_grid", grid)
        elif self._shared_grid:
            self._share_grid(**shared_grid)
        else:
            self._mu = nn.Parameter(torch.empty(self.grid_shape))
        self.sigma = nn.Parameter(torch.empty(1, outdims, *GAUSS_SIGMA_SHAPES[gauss_type]))
        self._share_features(**(shared_features or {}))
        self.bias = nn.Parameter(torch.empty(outdims)) if bias else None
        self.initialize()

    def _share_grid(self, match_ids, shared_grid=None):
        """One learned position per unique match id, created here or read from ``shared_grid``."""
        index, n_matched = _sharing_index(match_ids, self.outdims, "shared_grid")
        self._original_grid = shared_grid is None
        if self._original_grid:
            self._mu = nn.Parameter(torch.empty(1, n_matched, 1, 2))
        else:
            _check_shared_shape(shared_grid, (1, n_matched, 1, 2), "shared_grid")
            self._mu = shared_grid
            self.mu_transform = nn.Linear(2, 2)  # drawn, then set to the identity, as in the reference
            with torch.no_grad():
                self.mu_transform.bias.fill_(0.0)
                self.mu_transform.weight.copy_(torch.eye(2))
        self.register_buffer("grid_sharing_index", torch.from_numpy(index))

    def _share_features(self, match_ids=None, shared_features=None):
        """Per-neuron features, or one feature vector per unique match id (created or shared) times ``scales``."""
        channels = self.in_shape[0]
        self._shared_features = match_ids is not None
        self._original_features = shared_features is None
        if not self._shared_features:
            self._features = nn.Parameter(torch.empty(1, channels, 1, self.outdims))
            return
        index, n_matched = _sharing_index(match_ids, self.outdims, "shared_features")
        if self._original_features:
            self._features = nn.Parameter(torch.empty(1, channels, 1, n_matched))
        else:
            _check_shared_shape(shared_features, (1, channels, 1, n_matched), "shared_features")
            self._features = shared_features
        self.scales = nn.Parameter(torch.empty(1, 1, 1, self.outdims))
        self.register_buffer("feature_sharing_index", torch.from_numpy(index))

    def initialize(self, mean_activity=None):
        """(Re)draw positions and Σ, set features to 1/channels and the bias to the mean activity or 0."""
        if not self._predicted_grid:
            self._mu.data.uniform_(-self.init_mu_range, self.init_mu_range)
        if self.gauss_type == "full":
            self.sigma.data.uniform_(-self.init_sigma, self.init_sigma)
        else:
            self.sigma.data.fill_(self.init_sigma)
        self._features.data.fill_(1 / self.in_shape[0])
        if self._shared_features:
            self.scales.data.fill_(1.0)
        if self.bias is not None:
            mean_activity = self.mean_activity if mean_activity is None else mean_activity
            if mean_activity is None:
                self.bias.data.zero_()
            else:
                self.bias.data.copy_(torch.as_tensor(mean_activity))

    @property
    def features(self):
        """Feature weights (1, C, 1, N); with shared features, the matched vector times each neuron's scale."""
        if self._shared_features:
            return self.scales * self._features[..., self.feature_sharing_index]
        return self._features

    @property
    def mu(self):
        """Mean positions, shape (1, N, 1, 2)."""
        if self._predicted_grid:
            return self.mu_transform(self.source_grid).view(self.grid_shape)
        if self._shared_grid and self._original_grid:
            return self._mu[:, self.grid_sharing_index]
        if self._shared_grid:
            return self.mu_transform(self._mu.view(-1, 2))[self.grid_sharing_index].view(self.grid_shape)
        return self._mu

    @property
    def mu_dispersion(self):
        """Summed standard deviation (x and y) of the learned positions: a regularizer pulling them together."""
        if self._predicted_grid:
            raise ValueError("mu_dispersion needs learned positions; this readout predicts them from the cortex")
        return self._mu.view(-1, 2).std(0).sum()

    def sample_grid(self, batch_size, sample=None, noise=None):
        """Positions (batch_size, N, 1, 2): sampled if ``sample`` (default: in training mode), else the mean.

        Args:
            noise: optional standard-normal draws (batch_size, N, 1, 2) to use instead of the RNG;
                implies sampling. Without it the draws come from the global torch RNG exactly as in
                the reference, so equal seeds give equal positions.
        """
        if not (self._predicted_grid or self._shared_grid):
            with torch.no_grad():
                self._mu.clamp_(-1, 1)  # learned positions stay inside the feature map (shared ones not, as upstream)
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
        if self.align_corners and kernels_apply(x):
            y = gaussian_readout(x, grid, self.features)
        else:
            sampled = F.grid_sample(x, grid, align_corners=self.align_corners).squeeze(-1)
            y = (sampled * self.features.view(1, -1, self.outdims)).sum(1)
        return y if self.bias is None else y + self.bias

    def feature_l1(self, reduction="sum"):
        """L1 norm of the feature weights, summed or averaged; zero for features shared from another readout."""
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not self._original_features:
            return self._features.new_zeros(())
        magnitudes = self.features.abs()
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
        share_features, share_grid: the first data key's readout creates one feature vector / one
            position per match id and the others use it (neuralpredictors'
            ``MultiReadoutSharedParametersBase``). Every data key must hold the same set of match ids.
        shared_match_ids: data key → (N,) match ids (neurons matched across recordings share an id).
        gamma_grid_dispersion: weight of each readout's ``mu_dispersion`` in its regularizer.
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
        share_features=False,
        share_grid=False,
        shared_match_ids=None,
        gamma_grid_dispersion=0.0,
        **readout_kwargs,
    ):
        super().__init__()
        if grid_mean_predictor is not None and grid_mean_predictor_type != "cortex":
            raise ValueError(f"grid mean predictor type {grid_mean_predictor_type!r} does not exist; use 'cortex'")
        if grid_mean_predictor is not None and (share_grid or gamma_grid_dispersion):
            raise ValueError("share_grid and gamma_grid_dispersion need learned positions; "
                             "drop the grid_mean_predictor")
        if share_features or share_grid:
            _check_match_ids(shared_match_ids, n_neurons_dict)
        self.gamma_grid_dispersion = gamma_grid_dispersion
        mean_activity_dict = mean_activity_dict or {}
        first = None  # the readout that owns shared parameters
        for data_key, n_neurons in n_neurons_dict.items():
            sharing = {}
            if share_grid:
                sharing["shared_grid"] = {"match_ids": shared_match_ids[data_key],
                                          "shared_grid": None if first is None else first._mu}
            if share_features:
                sharing["shared_features"] = {"match_ids": shared_match_ids[data_key],
                                              "shared_features": None if first is None else first._features}
            self[data_key] = FullGaussian2d(
                in_shape_dict[data_key],
                n_neurons,
                grid_mean_predictor=grid_mean_predictor,
                source_grid=None if grid_mean_predictor is None else source_grids[data_key],
                mean_activity=mean_activity_dict.get(data_key),
                feature_reg_weight=gamma_readout,
                **sharing,
                **readout_kwargs,
            )
            first = self[data_key] if first is None else first
        # The reference initialises every readout a second time once all exist (Σ is drawn twice).
        for readout in self.values():
            readout.initialize()

    def forward(self, x, data_key=None, **kwargs):
        return self[resolve_data_key(self, data_key)](x, **kwargs)

    def regularizer(self, data_key=None, reduction="sum"):
        """The data key's feature regularizer, plus ``gamma_grid_dispersion`` × its position dispersion."""
        readout = self[resolve_data_key(self, data_key)]
        if self.gamma_grid_dispersion:
            return readout.regularizer(reduction) + self.gamma_grid_dispersion * readout.mu_dispersion
        return readout.regularizer(reduction)


def _check_match_ids(shared_match_ids, n_neurons_dict):
    """Every data key has one match id per neuron, and all data keys hold the same set of ids."""
    missing = [key for key in n_neurons_dict if key not in (shared_match_ids or {})]
    if missing:
        raise ValueError(f"share_features/share_grid need shared_match_ids for the data keys {missing}")
    for key, n_neurons in n_neurons_dict.items():
        if np.shape(shared_match_ids[key]) != (n_neurons,):
            raise ValueError(f"shared_match_ids of {key!r} must hold one id per neuron ({n_neurons}), "
                             f"got shape {np.shape(shared_match_ids[key])}")
    reference_key, *others = n_neurons_dict
    reference = set(np.asarray(shared_match_ids[reference_key]).tolist())
    for key in others:
        ids = set(np.asarray(shared_match_ids[key]).tolist())
        if ids != reference:
            raise ValueError(f"shared_match_ids of {key!r} differ from those of {reference_key!r} "
                             f"({len(ids ^ reference)} ids in one only); every recording needs the same neurons")
