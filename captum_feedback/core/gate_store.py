"""The gates FSP keeps between passes: one byte a unit while a pass runs, eight units a byte
between passes (Algorithm 2 compares each pass's gates with the last's, Sec. 3.4), and with a
pruning rule one bit a unit per earlier pass for the blank-map fallback."""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from torch import Tensor

from captum_feedback.core.engine import Site

_GATHER_BITS = 0x0102040810204080
"""Multiplying eight 0/1 bytes, read as one little-endian int64, by this constant gathers
them into the top byte (byte ``i`` becomes bit ``i``) without carries."""
_SCRATCH_WORDS = 1 << 17
"""Words of int64 scratch space for packing gates: 1 MiB."""


def pack_bits(gate: Tensor) -> Tensor:
    """A boolean gate ``(B, n)``, ``n`` a multiple of 8, as ``(B, n / 8)`` bytes: unit ``8j + i``
    is bit ``i`` of byte ``j``."""
    return (gate.view(torch.int64) * _GATHER_BITS).bitwise_right_shift_(56).to(torch.uint8)


def unpack_bits(packed: Tensor) -> Tensor:
    """The inverse of :func:`pack_bits`: ``(B, m)`` bytes as ``(B, 8 m)`` 0/1 bytes."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(len(packed), -1)


class GateStore:
    """One byte per unit of every site, in one ``(B, units)`` buffer; a site's bytes are a view.

    A site's bytes hold its gates once the forward pass has reached it, and its CW selector
    (:meth:`~captum_feedback.core.selection.SelectionRule.selector`) once the backward pass has left it. The
    selector is made after the gates' last use and used before the new gates are set, so
    between passes FSP holds one byte a unit. One buffer also lets a pass pack all gates
    eight to a byte and compare them with the previous pass's in a handful of kernels, where
    a tensor per site would need a handful per site.
    """

    def __init__(self, sites: Sequence[Site], batch_size: int, device: torch.device, keep_history: bool) -> None:
        self._slices: Dict[int, slice] = {}
        units = 0
        for site in sites:  # each site starts on a byte of the packed gates
            size = math.prod(site.shape[1:])
            self._slices[site.index] = slice(units, units + size)
            units += size + -size % 8
        # Padding units are open gates that never change.
        self.buffer = torch.ones((batch_size, units), dtype=torch.int8, device=device)
        self.packed = torch.full((batch_size, units // 8), 255, dtype=torch.uint8, device=device)
        """The gates as of the last :meth:`changed`, eight units a byte."""
        self.history: List[Tensor] = []
        """The packed gates as of each earlier call to :meth:`changed`, oldest first (kept only
        with ``keep_history``: one bit a unit per pass)."""
        self.keep_history = keep_history
        self._slots = {site.index: self.buffer[:, self._slices[site.index]].view(site.shape) for site in sites}

    def slot(self, site: Site) -> Tensor:
        """The site's bytes, ``site.shape``, as a writable view."""
        return self._slots[site.index]

    def packed_gates(self, site: Site) -> Tensor:
        """The site's gates as of the last :meth:`changed`, as 0/1 bytes of ``site.shape``."""
        units = self._slices[site.index]
        bits = unpack_bits(self.packed[:, units.start // 8 : -(-units.stop // 8)])
        return bits[:, : units.stop - units.start].view(site.shape)

    def changed(self) -> Tensor:
        """Per sample, whether any gate changed since the last call (or since all were open).

        It packs and compares a slice of the gates at a time, at most 16 slices, so that its
        scratch space stays at 1 MiB or a sixteenth of the gates' bytes: it runs at the end of
        a forward pass, when memory use is at its peak.
        """
        gates = self.buffer.view(torch.bool)
        changed = torch.zeros(len(gates), dtype=torch.bool, device=gates.device)
        if self.keep_history:
            self.history.append(self.packed.clone())
        step = 8 * max(1, _SCRATCH_WORDS // len(gates), -(-gates.shape[1] // 128))
        for start in range(0, gates.shape[1], step):
            packed = pack_bits(gates[:, start : start + step])
            words = slice(start // 8, (start + step) // 8)
            changed |= (packed != self.packed[:, words]).any(1)
            self.packed[:, words].copy_(packed)
        return changed

    def revert(self, rows: Tensor, depth: int) -> Tensor:
        """Gives the samples ``rows`` (booleans) the gates they had ``depth`` passes before the
        last; returns the samples whose gates this changed."""
        if depth > len(self.history):
            return torch.zeros_like(rows)
        earlier = self.history[-depth]
        rows = rows.to(self.packed.device) & (self.packed != earlier).any(1)
        if rows.any():
            self.packed[rows] = earlier[rows]
            self.buffer[rows] = unpack_bits(earlier[rows]).to(torch.int8)
        return rows.cpu()
