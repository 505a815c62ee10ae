"""Hidden neurons along Captum's contract: NeuronFeedback (input-shaped FR from neurons),
LayerFeedback (layer-shaped contributions after FSP), and the FSP-FR map of the pipeline."""


import pytest
import torch
from captum.attr import LayerAttribution, NeuronAttribution, NeuronGuidedBackprop
from nets import ResNetish, VGGish, seeded
from torch import nn

from captum_feedback import FSP, FeedbackPipeline, LayerFeedback, MeanRatio, NeuronFeedback, rank_channels
from captum_feedback.core.config import resolve_config


def test_fr_from_one_neuron_is_neuron_guided_backprop_on_a_relu_net():
    model = seeded(VGGish())
    layer = model.classifier[2]
    x = torch.randn(2, 3, 16, 16)
    assert isinstance(NeuronFeedback(model, layer), NeuronAttribution)
    torch.testing.assert_close(
        NeuronFeedback(model, layer).attribute(x, neuron_selector=5),
        NeuronGuidedBackprop(model, layer).attribute(x, neuron_selector=5),
    )


def test_a_set_of_neurons_is_one_target_their_sum():
    model = seeded(VGGish())
    nf = NeuronFeedback(model, model.features[4])
    x = torch.randn(2, 3, 16, 16)
    by_slices = nf.attribute(x, neuron_selector=(slice(0, 4), 2, slice(None)))
    by_callable = nf.attribute(x, neuron_selector=lambda h: h[:, 0:4, 2, :].sum((1, 2)))
    torch.testing.assert_close(by_slices, by_callable)
    assert by_slices.abs().sum() > 0
    dense = NeuronFeedback(model, model.classifier[2])
    torch.testing.assert_close(
        dense.attribute(x, neuron_selector=slice(3, 9)),
        dense.attribute(x, neuron_selector=lambda h: h[:, 3:9].sum(1)),
    )


def test_layer_feedback_is_layer_shaped_like_captums_layer_attributions():
    model = seeded(VGGish())
    layer = model.features[3]
    x = torch.randn(2, 3, 16, 16)
    attribution = LayerFeedback(model, layer).attribute(x, target=[1, 3], config="paper")
    assert isinstance(LayerFeedback(model, layer), LayerAttribution)
    assert attribution.shape == layer(model.features[2](model.features[1](model.features[0](x)))).shape


def test_the_layer_classes_are_initialized_as_captums():
    model = seeded(VGGish())
    layer = model.features[4]
    for attribution in (LayerFeedback(model, layer), NeuronFeedback(model, layer)):
        assert attribution.layer is layer and attribution.device_ids is None and attribution.forward_func is model
    with pytest.raises(TypeError, match="neuron_selector"):
        LayerFeedback(model, layer).attribute(torch.randn(1, 3, 16, 16), neuron_selector=(0, 1, 1))


def test_neurons_fsp_kept_at_a_relu_layer_are_its_open_gates_with_positive_cw():
    """Kept = open under the final gates and still contributing positively; at a fixed point
    that is exactly the open gates."""
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    pipeline = FeedbackPipeline(model, model.features[3], resolve_config("paper", updates=2))
    state = pipeline.select(x, target=[1, 3])
    kept, gates = pipeline.kept_neurons(state), state.gates["features.3"]
    assert not (kept & ~gates).any()
    converged = FeedbackPipeline(model, model.features[3], resolve_config("paper", updates=30))
    state = converged.select(x, target=[1, 3])
    assert state.converged.all()
    torch.testing.assert_close(converged.kept_neurons(state), state.gates["features.3"])


def test_the_neuron_ratio_keeps_neurons_whose_cw_reaches_a_share_of_the_mean_positive_cw():
    """mean_thd.m: a neuron whose CW is below t times the mean positive CW of the active
    neurons is dropped; a larger t keeps a subset. (A linearized ReLU can pass a negative input
    on its support: such a neuron counts with its contribution's sign, alpha * sign(h).)"""
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    loose = FeedbackPipeline(model, model.features[3], resolve_config("paper", updates=2))
    state = loose.select(x, target=[1, 3])
    strict = FeedbackPipeline(model, model.features[3], loose.config.replace(neuron_ratio=1.0))
    cw, h = state.layer_cws["features.3"], state.layer_outputs["features.3"]
    positive = (cw * (h != 0)).clamp(min=0).flatten(1)
    mean = positive.sum(1) / (positive > 0).sum(1)
    expected = cw * h.sign() > mean.view(-1, 1, 1, 1)
    assert torch.equal(strict.kept_neurons(state), expected)
    assert not (strict.kept_neurons(state) & ~loose.kept_neurons(state)).any()


def test_layer_contributions_sum_to_the_target_score_in_a_bias_free_net():
    """Eq. 6: S = sum(alpha * z * x) at any feedback layer when nothing above adds a constant."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 9, bias=False), nn.ReLU(), nn.Linear(9, 9, bias=False), nn.ReLU(),
                          nn.Linear(9, 3, bias=False)).eval()
    x = torch.randn(4, 5)
    state = FeedbackPipeline(model, model[1], resolve_config("paper", updates=3)).select(x, target=2)
    contribution = LayerFeedback(model, model[1]).attribute(x, target=2, state=state)
    torch.testing.assert_close(contribution.sum(1), state.target_scores[-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(LayerFeedback(model, model[1]).attribute(x, 2, config="paper", updates=3),
                               contribution)


@pytest.mark.parametrize("config", ["paper", "released_code"])
def test_fsp_fr_map_is_fr_from_the_kept_neurons(config):
    model = seeded(VGGish())
    layer = model.features[6]
    pipeline = FeedbackPipeline(model, layer, config)
    x = torch.randn(1, 3, 16, 16)
    state = pipeline.select(x, target=2)
    kept = pipeline.kept_neurons(state)
    by_selector = NeuronFeedback(model, layer).attribute(
        x, neuron_selector=lambda h: (h * kept).flatten(1).sum(1), threshold=pipeline.config.fr_rule)
    torch.testing.assert_close(pipeline.fsp_fr(x, state), by_selector)
    assert not torch.allclose(pipeline.fsp_fr(x, pipeline.select(x, target=4)), by_selector)


def test_the_released_codes_fr_uses_its_mean_ratio_threshold():
    model = seeded(VGGish())
    pipeline = FeedbackPipeline(model, model.features[6], "released_code")
    assert pipeline.config.maps.fr_threshold == MeanRatio(0.1) and pipeline.config.maps.neuron_ratio == 0.1
    x = torch.randn(1, 3, 16, 16)
    state = pipeline.select(x, target=2)
    zero = FeedbackPipeline(model, model.features[6], pipeline.config.replace(fr_threshold="zero"))
    assert not torch.allclose(pipeline.fsp_fr(x, state), zero.fsp_fr(x, state))


def test_rank_channels_orders_channels_by_their_peak():
    scores = torch.zeros(2, 4, 3, 3)
    scores[0, 2, 1, 1], scores[0, 0, 0, 0], scores[1, 3, 2, 2] = 5.0, 3.0, 1.0
    values, channels = rank_channels(scores, k=2)
    assert channels[0].tolist() == [2, 0] and values[0].tolist() == [5.0, 3.0]
    assert channels[1, 0].item() == 3


def test_rank_channels_on_fsp_contributions():
    model = seeded(VGGish())
    lf = LayerFeedback(model, model.features[6])
    values, channels = rank_channels(lf.attribute(torch.randn(2, 3, 16, 16), target=1), k=5)
    assert channels.shape == (2, 5) and (values[:, :-1] >= values[:, 1:]).all()


def test_layer_errors_name_the_problem():
    model = seeded(ResNetish())
    with pytest.raises(ValueError, match="not a submodule"):
        LayerFeedback(model, nn.ReLU())
    with pytest.raises(ValueError, match="not a submodule"):
        NeuronFeedback(model, nn.ReLU())
    with pytest.raises(RuntimeError, match="more than once"):
        NeuronFeedback(model, model.relu).attribute(torch.randn(1, 3, 16, 16), neuron_selector=(0, 0, 0))
    nf = NeuronFeedback(model, model.conv1)
    with pytest.raises(ValueError, match="out of range"):
        nf.attribute(torch.randn(1, 3, 8, 8), neuron_selector=(99, 0, 0))
    with pytest.raises(ValueError, match="Unknown threshold"):
        nf.attribute(torch.randn(1, 3, 8, 8), neuron_selector=0, threshold="median")
    with pytest.raises(ValueError, match="state holds no output"):
        FeedbackPipeline(model, model.conv1).kept_neurons(FSP(model).select(torch.randn(1, 3, 8, 8), target=1))


def test_a_state_made_for_other_inputs_is_refused():
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    pipeline = FeedbackPipeline(model, model.features[3])
    state = pipeline.select(x, target=[1, 2])
    layer = LayerFeedback(model, model.features[3])
    torch.testing.assert_close(layer.attribute(x, [1, 2], state=state), layer.attribute(x, [1, 2]))
    with pytest.raises(ValueError, match=r"made for inputs of shape \[\(2, 3, 16, 16\)\], not \[\(1, 3, 16, 16\)\]"):
        layer.attribute(x[:1], 1, state=state)
    with pytest.raises(ValueError, match="other inputs"):
        layer.attribute(x.flip(0), [1, 2], state=state)
    with pytest.raises(ValueError, match="other inputs"):
        pipeline.fsp_fr(x + 1, state)
