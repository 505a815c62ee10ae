"""Linearized passes skip the branches whose output they never read (squeeze-excitation blocks
under a frozen sigmoid), and run every module whose output might be read."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import SqueezeExcitation

from captum_feedback import PRESETS
from captum_feedback import FeedbackSelectivePruning as FSP
from captum_feedback.core import engine
from captum_feedback.core.dead_branches import DeadBranches
from tests.nets import calls_of, seeded


class Excited(nn.Module):
    """conv, ReLU, a squeeze-excitation block, two conv-ReLU layers (whose gates keep changing
    for 5 updates), then a pooled linear head."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.conv, self.relu, self.se, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), block, nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())

    def forward(self, x):
        return self.head(self.body(self.se(self.relu(self.conv(x)))).mean((2, 3)))


class ReadExcitation(nn.Module):
    """A squeeze-excitation block whose forward also reads the sigmoid's input with ``reader``."""

    def __init__(self, reader) -> None:
        super().__init__()
        self.pool, self.fc1, self.relu = nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU()
        self.fc2, self.gate, self.reader = nn.Conv2d(4, 8, 1), nn.Hardsigmoid(), reader

    def forward(self, x):
        s = self.fc2(self.relu(self.fc1(self.pool(x))))
        return x * self.gate(s) * self.reader(s)


def _every_module_run(monkeypatch) -> None:
    monkeypatch.setattr(engine.GatingSession, "_skipped", lambda self: {})


def _attribution_and_calls(model, x, monkeypatch, skip: bool = True):
    """The paper preset's attributions, the forward passes it ran (the head's calls), and the
    calls of the squeeze-excitation block's first convolution."""
    with monkeypatch.context() as patch:
        if not skip:
            _every_module_run(patch)
        passes, calls = calls_of(model.head, patch), calls_of(model.se.fc1, patch)
        attributions = FSP(model).attribute(x, target=[0, 2], config="paper")
    return attributions, len(passes), len(calls)


@pytest.mark.parametrize("gate", [nn.Hardsigmoid, nn.Sigmoid])
def test_linearized_passes_skip_a_squeeze_excitation_branch_once_no_cw_reaches_its_site(gate, monkeypatch):
    # The paper preset runs 6 passes. From the second on the sigmoid is frozen to its first-pass
    # output, so the pooling, both convolutions and the ReLU site feeding it compute nothing that
    # is read; the second pass still chooses the site's gates from the first pass's CWs.
    model = seeded(Excited(SqueezeExcitation(8, 4, scale_activation=gate)))
    x = torch.randn(2, 3, 12, 12)
    skipped, passes, calls = _attribution_and_calls(model, x, monkeypatch)
    every, every_passes, every_calls = _attribution_and_calls(model, x, monkeypatch, skip=False)
    assert passes == every_passes == every_calls >= 4 and calls == 2
    torch.testing.assert_close(skipped, every, rtol=0, atol=0)
    assert all("forward" not in vars(module) for module in model.modules())


def test_mobilenet_v3_gives_the_same_maps_and_gates_with_its_excitation_branches_skipped(monkeypatch):
    # The gates of the skipped sites are those the second pass chose: no later CW reaches them.
    model = seeded(torchvision.models.mobilenet_v3_small(weights=None, num_classes=10))
    x = torch.randn(2, 3, 64, 64)
    fsp = FSP(model)

    def run():
        return fsp.attribute(x, target=[1, 4], config="paper"), fsp.select(x, [1, 4], config="paper", keep_cws=False)

    calls = calls_of(model.features[4].block[2].fc1, monkeypatch)
    skipped, state = run()
    skipping_calls = len(calls)
    with monkeypatch.context() as patch:
        _every_module_run(patch)
        every, every_state = run()
    assert len(state.target_scores) > 2 and skipping_calls == 4
    assert len(calls) - skipping_calls == 2 * len(state.target_scores)
    torch.testing.assert_close(skipped, every, rtol=0, atol=0)
    assert state.gates.keys() == every_state.gates.keys()
    for name in state.gates:
        torch.testing.assert_close(state.gates[name], every_state.gates[name], rtol=0, atol=0)


@pytest.mark.parametrize("reader", [
    lambda s: (s > 0).float(),  # a comparison: its result has no gradient
    lambda s: 1 + 0 * s.sum().item(),  # a Python number
    lambda s: s.detach().exp(),
    lambda s: s,  # a differentiable read beside the sigmoid
])
def test_a_branch_whose_output_is_read_beside_the_frozen_sigmoid_runs_every_pass(reader, monkeypatch):
    model = seeded(Excited(ReadExcitation(reader)))
    x = torch.randn(2, 3, 12, 12)
    skipped, passes, calls = _attribution_and_calls(model, x, monkeypatch)
    every, _, _ = _attribution_and_calls(model, x, monkeypatch, skip=False)
    assert calls == passes >= 4
    torch.testing.assert_close(skipped, every, rtol=0, atol=0)


@pytest.mark.parametrize("reader", [
    lambda s: s.shape[1] / 8 + s.dim() - 4,  # its layout, which the stand-in shares
    lambda s: torch.ones((), layout=torch.strided).contiguous(memory_format=torch.contiguous_format),  # none of it
])
def test_a_branch_whose_values_nothing_else_reads_is_skipped(reader, monkeypatch):
    model = seeded(Excited(ReadExcitation(reader)))
    _, passes, calls = _attribution_and_calls(model, torch.randn(2, 3, 12, 12), monkeypatch)
    assert passes >= 4 and calls == 2


def test_a_module_with_hooks_keeps_its_branch_running(monkeypatch):
    model = seeded(Excited(SqueezeExcitation(8, 4, scale_activation=nn.Hardsigmoid)))
    seen = []
    model.se.fc2.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    x = torch.randn(2, 3, 12, 12)
    skipped, passes, calls = _attribution_and_calls(model, x, monkeypatch)
    every, _, _ = _attribution_and_calls(model, x, monkeypatch, skip=False)
    assert calls == passes >= 4 and len(seen) == 2 * passes
    torch.testing.assert_close(skipped, every, rtol=0, atol=0)


def test_passes_that_keep_site_outputs_or_are_not_linearized_run_every_module(monkeypatch):
    model = seeded(Excited(SqueezeExcitation(8, 4, scale_activation=nn.Hardsigmoid)))
    x = torch.randn(2, 3, 12, 12)
    calls = calls_of(model.se.fc1, monkeypatch)
    FSP(model).select(x, [0, 2], config="paper")  # every pass may be the last: its outputs are kept
    assert len(calls) == 6
    calls.clear()
    FSP(model).attribute(x, target=[0, 2], config=PRESETS["paper"].replace(linearize=False), updates=3)
    assert len(calls) == 4


def test_the_candidates_are_the_stateless_leaf_modules_beside_a_sigmoid():
    block = SqueezeExcitation(8, 4, scale_activation=nn.Hardsigmoid)
    candidates = DeadBranches(list(Excited(block).named_modules())).candidates
    assert candidates == [block.avgpool, block.fc1, block.fc2, block.activation]


def test_a_first_pass_that_fails_leaves_every_candidate_its_own_forward():
    model = seeded(Excited(SqueezeExcitation(8, 4, scale_activation=nn.Hardsigmoid)))

    def fail(module, inputs):
        raise RuntimeError("the head refuses")

    handle = model.head.register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match="the head refuses"):
        FSP(model).attribute(torch.randn(2, 3, 12, 12), target=[0, 2], config="paper")
    handle.remove()
    assert all("forward" not in vars(module) for module in model.modules())
