"""The SENSORIUM baseline CNN's model function: ``model_fn(dataloaders, seed, **config) -> nn.Module``."""
import copy

import numpy as np
import torch

from ..datasets.data_info import dims_per_data_key
from ..registry import register
from ..utility.seeding import set_random_seed
from ..validation import require_positive_ints
from .cores import Stacked2dCore
from .encoders import FiringRateEncoder
from .readouts import MultipleFullGaussian2d
from .shifters import MLPShifter


def core_output_shape(core, input_shape):
    """(C, H, W) of the core's output for inputs of shape (B, C, H, W), from one zero image in eval mode."""
    was_training = core.training
    core.eval()
    parameter = next(core.parameters())
    with torch.no_grad():
        shape = core(torch.zeros(1, *input_shape[1:], device=parameter.device, dtype=parameter.dtype)).shape[1:]
    core.train(was_training)
    return tuple(shape)


@register("model", aliases=["pipeline.models.stacked_core_full_gauss_readout"])
def stacked_core_full_gauss_readout(
    dataloaders,
    seed,
    hidden_channels=32,
    input_kern=13,
    hidden_kern=3,
    layers=3,
    gamma_input=15.5,
    skip=0,
    final_nonlinearity=True,
    momentum=0.9,
    pad_input=False,
    batch_norm=True,
    hidden_dilation=1,
    laplace_padding=None,
    input_regularizer="LaplaceL2norm",
    use_avg_reg=False,
    init_mu_range=0.2,
    init_sigma=1.0,
    readout_bias=True,
    gamma_readout=4,
    elu_offset=0,
    stack=None,
    depth_separable=False,
    linear=False,
    gauss_type="full",
    grid_mean_predictor=None,
    attention_conv=False,
    shifter=None,
    shifter_type="MLP",
    input_channels_shifter=2,
    hidden_channels_shifter=5,
    shift_layers=3,
    gamma_shifter=0,
    shifter_bias=True,
    hidden_padding=None,
    core_bias=False,
    channels_last=False,
    autocast_dtype=None,
    compile=False,
    share_features=False,
    share_grid=False,
    shared_match_ids=None,
    gamma_grid_dispersion=0,
    pretrained_core=None,
    freeze_core=False,
    data_info=None,
):
    """The SENSORIUM 2022 baseline: ``Stacked2dCore`` + per-key ``FullGaussian2d`` (+ MLP shifter).

    Same arguments, defaults and construction order as sensorium's model function at the seed
    commit (``core_bias=False``), so a given seed gives the reference's initial weights. One batch
    per training loader is drawn before seeding, consuming loader RNG as the reference does.

    Args:
        dataloaders: ``{tier: {data_key: DataLoader}}`` (the "train" tier is used) or
            ``{data_key: DataLoader}``. Batches are namedtuples starting with images, responses;
            with a grid predictor, ``loader.dataset.neurons.cell_motor_coordinates`` is read.
            May be None when ``data_info`` is given.
        seed: seed set before any weight is drawn.
        grid_mean_predictor: e.g. ``{"type": "cortex", "input_dimensions": 2, "hidden_layers": 1,
            "hidden_features": 30, "final_tanh": True}``, or None to learn positions directly.
        shifter: True adds an MLP shifter per data key fed with ``pupil_center``.
        gamma_shifter: accepted for compatibility; the reference's MLP shifter has no regularizer.
        core_bias: conv biases in the hidden layers (False at the seed; the checkpoints have none).
        channels_last, autocast_dtype, compile: opt-in speed-ups. The defaults keep the reference's
            float32 numerics (on CPU the core is channels-last anyway); ``compile=True`` compiles the
            core in place (state-dict keys unchanged).
        share_features, share_grid: readouts of all data keys share one feature vector / one
            position per matched neuron (neuralpredictors' ``MultiReadoutSharedParametersBase``);
            not ``share_grid`` with a grid predictor.
        shared_match_ids: ``{data_key: (N,) ids}`` for sharing; default each dataset's
            ``neurons.multi_match_id`` (as nnvision reads it).
        gamma_grid_dispersion: weight of the readout positions' dispersion in the regularizer
            (nnvision); needs learned positions.
        pretrained_core: ``{name: array}`` state dict of a trained core (names without ``core.``)
            loaded after every weight is drawn, so the readouts start as they would without it.
        freeze_core: train the readouts and shifters only (see ``FiringRateEncoder.freeze_core``).
        data_info: ``pipeline.datasets.data_info.data_info(dataloaders)``, used instead of the
            dataloaders, so that a trained model is rebuilt without its data.

    Returns:
        a ``FiringRateEncoder`` with ``.core``, ``.readout`` and ``.shifter`` (or None).
    """
    require_positive_ints(hidden_channels=hidden_channels, input_kern=input_kern, hidden_kern=hidden_kern,
                          layers=layers, hidden_dilation=hidden_dilation)
    if attention_conv:
        raise ValueError("attention_conv=True is not supported; use depth_separable or plain convs")
    if shifter is True and shifter_type != "MLP":
        raise ValueError(f"shifter_type {shifter_type!r} is not supported; use 'MLP'")
    if not shifter_bias:
        raise ValueError("shifter_bias=False is not supported: the reference's MLP shifter always has biases")
    if data_info is None:
        loaders = (dataloaders or {}).get("train", dataloaders)
        if not loaders:
            raise ValueError("stacked_core_full_gauss_readout needs at least one dataloader, or data_info")
        fields = next(iter(next(iter(loaders.values()))))._fields
        dims = dims_per_data_key(loaders)
    else:
        loaders = None
        fields = next(iter(data_info.values()))["fields"]
        dims = {key: info["dims"] for key, info in data_info.items()}
    in_name, out_name = fields[:2]
    in_shapes = {key: tuple(shapes[in_name]) for key, shapes in dims.items()}
    n_neurons = {key: shapes[out_name][1] for key, shapes in dims.items()}
    if (share_features or share_grid) and shared_match_ids is None:
        shared_match_ids = _neuron_arrays("multi_match_id", loaders, data_info)

    set_random_seed(seed)
    predictor, predictor_type, source_grids = None, None, None
    if grid_mean_predictor is not None:
        predictor = copy.deepcopy(grid_mean_predictor)
        predictor_type = predictor.pop("type")
        input_dimensions = predictor.pop("input_dimensions", 2)
        source_grids = {key: coordinates[:, :input_dimensions]
                        for key, coordinates in _neuron_arrays("cell_motor_coordinates", loaders, data_info).items()}

    core = Stacked2dCore(
        input_channels=next(iter(in_shapes.values()))[1],
        hidden_channels=hidden_channels,
        input_kern=input_kern,
        hidden_kern=hidden_kern,
        layers=layers,
        gamma_input=gamma_input,
        skip=skip,
        final_nonlinearity=final_nonlinearity,
        bias=core_bias,
        momentum=momentum,
        pad_input=pad_input,
        hidden_padding=hidden_padding,
        batch_norm=batch_norm,
        hidden_dilation=hidden_dilation,
        laplace_padding=laplace_padding,
        input_regularizer=input_regularizer,
        stack=stack,
        use_avg_reg=use_avg_reg,
        depth_separable=depth_separable,
        linear=linear,
        channels_last=channels_last,
    )
    readout = MultipleFullGaussian2d(
        {key: core_output_shape(core, shape) for key, shape in in_shapes.items()},
        n_neurons,
        gamma_readout=gamma_readout,
        grid_mean_predictor=predictor,
        grid_mean_predictor_type=predictor_type,
        source_grids=source_grids,
        init_mu_range=init_mu_range,
        init_sigma=init_sigma,
        bias=readout_bias,
        gauss_type=gauss_type,
        share_features=share_features,
        share_grid=share_grid,
        shared_match_ids=shared_match_ids,
        gamma_grid_dispersion=gamma_grid_dispersion,
    )
    shifters = None
    if shifter is True:
        shifters = MLPShifter(list(n_neurons), input_channels_shifter, hidden_channels_shifter, shift_layers)
    if pretrained_core is not None:
        _load_core(core, pretrained_core)
    if compile:
        core.compile()
    model = FiringRateEncoder(core, readout, shifter=shifters, elu_offset=elu_offset, autocast_dtype=autocast_dtype)
    return model.freeze_core() if freeze_core else model


def _neuron_arrays(name, loaders, data_info):
    """``{data_key: neurons.<name>}`` from the data info or the training loaders' datasets."""
    try:
        if data_info is not None:
            return {key: np.asarray(info["neurons"][name]) for key, info in data_info.items()}
        return {key: getattr(loader.dataset.neurons, name) for key, loader in loaders.items()}
    except (KeyError, AttributeError):
        raise ValueError(f"the datasets have no neurons.{name}, which this model config needs") from None


def _load_core(core, weights) -> None:
    """Load a trained core's ``{name: array}`` into ``core``; ValueError naming the first weight that does not fit."""
    own = core.state_dict()
    unfit = sorted(set(own) ^ set(weights))
    unfit = unfit or [name for name in own if tuple(np.shape(weights[name])) != own[name].shape]
    if unfit:
        name = unfit[0]
        found = tuple(np.shape(weights[name])) if name in weights else "missing"
        expected = tuple(own[name].shape) if name in own else "none"
        raise ValueError(f"pretrained_core does not fit this core: {name} is {found}, this core's is {expected}; "
                         "give the model the core options of the model it comes from")
    core.load_state_dict({name: torch.as_tensor(np.array(value)) for name, value in weights.items()})
