"""The search of issue #10 over the released code's settings on the cluttered VGG, on scenes the
quality benchmark never uses. It chose the ``"pruning"`` preset (the default until issue #21);
the contrastive default of issue #21 was chosen on three test beds (``grid_pointing.py``,
``quality.py --models``, docs/benchmarks.md) and is scored here beside it.

Each candidate ``FeedbackConfig`` (the two presets, and the released code's settings varied one
or two at a time) draws the FSP Summation Energy Map of every item of ``--scenes`` cluttered
test scenes of seed ``--seed`` (1: held out; ``benchmarks/quality.py`` uses seed 0), scored as
the quality benchmark scores it, beside Grad-CAM and Saliency on the same items: pointing (the
map's maximum inside the item's box), coverage (share of energy on the item's mask) and
target:other (energy on the item over energy on the other item of two-item scenes).

Usage::

    python benchmarks/configs.py                      # 150 held-out scenes, every candidate
    python benchmarks/configs.py --only default paper
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Dict, List

import torch
from torch import Tensor
from tqdm import tqdm

from captum_feedback import FSP, PRESETS, FeedbackConfig, MeanRatio, Stage, summation_energy_map
from captum_feedback.compare.methods import MethodMaps
from captum_feedback.data import ClutteredScenes
from captum_feedback.models.cluttered_vgg import cluttered_vgg
from captum_feedback.wsol.metrics import boxes_to_masks, energy_coverage, pointing_game

sys.path.insert(0, str(Path(__file__).parent))
from quality import other_items  # noqa: E402

RELEASED = PRESETS["released_code"]
ONE_STAGE = (Stage(1.0, 2),)
CANDIDATES: Dict[str, FeedbackConfig] = {
    "paper": PRESETS["paper"],
    "paper, contributions summed": PRESETS["paper"].replace(summation="contribution"),
    "released_code": RELEASED,
    "released_code, ratio 1.5": RELEASED.replace(threshold=MeanRatio(1.5)),
    "released_code, ratio 2": RELEASED.replace(threshold=MeanRatio(2.0)),
    "released_code, ratio 3": RELEASED.replace(threshold=MeanRatio(3.0)),
    "released_code, linearized": RELEASED.replace(linearize=True),
    "released_code, pool gates": RELEASED.replace(gate_pools=True),
    "released_code, edges kept": RELEASED.replace(drop_edges=False),
    "released_code, every site summed": RELEASED.replace(summation_sites=None),
    "released_code, sites 4-10 of 13": RELEASED.replace(summation_sites=(4 / 13, 11 / 13)),
    "released_code, sites 6-13 of 13": RELEASED.replace(summation_sites=(6 / 13, 1.0)),
    "released_code, CWs summed": RELEASED.replace(summation="cw"),
    "released_code, contributions summed": RELEASED.replace(summation="contribution"),
    "released_code, one stage of 2": RELEASED.replace(stages=ONE_STAGE),
    "released_code, one stage of 5": RELEASED.replace(stages=(Stage(1.0, 5),)),
    "released_code, stages of 1 and 2": RELEASED.replace(stages=(Stage(7 / 15, 1), Stage(1.0, 2))),
    "pruning (ratio 2, sites 4-10 of 13)": PRESETS["pruning"],
    "default (contrastive)": PRESETS["default"],
    "contrastive, alpha > 0": PRESETS["default"].replace(threshold="zero"),
    "contrastive, located ratio 2": PRESETS["default"].replace(threshold=MeanRatio(2.0, located_only=True)),
    "contrastive, located ratio 3": PRESETS["default"].replace(threshold=MeanRatio(3.0, located_only=True)),
    "ratio 2, stages of 1 and 2": RELEASED.replace(threshold=MeanRatio(2.0),
                                                  stages=(Stage(7 / 15, 1), Stage(1.0, 2))),
}


def scores(maps: Tensor, masks: Tensor, boxes: Tensor, other: Tensor) -> List[float]:
    """Pointing (box), coverage, target:other energy, and how many maps are blank."""
    pairs = other >= 0
    target = energy_coverage(maps[pairs], masks[pairs]).nan_to_num(0).mean()
    off = energy_coverage(maps[pairs], masks[other[pairs]]).nan_to_num(0).mean()
    pointing = pointing_game(maps, boxes_to_masks(boxes, tuple(maps.shape[-2:]))).float().mean()
    coverage = energy_coverage(maps, masks).nan_to_num(0).mean()
    return [float(pointing), float(coverage), float(target / off), float((maps.flatten(1).sum(1) == 0).sum())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1, help="1: scenes the quality benchmark (seed 0) never sees")
    parser.add_argument("--per-batch", type=int, default=40)
    parser.add_argument("--only", nargs="*", help="candidates whose names start with these")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    model = cluttered_vgg()
    scenes = ClutteredScenes("test", length=args.scenes, seed=args.seed)
    batch = scenes.batch(range(len(scenes)))
    owners = torch.tensor([i for i, c in enumerate(batch.classes) for _ in c])
    images, targets = batch.images[owners], torch.cat(batch.classes).tolist()
    masks, boxes, other = torch.cat(batch.masks), torch.cat(batch.boxes), other_items(batch.classes)
    chunks = [slice(s, s + args.per_batch) for s in range(0, len(images), args.per_batch)]
    baselines = MethodMaps(model)
    rows = {name: torch.cat([baselines.single(name, images[c], targets[c]) for c in chunks])
            for name in ("LayerGradCam", "Saliency")}
    candidates = {k: v for k, v in CANDIDATES.items() if not args.only or k.startswith(tuple(args.only))}
    for name, config in tqdm(candidates.items(), desc="configurations", unit="config"):
        rows[name] = torch.cat([summation_energy_map(FSP(model).select(images[c], targets[c], config=config))
                                for c in chunks])
    print(f"`python {' '.join(sys.argv)}`: {len(scenes)} scenes of seed {args.seed}, {len(images)} items, "
          f"{int((other >= 0).sum())} in two-item scenes\n")
    print("| map | pointing (box) | coverage | target:other | blank maps |\n|---|---:|---:|---:|---:|")
    for name, maps in rows.items():
        pointing, coverage, ratio, blank = scores(maps, masks, boxes, other)
        print(f"| {name} | {pointing:.3f} | {coverage:.3f} | {ratio:.2f} | {blank:.0f} |")


if __name__ == "__main__":
    main()
