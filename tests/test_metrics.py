"""The scores of Secs. 4.3-4.5 on maps small enough to check by hand."""

import math

import pytest
import torch

from captum_feedback.wsol.metrics import (
    box_accuracy,
    boxes_to_masks,
    confusion_matrix,
    dilate,
    energy_coverage,
    mean_average_precision,
    mean_iou,
    pointing_game,
)


def square_mask(size=10, rows=slice(2, 5), cols=slice(3, 7)):
    mask = torch.zeros(1, size, size, dtype=torch.bool)
    mask[0, rows, cols] = True
    return mask


def test_pointing_game_hits_when_the_maximum_is_inside():
    maps = torch.zeros(2, 1, 10, 10)
    maps[0, 0, 3, 4] = 1.0  # inside
    maps[1, 0, 8, 8] = 1.0  # outside
    hits = pointing_game(maps, square_mask().expand(2, -1, -1))
    assert hits.tolist() == [True, False]


def test_pointing_game_tolerance_reaches_nearby_pixels():
    maps = torch.zeros(1, 10, 10)
    maps[0, 5, 4] = 1.0  # one row below the mask
    assert not pointing_game(maps, square_mask())[0]
    assert pointing_game(maps, square_mask(), tolerance=1)[0]


def test_coverage_is_the_share_of_energy_inside_the_mask():
    maps = torch.zeros(1, 10, 10)
    maps[0, 3, 4] = 3.0
    maps[0, 6, 4] = -1.0  # energy is absolute; two rows below the mask
    assert energy_coverage(maps, square_mask()).item() == pytest.approx(0.75)
    assert energy_coverage(maps, square_mask(), dilation=2).item() == pytest.approx(1.0)


def test_a_map_without_energy_has_no_coverage():
    assert math.isnan(energy_coverage(torch.zeros(1, 10, 10), square_mask()).item())


def test_dilation_grows_by_a_disk():
    grown = dilate(square_mask(rows=slice(5, 6), cols=slice(5, 6)), 2)
    assert grown.sum() == 13  # the pixels within distance 2 of one pixel
    with pytest.raises(ValueError, match=">= 0"):
        dilate(square_mask(), -1)


def test_ground_truth_must_match_and_not_be_empty():
    with pytest.raises(ValueError, match="Empty"):
        pointing_game(torch.rand(1, 10, 10), torch.zeros(1, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="do not match"):
        energy_coverage(torch.rand(1, 10, 10), square_mask(size=12))
    with pytest.raises(ValueError, match="energy_map"):
        pointing_game(torch.rand(1, 3, 10, 10), square_mask())


def test_boxes_cover_pixels_by_their_edges():
    mask = boxes_to_masks(torch.tensor([[3.0, 2.0, 7.0, 5.0]]), (10, 10))
    assert torch.equal(mask, square_mask())
    with pytest.raises(ValueError, match="outside"):
        boxes_to_masks(torch.tensor([[3.0, 2.0, 11.0, 5.0]]), (10, 10))
    with pytest.raises(ValueError, match="empty"):
        boxes_to_masks(torch.tensor([[3.0, 2.0, 3.0, 5.0]]), (10, 10))


def test_box_accuracy_uses_iou_at_one_half():
    truth = [torch.tensor([[0.0, 0.0, 4.0, 4.0], [6.0, 6.0, 10.0, 10.0]])] * 2
    predicted = torch.tensor([[0.0, 0.0, 4.0, 2.0], [6.0, 6.0, 10.0, 9.0]])  # IoU 0.5 and 0.75
    assert box_accuracy(predicted, truth, (10, 10)).tolist() == [True, True]
    assert box_accuracy(predicted, truth, (10, 10), threshold=0.6).tolist() == [False, True]
    with pytest.raises(ValueError, match="no ground-truth box"):
        box_accuracy(predicted[:1], [torch.zeros(0, 4)], (10, 10))
    with pytest.raises(ValueError, match="outside"):
        box_accuracy(predicted[:1], [torch.tensor([[0.0, 0.0, 12.0, 4.0]])], (10, 10))


def test_mean_iou_counts_background_and_skips_absent_classes():
    truth = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 255]])
    prediction = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 0]])
    confusion = confusion_matrix(prediction, truth, n_classes=4)
    assert confusion.sum() == 7  # the 255 pixel is ignored
    miou, per_class = mean_iou(confusion)
    assert per_class[:2].tolist() == pytest.approx([2 / 5, 2 / 4])
    assert per_class[2] == 0 and math.isnan(per_class[3])  # class 3 never occurs
    assert miou == pytest.approx((2 / 5 + 2 / 4 + 0) / 3)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(prediction, truth, n_classes=2)


def test_mean_average_precision():
    labels = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]])
    assert mean_average_precision(labels.float(), labels) == pytest.approx(1.0)
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.1], [0.7, 0.0], [0.1, 0.2]])
    # class 0: hits at ranks 1 and 3 -> (1 + 2/3) / 2; class 1: its positive ranks 2nd -> 1/2
    assert mean_average_precision(scores, labels) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    with pytest.raises(ValueError, match="positive"):
        mean_average_precision(scores, torch.zeros(4, 2))


def test_bootstrap_interval_resamples_groups():
    from captum_feedback.wsol.metrics import bootstrap_interval

    same = bootstrap_interval(torch.full((5,), 3.0), torch.ones(5))
    assert same == pytest.approx((3.0, 3.0))
    sums, sizes = torch.tensor([0.0, 4.0, 1.0, 3.0]), torch.tensor([1.0, 4.0, 1.0, 4.0])
    low, high = bootstrap_interval(sums, sizes)
    assert low < float(sums.sum() / sizes.sum()) < high
    assert bootstrap_interval(sums, sizes) == (low, high)  # seeded
    assert all(math.isnan(v) for v in bootstrap_interval(torch.zeros(0), torch.zeros(0)))
