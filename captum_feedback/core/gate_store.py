"""The gates FSP keeps between passes: one byte a unit while a pass runs, eight units a byte
between passes (Algorithm 2 compares each pass's gates with the last's, Sec. 3.4), and with a
pruning rule one bit a unit per earlier pass for the blank-map fallback."""

from __future__ import annotations

import bisect
import math
from typing import Dict, Iterator, List, Sequence, Tuple

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
    """One byte per unit of every site, in one buffer; a site's bytes are a view.

    A site's bytes hold its gates once the forward pass has reached it, and its CW selector
    (:meth:`~captum_feedback.core.selection.SelectionRule.selector`) once the backward pass has left it. The
    selector is made after the gates' last use and used before the new gates are set, so
    between passes FSP holds one byte a unit. One buffer also lets a pass pack all gates
    eight to a byte and compare them with the previous pass's in a few kernels a site.

    The buffer is site-major: each site's ``(B, units)`` bytes are one block, so a site's bytes
    are contiguous (the gate kernels, :mod:`~captum_feedback.core.kernels`, then make one call a
    site, not one a sample); a site whose units are not a multiple of 8 has open padding units
    at the end of each row, which never change.
    """

    def __init__(self, sites: Sequence[Site], batch_size: int, device: torch.device, keep_history: bool) -> None:
        self._blocks: Dict[int, Tuple[int, int]] = {}
        """Per site, the first byte of its block and its row length (units, padded to 8)."""
        start = 0
        for site in sites:
            size = math.prod(site.shape[1:])
            row = size + -size % 8
            self._blocks[site.index] = (start, row)
            start += batch_size * row
        self.batch_size = batch_size
        self.buffer = torch.ones(start, dtype=torch.int8, device=device)
        self.packed = torch.full((start // 8,), 255, dtype=torch.uint8, device=device)
        """The gates as of the last :meth:`changed`, eight units a byte, block for block."""
        self.history: List[Tensor] = []
        """The packed gates as of each earlier call to :meth:`changed`, oldest first (kept only
        with ``keep_history``: one bit a unit per pass)."""
        self.keep_history = keep_history
        ends = [(block + (b + 1) * row) // 8 - 1 for block, row in self._blocks.values() for b in range(batch_size)]
        self._row_ends = torch.tensor(ends, dtype=torch.int64, device=device)
        """The packed byte that ends each site's row of each sample, site by site."""
        size = len(self.packed)
        self._slices = [(a, min(a + _SCRATCH_WORDS, size)) for a in range(0, size, _SCRATCH_WORDS)]
        self._rows_in_slice = [(bisect.bisect_left(ends, a), bisect.bisect_left(ends, b)) for a, b in self._slices]
        self._slots = {site.index: self._rows(site.index)[:, : math.prod(site.shape[1:])].view(site.shape)
                       for site in sites}

    def _rows(self, index: int) -> Tensor:
        """A site's block as ``(B, row)`` bytes."""
        start, row = self._blocks[index]
        return self.buffer[start : start + self.batch_size * row].view(self.batch_size, row)

    def slot(self, site: Site) -> Tensor:
        """The site's bytes, ``site.shape``, as a writable view."""
        return self._slots[site.index]

    def packed_gates(self, site: Site) -> Tensor:
        """The site's gates as of the last :meth:`changed`, as 0/1 bytes of ``site.shape``."""
        bits = unpack_bits(self._block_of(self.packed, site.index))
        return bits[:, : math.prod(site.shape[1:])].view(site.shape)

    def changed(self) -> Tensor:
        """Per sample, whether any gate changed since the last call (or since all were open).

        It packs and compares the whole buffer a slice at a time, so that its scratch space
        stays near 1 MiB: it runs at the end of a forward pass, when memory use is at its peak.
        The differing bytes are counted per site and sample from a running count read at the
        end of each row: a few kernels a slice, whatever the number of sites or changes (a few
        kernels a site cost a fifth of a Saliency call on MobileNetV3 at batch 1).
        """
        if self.keep_history:
            self.history.append(self.packed.clone())
        if self.batch_size == 1:  # one sample: whether anything changed
            return torch.stack([differs.any() for differs, _, _ in self._repacked()] + [self.packed[:0].bool().any()]
                               ).any().reshape(1)
        counts = torch.zeros(len(self._row_ends), dtype=torch.int64, device=self.packed.device)
        carry = torch.zeros((), dtype=torch.int64, device=self.packed.device)
        for differs, start, (first, last) in self._repacked():
            running = differs.cumsum(0)
            counts[first:last] = running[self._row_ends[first:last] - start] + carry
            carry = carry + running[-1]
        per_row = counts.diff(prepend=counts.new_zeros(1))
        return (per_row.view(-1, self.batch_size) > 0).any(0)

    def _repacked(self) -> Iterator[Tuple[Tensor, int, Tuple[int, int]]]:
        """Packs the gates into :attr:`packed` a slice at a time; yields, before each slice is
        copied, which of its packed bytes differ, where it starts and the rows that end in it."""
        gates = self.buffer.view(torch.bool)
        for (start, stop), rows in zip(self._slices, self._rows_in_slice):
            now = pack_bits(gates[8 * start : 8 * stop].view(1, -1))[0]
            words = self.packed[start:stop]
            yield now != words, start, rows
            words.copy_(now)

    def revert(self, rows: Tensor, depth: int) -> Tensor:
        """Gives the samples ``rows`` (booleans) the gates they had ``depth`` passes before the
        last; returns the samples whose gates this changed."""
        if depth > len(self.history):
            return torch.zeros_like(rows)
        earlier = self.history[-depth]
        rows = rows.to(self.packed.device)
        differs = torch.zeros_like(rows)
        for index in self._blocks:
            differs |= (self._block_of(self.packed, index) != self._block_of(earlier, index)).any(1)
        rows &= differs
        if rows.any():
            for index in self._blocks:
                before = self._block_of(earlier, index)[rows]
                self._block_of(self.packed, index)[rows] = before
                self._rows(index)[rows] = unpack_bits(before).to(torch.int8)
        return rows.cpu()

    def _block_of(self, packed: Tensor, index: int) -> Tensor:
        """A site's block of ``packed`` (:attr:`packed` or a copy of it) as ``(B, row / 8)`` bytes."""
        start, row = self._blocks[index]
        return packed[start // 8 : (start + self.batch_size * row) // 8].view(self.batch_size, row // 8)
