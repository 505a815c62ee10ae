"""Scores for attribution maps against ground truth (Secs. 4.3-4.5), and classifier mAP.

Every score takes plain maps, so Captum's methods are scored exactly like ours: a map is a
``(B, H, W)`` or ``(B, 1, H, W)`` tensor (an input attribution with several channels is
reduced with :func:`captum_feedback.energy_map` first). Boxes are ``(x1, y1, x2, y2)`` in
pixel-edge coordinates as in ``torchvision.ops``.
"""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou


def _maps(maps: Tensor) -> Tensor:
    if maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.dim() != 3:
        raise ValueError(
            f"Maps must be (B, H, W) or (B, 1, H, W), got shape {tuple(maps.shape)}; reduce colour "
            "channels with captum_feedback.energy_map first."
        )
    return maps.detach()


def _masks(masks: Tensor, maps: Tensor) -> Tensor:
    masks = masks[:, 0] if masks.dim() == 4 and masks.shape[1] == 1 else masks
    if masks.shape != maps.shape:
        raise ValueError(f"Masks of shape {tuple(masks.shape)} do not match maps of shape {tuple(maps.shape)}.")
    masks = masks.bool().to(maps.device)
    empty = (~masks.flatten(1).any(1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"Empty ground-truth mask for image(s) {empty.tolist()}: nothing to score against.")
    return masks


def dilate(masks: Tensor, pixels: int) -> Tensor:
    """Grow ``(B, H, W)`` boolean masks by a disk of radius ``pixels`` (Figs. 11-12)."""
    if pixels < 0:
        raise ValueError(f"Dilation must be >= 0 pixels, got {pixels}.")
    if pixels == 0:
        return masks
    grid = torch.arange(-pixels, pixels + 1, device=masks.device)
    disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= pixels**2).float()[None, None]
    grown = F.conv2d(masks.float()[:, None], disk, padding=pixels)
    return grown[:, 0] > 0


def boxes_to_masks(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """``(B, 4)`` boxes as ``(B, H, W)`` masks of the pixels they cover.

    Raises:
        ValueError: a box is empty or reaches outside the ``(H, W)`` image.
    """
    height, width = size
    boxes = boxes.reshape(-1, 4)
    _check_boxes(boxes, size)
    rows = torch.arange(height, device=boxes.device)[None, :, None] + 0.5
    cols = torch.arange(width, device=boxes.device)[None, None, :] + 0.5
    x1, y1, x2, y2 = (boxes[:, i, None, None] for i in range(4))
    return (cols > x1) & (cols < x2) & (rows > y1) & (rows < y2)


def _check_boxes(boxes: Tensor, size: Tuple[int, int]) -> None:
    height, width = size
    if len(boxes) == 0:
        return
    outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
    empty = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if outside.any():
        raise ValueError(f"Box {boxes[outside][0].tolist()} reaches outside the {height}x{width} image.")
    if empty.any():
        raise ValueError(f"Box {boxes[empty][0].tolist()} is empty (x2 <= x1 or y2 <= y1).")


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """Hits of the pointing game (Sec. 4.4.2, Table 2): the map's maximum falls inside the
    ground truth.

    Args:
        maps: Localization maps ``(B, H, W)`` or ``(B, 1, H, W)``.
        masks: The target's ground truth of the same size, boolean (boxes go through
            :func:`boxes_to_masks` first).
        tolerance: A hit may miss the mask by this many pixels; the paper uses 0, TorchRay's
            benchmark 15.

    Returns:
        ``(B,)`` bool tensor. A map with several maxima points at the first one (row-major),
        so a constant map scores like a guess at the top-left corner.
    """
    maps = _maps(maps)
    masks = dilate(_masks(masks, maps), tolerance)
    peak = maps.flatten(1).argmax(1)
    return masks.flatten(1).gather(1, peak[:, None])[:, 0]


def energy_coverage(maps: Tensor, masks: Tensor, dilation: int = 0) -> Tensor:
    """Coverage rate (Sec. 4.3, Figs. 11-12): the share of a map's energy inside the ground-truth
    mask, optionally dilated by ``dilation`` pixels (the paper reports 0, 5 and 10).

    Energy is the absolute value of the map. Returns ``(B,)`` floats in [0, 1]; a map with no
    energy at all has no coverage and scores NaN (a documented skip: average with ``nanmean``
    and count the NaNs).
    """
    maps = _maps(maps).abs()
    masks = dilate(_masks(masks, maps), dilation)
    total = maps.flatten(1).sum(1)
    inside = (maps * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(maps.dtype).tiny), torch.nan)


def box_accuracy(predicted: Tensor, truths: Sequence[Tensor], size: Tuple[int, int], threshold: float = 0.5
                 ) -> Tensor:
    """Box localization hits: a predicted box is correct when its IoU with one of the target's
    ground-truth boxes is at least ``threshold`` (0.5, the ILSVRC/VOC rule of Sec. 4.4.1).

    Args:
        predicted: ``(B, 4)`` boxes, one per image.
        truths: per image, the target's ground-truth boxes ``(K, 4)`` (at least one).
        size: the image ``(H, W)``; every box must lie inside it.
    """
    if len(truths) != len(predicted):
        raise ValueError(f"{len(predicted)} predicted boxes but ground truth for {len(truths)} images.")
    _check_boxes(predicted, size)
    hits = []
    for box, truth in zip(predicted, truths):
        truth = truth.reshape(-1, 4).to(box)
        if len(truth) == 0:
            raise ValueError("An image has no ground-truth box for its target.")
        _check_boxes(truth, size)
        hits.append(box_iou(box[None], truth).max() >= threshold)
    return torch.stack(hits) if hits else torch.zeros(0, dtype=torch.bool)


def confusion_matrix(predictions: Tensor, truths: Tensor, n_classes: int, ignore_index: int = 255) -> Tensor:
    """``(n_classes, n_classes)`` pixel counts, rows ground truth, columns prediction, for label
    maps ``(…, H, W)`` (0 = background, as Pascal VOC); pixels labelled ``ignore_index`` in the
    ground truth (VOC's object borders) are left out."""
    if predictions.shape != truths.shape:
        raise ValueError(f"Prediction shape {tuple(predictions.shape)} != ground-truth shape {tuple(truths.shape)}.")
    keep = truths != ignore_index
    truth, prediction = truths[keep].long(), predictions[keep].long()
    for name, labels in (("ground truth", truth), ("prediction", prediction)):
        if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
            raise ValueError(f"A {name} label lies outside [0, {n_classes}) (ignore_index={ignore_index}).")
    return torch.bincount(truth * n_classes + prediction, minlength=n_classes**2).reshape(n_classes, n_classes)


def mean_iou(confusion: Tensor) -> Tuple[float, Tensor]:
    """Pascal VOC's segmentation score from a :func:`confusion_matrix` summed over a data set:
    per-class IoU ``TP / (TP + FP + FN)``, background included, and their mean over the classes
    that occur in the ground truth or the predictions (others are NaN and skipped)."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.nan)
    if torch.isnan(iou).all():
        raise ValueError("The confusion matrix is empty: no pixels were scored.")
    return float(iou.nanmean()), iou


def mean_average_precision(scores: Tensor, labels: Tensor) -> float:
    """Mean over classes of the (non-interpolated) average precision of multi-label scores.

    Args:
        scores: ``(N, C)`` scores (logits or probabilities).
        labels: ``(N, C)`` 0/1 ground truth.

    Classes without a positive example are skipped; if no class has one, a ``ValueError``.
    """
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores and labels must both be (N, C), got {tuple(scores.shape)} and {tuple(labels.shape)}.")
    precisions = []
    for column, truth in zip(scores.T, labels.T.bool()):
        if not truth.any():
            continue
        hits = truth[column.argsort(descending=True)].float()
        precision_at_k = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
        precisions.append((precision_at_k * hits).sum() / hits.sum())
    if not precisions:
        raise ValueError("No class has a positive example: mAP is undefined.")
    return float(torch.stack(precisions).mean())


def map_cosine(maps: Tensor, others: Tensor) -> Tensor:
    """Cosine similarity of two maps of each image, e.g. of two classes in one image (Sec. 4.3:
    class-discriminative maps differ, so lower is better); ``(B,)``, NaN where a map is blank."""
    a, b = _maps(maps).flatten(1).double(), _maps(others).flatten(1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norms > 0, (a * b).sum(1) / norms.clamp_min(1e-300), torch.nan).to(maps.dtype)


def bootstrap_interval(numerators: Tensor, denominators: Tensor, draws: int = 1000, level: float = 0.95,
                       seed: int = 0) -> Tuple[float, float]:
    """A percentile bootstrap interval of ``sum(numerators) / sum(denominators)`` that resamples
    groups (scenes, grids, photos: units whose items are not independent) with replacement.

    Args:
        numerators: ``(G,)`` per group, e.g. the sum of its items' scores.
        denominators: ``(G,)`` per group, e.g. its number of items.
        draws: resamples.
        level: the interval's coverage.
        seed: the resampling's seed, so that a table is reproducible.

    Returns:
        ``(low, high)``; NaNs where there is no group.
    """
    numerators, denominators = numerators.double().flatten(), denominators.double().flatten()
    groups = len(numerators)
    if groups == 0:
        return math.nan, math.nan
    picks = torch.randint(0, groups, (draws, groups), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(draws, groups, dtype=torch.float64).scatter_add_(
        1, picks, torch.ones(draws, groups, dtype=torch.float64))
    stats = (counts @ numerators) / (counts @ denominators)
    stats = stats[stats.isfinite()]
    if not len(stats):
        return math.nan, math.nan
    low, high = torch.quantile(stats, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return low, high
