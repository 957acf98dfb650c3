"""Smoothness regularizers for convolution filters."""
import torch
from torch import nn
from torch.nn import functional as F

_LAPLACE_3X3 = [[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]


class Laplace(nn.Module):
    """Convolves a stack of single-channel images with the 3×3 discrete Laplacian.

    Args:
        padding: zero padding of the convolution; None means 1 (same size).
    """

    def __init__(self, padding=None):
        super().__init__()
        self.register_buffer("filter", torch.tensor(_LAPLACE_3X3)[None, None])
        self.padding_size = 1 if padding is None else padding

    def forward(self, x):
        return F.conv2d(x, self.filter, padding=self.padding_size)


class LaplaceL2norm(nn.Module):
    """Laplacian energy of conv filters relative to their energy: ``Σ (ΔW)² / Σ W²``.

    Each (out, in) filter slice is filtered separately. ``avg=True`` averages numerator and
    denominator instead of summing them.
    """

    def __init__(self, padding=None):
        super().__init__()
        self.laplace = Laplace(padding=padding)

    def forward(self, weight, avg=False):
        reduce = torch.mean if avg else torch.sum
        slices = weight.reshape(-1, 1, *weight.shape[-2:])
        return reduce(self.laplace(slices).pow(2)) / reduce(slices.pow(2))


class LaplaceL2(nn.Module):
    """Unnormalised Laplacian energy of conv filters: ``reduce((ΔW)²) / 2`` (mean by default)."""

    def __init__(self, padding=None):
        super().__init__()
        self.laplace = Laplace(padding=padding)

    def forward(self, weight, avg=True):
        reduce = torch.mean if avg else torch.sum
        return reduce(self.laplace(weight.reshape(-1, 1, *weight.shape[-2:])).pow(2)) / 2


INPUT_REGULARIZERS = {"LaplaceL2norm": LaplaceL2norm, "LaplaceL2": LaplaceL2}
