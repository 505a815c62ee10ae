"""The gate selection rule shared by FSP and FR, and its thresholds.

Both algorithms keep a unit when its contribution to the target score (Eq. 6,
``alpha * z * x``) is large enough: ``z = 1[alpha * sign(x) > tau]``, with ``tau`` chosen per
sample and per site by a threshold rule. Each rule (:class:`Zero`, :class:`Constant`,
:class:`Computed`, :class:`MeanRatio`) is a small typed object that knows its selector; every
entry point turns the user's ``threshold`` into one validated :class:`SelectionRule` with
:func:`as_rule`, and the policies only ever see rules.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional, Tuple, Union, get_args

import torch
from torch import Tensor

from captum_feedback.core.kernels import write_signs
from captum_feedback.core.sites import as_mask


@dataclass(frozen=True)
class Zero:
    """The paper's rule, ``z = 1[alpha * x > 0]`` (Algorithms 1 and 2, ``tau = 0``): the only
    rule with which a linearized update never lowers the target score (Sec. 4.1)."""

    prunes_only: ClassVar[bool] = False

    def selector(self, cw: Tensor, open_units: Optional[Tensor] = None, signed: bool = True) -> Tensor:
        """The sign of each CW (see :meth:`SelectionRule.selector`)."""
        return torch.sign(cw)


@dataclass(frozen=True)
class Constant:
    """A fixed threshold ``tau`` (raised to zero if below: see :data:`Threshold`)."""

    tau: float
    prunes_only: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or not math.isfinite(self.tau):
            raise ValueError(f"threshold must be finite, got {self.tau!r}.")

    def selector(self, cw: Tensor, open_units: Optional[Tensor] = None, signed: bool = True) -> Tensor:
        """``+1`` above ``tau``, ``-1`` below ``-tau``, else ``0`` (see :meth:`SelectionRule.selector`)."""
        return _outside(cw, cw.new_full((cw.shape[0],), float(self.tau)))


@dataclass(frozen=True)
class Computed:
    """A threshold per sample computed from a site's CWs: ``threshold(cw)`` maps ``(B, ...)``
    CWs to ``(B,)`` thresholds (raised to zero if below)."""

    threshold: Callable[[Tensor], Tensor]
    prunes_only: ClassVar[bool] = False

    def selector(self, cw: Tensor, open_units: Optional[Tensor] = None, signed: bool = True) -> Tensor:
        """``+1`` above the sample's ``tau``, ``-1`` below ``-tau``, else ``0``."""
        tau = torch.as_tensor(self.threshold(cw.detach()), dtype=cw.dtype, device=cw.device).reshape(-1)
        return _outside(cw, tau.expand(cw.shape[0]))


def _outside(cw: Tensor, tau: Tensor) -> Tensor:
    """``+1`` where ``cw > tau``, ``-1`` where ``cw < -tau``, else ``0``, per sample (``tau``:
    ``(B,)``, raised to zero), as bytes."""
    tau = tau.clamp(min=0).reshape((-1,) + (1,) * (cw.dim() - 1))
    return (cw > tau).to(torch.int8) - (cw < -tau).to(torch.int8)


@dataclass(frozen=True)
class MeanRatio:
    """The threshold of the authors' released code (``relu_layer.cu``, ``Backward_gpu``).

    A unit stays open while its CW is at least ``ratio`` times the mean of the positive CWs of
    the units of its site that are open and active (per sample). As in the released code, a
    pruning rule never reopens a closed gate: gates only close from one update to the next.
    ``demo.m`` uses ``ratio=1`` for FSP and ``0.1`` for FR from all selected neurons at once.
    One deviation: where none of a site's open units has a positive CW, the released code
    divides 0 by 0 and closes every gate, which blanks the map; here the site keeps its gates.

    Attributes:
        ratio: The multiple of the mean positive CW a unit's CW must reach.
        located_only: Apply the ratio only where the CWs tell locations apart. Where every
            channel's CW is the same at all of its locations (the last feature map before
            global average pooling), or a site has no locations (a fully connected ReLU), the
            ratio would rank channels, not places, and a unit stays open while its CW is
            positive (the paper's ``alpha > 0``). Per sample. The default configuration's rule:
            it prunes a VGG-style head's last feature map to the target's strongest places
            and leaves a pooled network's channel evidence to the contrast (issue #21).
    """

    ratio: float = 1.0
    located_only: bool = False
    prunes_only: ClassVar[bool] = True
    """A pruning rule: gates only close from one update to the next."""

    def __post_init__(self) -> None:
        if not (isinstance(self.ratio, (int, float)) and math.isfinite(self.ratio) and self.ratio >= 0):
            raise ValueError(f"MeanRatio needs a finite ratio >= 0, got {self.ratio!r}.")

    def tau(self, positive: Tensor) -> Tensor:
        """The threshold of each sample from the positive parts of its open units' CWs
        (``(B, ...)``, zero elsewhere): ``ratio`` times their mean, at least the dtype's smallest
        normal number, shaped to broadcast over ``positive``."""
        shape = (-1,) + (1,) * (positive.dim() - 1)
        tiny = torch.finfo(positive.dtype).tiny
        tau = (self.ratio * _mean_positive(positive.flatten(1)).to(positive.dtype)).clamp(min=tiny)
        if self.located_only:
            tau = torch.where(_tells_locations_apart(positive), tau, torch.full_like(tau, tiny))
        return tau.view(shape)

    def selector(self, cw: Tensor, open_units: Optional[Tensor] = None, signed: bool = True) -> Tensor:
        """Keep open units whose CW reaches ``tau`` (``relu_layer.cu`` keeps a CW equal to
        ``tau``, so the last open unit stays), in a handful of kernels (see
        :meth:`SelectionRule.selector`)."""
        opened = None if open_units is None else as_mask(open_units, cw)
        positive = cw.detach().clamp(min=0)
        if opened is not None:
            positive.mul_(opened)
        tau = self.tau(positive)
        keep = positive >= tau
        selector = keep  # booleans select as 1 and 0: one conversion fewer where x >= 0
        if signed:
            against = (-cw.detach()).clamp(min=0)
            if opened is not None:
                against.mul_(opened)
            selector = keep.to(torch.int8).sub_((against >= tau).to(torch.int8))
        if open_units is None:
            return selector
        kept_any = keep.flatten(1).any(1)
        if not cw.is_cuda and bool(kept_any.all()):  # the common case; on a GPU, asking would wait
            return selector
        # A sample none of whose open units has a CW above tau keeps the site's gates as they
        # are: the released code's 0 / 0 threshold closes them all and leaves a blank map.
        shape = (-1,) + (1,) * (cw.dim() - 1)
        return torch.where(kept_any.view(shape), selector.to(torch.int8), open_units.to(torch.int8))


Rule = Union[Zero, Constant, Computed, MeanRatio]
"""A selection rule: each knows its selector."""

Threshold = Union[str, float, Rule, Callable[[Tensor], Tensor]]
"""What users pass as a threshold: ``"zero"`` or :class:`Zero` (Algorithms 1 and 2), a
:class:`MeanRatio` (``MeanRatio(1.0)``: the authors' rule), a number or :class:`Constant`, or a
callable mapping the CWs ``(B, ...)`` of a site to per-sample thresholds of shape ``(B,)``
(:class:`Computed`).

A threshold below zero is raised to zero: it would keep units whose contribution lowers the
target score, which no reading of Eq. 7 wants. For that reason the paper's text rule of Sec. 3.5
(the mean of *all* CWs of a layer, which is almost always negative) is not offered: raised to zero
it is ``"zero"``; the released code's reading of it is :class:`MeanRatio`."""


@dataclass(frozen=True)
class SelectionRule:
    """A rule (:data:`Rule`, from any :data:`Threshold` form), with the edge rule of the released code.

    Attributes:
        threshold: The rule; any :data:`Threshold` form is turned into one.
        drop_edges: Close the outermost row and column of every spatial map before anything
            else (``drop_edge_pixels`` of the released code).

    Raises:
        ValueError: an unknown rule name, a non-finite number or a negative ratio.
        TypeError: a threshold of none of the documented forms.
    """

    threshold: Threshold = "zero"
    drop_edges: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "threshold", _typed(self.threshold))
        object.__setattr__(self, "drop_edges", bool(self.drop_edges))

    @property
    def prunes_only(self) -> bool:
        """Whether gates may only close (the released code's rule) rather than follow the CWs."""
        return self.threshold.prunes_only

    @property
    def is_zero(self) -> bool:
        """The paper's ``alpha > 0`` (Algorithms 1 and 2), which alone keeps the ascent guarantee."""
        return isinstance(self.threshold, Zero)

    @property
    def writes_signs(self) -> bool:
        """Whether :meth:`selector` is the CWs' signs (the zero threshold without the edge rule),
        which :meth:`write_selector` and the gate's backward kernel write in one pass."""
        return self.is_zero and not self.drop_edges

    def selector(self, cw: Tensor, open_units: Optional[Tensor] = None, signed: bool = True) -> Tensor:
        """All the selection rule needs to know of a site's CWs: one of three values a unit.

        ``+1`` where ``alpha > tau``, ``-1`` where ``alpha < -tau``, ``0`` otherwise (``tau >= 0``,
        so the cases are exclusive), in any dtype that holds them; FSP keeps them as bytes.

        Args:
            cw: The site's CWs ``(B, ...)``.
            open_units: For a :class:`MeanRatio` rule, the units that are open and active now
                (booleans of ``cw``'s shape); ``None`` counts every unit. Closed units get ``0``.
            signed: Whether the site's activations can be negative. Where they cannot (a ReLU
                that is not linearized), ``-1`` and ``0`` select alike and a pruning rule
                skips the ``-1`` side.
        """
        if self.drop_edges and _spatial(cw):  # an edge unit selects 0, and a pruning rule neither
            if self.prunes_only:  # counts it nor keeps it open
                interior = _interior(cw, torch.bool)
                open_units = interior if open_units is None else open_units & interior
            else:
                cw = cw * _interior(cw, cw.dtype)
        return self.threshold.selector(cw, open_units, signed)

    def write_selector(self, cw: Tensor, into: Tensor, open_units: Optional[Tensor] = None, signed: bool = True,
                       within: Optional[Tensor] = None) -> None:
        """Writes :meth:`selector` into the bytes ``into``, ``0`` outside ``within`` (booleans)
        if given; the paper's rule in one pass over memory (:func:`~.kernels.write_signs`)."""
        if self.writes_signs:
            write_signs(cw, into, within)
            return
        into.copy_(self.selector(cw, open_units, signed))
        if within is not None:
            into.mul_(within.view(torch.int8))


def _mean_positive(flat: Tensor) -> Tensor:
    """The mean of the positive entries of each row of a non-negative ``(B, n)`` tensor (0 for a
    row of zeros), at least in float32. Positive entries are counted as a sum of signs, several
    times faster than ``count_nonzero`` on the CPU and exact (float32 counts exactly up to 2**24;
    longer rows are summed in float64)."""
    wide = flat.dtype == torch.float64 or flat.shape[1] > 2**24
    dtype = torch.float64 if wide else torch.float32
    return flat.sum(1, dtype=dtype) / torch.sign(flat).sum(1, dtype=dtype).clamp(min=1)


def _tells_locations_apart(positive: Tensor) -> Tensor:
    """Per sample, whether some channel's positive CWs differ between its locations (``(B,)``).

    A ``(B, C, H, W)`` or channels-last ``(B, H, W, C)`` site (``(B, N, C)`` tokens) is constant
    over its locations when it is constant over its last two (last one) or its middle dimensions:
    a real site's CWs are never constant over channels. Zeros (closed, inactive or negative
    units) are left out; a ``(B, n)`` site has no locations.
    """
    if positive.dim() < 3:
        return torch.zeros(positive.shape[0], dtype=torch.bool, device=positive.device)
    spans = ((2, 3), (1, 2)) if positive.dim() == 4 else tuple((d,) for d in range(1, positive.dim()))
    return torch.stack([_varies(positive, dims) for dims in spans]).all(0)


def _varies(positive: Tensor, dims: Tuple[int, ...]) -> Tensor:
    """Per sample, whether a positive entry lies below its maximum over ``dims`` (by 1e-4 of it)."""
    top = positive.amax(dims, keepdim=True)
    return ((positive > 0) & (positive < top * (1 - 1e-4))).flatten(1).any(1)


def _spatial(cw: Tensor) -> bool:
    return cw.dim() == 4 and min(cw.shape[-2:]) > 2


def _interior(cw: Tensor, dtype: torch.dtype) -> Tensor:
    """1 inside, 0 on the outermost row and column of each ``(H, W)`` map, in ``dtype``."""
    return _interior_of(tuple(cw.shape[-2:]), dtype, cw.device)


@functools.lru_cache(maxsize=64)
def _interior_of(size: Tuple[int, int], dtype: torch.dtype, device: torch.device) -> Tensor:
    inside = torch.zeros(size, dtype=dtype, device=device)
    inside[1:-1, 1:-1] = 1
    return inside


def as_rule(threshold: Union[Threshold, SelectionRule] = "zero", drop_edges: bool = False) -> SelectionRule:
    """The one validated :class:`SelectionRule` for a user's threshold (or a rule, with
    ``drop_edges`` added when set)."""
    if isinstance(threshold, SelectionRule):
        return threshold if not drop_edges or threshold.drop_edges else SelectionRule(threshold.threshold, True)
    return SelectionRule(threshold, drop_edges)


def _typed(threshold: Threshold) -> Rule:
    """The :data:`Rule` a :data:`Threshold` form stands for; raises as :class:`SelectionRule` says."""
    if isinstance(threshold, get_args(Rule)):
        return threshold
    if isinstance(threshold, str):
        if threshold == "zero":
            return Zero()
        if threshold == "mean":
            raise ValueError("threshold='mean' (the mean of all CWs of a layer, Sec. 3.5) is gone: that mean is "
                             "almost always negative, so the rule was 'zero'. Use MeanRatio(r), the authors' reading "
                             "(the mean of the positive CWs), or 'zero'.")
        if threshold == "positive_mean":
            raise ValueError("threshold='positive_mean' is gone: it was another name of MeanRatio(1.0), the authors' "
                             "rule; pass MeanRatio(1.0).")
        raise ValueError(f"Unknown threshold rule {threshold!r}; use 'zero', a MeanRatio, a number or a callable.")
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return Constant(threshold)
    if callable(threshold):
        return Computed(threshold)
    raise TypeError(f"threshold must be a rule name, a MeanRatio, a number or a callable, got "
                    f"{type(threshold).__name__}.")


def keep_mask(selector: Tensor, x: Tensor) -> Tensor:
    """The selection rule: ``z = 1[alpha * sign(x) > tau]``, as 0/1 values in ``x``'s dtype.

    Args:
        selector: The site's :meth:`SelectionRule.selector`.
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
