"""What folding batch normalizations into convolutions (``captum_feedback.core.folding``)
changes in the maps: on the held-out grids of ``grid_pointing.py`` of each test bed, the default's
attribution and Summation map and the paper preset's attribution, with later passes folded (as
the library runs them) and unfolded. Folding changes activations by rounding only; where a unit's
selection is a near tie, FSP may choose its gate the other way. Printed per test bed: the
largest relative L2 difference of each map over the targets, on how many targets the energy map's
peak moved to another cell of the grid, and the pointing game's hits (``wsol.metrics.pointing_game``
against the target's cell box, as the grid pointing game scores it) folded and unfolded.

With ``--speed MODEL ...``, what it saves instead: Saliency and FSP's default and paper preset,
each folded and unfolded, interleaved in one process (``benchmarks/speed.py``'s models and
inputs); printed per call, the median over rounds of its time over Saliency's in the same round.

Usage::

    python benchmarks/folding.py --grids 3
    python benchmarks/folding.py --speed mobilenet_v3_small resnet50 --batch 1 --rounds 20
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Tuple
from unittest import mock

import numpy as np
import torch
from captum.attr import Saliency
from torch import Tensor

from captum_feedback import FSP, energy_map, summation_energy_map
from captum_feedback.core.folding import Folds
from captum_feedback.data.annotations import box_mask
from captum_feedback.wsol.metrics import pointing_game

sys.path.insert(0, str(Path(__file__).parent))
from grid_pointing import BEDS, bed_layout  # noqa: E402
from speed import _interleaved_times, _paired_ratio, model_and_inputs  # noqa: E402


def _unfolded() -> contextlib.AbstractContextManager:
    """Sessions that fold nothing: no model has a candidate pair."""
    return mock.patch.object(Folds, "candidates", property(lambda self: False))


def _maps(fsp: FSP, x: Tensor, target: int) -> Dict[str, Tuple[Tensor, Tensor]]:
    """Each call's map and its energy map (a Summation map is its own)."""
    default, paper = fsp.attribute(x, target=target), fsp.attribute(x, target=target, config="paper")
    summation = summation_energy_map(fsp.select(x, target))
    return {"default": (default, energy_map(default)), "default Summation": (summation, summation),
            "paper": (paper, energy_map(paper))}


def _pointed(energy: Tensor, cells: Tensor) -> Tensor:
    """Per cell, whether the map's peak falls in its box (the pointing game against each)."""
    return pointing_game(energy.expand(len(cells), -1, -1, -1), cells)


def compare_maps(args: argparse.Namespace) -> None:
    """Per test bed, how far folding moves each map (the module's docstring)."""
    for bed in args.beds:
        classifier, layout = bed_layout(bed, args.split, args.grids)
        fsp, start = FSP(classifier.model), time.time()
        worst: Dict[str, float] = {}
        moved: Dict[str, int] = {}
        hits: Dict[str, List[int]] = {}
        targets = 0
        for index in range(len(layout)):
            image = layout[index]
            x = classifier.normalize(classifier.squeeze(image.image[None], image.size[0]))
            cells = torch.from_numpy(np.stack([box_mask(i.box, image.size) for i in image.instances]))
            for cell, instance in enumerate(image.instances):
                folded = _maps(fsp, x, instance.label)
                with _unfolded():
                    unfolded = _maps(fsp, x, instance.label)
                for name, (plain, plain_energy) in unfolded.items():
                    change = float((folded[name][0] - plain).norm() / plain.norm().clamp_min(1e-30))
                    worst[name] = max(worst.get(name, 0.0), change)
                    pointed = _pointed(folded[name][1], cells), _pointed(plain_energy, cells)
                    moved[name] = moved.get(name, 0) + int(not torch.equal(*pointed))
                    hits.setdefault(name, [0, 0])
                    hits[name] = [hit + int(p[cell]) for hit, p in zip(hits[name], pointed)]
                targets += 1
        print(f"{bed}: {targets} targets on {len(layout)} {args.split} grids ({time.time() - start:.0f} s)")
        for name in worst:
            print(f"  {name}: largest relative difference {worst[name]:.2g}; peak in another cell: {moved[name]}; "
                  f"pointing hits folded {hits[name][0]}, unfolded {hits[name][1]}")


def _without_folding(call: Callable[[], Tensor]) -> Callable[[], Tensor]:
    def run() -> Tensor:
        with _unfolded():
            return call()

    return run


def compare_speed(args: argparse.Namespace) -> None:
    """Per model, each call's time over Saliency's, folded and unfolded (the module's docstring)."""
    for name in args.speed:
        model, x, target = model_and_inputs(name, args.batch, torch.device("cpu"))
        fsp, saliency = FSP(model), Saliency(model)
        default = lambda: fsp.attribute(x, target=target)  # noqa: E731
        paper = lambda: fsp.attribute(x, target=target, config="paper")  # noqa: E731
        calls = {"Saliency": lambda: saliency.attribute(x, target=target, abs=False),
                 "default": default, "default unfolded": _without_folding(default),
                 "paper": paper, "paper unfolded": _without_folding(paper)}
        for call in calls.values():
            call()
        times = _interleaved_times(calls, dict.fromkeys(calls, args.rounds), torch.device("cpu"))
        base = times["Saliency"]
        ratios = {label: f"{_paired_ratio(times[label], base):.2f}" for label in calls if label != "Saliency"}
        print(f"{name} b={args.batch} ({args.rounds} rounds, Saliency {statistics.median(base) * 1e3:.1f} ms): "
              f"x Saliency {ratios}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, default=3)
    parser.add_argument("--split", choices=("tune", "heldout"), default="heldout")
    parser.add_argument("--beds", nargs="+", choices=BEDS, default=list(BEDS))
    parser.add_argument("--speed", nargs="+", metavar="MODEL", help="time these models instead (speed.py's names)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.speed:
        compare_speed(args)
    else:
        compare_maps(args)


if __name__ == "__main__":
    main()
