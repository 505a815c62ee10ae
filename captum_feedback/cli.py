"""The ``captum-feedback`` command: explain images with the embedded model, or run the demo.

::

    captum-feedback explain cat.jpg dog.png --target auto --method summation --out maps/
    captum-feedback explain street.jpg --target "school bus" --target "cab"
    captum-feedback explain x.jpg --model resnet50 --weights resnet50.pth --target top3
    captum-feedback demo --out figures

``explain`` writes, per image and target, ``<image>_<class>_<method>.png`` (the energy map over
the photo with its 99%-energy box and the segmentation mask outlined), ``..._mask.png`` and a
``..._box.json``. Errors (a missing or unreadable image, an unknown class, a bad weights file)
print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_feedback.config import PRESETS, resolve_config

METHODS = ("fsp", "summation", "fsp-fr", "summation-fsp-fr", "fr", "saliency", "integrated-gradients",
           "guided-backprop", "grad-cam")
_METHOD_NAMES = {"fsp": "FSP", "summation": "FSP Summation", "fsp-fr": "FSP-FR",
                 "summation-fsp-fr": "Summation-FSP-FR", "fr": "FR", "saliency": "Saliency",
                 "integrated-gradients": "IntegratedGradients", "guided-backprop": "GuidedBackprop",
                 "grad-cam": "LayerGradCam"}


_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU)


class CommandError(Exception):
    """A problem to report as one line on stderr."""


class Explainer:
    """A classifier with what ``explain`` needs: preprocessing, class names, and the layers for
    FSP-FR and Grad-CAM."""

    def __init__(self, model: nn.Module, preprocess: Callable[[Tensor], Tensor], classes: List[str],
                 middle: nn.Module, last: nn.Module) -> None:
        self.model, self.preprocess, self.classes, self.middle, self.last = model, preprocess, classes, middle, last

    def targets(self, spec: Sequence[str], logits: Tensor) -> List[int]:
        """Class indices for ``--target`` values: names, indices, ``auto`` (top class) or ``topK``."""
        chosen: List[int] = []
        n = len(self.classes)
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
                chosen.append(self._class_by_name(item))
        return list(dict.fromkeys(chosen))

    def _class_by_name(self, name: str) -> int:
        lowered = [c.lower() for c in self.classes]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        close = [c for c in self.classes if name.lower() in c.lower()][:5]
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CommandError(f"unknown class {name!r}.{hint}")


def embedded_explainer() -> Explainer:
    from captum_feedback.models import efficientnet_lite0, imagenet_classes, preprocess
    from captum_feedback.models.efficientnet_lite import feedback_layer

    model = efficientnet_lite0()
    return Explainer(model, preprocess, imagenet_classes(), feedback_layer(model), model.head_relu)


def torchvision_explainer(name: str, weights: Path) -> Explainer:
    """A torchvision classifier by name, its ImageNet weights read from ``weights``."""
    import torchvision

    from captum_feedback.models import imagenet_classes

    builder = getattr(torchvision.models, name, None)
    if builder is None or not callable(builder) or name not in torchvision.models.list_models():
        raise CommandError(f"unknown torchvision model {name!r}; see torchvision.models.list_models().")
    model = builder(weights=None)
    if not weights.is_file():
        raise CommandError(f"no weights file at {weights}.")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never for a user's file
        raise CommandError(f"cannot load weights {weights}: not a file of tensors that loads safely "
                           "(torch.load(weights_only=True) refused it; save model.state_dict()).") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise CommandError(f"cannot load weights {weights}: {_first_line(error)}") from None
    try:
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    except Exception as error:  # noqa: BLE001 - a state dict of another model, or not a dict
        raise CommandError(f"cannot load weights {weights} into {name}: {_first_line(error)}") from None
    model.eval()
    middle, last = _torchvision_layers(model)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]

    def preprocess(image: Tensor) -> Tensor:
        from captum_feedback.models import preprocess as resize_and_scale

        return ((resize_and_scale(image) + 1) / 2 - mean) / std

    return Explainer(model, preprocess, imagenet_classes(), middle, last)


def _torchvision_layers(model: nn.Module) -> Tuple[nn.Module, nn.Module]:
    """The layer for FSP-FR (about two thirds deep) and the one for Grad-CAM (the last), chosen
    among the submodules that return a ``(B, C, H, W)`` map once per forward pass (a reused
    ``relu`` module, as in ResNet, has no single output to target)."""
    calls: List[nn.Module] = []
    shapes = {}

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        calls.append(module)
        shapes[module] = output.dim() if isinstance(output, Tensor) else 0

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
    finally:
        for handle in handles:
            handle.remove()
    once = [m for m in dict.fromkeys(calls) if calls.count(m) == 1 and shapes[m] == 4]
    rectified = [m for m in once if isinstance(m, _ACTIVATIONS) or any(True for _ in m.children())]
    once = rectified or once  # activations and blocks (which end in one) before convs and norms
    if not once:
        raise CommandError("the model has no layer with a spatial output to read maps from.")
    return once[(2 * len(once)) // 3], once[-1]


def explain(args: argparse.Namespace) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from tqdm import tqdm

    from captum_feedback.localization import energy_box
    from captum_feedback.methods import MethodMaps
    from captum_feedback.photos import load_image
    from captum_feedback.segmentation import saliency_cut, superpixel_regularize, superpixels
    from captum_feedback.visualization import as_image, visualize_energy_map

    if args.model and args.weights is None:
        raise CommandError("--model needs --weights PATH (weights are never downloaded).")
    explainer = torchvision_explainer(args.model, args.weights) if args.model else embedded_explainer()
    try:
        config = resolve_config(args.config, iterations=args.iterations)
    except ValueError as error:
        raise CommandError(str(error)) from None
    maps_of = MethodMaps(explainer.model, explainer.middle, explainer.last, ig_steps=32, internal_batch_size=16,
                         config=config)
    method = _METHOD_NAMES[args.method]
    jobs = []  # every image read and every target resolved before anything is written
    for path in args.images:
        try:
            image, note = load_image(path)
        except (FileNotFoundError, ValueError) as error:
            raise CommandError(str(error)) from None
        if note:
            print(f"{path}: {note}", file=sys.stderr)
        x = explainer.preprocess(image)
        with torch.no_grad():
            logits = explainer.model(x)[0]
        jobs.append((path, x, logits, explainer.targets(args.target, logits)))
    make_out_dir(args.out)
    written: List[Path] = []
    for path, x, logits, targets in tqdm(jobs, desc="explaining", unit="image", disable=len(jobs) < 2):
        display = torch.from_numpy(as_image(x[0])).permute(2, 0, 1)[None]
        regions = superpixels(display)
        for target in targets:
            try:
                energy = maps_of(x, target, [method])[method]
            except ValueError as error:  # a model the method cannot explain (no gate site, ...)
                raise CommandError(_first_line(error)) from None
            box = energy_box(energy)
            mask = saliency_cut(display[0], superpixel_regularize(energy[:, 0], regions)[0])
            stem = f"{Path(path).stem}_{_slug(explainer.classes[target])}_{args.method}"
            for problem in _weak_outputs(mask, box, tuple(x.shape[-2:])):
                print(f"{path}, {explainer.classes[target]}: {problem}", file=sys.stderr)
            title = f"{explainer.classes[target]} ({logits.softmax(0)[target]:.0%}) - {method}"
            figure, _ = visualize_energy_map(energy[0], display[0], boxes=box, mask=mask, title=title)
            figure.savefig(args.out / f"{stem}.png", dpi=110, bbox_inches="tight")
            plt.close(figure)
            plt.imsave(args.out / f"{stem}_mask.png", mask.numpy(), cmap="gray")
            (args.out / f"{stem}_box.json").write_text(json.dumps(
                {"image": str(path), "class": explainer.classes[target], "method": args.method,
                 "box_xyxy_on_model_input": box[0].tolist(), "input_size": list(x.shape[-2:])}))
            written += [args.out / f"{stem}.png", args.out / f"{stem}_mask.png", args.out / f"{stem}_box.json"]
    return written


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


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(error: BaseException) -> str:
    """An exception's first line, without terminal colour codes."""
    text = _ANSI.sub("", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captum-feedback", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ex = commands.add_parser("explain", help="energy maps, boxes and masks for images")
    ex.add_argument("images", nargs="+", type=Path)
    ex.add_argument("--target", action="append", default=None,
                    help="class name or index, 'auto' (top class) or 'topK'; repeatable (default auto)")
    ex.add_argument("--method", choices=METHODS, default="summation")
    ex.add_argument("--out", type=Path, default=Path("explanations"))
    ex.add_argument("--model", help="a torchvision model name (default: the embedded EfficientNet-Lite0)")
    ex.add_argument("--weights", type=Path, help="state dict for --model")
    for command in (ex, commands.add_parser("demo", help="the README's demo: figures for bundled photos")):
        command.add_argument("--config", choices=sorted(PRESETS), default="default",
                             help="the feedback maps' configuration (default: %(default)s)")
        command.add_argument("--iterations", type=_positive, default=None,
                             help="FSP updates of the last stage (default: the configuration's)")
    commands.choices["demo"].add_argument("--out", type=Path, default=Path("figures"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "explain":
            args.target = args.target or ["auto"]
            written = explain(args)
        else:
            from captum_feedback.demo import run

            written = run(args.out, config=resolve_config(args.config, iterations=args.iterations))
    except CommandError as error:
        print(f"captum-feedback: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
