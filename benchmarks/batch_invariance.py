"""A batch's FSP maps against each image's alone in float32, and what it costs to make them equal.

For each model (torchvision, random weights made informative as in ``zoo.py``, 224 x 224), on
two images: the largest difference between the batch's map and the images' maps alone, over the
map's scale, for

* the batched passes of a configuration (``default``, ``paper``);
* the same with a *dead band* (issue #12's proposal, measured and not adopted): units whose CW
  lies within ``tol`` of the threshold keep their gate open -- relative to the threshold for the
  default's ``MeanRatio``, whose gates only close, so open is their previous gate; relative to
  the site's largest CW for the paper's zero threshold;
* ``batch_invariant=True`` (each image alone);

and the median time of a batch of four beside Captum's ``Saliency`` in the same rounds
(``speed.py``'s interleaved timing): batched, with ``batch_invariant``, and their paired ratio.

::

    python benchmarks/batch_invariance.py
    python benchmarks/batch_invariance.py --models googlenet --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, replace
from typing import Dict, Optional

import torch
import zoo
from captum.attr import Saliency
from speed import _interleaved_times, _paired_ratio
from torch import Tensor

from captum_feedback import FSP, PRESETS, FeedbackConfig
from captum_feedback.core.selection import SelectionRule
from captum_feedback.core.sites import as_mask


@dataclass(frozen=True)
class DeadBandRule(SelectionRule):
    """A selection rule whose units within ``tol`` of the threshold keep their gates open."""

    tol: float = 0.0

    def selector(self, cw: Tensor, open_units: Optional[Tensor] = None, signed: bool = True) -> Tensor:
        selector = super().selector(cw, open_units, signed)
        cw = cw.detach()
        if self.prunes_only:
            if open_units is None:
                return selector
            tau = self.threshold.tau(cw.clamp(min=0) * as_mask(open_units, cw))
            near = (cw - tau).abs() <= self.tol * tau
            return torch.where(near, open_units.to(selector.dtype), selector)
        scale = cw.abs().flatten(1).amax(1).view((-1,) + (1,) * (cw.dim() - 1))
        return torch.where(cw.abs() <= self.tol * scale, torch.ones_like(selector), selector)


def with_dead_band(config: FeedbackConfig, tol: float) -> FeedbackConfig:
    selection = replace(config.selection)
    rule = config.selection.rule
    object.__setattr__(selection, "rule", DeadBandRule(rule.threshold, rule.drop_edges, tol))
    return replace(config, selection=selection)


def measure(name: str, repeats: int) -> Dict[str, float]:
    model = zoo.build(name)
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model(x).argmax(1).tolist()
    fsp, row = FSP(model), {}
    for preset, tols in (("default", (1e-5, 1e-3)), ("paper", (1e-6, 1e-4))):
        row[preset] = zoo.batch_vs_alone(fsp, x[:2], target[:2], PRESETS[preset])
        for tol in tols:
            banded = with_dead_band(PRESETS[preset], tol)
            row[f"{preset}, dead band {tol:g}"] = zoo.batch_vs_alone(fsp, x[:2], target[:2], banded)
    invariant = PRESETS["default"].replace(batch_invariant=True)
    row["batch_invariant"] = zoo.batch_vs_alone(fsp, x[:2], target[:2], invariant)
    calls = {"Saliency": lambda: Saliency(model).attribute(x, target=target),
             "batched": lambda: fsp.attribute(x, target),
             "batch_invariant": lambda: fsp.attribute(x, target, config=invariant)}
    for call in calls.values():  # warm-up
        call()
    times = _interleaved_times(calls, {label: repeats for label in calls}, torch.device("cpu"))
    for label in ("batched", "batch_invariant"):
        row[f"{label} x Saliency"] = statistics.median(times[label]) / statistics.median(times["Saliency"])
    row["ratio"] = _paired_ratio(times["batch_invariant"], times["batched"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["googlenet", "regnet_y_1_6gf", "resnet50", "convnext_tiny"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = {name: measure(name, args.repeats) for name in args.models}
    columns = list(next(iter(rows.values())))
    print("| model | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        cells = (f"{row[c]:.2f}" if c.endswith(" x Saliency") or c == "ratio" else f"{row[c]:.1e}" for c in columns)
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
