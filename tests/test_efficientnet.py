"""The embedded default model: real ImageNet EfficientNet-Lite0 with packaged weights."""


import pytest
import torch

from captum_feedback import FSP, PRESETS, summation_energy_map
from captum_feedback.core.engine import GatePolicy, GatingSession
from captum_feedback.data.photos import bundled_photos
from captum_feedback.models import class_index, efficientnet_lite0, imagenet_classes, preprocess


@pytest.fixture(scope="module")
def model():
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def cat():
    return preprocess(bundled_photos()["chelsea"])


def test_sensible_top5_on_bundled_photos(model, cat):
    classes = imagenet_classes()
    with torch.no_grad():
        top5 = [classes[i] for i in model(cat).topk(5).indices[0]]
        espresso = model(preprocess(bundled_photos()["coffee"])).argmax().item()
    assert {"tiger cat", "tabby", "Egyptian cat"} <= set(top5)
    assert classes[espresso] == "espresso"


def test_weights_load_strictly_and_inputs_are_scaled_to_plus_minus_one(cat):
    assert cat.shape == (1, 3, 224, 224) and cat.min() >= -1 and cat.max() <= 1
    with pytest.raises(RuntimeError):
        efficientnet_lite0().load_state_dict({"unexpected": torch.zeros(1)}, strict=True)


def test_every_relu6_call_has_its_own_module(model, cat):
    session = GatingSession(model, linearize=True, batch_size=1)
    with session.installed():
        session.forward((cat,), (), GatePolicy())
    names = [s.name for s in session.sites]
    assert len(names) == len(set(names)) == 33
    assert not any("#" in n for n in names)


def test_fsp_raises_the_target_score_on_the_real_model(model, cat):
    state = FSP(model).select(cat, target=class_index("tiger cat"), updates=3, config="paper")
    scores = state.target_scores[:, 0]
    assert (scores[1:] >= scores[:-1]).all() and scores[-1] > 10 * scores[0]


def test_the_default_keeps_alpha_above_zero_at_the_head_of_a_pooled_model(model, cat):
    """Global average pooling: the head's CWs are the same at every location, so the default's
    located ratio does not apply and its gates, the dual's and the map are the paper's rule's."""
    x = torch.cat([cat, preprocess(bundled_photos()["coffee"])])
    default = FSP(model).select(x, target=[281, 967])
    zero = FSP(model).select(x, target=[281, 967], config=PRESETS["default"].replace(threshold="zero"))
    assert not default.gates["head_relu"].all()
    for name in zero.gates:
        assert torch.equal(default.gates[name], zero.gates[name]), name
        assert torch.equal(default.dual.gates[name], zero.dual.gates[name]), name
    torch.testing.assert_close(summation_energy_map(default), summation_energy_map(zero), rtol=0, atol=0)
