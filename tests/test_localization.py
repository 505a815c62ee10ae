"""The 99%-energy box and the two-stage localization of Procedure 1."""

import pytest
import torch
from nets import VGGish, seeded
from test_errors import assert_untouched, snapshot

from captum_feedback.core.config import resolve_config
from captum_feedback.wsol.localization import _uncrop, crop_and_resize, energy_box, two_stage_localization


def test_energy_box_gives_up_a_faint_speck_far_away():
    maps = torch.zeros(1, 1, 20, 20)
    maps[0, 0, 4:9, 6:15] = 1.0  # 45 units of energy
    maps[0, 0, 19, 19] = 0.2  # 0.4 % of the energy, in the far corner
    assert energy_box(maps).tolist() == [[6.0, 4.0, 15.0, 9.0]]
    assert energy_box(maps, fraction=1.0).tolist() == [[6.0, 4.0, 20.0, 20.0]]


def test_energy_box_keeps_the_asked_share_of_energy():
    maps = torch.rand(3, 32, 32) ** 4
    for fraction in (0.5, 0.9, 0.99):
        for energy, (x1, y1, x2, y2) in zip(maps, energy_box(maps, fraction).long().tolist()):
            assert energy[y1:y2, x1:x2].sum() >= fraction * energy.sum() * (1 - 1e-6)


def test_a_map_without_energy_boxes_the_whole_image():
    assert energy_box(torch.zeros(1, 8, 6)).tolist() == [[0.0, 0.0, 6.0, 8.0]]


def test_energy_box_checks_its_arguments():
    with pytest.raises(ValueError, match="fraction"):
        energy_box(torch.rand(1, 8, 8), fraction=0)
    with pytest.raises(ValueError, match="shape"):
        energy_box(torch.rand(8, 8))


def test_crops_map_back_into_the_image():
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    outer = torch.tensor([[0.0, 0.0, 16.0, 16.0], [4.0, 2.0, 12.0, 10.0]])
    crops = crop_and_resize(images, outer)
    assert torch.allclose(crops[0], images[0])  # the whole image is the image
    inner = torch.tensor([[0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 8.0, 8.0]])
    assert _uncrop(inner, outer, (16, 16)).tolist() == [[0.0, 0.0, 16.0, 16.0], [4.0, 2.0, 8.0, 6.0]]


def test_two_stage_localization_returns_boxes_inside_the_image_and_leaves_the_model_alone():
    model = seeded(VGGish())
    before = snapshot(model)
    images = torch.rand(2, 3, 16, 16)
    config = resolve_config("paper", updates=2)
    located = two_stage_localization(model, model.features[3], images, target=[1, 3], config=config)
    assert located.boxes.shape == located.coarse_boxes.shape == (2, 4)
    for box, coarse in zip(located.boxes, located.coarse_boxes):  # the fine box lies in the coarse one
        assert coarse[0] - 1e-4 <= box[0] < box[2] <= coarse[2] + 1e-4
        assert coarse[1] - 1e-4 <= box[1] < box[3] <= coarse[3] + 1e-4
    assert located.coarse_map.shape == located.fine_map.shape == (2, 1, 16, 16)
    assert_untouched(model, before)
