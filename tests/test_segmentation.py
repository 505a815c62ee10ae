"""Procedure 2: superpixel regularization, saliency cut, and one label map per image."""

import cv2
import numpy as np
import pytest
import torch
from nets import VGGish, seeded

from captum_feedback.core.config import resolve_config
from captum_feedback.data import ClutteredScenes
from captum_feedback.wsol.segmentation import (
    feedback_segmentation,
    saliency_cut,
    segment,
    superpixel_regularize,
    superpixels,
)


def two_squares(size=48):
    """A dark textured image with a bright square on the left and a grey one on the right."""
    torch.manual_seed(0)
    image = 0.1 * torch.rand(1, 3, size, size)
    image[0, :, 12:28, 6:20] = 0.9
    image[0, :, 16:32, 30:44] = 0.55
    return image


def blob(size, rows, cols, value=1.0):
    energy = torch.zeros(size, size)
    energy[rows, cols] = value
    return energy


def iou(a, b):
    return ((a & b).sum() / (a | b).sum()).item()


def test_regularized_energy_is_constant_on_each_superpixel_and_keeps_its_mean():
    image = two_squares()
    labels = superpixels(image, n_segments=30)
    energy = torch.rand(1, 2, 48, 48)
    smooth = superpixel_regularize(energy, labels)
    for label in labels.unique():
        region = labels[0] == label
        for k in range(2):
            values = smooth[0, k][region]
            assert torch.allclose(values, values[0].expand_as(values))
            assert values[0] == pytest.approx(energy[0, k][region].mean().item(), rel=1e-5)


def test_saliency_cut_snaps_a_blurred_energy_blob_to_the_object():
    image = two_squares()
    truth = torch.zeros(48, 48, dtype=torch.bool)
    truth[12:28, 6:20] = True
    energy = blob(48, slice(9, 31), slice(3, 23))  # dilated by three pixels all round
    energy[12:28, 6:20] = 2.0  # and strongest on the object
    mask = saliency_cut(image[0], energy)
    assert iou(mask, truth) > 0.9


def test_saliency_cut_of_a_uniform_photo_ends_at_once_with_the_seed():
    """OpenCV's GrabCut never returns when a side has too few colours for its model (issue #23:
    a white photo ran for ten minutes); the thresholded seed is the answer there."""
    import time

    white = torch.ones(3, 480, 640)
    energy = torch.full((480, 640), 0.1)
    energy[100:300, 200:400] = 1.0  # every pixel has energy: no sure background
    start = time.perf_counter()
    mask = saliency_cut(white, energy)
    assert time.perf_counter() - start < 5
    assert torch.equal(mask, energy > 0.15)


def test_saliency_cut_of_a_large_photo_runs_at_a_bounded_size_and_answers_at_the_photo_s():
    image = torch.nn.functional.interpolate(two_squares(), size=(1200, 1200), mode="nearest")[0]
    truth = torch.zeros(1200, 1200, dtype=torch.bool)
    truth[300:700, 150:500] = True
    energy = blob(1200, slice(225, 775), slice(75, 575))
    energy[300:700, 150:500] = 2.0
    mask = saliency_cut(image, energy, max_side=300)
    assert mask.shape == (1200, 1200) and iou(mask, truth) > 0.85


def test_saliency_cut_is_the_same_whatever_used_opencv_s_generator_before():
    """GrabCut's colour models start from OpenCV's global generator; a benchmark's mIoU must not
    depend on which methods were segmented before."""
    scene = ClutteredScenes("test", length=1, seed=0).batch([0])
    torch.manual_seed(0)
    energy = torch.nn.functional.avg_pool2d(scene.masks[0][:1].float(), 9, 1, 4)[0] + 0.3 * torch.rand(96, 96)
    cuts = []
    for draws in range(1, 40, 3):
        cv2.randu(np.zeros((draws, 3)), 0, 1)
        cuts.append(saliency_cut(scene.images[0], energy))
    assert all(torch.equal(cut, cuts[0]) for cut in cuts)


def test_saliency_cut_of_a_map_without_energy_is_empty():
    assert not saliency_cut(two_squares()[0], torch.zeros(48, 48)).any()
    with pytest.raises(ValueError, match="background"):
        saliency_cut(two_squares()[0], torch.rand(48, 48), foreground=0.2, background=0.5)


def test_segment_labels_classes_and_lets_the_stronger_energy_win_an_overlap():
    image = two_squares()
    left = blob(48, slice(12, 28), slice(6, 20))
    right = blob(48, slice(16, 32), slice(30, 44))
    wide = blob(48, slice(12, 32), slice(6, 44), 0.3)  # weak energy over both squares
    labels = segment(image, [torch.stack([left + wide, right])], [torch.tensor([4, 7])], regularize=False)
    assert labels.shape == (1, 48, 48)
    assert labels[0, 20, 12] == 5 and labels[0, 24, 37] == 8  # class c is labelled c + 1
    assert labels[0, 2, 2] == 0  # background


def test_segment_checks_its_inputs():
    with pytest.raises(ValueError, match="Images"):
        segment(torch.rand(3, 48, 48), [torch.rand(1, 48, 48)], [torch.tensor([0])])
    with pytest.raises(ValueError, match="one \\(H, W\\) map per class"):
        segment(two_squares(), [torch.rand(2, 48, 48)], [torch.tensor([0])])
    with pytest.raises(ValueError, match="sets of maps"):
        segment(two_squares(), [], [torch.tensor([0])])


def test_feedback_segmentation_gives_one_label_map_per_image():
    model = seeded(VGGish())
    images = torch.rand(2, 3, 16, 16)
    labels = feedback_segmentation(model, model.features[3], images, [torch.tensor([1, 2]), torch.tensor([4])],
                                   n_segments=10, config=resolve_config("paper", updates=2))
    assert labels.shape == (2, 16, 16)
    assert set(labels[0].unique().tolist()) <= {0, 2, 3} and set(labels[1].unique().tolist()) <= {0, 5}
