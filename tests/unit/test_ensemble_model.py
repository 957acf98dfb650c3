"""EnsembleModel: the mean of its members' outputs, called like a member."""
import pytest
import torch

from pipeline.models.ensemble import EnsembleModel


class Member(torch.nn.Module):
    """Rates that depend on the image, the data key and the pupil position, so every keyword must arrive."""

    def __init__(self, scale):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, images, data_key=None, pupil_center=None, **_):
        offset = {"a": 1.0, "b": 2.0}[data_key]
        return self.scale * images.flatten(1)[:, :3] + offset + pupil_center.sum(1, keepdim=True)


def test_ensemble_predicts_the_mean_of_its_members_with_their_signature():
    members = [Member(s) for s in (1.0, 2.0, 6.0)]
    ensemble = EnsembleModel(members).eval()
    images, pupil = torch.rand(5, 1, 2, 2), torch.rand(5, 2)
    for data_key in ("a", "b"):
        expected = torch.stack([m(images, data_key=data_key, pupil_center=pupil) for m in members]).mean(0)
        observed = ensemble(images, data_key=data_key, pupil_center=pupil, behavior=None)
        assert torch.allclose(observed, expected) and observed.shape == (5, 3)
    assert torch.allclose(ensemble(images, data_key="a", pupil_center=pupil),
                          3.0 * images.flatten(1)[:, :3] + 1.0 + pupil.sum(1, keepdim=True))
    assert [name for name, _ in ensemble.named_parameters()] == [f"members.{i}.scale" for i in range(3)]


def test_an_empty_ensemble_is_refused():
    with pytest.raises(ValueError, match="at least one member"):
        EnsembleModel([])
