"""Grids of photos for the grid pointing game (Böhle et al., "B-cos Networks", CVPR 2022; Rao et
al., "Towards Better Understanding Attribution Methods", CVPR 2022).

A grid puts ``k x k`` photos of different classes side by side, each of which the model
classifies confidently on its own. Explaining one cell's class, a class-specific map puts its
energy, and its maximum, in that cell. :class:`GridLayout` is a :class:`~captum_feedback.data.layouts.Layout`
whose images are grids and whose objects are the cells (class: the model's own top-1 for the
photo; box: the cell), so the benchmark runner shards, records and resumes grids like photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from captum_feedback.data.annotations import AnnotatedImage, Instance
from captum_feedback.data.layouts import Layout


@dataclass(frozen=True)
class Candidate:
    """A photo that may fill a cell: ``key`` names it, ``read`` gives it as ``(C, H, W)`` uint8,
    and ``label`` is its class where the data set knows it (the model must then agree)."""

    key: str
    read: Callable[[], Tensor]
    label: Optional[int] = None


@dataclass(frozen=True)
class Cell:
    """A photo squeezed to a cell (``image``: ``(C, s, s)`` uint8), the class the model gives it
    on its own and that class's probability."""

    key: str
    image: Tensor
    label: int
    probability: float


def squeeze_to(image: Tensor, side: int) -> Tensor:
    """``(C, H, W)`` uint8 resized whole to ``side x side`` (bilinear, antialiased)."""
    resized = F.interpolate(image[None].float(), size=(side, side), mode="bilinear", antialias=True,
                            align_corners=False)[0]
    return resized.round().clamp(0, 255).to(torch.uint8)


def confident_cells(candidates: Iterable[Candidate], scores: Callable[[Tensor], Tensor], side: int,
                    confidence: float, batch_size: int = 32) -> List[Cell]:
    """The candidates the model classifies confidently on their own, squeezed to ``side``.

    Args:
        candidates: the photos.
        scores: ``(B, C, side, side)`` uint8 cells to ``(B, n_classes)`` probabilities (the
            classifier's normalization, model and softmax, or sigmoid for multi-label models).
        side: the cell's side in pixels.
        confidence: the least probability of the model's top-1 class.
        batch_size: cells classified at once.

    Returns:
        The cells whose top-1 probability is at least ``confidence`` (and whose top-1 is their
        label, where they have one), in the candidates' order.
    """
    kept: List[Cell] = []
    candidates = list(candidates)
    for start in range(0, len(candidates), batch_size):
        chunk = candidates[start:start + batch_size]
        images = torch.stack([squeeze_to(c.read(), side) for c in chunk])
        with torch.no_grad():
            probability, top = scores(images).max(1)
        for candidate, image, p, label in zip(chunk, images, probability.tolist(), top.tolist()):
            if p >= confidence and candidate.label in (None, label):
                kept.append(Cell(candidate.key, image, label, p))
    return kept


class GridLayout(Layout):
    """``count`` grids of ``k x k`` cells with different classes, drawn from ``cells``.

    Grid ``i`` is a pure function of ``(cells, k, seed, i)``: its cells are drawn at random
    (``numpy``'s generator seeded with ``(seed, i)``) among those whose class differs from the
    cells drawn before it, so grids do not depend on how many are asked for. A cell may appear
    in several grids.

    Args:
        cells: the confidently classified photos (:func:`confident_cells`).
        classes: the model's class names (the objects' labels index them).
        count: the number of grids.
        k: cells per side.
        seed: the seed of the draws.

    Raises:
        ValueError: fewer than ``k * k`` classes among the cells.
    """

    kind = "grid"

    def __init__(self, cells: Sequence[Cell], classes: Sequence[str], count: int, k: int = 2, seed: int = 0) -> None:
        distinct = len({c.label for c in cells})
        if distinct < k * k:
            raise ValueError(f"A {k} x {k} grid needs {k * k} classes, but the confident photos show {distinct} "
                             f"({len(cells)} photos): add photos or lower the confidence.")
        self.cells, self.k, self.seed = list(cells), k, seed
        super().__init__(None, classes, [f"grid-{i:05d}" for i in range(count)])

    @property
    def side(self) -> int:
        """A cell's side in pixels."""
        return int(self.cells[0].image.shape[-1])

    def members(self, index: int) -> List[Cell]:
        """Grid ``index``'s cells in row-major order."""
        rng = np.random.default_rng((self.seed, index))
        chosen: List[Cell] = []
        for position in rng.permutation(len(self.cells)):
            cell = self.cells[int(position)]
            if all(cell.label != c.label for c in chosen):
                chosen.append(cell)
                if len(chosen) == self.k * self.k:
                    break
        return chosen

    def __getitem__(self, index: int) -> AnnotatedImage:
        members = self.members(index)
        rows = [torch.cat([c.image for c in members[r * self.k:(r + 1) * self.k]], 2) for r in range(self.k)]
        side = self.side
        instances = tuple(Instance(c.label, _cell_box(n, self.k, side)) for n, c in enumerate(members))
        return AnnotatedImage(self.names[index], torch.cat(rows, 1), instances)


def _cell_box(position: int, k: int, side: int) -> Tuple[float, float, float, float]:
    row, column = divmod(position, k)
    return (float(column * side), float(row * side), float((column + 1) * side), float((row + 1) * side))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def photo_candidates(split: Optional[str] = "heldout") -> List[Candidate]:
    """The package photo pool's photos of ``split`` (:mod:`captum_feedback.data.photo_pool`).

    Raises:
        FileNotFoundError: no photo of the pool is installed.
    """
    from captum_feedback.data.photo_pool import missing_sources, package_photos

    photos = package_photos(split)
    if not photos:
        raise FileNotFoundError("No photo of the pool is installed; install " + "; ".join(missing_sources()) + ".")
    return [Candidate(p.key, p.read) for p in photos]


def folder_candidates(root: Path) -> List[Candidate]:
    """Every image file under ``root`` (by suffix, sorted), keyed by its path below ``root``.

    Raises:
        FileNotFoundError: ``root`` holds no image file.
    """
    from captum_feedback.data.photos import read_image

    paths = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise FileNotFoundError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) under {root}.")
    return [Candidate(str(p.relative_to(root)), lambda p=p: read_image(p)) for p in paths]


def layout_candidates(layout: Layout) -> List[Candidate]:
    """The photos of a data set layout; a photo of one class (ImageNet's) keeps it as its label."""

    def label(index: int) -> Optional[int]:
        present = layout[index].present() if layout.kind == "imagenet" else []
        return present[0] if len(present) == 1 else None

    return [Candidate(name, lambda i=i: layout[i].image, label(i)) for i, name in enumerate(layout.names)]


def scene_candidates(count: int, side: int, seed: int = 0) -> List[Candidate]:
    """``count`` single-item cluttered test scenes of ``side`` pixels (items of 28 to 40 pixels,
    as large as in the scene models' training scenes, and clutter of the same density), labelled
    with their item's class."""
    from captum_feedback.data.cluttered import ClutteredScenes

    scenes = ClutteredScenes("test", length=count, size=side, seed=seed, max_items=1,
                             item_sizes=(min(28, side), min(40, side)), clutter=max(1, round(16 * (side / 96) ** 2)))

    def read(index: int) -> Tensor:
        return (scenes[index].image * 255).round().to(torch.uint8).expand(3, -1, -1).contiguous()

    return [Candidate(f"scene-{seed}-{i:05d}", lambda i=i: read(i), int(scenes[i].classes[0])) for i in range(count)]
