"""``EnsembleModel``: several trained models of the same neurons as one model, predicting their mean."""
import torch
from torch import nn


class EnsembleModel(nn.Module):
    """The mean of its members' outputs, called exactly like a member (``model(images, data_key=..., **batch)``).

    Every keyword (``data_key``, ``pupil_center``, ``behavior``, ...) reaches every member; in training
    mode each member samples its own readout positions, as it would alone.

    Args:
        members: the trained models; at least one.
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member model")
        self.members = nn.ModuleList(members)

    def forward(self, *args, **kwargs):
        return torch.stack([member(*args, **kwargs) for member in self.members]).mean(dim=0)
