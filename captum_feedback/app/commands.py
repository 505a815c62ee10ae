"""What the ``captum-feedback`` subcommands do (:mod:`captum_feedback.app.cli` parses and checks
their arguments (:mod:`captum_feedback.app.checks`) and imports this module only to run one, so
that ``--help`` and refusals come fast)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_feedback.app.checks import CommandError, check_targets, class_by_name
from captum_feedback.compare.registry import TASK_DEFAULTS, method_name
from captum_feedback.core.attribution import ungated_share
from captum_feedback.core.config import FeedbackConfig, resolve_config
from captum_feedback.models.classifiers import Classifier, ModelError, first_line, load_classifier


def resolve_targets(spec: Sequence[str], logits: Tensor, classes: Sequence[str]) -> List[int]:
    """Class indices for ``--target`` values: names, indices, ``auto`` (top class) or ``topK``."""
    check_targets(spec, classes)
    chosen: List[int] = []
    for item in spec:
        top = re.fullmatch(r"top(\d+)", item.lower())
        if item.lower() == "auto":
            chosen.append(int(logits.argmax()))
        elif top:
            chosen += logits.topk(int(top.group(1))).indices.tolist()
        elif item.isdigit():
            chosen.append(int(item))
        else:
            chosen.append(class_by_name(item, classes))
    return list(dict.fromkeys(chosen))


def classifier(args: argparse.Namespace, classes: Optional[Sequence[str]] = None) -> Classifier:
    """The ``--model`` / ``--weights`` classifier (``--num-classes`` outputs named ``classes``,
    where the command has them) on ``--device`` (this process's GPU under torchrun), or a
    :class:`CommandError`."""
    try:
        model = load_classifier(args.model, args.weights, getattr(args, "num_classes", None), classes)
    except ModelError as error:
        raise CommandError(str(error)) from None
    return model.to(device(args.device))


def config(args: argparse.Namespace) -> FeedbackConfig:
    """The ``--config`` preset with ``--updates``, or a :class:`CommandError`."""
    try:
        return resolve_config(args.config, args.updates)
    except ValueError as error:
        raise CommandError(str(error)) from None


def device(name: str) -> torch.device:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N``, checked; under ``torchrun``, ``cuda`` is
    this process's GPU (``LOCAL_RANK``)."""
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise CommandError(f"--device {name}: not a device (cpu, cuda, cuda:N).") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available on this machine.")
    if chosen.type == "cuda" and chosen.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return chosen


def explain(args: argparse.Namespace) -> List[Path]:
    from tqdm import tqdm

    from captum_feedback.compare.methods import MethodMaps
    from captum_feedback.data.photos import load_image

    model = classifier(args)
    maps_of = MethodMaps(model.model, model.middle, model.last, ig_steps=32, internal_batch_size=16,
                         config=config(args))
    jobs = []  # every image read and every target resolved before anything is written
    for path in args.images:
        try:
            image, note = load_image(path, max_pixels=round(args.max_megapixels * 1e6) if args.downscale else None)
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from None
        if note:
            print(f"{path}: {note}", file=sys.stderr)
        x = model.inputs(image, args.resize)
        with torch.no_grad():
            logits = model.model(x)[0]
        jobs.append((path, image, x, logits, resolve_targets(args.target, logits, model.classes)))
    note = bypass_note(float(ungated_share(model.model, jobs[0][2], jobs[0][4][0])))
    if note:
        print(f"captum-feedback: note: {note}", file=sys.stderr)
    make_out_dir(args.out)
    written: List[Path] = []
    for path, image, x, logits, targets in tqdm(jobs, desc="explaining", unit="image", disable=len(jobs) < 2):
        probabilities = model.probabilities(logits[None])[0]
        for target in targets:
            try:
                energy = maps_of(x, target, [method_name(args.method)])[method_name(args.method)]
            except ValueError as error:  # a model the method cannot explain (no gate site, ...)
                raise CommandError(first_line(error)) from None
            stem = f"{Path(path).stem}_{_slug(model.classes[target])}_{args.method}"
            title = f"{model.classes[target]} ({probabilities[target]:.0%}) - {method_name(args.method)}"
            about = {"image": str(path), "class": model.classes[target], "probability": float(probabilities[target]),
                     "method": args.method, "resize": args.resize}
            written += write_explanation(args, stem, image, energy.cpu(), title, about)
    return written


def write_explanation(args: argparse.Namespace, stem: str, image: Tensor, energy: Tensor, title: str,
                      about: dict) -> List[Path]:
    """The overlay, mask, box (and with ``--save-maps`` the map) of one ``(1, 1, s, s)`` map on the
    model's square input, all in the photo's own pixels (:mod:`captum_feedback.models.framing`:
    the map and box go back to the part of the photo the model saw). The mask is cut at a working
    size of at most 1024 pixels a side and scaled to the photo, so that a large photo costs no
    more than that."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import torch.nn.functional as F
    from matplotlib import pyplot as plt

    from captum_feedback.app.visualization import visualize_energy_map
    from captum_feedback.models.framing import box_to_photo, map_to_photo
    from captum_feedback.wsol.localization import energy_box
    from captum_feedback.wsol.segmentation import saliency_cut, superpixel_regularize, superpixels

    height, width = image.shape[-2:]
    side = energy.shape[-1]
    box = energy_box(energy)
    photo_box = box_to_photo(box, side, (height, width), args.resize)[0].tolist()
    shrink = min(1.0, WORKING_SIDE / max(height, width))
    work = (max(1, round(height * shrink)), max(1, round(width * shrink)))
    work_map = map_to_photo(energy, work, args.resize)[0, 0]
    photo = image.float()[None] / 255
    photo = F.interpolate(photo, size=work, mode="area") if shrink < 1 else photo
    work_mask = saliency_cut(photo[0], superpixel_regularize(work_map[None], superpixels(photo))[0])
    mask = F.interpolate(work_mask[None, None].float(), size=(height, width), mode="nearest")[0, 0].bool()
    for problem in weak_outputs(mask, photo_box, (height, width)):
        print(f"{about['image']}, {about['class']}: {problem}", file=sys.stderr)
    figure, _ = visualize_energy_map(work_map, photo[0], boxes=torch.tensor([photo_box]) * shrink, mask=work_mask,
                                     title=title)
    figure.savefig(args.out / f"{stem}.png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    plt.imsave(args.out / f"{stem}_mask.png", mask.numpy(), cmap="gray")
    (args.out / f"{stem}_box.json").write_text(json.dumps(
        {**about, "box_xyxy": photo_box, "image_size": [height, width],
         "box_xyxy_on_model_input": box[0].tolist(), "input_size": [side, side]}))
    written = [args.out / f"{stem}.png", args.out / f"{stem}_mask.png", args.out / f"{stem}_box.json"]
    if args.save_maps:
        photo_map = map_to_photo(energy, (height, width), args.resize)[0, 0]
        np.save(args.out / f"{stem}_map.npy", photo_map.numpy().astype(np.float32))
        written.append(args.out / f"{stem}_map.npy")
    return written


WORKING_SIDE = 1024
"""The largest side at which ``explain`` cuts masks and draws overlays (outputs are scaled to the
photo): the work of a photo is bounded whatever its size."""


def demo(args: argparse.Namespace) -> List[Path]:
    """``captum-feedback demo``: the README's figures (:func:`captum_feedback.app.demo.run`)."""
    from captum_feedback.app.demo import run

    return run(args.out, config=config(args))


def benchmark(args: argparse.Namespace) -> List[Path]:
    """``captum-feedback benchmark``: one task over a data set folder (:mod:`captum_feedback.evaluation`)."""
    from captum_feedback.evaluation import run_benchmark

    grids = args.task == "grid-pointing"
    if grids:
        model = classifier(args)
        layout, split = grid_layout(args, model)
    else:
        layout, split = data_set(args)
        if args.num_classes not in (None, len(layout.classes)):
            raise CommandError(f"--num-classes {args.num_classes}, but the data set has {len(layout.classes)} "
                               "classes.")
        model = classifier(args, layout.classes if args.num_classes else None)
    try:
        methods = [method_name(m) for m in args.methods or TASK_DEFAULTS[args.task]]
    except ValueError as error:
        raise CommandError(str(error)) from None
    make_out_dir(args.out)
    settings = {"dataset": args.dataset, "root": str(args.root.resolve()) if args.root else None, "split": split,
                "year": args.year, "model": args.model or "efficientnet_lite0", "weights": str(args.weights)}
    if grids:
        settings.update(grid=args.grid, cell=layout.side, confidence=args.confidence, seed=args.seed,
                        cells=[c.key for c in layout.cells], faithfulness_steps=args.faithfulness_steps)
    try:
        summary = run_benchmark(args.task, layout, model, methods, args.out, config(args), args.tolerance,
                                args.box_fraction, args.limit, settings=settings,
                                faithfulness_steps=args.faithfulness_steps)
    except ValueError as error:
        raise CommandError(first_line(error)) from None
    if summary is None:  # a rank other than 0 of torchrun
        return []
    for method, scores in summary.items():
        print(f"{method}: {headline(args.task, scores)}")
    return [args.out / name for name in ("summary.json", "per_class.csv", "per_class.png", "run.json")]


def headline(task: str, scores: dict) -> str:
    """A method's scores in one line of the benchmark's console output."""
    if task == "segmentation":
        return f"mIoU {scores['miou']:.3f} ({scores['hits']} / {scores['total']} pixels)"
    if task == "grid-pointing":
        parts = []
        for measure in ("share", "pointing", "deletion", "insertion"):
            low, high = scores["intervals"][measure]
            parts.append(f"{measure} {scores[measure]:.3f} ({low:.3f}-{high:.3f})")
        return ", ".join(parts) + f"; {scores['targets']} targets in {scores['grids']} grids"
    return (f"mean per-class accuracy {scores['accuracy']:.3f} ({scores['hits']} hits of {scores['total']} "
            f"{'images' if task == 'localization' else 'targets'})")


def data_set(args: argparse.Namespace) -> Tuple[object, str]:
    """The ``--dataset`` layout at ``--root`` and its split, or a :class:`CommandError`."""
    from captum_feedback.data.layouts import open_layout

    split = args.split or ("test" if args.dataset == "voc" and args.task == "pointing" else "val")
    try:
        return open_layout(args.dataset, args.root, split, args.year, args.task == "segmentation",
                           args.synsets), split
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(first_line(error)) from None


def grid_layout(args: argparse.Namespace, model: Classifier) -> Tuple[object, str]:
    """The grids of ``benchmark grid-pointing`` (:func:`~captum_feedback.evaluation.tasks.grid_layout`)
    and the split their photos come from, or a :class:`CommandError`."""
    from captum_feedback.data import grids
    from captum_feedback.evaluation.tasks import GridError, cell_side, grid_layout

    split = args.split or ("heldout" if args.dataset == "photos" else "val")
    try:
        side = cell_side(model, args.grid, args.cell, scenes=args.dataset == "scenes")
        if args.dataset == "photos":
            candidates = grids.photo_candidates(None if split == "all" else split)
        elif args.dataset == "folder":
            candidates = grids.folder_candidates(args.root)
        elif args.dataset == "scenes":
            candidates = grids.scene_candidates(args.pool, side, args.seed)
        else:
            candidates = grids.layout_candidates(data_set(args)[0])
        return grid_layout(model, candidates, args.grids, args.grid, side, args.confidence, args.seed), split
    except (FileNotFoundError, ValueError, GridError) as error:
        raise CommandError(first_line(error)) from None


def bypass_note(share: float) -> str:
    """A note for a model whose input gradient mostly survives closing every gate
    (:func:`~captum_feedback.core.attribution.ungated_share`)."""
    if share <= 0.5:
        return ""
    return (f"with every gate site closed, the target's input gradient keeps {share:.0%} of its size: most of it "
            "takes paths through no activation (a residual stream, as in transformers), so FSP's maps stay close "
            "to the gradient there.")


def weak_outputs(mask: Tensor, box: Sequence[float], size: Tuple[int, int]) -> List[str]:
    """Notes for outputs that say little: an empty mask, a mask or box over most of the photo."""
    notes = []
    area = size[0] * size[1]
    if not mask.any():
        notes.append("the mask is empty (the map has no region that stands out).")
    elif mask.float().mean() > 0.5:
        notes.append(f"the mask covers {mask.float().mean():.0%} of the photo: the map does not single out an "
                     "object here (a class the photo shows large, or evidence spread over the scene); read it as "
                     "where the class's evidence lies, not as the object's outline.")
    x1, y1, x2, y2 = box
    if (x2 - x1) * (y2 - y1) >= 0.6 * area:
        notes.append(f"the box covers {(x2 - x1) * (y2 - y1) / area:.0%} of the photo: 99% of the map's energy is "
                     "spread that wide, so the box localizes little.")
    return notes


def make_out_dir(out: Path) -> None:
    """Creates ``--out``, or says in one line why it cannot be."""
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create --out {out}: {error.strerror or error}.") from None


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
