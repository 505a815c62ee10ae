"""The elementwise work of a gated site in one pass over memory (issue #22).

A gated site computes ``y = f(x)`` (the frozen ReLU6 of a linearized pass, say), its gates ``z``
(from a selector and ``y``, Algorithm 2) and ``z * y``; its backward pass ``z * f'(x) * grad``
and, for the paper's rule, the next selector ``sign(CW)``. As torch operations that is five to
seven kernels a direction, each reading or writing the whole activation, and dtype conversions
between byte gates and float masks: on EfficientNet-Lite0 more time than the model's own
convolutions. Here each direction is one pass: numba kernels (:mod:`._numba_kernels`) for
float CPU tensors when numba is installed, else the same arithmetic in torch operations (every
GPU, and the reference the tests compare the kernels with, bit for bit).

``CAPTUM_FEEDBACK_KERNELS=torch`` in the environment, or :func:`use_numba`, turns the numba
kernels off.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Tuple

import torch
from torch import Tensor

IDENTITY, CODED, SCALED, RELU = 0, 1, 2, 3
"""Transfer kinds (see :class:`Transfer`); the numba kernels use the same numbers."""
PINNED = 2
"""A selector byte that keeps its unit open whatever the sign of its activation: how a sample
whose gates have converged keeps them through a selecting pass."""

_enabled = os.environ.get("CAPTUM_FEEDBACK_KERNELS", "numba").lower() != "torch"


@dataclass(frozen=True)
class Transfer:
    """A site's map ``y = f(x)`` before its gate, for the kernels to apply.

    Attributes:
        kind: :data:`IDENTITY` (``y = x``: the site's output was computed by torch);
            :data:`CODED` (``y = slopes[c] * x + offsets[c]`` with a byte code ``c`` per unit:
            a frozen ReLU, ReLU6 or hardtanh, Sec. 3.3); :data:`SCALED` (``y = x * scale``: a
            frozen smooth activation); :data:`RELU` (``y = max(x, 0)``, re-evaluated: its gates
            are narrowed to the active units in place).
        codes: The byte codes of :data:`CODED`.
        slopes: The slope of each code.
        offsets: The offset of each code.
        scale: The per-unit scale of :data:`SCALED`.
    """

    kind: int = IDENTITY
    codes: Optional[Tensor] = None
    slopes: Tuple[float, ...] = ()
    offsets: Tuple[float, ...] = ()
    scale: Optional[Tensor] = None

    def apply(self, x: Tensor) -> Tensor:
        """``f(x)`` in torch operations, differentiable (a frozen site without gates)."""
        if self.kind == CODED:
            return self._table(self.slopes, x) * x + self._table(self.offsets, x)
        if self.kind == SCALED:
            return x * self.scale
        return torch.relu(x) if self.kind == RELU else x

    def _table(self, values: Tuple[float, ...], like: Tensor) -> Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device)[self.codes.long()]

    def derivative(self, grad: Tensor) -> Tensor:
        """``f'(x) * grad`` where the gates are open (a RELU's lie within its active units)."""
        if self.kind == CODED:
            return self._table(self.slopes, grad) * grad
        return grad * self.scale if self.kind == SCALED else grad


@contextlib.contextmanager
def use_numba(enabled: bool) -> Iterator[None]:
    """Runs the block with the numba kernels on or off (the torch operations otherwise)."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


@functools.cache
def _numba() -> Any:
    """The numba kernels module, or ``None`` when numba cannot be imported."""
    try:
        from captum_feedback.core import _numba_kernels
    except ImportError:
        return None
    return _numba_kernels


def _kernels_for(values: Tensor, *others: Optional[Tensor]) -> Any:
    """The numba kernels if they are on, ``values`` is a contiguous float CPU tensor and the
    ``others`` are CPU tensors of its shape (byte tensors, or floats of its dtype); else ``None``."""
    if not _enabled or values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return None
    if not values.is_contiguous():
        return None
    for t in others:
        if t is not None and (t.device != values.device or t.dtype not in (values.dtype, torch.int8)
                              or t.shape != values.shape):
            return None
    kernels = _numba()
    if kernels is not None:
        import numba

        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    return kernels


def _calls(*tensors: Optional[Tensor]) -> Iterator[Tuple[Any, ...]]:
    """The tensors as contiguous numpy rows sharing their memory, for one kernel call each: the
    whole tensors at once where all are contiguous, else one sample at a time (a site's gate
    bytes are rows of the gate store's buffer). ``None`` stays ``None``."""
    present = [t.detach() for t in tensors if t is not None]
    if all(t.is_contiguous() for t in present):
        yield tuple(None if t is None else t.detach().view(-1).numpy() for t in tensors)
        return
    for b in range(len(present[0])):
        yield tuple(None if t is None else t[b].detach().view(-1).numpy() for t in tensors)


def _tables(transfer: Transfer, like: Tensor) -> Tuple[Any, Any]:
    import numpy as np

    dtype = np.float32 if like.dtype == torch.float32 else np.float64
    pad = (0.0, 0.0, 0.0)
    return (np.asarray((transfer.slopes + pad)[:3], dtype=dtype), np.asarray((transfer.offsets + pad)[:3], dtype=dtype))


def _placeholder(array: Any, like: Any) -> Any:
    """``array``, or a one-element array of ``like``'s dtype for a kernel argument not used."""
    return array if array is not None else like[:1]


def _bytes(gates: Tensor) -> Tensor:
    return gates.view(torch.int8) if gates.dtype == torch.bool else gates


def gated_forward(x: Tensor, transfer: Transfer, gates: Tensor, selects: bool) -> Tensor:
    """``z * f(x)``; ``gates`` (bytes, ``x``'s shape) are the gates ``z``, or with ``selects`` a
    selector ``s`` that becomes ``z = 1[s * f(x) > 0]`` (1 where ``s`` is :data:`PINNED`) in
    place. A :data:`RELU` transfer's gates are narrowed to ``x > 0`` in place."""
    gates = _bytes(gates)
    kernels = _kernels_for(x, gates, transfer.codes, transfer.scale)
    if kernels is not None:
        out = torch.empty_like(x)
        slopes, offsets = _tables(transfer, x)
        for x_, codes, scale, gates_, out_ in _calls(x, transfer.codes, transfer.scale, gates, out):
            kernels.gated_forward(x_, transfer.kind, _placeholder(codes, gates_), slopes, offsets,
                                  _placeholder(scale, x_), gates_, selects, out_)
        return out
    y = transfer.apply(x)
    if selects:
        keep = gates.to(y.dtype).mul_(y).gt_(0).bool() | (gates == PINNED)
        gates.copy_(keep)
    elif transfer.kind == RELU:
        keep = gates.bool() & (y > 0)
        gates.copy_(keep)
    else:
        keep = gates.bool()
    return keep.view(torch.int8).to(y.dtype).mul_(y)


def gated_backward(grad: Tensor, transfer: Transfer, gates: Tensor) -> Tensor:
    """``z * f'(x) * grad`` for the gates ``z`` of :func:`gated_forward`."""
    gates = _bytes(gates)
    kernels = _kernels_for(grad, gates, transfer.codes, transfer.scale)
    if kernels is not None:
        out = torch.empty_like(grad)
        slopes, _ = _tables(transfer, grad)
        for grad_, codes, scale, gates_, out_ in _calls(grad, transfer.codes, transfer.scale, gates, out):
            kernels.gated_backward(grad_, transfer.kind, _placeholder(codes, gates_), slopes,
                                   _placeholder(scale, grad_), gates_, out_)
        return out
    return gates.to(grad.dtype).mul_(transfer.derivative(grad))


def write_signs(cw: Tensor, into: Tensor, within: Optional[Tensor] = None) -> None:
    """``into = sign(cw)`` as bytes, zero outside ``within`` (booleans) if given: the paper's
    selector (Algorithms 1 and 2, ``tau = 0``)."""
    within_bytes = None if within is None else _bytes(within)
    kernels = _kernels_for(cw, into, within_bytes)
    if kernels is not None:
        for cw_, within_, into_ in _calls(cw, within_bytes, into):
            kernels.signs(cw_, _placeholder(within_, into_), within_ is not None, into_)
        return
    into.copy_(torch.sign(cw))
    if within_bytes is not None:
        into.mul_(within_bytes)
