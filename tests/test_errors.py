"""Bad input gets a clear error, and the model is always left exactly as it was found."""

import pytest
import torch
from nets import ResNetish, VGGish, seeded
from torch import nn

from captum_feedback import FR, FSP, FeedbackConfig, LayerFeedback


def hooks_of(model):
    return [
        (name, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for name, m in model.named_modules()
    ]


def snapshot(model):
    return {
        "hooks": hooks_of(model),
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def assert_untouched(model, before):
    after = snapshot(model)
    assert after["hooks"] == before["hooks"]
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(a is b for a, b in zip(after["grads"], before["grads"]))
    for a, b in zip(after["grad_values"], before["grad_values"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch._C._len_torch_function_stack() == 0
    assert not global_module_hooks()


def global_module_hooks():
    from torch.nn.modules import module

    return [*module._global_forward_hooks, *module._global_forward_pre_hooks, *module._global_backward_hooks]


@pytest.fixture
def model():
    net = seeded(ResNetish())
    net.conv1.weight.requires_grad_(False)
    net.head.weight.grad = torch.ones_like(net.head.weight)
    return net


def run_all(net, x, **kwargs):
    FSP(net).attribute(x, **kwargs)
    FR(net).attribute(x, **kwargs)


@pytest.mark.parametrize(
    "x, kwargs, error, message",
    [
        (torch.ones(1, 3, 8, 8, dtype=torch.long), {"target": 0}, TypeError, "floating-point"),
        (torch.full((1, 3, 8, 8), float("nan")), {"target": 0}, ValueError, "NaN"),
        (torch.full((1, 3, 8, 8), float("inf")), {"target": 0}, ValueError, "infinite"),
        (torch.ones(1, 3, 8, 8), {"target": 5}, ValueError, "out of range"),
        (torch.ones(1, 3, 8, 8), {"target": -6}, ValueError, "out of range"),
        (torch.ones(2, 3, 8, 8), {"target": [1, 2, 3]}, ValueError, "3 entries for a batch of 2"),
        (torch.ones(1, 3, 8, 8), {"target": None}, ValueError, "selects 5 values"),
        (torch.ones(1, 3, 8, 8), {"target": "cat"}, TypeError, "target"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_model_is_untouched(model, x, kwargs, error, message):
    before = snapshot(model)
    with pytest.raises(error, match=message):
        FSP(model).attribute(x, **kwargs)
    assert_untouched(model, before)
    with pytest.raises(error, match=message):
        FR(model).attribute(x, **kwargs)
    assert_untouched(model, before)


@pytest.mark.parametrize("updates", [0, -1, 1.5, True])
def test_updates_below_one_are_refused(model, updates):
    with pytest.raises(ValueError, match="updates must be an integer >= 1"):
        FSP(model).attribute(torch.ones(1, 3, 8, 8), target=0, updates=updates)


def test_fewer_updates_than_stages_are_refused(model):
    with pytest.raises(ValueError, match="leaves none for the last of 2 stages"):
        FSP(model).attribute(torch.ones(1, 3, 8, 8), target=0, config="released_code", updates=1)


def test_unknown_threshold_rule_is_refused(model):
    with pytest.raises(ValueError, match="threshold"):
        FSP(model).attribute(torch.ones(1, 3, 8, 8), target=0, config=FeedbackConfig().replace(threshold="median"))


def test_a_model_without_gate_sites_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3), nn.Sigmoid()).eval()
    before = snapshot(model)
    with pytest.raises(ValueError, match="no gate site"):
        FSP(model).attribute(torch.ones(1, 3, 2, 2), target=0)
    assert_untouched(model, before)


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU()

    def forward(self, x):
        self.relu(x)
        raise RuntimeError("boom")


def test_hooks_and_modes_are_removed_when_the_forward_raises():
    model = Exploding()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        FSP(model).attribute(torch.ones(1, 3), target=0)
    assert_untouched(model, before)


def test_training_flag_requires_grad_and_grads_survive_a_successful_run(model):
    model.train()
    before = snapshot(model)
    run_all(model, torch.randn(2, 3, 8, 8), target=1)
    LayerFeedback(model, model.conv2).attribute(torch.randn(2, 3, 8, 8), target=1)
    assert_untouched(model, before)


def test_two_attribution_objects_on_one_model_never_interfere():
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    alone = FSP(model).attribute(x, target=1)
    first, second = FSP(model), FSP(model)
    second.attribute(x, target=3)
    FR(model).attribute(x, target=2)
    torch.testing.assert_close(first.attribute(x, target=1), alone)


def test_data_dependent_control_flow_is_a_clear_error():
    class Branchy(nn.Module):
        def forward(self, x):
            y = torch.relu(x)
            out = -2 * y[:, :1]
            if y[:, 0].sum() > 0:  # FSP closes unit 0 (its CW is negative): the branch vanishes
                out = out + torch.relu(y - 1).sum(1, keepdim=True)
            return out

    with pytest.raises(RuntimeError, match="control flow"):
        FSP(Branchy()).attribute(torch.tensor([[0.5, 2.0]]), updates=3, config="paper")


class Shrinking(nn.Module):
    """Crops its input a little more on every call: the second pass sees other shapes."""

    def __init__(self):
        super().__init__()
        self.conv, self.calls = nn.Conv2d(3, 4, 3, padding=1), 0

    def forward(self, x):
        self.calls += 1
        x = x[..., self.calls - 1:, self.calls - 1:]
        return nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).mean((2, 3))


@pytest.mark.parametrize("config", ["paper", "default"])
def test_a_model_whose_shapes_change_between_passes_names_the_pass_and_the_site(config):
    model = Shrinking()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=r"control flow changed on forward pass 2 at site 'relu'"):
        FSP(model).attribute(torch.randn(1, 3, 8, 8), target=0, config=config)
    assert_untouched(model, before)


class Crashing(nn.Module):
    """Its ReLU module raises on the third call, in a later pass, inside the site's module."""

    class Relu(nn.ReLU):
        calls = 0

        def forward(self, x):
            type(self).calls += 1
            if self.calls == 3:
                raise ValueError("third call")
            return super().forward(x)

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.head = nn.Conv2d(3, 4, 3), self.Relu(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean((2, 3)))


def test_an_error_inside_a_site_module_in_a_later_pass_leaves_no_interception_behind():
    model = Crashing()
    before = snapshot(model)
    with pytest.raises(ValueError, match="third call"):
        FSP(model).attribute(torch.randn(1, 3, 8, 8), target=0, config="paper")
    assert model.relu.calls == 3
    assert_untouched(model, before)


@pytest.mark.parametrize("method", [FSP, FR])
def test_inference_mode_and_empty_batches_are_named(method, model):
    before = snapshot(model)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        method(model).attribute(torch.randn(1, 3, 8, 8), target=0)
    with torch.inference_mode():
        made_inside = torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="inference_mode"):
        method(model).attribute(made_inside, target=0)
    with pytest.raises(ValueError, match="empty batch"):
        method(model).attribute(torch.randn(0, 3, 8, 8), target=0)
    assert_untouched(model, before)


@pytest.mark.parametrize("config", ["paper", "default"])
def test_a_channels_last_input_gives_the_contiguous_inputs_result(config):
    torch.manual_seed(0)
    import torchvision

    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 224, 224)  # at this size the two layouts run different kernels
    expected = FSP(net).attribute(x, target=[1, 2], config=config)
    got = FSP(net).attribute(x.to(memory_format=torch.channels_last), target=[1, 2], config=config)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_inputs_come_with_a_note_on_precision(dtype):
    net = seeded(VGGish()).to(dtype)
    with pytest.warns(UserWarning, match="float32"):
        FSP(net).attribute(torch.randn(1, 3, 16, 16, dtype=dtype), target=0, config="paper")


@pytest.mark.parametrize("call", [
    lambda m, x: FSP(m).select(x, [0, 1]),
    lambda m, x: FSP(m).attribute(x, [0, 1], config="paper"),
    lambda m, x: FR(m).attribute(x, target=[0, 1]),
    lambda m, x: LayerFeedback(m, m.conv1).attribute(x, [0, 1]),
], ids=["fsp-select", "fsp-paper", "fr", "layer"])
def test_nothing_of_a_call_outlives_it(call, model, monkeypatch):
    """Each call's gating session is freed when the call returns: a session kept alive by a cycle
    through autograd (which Python's collector cannot see into) would hold a graph per call."""
    import gc
    import weakref

    from captum_feedback.core import engine

    sessions = []
    original = engine.GatingSession.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        sessions.append(weakref.ref(self))

    monkeypatch.setattr(engine.GatingSession, "__init__", recording)
    call(model, torch.randn(2, 3, 8, 8))
    gc.collect()
    assert sessions and all(ref() is None for ref in sessions)
