"""The demo: Feedback CNN maps on the embedded EfficientNet-Lite0, beside Captum's methods.

``python -m captum_feedback.demo --out figures`` writes, for each bundled photo,

* ``methods_<photo>.png``: the photo, the FSP energy map (Sec. 3.4.1), the Summation Energy
  Map (Sec. 4.3), the FSP-FR energy map, their sum (Procedure 2 step 4), FR, and Captum's
  Saliency, Integrated Gradients and Grad-CAM for the model's top class;
* ``iterations_<photo>.png``: the scores of the target and of the other leading classes over
  FSP's updates, as in the paper's Fig. 6, for linearized and re-evaluated FSP.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency  # noqa: E402

from captum_feedback import FR, FSP, LayerFeedback, energy_map, feedback_energy_maps  # noqa: E402
from captum_feedback.models import efficientnet_lite0, imagenet_classes, preprocess, to_display  # noqa: E402
from captum_feedback.models.efficientnet_lite import feedback_layer  # noqa: E402
from captum_feedback.photos import bundled_photos  # noqa: E402
from captum_feedback.state import FeedbackState  # noqa: E402

DEFAULT_PHOTOS = ("chelsea", "coffee", "rocket")


def method_maps(model: torch.nn.Module, x: torch.Tensor, target: int, iterations: int) -> Dict[str, torch.Tensor]:
    """Every map of the comparison, each ``(1, 1, H, W)``; the FSP state under key ``state``."""
    maps = feedback_energy_maps(LayerFeedback(model, feedback_layer(model)), x, target, iterations=iterations)
    gradcam = LayerGradCam(model, model.head_relu).attribute(x, target=target, relu_attributions=True)
    return {
        "FSP": maps.fsp,
        "Summation": maps.summation,
        "FSP-FR": maps.fsp_fr,
        "Summation-FSP-FR": maps.summation_fsp_fr,
        "FR": energy_map(FR(model).attribute(x, target=target)),
        "Saliency": energy_map(Saliency(model).attribute(x, target=target, abs=False)),
        "Integrated Gradients": energy_map(
            IntegratedGradients(model).attribute(x, target=target, n_steps=32, internal_batch_size=16)
        ),
        "Grad-CAM": LayerAttribution.interpolate(gradcam, tuple(x.shape[-2:]), "bilinear").detach(),
        "state": maps.state,
    }


def plot_methods(x: torch.Tensor, maps: Dict[str, torch.Tensor], title: str, path: Path) -> None:
    panels = [name for name in maps if name != "state"]
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(2.2 * (len(panels) + 1), 2.6))
    axes[0].imshow(to_display(x)[0].permute(1, 2, 0).numpy())
    axes[0].set_title("input", fontsize=9)
    for axis, name in zip(axes[1:], panels):
        emap = maps[name][0, 0]
        # Like Captum's visualization, clip the brightest 1% so a few hot pixels do not hide the map.
        axis.imshow(emap.numpy(), cmap="inferno", vmin=0, vmax=float(emap.quantile(0.99)) or None)
        axis.set_title(name, fontsize=9)
    for axis in axes:
        axis.axis("off")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_iterations(states: Dict[str, FeedbackState], target: int, classes: Sequence[str], title: str,
                    path: Path, others: int = 9) -> None:
    """Fig. 6: the scores of the target (red) and of the other leading classes over FSP's passes,
    one panel per FSP variant."""
    figure, axes = plt.subplots(1, len(states), figsize=(5 * len(states) + 2, 4), squeeze=False)
    for axis, (variant, state) in zip(axes[0], states.items()):
        outputs = state.outputs[:, 0]
        leading = [c for c in outputs[0].topk(others + 1).indices.tolist() if c != target][:others]
        steps = range(outputs.shape[0])
        for c in leading:
            axis.plot(steps, outputs[:, c].numpy(), color="tab:blue", alpha=0.6, label=classes[c])
        axis.plot(steps, outputs[:, target].numpy(), color="tab:red", linewidth=2.5,
                  label=f"{classes[target]} (target)")
        axis.set_yscale("symlog")
        axis.set_xlabel("FSP pass (0 = plain forward)")
        axis.set_ylabel("class score (logit, symlog scale)")
        axis.set_title(variant, fontsize=10)
    axes[0, -1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run(out: Path, photos: Sequence[str], iterations: int) -> List[Path]:
    out.mkdir(parents=True, exist_ok=True)
    model, classes, available = efficientnet_lite0(), imagenet_classes(), bundled_photos()
    written = []
    for name in photos:
        if name not in available:
            raise ValueError(f"Unknown photo {name!r}; bundled photos: {', '.join(available)}.")
        x = preprocess(available[name])
        with torch.no_grad():
            probabilities = model(x).softmax(1)[0]
        target = int(probabilities.argmax())
        title = f"{name}: {classes[target]} ({probabilities[target]:.0%})"
        maps = method_maps(model, x, target, iterations)
        written.append(out / f"methods_{name}.png")
        plot_methods(x, maps, title, written[-1])
        states = {
            "linearized (default; frozen ReLU6 units no longer clamp)": maps["state"],
            "re-evaluated (linearize=False)": FSP(model).select(x, target, iterations=iterations, linearize=False),
        }
        written.append(out / f"iterations_{name}.png")
        plot_iterations(states, target, classes, f"FSP updates on '{name}'", written[-1])
        print(f"{title}: wrote {written[-2]} and {written[-1]}", flush=True)
    return written


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("figures"))
    parser.add_argument("--photos", nargs="+", default=list(DEFAULT_PHOTOS))
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args(argv)
    run(args.out, args.photos, args.iterations)


if __name__ == "__main__":
    main()
