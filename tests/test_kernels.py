"""The gate kernels (issue #22): one pass over memory per direction, the same numbers as the
torch operations they replace."""

import pytest
import torch
import torchvision
from nets import ResNetish, VGGish, seeded
from torch import nn

from captum_feedback import FSP
from captum_feedback.core import kernels
from captum_feedback.core.kernels import CODED, IDENTITY, PINNED, RELU, SCALED, Transfer

pytest.importorskip("numba")


def both(fn, *mutable):
    """``fn()`` with the numba kernels and with torch operations, from the same ``mutable`` tensors."""
    before = [t.clone() for t in mutable]
    results = []
    for numba in (True, False):
        for t, b in zip(mutable, before):
            t.copy_(b)
        with kernels.use_numba(numba):
            out = fn()
        results.append((out, [t.clone() for t in mutable]))
    return results


def transfers(x):
    codes = (x > 0).to(torch.int8) + (x >= 1).to(torch.int8)
    return [Transfer(), Transfer(RELU), Transfer(CODED, codes, (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
            Transfer(CODED, (x > 0).to(torch.int8), (0.0, 1.0), (0.0, 0.0)),
            Transfer(SCALED, scale=torch.sigmoid(x))]


def gate_rows(shape, fill):
    """Gate bytes as a site's rows in a wider buffer (row stride > units), as the gate store has
    them for a site whose units are not a multiple of 8."""
    buffer = fill((shape[0], int(torch.tensor(shape[1:]).prod()) + 5))
    return buffer[:, 5:].view(shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("strided", [False, True])
def test_the_forward_kernel_gives_the_torch_operations_output_and_gates(dtype, strided):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 5, 6, dtype=dtype)
    shape = x.shape
    def fill(size):
        return torch.randint(-1, 3, size, dtype=torch.int8)

    for transfer in transfers(x):
        for selects in (True, False):
            gates = gate_rows(shape, fill) if strided else fill(shape)
            if not selects:
                gates.clamp_(0, 1)
            def run():
                return kernels.gated_forward(x, transfer, gates, selects, pinned=selects)

            (a, [ga]), (b, [gb]) = both(run, gates)
            assert torch.equal(a, b) and torch.equal(ga, gb), (transfer.kind, selects)
            assert ga.max() <= 1  # what the engine leaves are gates, the selector became them


def test_the_numba_kernels_read_the_transfer_kinds_and_the_pinned_byte_of_the_kernels_module():
    from captum_feedback.core import _numba_kernels

    assert (_numba_kernels.CODED, _numba_kernels.SCALED, _numba_kernels.RELU, _numba_kernels.PINNED) == (
        CODED, SCALED, RELU, PINNED)


def test_cpu_float_tensors_of_any_size_take_the_numba_kernels_and_others_the_torch_operations():
    x, gates = torch.randn(2, 8), torch.ones(2, 8, dtype=torch.int8)
    assert kernels._kernels_for(x, gates) is not None
    assert kernels._kernels_for(x[:1, :1], gates[:1, :1]) is not None
    assert kernels._kernels_for(x.half(), gates.view(torch.int8)) is None
    assert kernels._kernels_for(x.t().contiguous().t(), gates) is None  # not contiguous
    assert kernels._kernels_for(x, gates[:, :4]) is None  # gates of another shape
    assert kernels._kernels_for(x, gate_rows(x.shape, coin_bytes)) is not None  # rows of a wider buffer
    # The kernels read raw memory as rows of contiguous units: gates whose samples are not are torch's.
    assert kernels._kernels_for(x, torch.ones(8, 2, dtype=torch.int8).t()) is None


def test_gates_whose_samples_are_not_contiguous_get_the_same_numbers_from_the_torch_operations():
    x, grad = activations_and_cws(3)
    gates = coin_bytes((2, 7, 5, 3)).permute(0, 3, 1, 2)  # channels last
    assert gates.shape == x.shape and kernels._kernels_for(x, gates) is None
    for transfer in transfers(x):
        assert torch.equal(kernels.gated_backward(grad, transfer, gates),
                           kernels.gated_backward(grad, transfer, gates.contiguous()))
    with kernels.use_numba(False):
        assert kernels._kernels_for(x, gates) is None


def test_a_selector_keeps_units_whose_cw_agrees_with_their_sign_and_pinned_units_always():
    x = torch.tensor([[2.0, -2.0, 2.0, -2.0, 0.0, -3.0]])
    selector = torch.tensor([[1, 1, -1, -1, 1, PINNED]], dtype=torch.int8)
    out = kernels.gated_forward(x, Transfer(IDENTITY), selector, selects=True)
    assert selector.tolist() == [[1, 0, 0, 1, 0, 1]]
    assert out.tolist() == [[2.0, 0.0, 0.0, -2.0, 0.0, -3.0]]
    relu = torch.tensor([[1, 1, 0, 1, 1, 1]], dtype=torch.int8)
    out = kernels.gated_forward(x, Transfer(RELU), relu, selects=False)  # narrowed to x > 0 in place
    assert relu.tolist() == [[1, 0, 0, 0, 0, 0]] and out.tolist() == [[2.0, 0.0, 0.0, 0.0, 0.0, 0.0]]


def coin_bytes(size):
    return torch.randint(0, 2, size, dtype=torch.int8)


def activations_and_cws(seed):
    """Activations and CWs of one shape, with a CW of exactly zero (sign 0)."""
    torch.manual_seed(seed)
    x, grad = torch.randn(2, 3, 7, 5), torch.randn(2, 3, 7, 5)
    grad[0, 0, 0] = 0.0
    return x, grad


@pytest.mark.parametrize("strided", [False, True])
def test_the_backward_kernel_and_the_sign_kernel_give_the_torch_operations_numbers(strided):
    x, grad = activations_and_cws(1)
    for transfer in transfers(x):
        gates = gate_rows(x.shape, coin_bytes) if strided else coin_bytes(x.shape)
        (a, _), (b, _) = both(lambda: kernels.gated_backward(grad, transfer, gates), gates)
        assert torch.equal(a, b), transfer.kind
    into = gate_rows(x.shape, coin_bytes) if strided else coin_bytes(x.shape)
    for within in (None, x > 0):
        (_, [a]), (_, [b]) = both(lambda: kernels.write_signs(grad, into, within), into)
        assert torch.equal(a, b) and torch.equal(a.float(), torch.sign(grad) * (1 if within is None else within))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frs_kernel_keeps_the_cws_whose_sign_agrees_with_the_activation_bit_for_bit(dtype):
    torch.manual_seed(0)
    cw, x = torch.randn(3, 4, 5, 6, dtype=dtype), torch.randn(3, 4, 5, 6, dtype=dtype)
    special = [float("nan"), float("inf"), -0.0, 0.0, -float("inf"), 1e-30, 2.0, -2.0, 1.0]
    cw.view(-1)[:9] = torch.tensor(special, dtype=dtype)
    x.view(-1)[:9] = torch.tensor([1.0, 2.0, -1.0, 1.0, -3.0, 1e-30, float("nan"), -float("inf"), -0.0], dtype=dtype)
    expected = cw * (torch.sign(cw) * x > 0)  # Algorithm 1's gated CW, zero threshold
    for got, _ in both(lambda: kernels.agreeing(cw, x)):
        assert torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0))
        assert torch.equal(torch.signbit(got), torch.signbit(expected))  # a closed negative CW is -0, as cw * 0
    rows = torch.zeros(3, 125, dtype=dtype)[:, 5:].view(x.shape).copy_(x)  # samples apart in memory
    (a, _), (b, _) = both(lambda: kernels.agreeing(cw, rows))
    for got in (a, b):
        assert torch.equal(got.nan_to_num(7.0), expected.nan_to_num(7.0))


@pytest.mark.parametrize("strided", [False, True])
def test_the_backward_kernel_writes_the_signs_into_the_gates_it_reads_as_two_separate_calls_would(strided):
    x, grad = activations_and_cws(2)
    for transfer in transfers(x):
        for within in (None, x > 0):
            gates = gate_rows(x.shape, coin_bytes) if strided else coin_bytes(x.shape)
            apart = gates.clone()
            expected = kernels.gated_backward(grad, transfer, apart)
            kernels.write_signs(grad, apart, within)
            (a, [ga]), (b, [gb]) = both(lambda: kernels.gated_backward(grad, transfer, gates, gates, within), gates)
            assert torch.equal(a, expected) and torch.equal(b, expected), transfer.kind
            assert torch.equal(ga, apart) and torch.equal(gb, apart), transfer.kind


class MobileLike(nn.Module):
    """ReLU6, Hardswish, ReLU and max-pooling sites, a squeeze-excitation gate and a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Hardswish(), nn.MaxPool2d(2))
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 8, 1), nn.Hardsigmoid())
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(16, 5))

    def forward(self, x):
        h = self.block(self.stem(x))
        return self.head(h * self.se(h))


@pytest.mark.parametrize("net", [MobileLike, VGGish, ResNetish])
@pytest.mark.parametrize("config", ["paper", "default", "released_code"])
def test_fsp_gives_the_same_attributions_with_the_kernels_and_with_torch_operations(net, config):
    model = seeded(net()).eval()
    x = torch.randn(3, 3, 16, 16)
    runs = []
    for numba in (True, False):
        with kernels.use_numba(numba):
            state = FSP(model).select(x, target=[0, 1, 2], config=config)
            runs.append((FSP(model).attribute(x, target=[0, 1, 2], config=config), state.outputs))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_torchvision_mobilenet_v3_gets_the_same_paper_attribution_from_the_kernels_and_from_torch():
    model = torchvision.models.mobilenet_v3_small(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with kernels.use_numba(True):
        a = FSP(model).attribute(x, target=[1, 4], config="paper")
    with kernels.use_numba(False):
        b = FSP(model).attribute(x, target=[1, 4], config="paper")
    assert torch.equal(a, b) and a.abs().sum() > 0


def test_repacking_gates_gives_the_torch_operations_bytes_and_says_which_segments_changed():
    torch.manual_seed(2)
    gates = torch.randint(0, 2, (8 * 1000,), dtype=torch.int8)
    bounds = torch.tensor([0, 10, 10, 400, 1000])  # an empty segment among them
    packed = kernels.pack_bits(gates.view(torch.bool).view(1, -1))[0]
    packed[[3, 950]] ^= 4  # one bit a segment, in the first and the last
    (a, [pa]), (b, [pb]) = both(lambda: kernels.repack(gates, packed, bounds), packed)
    assert a.tolist() == b.tolist() == [True, False, False, True]
    assert torch.equal(pa, pb) and torch.equal(pa, kernels.pack_bits(gates.view(torch.bool).view(1, -1))[0])
    assert not kernels.repack(gates, packed, bounds).any()  # nothing changed since


def test_a_relu6_first_pass_gives_hardtanh_and_its_gradient_with_its_codes():
    x = torch.tensor([[-1.0, 0.0, 0.5, 6.0, 7.0, float("nan")] * 4]).requires_grad_()
    runs = []
    for numba in (True, False):
        with kernels.use_numba(numba):
            y, codes = kernels.clamp_codes(x, 0.0, 6.0)
        (grad,) = torch.autograd.grad((y * torch.arange(24.0)).nansum(), x)
        runs.append((y, codes, grad))
    expected = torch.nn.functional.hardtanh(x, 0.0, 6.0)
    (hardtanh_grad,) = torch.autograd.grad((expected * torch.arange(24.0)).nansum(), x)
    for y, codes, grad in runs:
        assert torch.equal(y[:, :5], expected[:, :5]) and y[0, 5].isnan()
        assert codes[0, :5].tolist() == [0, 0, 1, 2, 2] and torch.equal(codes, runs[0][1])
        assert torch.equal(grad, hardtanh_grad)


def _frozen_layer_norm_gradient(grad, weight, scale, dims):
    """The gradient of ``(x - mean(x)) * scale * weight`` over the last ``dims`` dimensions, by autograd."""
    x = torch.zeros(grad.shape, dtype=grad.dtype, requires_grad=True)
    trailing = tuple(range(grad.dim() - dims, grad.dim()))
    y = (x - x.mean(trailing, keepdim=True)) * scale * (weight if weight is not None else 1)
    return torch.autograd.grad(y, x, grad)[0]


LAYOUTS = {
    "contiguous": (lambda g: g, True),
    "channels-first memory seen channels-last": (
        lambda g: g.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1), True),
    "other strides": (lambda g: g[:, ::2], False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("weighted", [True, False])
def test_the_centred_backward_kernel_gives_the_frozen_layer_norms_gradient_in_the_gradients_layout(
        dtype, layout, weighted):
    arrange, kernel_reads_it = LAYOUTS[layout]
    torch.manual_seed(0)
    grad = arrange(torch.randn(2, 23, 25, 24, dtype=dtype))  # 575 positions: two blocks of the channels kernel
    scale = torch.rand(grad.shape[:-1] + (1,), dtype=dtype) + 0.5
    weight = torch.randn(24, dtype=dtype) if weighted else None
    expected = _frozen_layer_norm_gradient(grad, weight, scale, 1)
    assert (kernels._centred_shape(grad, weight, scale, 24, 1) is not None) == kernel_reads_it
    for numba in (True, False):  # the kernel sums in another order than torch: close, not bit for bit
        with kernels.use_numba(numba):
            out = kernels.centred_backward(grad, weight, scale, 1)
        if kernel_reads_it:
            assert out.stride() == grad.stride()
        torch.testing.assert_close(out, expected)


def test_the_centred_backward_kernel_centres_over_several_trailing_dimensions():
    torch.manual_seed(1)
    grad, scale, weight = torch.randn(3, 4, 5, 6), torch.rand(3, 4, 1, 1) + 0.5, torch.randn(5, 6)
    with kernels.use_numba(True):
        out = kernels.centred_backward(grad, weight, scale, 2)
    torch.testing.assert_close(out, _frozen_layer_norm_gradient(grad, weight, scale, 2))
