"""captum-feedback: Feedback CNN maps, boxes and masks for images, the README's demo, and the
paper's tables on data sets.

examples:
  captum-feedback explain cat.jpg dog.png --target auto --method summation --out maps/
  captum-feedback explain street.jpg --target "school bus" --target cab
  captum-feedback explain x.jpg --model resnet50 --weights resnet50.pth --target top3
  captum-feedback classes horse                    # ImageNet classes for a word (sorrel, ...)
  captum-feedback demo --out figures
  captum-feedback benchmark pointing --dataset voc --root ~/data --year 2007 --out runs/voc07
  torchrun --nproc-per-node 2 --no-python captum-feedback benchmark pointing --dataset voc ...

explain writes, per image and target, <image>_<class>_<method>.png (the energy map over the
photo with its 99%-energy box and the segmentation mask outlined), _mask.png and _box.json, all
in the photo's own pixels. Errors (a missing or unreadable image, an unknown class, a bad
weights file, ...) print one line on stderr and exit with status 2, before any model loads;
Ctrl-C ends with one line and status 130 (SIGTERM: 143), a benchmark's records kept for a rerun.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

from captum_feedback.app import checks
from captum_feedback.app.checks import CommandError
from captum_feedback.compare.registry import REGISTRY, TASK_DEFAULTS

MAP_SLUGS = tuple(m.slug for m in REGISTRY if m.family != "boxes")

DATASETS = ("voc", "coco", "imagenet", "folder", "photos", "scenes")
"""Data set layouts (``voc``, ``coco``, ``imagenet``), any folder of images, the photos that
installed packages ship, and single-item cluttered scenes; the last three for grid-pointing only."""


CONFIG_NAMES = ("default", "paper", "released_code", "pruning")
"""The presets of :data:`captum_feedback.PRESETS` (named here so that ``--help`` needs no torch)."""


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


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="an embedded model (efficientnet_lite0, the default; cluttered_vgg or "
                        "cluttered_resnet, the scene models) or a torchvision model name")
    parser.add_argument("--weights", type=Path, help="state dict for a torchvision --model (never downloaded)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", choices=CONFIG_NAMES, default="default",
                        help="the feedback maps' configuration (default: %(default)s)")
    parser.add_argument("--updates", type=_positive, default=None,
                        help="FSP's gate updates over all stages (default: the configuration's)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captum-feedback", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    ex = commands.add_parser("explain", help="energy maps, boxes and masks for images")
    ex.add_argument("images", nargs="+", type=Path)
    ex.add_argument("--target", action="append", default=None,
                    help="class name or index, 'auto' (top class) or 'topK'; repeatable (default auto)")
    ex.add_argument("--method", choices=MAP_SLUGS, default="summation", metavar="METHOD",
                    help="the map: " + ", ".join(MAP_SLUGS) + " (default: %(default)s)")
    ex.add_argument("--out", type=Path, default=Path("explanations"),
                    help="folder for the outputs (default: %(default)s)")
    ex.add_argument("--save-maps", action="store_true",
                    help="also write each energy map, at the photo's size, as <stem>_map.npy")
    ex.add_argument("--resize", choices=("squeeze", "crop"), default="squeeze",
                    help="how a photo becomes the model's square input: squeezed whole, or its centre square "
                         "(the Python API's models.preprocess); outputs stay in the photo's pixels "
                         "(default: %(default)s)")
    ex.add_argument("--max-megapixels", type=float, default=checks.DEFAULT_MAX_MEGAPIXELS,
                    help="refuse larger photos, from their header (default: %(default)s)")
    ex.add_argument("--downscale", action="store_true",
                    help="explain a photo over --max-megapixels at that size instead of refusing it")
    _model_arguments(ex)
    for command in (ex, commands.add_parser("demo", help="the README's demo: figures for bundled photos")):
        _config_arguments(command)
    commands.choices["demo"].add_argument("--out", type=Path, default=Path("figures"),
                                          help="folder for the figures (default: %(default)s)")
    cl = commands.add_parser("classes", help="the model's classes, all or those a word finds (with synonyms)",
                             description="Lists the model's classes with their indices: all of them, or those "
                                         "matching each query (names, then WordNet synonyms and kinds where "
                                         "Debian's wordnet-base is installed, then definitions).")
    cl.add_argument("queries", nargs="*", help="words to look for (default: list every class)")
    cl.add_argument("--model", help="an embedded model or a torchvision model name (default: efficientnet_lite0)")
    _benchmark_arguments(commands.add_parser(
        "benchmark", help="the paper's tables on a data set folder; one process, or many under torchrun",
        description="Pointing game (VOC, COCO), localization errors (ImageNet) or segmentation mIoU (VOC) of "
                    "each method over a data set; resumable, and sharded over torchrun's processes."))
    return parser


def _benchmark_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("task", choices=tuple(TASK_DEFAULTS))
    bench.add_argument("--dataset", choices=DATASETS, required=True,
                       help="the folder's layout (voc, coco, imagenet); for grid-pointing also any folder of "
                            "images (folder), the photos installed packages ship (photos) or single-item "
                            "cluttered scenes (scenes)")
    bench.add_argument("--root", type=Path, help="the data set folder (not for photos and scenes)")
    bench.add_argument("--year", type=int, help="VOC's or COCO's year (e.g. 2007; COCO default 2014)")
    bench.add_argument("--split", help="image list (default: test for VOC pointing, else val); for --dataset photos "
                       "the pool's split: heldout (default), tune or all")
    bench.add_argument("--synsets", type=Path, help="ImageNet's 'wnid name' list in output order "
                       "(default: ROOT/LOC_synset_mapping.txt)")
    bench.add_argument("--methods", nargs="+", help="method names or CLI spellings (default per task: "
                       + "; ".join(f"{t}: {', '.join(m)}" for t, m in TASK_DEFAULTS.items()) + ")")
    bench.add_argument("--limit", type=_positive, help="score only the first N images (default: all)")
    bench.add_argument("--out", type=Path, required=True, help="folder of records and report; a rerun resumes")
    bench.add_argument("--tolerance", type=_non_negative, default=15,
                       help="pointing: pixels a hit may miss the region by (0: the paper's rule; default %(default)s)")
    bench.add_argument("--box-fraction", type=float, default=0.99,
                       help="localization: the share of energy a box keeps (default %(default)s)")
    bench.add_argument("--num-classes", type=_positive, help="a torchvision model's outputs when trained on the "
                       "data set's classes (e.g. 20 for VOC), in the data set's class order")
    grid = bench.add_argument_group(
        "grid-pointing", "Grids of k x k photos of different classes, each classified confidently on its own "
        "(B-cos, CVPR 2022); each cell's class is explained once on the whole grid. Scores per method: the share "
        "of the map's energy in the cell (chance 1/k^2), pointing (its maximum in the cell), RISE's deletion "
        "(lower is better) and insertion (higher is better) areas, with 95% bootstrap intervals over grids.")
    grid.add_argument("--grids", type=_positive, default=50, help="grids to score (default %(default)s)")
    grid.add_argument("--grid", type=_at_least(2), default=2, help="cells per side (default %(default)s)")
    grid.add_argument("--cell", type=_at_least(8), help="a cell's side in pixels (default: the model's input size / "
                      "--grid for scenes and for models of one input size, else 160)")
    grid.add_argument("--confidence", type=float, default=0.5,
                      help="least probability of a photo's top-1 class on its own (default %(default)s)")
    grid.add_argument("--seed", type=_non_negative, default=0,
                      help="the grids' draws, and the scenes of --dataset scenes (default %(default)s)")
    grid.add_argument("--pool", type=_positive, default=400,
                      help="single-item scenes to choose cells from, --dataset scenes (default %(default)s)")
    grid.add_argument("--faithfulness-steps", type=_positive, default=16,
                      help="points of the deletion and insertion curves (default %(default)s)")
    _model_arguments(bench)
    _config_arguments(bench)


class Terminated(Exception):
    """SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt``."""


def _terminate(_signal: int, _frame: object) -> None:
    raise Terminated


def check(args: argparse.Namespace) -> None:
    """Every check that needs no model: the device, weights, photos and named targets of
    ``explain``, the folders of ``benchmark``."""
    if args.command in ("explain", "benchmark"):
        checks.check_device(args.device)
        checks.check_weights(args.weights)
    if args.command == "explain":
        for path in args.images:
            checks.photo_size(path, args.max_megapixels, args.downscale)
        checks.check_targets(args.target, checks.model_classes(args.model))
    if args.command == "benchmark":
        check_dataset(args)


def check_dataset(args: argparse.Namespace) -> None:
    """The data set of ``benchmark``: one the task takes, with ``--root`` where it needs one."""
    if args.task != "grid-pointing" and args.dataset in ("folder", "photos", "scenes"):
        raise CommandError(f"--dataset {args.dataset} is for grid-pointing; {args.task} needs voc, coco or imagenet.")
    if (args.root is None) != (args.dataset in ("photos", "scenes")):
        raise CommandError(f"--dataset {args.dataset} " + ("needs --root." if args.root is None else
                                                           "takes no --root."))
    if args.root is not None and not args.root.exists():
        raise CommandError(f"--root {args.root} does not exist.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # where signal handlers may be set
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        if args.command == "explain":
            args.target = args.target or ["auto"]
        check(args)
        if args.command == "classes":
            checks.list_classes(args.queries, args.model)
            return 0
        from captum_feedback.app import commands
        from captum_feedback.core.allocator import keep_freed_memory

        keep_freed_memory()  # FSP's passes reuse their pages (the command's process is ours)
        written = {"explain": commands.explain, "benchmark": commands.benchmark,
                   "demo": commands.demo}[args.command](args)
    except CommandError as error:
        print(f"captum-feedback: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captum-feedback: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("captum-feedback: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:  # the reader went away (captum-feedback classes | head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    if written:
        print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
