"""The gate selection rule shared by FSP and FR, and its thresholds.

Both algorithms keep a unit when its contribution to the target score (Eq. 6,
``alpha * z * x``) is large enough: ``z = 1[alpha * sign(x) > tau]``, with ``tau`` chosen per
sample and per site by a threshold rule.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

Threshold = Union[str, float, Callable[[Tensor], Tensor]]
"""``"zero"`` (Algorithms 1 and 2), ``"mean"`` (the layer-mean rule at the end of Sec. 3.5:
the mean of all CWs of the site), ``"positive_mean"`` (the mean of the positive CWs, the form
used by the authors' Caffe demo), a constant, or a callable mapping the CWs ``(B, ...)`` of a
site to per-sample thresholds of shape ``(B,)``.

A threshold below zero is raised to zero: it would keep units whose contribution lowers the
target score (a layer's mean CW is often negative), which no reading of Eq. 7 wants."""

_RULES = ("zero", "mean", "positive_mean")


def check_threshold(threshold: Threshold) -> None:
    """Raises ``ValueError`` for a threshold that is none of the documented forms."""
    if isinstance(threshold, str) and threshold not in _RULES:
        raise ValueError(f"Unknown threshold rule {threshold!r}; use one of {_RULES}, a number or a callable.")
    if not isinstance(threshold, (str, float, int)) and not callable(threshold):
        raise TypeError(f"threshold must be a rule name, a number or a callable, got {type(threshold)}.")


def per_sample_threshold(cw: Tensor, threshold: Threshold) -> Tensor:
    """The threshold ``tau`` of each sample for one site's CWs, shaped to broadcast over them."""
    flat = cw.detach().flatten(1)
    if threshold == "zero":
        tau = flat.new_zeros(flat.shape[0])
    elif threshold == "mean":
        tau = flat.mean(1)
    elif threshold == "positive_mean":
        positive = flat.clamp(min=0)
        tau = positive.sum(1) / (flat > 0).sum(1).clamp(min=1)
    elif callable(threshold):
        tau = torch.as_tensor(threshold(cw.detach()), dtype=cw.dtype, device=cw.device).reshape(-1)
        tau = tau.expand(flat.shape[0])
    else:
        tau = flat.new_full((flat.shape[0],), float(threshold))
    return tau.clamp(min=0).reshape((-1,) + (1,) * (cw.dim() - 1))


def cw_selector(cw: Tensor, threshold: Threshold) -> Tensor:
    """All the selection rule needs to know of a site's CWs: one of three values a unit.

    ``+1`` where ``alpha > tau``, ``-1`` where ``alpha < -tau``, ``0`` otherwise (``tau >= 0``,
    so the cases are exclusive), in any dtype that holds them; FSP keeps them as bytes.
    """
    if threshold == "zero":
        return torch.sign(cw)
    tau = per_sample_threshold(cw, threshold)
    return (cw > tau).to(torch.int8) - (cw < -tau).to(torch.int8)


def keep_mask(selector: Tensor, x: Tensor) -> Tensor:
    """The selection rule: ``z = 1[alpha * sign(x) > tau]``, as 0/1 values in ``x``'s dtype.

    Args:
        selector: The site's :func:`cw_selector`.
        x: The site's activation (the paper's ``x``: the input of the feedback layer).

    For ``x >= 0`` -- every ReLU output, and every site in the first pass -- this is the
    paper's ``z = delta(alpha - tau)`` (Algorithms 1 and 2). In the linearized network a frozen
    unit's input can turn negative once gates below it close; taking the sign into account keeps
    each greedy step of Algorithm 2 an ascent step there too (``alpha * z * x`` is then
    maximized over ``z`` exactly). Units with ``x == 0`` contribute nothing and stay closed.
    """
    # In place in floats: on the CPU a comparison that writes booleans costs several times
    # the arithmetic. A selector already in x's dtype is overwritten; FR's is a temporary.
    return selector.to(x.dtype).mul_(x).gt_(0)
