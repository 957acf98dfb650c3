"""One tier of a model's data as arrays: responses, predictions, and the ids that measures and submissions need.

A model's predictions on a tier are computed once here, then every measure of that tier and a
SENSORIUM submission read them.
"""
from dataclasses import dataclass

import numpy as np

from .scores import model_predictions


@dataclass
class TierData:
    """The trials of one data key on one tier, in the loader's order (for test tiers: file order)."""

    data_key: str
    unit_ids: np.ndarray             # (neurons,) in the order of the response columns
    trial_idx: np.ndarray | None     # (trials,) meta/trials/trial_idx; None when the dataset has none
    image_ids: np.ndarray | None     # (trials,) frame_image_id, shared by the repeats of an image
    responses: np.ndarray            # (trials, neurons) float64, as the loader yields them (normalised)
    predictions: np.ndarray | None   # (trials, neurons) float64 eval-mode model outputs

    def require_responses(self, tier: str) -> None:
        """Refuse a tier whose responses are all zero: the competition scans withhold them."""
        if not np.any(self.responses):
            raise ValueError(f"the {tier} responses of data key {self.data_key} are all zero, i.e. withheld "
                             "(as in the SENSORIUM competition scans): they cannot be scored here; export a "
                             "submission instead")


def _trial_field(loader, name):
    """``trial_info.<name>`` of each trial the loader yields, or None when the dataset has no such field."""
    try:
        values = getattr(loader.dataset.trial_info, name)
        indices = loader.sampler.indices
    except (AttributeError, KeyError):
        return None
    return np.asarray(values)[np.asarray(indices)]


def tier_data(model, dataloaders, tier: str, device="cpu") -> dict:
    """``{data_key: TierData}`` of ``model`` on ``tier``: one forward pass over the tier's trials."""
    if tier not in dataloaders:
        raise ValueError(f"the dataset has no {tier!r} tier (it has {', '.join(dataloaders)})")
    out = {}
    for data_key, loader in dataloaders[tier].items():
        responses, predictions = model_predictions(model, loader, data_key, device)
        out[data_key] = TierData(data_key, np.asarray(loader.dataset.neurons.unit_ids),
                                 _trial_field(loader, "trial_idx"), _trial_field(loader, "frame_image_id"),
                                 responses, predictions)
    return out
