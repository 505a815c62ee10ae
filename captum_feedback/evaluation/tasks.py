"""The paper's three data-set tasks, image by image: what each image's record holds, the counts
records add up to, and the scores those counts give.

* :class:`Pointing` (Table 2; TorchRay's protocol): for each class in the image, the maximum of
  the class's map, resized to the photo, hits when it lies within ``tolerance`` pixels of the
  class's region (0: inside it, the paper's rule). Accuracy is the mean of per-class accuracies,
  for all pairs and for the subset ``small_with_other_classes`` (a class covering less than a
  quarter of an image that shows another class too: Zhang et al.'s and TorchRay's "difficult",
  not VOC's ``difficult`` flag).
* :class:`Localization` (Table 1, Procedure 1): a box per labelled class (Procedure 1 for
  ``"FSP two-stage (Procedure 1)"``, the box keeping ``box_fraction`` of the energy for any other
  map), correct at IoU >= 0.5 with a box of the class; top-1 and top-5 localization errors
  (ILSVRC's: the class among the top-k predictions and its box correct) and the GT-known accuracy.
* :class:`Segmentation` (Table 3, Procedure 2): the labelled classes' maps segment the image
  (:func:`~captum_feedback.wsol.segmentation.segment`); a confusion matrix over the data set gives
  the mean IoU with background.
* :class:`GridPointing` (Böhle et al., CVPR 2022; Rao et al., CVPR 2022): on grids of photos of
  different classes (:class:`~captum_feedback.data.grids.GridLayout`), each cell's class is
  explained once; the share of the map's energy in the cell (chance ``1 / k**2``), whether its
  maximum lies there, and RISE's deletion and insertion areas (faithfulness), with bootstrap
  intervals over grids.

Every map comes from :class:`~captum_feedback.compare.methods.MethodMaps`, as in ``benchmarks/quality.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

from captum_feedback.compare.methods import ALL_METHODS, MethodMaps
from captum_feedback.compare.registry import names
from captum_feedback.core.config import FeedbackConfig
from captum_feedback.data.annotations import IGNORE, AnnotatedImage, box_mask
from captum_feedback.data.grids import Candidate, GridLayout, confident_cells
from captum_feedback.data.layouts import Layout
from captum_feedback.data.voc import IMAGENET_CLASSES_OF_VOC
from captum_feedback.models.classifiers import Classifier
from captum_feedback.wsol.faithfulness import deletion_insertion
from captum_feedback.wsol.localization import energy_box, two_stage_localization
from captum_feedback.wsol.metrics import bootstrap_interval, confusion_matrix, energy_coverage, pointing_game
from captum_feedback.wsol.segmentation import segment

PROCEDURE_1 = names("boxes")[0]
"""Procedure 1's boxes, a localization method beside the maps of ``ALL_METHODS``."""

COCO_TO_VOC = {"airplane": "aeroplane", "motorcycle": "motorbike", "couch": "sofa", "tv": "tvmonitor",
               "dining table": "diningtable", "potted plant": "pottedplant"}
"""COCO's names of VOC's classes, which take VOC's ImageNet groups."""

COCO_IMAGENET_NAMES = {
    "truck": ("trailer truck", "garbage truck", "pickup", "moving van", "tow truck", "fire engine"),
    "traffic light": ("traffic light",), "stop sign": ("street sign",), "parking meter": ("parking meter",),
    "bench": ("park bench",), "elephant": ("Indian elephant", "African elephant", "tusker"),
    "bear": ("brown bear", "American black bear", "ice bear", "sloth bear"), "zebra": ("zebra",),
    "backpack": ("backpack",), "umbrella": ("umbrella",), "tie": ("Windsor tie",), "skis": ("ski",),
    "sports ball": ("soccer ball", "tennis ball", "basketball", "volleyball", "baseball", "rugby ball",
                    "golf ball", "croquet ball"),
    "tennis racket": ("racket",), "wine glass": ("goblet",), "cup": ("cup",), "spoon": ("wooden spoon",),
    "knife": ("cleaver",), "bowl": ("soup bowl", "mixing bowl"), "banana": ("banana",), "orange": ("orange",),
    "broccoli": ("broccoli",), "hot dog": ("hotdog",), "pizza": ("pizza",), "donut": ("bagel",),
    "sandwich": ("cheeseburger",), "laptop": ("laptop",), "mouse": ("mouse",), "remote": ("remote control",),
    "keyboard": ("computer keyboard",), "cell phone": ("cellular telephone",), "microwave": ("microwave",),
    "oven": ("Dutch oven", "stove"), "toaster": ("toaster",), "sink": ("washbasin",),
    "refrigerator": ("refrigerator",), "book": ("book jacket", "comic book"),
    "clock": ("analog clock", "digital clock", "wall clock"), "vase": ("vase",), "teddy bear": ("teddy",),
    "hair drier": ("hand blower",), "toilet": ("toilet seat",), "bed": ("four-poster",),
}
"""ImageNet classes (by name) that depict COCO classes outside VOC's 20. COCO classes in
neither table (giraffe, kite, frisbee, skateboard, ...) have no ImageNet counterpart and are not
scored with an ImageNet model (``run.json`` lists them)."""


class TargetMap:
    """The model output that stands for each data-set class.

    * an ImageNet model on VOC or COCO: the member of the class's group of ImageNet classes
      (:data:`~captum_feedback.data.voc.IMAGENET_CLASSES_OF_VOC`) the model scores highest on
      the image; COCO classes outside VOC's 20 are not scored (``unmapped``);
    * an ImageNet layout: label ``k`` is output ``k`` (the synset file is in output order);
    * otherwise, the output of the same name (a model trained on the data set's classes).
    """

    def __init__(self, classifier: Classifier, layout: Layout) -> None:
        if layout.kind in ("imagenet", "grid") and len(layout.classes) != len(classifier.classes):
            raise ValueError(f"The synset list has {len(layout.classes)} classes, the model "
                             f"{len(classifier.classes)} outputs.")
        self.groups: List[Optional[Tensor]] = []
        keys = [_key(c) for c in classifier.classes]
        for k, name in enumerate(layout.classes):
            if layout.kind in ("imagenet", "grid"):
                group: Optional[Sequence[int]] = (k,)
            elif classifier.imagenet:
                group = IMAGENET_CLASSES_OF_VOC.get(COCO_TO_VOC.get(name, name)) or _by_name(
                    COCO_IMAGENET_NAMES.get(name, ()), classifier.classes)
            elif _key(name) in keys:
                group = (keys.index(_key(name)),)
            else:
                raise ValueError(f"The model has no output named {name!r} (data set class {k}); give its class "
                                 "names, or use an ImageNet model on VOC or COCO.")
            self.groups.append(None if group is None else torch.tensor(group))
        self.unmapped = [c for c, g in zip(layout.classes, self.groups) if g is None]
        if len(self.unmapped) == len(layout.classes):
            raise ValueError(f"No class of the data set ({', '.join(layout.classes[:3])}, ...) has an ImageNet group: "
                             "an ImageNet model maps VOC's and COCO's classes; give a model of the data set's classes.")

    def targets(self, labels: Sequence[int], logits: Tensor) -> List[int]:
        """The output for each (mapped) label on an image with these ``logits``."""
        groups = [self.groups[label] for label in labels]
        return [int(g[int(logits[g.to(logits.device)].argmax())]) for g in groups]

    def mapped(self, labels: Sequence[int]) -> List[int]:
        """The labels that have an output."""
        return [label for label in labels if self.groups[label] is not None]


def _key(name: str) -> str:
    """A class name compared case- and space-insensitively."""
    return name.lower().replace(" ", "")


def _by_name(names: Sequence[str], classes: Sequence[str]) -> Optional[Sequence[int]]:
    indices = [classes.index(n) for n in names if n in classes]
    return indices or None


@dataclass
class Context:
    """What scoring an image needs."""

    classifier: Classifier
    layout: Layout
    maps: MethodMaps
    methods: Sequence[str]
    device: torch.device
    config: FeedbackConfig
    tolerance: int = 15
    box_fraction: float = 0.99
    faithfulness_steps: int = 16

    def __post_init__(self) -> None:
        self.target_map = TargetMap(self.classifier, self.layout)

    def inputs(self, image: AnnotatedImage) -> Tensor:
        """The photo as the model's ``(1, C, s, s)`` input, squeezed whole."""
        return self.classifier.normalize(self.classifier.squeeze(image.image[None]).to(self.device))

    def class_maps(self, x: Tensor, targets: List[int], method: str) -> Tensor:
        """``(K, 1, s, s)`` maps of one method for ``K`` targets of one image."""
        return self.maps(x.expand(len(targets), -1, -1, -1), targets, [method])[method].detach()


SUBSET = "small_with_other_classes"
"""The pointing game's subset of classes that cover under a quarter of an image showing others."""


def method_view(record: dict, method: str) -> dict:
    """A record as one method's summary sees it: every per-method entry replaced by the method's."""
    return {k: v[method] if isinstance(v, dict) and method in v else v for k, v in record.items()}


class Task:
    """One task: :meth:`score` an image into a JSON-able record, :meth:`counts` of a record per
    method (vectors that add up over images and processes), :meth:`summary` of the totals."""

    name = ""
    methods: Sequence[str] = ALL_METHODS

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes

    def score(self, image: AnnotatedImage, ctx: Context) -> dict:
        raise NotImplementedError

    def counts(self, record: dict, method: str) -> np.ndarray:
        raise NotImplementedError

    @property
    def width(self) -> int:
        """The length of :meth:`counts`' vectors."""
        raise NotImplementedError

    def summary(self, totals: np.ndarray, classes: Sequence[str], records: Sequence[dict] = ()) -> dict:
        """The scores from the counts added over the run (``records``: every image's record, for
        the tasks that report intervals)."""
        raise NotImplementedError


def _rates(hits: np.ndarray, total: np.ndarray, classes: Sequence[str]) -> dict:
    scored = total > 0
    per_class = {c: float(h / t) for c, h, t, s in zip(classes, hits, total, scored) if s}
    return {"hits": int(hits.sum()), "total": int(total.sum()),
            "accuracy": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
            "per_class": per_class, "per_class_hits": {c: int(h) for c, h, s in zip(classes, hits, scored) if s},
            "per_class_total": {c: int(t) for c, t, s in zip(classes, total, scored) if s}}


class Pointing(Task):
    """The pointing game (see the module's description)."""

    name = "pointing"

    def score(self, image: AnnotatedImage, ctx: Context) -> dict:
        labels = ctx.target_map.mapped(image.present())
        regions = [image.region(c) for c in labels]
        record = {"image": image.name, "labels": labels,
                  SUBSET: [image.small_among_others(c, r) for c, r in zip(labels, regions)], "hits": {}}
        if not labels:
            return {**record, "hits": {m: [] for m in ctx.methods}}
        x = ctx.inputs(image)
        with torch.no_grad():
            targets = ctx.target_map.targets(labels, ctx.classifier.model(x)[0])
        for method in ctx.methods:
            maps = F.interpolate(ctx.class_maps(x, targets, method).float().cpu(), size=image.size, mode="bilinear",
                                 align_corners=False)[:, 0]
            record["hits"][method] = [int(point_hits(m, r, ctx.tolerance)) for m, r in zip(maps, regions)]
        return record

    @property
    def width(self) -> int:
        return 4 * self.n_classes

    def counts(self, record: dict, method: str) -> np.ndarray:
        out = np.zeros((4, self.n_classes))
        for label, hard, hit in zip(record["labels"], record[SUBSET], record["hits"][method]):
            out[0, label] += hit
            out[1, label] += 1
            out[2, label] += hit * hard
            out[3, label] += hard
        return out.ravel()

    def summary(self, totals: np.ndarray, classes: Sequence[str], records: Sequence[dict] = ()) -> dict:
        hits, total, hard_hits, hard_total = totals.reshape(4, -1)
        return {**_rates(hits, total, classes), SUBSET: _rates(hard_hits, hard_total, classes)}


def point_hits(energy: Tensor, region: Tensor, tolerance: int) -> bool:
    """Whether the maximum of ``energy`` (``(H, W)``; the first in row-major order) lies within
    ``tolerance`` pixels of ``region`` (a pixel of the region at a distance below ``tolerance``,
    TorchRay's rule), or inside it for ``tolerance = 0``."""
    height, width = energy.shape
    peak = int(energy.flatten().argmax())
    y, x = divmod(peak, width)
    if tolerance == 0:
        return bool(region[y, x])
    top, left = max(y - tolerance, 0), max(x - tolerance, 0)
    window = region[top:y + tolerance + 1, left:x + tolerance + 1]
    rows = torch.arange(top, top + window.shape[0])[:, None] - y
    cols = torch.arange(left, left + window.shape[1])[None, :] - x
    return bool((window & (rows**2 + cols**2 < tolerance**2)).any())


class Localization(Task):
    """Localization errors (see the module's description)."""

    name = "localization"
    methods = (PROCEDURE_1,) + tuple(ALL_METHODS)

    def score(self, image: AnnotatedImage, ctx: Context) -> dict:
        labels = ctx.target_map.mapped(image.present())
        x = ctx.inputs(image)
        with torch.no_grad():
            logits = ctx.classifier.model(x)[0]
        targets = ctx.target_map.targets(labels, logits)
        record = {"image": image.name, "labels": labels, "targets": targets,
                  "top5": logits.topk(min(5, len(logits))).indices.tolist(), "iou": {}}
        if not labels:
            return {**record, "iou": {m: [] for m in ctx.methods}}
        side = x.shape[-1]
        scale = torch.tensor([image.size[1] / side, image.size[0] / side] * 2)
        for method in ctx.methods:
            boxes = self._boxes(x, targets, method, ctx).cpu() * scale
            record["iou"][method] = [float(box_iou(b[None], image.boxes(c)).max()) for b, c in zip(boxes, labels)]
        return record

    @staticmethod
    def _boxes(x: Tensor, targets: List[int], method: str, ctx: Context) -> Tensor:
        if method == PROCEDURE_1:
            located = two_stage_localization(ctx.classifier.model, ctx.classifier.middle,
                                             x.expand(len(targets), -1, -1, -1), targets, fraction=ctx.box_fraction,
                                             config=ctx.config)
            return located.boxes
        return energy_box(ctx.class_maps(x, targets, method), ctx.box_fraction)

    @property
    def width(self) -> int:
        return 5 + 2 * self.n_classes

    def counts(self, record: dict, method: str) -> np.ndarray:
        correct = {t: iou >= 0.5 for t, iou in zip(record["targets"], record["iou"][method])}
        top5 = record["top5"]
        out = np.zeros(self.width)
        out[0] = bool(top5) and correct.get(top5[0], False)
        out[1] = any(correct.get(t, False) for t in top5)
        out[2] = bool(top5) and top5[0] in correct
        out[3] = any(t in correct for t in top5)
        out[4] = bool(record["labels"])
        for label, iou in zip(record["labels"], record["iou"][method]):
            out[5 + label] += iou >= 0.5
            out[5 + self.n_classes + label] += 1
        return out

    def summary(self, totals: np.ndarray, classes: Sequence[str], records: Sequence[dict] = ()) -> dict:
        top1, top5, cls1, cls5, images = totals[:5]
        known = _rates(totals[5:5 + self.n_classes], totals[5 + self.n_classes:], classes)
        rate = (lambda v: float(v / images)) if images else (lambda v: float("nan"))
        return {"hits": int(top1), "total": int(images), "accuracy": rate(top1),
                "top1_loc_error": 1 - rate(top1), "top5_loc_error": 1 - rate(top5),
                "top1_cls_error": 1 - rate(cls1), "top5_cls_error": 1 - rate(cls5),
                "gt_known_accuracy": known["accuracy"],
                **{k: known[k] for k in ("per_class", "per_class_hits", "per_class_total")}}


class Segmentation(Task):
    """Mean IoU of Procedure 2's segmentation (see the module's description)."""

    name = "segmentation"

    def score(self, image: AnnotatedImage, ctx: Context) -> dict:
        if image.segmentation is None:
            raise ValueError(f"Image {image.name} has no class segmentation (SegmentationClass/{image.name}.png).")
        labels = ctx.target_map.mapped(image.present())
        x = ctx.inputs(image)
        display = ctx.classifier.squeeze(image.image[None])
        with torch.no_grad():
            targets = ctx.target_map.targets(labels, ctx.classifier.model(x)[0]) if labels else []
        record = {"image": image.name, "labels": labels, "confusion": {}}
        for method in ctx.methods:
            if labels:
                maps = ctx.class_maps(x, targets, method)[:, 0].float().cpu()
                predicted = segment(display, [maps], [torch.tensor(labels)])[0]
            else:
                predicted = torch.zeros(display.shape[-2:], dtype=torch.long)
            at_photo = F.interpolate(predicted[None, None].float(), size=image.size, mode="nearest")[0, 0].long()
            confusion = confusion_matrix(at_photo, image.segmentation, self.n_classes + 1, IGNORE)
            nonzero = confusion.nonzero()
            record["confusion"][method] = [[int(i), int(j), int(confusion[i, j])] for i, j in nonzero]
        return record

    @property
    def width(self) -> int:
        return (self.n_classes + 1) ** 2 + 1  # the confusion matrix and the image

    def counts(self, record: dict, method: str) -> np.ndarray:
        out = np.zeros((self.n_classes + 1, self.n_classes + 1))
        for i, j, count in record["confusion"][method]:
            out[i, j] += count
        return np.append(out.ravel(), 1.0)

    def summary(self, totals: np.ndarray, classes: Sequence[str], records: Sequence[dict] = ()) -> dict:
        confusion = totals[:-1].reshape(self.n_classes + 1, self.n_classes + 1)
        tp = np.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - tp
        names = ("background", *classes)
        scored = union > 0
        per_class = {n: float(t / u) for n, t, u, s in zip(names, tp, union, scored) if s}
        return {"hits": int(tp.sum()), "total": int(confusion.sum()), "images": int(totals[-1]),
                "accuracy": float(tp.sum() / max(confusion.sum(), 1)),
                "miou": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
                "per_class": per_class, "per_class_hits": {n: int(t) for n, t, s in zip(names, tp, scored) if s},
                "per_class_total": {n: int(u) for n, u, s in zip(names, union, scored) if s}}


class GridPointing(Task):
    """The grid pointing game (see the module's description). The grid is explained at its own
    size (``k`` cells of ``s`` pixels a side), not squeezed to the model's input size."""

    name = "grid-pointing"
    measures = ("share", "pointing", "deletion", "insertion")
    """What :meth:`summary` reports per method, each with a bootstrap interval over grids."""

    def score(self, image: AnnotatedImage, ctx: Context) -> dict:
        labels = [i.label for i in image.instances]
        side = image.size[0]
        x = ctx.classifier.normalize(ctx.classifier.squeeze(image.image[None], side).to(ctx.device))
        cells = torch.from_numpy(np.stack([box_mask(i.box, image.size) for i in image.instances]))
        index = ctx.layout.names.index(image.name)
        record = {"image": image.name, "labels": labels, "cells": [c.key for c in ctx.layout.members(index)],
                  **{measure: {} for measure in self.measures}}
        targets = torch.tensor(labels)
        for method in ctx.methods:
            maps = ctx.class_maps(x, labels, method).float()
            blank = ~maps.flatten(1).gt(0).any(1).cpu()
            record["share"][method] = energy_coverage(maps.cpu(), cells).nan_to_num(0).tolist()
            record["pointing"][method] = (pointing_game(maps.cpu(), cells) & ~blank).int().tolist()
            deletion, insertion = deletion_insertion(
                ctx.classifier.model, x.expand(len(labels), -1, -1, -1), targets, maps, ctx.faithfulness_steps,
                ctx.classifier.probabilities, generator=torch.Generator().manual_seed(index))
            record["deletion"][method], record["insertion"][method] = deletion.tolist(), insertion.tolist()
        return record

    @property
    def width(self) -> int:
        return 2 * self.n_classes + len(self.measures) + 1

    def counts(self, record: dict, method: str) -> np.ndarray:
        out = np.zeros(self.width)
        n = self.n_classes
        for label, hit in zip(record["labels"], record["pointing"][method]):
            out[label] += hit
            out[n + label] += 1
        out[2 * n:2 * n + len(self.measures)] = [sum(record[m][method]) for m in self.measures]
        out[-1] = len(record["labels"])
        return out

    def summary(self, totals: np.ndarray, classes: Sequence[str], records: Sequence[dict] = ()) -> dict:
        n = self.n_classes
        targets = totals[-1]
        means = {m: float(v / targets) if targets else float("nan")
                 for m, v in zip(self.measures, totals[2 * n:2 * n + len(self.measures)])}
        per_class = _rates(totals[:n], totals[n:2 * n], classes)
        return {"hits": per_class["hits"], "total": per_class["total"], "accuracy": means["pointing"],
                "targets": int(targets), "grids": len(records), **means,
                "intervals": {m: list(self._interval(records, m)) for m in self.measures},
                **{k: per_class[k] for k in ("per_class", "per_class_hits", "per_class_total")}}

    @staticmethod
    def _interval(records: Sequence[dict], measure: str) -> Tuple[float, float]:
        """The 95% bootstrap interval of a measure's mean over targets, resampling grids (a
        grid's targets share its photos); ``records`` as one method sees them (:func:`method_view`)."""
        sums = torch.tensor([sum(r[measure]) for r in records], dtype=torch.float64)
        sizes = torch.tensor([len(r[measure]) for r in records], dtype=torch.float64)
        return bootstrap_interval(sums, sizes)


TASKS = {task.name: task for task in (Pointing, Localization, Segmentation, GridPointing)}


class GridError(ValueError):
    """Grids that cannot be drawn for this model: the message is one line for the user."""


def cell_side(classifier: Classifier, k: int, cell: Optional[int] = None, scenes: bool = False) -> int:
    """A grid cell's side: ``cell``, else the model's input size divided by ``k`` for a model of
    one input size or for cluttered ``scenes`` (which keep the scale the model was trained at),
    else 160 pixels (a model with global pooling on photos).

    Raises:
        GridError: a model of one input size and a ``cell`` that does not make it.
    """
    fixed = not takes_size(classifier, 2 * 160)
    side = cell or (classifier.size // k if fixed or scenes else 160)
    if fixed and side * k != classifier.size:
        raise GridError(f"the model takes {classifier.size} x {classifier.size} inputs only: --cell must be "
                        f"{classifier.size // k} for a grid of {k}.")
    return side


def takes_size(classifier: Classifier, side: int) -> bool:
    """Whether the model runs on ``side x side`` inputs, not only on its own size."""
    probe = torch.zeros(1, classifier.channels, side, side, device=classifier.device)
    try:
        with torch.no_grad():
            classifier.model(probe)
    except RuntimeError:
        return False
    return True


def grid_layout(classifier: Classifier, candidates: Sequence[Candidate], count: int, k: int, side: int,
                confidence: float, seed: int) -> GridLayout:
    """``count`` grids of ``k x k`` cells of ``side`` pixels from the ``candidates`` the model
    classifies confidently on their own, each cell squeezed to the model's input size (the
    size the model knows, and the only one some take)."""

    def scores(cells: Tensor) -> Tensor:
        return classifier.probabilities(classifier.model(classifier.inputs(cells)))

    return GridLayout(confident_cells(candidates, scores, side, confidence), classifier.classes, count, k, seed)
