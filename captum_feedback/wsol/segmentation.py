"""Weakly supervised semantic segmentation from energy maps (Sec. 4.5, Procedure 2).

The paper regularizes the Summation-FSP-FR energy over superpixels (it used structured-forest
edges, ref. [42]; here scikit-image's SLIC) and segments with the saliency cut of ref. [41], an
iterated GrabCut (here OpenCV's ``cv2.grabCut``) seeded from the energy map. Images with
several classes get one map per class; where masks overlap, the class with more energy wins.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from captum_feedback.core.config import ConfigLike
from captum_feedback.wsol.pipeline import FeedbackPipeline


def _check_images(images: Tensor) -> None:
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Images must be (B, 1, H, W) or (B, 3, H, W), got shape {tuple(images.shape)}.")


def _rgb_uint8(image: Tensor) -> np.ndarray:
    """A ``(C, H, W)`` image in [0, 1] as the ``(H, W, 3)`` uint8 array OpenCV expects."""
    array = (image.detach().float().clamp(0, 1) * 255).round().byte().cpu().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array)


def superpixels(images: Tensor, n_segments: int = 200, compactness: float = 10.0) -> Tensor:
    """SLIC superpixels (``skimage.segmentation.slic``) of ``(B, C, H, W)`` images in [0, 1],
    as ``(B, H, W)`` long labels, the stand-in for the paper's structured-forest edges [42]."""
    from skimage.segmentation import slic

    _check_images(images)
    return torch.stack([
        torch.from_numpy(slic(_rgb_uint8(image), n_segments=n_segments, compactness=compactness, start_label=0)).long()
        for image in images
    ])


def superpixel_regularize(maps: Tensor, labels: Tensor) -> Tensor:
    """Every pixel takes the mean energy of its superpixel (Procedure 2, step 5), which snaps
    the energy's blurred borders (the "dilation around object edges" of Sec. 4.5) to image edges.

    Args:
        maps: ``(B, H, W)`` or ``(B, K, H, W)`` energy maps (``K`` maps per image share its
            superpixels).
        labels: ``(B, H, W)`` superpixel labels, from :func:`superpixels`.

    Returns:
        The regularized maps, shaped as ``maps``.
    """
    squeeze = maps.dim() == 3
    maps = maps[:, None] if squeeze else maps
    if maps.shape[0] != labels.shape[0] or maps.shape[-2:] != labels.shape[-2:]:
        raise ValueError(f"Maps of shape {tuple(maps.shape)} do not match superpixels of shape {tuple(labels.shape)}.")
    out = torch.empty_like(maps)
    for i, image_labels in enumerate(labels.to(maps.device)):
        flat = image_labels.flatten()
        count = torch.bincount(flat).clamp_min(1).to(maps.dtype)
        sums = torch.zeros(maps.shape[1], len(count), dtype=maps.dtype, device=maps.device)
        sums.index_add_(1, flat, maps[i].flatten(1))
        out[i] = (sums / count)[:, flat].view_as(maps[i])
    return out[:, 0] if squeeze else out


GMM_COMPONENTS = 5
"""The Gaussians of each of GrabCut's two colour models (OpenCV's fixed number)."""


def saliency_cut(image: Tensor, energy: Tensor, foreground: float = 0.5, background: float = 0.15,
                 iterations: int = 3, max_side: int = 512) -> Tensor:
    """Segment one object with GrabCut seeded from an energy map (ref. [41], Procedure 2, step 6).

    With the energy scaled to a maximum of 1, pixels above ``foreground`` are sure foreground,
    pixels above ``background`` probable foreground, the rest probable background, and the
    pixels without any energy sure background; GrabCut then fits colour models to both sides.

    The work is bounded: GrabCut runs on the image and seed shrunk to at most ``max_side``
    pixels a side (the mask is scaled back), and where a side has fewer distinct colours than
    its colour model has Gaussians (a uniform photo), the colour models cannot be fitted --
    OpenCV's GrabCut then never ends -- and the thresholded seed is returned.

    Args:
        image: ``(C, H, W)`` image in [0, 1].
        energy: ``(H, W)`` energy map of the object.

    Returns:
        ``(H, W)`` bool mask, the same for the same image and map whatever ran before (OpenCV's
        generator is seeded for each cut). A map without energy gives an empty mask; when
        GrabCut has no pixels on one side to learn from, the thresholded seed is returned.
    """
    import cv2

    if not 0 <= background <= foreground <= 1:
        raise ValueError(f"Need 0 <= background <= foreground <= 1, got {background} and {foreground}.")
    energy = energy.detach().float().abs().cpu()
    if energy.max() <= 0:
        return torch.zeros(energy.shape, dtype=torch.bool)
    scaled = (energy / energy.max()).numpy()
    seed = np.full(scaled.shape, cv2.GC_PR_BGD, np.uint8)
    seed[scaled <= 0] = cv2.GC_BGD
    seed[scaled > background] = cv2.GC_PR_FGD
    seed[scaled > foreground] = cv2.GC_FGD
    seeded_foreground = np.isin(seed, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if seeded_foreground.all() or not seeded_foreground.any():
        return torch.from_numpy(seeded_foreground)
    height, width = seed.shape
    shrink = min(1.0, max_side / max(height, width))
    size = (max(1, round(width * shrink)), max(1, round(height * shrink)))  # OpenCV's (width, height)
    pixels = cv2.resize(_rgb_uint8(image), size, interpolation=cv2.INTER_AREA) if shrink < 1 else _rgb_uint8(image)
    mask = cv2.resize(seed, size, interpolation=cv2.INTER_NEAREST) if shrink < 1 else seed.copy()
    inside = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
    if min(_colours(pixels[inside]), _colours(pixels[~inside])) < GMM_COMPONENTS:
        return torch.from_numpy(seeded_foreground)
    models = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means starts from OpenCV's global generator: the same cut, whatever ran before
    cv2.grabCut(pixels, mask, None, *models, iterations, cv2.GC_INIT_WITH_MASK)
    cut = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    if shrink < 1:
        cut = cv2.resize(cut, (width, height), interpolation=cv2.INTER_NEAREST)
    return torch.from_numpy(cut.astype(bool))


def _colours(pixels: np.ndarray) -> int:
    """The number of distinct colours among the first 100,000 of ``(N, 3)`` pixels."""
    packed = pixels[:100_000].astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])
    return len(np.unique(packed))


def segment(images: Tensor, maps: Sequence[Tensor], classes: Sequence[Tensor], regularize: bool = True,
            n_segments: int = 200, superpixel_labels: Optional[Tensor] = None, **cut_kwargs: Any) -> Tensor:
    """Label maps from per-class energy maps (Procedure 2, steps 5-6), for any attribution method.

    Args:
        images: ``(B, C, H, W)`` images in [0, 1].
        maps: per image, ``(K, H, W)`` energy maps of its ``K`` classes.
        classes: per image, the ``(K,)`` class indices those maps are for.
        regularize: average the energy over superpixels first (step 5).
        n_segments: SLIC superpixels per image.
        superpixel_labels: ``(B, H, W)`` superpixels from :func:`superpixels`, to reuse them
            when segmenting the same images with several methods' maps.
        **cut_kwargs: :func:`saliency_cut`'s thresholds and iterations.

    Returns:
        ``(B, H, W)`` long label maps: 0 is background and class ``c`` is ``c + 1``, as in
        Pascal VOC. Where two classes' masks overlap, the one with more energy there wins.
    """
    _check_images(images)
    if not len(images) == len(maps) == len(classes):
        raise ValueError(f"{len(images)} images, {len(maps)} sets of maps and {len(classes)} sets of classes.")
    if regularize and superpixel_labels is None:
        superpixel_labels = superpixels(images, n_segments)
    labels = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long)
    for i, (image, class_maps, image_classes) in enumerate(zip(images, maps, classes)):
        class_maps = class_maps.detach().float().cpu().abs()
        if class_maps.dim() != 3 or class_maps.shape[0] != len(image_classes):
            raise ValueError(f"Image {i}: need one (H, W) map per class, got maps {tuple(class_maps.shape)} "
                             f"for {len(image_classes)} classes.")
        if regularize:
            class_maps = superpixel_regularize(class_maps[None], superpixel_labels[i:i + 1])[0]
        masks = torch.stack([saliency_cut(image, energy, **cut_kwargs) for energy in class_maps])
        scaled = class_maps / class_maps.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        winner = torch.where(masks, scaled, -1.0).argmax(0)
        labels[i] = torch.where(masks.any(0), torch.as_tensor(image_classes).cpu().long()[winner] + 1, 0)
    return labels


def feedback_segmentation(model: nn.Module, layer: nn.Module, inputs: Tensor, classes: Sequence[Tensor],
                          images: Optional[Tensor] = None, n_segments: int = 200, config: ConfigLike = None) -> Tensor:
    """Procedure 2 end to end: for each image and each of its classes, the Summation-FSP-FR
    energy map (FSP, then FR from the neurons FSP kept at ``layer``), then :func:`segment`.

    Args:
        model: A classifier trained on image-level labels.
        layer: The middle layer of the FSP-FR map (the paper's ``conv5_2``).
        inputs: ``(B, C, H, W)`` model inputs.
        classes: per image, the classes to segment (ground truth or predicted labels).
        images: the images in [0, 1] for superpixels and GrabCut, if ``inputs`` are normalized
            otherwise.
        config: The pipeline's configuration (a preset name or a
            :class:`~captum_feedback.FeedbackConfig`).

    Returns:
        ``(B, H, W)`` label maps, 0 = background, class ``c`` = ``c + 1``.
    """
    images = inputs if images is None else images
    owners: List[int] = [i for i, image_classes in enumerate(classes) for _ in image_classes]
    if not owners:
        return torch.zeros(inputs.shape[0], *inputs.shape[-2:], dtype=torch.long)
    targets = [int(c) for image_classes in classes for c in image_classes]
    maps = FeedbackPipeline(model, layer, config).energy_maps(inputs[owners], targets)
    per_image = torch.split(maps.summation_fsp_fr[:, 0], [len(c) for c in classes])
    return segment(images, per_image, classes, n_segments=n_segments)
