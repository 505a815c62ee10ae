"""FSP next to Integrated Gradients on a bundled photo, with Captum's own visualization.

    python examples/fsp_vs_integrated_gradients.py --photo coffee --out fsp_vs_ig.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from captum.attr import IntegratedGradients  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402

from captum_feedback import FSP, energy_map, summation_energy_map  # noqa: E402
from captum_feedback.data.photos import bundled_photos  # noqa: E402
from captum_feedback.models import efficientnet_lite0, imagenet_classes, preprocess, to_display  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photo", default="coffee", choices=sorted(bundled_photos()))
    parser.add_argument("--out", default="fsp_vs_ig.png")
    args = parser.parse_args()

    model = efficientnet_lite0()
    x = preprocess(bundled_photos()[args.photo])
    target = int(model(x).argmax())
    state = FSP(model).select(x, target=target)
    maps = {
        "Integrated Gradients": energy_map(IntegratedGradients(model).attribute(x, target=target, n_steps=32)),
        "FSP energy map": energy_map(state.attributions[0]),
        "Summation Energy Map": summation_energy_map(state),
    }
    image = to_display(x)[0].permute(1, 2, 0).numpy()
    figure, axes = plt.subplots(1, len(maps), figsize=(4 * len(maps), 4))
    for axis, (title, emap) in zip(axes, maps.items()):
        viz.visualize_image_attr(emap[0].permute(1, 2, 0).numpy(), image, method="blended_heat_map",
                                 sign="positive", plt_fig_axis=(figure, axis), use_pyplot=False, title=title)
    figure.suptitle(f"{args.photo}: {imagenet_classes()[target]}")
    figure.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
