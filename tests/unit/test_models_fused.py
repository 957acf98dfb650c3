"""The fused CPU kernels: bit-identical forward passes, gradients equal to torch's up to rounding."""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from pipeline.models import cpu_kernels, fused, stacked_core_full_gauss_readout
from pipeline.models.cores import Stacked2dCore
from pipeline.models.readouts import FullGaussian2d
from pipeline.utility.allocator import keep_freed_memory
from tests.unit.models_reference import SEED_CONFIG, stand_in_loaders


def step(module, inputs, weights, **kwargs):
    """Outputs and parameter gradients of ``Σ weights · module(inputs)``."""
    module.zero_grad()
    output = module(inputs, **kwargs)
    (output * weights).sum().backward()
    return output.detach(), {name: p.grad.clone() for name, p in module.named_parameters()}


def compare(module, inputs, **kwargs):
    """A training step with the kernels, without them, and in float64: the outputs with and without
    must be equal, and the kernels' gradients no less accurate than torch's (relative to each
    gradient's largest float64 magnitude, as the parity tests measure).

    ``kwargs`` holding tensors (noise, shift) are cast along with the float64 twin.
    """
    weights = torch.rand_like(module(inputs, **kwargs))
    fused_out, fused_grads = step(module, inputs, weights, **kwargs)
    with cpu_kernels.switched_off():
        plain_out, plain_grads = step(module, inputs, weights, **kwargs)
    twin = copy.deepcopy(module).double()
    _, exact_grads = step(twin, inputs.double(), weights.double(),
                          **{k: v.double() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    assert torch.equal(fused_out, plain_out)
    for name, exact in exact_grads.items():
        scale = exact.abs().max()
        fused_error = ((fused_grads[name] - exact).abs().max() / scale).item()
        plain_error = ((plain_grads[name] - exact).abs().max() / scale).item()
        assert fused_error <= max(2 * plain_error, 1e-6), f"{name}: {fused_error:.1e} against torch's {plain_error:.1e}"


def test_the_kernels_build_here_and_reproduce_grid_sample():
    assert cpu_kernels.ops() is not None, "no C++ compiler? the fused CPU kernels did not build"
    assert fused.products_match_grid_sample()


@pytest.mark.parametrize("gauss_type", ["full", "isotropic"])
def test_readout_outputs_are_bit_identical_and_gradients_match(gauss_type):
    torch.manual_seed(0)
    readout = FullGaussian2d((16, 9, 13), outdims=70, init_mu_range=0.9, init_sigma=0.5, gauss_type=gauss_type).train()
    with torch.no_grad():
        readout._features.normal_()
    x = torch.randn(5, 16, 9, 13).contiguous(memory_format=torch.channels_last)
    noise, shift = torch.randn(5, 70, 1, 2), 0.5 * torch.randn(5, 2)  # the shift moves some positions off the map
    compare(readout, x, noise=noise, shift=shift)
    x.requires_grad_()
    fused_grad = torch.autograd.grad(readout(x, noise=noise, shift=shift).sum(), x)[0]
    with cpu_kernels.switched_off():
        plain_grad = torch.autograd.grad(readout(x, noise=noise, shift=shift).sum(), x)[0]
    assert ((fused_grad - plain_grad).abs().max() / plain_grad.abs().max()).item() < 1e-6


@pytest.mark.parametrize("training", [True, False])
def test_core_outputs_are_bit_identical_and_gradients_match(training):
    torch.manual_seed(0)
    core = Stacked2dCore(input_channels=2, hidden_channels=16, input_kern=5, hidden_kern=5, layers=3,
                         depth_separable=True, momentum=0.3, gamma_input=1.0).train(training)
    compare(core, torch.randn(4, 2, 20, 24))


def test_running_statistics_follow_batch_norm():
    torch.manual_seed(0)
    core = Stacked2dCore(input_channels=1, hidden_channels=8, input_kern=3, hidden_kern=3, layers=2, momentum=0.2)
    twin = Stacked2dCore(input_channels=1, hidden_channels=8, input_kern=3, hidden_kern=3, layers=2, momentum=0.2)
    twin.load_state_dict(core.state_dict())
    inputs = torch.randn(3, 1, 10, 11)
    core(inputs)
    with cpu_kernels.switched_off():
        twin(inputs)
    for (name, value), expected in zip(core.named_buffers(), twin.buffers()):
        assert torch.equal(value, expected), name


@pytest.mark.parametrize("channels, kernel, padding, dilation", [(64, 7, 3, 1), (64, 7, 6, 2), (24, 3, 1, 1),
                                                                 (20, 5, 0, 1), (16, 4, 3, 2), (16, 11, 5, 1)])
def test_depthwise_weight_gradient_is_exact_to_float_rounding(channels, kernel, padding, dilation):
    x = torch.randn(3, channels, 11, 13, dtype=torch.float64)
    weight = torch.randn(channels, 1, kernel, kernel, dtype=torch.float64)
    grad = torch.randn_like(F.conv2d(x, weight, padding=padding, dilation=dilation, groups=channels))
    expected = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [padding] * 2, [dilation] * 2,
                                                   False, [0, 0], channels, [False, True, False])[1]
    conv = torch.nn.Conv2d(channels, channels, kernel, padding=padding, dilation=dilation, groups=channels, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    x32 = x.float().contiguous(memory_format=torch.channels_last)
    output = fused.depthwise_conv(conv, x32)
    assert torch.equal(output, conv(x32))
    output.backward(grad.float())
    assert ((conv.weight.grad.double() - expected).abs().max() / expected.abs().max()).item() < 1e-6


def test_seed_model_training_step_with_and_without_kernels():
    loaders = stand_in_loaders("k", 40, (1, 36, 64))
    model = stacked_core_full_gauss_readout(loaders, 0, **SEED_CONFIG).train()
    compare(model, torch.randn(4, 1, 36, 64), data_key="k", pupil_center=torch.randn(4, 2),
            noise=torch.randn(4, 40, 1, 2))


def test_kernels_can_be_switched_off_by_environment():
    code = "from pipeline.models.cpu_kernels import ops; print(ops() is None)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=dict(os.environ, V1FABRIK_CPU_KERNELS="0"), cwd=Path(__file__).parents[2])
    assert result.stdout.strip() == "True"


def test_freed_memory_is_kept_on_glibc():
    assert keep_freed_memory() is (sys.platform == "linux")


def test_autocast_training_uses_torch_operators():
    loaders = stand_in_loaders("k", 10, (1, 36, 64))
    model = stacked_core_full_gauss_readout(loaders, 0, **SEED_CONFIG, autocast_dtype="bfloat16").train()
    rates = model(torch.randn(2, 1, 36, 64), data_key="k", pupil_center=torch.randn(2, 2))
    rates.sum().backward()
    assert rates.dtype == torch.float32 and model.core.features.layer1.norm.weight.grad is not None
