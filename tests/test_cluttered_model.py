"""The packaged cluttered-scene models, a VGG (fully connected head) and a ResNet (global average
pooling): real trained weights, and FSP behaving on them."""

import pytest
import torch

from captum_feedback import FSP
from captum_feedback.data import ClutteredScenes
from captum_feedback.models.cluttered_resnet import ClutteredResNet, cluttered_resnet
from captum_feedback.models.cluttered_vgg import ClutteredVGG, cluttered_vgg
from captum_feedback.wsol.metrics import mean_average_precision

MODELS = {"vgg": (cluttered_vgg, ClutteredVGG, 0.8), "resnet": (cluttered_resnet, ClutteredResNet, 0.88)}
"""Each model's loader, class and the test mAP it must pass (0.859 and 0.932 on 1,000 scenes;
chance is about 0.2)."""


@pytest.fixture(scope="module", params=sorted(MODELS))
def named(request):
    return request.param, MODELS[request.param][0]()


@pytest.fixture(scope="module")
def scenes():
    return ClutteredScenes("test", length=300, seed=0)


def test_the_vgg_keeps_where_features_fired_and_the_resnet_pools_them():
    vgg, resnet = cluttered_vgg(), cluttered_resnet()
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in vgg.modules()) == 4
    assert isinstance(vgg.middle_layer, torch.nn.ReLU)
    assert isinstance(resnet.pool, torch.nn.AdaptiveAvgPool2d) and isinstance(resnet.middle_layer, torch.nn.ReLU)
    assert resnet(torch.zeros(1, 1, 192, 160)).shape == (1, 10)  # any input size, as pooled models


def test_weights_load_strictly_in_eval_mode(named):
    _, model = named
    assert not model.training
    assert model(torch.zeros(2, 1, 96, 96)).shape == (2, 10)


def test_trained_on_image_labels_it_recognizes_test_scenes(named, scenes):
    name, model = named
    batch = scenes.batch(range(len(scenes)))
    with torch.no_grad():
        scores = model(batch.images)
    assert mean_average_precision(scores, batch.labels) > MODELS[name][2]


def test_the_papers_fsp_raises_every_target_score(named, scenes):
    _, model = named
    batch = scenes.batch(range(8))
    targets = [int(c[0]) for c in batch.classes]
    state = FSP(model).select(batch.images, target=targets, updates=5, config="paper")
    first, last = state.target_scores[0], state.target_scores[-1]
    assert (last >= first).all() and (last > first).any()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_missing_weights_file_is_named(name, tmp_path):
    load, cls, _ = MODELS[name]
    with pytest.raises(FileNotFoundError, match="train_scene_model"):
        load(tmp_path / "none.pt")
    assert isinstance(load(None), cls)
