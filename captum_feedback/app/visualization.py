"""Figures for notebooks: energy-map overlays, the FSP iteration curves (Fig. 6), method grids
(Fig. 14), FSP's top neurons (Fig. 8) and the channel ranking (Fig. 9).

Built on ``captum.attr.visualization`` and matplotlib. Every function takes torch tensors
(``(C, H, W)`` or ``(B, C, H, W)``, on any device, with gradients or not, normalized or in
[0, 1] or uint8) as well as numpy arrays, and returns ``(figure, axes)`` like Captum's
``visualize_image_attr``; pass ``plt_fig_axis=(fig, ax)`` to draw into an existing figure.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from captum.attr import visualization as viz
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from captum_feedback.core.layer import NeuronFeedback, layer_contribution, rank_channels
from captum_feedback.core.state import FeedbackState
from captum_feedback.wsol.pipeline import FeedbackPipeline

ArrayLike = Union[Tensor, np.ndarray]


def as_image(image: ArrayLike) -> np.ndarray:
    """An image as the ``(H, W, C)`` float array in [0, 1] that matplotlib and Captum expect.

    Accepts ``(C, H, W)``, ``(1, C, H, W)`` or ``(H, W, C)`` (and ``(H, W)``) tensors or arrays
    with 1 or 3 channels. uint8 is divided by 255; other values outside [0, 1] (a normalized
    model input) are rescaled by their minimum and maximum.
    """
    array = _numpy(image)
    if array.ndim == 4:
        if array.shape[0] != 1:
            raise ValueError(f"Give one image, not a batch of {array.shape[0]}.")
        array = array[0]
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"An image must be (C, H, W) or (H, W, C), got shape {array.shape}.")
    if array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.shape[-1] not in (1, 3):
        raise ValueError(f"An image needs 1 or 3 channels, got shape {array.shape}.")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255
    array = array.astype(np.float32)
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        array = (array - low) / max(high - low, 1e-12)
    return array


def as_map(energy: ArrayLike) -> np.ndarray:
    """A map (``(H, W)``, ``(1, H, W)`` or ``(1, 1, H, W)``) as an ``(H, W)`` float array."""
    array = np.asarray(_numpy(energy), dtype=np.float32).squeeze()
    if array.ndim != 2:
        raise ValueError(f"A map must hold one (H, W) plane, got shape {np.shape(_numpy(energy))}; "
                         "reduce colour channels with captum_feedback.energy_map.")
    return array


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _figure(plt_fig_axis: Optional[Tuple[Figure, Any]], **subplots: Any) -> Tuple[Figure, Any]:
    return plt_fig_axis if plt_fig_axis is not None else plt.subplots(**subplots)


def visualize_energy_map(
    energy: ArrayLike,
    image: ArrayLike,
    boxes: Optional[ArrayLike] = None,
    mask: Optional[ArrayLike] = None,
    title: Optional[str] = None,
    plt_fig_axis: Optional[Tuple[Figure, Axes]] = None,
    outlier_perc: float = 1.0,
    alpha_overlay: float = 0.5,
    cmap: str = "jet",
    box_colors: Sequence[str] = ("lime", "red", "cyan", "yellow"),
    show_colorbar: bool = True,
) -> Tuple[Figure, Axes]:
    """An energy map blended over its image, with boxes, a mask outline and a colorbar.

    Args:
        energy: The map, e.g. ``summation_energy_map(state)[i]``.
        image: The image it explains (a normalized model input is fine).
        boxes: ``(K, 4)`` boxes ``(x1, y1, x2, y2)`` in pixel edges, e.g. from
            :func:`captum_feedback.wsol.localization.energy_box`; drawn in ``box_colors`` order.
        mask: ``(H, W)`` boolean mask, outlined in white.
        title: Axes title.
        plt_fig_axis: ``(figure, axes)`` to draw into.
        outlier_perc: Captum's option: the brightest ``outlier_perc`` percent of the map saturate.
        alpha_overlay: Opacity of the map.
        cmap: Colour map of the energy (``"jet"``, as Grad-CAM and TorchRay show maps).
        show_colorbar: Draw the energy's colorbar under the image (Captum's option).

    Returns:
        ``(figure, axes)``.
    """
    picture, heat = as_image(image), as_map(energy)
    if heat.shape != picture.shape[:2]:
        raise ValueError(f"Map {heat.shape} and image {picture.shape[:2]} differ in size.")
    peak = float(np.abs(heat).max())
    if peak > 0:  # Captum shows maps scaled to [0, 1] anyway, but warns of a tiny scale (a random model's)
        heat = heat / peak
    figure, axis = _figure(plt_fig_axis, figsize=(4, 4))
    viz.visualize_image_attr(
        heat[..., None], picture, method="blended_heat_map", sign="absolute_value", outlier_perc=outlier_perc,
        alpha_overlay=alpha_overlay, cmap=cmap, plt_fig_axis=(figure, axis), use_pyplot=False, title=title,
        show_colorbar=show_colorbar,
    )
    if mask is not None:
        axis.contour(as_map(np.asarray(_numpy(mask), dtype=np.float32)), levels=[0.5], colors="white", linewidths=1.5)
    if boxes is not None:
        for k, (x1, y1, x2, y2) in enumerate(np.asarray(_numpy(boxes), dtype=np.float32).reshape(-1, 4)):
            axis.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, linewidth=2,
                                     edgecolor=box_colors[k % len(box_colors)]))
    return figure, axis


def plot_fsp_iterations(
    state: FeedbackState,
    target: int,
    class_names: Optional[Sequence[str]] = None,
    sample: int = 0,
    others: int = 9,
    title: Optional[str] = None,
    plt_fig_axis: Optional[Tuple[Figure, Axes]] = None,
) -> Tuple[Figure, Axes]:
    """The paper's Fig. 6: every class score over FSP's passes, the target in thick red, each other
    class in a colour of its own.

    Args:
        state: From :meth:`FeedbackSelectivePruning.select`; ``state.outputs`` is
            ``(iterations + 1, B, n_classes)``.
        target: The class FSP ran for.
        class_names: Labels for the legend.
        sample: Which image of the batch.
        others: How many other classes to draw (those scoring highest before FSP).
    """
    outputs = state.outputs[:, sample].detach().cpu()
    if not 0 <= target < outputs.shape[1]:
        raise ValueError(f"target {target} is not one of the {outputs.shape[1]} outputs.")
    names = class_names or [str(c) for c in range(outputs.shape[1])]
    figure, axis = _figure(plt_fig_axis, figsize=(7, 4))
    steps = np.arange(outputs.shape[0])
    leading = [c for c in outputs[0].topk(min(others + 1, outputs.shape[1])).indices.tolist() if c != target]
    palette = [colour for k, colour in enumerate(plt.get_cmap("tab20").colors) if k not in (6, 7)]  # no reds
    for k, c in enumerate(leading[:others]):
        axis.plot(steps, outputs[:, c].numpy(), color=palette[k % len(palette)], alpha=0.8, marker=".",
                  linewidth=1.2, label=names[c])
    axis.plot(steps, outputs[:, target].numpy(), color="tab:red", linewidth=2.5, marker="o",
              label=f"{names[target]} (target)")
    if outputs.abs().max() > 1e3:  # linearized ReLU6 scores grow by orders of magnitude
        axis.set_yscale("symlog")
    axis.set_xticks(steps)
    axis.set_xlabel("FSP pass (0 = plain forward)")
    axis.set_ylabel("class score")
    axis.set_title(title or f"FSP for '{names[target]}'")
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    return figure, axis


def compare_methods(
    images: ArrayLike,
    maps: Dict[str, ArrayLike],
    row_titles: Optional[Sequence[str]] = None,
    outlier_perc: float = 1.0,
) -> Tuple[Figure, np.ndarray]:
    """A grid in the manner of Fig. 14: one row per image, its input then each method's map.

    Args:
        images: ``(B, C, H, W)`` (or one ``(C, H, W)``) images.
        maps: ``{method: (B, 1, H, W) maps}``, e.g. from :class:`captum_feedback.compare.methods.MethodMaps`.
        row_titles: A label per image (e.g. the target class).
        outlier_perc: The brightest percent of each map saturates, as in Captum; every panel is
            scaled to its own ``100 - outlier_perc`` percentile, which the shared colorbar reads.

    Returns:
        ``(figure, axes)`` with axes of shape ``(B, 1 + len(maps))``.
    """
    batch = images if isinstance(images, (Tensor, np.ndarray)) and np.ndim(images) == 4 else images[None]
    n_rows, n_cols = len(batch), len(maps) + 1
    figure, axes = plt.subplots(n_rows, n_cols, figsize=(2.1 * n_cols, 2.2 * n_rows + 0.3), squeeze=False)
    for row in range(n_rows):
        axes[row, 0].imshow(as_image(batch[row]).squeeze(), cmap="gray")
        axes[row, 0].set_title(row_titles[row] if row_titles else "input", fontsize=8)
        for col, (method, method_maps) in enumerate(maps.items(), start=1):
            shown = _percentile_scaled(as_map(method_maps[row]), 100 - outlier_perc, axes[row, col])
            axes[row, col].set_title(method, fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    _shared_colorbar(figure, axes, shown, f"energy / its {100 - outlier_perc:g}th percentile")
    return figure, axes


def _percentile_scaled(heat: np.ndarray, percentile: float, axis: Axes) -> Any:
    """Shows ``|heat|`` divided by its percentile (saturating above 1)."""
    energy = np.abs(heat)
    top = np.percentile(energy, percentile)
    return axis.imshow(energy / top if top > 0 else energy, cmap="inferno", vmin=0, vmax=1)


def _shared_colorbar(figure: Figure, axes: np.ndarray, image: Any, label: str) -> None:
    colorbar = figure.colorbar(image, ax=list(axes.flat), fraction=0.015, pad=0.01)
    colorbar.set_label(label, fontsize=7)
    colorbar.ax.tick_params(labelsize=7)


def visualize_top_neurons(
    pipeline: FeedbackPipeline,
    inputs: Tensor,
    target: int,
    k: int = 6,
    image: Optional[ArrayLike] = None,
) -> Tuple[Figure, np.ndarray]:
    """Fig. 8: the ``k`` channels of a layer that contribute most to the target after FSP, each
    seen through FR from that channel's kept neurons to the input (channels with no kept
    neuron are passed over; an FR map that is still empty is marked so).

    Args:
        pipeline: A :class:`~captum_feedback.FeedbackPipeline` on the layer to inspect, with
            the configuration FSP runs with.
        inputs: One image ``(1, C, H, W)`` as the model takes it.
        target: The class.
        k: How many channels.
        image: The image to show (default: ``inputs``).
    """
    if inputs.dim() != 4 or inputs.shape[0] != 1:
        raise ValueError(f"Give one image (1, C, H, W), got shape {tuple(inputs.shape)}.")
    state = pipeline.select(inputs, target, keep_cws=False)
    contribution = layer_contribution(state, pipeline.layer_name)
    scores, channels = rank_channels(contribution, contribution.shape[1])
    kept = pipeline.kept_neurons(state)
    # channels without a kept neuron would draw blank: the next ranked channels take their place
    ranked = [(c, v) for c, v in zip(channels[0].tolist(), scores[0].tolist()) if kept[0, c].any()][:k]
    neuron_feedback = NeuronFeedback(pipeline.model, pipeline.layer)
    figure, axes = plt.subplots(1, k + 1, figsize=(2.2 * (k + 1), 2.6), squeeze=False)
    picture = as_image(inputs[0] if image is None else image)
    axes[0, 0].imshow(picture.squeeze(), cmap="gray")
    axes[0, 0].set_title("input", fontsize=8)
    shown = None
    for axis, (channel, score) in zip(axes[0, 1:], ranked):
        chosen = torch.zeros_like(kept)
        chosen[:, channel] = kept[:, channel]

        def neurons(output: Tensor, chosen: Tensor = chosen) -> Tensor:
            return (output * chosen.to(output)).flatten(1).sum(1)

        attribution = neuron_feedback.attribute(inputs, neurons, threshold=pipeline.config.fr_rule)
        energy = attribution.detach().abs().sum(1)[0].cpu().numpy()
        shown = _percentile_scaled(energy, 99, axis)
        empty = "\n(FR map empty)" if not energy.any() else ""
        axis.set_title(f"channel {channel}\ncontribution {score:.3g}{empty}", fontsize=8)
    for axis in axes[0, 1 + len(ranked):]:
        axis.set_title("no further channel\nwith kept neurons", fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    figure.tight_layout()
    if shown is not None:
        _shared_colorbar(figure, axes, shown, "FR energy / its 99th percentile")
    return figure, axes


def outline_legend(axis: Axes, outlines: Dict[str, Dict[str, Any]], **legend: Any) -> None:
    """A legend for boxes and contours drawn on an image: ``{label: line style}`` (e.g.
    ``{"99%-energy box": {"color": "lime"}, "ground truth": {"color": "white", "linestyle": ":"}}``),
    on a grey background so that white outlines show."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], linewidth=2, **style) for style in outlines.values()]
    axis.legend(handles, list(outlines), facecolor="0.45", framealpha=0.9, labelcolor="white", fontsize=7, **legend)


def plot_channel_ranking(
    contribution: ArrayLike,
    k: int = 20,
    sample: int = 0,
    title: Optional[str] = None,
    plt_fig_axis: Optional[Tuple[Figure, Axes]] = None,
) -> Tuple[Figure, Axes]:
    """Fig. 9: a layer's channels ranked by their contribution to the target after FSP.

    Args:
        contribution: ``(B, C, ...)``, from :meth:`LayerFeedback.attribute`.
        k: How many of the leading channels to draw.
        sample: Which image of the batch.
    """
    values = torch.as_tensor(_numpy(contribution))[sample: sample + 1]
    scores, channels = rank_channels(values, min(k, values.shape[1]))
    figure, axis = _figure(plt_fig_axis, figsize=(max(4.0, 0.35 * len(channels[0])), 3.2))
    axis.bar(range(len(channels[0])), scores[0].numpy(), color="tab:red")
    axis.set_xticks(range(len(channels[0])), [str(c) for c in channels[0].tolist()], fontsize=7, rotation=90)
    axis.set_xlabel("channel (ranked)")
    axis.set_ylabel("contribution after FSP")
    axis.set_title(title or f"Top {len(channels[0])} channels")
    figure.tight_layout()
    return figure, axis
