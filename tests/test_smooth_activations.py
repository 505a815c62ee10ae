"""SiLU, GELU and Hardswish are gate sites: ``y = z * x * s(x)``, with the scale ``s`` frozen in
linearized passes (Sec. 3.3 carried over), so that EfficientNet, MobileNetV3 and ConvNeXt get
feedback gates instead of "no gate site"."""

import pytest
import torch
import torchvision
from captum.attr import Saliency
from test_errors import assert_untouched, snapshot
from torch import nn

from captum_feedback import FSP

ACTIVATIONS = [nn.SiLU, nn.GELU, lambda: nn.GELU(approximate="tanh"), nn.Hardswish]


def smooth_net(activation) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), activation(), nn.Conv2d(6, 6, 3, padding=1), activation(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 8), activation(),
                         nn.Linear(8, 4)).double().eval()


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=["silu", "gelu", "gelu-tanh", "hardswish"])
def test_a_smooth_activation_is_a_gate_site_with_every_guarantee_of_a_linearized_net(activation):
    model = smooth_net(activation)
    before = snapshot(model)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    state = FSP(model).select(x, [0, 1, 2], config="paper")
    assert list(state.gates) == ["1", "3", "7"]
    assert not all(g.all() for g in state.gates.values())  # some units closed
    # Once the scales are frozen (after the first pass) S is linear in the gated activations
    # and every update is a greedy ascent step: the score never falls from the first update on.
    steps = state.target_scores[2:] - state.target_scores[1:-1]
    assert (steps >= -1e-9 * state.target_scores.abs().max()).all()
    for i in range(3):
        single = FSP(model).select(x[i:i + 1], i, config="paper")
        torch.testing.assert_close(state.attributions[0][i:i + 1], single.attributions[0])
    assert_untouched(model, before)


def test_a_linearized_pass_keeps_the_first_pass_scale():
    model = smooth_net(nn.SiLU)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    state = FSP(model).select(x, 0, config="paper", updates=1)
    pre = model[0](x)
    kept = state.site_outputs["1"]
    gates = state.gates["1"]
    # With the first layer's input unchanged, its site's output is z * x * sigmoid(x) exactly.
    torch.testing.assert_close(kept, gates * pre * torch.sigmoid(pre))


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_small"])
def test_torchvision_models_with_smooth_activations_get_class_specific_maps(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).double().eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)

    def normalized(a: torch.Tensor) -> torch.Tensor:  # random init gives tiny logits: compare shapes
        return (a / a.abs().amax()).flatten()

    fsp = normalized(FSP(model).attribute(x, 1, config="paper"))
    saliency = normalized(Saliency(model).attribute(x, target=1, abs=False))
    other = normalized(FSP(model).attribute(x, 2, config="paper"))
    assert torch.cosine_similarity(fsp, saliency, 0) < 0.9
    assert torch.cosine_similarity(fsp, other, 0) < 0.9
