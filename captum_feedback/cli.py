"""The ``captum-feedback`` command: explain images with the embedded model, or run the demo.

::

    captum-feedback explain cat.jpg dog.png --target auto --method summation --out maps/
    captum-feedback explain street.jpg --target "school bus" --target "cab"
    captum-feedback explain x.jpg --model resnet50 --weights resnet50.pth --target top3
    captum-feedback demo --out figures
    captum-feedback benchmark pointing --dataset voc --root ~/data --year 2007 --out runs/voc07
    torchrun --nproc-per-node 2 --no-python captum-feedback benchmark pointing --dataset voc ...

``explain`` writes, per image and target, ``<image>_<class>_<method>.png`` (the energy map over
the photo with its 99%-energy box and the segmentation mask outlined), ``..._mask.png`` and a
``..._box.json``. Errors (a missing or unreadable image, an unknown class, a bad weights file)
print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_feedback.classifiers import Classifier, ModelError, first_line, load_classifier
from captum_feedback.config import PRESETS, resolve_config

METHODS = ("fsp", "summation", "fsp-fr", "summation-fsp-fr", "fr", "saliency", "integrated-gradients",
           "guided-backprop", "grad-cam")
_METHOD_NAMES = {"fsp": "FSP", "summation": "FSP Summation", "fsp-fr": "FSP-FR",
                 "summation-fsp-fr": "Summation-FSP-FR", "fr": "FR", "saliency": "Saliency",
                 "integrated-gradients": "IntegratedGradients", "guided-backprop": "GuidedBackprop",
                 "grad-cam": "LayerGradCam"}


class CommandError(Exception):
    """A problem to report as one line on stderr."""


def resolve_targets(spec: Sequence[str], logits: Tensor, classes: Sequence[str]) -> List[int]:
    """Class indices for ``--target`` values: names, indices, ``auto`` (top class) or ``topK``."""
    chosen: List[int] = []
    n = len(classes)
    for item in spec:
        top = re.fullmatch(r"top(\d+)", item.lower())
        if item.lower() == "auto":
            chosen.append(int(logits.argmax()))
        elif top:
            k = int(top.group(1))
            if not 1 <= k <= n:
                raise CommandError(f"--target {item}: K must lie in 1..{n} (the model has {n} classes).")
            chosen += logits.topk(k).indices.tolist()
        elif item.isdigit():
            if int(item) >= n:
                raise CommandError(f"--target {item}: class index out of range (0..{n - 1}).")
            chosen.append(int(item))
        else:
            chosen.append(_class_by_name(item, classes))
    return list(dict.fromkeys(chosen))


def _class_by_name(name: str, classes: Sequence[str]) -> int:
    lowered = [c.lower() for c in classes]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    close = [c for c in classes if name.lower() in c.lower()][:5]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise CommandError(f"unknown class {name!r}.{hint}")


def classifier(args: argparse.Namespace) -> Classifier:
    """The ``--model`` / ``--weights`` classifier on ``--device``, or a :class:`CommandError`."""
    try:
        return load_classifier(args.model, args.weights).to(device(args.device))
    except ModelError as error:
        raise CommandError(str(error)) from None


def device(name: str) -> torch.device:
    """``--device``: ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise CommandError(f"--device {name}: not a device (cpu, cuda, cuda:N).") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: CUDA is not available on this machine.")
    return chosen


def explain(args: argparse.Namespace) -> List[Path]:
    from tqdm import tqdm

    from captum_feedback.methods import MethodMaps
    from captum_feedback.photos import load_image

    model = classifier(args)
    try:
        config = resolve_config(args.config, iterations=args.iterations)
    except ValueError as error:
        raise CommandError(str(error)) from None
    maps_of = MethodMaps(model.model, model.middle, model.last, ig_steps=32, internal_batch_size=16, config=config)
    jobs = []  # every image read and every target resolved before anything is written
    for path in args.images:
        try:
            image, note = load_image(path)
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from None
        if note:
            print(f"{path}: {note}", file=sys.stderr)
        x = model.normalize(model.squeeze(image[None]).to(device(args.device)))
        with torch.no_grad():
            logits = model.model(x)[0]
        jobs.append((path, image, x, logits, resolve_targets(args.target, logits, model.classes)))
    make_out_dir(args.out)
    written: List[Path] = []
    for path, image, x, logits, targets in tqdm(jobs, desc="explaining", unit="image", disable=len(jobs) < 2):
        for target in targets:
            try:
                energy = maps_of(x, target, [_METHOD_NAMES[args.method]])[_METHOD_NAMES[args.method]]
            except ValueError as error:  # a model the method cannot explain (no gate site, ...)
                raise CommandError(first_line(error)) from None
            stem = f"{Path(path).stem}_{_slug(model.classes[target])}_{args.method}"
            title = f"{model.classes[target]} ({logits.softmax(0)[target]:.0%}) - {_METHOD_NAMES[args.method]}"
            written += write_explanation(args, stem, image, energy.cpu(), title,
                                         {"image": str(path), "class": model.classes[target], "method": args.method})
    return written


def write_explanation(args: argparse.Namespace, stem: str, image: Tensor, energy: Tensor, title: str,
                      about: dict) -> List[Path]:
    """The overlay, mask, box (and with ``--save-maps`` the map) of one ``(1, 1, s, s)`` map on the
    model's square input, all in the photo's own pixels: the map is resized to the photo's
    ``(H, W)`` (the model saw the whole photo, squeezed), the box found on the model's input is
    scaled, and the mask is cut on the photo."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    import torch.nn.functional as F
    from matplotlib import pyplot as plt

    from captum_feedback.localization import energy_box
    from captum_feedback.segmentation import saliency_cut, superpixel_regularize, superpixels
    from captum_feedback.visualization import visualize_energy_map

    height, width = image.shape[-2:]
    side = energy.shape[-1]
    box = energy_box(energy)
    photo_box = (box[0] * torch.tensor([width / side, height / side] * 2)).tolist()
    photo_map = F.interpolate(energy, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    photo = image.float()[None] / 255
    mask = saliency_cut(photo[0], superpixel_regularize(photo_map[None], superpixels(photo))[0])
    for problem in _weak_outputs(mask, box, (side, side)):
        print(f"{about['image']}, {about['class']}: {problem}", file=sys.stderr)
    figure, _ = visualize_energy_map(photo_map, photo[0], boxes=torch.tensor([photo_box]), mask=mask, title=title)
    figure.savefig(args.out / f"{stem}.png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    plt.imsave(args.out / f"{stem}_mask.png", mask.numpy(), cmap="gray")
    (args.out / f"{stem}_box.json").write_text(json.dumps(
        {**about, "box_xyxy": photo_box, "image_size": [height, width],
         "box_xyxy_on_model_input": box[0].tolist(), "input_size": [side, side]}))
    written = [args.out / f"{stem}.png", args.out / f"{stem}_mask.png", args.out / f"{stem}_box.json"]
    if args.save_maps:
        np.save(args.out / f"{stem}_map.npy", photo_map.numpy().astype(np.float32))
        written.append(args.out / f"{stem}_map.npy")
    return written


BENCHMARK_DEFAULTS = {"pointing": ("FSP Summation", "LayerGradCam", "Saliency", "Center"),
                      "localization": ("FSP two-stage (Procedure 1)", "FSP Summation", "LayerGradCam"),
                      "segmentation": ("Summation-FSP-FR", "LayerGradCam")}


def benchmark(args: argparse.Namespace) -> List[Path]:
    """``captum-feedback benchmark``: one task over a data set folder (:mod:`captum_feedback.benchmark`)."""
    from captum_feedback.benchmark import run_benchmark
    from captum_feedback.benchmark.runner import rank_device
    from captum_feedback.data.layouts import open_layout

    split = args.split or ("test" if args.dataset == "voc" and args.task == "pointing" else "val")
    try:
        layout = open_layout(args.dataset, args.root, split, args.year, args.task == "segmentation", args.synsets)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(first_line(error)) from None
    if args.num_classes not in (None, len(layout.classes)):
        raise CommandError(f"--num-classes {args.num_classes}, but the data set has {len(layout.classes)} classes.")
    try:
        named = layout.classes if args.num_classes else None
        model = load_classifier(args.model, args.weights, args.num_classes, named).to(rank_device(device(args.device)))
        config = resolve_config(args.config, iterations=args.iterations)
    except (ModelError, ValueError) as error:
        raise CommandError(first_line(error)) from None
    methods = [_METHOD_NAMES.get(m, m) for m in args.methods or BENCHMARK_DEFAULTS[args.task]]
    make_out_dir(args.out)
    settings = {"dataset": args.dataset, "root": str(args.root.resolve()), "split": split, "year": args.year,
                "model": args.model or "efficientnet_lite0", "weights": str(args.weights)}
    try:
        summary = run_benchmark(args.task, layout, model, methods, args.out, config, args.tolerance, args.box_fraction,
                                args.limit, settings=settings)
    except ValueError as error:
        raise CommandError(first_line(error)) from None
    if summary is None:  # a rank other than 0 of torchrun
        return []
    for method, scores in summary.items():
        headline = f"mIoU {scores['miou']:.3f}" if "miou" in scores else f"accuracy {scores['accuracy']:.3f}"
        print(f"{method}: {headline} ({scores['hits']} / {scores['total']})")
    return [args.out / name for name in ("summary.json", "per_class.csv", "per_class.png", "run.json")]


def _weak_outputs(mask: Tensor, box: Tensor, size: Tuple[int, int]) -> List[str]:
    """Notes for outputs that say little: an empty mask, a box over nearly the whole image."""
    notes = []
    if not mask.any():
        notes.append("the mask is empty (the map has no region that stands out).")
    x1, y1, x2, y2 = box[0].tolist()
    if (x2 - x1) * (y2 - y1) >= 0.9 * size[0] * size[1]:
        notes.append("the box covers over 90% of the image: the map is too diffuse for a box.")
    return notes


def make_out_dir(out: Path) -> None:
    """Creates ``--out``, or says in one line why it cannot be."""
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file, not a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"cannot create --out {out}: {error.strerror or error}.") from None


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be at least {low}")
        return value

    return parse


_positive, _non_negative = _at_least(1), _at_least(0)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("captum_feedback")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="an embedded model (efficientnet_lite0, the default, or cluttered_vgg) or "
                        "a torchvision model name")
    parser.add_argument("--weights", type=Path, help="state dict for a torchvision --model (never downloaded)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", choices=sorted(PRESETS), default="default",
                        help="the feedback maps' configuration (default: %(default)s)")
    parser.add_argument("--iterations", type=_positive, default=None,
                        help="FSP updates of the last stage (default: the configuration's)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captum-feedback", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ex = commands.add_parser("explain", help="energy maps, boxes and masks for images")
    ex.add_argument("images", nargs="+", type=Path)
    ex.add_argument("--target", action="append", default=None,
                    help="class name or index, 'auto' (top class) or 'topK'; repeatable (default auto)")
    ex.add_argument("--method", choices=METHODS, default="summation")
    ex.add_argument("--out", type=Path, default=Path("explanations"),
                    help="folder for the outputs (default: %(default)s)")
    ex.add_argument("--save-maps", action="store_true",
                    help="also write each energy map, at the photo's size, as <stem>_map.npy")
    _model_arguments(ex)
    for command in (ex, commands.add_parser("demo", help="the README's demo: figures for bundled photos")):
        _config_arguments(command)
    commands.choices["demo"].add_argument("--out", type=Path, default=Path("figures"))
    _benchmark_arguments(commands.add_parser(
        "benchmark", help="the paper's tables on a data set folder; one process, or many under torchrun",
        description="Pointing game (VOC, COCO), localization errors (ImageNet) or segmentation mIoU (VOC) of "
                    "each method over a data set; resumable, and sharded over torchrun's processes."))
    return parser


def _benchmark_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("task", choices=tuple(BENCHMARK_DEFAULTS))
    bench.add_argument("--dataset", choices=("voc", "coco", "imagenet"), required=True, help="the folder's layout")
    bench.add_argument("--root", type=Path, required=True, help="the data set folder")
    bench.add_argument("--year", type=int, help="VOC's or COCO's year (e.g. 2007; COCO default 2014)")
    bench.add_argument("--split", help="image list (default: test for VOC pointing, else val)")
    bench.add_argument("--synsets", type=Path, help="ImageNet's 'wnid name' list in output order "
                       "(default: ROOT/LOC_synset_mapping.txt)")
    bench.add_argument("--methods", nargs="+", help="method names (default per task: "
                       + "; ".join(f"{t}: {', '.join(m)}" for t, m in BENCHMARK_DEFAULTS.items()) + ")")
    bench.add_argument("--limit", type=_positive, help="score only the first N images")
    bench.add_argument("--out", type=Path, required=True, help="folder of records and report; a rerun resumes")
    bench.add_argument("--tolerance", type=_non_negative, default=15,
                       help="pointing: pixels a hit may miss the region by (0: the paper's rule; default %(default)s)")
    bench.add_argument("--box-fraction", type=float, default=0.99,
                       help="localization: the share of energy a box keeps (default %(default)s)")
    bench.add_argument("--num-classes", type=_positive, help="a torchvision model's outputs when trained on the "
                       "data set's classes (e.g. 20 for VOC), in the data set's class order")
    _model_arguments(bench)
    _config_arguments(bench)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "explain":
            args.target = args.target or ["auto"]
            written = explain(args)
        elif args.command == "benchmark":
            written = benchmark(args)
        else:
            from captum_feedback.demo import run

            written = run(args.out, config=resolve_config(args.config, iterations=args.iterations))
    except CommandError as error:
        print(f"captum-feedback: error: {error}", file=sys.stderr)
        return 2
    if written:
        print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
