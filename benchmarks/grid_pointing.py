"""The grid pointing game on the three test beds of issue #21, every method and configuration
side by side, with 95% bootstrap intervals over grids.

* ``efficientnet_lite0`` (global average pooling, real ImageNet weights) on grids of 2 x 2 real
  photos of 160 pixels from the package photo pool (:mod:`captum_feedback.data.photo_pool`);
* ``cluttered_vgg`` (fully connected head) and ``cluttered_resnet`` (global average pooling) on
  grids of single-item cluttered scenes of 48 pixels (96 x 96, the VGG's input).

``--split tune`` (photos of the pool's tune split, scenes of seed 1) is what configurations were
chosen on; ``--split heldout`` (the pool's held-out photos, scenes of seed 0) reports them. Each
test bed's run is an ordinary ``captum-feedback benchmark grid-pointing`` run per configuration
(records in ``OUT/<test bed>/<configuration>``, resumable); the extra configurations add their
Summation and FSP maps as rows.

Usage::

    python benchmarks/grid_pointing.py --split heldout --grids 50 --out benchmarks/results/grid
    python benchmarks/grid_pointing.py --split tune --grids 10 --beds cluttered_vgg   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

from captum_feedback.core.config import PRESETS, FeedbackConfig
from captum_feedback.data import grids
from captum_feedback.evaluation import run_benchmark
from captum_feedback.evaluation.tasks import cell_side, grid_layout
from captum_feedback.models.classifiers import Classifier, load_classifier

METHODS = ("FSP Summation", "Summation, no FSP", "FSP", "LayerGradCam",
           "IntegratedGradients", "InputXGradient", "Saliency", "Center")
"""The default configuration's rows (and the no-FSP ablations of its map)."""
CONFIG_METHODS = ("FSP Summation", "FSP")
CONFIGS: Dict[str, FeedbackConfig] = {"paper": PRESETS["paper"], "released_code": PRESETS["released_code"],
                                      "pruning (default before #21)": PRESETS["pruning"]}
BEDS = ("efficientnet_lite0", "cluttered_vgg", "cluttered_resnet")
MEASURES = ("share", "pointing", "deletion", "insertion")


def candidates(bed: str, split: str, side: int) -> List[grids.Candidate]:
    if bed == "efficientnet_lite0":
        return grids.photo_candidates(split)
    return grids.scene_candidates(400, side, seed=1 if split == "tune" else 0)


def bed_layout(bed: str, split: str, count: int) -> Tuple[Classifier, grids.GridLayout]:
    """A test bed's classifier and its ``count`` 2 x 2 grids of ``split`` (seed 1: tune, 0: held out)."""
    classifier = load_classifier(bed)
    side = cell_side(classifier, 2, scenes=bed != "efficientnet_lite0")
    seed = 1 if split == "tune" else 0
    return classifier, grid_layout(classifier, candidates(bed, split, side), count, 2, side, 0.5, seed)


def run_bed(bed: str, args: argparse.Namespace) -> Dict[str, dict]:
    """Every row of one test bed: the default's methods, then each extra configuration's."""
    classifier, layout = bed_layout(bed, args.split, args.grids)
    rows: Dict[str, dict] = {}
    runs = [("default", PRESETS["default"], METHODS)] + [(name, c, CONFIG_METHODS) for name, c in CONFIGS.items()]
    for name, config, methods in runs:
        out = args.out / bed / name.split(" ")[0]
        settings = {"bed": bed, "split": args.split, "cells": [c.key for c in layout.cells]}
        summary = run_benchmark("grid-pointing", layout, classifier, methods, out, config, settings=settings,
                                faithfulness_steps=args.steps)
        rows.update({m if name == "default" else f"{m} [{name}]": s for m, s in summary.items()})
    return rows


def markdown(rows: Dict[str, dict]) -> str:
    lines = ["| map | " + " | ".join(MEASURES) + " |", "|---|" + "---:|" * len(MEASURES)]
    for method, scores in rows.items():
        cells = [f"{scores[m]:.3f} ({scores['intervals'][m][0]:.3f}-{scores['intervals'][m][1]:.3f})"
                 for m in MEASURES]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=("tune", "heldout"), default="heldout")
    parser.add_argument("--grids", type=int, default=50)
    parser.add_argument("--steps", type=int, default=16, help="points of the deletion and insertion curves")
    parser.add_argument("--beds", nargs="+", choices=BEDS, default=list(BEDS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grid"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    report = [f"Command: `python {' '.join(sys.argv)}`", ""]
    results = {}
    for bed in args.beds:
        start = time.time()
        rows = run_bed(bed, args)
        results[bed] = rows
        targets = next(iter(rows.values()))["targets"]
        report += [f"### {bed}, {args.split} split ({args.grids} grids, {targets} targets, "
                   f"{time.time() - start:.0f} s)", "", markdown(rows), ""]
    text = "\n".join(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"grid_{args.split}.md").write_text(text + "\n")
    (args.out / f"grid_{args.split}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
