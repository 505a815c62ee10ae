"""Whether the default's located ratio changes anything on a pooled network: on the held-out
EfficientNet-Lite0 grids of ``grid_pointing.py``, the default's gates (the target's and the
dual's) and Summation maps against those of the same configuration with ``threshold="zero"``
(the default before the located ratio, issue #21). On a network with global average pooling a
head unit's CW is the same at every location, so the two must agree exactly; the grid rows
of EfficientNet-Lite0 measured before the change then stand for the new default too.

Usage::

    python benchmarks/located_ratio.py --grids 50
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

from captum_feedback import FSP, PRESETS, summation_energy_map

sys.path.insert(0, str(Path(__file__).parent))
from grid_pointing import bed_layout  # noqa: E402

BED = "efficientnet_lite0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, default=50)
    parser.add_argument("--split", choices=("tune", "heldout"), default="heldout")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    classifier, layout = bed_layout(BED, args.split, args.grids)
    located, zero = PRESETS["default"], PRESETS["default"].replace(threshold="zero")
    worst, same_gates, targets, start = 0.0, True, 0, time.time()
    for index in range(len(layout)):
        image = layout[index]
        labels = [instance.label for instance in image.instances]
        x = classifier.normalize(classifier.squeeze(image.image[None], image.size[0]))
        x = x.expand(len(labels), -1, -1, -1)
        a, b = (FSP(classifier.model).select(x, labels, config=c) for c in (located, zero))
        worst = max(worst, float((summation_energy_map(a) - summation_energy_map(b)).abs().max()))
        same_gates &= all(torch.equal(a.gates[n], b.gates[n]) and torch.equal(a.dual.gates[n], b.dual.gates[n])
                          for n in a.gates)
        targets += len(labels)
    print(f"{targets} targets on {len(layout)} {args.split} grids: gates equal: {same_gates}; "
          f"largest map difference: {worst:.3g} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
