"""Localize and segment items with a classifier that only ever saw image labels (Procedures 1, 2).

Runs the packaged cluttered-scene VGG on the first test scenes, boxes every item with the
two-stage localization, segments every scene, and prints box accuracy and mIoU::

    python examples/localize_and_segment.py --scenes 20 --out figures
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from captum_feedback.app.visualization import visualize_energy_map  # noqa: E402
from captum_feedback.data import ClutteredScenes  # noqa: E402
from captum_feedback.models.cluttered_vgg import cluttered_vgg  # noqa: E402
from captum_feedback.wsol.localization import two_stage_localization  # noqa: E402
from captum_feedback.wsol.metrics import box_accuracy, confusion_matrix, mean_iou  # noqa: E402
from captum_feedback.wsol.segmentation import feedback_segmentation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("figures"))
    args = parser.parse_args()
    model, scenes = cluttered_vgg(), ClutteredScenes("test", length=args.scenes)
    batch = scenes.batch(range(len(scenes)))
    owners = [i for i, classes in enumerate(batch.classes) for _ in classes]
    targets = torch.cat(batch.classes).tolist()
    located = two_stage_localization(model, model.middle_layer, batch.images[owners], targets)
    hits = box_accuracy(located.boxes, [b[None] for b in torch.cat(batch.boxes)], (96, 96))
    labels = feedback_segmentation(model, model.middle_layer, batch.images, batch.classes)
    truth = batch.label_maps
    miou, _ = mean_iou(confusion_matrix(labels, truth, n_classes=11))
    print(f"{len(targets)} items in {len(scenes)} scenes: box accuracy (IoU >= 0.5) {hits.float().mean():.3f}, "
          f"segmentation mIoU {miou:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(2, 4, figsize=(13, 6.6))
    for k, axis in enumerate(axes[0]):
        truth_box = torch.cat(batch.boxes)[k]
        visualize_energy_map(located.coarse_map[k], batch.images[owners[k]],
                             boxes=torch.stack([located.boxes[k], truth_box]),
                             title=f"{scenes.classes[targets[k]]}: found (green), truth (red)",
                             plt_fig_axis=(figure, axis))
    for i, axis in enumerate(axes[1]):
        axis.imshow(torch.cat([labels[i], truth[i]], dim=1).numpy(), cmap="tab20", vmin=0, vmax=11,
                    interpolation="nearest")
        axis.set_title("segmentation | ground truth", fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    figure.savefig(args.out / "localize_and_segment.png", dpi=110)
    print(f"wrote {args.out / 'localize_and_segment.png'}")


if __name__ == "__main__":
    main()
