"""The packaged cluttered-scene VGG: real trained weights, and FSP behaving on them."""

import pytest
import torch

from captum_feedback import FSP
from captum_feedback.data import ClutteredScenes
from captum_feedback.models.cluttered_vgg import ClutteredVGG, cluttered_vgg
from captum_feedback.wsol.metrics import mean_average_precision


@pytest.fixture(scope="module")
def model():
    return cluttered_vgg()


@pytest.fixture(scope="module")
def scenes():
    return ClutteredScenes("test", length=300, seed=0)


def test_weights_load_strictly_into_a_vgg_style_network(model):
    assert not model.training
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 4
    assert isinstance(model.middle_layer, torch.nn.ReLU)
    assert model(torch.zeros(2, 1, 96, 96)).shape == (2, 10)


def test_trained_on_image_labels_it_recognizes_test_scenes(model, scenes):
    batch = scenes.batch(range(len(scenes)))
    with torch.no_grad():
        scores = model(batch.images)
    assert mean_average_precision(scores, batch.labels) > 0.8  # 0.859 on 1,000 scenes; chance is about 0.2


def test_the_papers_fsp_raises_every_target_score(model, scenes):
    batch = scenes.batch(range(8))
    targets = [int(c[0]) for c in batch.classes]
    state = FSP(model).select(batch.images, target=targets, iterations=5, config="paper")
    first, last = state.target_scores[0], state.target_scores[-1]
    assert (last >= first).all() and (last > first).any()


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_cluttered_vgg"):
        cluttered_vgg(tmp_path / "none.pt")
    assert isinstance(cluttered_vgg(None), ClutteredVGG)
