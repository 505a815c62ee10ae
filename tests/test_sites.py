"""The engine finds every gate site by itself and reproduces the model exactly."""

import pytest
import torch
import torch.nn.functional as F
from nets import FunctionalVGGish, ResNetish, VGGish, seeded
from torch import nn

from captum_feedback import FSP
from captum_feedback.core.engine import GatePolicy, GatingSession


def site_names(model, x):
    session = GatingSession(model, linearize=True, batch_size=x.shape[0])
    with session.installed():
        session.forward((x,), (), GatePolicy())
    return [s.name for s in session.sites], session


def test_module_sites_are_named_by_module_path():
    names, _ = site_names(seeded(VGGish()), torch.randn(1, 3, 16, 16))
    assert names == ["features.1", "features.3", "features.4", "features.6", "features.7", "classifier.2"]


def test_a_module_called_twice_is_two_sites():
    names, _ = site_names(seeded(ResNetish()), torch.randn(1, 3, 16, 16))
    assert names == ["relu", "pool", "relu#2", "relu#3"]


def test_functional_calls_are_sites_named_after_the_calling_module():
    names, session = site_names(FunctionalVGGish(seeded(VGGish())), torch.randn(1, 3, 16, 16))
    assert len(names) == 6
    assert names[0] == "relu" and names[1] == "relu#2" and names[2] == "max_pool2d"
    assert [s.kind for s in session.sites] == ["activation", "activation", "pool", "activation", "pool", "activation"]


class Zoo(nn.Module):
    def forward(self, x):
        x = F.leaky_relu(x, 0.2)
        x = F.relu6(x * 3)
        x = nn.Hardtanh(-0.5, 0.5)(x - 1)
        x = torch.prelu(x, torch.tensor([0.1]))
        x = F.adaptive_max_pool2d(x, 2)
        x = torch.max_pool1d(x.flatten(2), 2)
        y, _ = F.max_pool1d(x, 1, return_indices=True)
        return y.flatten(1)


def test_every_relu_variant_and_pool_is_a_site():
    names, session = site_names(Zoo(), torch.randn(2, 3, 8, 8))
    assert [s.op.label for s in session.sites] == [
        "leaky_relu", "relu6", "hardtanh", "prelu", "adaptive_max_pool2d", "max_pool1d", "max_pool1d"
    ]


@pytest.mark.parametrize("model", [seeded(VGGish()), seeded(ResNetish()), Zoo(), FunctionalVGGish(seeded(VGGish()))])
def test_linearized_passes_reproduce_the_model(model):
    """With all gates open, the frozen network is the model at the point of linearization."""
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    session = GatingSession(model, linearize=True, batch_size=2)
    with session.installed():
        first, _ = session.forward((x,), (), GatePolicy())
        second, _ = session.forward((x,), (), GatePolicy())
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def test_frozen_network_is_affine_in_the_input():
    """After freezing, ReLU states and max-pool choices no longer follow the input."""
    model = seeded(VGGish())
    x = torch.randn(1, 3, 16, 16)
    session = GatingSession(model, linearize=True, batch_size=1)
    with session.installed():
        at_x, _ = session.forward((x,), (), GatePolicy())
        at_2x, _ = session.forward((2 * x,), (), GatePolicy())
        at_minus_x, _ = session.forward((-x,), (), GatePolicy())
        at_zero, _ = session.forward((0 * x,), (), GatePolicy())
    torch.testing.assert_close(at_2x - at_zero, 2 * (at_x - at_zero), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(at_minus_x - at_zero, -(at_x - at_zero), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(model(-x), at_minus_x)  # the real network is not


def test_in_place_relu_models_give_the_same_attribution_as_out_of_place():
    torch.manual_seed(0)
    plain = seeded(VGGish(inplace=False))
    inplace = VGGish(inplace=True).eval()
    inplace.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(FSP(inplace).attribute(x, target=1), FSP(plain).attribute(x, target=1))


def test_gate_outputs_may_be_modified_in_place_by_the_model():
    """ResNetish adds the skip in place onto a tensor derived from a gated output."""
    attribution = FSP(seeded(ResNetish())).attribute(torch.randn(2, 3, 16, 16), target=0)
    assert torch.isfinite(attribution).all() and attribution.abs().sum() > 0


def test_later_passes_see_the_site_calls_of_hooks_and_of_modules_made_on_the_fly():
    # After the first pass the engine watches only the modules that made site calls: a site
    # in a forward hook, one in a module the model makes in its forward.
    class Made(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            x = nn.ReLU()(self.conv(x))  # a module the model does not hold
            return self.head(x.mean((2, 3)))

    model = seeded(Made())
    model.head.register_forward_hook(lambda m, inputs, out: F.leaky_relu(out, 0.5))
    state = FSP(model).select(torch.randn(2, 3, 8, 8), target=[0, 1], config="paper")
    assert list(state.site_kinds) == ["relu", "head"]  # a hook's site is named after its module
    assert int(state.updates.max()) > 0  # later passes ran, with every site seen in each


def test_later_passes_see_a_site_call_in_a_forward_pre_hook_of_a_module_that_makes_no_other():
    class Hooked(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.head = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.relu(self.conv(x)).mean((2, 3)))

    model = seeded(Hooked())
    model.head.register_forward_pre_hook(lambda m, inputs: (torch.relu(inputs[0] - 0.1),))
    state = FSP(model).select(torch.randn(2, 3, 8, 8), target=[0, 1], config="paper")
    assert list(state.site_kinds) == ["relu", "head"]
    assert int(state.updates.max()) > 0


class TokenMixer(nn.Module):
    """Standard modules only: LayerNorm, a softmax over tokens, GELU, Hardswish, max-pooling."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.embed, self.norm, self.mix = nn.Conv2d(3, 8, 2, stride=2), nn.LayerNorm(8), nn.Linear(8, 8)
        self.softmax, self.gelu = nn.Softmax(dim=1), nn.GELU()
        self.hardswish, self.pool = nn.Hardswish(), nn.MaxPool2d(2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        f = self.functional
        x = self.embed(x)
        x = F.max_pool2d(F.hardswish(x), 2) if f else self.pool(self.hardswish(x))
        tokens = x.flatten(2).transpose(1, 2)
        tokens = F.layer_norm(tokens, (8,), self.norm.weight, self.norm.bias) if f else self.norm(tokens)
        weights = F.softmax(tokens.sum(2, keepdim=True), dim=1) if f else self.softmax(tokens.sum(2, keepdim=True))
        mixed = self.mix(tokens)
        tokens = F.gelu(mixed) if f else self.gelu(mixed)
        return self.head((weights * tokens).sum(1))


@pytest.mark.parametrize("config", ["paper", "default"])
def test_later_passes_that_replay_standard_modules_give_what_the_mode_gives(config):
    # Where every site and frozen call of the first pass came from a standard module's forward,
    # later passes hand the engine those calls without the TorchFunctionMode; a functional twin
    # of the same model runs every pass under the mode.
    x = torch.randn(2, 3, 16, 16)
    vgg = seeded(VGGish())
    torch.testing.assert_close(FSP(vgg).attribute(x, target=[1, 3], config=config),
                               FSP(FunctionalVGGish(vgg)).attribute(x, target=[1, 3], config=config), rtol=0, atol=0)
    _same_as_functional_twin(TokenMixer, x, config)


class LayerNorm2d(nn.LayerNorm):
    """torchvision's ConvNeXt normalization: it permutes, normalizes the channels, permutes back."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias).permute(0, 3, 1, 2)


class ChannelsNorm(nn.Module):
    """A convolution, a LayerNorm2d, a GELU MLP over channels-last maps and a head."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.embed, self.norm = nn.Conv2d(3, 8, 2, stride=2), LayerNorm2d(8)
        self.up, self.gelu, self.down, self.head = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x):
        x = self.embed(x)
        if self.functional:
            x = F.layer_norm(x.permute(0, 2, 3, 1), (8,), self.norm.weight, self.norm.bias).permute(0, 3, 1, 2)
        else:
            x = self.norm(x)
        hidden = self.up(x.permute(0, 2, 3, 1))
        return self.head(self.down(F.gelu(hidden) if self.functional else self.gelu(hidden)).mean((1, 2)))


def _same_as_functional_twin(net, x, config):
    """``net()`` and ``net(functional=True)`` with its weights give the same attributions, bit for bit."""
    model = seeded(net())
    functional = net(functional=True).eval()
    functional.load_state_dict(model.state_dict())
    torch.testing.assert_close(FSP(model).attribute(x, target=[0, 2], config=config),
                               FSP(functional).attribute(x, target=[0, 2], config=config), rtol=0, atol=0)
    return model, functional


def _later_calls(model, x, config):
    """The torch calls the sessions' TorchFunctionMode saw after their first pass, and the passes."""
    from captum_feedback.core import engine

    seen, original = [], engine._SiteMode.__torch_function__

    def counting(self, func, types, args=(), kwargs=None):
        if self.on_site.__self__.passes > 0:
            seen.append(func)
        return original(self, func, types, args, kwargs)

    engine._SiteMode.__torch_function__ = counting
    try:
        state = FSP(model).select(x, target=[0, 2], config=config, keep_cws=False)
    finally:
        engine._SiteMode.__torch_function__ = original
    return seen, len(state.target_scores)


@pytest.mark.parametrize("config, frozen", [("paper", True), ("default", False)])
def test_a_leaf_module_that_normalizes_a_permuted_input_runs_under_the_mode_alone_in_later_passes(config, frozen):
    # A linearized session freezes the layer norm, which LayerNorm2d calls on a permuted input:
    # later passes run that module's forward under the mode and nothing else; a session that
    # re-evaluates it runs no mode at all. A functional twin of the model runs every pass under it.
    x = torch.randn(2, 3, 16, 16)
    modules, functional = _same_as_functional_twin(ChannelsNorm, x, config)
    seen, passes = _later_calls(modules, x, config)
    norm = [torch.Tensor.permute, F.layer_norm, torch.Tensor.permute]
    assert passes > 1 and seen == (norm * max(len(seen) // 3, 1) if frozen else [])
    seen, _ = _later_calls(functional, x, config)
    assert F.gelu in seen and torch.Tensor.mean in seen


@pytest.mark.parametrize("keyword_first", [True, False])
def test_a_standard_module_called_once_with_a_keyword_runs_its_own_forward_under_the_mode(keyword_first):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.gelu, self.head = nn.Conv2d(3, 4, 3), nn.GELU(), nn.Linear(4, 3)

        def forward(self, x):
            h = self.conv(x)
            h = self.gelu(input=h) if keyword_first else self.gelu(h)
            h = self.gelu(h) if keyword_first else self.gelu(input=h)
            return self.head(h.mean((2, 3)))

    seen, passes = _later_calls(seeded(Twice()), torch.randn(2, 3, 8, 8), "paper")
    assert passes > 1 and len(seen) >= 2 and seen == [F.gelu] * len(seen)  # its calls, and nothing else


class Mixed(nn.Module):
    """A ReLU module and a functional ReLU in the model's own forward."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.conv1, self.relu, self.conv2 = nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.conv1(x)
        h = F.relu(self.conv2(F.relu(h) if self.functional else self.relu(h)))
        return self.head(h.mean((2, 3)))


@pytest.mark.filterwarnings("ignore:FSP's gates changed nothing")  # the default's head gates, on this small net
@pytest.mark.parametrize("config", ["paper", "default"])
def test_a_site_called_by_a_module_with_children_makes_every_later_pass_run_under_the_mode(config):
    # Running such a module's forward under the mode would intercept its replayed children's own
    # operations too; every pass runs under the mode, as a functional twin's does.
    x = torch.randn(2, 3, 12, 12)
    model, _ = _same_as_functional_twin(Mixed, x, config)
    seen, _ = _later_calls(model, x, config)
    assert F.relu in seen and torch.Tensor.mean in seen


def test_replayed_modules_keep_their_own_forward_after_every_call_and_every_error():
    model = seeded(ResNetish())
    x = torch.randn(2, 3, 16, 16)
    FSP(model).attribute(x, target=0, config="paper")
    calls = []
    model.conv2.register_forward_hook(lambda m, inputs, out: calls.append(1) or (out if len(calls) < 3 else out[:1]))
    with pytest.raises(RuntimeError):
        FSP(model).attribute(x, target=0, config="paper")  # the third pass breaks off in a later pass
    assert len(calls) == 3
    assert all("forward" not in vars(module) for module in model.modules())


def test_a_model_called_from_another_thread_during_a_later_pass_computes_its_plain_output():
    import threading

    model = seeded(ResNetish())
    probe, seen = torch.randn(2, 8, 5, 5), []  # of the batch size: unbatched calls are never gated

    def elsewhere(module, inputs):
        thread = threading.Thread(target=lambda: seen.append(model.relu(probe.clone())))
        thread.start()
        thread.join()

    model.head.register_forward_pre_hook(elsewhere)
    state = FSP(model).select(torch.randn(2, 3, 16, 16), target=0, config="paper")
    assert int(state.updates.max()) > 1 and len(seen) > 2
    for output in seen:
        torch.testing.assert_close(output, torch.relu(probe), rtol=0, atol=0)


def test_the_reach_test_finds_the_nodes_whose_backward_pass_runs_through_the_lowest_site():
    from captum_feedback.core.engine import _all_reach

    x = torch.randn(3, requires_grad=True)
    before = x.cos()  # made before the lowest node: never above it
    lowest = x.exp()
    above, beside = lowest * 2, x.sin()
    joined = (above + beside) * torch.nn.Parameter(torch.ones(3))  # one path through it suffices
    assert _all_reach(lowest.grad_fn, [above.grad_fn, joined.grad_fn])
    assert not _all_reach(lowest.grad_fn, [above.grad_fn, beside.grad_fn])
    assert not _all_reach(lowest.grad_fn, [before.grad_fn])
    assert _all_reach(lowest.grad_fn, [])
    assert _all_reach(lowest.grad_fn, [lowest.grad_fn])
    deep = lowest
    for _ in range(5000):  # deeper than Python's recursion limit
        deep = deep * 1.5 + beside  # every step also leads down a side path that does not reach it
    assert _all_reach(lowest.grad_fn, [deep.grad_fn, above.grad_fn])
    assert not _all_reach(lowest.grad_fn, [deep.grad_fn, beside.grad_fn])


def test_a_replayed_module_called_otherwise_on_a_later_pass_is_a_control_flow_error_that_leaves_no_trace():
    class Switching(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.head, self.calls = nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Linear(4, 2), 0

        def forward(self, x):
            self.calls += 1
            h = self.conv(x)
            h = self.relu(h) if self.calls == 1 else self.relu(input=h)  # a keyword after the first pass
            return self.head(h.mean((2, 3)))

    model = seeded(Switching())
    with pytest.raises(RuntimeError, match="other arguments on a later forward pass"):
        FSP(model).attribute(torch.randn(2, 3, 8, 8), target=0, config="paper")
    assert "forward" not in vars(model.relu)
