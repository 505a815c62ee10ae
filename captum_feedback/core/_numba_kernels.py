"""Numba kernels of :mod:`captum_feedback.core.kernels` (imported only when numba is there).

Each kernel makes one pass over its arrays where the torch operations it replaces make five to
seven. The per-site kernels (:func:`gated_forward`, :func:`gated_backward`, :func:`signs`,
:func:`clamp_codes`) take tensors as memory addresses (``Tensor.data_ptr()``) and read them as
``rows`` rows of ``n`` units, each tensor's rows ``step`` bytes apart (0 for one row): a site's
gate bytes are rows of the gate store's buffer, further apart than a site's units. Turning a
tensor into a numpy array costs microseconds a tensor; a gated pass makes hundreds of kernel
calls (issue #22). An argument the call does not read (the codes of a transfer without codes,
say) is given another tensor's address; the wrapper checks shapes, dtypes and layouts.

``kind`` is a :class:`~captum_feedback.core.kernels.Transfer`'s: the map ``y = f(x)`` of the
site before its gate. :func:`centred_backward` reads its tensors as blocks of rows or of
channels, each tensor's memory one block.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic

CODED, SCALED, RELU = 1, 2, 3
PINNED = 2
"""The transfer kinds and the pinned selector byte of :mod:`captum_feedback.core.kernels`, which
imports this module when a kernel is first needed and so cannot be imported from here
(tests/test_kernels.py holds them equal)."""

_BYTE = np.zeros(1, dtype=np.int8)
"""Stands for the dtype of byte tensors (gates, selectors, codes) in :func:`_units`."""


@intrinsic
def _pointer(typingctx, address, like):  # noqa: ANN001, ANN201, ARG001
    """``address`` (an integer) as a pointer to units of ``like``'s dtype."""
    signature = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, sig, args):  # noqa: ANN001, ANN202, ARG001
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return signature, codegen


@njit(cache=True)
def _units(address, row, step, n, like):  # noqa: ANN001, ANN202
    """Row ``row`` of a tensor at ``address``: ``n`` units of ``like``'s dtype."""
    return carray(_pointer(address + row * step, like), n)


@njit(parallel=True, cache=True)
def _gated_forward(x, kind, codes, slopes, offsets, scale, gates, selects, out):  # noqa: ANN001, ANN201
    """``out = z * f(x)``; with ``selects`` the gates start as a selector ``s`` and become
    ``z = 1[s * f(x) > 0]`` (or 1 where ``s`` is :data:`PINNED`), else ``z = gates``
    (within ``x > 0`` for a ReLU, written back). ``slopes`` and ``offsets`` have three entries,
    read once: a table lookup per unit, or a short-circuit ``or``, keeps the loop from being
    vectorized (seven times slower).

    :func:`gated_forward` takes it to select only: where the gates are given,
    :func:`_fixed_forward` is 2.5 to 6 times faster. The cases it no longer takes stay, and
    ``selects`` stays an argument: compiled for selecting alone (without those cases, or with
    ``selects`` a constant) the loop ran 1.5 to 2 times slower (on 200,704 units, 64 us against
    27 to 41: what LLVM makes of this loop turns on its shape)."""
    s0, s1, s2 = slopes[0], slopes[1], slopes[2]
    o0, o1, o2 = offsets[0], offsets[1], offsets[2]
    for j in prange(x.shape[0]):
        v = x[j]
        if kind == CODED:
            c = codes[j]
            y = (s1 * v + o1) if c == 1 else ((s0 * v + o0) if c == 0 else (s2 * v + o2))
        elif kind == SCALED:
            y = v * scale[j]
        elif kind == RELU:
            y = v if v > 0 else v * 0
        else:
            y = v
        s = gates[j]
        if selects:
            keep = (s * y > 0) | (s == PINNED)
        elif kind == RELU:
            keep = (s != 0) & (y > 0)
        else:
            keep = s != 0
        if selects or kind == RELU:
            gates[j] = keep
        out[j] = y if keep else y * 0


@njit(inline="always", cache=True)
def _transferred(v, j, kind, codes, scale, s0, s1, s2, o0, o1, o2):  # noqa: ANN001, ANN202
    """``f(x)`` of unit ``j``, ``v``, for a transfer of ``kind``."""
    if kind == CODED:
        c = codes[j]
        return (s1 * v + o1) if c == 1 else ((s0 * v + o0) if c == 0 else (s2 * v + o2))
    if kind == SCALED:
        return v * scale[j]
    if kind == RELU:
        return v if v > 0 else v * 0
    return v


@njit(parallel=True, cache=True)
def _fixed_forward(x, kind, codes, slopes, offsets, scale, gates, out):  # noqa: ANN001, ANN201
    """:func:`_gated_forward` with given gates ``z`` (no selector): ``out = z * f(x)``, a ReLU's
    gates narrowed to ``x > 0`` and written back. One loop a case, without the tests of
    selecting that kept the loop from being vectorized."""
    s0, s1, s2 = slopes[0], slopes[1], slopes[2]
    o0, o1, o2 = offsets[0], offsets[1], offsets[2]
    if kind == RELU:
        for j in prange(x.shape[0]):
            y = _transferred(x[j], j, kind, codes, scale, s0, s1, s2, o0, o1, o2)
            keep = (gates[j] != 0) & (y > 0)
            gates[j] = keep
            out[j] = y if keep else y * 0
    else:
        for j in prange(x.shape[0]):
            y = _transferred(x[j], j, kind, codes, scale, s0, s1, s2, o0, o1, o2)
            out[j] = y if gates[j] != 0 else y * 0


@njit(inline="always", cache=True)
def _gated_cw(g, gate, kind, codes, scale, j, s0, s1, s2):  # noqa: ANN001, ANN202
    """One unit of :func:`gated_backward`'s ``z * f'(x) * grad``."""
    if gate == 0:
        return g * 0
    if kind == CODED:
        c = codes[j]
        return (s1 * g) if c == 1 else ((s0 * g) if c == 0 else (s2 * g))
    if kind == SCALED:
        return g * scale[j]
    return g


@njit(inline="always", cache=True)
def _sign(v):  # noqa: ANN001, ANN202
    return np.int8(v > 0) - np.int8(v < 0)


@njit(parallel=True, cache=True)
def _gated_backward(grad, kind, codes, slopes, scale, gates, out, signs, within, writes_signs, has_within):  # noqa: ANN001, ANN201
    """``out = z * f'(x) * grad``, ``f'`` of a frozen transfer (1 for the others, whose gates
    already lie within their active units); with ``writes_signs``, also :func:`_signs` of
    ``grad`` into ``signs``, which may be ``gates`` themselves: each unit's gate is read first.
    One loop for each case: a test of the case inside the loop kept it from being vectorized
    (twice as slow)."""
    s0, s1, s2 = slopes[0], slopes[1], slopes[2]
    n = grad.shape[0]
    if not writes_signs:
        for j in prange(n):
            out[j] = _gated_cw(grad[j], gates[j], kind, codes, scale, j, s0, s1, s2)
    elif has_within:
        for j in prange(n):
            g = grad[j]
            out[j] = _gated_cw(g, gates[j], kind, codes, scale, j, s0, s1, s2)
            signs[j] = _sign(g) * within[j]
    else:
        for j in prange(n):
            g = grad[j]
            out[j] = _gated_cw(g, gates[j], kind, codes, scale, j, s0, s1, s2)
            signs[j] = _sign(g)


@njit(parallel=True, cache=True)
def _signs(cw, within, has_within, out):  # noqa: ANN001, ANN201
    """``out = sign(cw)`` as bytes, zero outside ``within`` (0/1 bytes) when ``has_within``."""
    if has_within:
        for j in prange(cw.shape[0]):
            out[j] = _sign(cw[j]) * within[j]
    else:
        for j in prange(cw.shape[0]):
            out[j] = _sign(cw[j])


@njit(parallel=True, cache=True)
def _agreeing(cw, x, out):  # noqa: ANN001, ANN201
    """``out = cw`` where ``sign(cw) * x > 0``, else ``cw * 0``."""
    for j in prange(cw.shape[0]):
        g = cw[j]
        out[j] = g if _sign(g) * x[j] > 0 else g * 0


@njit(parallel=True, cache=True)
def repack(words, packed, bounds, changed):  # noqa: ANN001, ANN201
    """Packs 0/1 gate bytes, read eight at a time as the little-endian ``uint64`` ``words``,
    into ``packed`` (unit ``8j + i`` is bit ``i`` of byte ``j``: the multiplication gathers the
    eight bytes into the top byte without carries), and says for each segment
    ``bounds[k]:bounds[k + 1]`` of ``packed`` whether any of its bytes differ from what
    ``packed`` held."""
    gather = np.uint64(0x0102040810204080)
    shift = np.uint64(56)
    for k in prange(bounds.shape[0] - 1):
        # Slices indexed from 0: a loop over range(bounds[k], ...) must allow negative indices
        # and was not vectorized (three times slower).
        segment_words, segment = words[bounds[k] : bounds[k + 1]], packed[bounds[k] : bounds[k + 1]]
        differs = np.uint8(0)
        for i in range(segment.shape[0]):
            byte = np.uint8((segment_words[i] * gather) >> shift)
            differs |= byte ^ segment[i]
            segment[i] = byte
        changed[k] = differs != 0


@njit(parallel=True, cache=True)
def _clamp_codes(x, low, high, out, codes):  # noqa: ANN001, ANN201
    """``out = clamp(x, low, high)`` and each unit's code: 0 at or below ``low``, 1 between,
    2 at or above ``high`` (a ReLU6's state for its frozen passes)."""
    for j in prange(x.shape[0]):
        v = x[j]
        out[j] = low if v <= low else (high if v >= high else v)
        codes[j] = np.int8(v > low) + np.int8(v >= high)


@njit(cache=True)
def gated_forward(rows, n, at, step, kind, slopes, offsets, selects):  # noqa: ANN001, ANN201
    """:func:`_gated_forward` (``selects``) or :func:`_fixed_forward` of each row; ``at`` and
    ``step``: of ``x``, the codes, the scale, the gates and ``out``."""
    for b in range(rows):
        x, codes = _units(at[0], b, step[0], n, slopes), _units(at[1], b, step[1], n, _BYTE)
        scale, gates, out = (_units(at[2], b, step[2], n, slopes), _units(at[3], b, step[3], n, _BYTE),
                             _units(at[4], b, step[4], n, slopes))
        if selects:
            _gated_forward(x, kind, codes, slopes, offsets, scale, gates, selects, out)
        else:
            _fixed_forward(x, kind, codes, slopes, offsets, scale, gates, out)


@njit(cache=True)
def gated_backward(rows, n, at, step, kind, slopes, writes_signs, has_within):  # noqa: ANN001, ANN201
    """:func:`_gated_backward` of each row; ``at`` and ``step``: of ``grad``, the codes, the
    scale, the gates, ``out``, the signs and ``within``."""
    for b in range(rows):
        _gated_backward(_units(at[0], b, step[0], n, slopes), kind, _units(at[1], b, step[1], n, _BYTE), slopes,
                        _units(at[2], b, step[2], n, slopes), _units(at[3], b, step[3], n, _BYTE),
                        _units(at[4], b, step[4], n, slopes), _units(at[5], b, step[5], n, _BYTE),
                        _units(at[6], b, step[6], n, _BYTE), writes_signs, has_within)


@njit(cache=True)
def signs(rows, n, at, step, like, has_within):  # noqa: ANN001, ANN201
    """:func:`_signs` of each row; ``at`` and ``step``: of the CW (of ``like``'s dtype),
    ``within`` and ``out``."""
    for b in range(rows):
        _signs(_units(at[0], b, step[0], n, like), _units(at[1], b, step[1], n, _BYTE), has_within,
               _units(at[2], b, step[2], n, _BYTE))


@njit(cache=True)
def agreeing(rows, n, at, step, like):  # noqa: ANN001, ANN201
    """:func:`_agreeing` of each row; ``at`` and ``step``: of the CW, ``x`` and ``out``, all of
    ``like``'s dtype."""
    for b in range(rows):
        _agreeing(_units(at[0], b, step[0], n, like), _units(at[1], b, step[1], n, like),
                  _units(at[2], b, step[2], n, like))


@njit(cache=True)
def clamp_codes(n, at, low, high, like):  # noqa: ANN001, ANN201
    """:func:`_clamp_codes` of one row; ``at``: of ``x``, ``out`` (of ``like``'s dtype) and the codes."""
    _clamp_codes(_units(at[0], 0, 0, n, like), low, high, _units(at[1], 0, 0, n, like), _units(at[2], 0, 0, n, _BYTE))


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _centred_rows(grad, weight, scale, out):  # noqa: ANN001, ANN201
    """``out = scale * (g w - mean(g w))`` along each row of ``grad`` (rows, n), ``scale`` one a
    row. ``reassoc`` lets the sum be vectorized (four times faster), in another order than torch's."""
    n = grad.shape[1]
    for r in prange(grad.shape[0]):
        g, o = grad[r], out[r]
        total = g[0] * 0
        for c in range(n):
            total += g[c] * weight[c]
        mean, k = total / n, scale[r]
        for c in range(n):
            o[c] = (g[c] * weight[c] - mean) * k


_BLOCK = 512
"""Positions a job of :func:`_centred_channels` takes: its slice of a sample stays in cache."""


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def _centred_channels(grad, weight, scale, out):  # noqa: ANN001, ANN201
    """:func:`_centred_rows` of a channels-first ``grad`` (N, C, S) centred over its C channels at
    each of its S positions; ``scale`` (N, S). A job takes a block of positions, channel by
    channel, so that the loops run along memory."""
    samples, channels, positions = grad.shape
    blocks = (positions + _BLOCK - 1) // _BLOCK
    for job in prange(samples * blocks):
        b, start = job // blocks, (job % blocks) * _BLOCK
        size = min(positions - start, _BLOCK)
        g, o, k = grad[b, :, start : start + size], out[b, :, start : start + size], scale[b, start : start + size]
        mean = np.zeros(size, grad.dtype)
        for c in range(channels):
            w, gc = weight[c], g[c]
            for i in range(size):
                mean[i] += gc[i] * w
        for i in range(size):
            mean[i] /= channels
        for c in range(channels):
            w, gc, oc = weight[c], g[c], o[c]
            for i in range(size):
                oc[i] = (gc[i] * w - mean[i]) * k[i]


@njit(cache=True)
def centred_backward(samples, channels, positions, at, like):  # noqa: ANN001, ANN201
    """:func:`_centred_rows` (``positions`` 0: ``samples`` rows of ``channels`` units) or
    :func:`_centred_channels`; ``at``: of ``grad``, the weight, the scale and ``out``, all of
    ``like``'s dtype."""
    if positions == 0:
        _centred_rows(carray(_pointer(at[0], like), (samples, channels)), _units(at[1], 0, 0, channels, like),
                      _units(at[2], 0, 0, samples, like), carray(_pointer(at[3], like), (samples, channels)))
    else:
        shape = (samples, channels, positions)
        _centred_channels(carray(_pointer(at[0], like), shape), _units(at[1], 0, 0, channels, like),
                          carray(_pointer(at[2], like), (samples, positions)), carray(_pointer(at[3], like), shape))
