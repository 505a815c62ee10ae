"""Passes after the first fold a batch normalization into the convolution whose output it alone
reads, and run both wherever anything else might read that output."""

import threading

import pytest
import torch
import torchvision
from torch import nn

from captum_feedback import FeedbackSelectivePruning as FSP
from captum_feedback.core.folding import Folds, Pair, folded
from captum_feedback.models.efficientnet_lite import SamePadConv2d
from tests.nets import calls_of, seeded


def _normed(module: nn.Module) -> nn.Module:
    """``seeded``, with running statistics that make every normalization do something."""
    module = seeded(module)
    for norm in module.modules():
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            norm.running_mean.normal_(std=0.5)
            norm.running_var.uniform_(0.5, 2.0)
    return module


class Unfolded(nn.BatchNorm2d):
    """A batch normalization of another type: never folded."""


class Stack(nn.Module):
    """conv, batch norm, ReLU (with ``between`` applied to the convolution's output and read by
    ``reader`` beside the normalization), then a layer whose normalization is never folded, and
    a pooled head."""

    def __init__(self, conv: nn.Module = None, norm: nn.Module = None, between=None, reader=None) -> None:
        super().__init__()
        self.conv, self.norm = conv or nn.Conv2d(3, 8, 3, padding=1), norm or nn.BatchNorm2d(8)
        self.between, self.reader = between, reader
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), Unfolded(8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        c = self.conv(x)
        y = self.norm(self.between(c) if self.between is not None else c)
        if self.reader is not None:
            y = y + self.reader(c)
        return self.head(self.body(torch.relu(y)).mean((2, 3)))


def _paper(model: nn.Module, x: torch.Tensor, monkeypatch, fold: bool = True):
    """The paper preset's attributions, its passes (the head's calls) and the first
    normalization's calls."""
    with monkeypatch.context() as patch:
        if not fold:
            patch.setattr(Folds, "candidates", property(lambda self: False))
        passes, calls = calls_of(model.head, patch), calls_of(model.norm, patch)
        attributions = FSP(model).attribute(x, target=[0, 2][:len(x)], config="paper")
    return attributions, len(passes), len(calls)


def _assert_runs_unfolded(model: nn.Module, monkeypatch) -> None:
    """The first normalization runs in every pass, and the maps are those of a run that folds nothing."""
    x = torch.randn(2, 3, 12, 12)
    attributions, passes, calls = _paper(model, x, monkeypatch)
    unfolded, _, _ = _paper(model, x, monkeypatch, fold=False)
    assert calls == passes >= 4
    torch.testing.assert_close(attributions, unfolded, rtol=0, atol=0)


def _untouched(model: nn.Module) -> bool:
    return all("forward" not in vars(m) and "_conv_forward" not in vars(m) for m in model.modules())


def test_folded_weights_compute_the_normalized_convolution():
    conv, norm = nn.Conv2d(3, 8, 3, padding=1, groups=1), nn.BatchNorm2d(8, eps=1e-3)
    _normed(nn.Sequential(conv, norm))
    x = torch.randn(2, 3, 9, 9)
    weight, bias = folded([Pair(conv, norm)])[Pair(conv, norm)]
    torch.testing.assert_close(conv._conv_forward(x, weight, bias), norm(conv(x)), rtol=1e-5, atol=1e-5)
    assert not weight.requires_grad and not bias.requires_grad


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1, bias=False),
                                  SamePadConv2d(3, 8, 3, stride=2)], ids=["bias", "no bias", "padded subclass"])
def test_later_passes_skip_the_normalization_and_give_the_unfolded_maps(conv, monkeypatch):
    # The paper preset runs 6 passes: the first runs the normalization, the others fold it.
    model = _normed(Stack(conv=conv))
    x = torch.randn(2, 3, 12, 12)
    attributions, passes, calls = _paper(model, x, monkeypatch)
    unfolded, unfolded_passes, unfolded_calls = _paper(model, x, monkeypatch, fold=False)
    assert passes == unfolded_passes == unfolded_calls >= 4 and calls == 1
    torch.testing.assert_close(attributions, unfolded, rtol=1e-4, atol=1e-6 * unfolded.abs().max().item())
    assert _untouched(model)


@pytest.mark.parametrize("reader", [
    lambda c: c,  # a second differentiable read
    lambda c: (c > 0).float(),  # a comparison: its result has no gradient
    lambda c: 0 * c.sum().item(),  # a Python number
    lambda c: c.detach(),
])
def test_a_convolution_whose_output_is_also_read_elsewhere_runs_unfolded(reader, monkeypatch):
    model = _normed(Stack(reader=reader))
    _assert_runs_unfolded(model, monkeypatch)


@pytest.mark.parametrize("between", [
    lambda c: c.add_(1),  # changed in place: the normalization reads another version
    lambda c: c[:, :],  # a view
], ids=["in place", "view"])
def test_a_normalization_that_does_not_read_the_returned_output_runs_every_pass(between, monkeypatch):
    model = _normed(Stack(between=between))
    _, passes, calls = _paper(model, torch.randn(2, 3, 12, 12), monkeypatch)
    assert calls == passes >= 4


@pytest.mark.parametrize("model", [
    Stack(norm=Unfolded(8)),  # a normalization of another type
    Stack(conv=type("Weighted", (nn.Conv2d,), {  # a convolution that uses its weights its own way
        "_conv_forward": lambda self, x, w, b: nn.Conv2d._conv_forward(self, x, 2 * w, b)})(3, 8, 3, padding=1)),
    Stack(conv=nn.Conv2d(3, 8, 12)),  # weights larger than one sample's output (8 x 1 x 1)
], ids=["subclassed norm", "own conv forward", "large weights"])
def test_pairs_that_folding_could_change_run_unfolded(model, monkeypatch):
    model = _normed(model)
    _assert_runs_unfolded(model, monkeypatch)


def test_modules_the_forward_pass_never_calls_fold_nothing(monkeypatch):
    model = Stack()
    model.spare = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))  # an auxiliary head left out in eval
    _, passes, calls = _paper(_normed(model), torch.randn(2, 3, 12, 12), monkeypatch)
    assert passes >= 4 and calls == 1


class Recomputed(nn.Conv2d):
    """A convolution that passes ``_conv_forward`` its own weight on its first call only (the
    same values in another tensor after)."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        return self._conv_forward(x, self.weight if self.calls == 1 else self.weight * 1, self.bias)


def test_a_later_call_with_other_weights_runs_the_convolution_and_its_normalization(monkeypatch):
    model = _normed(Stack(conv=Recomputed(3, 8, 3, padding=1)))
    _assert_runs_unfolded(model, monkeypatch)


@pytest.mark.parametrize("hooked", ["conv", "norm"])
def test_a_pair_with_a_hook_runs_unfolded_and_leaves_no_trace(hooked, monkeypatch):
    model = _normed(Stack())
    seen = []
    getattr(model, hooked).register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    _, passes, calls = _paper(model, torch.randn(2, 3, 12, 12), monkeypatch)
    assert calls == passes >= 4 and len(seen) == passes
    assert _untouched(model)


def test_a_batch_folds_the_pairs_its_samples_alone_fold(monkeypatch):
    # 8 x 3 x 4 x 4 weights (384) against one sample's 8 x 6 x 6 output (288): never folded,
    # though a batch of two holds 576.
    model = _normed(Stack(conv=nn.Conv2d(3, 8, 4, padding=0)))
    for batch in (1, 2):
        _, passes, calls = _paper(model, torch.randn(batch, 3, 9, 9), monkeypatch)
        assert calls == passes >= 4


class Flaky(Stack):
    """A stack whose second forward pass calls one gate site less."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        y = self.norm(self.conv(x))
        return self.head(self.body(torch.relu(y) if self.calls == 1 else y).mean((2, 3)))


def test_a_failing_later_pass_leaves_every_module_its_own_methods():
    model = _normed(Flaky())
    with pytest.raises(RuntimeError, match="control flow"):
        FSP(model).attribute(torch.randn(2, 3, 12, 12), target=0, config="paper")
    assert model.calls == 2 and _untouched(model)


def test_a_normalization_whose_forward_was_replaced_after_the_first_pass_runs_it(monkeypatch):
    # As another session's would be, on another thread: folding leaves that pair alone.
    model = _normed(Stack())
    find = Folds.find

    def found_then_replaced(self, *args):
        find(self, *args)
        vars(model.norm)["forward"] = lambda y: type(model.norm).forward(model.norm, y)

    monkeypatch.setattr(Folds, "find", found_then_replaced)
    try:
        _assert_runs_unfolded(model, monkeypatch)
    finally:
        vars(model.norm).pop("forward", None)


def test_another_thread_runs_the_model_unfolded_during_a_pass(monkeypatch):
    model = _normed(Stack())
    x = torch.randn(2, 3, 12, 12)
    expected = model(x)
    elsewhere, passes, session = [], [], threading.current_thread()
    head = model.head.forward

    def head_and_another_thread(y):  # in every pass after the first, whose modules are folded
        if threading.current_thread() is not session:
            return head(y)
        if len(passes) > 0:
            thread = threading.Thread(target=lambda: elsewhere.append(model(x)))
            thread.start()
            thread.join()
        passes.append(1)
        return head(y)

    model.head.forward = head_and_another_thread
    FSP(model).attribute(x, target=0, config="paper")
    del model.head.forward
    assert len(elsewhere) == len(passes) - 1 >= 4
    for output in elsewhere:
        torch.testing.assert_close(output, expected, rtol=0, atol=0)


def test_mobilenet_v3_folds_its_convolutions_and_gives_the_unfolded_maps(monkeypatch):
    model = _normed(torchvision.models.mobilenet_v3_small(weights=None, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    found = []
    find = Folds.find
    monkeypatch.setattr(Folds, "find", lambda self, *a: (find(self, *a), found.append(len(self.pairs)))[0])
    attributions = FSP(model).attribute(x, target=[1, 4], config="paper")
    monkeypatch.setattr(Folds, "candidates", property(lambda self: False))
    unfolded = FSP(model).attribute(x, target=[1, 4], config="paper")
    assert found and found[0] >= 8  # of 34 pairs; the others hold more weights than a 64 px sample
    torch.testing.assert_close(attributions, unfolded, rtol=1e-3, atol=1e-3 * unfolded.abs().max().item())


def test_a_single_pass_method_watches_nothing_for_later_passes():
    # FR runs one pass: nothing to fold, so its first pass does not record the pairs (issue #22).
    from captum_feedback import FR

    model, watched = _normed(Stack()).eval(), []
    model.conv.register_forward_pre_hook(lambda module, _: watched.append("_conv_forward" in vars(module)))
    FR(model).attribute(torch.randn(2, 3, 12, 12), target=[0, 2])
    FSP(model).attribute(torch.randn(2, 3, 12, 12), target=[0, 2], config="paper")
    assert watched[0] is False and watched[1] is True  # FR's pass; FSP's first pass watches the pair
    assert _untouched(model)
