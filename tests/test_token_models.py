"""Token and channels-last models: FSP's maps on EfficientNet, MobileNetV3, ConvNeXt, Swin and
ViT (torchvision, random weights made informative as in benchmarks/zoo.py) differ from the
gradient and from one class to another; the Summation Energy Map reads their tokens and
channels-last activations as (B, C, H, W) maps."""

import sys
from pathlib import Path

import pytest
import torch

from captum_feedback import FSP, summation_energy_map
from captum_feedback.core.tokens import channels_last_to_maps, tokens_to_maps
from captum_feedback.wsol.energy import energy_map
from captum_feedback.wsol.metrics import map_cosine

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import zoo  # noqa: E402


def test_tokens_and_channels_last_become_maps():
    tokens = torch.arange(2 * 50 * 3.0).view(2, 50, 3)  # a class token and a 7 x 7 grid
    maps = tokens_to_maps(tokens)
    assert maps.shape == (2, 3, 7, 7) and torch.equal(maps[1, 2, 0, 1], tokens[1, 2, 2])
    assert tokens_to_maps(torch.rand(2, 35, 3)).shape == (2, 35, 3)  # 10 tokens past a 5 x 5 grid: no grid
    assert channels_last_to_maps(torch.rand(2, 5, 6, 3)).shape == (2, 3, 5, 6)


def _maps(name):
    model = zoo.build(name)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).expand(2, -1, -1, -1)
    with torch.no_grad():
        two = model(x[:1]).topk(2).indices[0].tolist()
    state = FSP(model).select(x, two)
    paper = FSP(model).attribute(x, two, config="paper")
    inputs = x.clone().requires_grad_()
    gradient = torch.autograd.grad(model(inputs)[[0, 1], two].sum(), inputs)[0]
    return state, energy_map(paper), summation_energy_map(state), energy_map(gradient)


def _class_specific_and_not_the_gradient(name):
    """The default's Summation maps of two classes differ; the paper's FSP, which gates every
    site, is not the gradient (the default gates the head only, so its input gradient on a
    transformer, whose residual stream passes no gate, stays close to the gradient)."""
    state, paper, summation, gradient = _maps(name)
    assert summation.shape == (2, 1, 224, 224) and torch.isfinite(summation).all() and summation.sum() > 0
    assert state.reshape_transform is not None or name.startswith(("efficientnet", "mobilenet"))
    assert float(map_cosine(summation[:1], summation[1:])) < 0.99  # two classes, two maps
    assert float(map_cosine(paper[:1], gradient[:1])) < 0.99  # FSP is not the gradient
    assert float(map_cosine(paper[:1], paper[1:])) < 0.99


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large", "swin_t", "vit_b_32"])
def test_fsp_maps_are_class_specific_and_not_the_gradient(name):
    _class_specific_and_not_the_gradient(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_tiny", "vit_b_16"])
def test_fsp_maps_of_the_larger_token_models(name):
    _class_specific_and_not_the_gradient(name)


def test_layer_feedback_on_a_vit_block_gives_a_channel_map_with_tokens_to_maps():
    from captum_feedback import LayerFeedback, rank_channels

    model = zoo.build("vit_b_32")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    layer = model.encoder.layers[-1]
    raw = LayerFeedback(model, layer).attribute(x, target=3)
    maps = LayerFeedback(model, layer, reshape_transform=tokens_to_maps).attribute(x, target=3)
    assert raw.shape == (1, 50, 768) and maps.shape == (1, 768, 7, 7)
    assert torch.equal(maps.flatten(2).transpose(1, 2), raw[:, 1:])
    assert rank_channels(maps, 3)[1].shape == (1, 3)


@pytest.mark.parametrize("name", ["vit_b_32", "swin_t"])
def test_grad_cam_reads_token_and_channels_last_layers_as_maps(name):
    from captum_feedback.compare.methods import MethodMaps

    model = zoo.build(name)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3)).expand(2, -1, -1, -1)
    maps = MethodMaps(model)(x, [1, 2], ["LayerGradCam"])["LayerGradCam"]
    assert maps.shape == (2, 1, 224, 224) and maps.std() > 0  # not constant (a ViT's last block gives 0)
    assert float(map_cosine(maps[:1], maps[1:])) < 0.99
