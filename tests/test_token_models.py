"""Token and channels-last models: FSP's maps on EfficientNet, MobileNetV3, ConvNeXt, Swin and
ViT (torchvision, random weights made informative as in benchmarks/zoo.py) differ from the
gradient and from one class to another; the Summation Energy Map reads their tokens and
channels-last activations as (B, C, H, W) maps."""

import sys
from pathlib import Path

import pytest
import torch

from captum_feedback import FSP, summation_energy_map
from captum_feedback.core.tokens import MapLayout, channels_last_to_maps, tokens_to_maps
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


@pytest.mark.parametrize("shape, size, kind, maps", [
    ((2, 197, 768), (224, 224), "tokens, 1 prefix", (2, 768, 14, 14)),   # ViT: a class token
    ((2, 198, 192), (224, 224), "tokens, 2 prefix", (2, 192, 14, 14)),   # DeiT: and a distillation token
    ((2, 3136, 384), (224, 224), "tokens", (2, 384, 56, 56)),            # Swin's MLP: no prefix
    ((2, 730, 256), (224, 224), "tokens, 1 prefix", (2, 256, 27, 27)),   # PiT: a 27 x 27 grid
    ((2, 1 + 14 * 20, 64), (224, 320), "tokens, 1 prefix", (2, 64, 14, 20)),  # a wide image
    ((2, 56, 56, 256), (224, 224), "channels last", (2, 256, 56, 56)),   # ConvNeXt's, MaxViT's MLP
    ((2, 64, 112, 112), (224, 224), "channels first", (2, 64, 112, 112)),
    ((2, 56, 56, 56), (224, 224), "channels first", (2, 56, 56, 56)),    # both fit: PyTorch's order
    ((2, 512, 256), (224, 224), None, (2, 512, 256)),                    # a mixer's token MLP: no grid
    ((2, 128, 49), (224, 224), "flattened", (2, 128, 7, 7)),             # EfficientViM's state-space map
    ((2, 201, 4096), (224, 224), "tokens, 5 prefix", (2, 4096, 14, 14)),  # a class token and 4 registers
    ((2, 16, 1, 1), (224, 224), None, (2, 16, 1, 1)),                    # squeeze-excitation
    ((2, 1000), (224, 224), None, (2, 1000)),
])
def test_the_layout_of_an_activation_is_read_from_its_shape_and_the_input_size(shape, size, kind, maps):
    layout = MapLayout(size)
    assert layout.describe(shape) == kind and layout(torch.zeros(shape)).shape == maps
    assert MapLayout().describe(shape) is None  # an input that is not an image: no grid


def test_a_layout_keeps_each_token_at_its_place_in_the_grid():
    tokens = torch.arange(2 * 31 * 3.0).view(2, 31, 3)  # 3 prefix tokens and a 4 x 7 grid
    maps = MapLayout((40, 70))(tokens)
    assert maps.shape == (2, 3, 4, 7) and torch.equal(maps[1, 2, 1, 3], tokens[1, 3 + 7 + 3, 2])


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


def test_grad_cam_on_a_convolutional_layer_is_captums():
    from captum.attr import LayerGradCam

    from captum_feedback.compare.methods import _GradCam
    from tests.nets import VGGish, seeded

    model = seeded(VGGish()).eval()
    x = torch.randn(3, 3, 16, 16)
    layer = model.features[6]
    torch.testing.assert_close(_GradCam(model, layer).attribute(x, [0, 1, 2]),
                               LayerGradCam(model, layer).attribute(x, target=[0, 1, 2]))


def test_the_summation_map_leaves_out_squeeze_excitation_sites():
    """A (B, C, 1, 1) site would add the same value at every location."""
    state = FSP(zoo.build("mobilenet_v3_small")).select(torch.rand(1, 3, 64, 64), 3, keep_cws=True)
    squeezed = [name for name, gate in state.gates.items() if gate.shape[-2:] == (1, 1) and gate.dim() == 4]
    assert squeezed and not set(squeezed) & set(state.summation_sites())
