"""LayerFeedback: hidden-neuron targets, the FSP-FR map and channel ranking."""

import pytest
import torch
from captum.attr import NeuronGuidedBackprop
from nets import ResNetish, VGGish, seeded
from torch import nn

from captum_feedback import FSP, LayerFeedback, rank_channels


def test_fr_from_one_neuron_is_neuron_guided_backprop_on_a_relu_net():
    model = seeded(VGGish())
    layer = model.classifier[2]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(
        LayerFeedback(model, layer).attribute(x, neuron_selector=5),
        NeuronGuidedBackprop(model, layer).attribute(x, neuron_selector=5),
    )


def test_a_set_of_neurons_is_one_target_their_sum():
    model = seeded(VGGish())
    lf = LayerFeedback(model, model.features[4])
    x = torch.randn(2, 3, 16, 16)
    by_slices = lf.attribute(x, neuron_selector=(slice(0, 4), 2, slice(None)))
    by_callable = lf.attribute(x, neuron_selector=lambda h: h[:, 0:4, 2, :].sum((1, 2)))
    torch.testing.assert_close(by_slices, by_callable)
    assert by_slices.abs().sum() > 0
    dense = LayerFeedback(model, model.classifier[2])
    torch.testing.assert_close(
        dense.attribute(x, neuron_selector=slice(3, 9)),
        dense.attribute(x, neuron_selector=lambda h: h[:, 3:9].sum(1)),
    )


def test_neurons_fsp_kept_at_a_relu_layer_are_its_open_gates_with_positive_cw():
    """Kept = open under the final gates and still contributing positively; at a fixed point
    that is exactly the open gates."""
    model = seeded(VGGish())
    lf = LayerFeedback(model, model.features[3])
    x = torch.randn(2, 3, 16, 16)
    state = lf.select(x, target=[1, 3], iterations=2)
    kept, gates = lf.kept_neurons(state), state.gates["features.3"]
    assert not (kept & ~gates).any()
    converged = lf.select(x, target=[1, 3], iterations=30)
    assert converged.converged.all()
    torch.testing.assert_close(lf.kept_neurons(converged), converged.gates["features.3"])


def test_layer_contributions_sum_to_the_target_score_in_a_bias_free_net():
    """Eq. 6: S = sum(alpha * z * x) at any feedback layer when nothing above adds a constant."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9, bias=False), nn.ReLU(), nn.Linear(9, 9, bias=False), nn.ReLU(),
                          nn.Linear(9, 3, bias=False)).eval()
    x = torch.randn(4, 5)
    lf = LayerFeedback(model, model[1])
    state = lf.select(x, target=2, iterations=3)
    contribution = lf._layer_contribution(state)
    torch.testing.assert_close(contribution.sum(1), state.target_scores[-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lf.contribution(x, target=2, iterations=3), contribution)


def test_fsp_fr_map_is_fr_from_the_kept_neurons():
    model = seeded(VGGish())
    layer = model.features[6]
    lf = LayerFeedback(model, layer)
    x = torch.randn(1, 3, 16, 16)
    state = lf.select(x, target=2)
    kept = lf.kept_neurons(state)
    from_state = lf.attribute(x, state=state)
    by_selector = lf.attribute(x, neuron_selector=lambda h: (h * kept).flatten(1).sum(1))
    torch.testing.assert_close(from_state, by_selector)
    torch.testing.assert_close(lf.attribute(x, target=2), from_state)
    assert not torch.allclose(lf.attribute(x, target=4), from_state)


def test_rank_channels_orders_channels_by_their_peak():
    scores = torch.zeros(2, 4, 3, 3)
    scores[0, 2, 1, 1], scores[0, 0, 0, 0], scores[1, 3, 2, 2] = 5.0, 3.0, 1.0
    values, channels = rank_channels(scores, k=2)
    assert channels[0].tolist() == [2, 0] and values[0].tolist() == [5.0, 3.0]
    assert channels[1, 0].item() == 3


def test_rank_channels_on_fsp_contributions():
    model = seeded(VGGish())
    lf = LayerFeedback(model, model.features[6])
    values, channels = rank_channels(lf.contribution(torch.randn(2, 3, 16, 16), target=1), k=5)
    assert channels.shape == (2, 5) and (values[:, :-1] >= values[:, 1:]).all()


def test_layer_errors_name_the_problem():
    model = seeded(ResNetish())
    with pytest.raises(ValueError, match="not a submodule"):
        LayerFeedback(model, nn.ReLU())
    with pytest.raises(RuntimeError, match="more than once"):
        LayerFeedback(model, model.relu).attribute(torch.randn(1, 3, 16, 16), neuron_selector=(0, 0, 0))
    lf = LayerFeedback(model, model.conv1)
    with pytest.raises(ValueError, match="out of range"):
        lf.attribute(torch.randn(1, 3, 8, 8), neuron_selector=(99, 0, 0))
    with pytest.raises(ValueError, match="either"):
        lf.attribute(torch.randn(1, 3, 8, 8), target=1, neuron_selector=0)
    with pytest.raises(ValueError, match="state holds no output"):
        lf.kept_neurons(FSP(model).select(torch.randn(1, 3, 8, 8), target=1))
