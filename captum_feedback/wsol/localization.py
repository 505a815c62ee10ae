"""Weakly supervised object localization from energy maps (Sec. 4.4.1, Procedure 1)."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from captum_feedback.core._compat import TargetType, per_sample_targets
from captum_feedback.core.config import ConfigLike
from captum_feedback.wsol.energy import energy_map
from captum_feedback.wsol.pipeline import FeedbackPipeline


def energy_box(maps: Tensor, fraction: float = 0.99) -> Tensor:
    """The bounding box that keeps ``fraction`` of each map's energy (Procedure 1, steps 3 and 7).

    Starting from the whole image, the box repeatedly gives up whichever outer row or column
    (top, bottom, left or right) holds the least energy, as long as what stays inside still
    holds ``fraction`` of the total; energy is the absolute map value. The result is a small
    box (a greedy stand-in for the smallest one) rather than the whole image, which the paper
    warns against.

    Args:
        maps: ``(B, H, W)`` or ``(B, 1, H, W)`` energy maps.
        fraction: Share of the energy to keep, in (0, 1]; the paper uses 0.99.

    Returns:
        ``(B, 4)`` float boxes ``(x1, y1, x2, y2)`` in pixel-edge coordinates (``torchvision.ops``).
        A map without energy gets the whole image.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}.")
    maps = maps[:, 0] if maps.dim() == 4 and maps.shape[1] == 1 else maps
    if maps.dim() != 3:
        raise ValueError(f"Energy maps must be (B, H, W) or (B, 1, H, W), got shape {tuple(maps.shape)}.")
    return torch.stack([_trim(m.detach().abs().double().cpu(), fraction) for m in maps]).to(maps.device)


def _trim(energy: Tensor, fraction: float) -> Tensor:
    height, width = energy.shape
    padded = torch.zeros(height + 1, width + 1, dtype=energy.dtype)
    padded[1:, 1:] = energy.cumsum(0).cumsum(1)
    table = padded.tolist()  # Python floats: the greedy loop reads four sums a step

    def inside(y1: int, x1: int, y2: int, x2: int) -> float:
        return table[y2][x2] - table[y1][x2] - table[y2][x1] + table[y1][x1]

    box = [0, 0, height, width]  # y1, x1, y2, x2
    if table[-1][-1] <= 0:
        return torch.tensor([0, 0, width, height], dtype=torch.float32)
    need = fraction * table[-1][-1] * (1 - 1e-9)
    while True:
        y1, x1, y2, x2 = box
        candidates = []
        if y2 - y1 > 1:
            candidates += [(inside(y1 + 1, x1, y2, x2), [y1 + 1, x1, y2, x2]),
                           (inside(y1, x1, y2 - 1, x2), [y1, x1, y2 - 1, x2])]
        if x2 - x1 > 1:
            candidates += [(inside(y1, x1 + 1, y2, x2), [y1, x1 + 1, y2, x2]),
                           (inside(y1, x1, y2, x2 - 1), [y1, x1, y2, x2 - 1])]
        kept, smaller = max(candidates, key=lambda c: c[0], default=(-1.0, box))
        if kept < need or smaller is box:
            y1, x1, y2, x2 = box
            return torch.tensor([x1, y1, x2, y2], dtype=torch.float32)
        box = smaller


class Localization(NamedTuple):
    """The two stages of Procedure 1, each ``(B, 4)`` boxes in the original image's pixels, and
    the energy maps they came from (``coarse_map`` on the image, ``fine_map`` on the crop)."""

    boxes: Tensor
    coarse_boxes: Tensor
    coarse_map: Tensor
    fine_map: Tensor


def crop_and_resize(images: Tensor, boxes: Tensor, size: Optional[tuple] = None) -> Tensor:
    """Each image's box cut out and resized bilinearly to ``size`` (default: the image size);
    one bilinear sample per output pixel, as crops are never larger than the image."""
    size = tuple(size or images.shape[-2:])
    return roi_align(images, [b[None].to(images) for b in boxes], output_size=size, spatial_scale=1.0,
                     sampling_ratio=1, aligned=True)


def _uncrop(inner: Tensor, outer: Tensor, size: tuple) -> Tensor:
    """Boxes found in crops resized to ``size`` mapped back into the original image."""
    height, width = size
    scale = torch.stack([(outer[:, 2] - outer[:, 0]) / width, (outer[:, 3] - outer[:, 1]) / height], 1).repeat(1, 2)
    return inner * scale + outer[:, :2].repeat(1, 2)


def two_stage_localization(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    target: TargetType,
    additional_forward_args: Any = None,
    fraction: float = 0.99,
    config: ConfigLike = None,
) -> Localization:
    r"""Procedure 1: localize the target class with a classifier trained on image labels only.

    1. FSP for the target; the Summation Energy Map (Sec. 4.3) gives a first box keeping
       ``fraction`` of its energy;
    2. that box is cropped and resized to the input size, FSP runs again on the crop, and the
       neurons it keeps at ``layer`` (the paper's ``conv5_2``) are propagated to the input with
       FR (the FSP-FR energy map);
    3. the box keeping ``fraction`` of that map's energy, mapped back to the original image.

    Args:
        model: The classifier.
        layer: The middle layer for FSP-FR (e.g. ``ClutteredVGG.middle_layer``).
        images: ``(B, C, H, W)`` inputs as the model takes them.
        target: The class to localize, any Captum target form.
        additional_forward_args: Passed to the model, as in Captum.
        fraction: Share of energy the boxes keep (0.99 in the paper).
        config: The pipeline's configuration, for both FSP runs and the FR pass (a preset name
            or a :class:`~captum_feedback.FeedbackConfig`).
    """
    if images.dim() != 4:
        raise ValueError(f"Images must be (B, C, H, W), got shape {tuple(images.shape)}.")
    size = tuple(images.shape[-2:])
    targets = per_sample_targets(target, len(images))
    pipeline = FeedbackPipeline(model, layer, config)
    coarse_map = pipeline.summation(images, targets, additional_forward_args)
    coarse = energy_box(coarse_map, fraction)
    crops = crop_and_resize(images, coarse)
    fine_state = pipeline.select(crops, targets, additional_forward_args, keep_cws=False)
    fine_map = energy_map(pipeline.fsp_fr(crops, fine_state, additional_forward_args))
    boxes = _uncrop(energy_box(fine_map, fraction), coarse, size)
    return Localization(boxes, coarse, coarse_map, fine_map)
