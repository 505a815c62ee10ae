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

from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_feedback.core.config import SUMMATIONS
from captum_feedback.core.state import FeedbackState
from captum_feedback.core.tokens import ReshapeTransform


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
    state: FeedbackState,
    size: Optional[Sequence[int]] = None,
    sites: Optional[Sequence[str]] = None,
    summation: Optional[str] = None,
    reshape_transform: Optional[ReshapeTransform] = None,
) -> Tensor:
    """The Summation Energy Map of Sec. 4.3: the units FSP kept, over all layers.

    For every ReLU-like site with spatial extent (the "ReLU layers behind convolutional
    layers"), a per-unit quantity of the kept neurons is summed over channels, resized
    bilinearly to the input size, and summed over sites; the result is L2-normalized. What is
    summed, which sites and how each site's map is scaled first follow the state's
    :class:`~captum_feedback.FeedbackConfig`:

    * ``"cw"``, the paper's text ("the gradients of feature maps"): the kept CWs ``z * |alpha|``.
      Closed neurons belong to patterns FSP removed, so only kept ones count; a kept unit has
      ``alpha * x > tau``, so ``|alpha|`` equals the signed CW on ReLU outputs.
    * ``"activation"``, the released code (``FSP_SumEnergy.m``): the gated activations
      ``z * x``, each site divided by its maximum. Class-specific only through the gates.
    * ``"contribution"``: ``z * alpha * x``, the terms of Eq. 6. In the linearized network a
      site's terms add up to the target score, so each site's map splits the score over pixels.

    A contrastive selection (``config.selection.contrastive``; the default) also ran FSP for the
    target's dual, the negated score (:attr:`FeedbackState.dual`). Each site's map is then the
    evidence kept for the target less the evidence kept against it, each first scaled as
    ``config.maps.site_normalization`` says (``"sum"``: each a distribution over locations, as
    contrastive excitation backprop subtracts two probability maps), and the sum over sites is
    rectified: what is left is where the target's evidence is denser than the evidence against
    it. On a network with global average pooling the top site's contributions ``alpha * x``
    are the terms of the class activation map (Zhou et al., CVPR 2016), whose class specificity
    lies as much in its negative terms as in its positive ones. With
    ``config.maps.evidence_weighted`` the rectified contrast is then multiplied by the target's own
    evidence (each site's map divided by its maximum, summed over the same sites): the contrast
    decides where the target wins, the evidence how strongly each pixel carries it.

    Args:
        state: From :meth:`FeedbackSelectivePruning.select` (its default ``keep_cws="summed"``
            keeps what the configuration's map sums).
        size: Output ``(H, W)``; defaults to the input's spatial size.
        sites: Names of the sites to sum; defaults to the configuration's ``summation_sites``
            share of the spatial activation sites (all of them when ``None``).
        summation: Overrides the configuration's quantity (``"cw"``, ``"activation"``,
            ``"contribution"``).
        reshape_transform: Turns a site's ``(B, ...)`` activation into ``(B, C, H, W)``
            (pytorch-grad-cam's convention); default: the state's, which FSP sets for
            torchvision's ViT (tokens) and ConvNeXt and Swin (channels last). A site whose
            transformed activation is not 4-D is not summed.

    Returns:
        ``(B, 1, H, W)``.
    """
    if not state.cws:
        raise ValueError("The state holds no CWs; run select() without keep_cws=False.")
    maps, contrastive = state.config.maps, state.config.selection.contrastive
    quantity = summation or maps.summation
    if quantity not in SUMMATIONS:
        raise ValueError(f"Unknown summation {quantity!r}; use one of {SUMMATIONS}.")
    if contrastive and state.dual is None:
        raise ValueError("The configuration is contrastive but the state holds no dual: make it with select().")
    size = tuple(size or state.input_size)
    transform = state.maps_transform(reshape_transform)
    names = list(sites) if sites is not None else state.summation_sites(transform)
    if not names:
        raise ValueError("The model has no spatial (B, C, H, W) ReLU-like site to sum.")
    unkept = [name for name in names if name not in state.cws]
    if unkept:
        raise ValueError(f"The state kept no CWs at {unkept[:3]}: select(..., keep_cws=True) keeps every site's.")
    evidence = [_site_map(state, name, quantity, transform) for name in names]
    sem = _summed(evidence, size, maps.site_normalization)
    if contrastive:
        against = [_site_map(state.dual, name, quantity, transform) for name in names]
        sem = sem - _summed(against, size, maps.site_normalization)
    sem = sem.clamp(min=0)
    if maps.evidence_weighted:
        sem = sem * _summed(evidence, size, "max")
    return l2_normalize(sem)


def _summed(site_maps: Sequence[Tensor], size: Tuple[int, ...], normalization: str) -> Tensor:
    """The sum of the sites' maps, each scaled (``normalization``) and resized to ``size``.

    Bilinear resizing is linear, so the maps of one resolution are added first and resized
    once: one resize per resolution rather than per site."""
    by_size: Dict[Tuple[int, ...], Tensor] = {}
    for site_map in site_maps:
        scaled = _scaled(site_map, normalization)
        key = tuple(scaled.shape[-2:])
        by_size[key] = by_size[key] + scaled if key in by_size else scaled
    total = torch.zeros(())
    for summed in by_size.values():
        total = total + F.interpolate(summed, size=size, mode="bilinear", align_corners=False)
    return total


def _scaled(site_map: Tensor, normalization: str) -> Tensor:
    """A site's ``(B, 1, h, w)`` map divided by its maximum or its sum (``config.maps.site_normalization``)."""
    if normalization == "none":
        return site_map
    flat = site_map.flatten(1)
    scale = flat.amax(1) if normalization == "max" else flat.sum(1)
    return site_map / scale.clamp(min=1e-30).view(-1, 1, 1, 1)


def _site_map(state: FeedbackState, name: str, quantity: str, transform: ReshapeTransform) -> Tensor:
    """One site's ``(B, 1, h, w)`` map of the kept units, non-negative."""
    if quantity == "cw":
        kept = state.gates[name] * state.cws[name].abs()
    elif quantity == "activation":
        kept = state.site_outputs[name]
    else:
        kept = state.cws[name] * state.site_outputs[name]
    return transform(kept).clamp(min=0).sum(1, keepdim=True)


def summation_fsp_fr_energy_map(summation: Tensor, fsp_fr: Tensor) -> Tensor:
    """Procedure 2, step 4: the Summation Energy Map plus the FSP-FR energy map, renormalized."""
    if summation.shape != fsp_fr.shape:
        raise ValueError(f"Map shapes differ: {tuple(summation.shape)} and {tuple(fsp_fr.shape)}.")
    return l2_normalize(l2_normalize(summation) + l2_normalize(fsp_fr))
