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

and the median time of a batch of four, batched and with ``batch_invariant``, with their ratio.

::

    python benchmarks/batch_invariance.py
    python benchmarks/batch_invariance.py --models googlenet --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional

import torch
import zoo
from torch import Tensor

from captum_feedback import FSP, PRESETS, FeedbackConfig
from captum_feedback.core.engine import as_mask
from captum_feedback.core.selection import SelectionRule, _mean_positive


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
            positive = cw.clamp(min=0) * as_mask(open_units, cw)
            tau = self.threshold.ratio * _mean_positive(positive.flatten(1)).to(cw.dtype)
            tau = tau.view((-1,) + (1,) * (cw.dim() - 1))
            near = (cw - tau).abs() <= self.tol * tau
            return torch.where(near, open_units.to(selector.dtype), selector)
        scale = cw.abs().flatten(1).amax(1).view((-1,) + (1,) * (cw.dim() - 1))
        return torch.where(cw.abs() <= self.tol * scale, torch.ones_like(selector), selector)


def with_dead_band(config: FeedbackConfig, tol: float) -> FeedbackConfig:
    banded = replace(config)
    object.__setattr__(banded, "rule", DeadBandRule(config.rule.threshold, config.rule.drop_edges, tol))
    return banded


def difference(fsp: FSP, x: Tensor, target: List[int], config: FeedbackConfig) -> float:
    batch = fsp.attribute(x, target, config=config)
    alone = torch.cat([fsp.attribute(x[i:i + 1], target[i], config=config) for i in range(len(x))])
    return float((batch - alone).abs().amax() / batch.abs().amax().clamp_min(1e-30))


def median_seconds(call: Callable[[], object], repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, repeats: int) -> Dict[str, float]:
    model = zoo.build(name)
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model(x).argmax(1).tolist()
    fsp, row = FSP(model), {}
    for preset, tols in (("default", (1e-5, 1e-3)), ("paper", (1e-6, 1e-4))):
        row[preset] = difference(fsp, x[:2], target[:2], PRESETS[preset])
        for tol in tols:
            banded = with_dead_band(PRESETS[preset], tol)
            row[f"{preset}, dead band {tol:g}"] = difference(fsp, x[:2], target[:2], banded)
    invariant = replace(PRESETS["default"], batch_invariant=True)
    row["batch_invariant"] = difference(fsp, x[:2], target[:2], invariant)
    row["batched s"] = median_seconds(lambda: fsp.attribute(x, target), repeats)
    row["batch_invariant s"] = median_seconds(lambda: fsp.attribute(x, target, config=invariant), repeats)
    row["ratio"] = row["batch_invariant s"] / row["batched s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["googlenet", "regnet_y_1_6gf", "resnet50", "convnext_tiny"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {name: measure(name, args.repeats) for name in args.models}
    columns = list(next(iter(rows.values())))
    print("| model | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.2f}" if c.endswith(" s") or c == "ratio" else f"{row[c]:.1e}"
                                        for c in columns) + " |")


if __name__ == "__main__":
    main()
