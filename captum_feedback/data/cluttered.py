"""Cluttered Fashion-MNIST scenes: several items on a cluttered canvas, with exact masks.

A deterministic stand-in for Pascal VOC that can be built offline: each scene holds 1 to 3
Fashion-MNIST items of different classes, rescaled and placed without overlapping on a canvas
strewn with fragments of other items. The classifier trains on the image-level labels only;
the per-item masks and boxes are kept for scoring localization and segmentation (Secs. 4.3-4.5).
Scene ``i`` of a split is a pure function of ``(split, seed, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from skimage.transform import resize
from torch import Tensor

from captum_feedback.data.fashion_mnist import CLASSES, load_fashion_mnist

_SPLIT_KEY = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Scene:
    """One cluttered scene.

    Attributes:
        image: ``(1, H, W)`` float tensor in [0, 1].
        labels: ``(n_classes,)`` multi-hot float tensor: the image-level labels.
        classes: ``(K,)`` long tensor, the class of each item.
        masks: ``(K, H, W)`` bool tensor, the exact pixels of each item.
        boxes: ``(K, 4)`` float tensor ``(x1, y1, x2, y2)``, pixel edges as in ``torchvision.ops``
            (an item covering columns 3..9 has ``x1 = 3, x2 = 10``).
    """

    image: Tensor
    labels: Tensor
    classes: Tensor
    masks: Tensor
    boxes: Tensor

    @property
    def label_map(self) -> Tensor:
        """``(H, W)`` long segmentation ground truth: 0 is background, class ``c`` is ``c + 1``
        (Pascal VOC's convention, as :func:`captum_feedback.wsol.segmentation.segment` returns)."""
        labels = torch.zeros(self.masks.shape[-2:], dtype=torch.long)
        for mask, cls in zip(self.masks, self.classes):
            labels[mask] = int(cls) + 1
        return labels


@dataclass(frozen=True)
class SceneBatch:
    """Scenes stacked for a model: ``images (B, 1, H, W)``, ``labels (B, n_classes)``, and the
    per-scene ``classes``, ``masks`` and ``boxes`` as lists (scenes hold different numbers of items),
    and the stacked ``label_maps (B, H, W)`` (see :attr:`Scene.label_map`)."""

    images: Tensor
    labels: Tensor
    classes: List[Tensor]
    masks: List[Tensor]
    boxes: List[Tensor]
    label_maps: Tensor


class ClutteredScenes(torch.utils.data.Dataset):
    r"""Deterministic scenes of 1-3 Fashion-MNIST items on clutter.

    Args:
        split: ``"train"`` draws items and clutter from the 60,000 training images, ``"test"``
            from the 10,000 test images, so test scenes never show a training item.
        length: number of scenes.
        size: canvas side in pixels (at least the largest item side; the scene models take 96).
        seed: scenes are a pure function of ``(split, seed, index)``.
        max_items: at most this many items (of different classes) per scene.
        item_sizes: smallest and largest item side in pixels (items are square 28x28 images
            rescaled bilinearly).
        clutter: number of 8x8 fragments of random other images strewn over the canvas.
        mask_threshold: an item pixel belongs to its mask when its intensity exceeds this.
        root: folder of the Fashion-MNIST IDX files (default: the Debian package's).
    """

    def __init__(self, split: str = "test", length: int = 1000, size: int = 96, seed: int = 0,
                 max_items: int = 3, item_sizes: Tuple[int, int] = (28, 44), clutter: int = 16,
                 mask_threshold: float = 0.05, root: Optional[Union[str, Path]] = None) -> None:
        if not 8 <= item_sizes[0] <= item_sizes[1] <= size or size < 16:
            raise ValueError(f"Items of {item_sizes[0]} to {item_sizes[1]} pixels must be at least 8 pixels and fit "
                             f"the canvas of {size} x {size} (at least 16).")
        if not 1 <= max_items <= len(CLASSES):
            raise ValueError(f"max_items must lie in [1, {len(CLASSES)}], got {max_items}.")
        images, labels = load_fashion_mnist(split, root)
        self.split, self.length, self.size, self.seed = split, length, size, seed
        self.max_items, self.item_sizes, self.clutter = max_items, item_sizes, clutter
        self.mask_threshold = mask_threshold
        self._images = images.astype(np.float32) / 255.0
        self._by_class = [np.flatnonzero(labels == c) for c in range(len(CLASSES))]
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Scene:
        if not -self.length <= index < self.length:
            raise IndexError(f"Scene {index} out of range for {self.length} scenes.")
        rng = np.random.default_rng((self.seed, _SPLIT_KEY[self.split], index % self.length))
        canvas = self._clutter(rng)
        n_items = int(rng.integers(1, self.max_items + 1))
        classes = rng.choice(len(CLASSES), size=n_items, replace=False)
        masks, boxes = [], []
        for cls, (y, x, side) in zip(classes, self._placements(rng, n_items)):
            item = self._item(rng, int(cls), side)
            mask = np.zeros_like(canvas, dtype=bool)
            mask[y:y + side, x:x + side] = item > self.mask_threshold
            canvas[mask] = item[item > self.mask_threshold]
            masks.append(mask)
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
        labels = torch.zeros(len(CLASSES))
        labels[torch.from_numpy(classes)] = 1.0
        return Scene(
            image=torch.from_numpy(canvas)[None],
            labels=labels,
            classes=torch.from_numpy(classes).long(),
            masks=torch.from_numpy(np.stack(masks)),
            boxes=torch.tensor(boxes, dtype=torch.float32),
        )

    def batch(self, indices: Sequence[int]) -> SceneBatch:
        """The scenes at ``indices``, stacked."""
        return collate([self[i] for i in indices])

    def _clutter(self, rng: np.random.Generator) -> np.ndarray:
        canvas = np.zeros((self.size, self.size), np.float32)
        for _ in range(self.clutter):
            source = self._images[rng.integers(len(self._images))]
            sy, sx = rng.integers(0, 28 - 8, size=2)
            y, x = rng.integers(0, self.size - 8, size=2)
            fragment = source[sy:sy + 8, sx:sx + 8] * rng.uniform(0.4, 1.0)
            canvas[y:y + 8, x:x + 8] = np.maximum(canvas[y:y + 8, x:x + 8], fragment)
        return canvas

    def _placements(self, rng: np.random.Generator, n_items: int) -> List[Tuple[int, int, int]]:
        """Square slots ``(y, x, side)`` that do not overlap, found by rejection sampling."""
        low, high = self.item_sizes
        while True:
            slots: List[Tuple[int, int, int]] = []
            for _ in range(100 * n_items):
                side = int(rng.integers(low, high + 1))
                y, x = (int(v) for v in rng.integers(0, self.size - side + 1, size=2))
                if all(y + side <= sy or sy + ss <= y or x + side <= sx or sx + ss <= x for sy, sx, ss in slots):
                    slots.append((y, x, side))
                    if len(slots) == n_items:
                        return slots
            high = max(low, high - 4)

    def _item(self, rng: np.random.Generator, cls: int, side: int) -> np.ndarray:
        image = self._images[rng.choice(self._by_class[cls])]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return resize(image, (side, side), order=1, anti_aliasing=False).astype(np.float32)


def collate(scenes: Sequence[Scene]) -> SceneBatch:
    """Stack scenes into a :class:`SceneBatch` (usable as a ``DataLoader`` ``collate_fn``)."""
    return SceneBatch(
        images=torch.stack([s.image for s in scenes]),
        labels=torch.stack([s.labels for s in scenes]),
        classes=[s.classes for s in scenes],
        masks=[s.masks for s in scenes],
        boxes=[s.boxes for s in scenes],
        label_maps=torch.stack([s.label_map for s in scenes]),
    )
