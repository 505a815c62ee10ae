"""Faithfulness of a map to the model: deletion and insertion (Petsiuk et al., "RISE", BMVC 2018).

A map says which pixels matter for the target. Deletion removes pixels in the map's order, most
important first (each removed pixel takes the baseline's value) and follows the target's
probability as it falls; insertion starts from a blurred copy of the image and puts the pixels
back in the same order. The scores are the areas under those curves over the share of pixels
changed, in [0, 1]: low for deletion and high for insertion mean the map found what the model
uses. Both are measures of the model's behaviour, not of where the object is, so they stand
beside the localization scores (:mod:`captum_feedback.wsol.metrics`) rather than replace them.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

Probability = Callable[[Tensor], Tensor]
"""The model's outputs ``(B, n)`` to the probabilities the curves follow (``softmax`` for one
label per image, ``sigmoid`` for multi-label models)."""


def pixel_order(maps: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(B, H * W)``: per map, its pixels from the most to the least important. Ties (a map
    that is zero over a region, as rectified maps are) are broken at random, with ``generator``,
    so that they carry no order of their own (row-major order would delete the top rows first)."""
    flat = maps.detach().float().flatten(1)
    noise = torch.rand(flat.shape, generator=generator).to(flat.device)
    ranks = torch.argsort(noise, dim=1)  # a random permutation, then a stable sort by value
    return ranks.gather(1, torch.argsort(flat.gather(1, ranks), dim=1, descending=True, stable=True))


def blurred(inputs: Tensor, kernel: int = 11, sigma: float = 5.0) -> Tensor:
    """The insertion's start: the image blurred as in RISE (a Gaussian of ``sigma`` pixels, its
    kernel at most as wide as reflecting the image's border allows)."""
    kernel = min(kernel, 2 * min(inputs.shape[-2:]) - 1)
    return gaussian_blur(inputs, [kernel, kernel], [sigma, sigma])


def deletion_insertion(
    model: Callable[[Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    maps: Tensor,
    steps: int = 16,
    probability: Probability = lambda logits: logits.softmax(1),
    baseline: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor]:
    """The deletion and insertion scores of maps (RISE).

    Args:
        model: The classifier (model input to outputs).
        inputs: ``(B, C, H, W)`` model inputs.
        targets: ``(B,)`` the class each map explains.
        maps: ``(B, 1, H, W)`` maps of the inputs' size (larger means more important).
        steps: The curves' points after the first: each step changes ``H * W / steps`` pixels.
        probability: The model's outputs to the probabilities followed (default softmax).
        baseline: What deleted pixels become (default zeros in the model's input space:
            the mean image for a normalized model).
        generator: Breaks ties between equal map values (:func:`pixel_order`).

    Returns:
        ``(deletion, insertion)``, each ``(B,)``: the areas under the target's probability
        over the share of pixels deleted (lower is better) and inserted (higher is better),
        by the trapezoidal rule.
    """
    if maps.shape[0] != inputs.shape[0] or maps.shape[-2:] != inputs.shape[-2:]:
        raise ValueError(f"Maps {tuple(maps.shape)} must match the inputs {tuple(inputs.shape)} in batch and size.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    baseline = torch.zeros_like(inputs) if baseline is None else baseline.expand_as(inputs)
    order = pixel_order(maps, generator)
    curves = [_curve(model, inputs, baseline, order, targets, steps, probability),
              _curve(model, blurred(inputs), inputs, order, targets, steps, probability)]
    return tuple(torch.trapezoid(curve, dx=1.0 / steps, dim=1) for curve in curves)  # type: ignore[return-value]


def _curve(model: Callable[[Tensor], Tensor], start: Tensor, end: Tensor, order: Tensor, targets: Tensor,
           steps: int, probability: Probability) -> Tensor:
    """``(B, steps + 1)``: the target's probability as the pixels of ``order`` turn from
    ``start``'s values to ``end``'s, ``0, 1/steps, ..., 1`` of them."""
    batch, channels, height, width = start.shape
    pixels = height * width
    counts = [round(pixels * k / steps) for k in range(steps + 1)]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels, device=order.device).expand_as(order))
    points = []
    with torch.no_grad():
        for count in counts:
            changed = (rank < count).view(batch, 1, height, width)
            logits = model(torch.where(changed, end, start))
            points.append(probability(logits).gather(1, targets.view(-1, 1).to(logits.device))[:, 0].float())
    return torch.stack(points, 1).cpu()
