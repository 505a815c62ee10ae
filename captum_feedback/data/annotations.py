"""Annotated photos as the benchmarks read them: objects with boxes (and COCO polygons), the
Pascal VOC ``difficult`` flag, and an optional class segmentation.

Coordinates are the photo's own pixels; boxes are ``(x1, y1, x2, y2)`` pixel edges as in
``torchvision.ops`` (VOC's 1-based inclusive corners and COCO's ``(x, y, w, h)`` are converted
when read).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

IGNORE = 255
"""The label of unscored pixels (VOC's object borders) in a class segmentation."""


@dataclass(frozen=True)
class Instance:
    """One annotated object.

    Attributes:
        label: its class, an index into the data set's class names.
        box: ``(x1, y1, x2, y2)`` in the photo's pixel edges.
        difficult: VOC's flag (COCO's ``iscrowd``): the object counts for the class's region but a
            class with only such objects is not scored.
        polygons: COCO outlines, each ``(x0, y0, x1, y1, ...)`` in pixels; empty for boxes only.
    """

    label: int
    box: Tuple[float, float, float, float]
    difficult: bool = False
    polygons: Tuple[Tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class AnnotatedImage:
    """A photo with its objects.

    Attributes:
        name: the image id (file stem), unique in its data set.
        image: ``(3, H, W)`` uint8 RGB.
        instances: its objects.
        segmentation: ``(H, W)`` long labels (0 background, class ``c`` is ``c + 1``, 255 unscored),
            or ``None``.
    """

    name: str
    image: Tensor
    instances: Tuple[Instance, ...] = field(default_factory=tuple)
    segmentation: Optional[Tensor] = None

    @property
    def size(self) -> Tuple[int, int]:
        """``(H, W)``."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def at_size(self, size: Tuple[int, int]) -> AnnotatedImage:
        """The photo squeezed to ``size`` ``(H, W)`` for a model (bilinear, antialiased, rounded
        to uint8), its objects' boxes and outlines scaled with it (boxes kept inside), its
        segmentation resized by nearest neighbour."""
        import torch.nn.functional as F

        height, width = size
        sx, sy = width / self.size[1], height / self.size[0]
        image = F.interpolate(self.image[None].float(), size=size, mode="bilinear", antialias=True,
                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
        segmentation = None
        if self.segmentation is not None:
            segmentation = F.interpolate(self.segmentation[None, None].float(), size=size, mode="nearest")[0, 0].long()
        scale, limits = (sx, sy, sx, sy), (width, height, width, height)
        instances = tuple(replace(
            i, box=tuple(min(max(v * f, 0.0), m) for v, f, m in zip(i.box, scale, limits)),
            polygons=tuple(tuple(v * scale[k % 2] for k, v in enumerate(p)) for p in i.polygons),
        ) for i in self.instances)
        return AnnotatedImage(self.name, image, instances, segmentation)

    def present(self) -> List[int]:
        """The classes to score, sorted: those with an object not flagged difficult, and those
        of the segmentation."""
        labels = {i.label for i in self.instances if not i.difficult}
        if self.segmentation is not None:
            labels |= {int(v) - 1 for v in self.segmentation.unique() if 0 < v < IGNORE}
        return sorted(labels)

    def region(self, label: int) -> Tensor:
        """``(H, W)`` bool: where class ``label`` is, from every object of it (difficult ones
        included, as TorchRay's pointing game): polygons where given, else boxes; the
        segmentation when there are no objects."""
        height, width = self.size
        objects = [i for i in self.instances if i.label == label]
        if not objects and self.segmentation is not None:
            return self.segmentation == label + 1
        region = np.zeros((height, width), dtype=bool)
        for instance in objects:
            region |= _polygon_mask(instance.polygons, self.size) if instance.polygons else box_mask(instance.box,
                                                                                                      self.size)
        return torch.from_numpy(region)

    def boxes(self, label: int) -> Tensor:
        """``(K, 4)`` boxes of class ``label``."""
        return torch.tensor([i.box for i in self.instances if i.label == label], dtype=torch.float32).reshape(-1, 4)

    def small_among_others(self, label: int, region: Optional[Tensor] = None) -> bool:
        """Whether ``(image, class)`` is in the subset Zhang et al. (Excitation Backprop, and
        TorchRay's pointing game after them) call "difficult" -- not VOC's ``difficult`` flag:
        the class covers less than a quarter of the image and another class is in it too.
        ``region``: the class's :meth:`region`, when the caller has it already."""
        others = set(self.present()) - {label}
        region = self.region(label) if region is None else region
        return bool(others) and float(region.float().mean()) < 0.25


def box_mask(box: Sequence[float], size: Tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: the pixels whose centres lie inside an ``(x1, y1, x2, y2)`` box."""
    height, width = size
    x1, y1, x2, y2 = box
    rows = np.arange(height)[:, None] + 0.5
    cols = np.arange(width)[None, :] + 0.5
    return (cols > x1) & (cols < x2) & (rows > y1) & (rows < y2)


def _polygon_mask(polygons: Sequence[Sequence[float]], size: Tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    height, width = size
    canvas = Image.new("1", (width, height))
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) >= 6:
            draw.polygon([float(v) for v in polygon], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def read_voc_xml(path: Path, classes: Sequence[str]) -> Tuple[Instance, ...]:
    """The objects of a Pascal VOC (or ImageNet) XML annotation; names must be in ``classes``."""
    index: Dict[str, int] = {name: k for k, name in enumerate(classes)}
    instances = []
    for obj in ET.parse(path).getroot().iter("object"):
        name = obj.findtext("name", "").strip()
        if name not in index:
            raise ValueError(f"{path}: unknown class {name!r} (not one of the data set's {len(classes)} classes).")
        box = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = obj.findtext("difficult", "0").strip() == "1"
        instances.append(Instance(index[name], (xmin - 1, ymin - 1, xmax, ymax), difficult))
    return tuple(instances)


def voc_xml(image: AnnotatedImage, classes: Sequence[str]) -> str:
    """The VOC XML annotation of an image (1-based inclusive corners), :func:`read_voc_xml`'s inverse."""
    height, width = image.size
    objects = "".join(
        f"<object><name>{_escape(classes[i.label])}</name><difficult>{int(i.difficult)}</difficult><bndbox>"
        f"<xmin>{i.box[0] + 1:g}</xmin><ymin>{i.box[1] + 1:g}</ymin><xmax>{i.box[2]:g}</xmax><ymax>{i.box[3]:g}</ymax>"
        "</bndbox></object>" for i in image.instances)
    return (f"<annotation><filename>{image.name}.jpg</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{objects}</annotation>\n")


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def read_label_png(path: Path) -> Tensor:
    """A palette (or grayscale) label PNG as ``(H, W)`` long labels."""
    from PIL import Image

    with Image.open(path) as png:
        if png.mode not in ("P", "L"):
            raise ValueError(f"{path} is not an indexed (palette) label PNG but mode {png.mode}.")
        return torch.from_numpy(np.asarray(png).astype(np.int64))


def write_label_png(labels: Tensor, path: Path) -> None:
    """``(H, W)`` labels in [0, 255] as a palette PNG with VOC's colours (label 255 white)."""
    from PIL import Image

    png = Image.fromarray(labels.to(torch.uint8).numpy(), mode="P")
    png.putpalette(voc_palette())
    png.save(path)


def voc_palette() -> List[int]:
    """Pascal VOC's 256-colour palette (the bits of the label spread over R, G and B)."""
    palette = []
    for label in range(256):
        rgb, value = [0, 0, 0], label
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette += rgb
    palette[-3:] = [224, 224, 192]
    return palette
