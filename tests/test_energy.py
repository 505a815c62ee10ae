"""Energy maps (Sec. 3.4.1), both Summation Energy Maps (Sec. 4.3) and Procedure 2's sum."""


import pytest
import torch
import torch.nn.functional as F
from captum.attr import visualization as viz
from nets import VGGish, seeded
from torch import nn

from captum_feedback import (
    FSP,
    PRESETS,
    FeedbackPipeline,
    energy_map,
    summation_energy_map,
    summation_fsp_fr_energy_map,
)
from captum_feedback.compare.methods import MethodMaps


def unit_norm(maps):
    return torch.allclose(maps.flatten(1).norm(dim=1), torch.ones(maps.shape[0]))


def test_energy_map_sums_absolute_channels_and_l2_normalizes():
    attribution = torch.zeros(2, 3, 4, 4)
    attribution[0, 0, 1, 1], attribution[0, 2, 1, 1], attribution[0, 1, 3, 0] = -3.0, 1.0, 3.0
    attribution[1] = 1.0
    maps = energy_map(attribution)
    assert maps.shape == (2, 1, 4, 4) and unit_norm(maps)
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


def resized(kept):
    expected = F.interpolate(kept.sum(1, keepdim=True), size=(8, 8), mode="bilinear", align_corners=False)
    return expected / expected.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def test_the_papers_summation_map_is_the_kept_cws_summed_resized_and_normalized():
    model = seeded(OneConv())
    state = FSP(model).select(torch.randn(2, 1, 8, 8), target=1, config="paper")
    expected = resized(state.gates["relu"] * state.cws["relu"].abs())
    torch.testing.assert_close(summation_energy_map(state), expected)


def test_the_released_codes_summation_map_sums_gated_activations_each_divided_by_its_maximum():
    """FSP_SumEnergy.m: sum over channels of the blob's data after FSP, b / max(b), resized."""
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    config = PRESETS["released_code"].replace(summation_sites=None)
    state = FSP(model).select(x, target=1, config=config)
    expected = 0
    for name in ("features.1", "features.3", "features.6"):
        site = state.site_outputs[name].sum(1, keepdim=True)
        site = site / site.flatten(1).amax(1).view(-1, 1, 1, 1)
        expected = expected + F.interpolate(site, size=(16, 16), mode="bilinear", align_corners=False)
    expected = expected / expected.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(summation_energy_map(state), expected)
    # The gated outputs are the activations under the final gates.
    relu = model.features[1](model.features[0](x))
    torch.testing.assert_close(state.site_outputs["features.1"], relu * state.gates["features.1"])


def test_the_contribution_summation_sums_alpha_z_x_and_a_site_range_picks_sites():
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    config = PRESETS["paper"].replace(summation="contribution", summation_sites=(1 / 3, 1.0))
    state = FSP(model).select(x, target=1, config=config)
    kept = (state.cws["features.3"] * state.site_outputs["features.3"]).clamp(min=0)
    first = F.interpolate(kept.sum(1, keepdim=True), size=(16, 16), mode="bilinear", align_corners=False)
    kept = (state.cws["features.6"] * state.site_outputs["features.6"]).clamp(min=0)
    second = F.interpolate(kept.sum(1, keepdim=True), size=(16, 16), mode="bilinear", align_corners=False)
    expected = (first + second) / (first + second).flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(summation_energy_map(state), expected)
    assert summation_energy_map(state, summation="cw").shape == expected.shape


def test_summation_map_is_class_specific_for_every_preset():
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    for config in PRESETS:
        maps = [summation_energy_map(FSP(model).select(x, target=t, config=config)) for t in (0, 3)]
        assert all(m.shape == (2, 1, 16, 16) and unit_norm(m) and (m >= 0).all() for m in maps)
        assert not torch.allclose(maps[0], maps[1])


def test_summation_map_errors_name_the_problem():
    state = FSP(seeded(VGGish())).select(torch.randn(1, 3, 16, 16), target=1)
    with pytest.raises(ValueError, match="Unknown summation"):
        summation_energy_map(state, summation="gradient")
    with pytest.raises(ValueError, match="no CWs"):
        summation_energy_map(FSP(seeded(VGGish())).select(torch.randn(1, 3, 16, 16), target=1, keep_cws=False))


@pytest.mark.parametrize("config", ["paper", "released_code"])
def test_the_pipeline_gives_every_map_of_one_fsp_run(config):
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    maps = FeedbackPipeline(model, model.features[3], config).energy_maps(x, target=[1, 2])
    for m in (maps.fsp, maps.summation, maps.fsp_fr, maps.summation_fsp_fr):
        assert m.shape == (2, 1, 16, 16) and unit_norm(m) and (m >= 0).all()
    torch.testing.assert_close(maps.summation_fsp_fr, summation_fsp_fr_energy_map(maps.summation, maps.fsp_fr))
    torch.testing.assert_close(maps.summation, summation_energy_map(maps.state))
    assert maps.state.config == PRESETS[config]


@pytest.mark.parametrize("config", ["default", "paper", "released_code"])
def test_the_summation_map_alone_is_the_pipelines_and_method_maps_compute_it_alone(config):
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    pipeline = FeedbackPipeline(model, model.features[3], config)
    summation = pipeline.summation(x, target=[1, 2])
    assert torch.equal(summation, pipeline.energy_maps(x, target=[1, 2]).summation)
    methods = MethodMaps(model, model.features[3], model.features[5], config=config)
    alone = methods(x, [1, 2], ["FSP Summation"])["FSP Summation"]
    assert torch.equal(alone, summation)
    assert torch.equal(methods(x, [1, 2], ["FSP Summation", "FSP"])["FSP Summation"], summation)


def test_maps_go_into_captum_visualization_with_channels_last():
    model = seeded(VGGish())
    x = torch.rand(1, 3, 16, 16)
    emap = energy_map(FSP(model).attribute(x, target=1))
    figure, axis = viz.visualize_image_attr(
        emap[0].permute(1, 2, 0).numpy(), x[0].permute(1, 2, 0).numpy(), method="blended_heat_map",
        sign="positive", use_pyplot=False,
    )
    assert figure is not None and axis is not None


def test_a_site_no_gradient_reaches_is_not_summed():
    """A ReLU whose output the score never reads (Swin V2's position-bias table at batch 1 is
    one) has no CW; the Summation map sums the sites that have one."""

    class SideBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)

        def forward(self, x):
            torch.relu(x)  # computed, never used
            return self.head(torch.relu(self.conv(x)).mean((2, 3)))

    model = seeded(SideBranch())
    state = FSP(model).select(torch.rand(2, 3, 8, 8), target=[0, 1])
    assert len(state.site_kinds) == 2 and len(state.cws) == 1
    assert state.summation_sites() == list(state.cws)
    assert summation_energy_map(state).shape == (2, 1, 8, 8)
