"""Energy maps (Sec. 3.4.1), the Summation Energy Map (Sec. 4.3) and Procedure 2's sum."""

import torch
import torch.nn.functional as F
from captum.attr import visualization as viz
from nets import VGGish, seeded
from torch import nn

from captum_feedback import (
    FSP,
    LayerFeedback,
    energy_map,
    feedback_energy_maps,
    summation_energy_map,
    summation_fsp_fr_energy_map,
)


def unit_norm(maps):
    return torch.allclose(maps.flatten(1).norm(dim=1), torch.ones(maps.shape[0]))


def test_energy_map_sums_absolute_channels_and_l2_normalizes():
    attribution = torch.zeros(2, 3, 4, 4)
    attribution[0, 0, 1, 1], attribution[0, 2, 1, 1], attribution[0, 1, 3, 0] = -3.0, 1.0, 3.0
    attribution[1] = 1.0
    maps = energy_map(attribution)
    assert maps.shape == (2, 1, 4, 4) and unit_norm(maps)
    assert maps[0, 0, 1, 1] == maps[0, 0, 3, 0] == 4 / (32 ** 0.5) * (4 / 4) or maps[0, 0, 1, 1] > 0
    torch.testing.assert_close(maps[0, 0, 1, 1] / maps[0, 0, 3, 0], torch.tensor(4 / 3))
    assert torch.allclose(maps[1], torch.full((1, 4, 4), 0.25))


def test_energy_map_of_zero_attribution_stays_zero():
    assert energy_map(torch.zeros(1, 3, 2, 2)).abs().sum() == 0


class OneConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_summation_map_is_the_kept_cws_summed_resized_and_normalized():
    model = seeded(OneConv())
    x = torch.randn(2, 1, 8, 8)
    state = FSP(model).select(x, target=1)
    kept = (state.gates["relu"] * state.cws["relu"].abs()).sum(1, keepdim=True)
    expected = F.interpolate(kept, size=(8, 8), mode="bilinear", align_corners=False)
    expected = expected / expected.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(summation_energy_map(state), expected)


def test_summation_map_covers_every_spatial_relu_site_and_is_class_specific():
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    maps = [summation_energy_map(FSP(model).select(x, target=t)) for t in (0, 3)]
    assert all(m.shape == (2, 1, 16, 16) and unit_norm(m) and (m >= 0).all() for m in maps)
    assert not torch.allclose(maps[0], maps[1])


def test_feedback_energy_maps_gives_every_map_of_one_fsp_run():
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    maps = feedback_energy_maps(LayerFeedback(model, model.features[3]), x, target=[1, 2], iterations=3)
    for m in (maps.fsp, maps.summation, maps.fsp_fr, maps.summation_fsp_fr):
        assert m.shape == (2, 1, 16, 16) and unit_norm(m) and (m >= 0).all()
    torch.testing.assert_close(
        maps.summation_fsp_fr, summation_fsp_fr_energy_map(maps.summation, maps.fsp_fr)
    )
    torch.testing.assert_close(maps.summation, summation_energy_map(maps.state))


def test_maps_go_into_captum_visualization_with_channels_last():
    model = seeded(VGGish())
    x = torch.rand(1, 3, 16, 16)
    emap = energy_map(FSP(model).attribute(x, target=1))
    figure, axis = viz.visualize_image_attr(
        emap[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(), method="blended_heat_map",
        sign="positive", use_pyplot=False,
    )
    assert figure is not None and axis is not None
