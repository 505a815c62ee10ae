"""Deletion and insertion (RISE) on a model small enough to compute the curves by hand."""

import pytest
import torch

from captum_feedback.wsol.faithfulness import blurred, deletion_insertion, pixel_order


def corner_model(x):
    """One output, the value of the top-left pixel: only that pixel matters."""
    return x[:, 0, 0, 0][:, None]


def identity(outputs):
    return outputs


def corner_first(size=4):
    maps = torch.zeros(1, 1, size, size)
    maps[0, 0, 0, 0] = 1.0
    return maps


def test_deleting_the_only_pixel_that_matters_first_gives_the_smallest_area():
    x = torch.ones(1, 1, 4, 4)
    first, _ = deletion_insertion(corner_model, x, torch.tensor([0]), corner_first(), steps=4, probability=identity)
    last, _ = deletion_insertion(corner_model, x, torch.tensor([0]), 1 - corner_first(), steps=4,
                                 probability=identity)
    # curves 1, 0, 0, 0, 0 and 1, 1, 1, 1, 0 over four steps of a quarter
    assert first.item() == pytest.approx(0.25 * 0.5)
    assert last.item() == pytest.approx(0.25 * (0.5 + 3))


def test_insertion_starts_from_the_blurred_image():
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = 1.0
    start = blurred(x)[0, 0, 0, 0].item()
    _, inserted = deletion_insertion(corner_model, x, torch.tensor([0]), corner_first(), steps=4,
                                     probability=identity)
    assert 0 < start < 1
    assert inserted.item() == pytest.approx(0.25 * (0.5 * start + 3 + 0.5))


def test_ties_are_broken_at_random_but_reproducibly():
    flat = torch.zeros(1, 1, 8, 8)
    orders = [pixel_order(flat, torch.Generator().manual_seed(seed)) for seed in (0, 0, 1)]
    assert torch.equal(orders[0], orders[1]) and not torch.equal(orders[0], orders[2])
    assert not torch.equal(orders[0], torch.arange(64)[None])  # not row-major
    ranked = torch.arange(64.0).view(1, 1, 8, 8)
    assert torch.equal(pixel_order(ranked), torch.arange(63, -1, -1)[None])


def test_maps_must_match_the_inputs():
    with pytest.raises(ValueError, match="must match the inputs"):
        deletion_insertion(corner_model, torch.ones(2, 1, 4, 4), torch.tensor([0, 0]), corner_first())
