"""Feedback methods compose with Captum like its own methods, and refuse a model in training
mode, whose passes would differ and whose buffers would change."""

import pytest
import torch
from captum.attr import NoiseTunnel
from nets import ResNetish, VGGish, seeded
from test_errors import assert_untouched, snapshot
from torch import nn

from captum_feedback import FR, FSP


@pytest.mark.parametrize("method", [FSP, FR])
def test_noise_tunnel_smooths_feedback_maps(method):
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    plain = method(model).attribute(x, target=[1, 2])
    tunnel = NoiseTunnel(method(model))
    noiseless = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=3, stdevs=0.0, target=[1, 2])
    torch.testing.assert_close(noiseless, plain)
    torch.manual_seed(0)
    smooth = tunnel.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.5, target=[1, 2])
    torch.manual_seed(0)
    noisy = x.repeat_interleave(4, 0) + 0.5 * torch.randn(8, 3, 16, 16)
    expected = method(model).attribute(noisy, target=[1] * 4 + [2] * 4).view(2, 4, 3, 16, 16).mean(1)
    torch.testing.assert_close(smooth, expected)


class Normalized(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.conv, self.layer, self.head = nn.Conv2d(3, 4, 3), layer, nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.layer(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("layer, name", [(nn.BatchNorm2d(4), "BatchNorm2d 'layer'"),
                                         (nn.Dropout(0.5), "Dropout 'layer'"),
                                         (nn.InstanceNorm2d(4, track_running_stats=True), "InstanceNorm2d")])
@pytest.mark.parametrize("method", [FSP, FR])
def test_a_model_in_training_mode_is_refused_and_left_as_it_was(method, layer, name):
    model = Normalized(layer).train()
    before = snapshot(model)
    buffers = [b.clone() for b in model.buffers()]
    with pytest.raises(ValueError, match=f"training mode: {name}.*model.eval()"):
        method(model).attribute(torch.randn(2, 3, 8, 8), target=1)
    assert_untouched(model, before)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), buffers))
    assert method(model.eval()).attribute(torch.randn(2, 3, 8, 8), target=1).shape == (2, 3, 8, 8)


def test_training_mode_without_such_layers_changes_nothing_and_runs():
    model = seeded(ResNetish()).train()
    assert torch.isfinite(FSP(model).attribute(torch.randn(1, 3, 8, 8), target=1)).all()


class Wrapped(nn.Module):
    """VGGish whose output comes wrapped as a model hub returns it."""

    def __init__(self, wrap) -> None:
        super().__init__()
        self.net, self.wrap = seeded(VGGish()), wrap

    def forward(self, x: torch.Tensor):
        return self.wrap(self.net(x))


class Output:
    def __init__(self, logits: torch.Tensor) -> None:
        self.logits, self.loss = logits, None


@pytest.mark.parametrize("wrap", [lambda y: (y, y.sum()), lambda y: [y], lambda y: {"logits": y, "hidden": y * 2},
                                  lambda y: {"scores": y}, Output],
                         ids=["tuple", "list", "dict-logits", "dict-one", "object-logits"])
@pytest.mark.parametrize("method", [FSP, FR])
def test_models_returning_tuples_dicts_or_logits_objects_are_explained_through_their_scores(wrap, method):
    model = Wrapped(wrap)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(method(model).attribute(x, target=[1, 2]), method(model.net).attribute(x, target=[1, 2]))


def test_an_ambiguous_output_needs_a_selector():
    model = Wrapped(lambda y: {"a": y, "b": -y})
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TypeError, match=r"tensors \['a', 'b'\] and no 'logits'.*output_selector"):
        FSP(model).attribute(x, target=1)
    chosen = FSP(model, output_selector=lambda out: out["b"]).attribute(x, target=1)
    torch.testing.assert_close(chosen, FSP(lambda x: -model.net(x)).attribute(x, target=1))


def test_every_target_form_scores_each_sample_at_its_own_index():
    from captum_feedback.core._compat import per_sample_targets, select_targets

    output = torch.arange(3 * 4 * 5.0).view(3, 4, 5)
    cases = [((1, 2), [(1, 2)] * 3), ([(0, -1), (3, 0), (-2, 4)], [(0, -1), (3, 0), (-2, 4)]),
             (torch.tensor([[1, 1], [2, 2], [0, 3]]), [(1, 1), (2, 2), (0, 3)])]
    for target, indices in cases:
        expected = [output[b][index].item() for b, index in enumerate(indices)]
        assert select_targets(output, per_sample_targets(target, 3)).tolist() == expected
    flat = output.flatten(1)
    assert select_targets(flat, per_sample_targets([0, 19, -20], 3)).tolist() == [0.0, 39.0, 40.0]
    assert select_targets(flat[:, :1], per_sample_targets(None, 3)).tolist() == [0.0, 20.0, 40.0]
    with pytest.raises(ValueError, match="out of range"):
        select_targets(flat, per_sample_targets([0, 20, 0], 3))
