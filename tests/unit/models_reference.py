"""Test support for the model tests: small in-memory loaders and the reference model.

``reference_model`` assembles sensorium's ``stacked_core_full_gauss_readout`` (seed commit) from
neuralpredictors 0.3.0 pieces, following the construction order of spec §2.1 step by step; the
readout-sharing options reach neuralpredictors' ``MultiReadoutSharedParametersBase`` as nnvision's
model functions pass them (match ids from ``neurons.multi_match_id``).
"""
import copy
import random
import warnings
from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler, SubsetRandomSampler

from tests.reference import np_ref


class StandInDataset(Dataset):
    """Random trials with the loader contract's fields (images, responses, [behavior], [pupil_center])."""

    def __init__(self, n_trials, n_neurons, image_shape, *, behavior=False, pupil_center=True, seed=0):
        rng = np.random.default_rng(seed)
        fields = ["images", "responses"] + ["behavior"] * behavior + ["pupil_center"] * pupil_center
        self.point = namedtuple("DataPoint", fields)
        self.arrays = {
            "images": rng.standard_normal((n_trials, *image_shape)).astype(np.float32),
            "responses": rng.exponential(size=(n_trials, n_neurons)).astype(np.float32),
            "behavior": rng.standard_normal((n_trials, 3)).astype(np.float32),
            "pupil_center": rng.standard_normal((n_trials, 2)).astype(np.float32),
        }
        self.neurons = SimpleNamespace(cell_motor_coordinates=rng.uniform(-300, 300, (n_neurons, 3)))

    def __len__(self):
        return len(self.arrays["images"])

    def __getitem__(self, index):
        return self.point(*(torch.from_numpy(self.arrays[name][index]) for name in self.point._fields))


def stand_in_loaders(data_key, n_neurons, image_shape, *, n_trials=8, batch_size=4, **dataset_kwargs):
    """``{tier: {data_key: DataLoader}}`` over one ``StandInDataset`` (train shuffled, like sensorium)."""
    dataset = StandInDataset(n_trials, n_neurons, image_shape, **dataset_kwargs)
    return {
        "train": {data_key: DataLoader(dataset, batch_size, sampler=SubsetRandomSampler(range(n_trials)))},
        "validation": {data_key: DataLoader(dataset, batch_size, sampler=SequentialSampler(dataset))},
    }


class _ReferenceMultiReadout(np_ref.layers.readouts.MultiReadoutSharedParametersBase):
    _base_readout = np_ref.layers.readouts.FullGaussian2d


def reference_model(dataloaders, seed, **config):
    """sensorium's ``stacked_core_full_gauss_readout`` (seed defaults) built from neuralpredictors 0.3.0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # neuralpredictors' deprecation and "bias not initialised" warnings
        return _reference_model(dataloaders, seed, **config)


def _reference_model(dataloaders, seed, **config):
    c = dict(
        hidden_channels=32, input_kern=13, hidden_kern=3, layers=3, gamma_input=15.5, skip=0,
        final_nonlinearity=True, momentum=0.9, pad_input=False, batch_norm=True, hidden_dilation=1,
        laplace_padding=None, input_regularizer="LaplaceL2norm", use_avg_reg=False, init_mu_range=0.2,
        init_sigma=1.0, readout_bias=True, gamma_readout=4, elu_offset=0, stack=None,
        depth_separable=False, linear=False, gauss_type="full", grid_mean_predictor=None, shifter=None,
        input_channels_shifter=2, hidden_channels_shifter=5, shift_layers=3, gamma_shifter=0,
        hidden_padding=None, core_bias=False, share_features=False, share_grid=False, shared_match_ids=None,
    )
    c.update(config)
    loaders = dataloaders["train"] if "train" in dataloaders else dataloaders
    in_name, out_name = next(iter(list(loaders.values())[0]))._fields[:2]
    dims = {k: {f: v.shape for f, v in next(iter(l))._asdict().items()} for k, l in loaders.items()}
    n_neurons = {k: v[out_name][1] for k, v in dims.items()}
    in_shapes = {k: v[in_name] for k, v in dims.items()}

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    source_grids, predictor, predictor_type = None, None, None
    if c["grid_mean_predictor"] is not None:
        predictor = copy.deepcopy(c["grid_mean_predictor"])
        predictor_type = predictor.pop("type")
        input_dim = predictor.pop("input_dimensions", 2)
        source_grids = {k: l.dataset.neurons.cell_motor_coordinates[:, :input_dim] for k, l in loaders.items()}

    core = np_ref.layers.cores.Stacked2dCore(
        input_channels=list(in_shapes.values())[0][1], hidden_channels=c["hidden_channels"],
        input_kern=c["input_kern"], hidden_kern=c["hidden_kern"], layers=c["layers"],
        gamma_input=c["gamma_input"], skip=c["skip"], final_nonlinearity=c["final_nonlinearity"],
        bias=c["core_bias"], momentum=c["momentum"], pad_input=c["pad_input"], batch_norm=c["batch_norm"],
        hidden_dilation=c["hidden_dilation"], laplace_padding=c["laplace_padding"],
        input_regularizer=c["input_regularizer"], stack=c["stack"], depth_separable=c["depth_separable"],
        linear=c["linear"], hidden_padding=c["hidden_padding"], use_avg_reg=c["use_avg_reg"],
    )
    core.eval()
    with torch.no_grad():
        out_shapes = {k: tuple(core(torch.zeros(1, *s[1:])).shape[1:]) for k, s in in_shapes.items()}
    core.train()
    match_ids = c["shared_match_ids"]
    if (c["share_features"] or c["share_grid"]) and match_ids is None:
        match_ids = {k: l.dataset.neurons.multi_match_id for k, l in loaders.items()}
    readout = _ReferenceMultiReadout(
        in_shape_dict=out_shapes, loader=loaders, n_neurons_dict=n_neurons, init_mu_range=c["init_mu_range"],
        bias=c["readout_bias"], init_sigma=c["init_sigma"], gamma_readout=c["gamma_readout"],
        gauss_type=c["gauss_type"], grid_mean_predictor=predictor, grid_mean_predictor_type=predictor_type,
        source_grids=source_grids, share_features=c["share_features"], share_grid=c["share_grid"],
        shared_match_ids=match_ids,
    )
    shifter = None
    if c["shifter"] is True:
        shifter = np_ref.layers.shifters.MLPShifter(
            list(n_neurons), input_channels=c["input_channels_shifter"],
            hidden_channels_shifter=c["hidden_channels_shifter"], shift_layers=c["shift_layers"],
            gamma_shifter=c["gamma_shifter"],
        )
    return np_ref.layers.encoders.FiringRateEncoder(core, readout, shifter=shifter, elu_offset=c["elu_offset"])


SEED_GRID_PREDICTOR = {"type": "cortex", "input_dimensions": 2, "hidden_layers": 1, "hidden_features": 30,
                       "final_tanh": True}
SEED_CONFIG = dict(
    input_kern=9, hidden_kern=7, hidden_channels=64, layers=4, depth_separable=True, stack=-1,
    gamma_input=6.3831, gamma_readout=0.0076, grid_mean_predictor=SEED_GRID_PREDICTOR, gauss_type="full",
    shifter=True,
)
