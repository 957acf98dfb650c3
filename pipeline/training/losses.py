"""The Poisson loss and the per-batch training objective of sensorium's standard_trainer."""
import math

import torch
from torch import nn


class PoissonLoss(nn.Module):
    """Poisson negative log-likelihood up to a target-only constant: ``output - target * log(output + bias)``.

    Args:
        bias: added inside the log for numerical stability.
        per_neuron: reduce over all but the last (neuron) axis, returning one value per neuron.
        avg: mean instead of sum (sensorium trains with the sum, ``avg=False``).
    """

    def __init__(self, bias=1e-12, per_neuron=False, avg=False):
        super().__init__()
        self.bias = bias
        self.per_neuron = per_neuron
        self.avg = avg

    def forward(self, output, target):
        loss = output - target.detach() * torch.log(output + self.bias)
        if self.per_neuron:
            loss = loss.reshape(-1, loss.shape[-1])
            return loss.mean(dim=0) if self.avg else loss.sum(dim=0)
        return loss.mean() if self.avg else loss.sum()


LOSSES = {"PoissonLoss": PoissonLoss}


def batch_objective(model, batch, data_key, criterion, dataset_length, scale_loss=True, detach_core=False):
    """Loss of one training batch: ``sqrt(dataset_length / B) * criterion + regularizers``.

    ``dataset_length`` is the length of the loader's whole dataset (all tiers), as in sensorium.
    The core regularizer is left out with ``detach_core``; the regularizers are never scaled.

    Args:
        batch: dict of batch fields (``images``, ``responses``, ...) already on the model's device.
    """
    fields = dict(batch)
    images, responses = fields.pop("images"), fields["responses"]
    scale = math.sqrt(dataset_length / images.shape[0]) if scale_loss else 1.0
    regularizers = model.readout.regularizer(data_key)
    if not detach_core:
        regularizers = regularizers + model.core.regularizer()
    predictions = model(images, data_key=data_key, detach_core=detach_core, **fields)
    return scale * criterion(predictions, responses) + regularizers
