"""Energy maps: how important each pixel is to the target (Secs. 3.4.1 and 4.3, Procedure 2).

Every map here is batched, ``(B, 1, H, W)``, non-negative, and L2-normalized per image as in
the paper (the squares of a map sum to one). To show one with Captum, move the channel last::

    from captum.attr import visualization as viz
    viz.visualize_image_attr(
        emap[0].permute(1, 2, 0).cpu().numpy(),      # (H, W, 1)
        image[0].permute(1, 2, 0).cpu().numpy(),     # (H, W, 3), values in [0, 1]
        method="blended_heat_map", sign="positive",
    )
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch.nn.functional as F
from torch import Tensor

from captum_feedback.state import FeedbackState


def l2_normalize(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Divides each map of the batch by its L2 norm; an all-zero map stays zero."""
    norms = maps.flatten(1).norm(dim=1).clamp(min=eps)
    return maps / norms.view((-1,) + (1,) * (maps.dim() - 1))


def energy_map(attribution: Tensor) -> Tensor:
    """The energy map of Sec. 3.4.1: ``sum_c |attribution|``, L2-normalized per image.

    Args:
        attribution: Input attributions ``(B, C, H, W)``, e.g. from
            :meth:`FeedbackSelectivePruning.attribute`.

    Returns:
        ``(B, 1, H, W)``.
    """
    if not isinstance(attribution, Tensor) or attribution.dim() < 3:
        raise ValueError("energy_map needs a batched attribution (B, C, H, W).")
    return l2_normalize(attribution.detach().abs().sum(1, keepdim=True))


def summation_energy_map(
    state: FeedbackState, size: Optional[Sequence[int]] = None, sites: Optional[Sequence[str]] = None
) -> Tensor:
    """The Summation Energy Map of Sec. 4.3.

    For every ReLU-like site with spatial extent (the "ReLU layers behind convolutional
    layers"), the CWs of the neurons FSP kept, ``z * |alpha|``, are summed over channels,
    resized bilinearly to the input size, and summed over sites; the result is L2-normalized.

    Why this quantity: the paper sums the gradients of the feature maps after FSP. Those of
    closed neurons belong to patterns FSP removed as irrelevant or harmful to the target, so
    only kept neurons count; a kept unit has ``alpha * x > tau``, hence for ReLU outputs
    ``alpha > 0``, and ``|alpha|`` equals the signed CW there while staying a magnitude for
    leaky units with negative ``x``.

    Args:
        state: From :meth:`FeedbackSelectivePruning.select` with ``keep_cws=True``.
        size: Output ``(H, W)``; defaults to the input's spatial size.
        sites: Names of the sites to sum; defaults to every spatial activation site.

    Returns:
        ``(B, 1, H, W)``.
    """
    if not state.cws:
        raise ValueError("The state holds no CWs; run select(..., keep_cws=True).")
    size = tuple(size or state.input_size)
    names = sites or [
        name for name, kind in state.site_kinds.items() if kind == "activation" and state.cws[name].dim() == 4
    ]
    if not names:
        raise ValueError("The model has no spatial (B, C, H, W) ReLU-like site to sum.")
    total: Optional[Tensor] = None
    for name in names:
        kept = (state.gates[name] * state.cws[name].abs()).sum(1, keepdim=True)
        resized = F.interpolate(kept, size=size, mode="bilinear", align_corners=False)
        total = resized if total is None else total + resized
    return l2_normalize(total.clamp(min=0))


def summation_fsp_fr_energy_map(summation: Tensor, fsp_fr: Tensor) -> Tensor:
    """Procedure 2, step 4: the Summation Energy Map plus the FSP-FR energy map, renormalized."""
    if summation.shape != fsp_fr.shape:
        raise ValueError(f"Map shapes differ: {tuple(summation.shape)} and {tuple(fsp_fr.shape)}.")
    return l2_normalize(l2_normalize(summation) + l2_normalize(fsp_fr))


class FeedbackEnergyMaps(NamedTuple):
    """The maps of one FSP run: :func:`feedback_energy_maps`."""

    fsp: Tensor
    summation: Tensor
    fsp_fr: Tensor
    summation_fsp_fr: Tensor
    state: FeedbackState


def feedback_energy_maps(layer_feedback, inputs: Tensor, target, **fsp_kwargs) -> FeedbackEnergyMaps:  # noqa: ANN001
    """Every energy map of the paper from one FSP run.

    Args:
        layer_feedback: A :class:`captum_feedback.LayerFeedback` on the middle layer used for
            the FSP-FR map (the paper's ``conv5_2``).
        inputs: Images ``(B, C, H, W)``.
        target: The class target, any Captum form.
        **fsp_kwargs: ``additional_forward_args``, ``iterations``, ``threshold``, ``linearize``.

    Returns:
        The FSP energy map (Sec. 3.4.1), the Summation Energy Map (Sec. 4.3), the FSP-FR
        energy map (Sec. 4.3) and their sum (Procedure 2 step 4), all ``(B, 1, H, W)``, and the
        :class:`FeedbackState`.
    """
    state = layer_feedback.select(inputs, target, **fsp_kwargs)
    fsp_fr_kwargs = {k: v for k, v in fsp_kwargs.items() if k in ("threshold", "additional_forward_args")}
    fsp_fr = energy_map(layer_feedback.attribute(inputs, state=state, **fsp_fr_kwargs))
    summation = summation_energy_map(state)
    return FeedbackEnergyMaps(
        energy_map(state.attributions[0]), summation, fsp_fr,
        summation_fsp_fr_energy_map(summation, fsp_fr), state,
    )

