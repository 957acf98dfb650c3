"""Shifters: map the eye position to one readout-grid shift per image."""
import torch
from torch import nn


class MLP(nn.Module):
    """A tanh MLP from pupil centre (optionally plus trial index) to a 2-D shift in (-1, 1).

    ``shift_layers - 1`` hidden (Linear, Tanh) blocks of ``hidden_channels`` units, then
    (Linear → 2, Tanh). PyTorch's default Linear initialisation, as in the reference.
    """

    def __init__(self, input_features=2, hidden_channels=10, shift_layers=1):
        super().__init__()
        widths = [input_features] + [hidden_channels] * (shift_layers - 1) + [2]
        layers = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.Tanh()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, pupil_center, trial_idx=None):
        if trial_idx is not None:
            pupil_center = torch.cat((pupil_center, trial_idx), dim=1)
        expected = self.mlp[0].in_features
        if pupil_center.ndim != 2 or pupil_center.shape[1] != expected:
            raise ValueError(
                f"the shifter expects (batch, {expected}) eye positions, got {tuple(pupil_center.shape)}"
            )
        return self.mlp(pupil_center)


class MLPShifter(nn.ModuleDict):
    """One ``MLP`` shifter per data key.

    The reference's shifter regularizer is identically zero and never used by its trainer, so
    this container has none.
    """

    def __init__(self, data_keys, input_channels=2, hidden_channels_shifter=2, shift_layers=1):
        super().__init__()
        for data_key in data_keys:
            self[data_key] = MLP(input_channels, hidden_channels_shifter, shift_layers)
