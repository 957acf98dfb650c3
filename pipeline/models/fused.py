"""Autograd functions whose backward passes run the fused CPU kernels (``cpu_kernels``).

Forward passes give outputs bit-identical to the unfused modules (torch's own operators, or a kernel
that repeats their arithmetic and is checked against them); the gradients come from the kernels
(same mathematics, different rounding). For float32 CPU tensors (``cpu_kernels.applies``); the
callers in ``cores`` and ``readouts`` use plain torch everywhere else, and inside ``torch.compile``.
"""
import functools

import torch
from torch.nn import functional as F

from .cpu_kernels import ops


def _rows(x):
    """(B, C, H, W) → its (B, H, W, C) channels-last storage, copied only if x is not channels-last."""
    return x.permute(0, 2, 3, 1).contiguous()


@functools.cache
def products_match_grid_sample():
    """Whether ``readout_products`` reproduces ``grid_sample(x, grid) * features`` bit for bit with this
    torch build (checked once on random data; otherwise the forward pass calls ``grid_sample``)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 5, 7, generator=generator).contiguous(memory_format=torch.channels_last)
    grid = torch.rand(2, 37, 1, 2, generator=generator) * 2.4 - 1.2
    features = torch.randn(1, 16, 1, 37, generator=generator)
    expected = F.grid_sample(x, grid, align_corners=True).squeeze(-1) * features.view(1, 16, 37)
    return torch.equal(ops().readout_products(*_readout_operands(x, grid, features)), expected)


def _readout_operands(x, grid, features):
    """The readout kernels' operands: x (B, H, W, C), grid (B, N, 2), features (N, C)."""
    batch, neurons = grid.shape[:2]
    return _rows(x), grid.reshape(batch, neurons, 2).contiguous(), features.reshape(-1, neurons).t().contiguous()


class _GaussianReadout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, grid, features):
        ctx.save_for_backward(x, grid, features)
        if products_match_grid_sample():
            return ops().readout_products(*_readout_operands(x, grid, features)).sum(1)
        sampled = F.grid_sample(x, grid, align_corners=True).squeeze(-1)
        return sampled.mul_(features.view(1, -1, grid.shape[1])).sum(1)

    @staticmethod
    def backward(ctx, grad):
        x, grid, features = ctx.saved_tensors
        grad_x, grad_grid, grad_features = ops().readout_backward(grad.contiguous(),
                                                                  *_readout_operands(x, grid, features))
        return (grad_x.permute(0, 3, 1, 2), grad_grid.view(grid.shape),
                grad_features.t().reshape(features.shape))


def gaussian_readout(x, grid, features):
    """``(grid_sample(x, grid, align_corners=True) * features).sum(channels)`` with a fused backward pass.

    Args:
        x: feature map (B, C, H, W).
        grid: positions (B, N, 1, 2), grid_sample's convention.
        features: (1, C, 1, N) feature weights.
    """
    return _GaussianReadout.apply(x, grid, features)


class _BatchNormELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps)
        if not training:
            mean, invstd = running_mean.clone(), torch.rsqrt(running_var + eps)
        F.elu_(y)
        ctx.save_for_backward(x, y, weight, mean, invstd)
        ctx.training = training
        return y

    @staticmethod
    def backward(ctx, grad):
        x, y, weight, mean, invstd = ctx.saved_tensors
        channels = x.shape[1]
        x_rows, y_rows, grad_rows = (_rows(t).view(-1, channels) for t in (x, y, grad))
        sum_dz, sum_dz_centred = ops().bn_elu_backward_sums(grad_rows, y_rows, x_rows, mean)
        scale = weight * invstd
        if ctx.training:  # the batch mean and variance depend on x too
            n = x_rows.shape[0]
            mean_dz, slope = sum_dz / n, -scale * invstd * invstd * sum_dz_centred / n
        else:
            mean_dz, slope = torch.zeros_like(sum_dz), torch.zeros_like(sum_dz)
        grad_x = ops().bn_elu_backward_input(grad_rows, y_rows, x_rows, mean, scale, mean_dz, slope)
        grad_x = grad_x.view(x.shape[0], x.shape[2], x.shape[3], channels).permute(0, 3, 1, 2)
        return grad_x, sum_dz_centred * invstd, sum_dz, None, None, None, None, None


def batch_norm_elu_applies(norm, nonlinearity):
    """Whether ``batch_norm_elu`` computes ``nonlinearity(norm(x))``: affine BatchNorm2d with running
    statistics and a momentum, followed by ELU(alpha=1)."""
    return (isinstance(norm, torch.nn.BatchNorm2d) and norm.affine and norm.track_running_stats
            and norm.momentum is not None and isinstance(nonlinearity, torch.nn.ELU) and nonlinearity.alpha == 1.0)


def batch_norm_elu(x, norm):
    """``ELU(norm(x))`` with a fused backward pass; updates ``norm``'s statistics as ``norm(x)`` does."""
    if norm.training:
        norm.num_batches_tracked.add_(1)
    return _BatchNormELU.apply(x, norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.training,
                               norm.momentum, norm.eps)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        return F.conv2d(x, weight, None, 1, padding, dilation, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], list(ctx.padding), list(ctx.dilation), False, [0, 0], x.shape[1],
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            kh, kw = weight.shape[2:]
            grad_weight = ops().depthwise_weight_grad(_rows(grad), _rows(x), kh, kw, *ctx.padding, *ctx.dilation)
            grad_weight = grad_weight.permute(2, 0, 1).unsqueeze(1)
        return grad_x, grad_weight, None, None


def depthwise_applies(conv):
    """Whether ``depthwise_conv`` computes ``conv(x)``: a depthwise, stride-1, bias-free, zero-padded conv."""
    return (conv.groups == conv.in_channels == conv.out_channels and conv.stride == (1, 1) and conv.bias is None
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def depthwise_conv(conv, x):
    """``conv(x)`` with the weight gradient from the fused kernel (mkldnn's is 6–14× slower on CPU)."""
    return _DepthwiseConv.apply(x, conv.weight, tuple(conv.padding), tuple(conv.dilation))
