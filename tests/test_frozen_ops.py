"""Linearized passes freeze the nonlinearities that are not gate sites (Sec. 3.3 carried over):
attention weights, squeeze-excitation scales, the division of LayerNorm / GroupNorm / RMSNorm
and F.normalize, tanh. The first pass is the model itself; later passes are linear in the gated
activations, so the zero-threshold target score never falls on transformer-like blocks."""

import torch
import torch.nn.functional as F
from torch import nn

from captum_feedback import FSP
from captum_feedback.core import kernels


class Block(nn.Module):
    """Patch embedding, a pre-norm attention block (nn.MultiheadAttention and an explicit
    softmax attention), an MLP with GELU, a squeeze-excitation gate, GroupNorm and a tanh head."""

    def __init__(self, dim: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.group = nn.GroupNorm(4, dim)
        self.excite = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, classes))

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, C)
        h = self.norm1(tokens)
        tokens = tokens + self.attention(h, h, h, need_weights=False)[0]
        q, k, v = self.qkv(self.norm2(tokens)).chunk(3, -1)
        tokens = tokens + (q @ k.transpose(1, 2) / 4).softmax(-1) @ v
        tokens = tokens + self.mlp(tokens)
        maps = self.group(tokens.transpose(1, 2))
        maps = maps * self.excite(maps.mean(2))[:, :, None]
        return self.head(F.normalize(maps, dim=1).mean(2))


def _block():
    torch.manual_seed(0)
    return Block().eval()


def test_the_first_pass_is_the_model_and_the_linearized_score_never_falls():
    model, x = _block(), torch.rand(4, 3, 16, 16)
    state = FSP(model).select(x, target=[0, 1, 2, 3], config="paper", updates=5, keep_cws=False)
    with torch.no_grad():
        assert torch.allclose(state.outputs[0], model(x), atol=1e-5)
    scores = state.target_scores
    assert (scores[1:] >= scores[:-1] - 1e-5 * scores.abs().amax(0)).all(), scores
    assert (scores[-1] > scores[0]).all()


def test_re_evaluated_passes_freeze_nothing():
    model, x = _block(), torch.rand(2, 3, 16, 16)
    fsp = FSP(model)
    released = fsp.select(x, target=1, config="released_code", keep_cws=False)
    with torch.no_grad():
        assert torch.allclose(released.outputs[0], model(x), atol=1e-6)


def test_an_output_softmax_is_not_frozen_so_the_score_still_depends_on_the_inputs():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3), nn.Softmax(1)).eval()
    attribution = FSP(model).attribute(torch.rand(2, 3, 8, 8), target=1, config="paper")
    assert attribution.abs().sum() > 0


def test_a_site_that_is_not_per_sample_is_left_ungated():
    class TableBias(nn.Module):  # as Swin V2's position-bias MLP: a ReLU over a parameter table
        def __init__(self):
            super().__init__()
            self.table, self.conv = nn.Parameter(torch.randn(1, 4, 6, 6)), nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return (torch.relu(self.conv(x)) + torch.relu(self.table)).flatten(1)

    model = TableBias().eval()
    state = FSP(model).select(torch.rand(3, 3, 8, 8), target=0, keep_cws=False)
    assert list(state.gates) == ["relu"]  # the per-sample call; the table's relu is not a site


class ConvNeXtish(nn.Module):
    """ConvNeXt's block: a LayerNorm over the channels of a (B, C, H, W) map seen channels-last
    (torchvision's ``LayerNorm2d`` permutes, normalizes and permutes back), a depthwise
    convolution and a channels-last MLP behind ``nn.LayerNorm``."""

    def __init__(self, dim: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.stem, self.stem_norm = nn.Conv2d(3, dim, 4, stride=4), nn.LayerNorm(dim)
        self.depthwise, self.norm = nn.Conv2d(dim, dim, 7, padding=3, groups=dim), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.stem(x)
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.stem_norm.weight, self.stem_norm.bias)
        x = x.permute(0, 3, 1, 2)
        x = x + self.mlp(self.norm(self.depthwise(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_layer_norms_over_channels_last_maps_are_linearized_the_same_with_and_without_the_kernels():
    torch.manual_seed(0)
    model, x = ConvNeXtish().eval(), torch.rand(3, 3, 48, 48)
    runs = []
    for numba in (True, False):
        with kernels.use_numba(numba):
            state = FSP(model).select(x, target=[0, 1, 2], config="paper", keep_cws=False)
            runs.append(FSP(model).attribute(x, target=[0, 1, 2], config="paper"))
        with torch.no_grad():
            assert torch.allclose(state.outputs[0], model(x), atol=1e-5)
        scores = state.target_scores
        assert (scores[1:] >= scores[:-1] - 1e-5 * scores.abs().amax(0)).all(), scores
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-4, atol=1e-6 * float(runs[1].abs().max()))


class PermutedNorm(nn.Module):
    """A LayerNorm over the channels of a channels-first map seen channels-last, then a Linear."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, dim, 3, padding=1), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, classes))

    def forward(self, x):
        maps = self.conv(x).contiguous()  # channels-first memory, whatever the convolution chose
        return self.mlp(self.norm(maps.permute(0, 2, 3, 1))).mean((1, 2))


def test_a_frozen_layer_norm_of_a_permuted_map_returns_the_contiguous_layout_the_real_one_does():
    # The Linear layer after it would otherwise multiply through a copy (issue #22).
    torch.manual_seed(0)
    model, x = PermutedNorm().eval(), torch.rand(2, 3, 12, 12)
    layouts = []
    model.norm.register_forward_hook(lambda module, inputs, output: layouts.append(
        (inputs[0].is_contiguous(), output.is_contiguous())))
    FSP(model).select(x, target=[0, 1], config="paper", keep_cws=False)
    assert len(layouts) > 1  # the first pass's real LayerNorm, then frozen ones
    assert layouts == [(False, True)] * len(layouts)
