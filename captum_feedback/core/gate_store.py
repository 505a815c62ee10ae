"""The gates FSP keeps between passes: one byte a unit while a pass runs, eight units a byte
between passes (Algorithm 2 compares each pass's gates with the last's, Sec. 3.4), and with a
pruning rule one bit a unit per earlier pass for the blank-map fallback."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from captum_feedback.core.engine import HeapHold, Site
from captum_feedback.core.kernels import repack


def _filled(heap: Optional[HeapHold], numel: int, dtype: torch.dtype, device: torch.device, value: int) -> Tensor:
    """``numel`` units of ``value``: a spare buffer of ``heap`` refilled, else a new one."""
    spare = heap.take(numel, dtype, device) if heap is not None else None
    return spare.fill_(value) if spare is not None else torch.full((numel,), value, dtype=dtype, device=device)


def unpack_bits(packed: Tensor) -> Tensor:
    """The inverse of :func:`~.kernels.pack_bits`: ``(B, m)`` bytes as ``(B, 8 m)`` 0/1 bytes."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).view(len(packed), -1)


class GateStore:
    """One byte per unit of every site, in one buffer; a site's bytes are a view.

    A site's bytes hold its gates once the forward pass has reached it, and its CW selector
    (:meth:`~captum_feedback.core.selection.SelectionRule.selector`) once the backward pass has left it. The
    selector is made after the gates' last use and used before the new gates are set, so
    between passes FSP holds one byte a unit. One buffer also lets a pass pack all gates
    eight to a byte and compare them with the previous pass's in one kernel.

    The buffer is site-major: each site's ``(B, units)`` bytes are one block, so a site's bytes
    are contiguous (the gate kernels, :mod:`~captum_feedback.core.kernels`, then make one call a
    site, not one a sample); a site whose units are not a multiple of 8 has open padding units
    at the end of each row, which never change.
    """

    def __init__(self, sites: Sequence[Site], batch_size: int, device: torch.device, keep_history: bool,
                 heap: Optional[HeapHold] = None) -> None:
        self._blocks: Dict[int, Tuple[int, int]] = {}
        """Per site, the first byte of its block and its row length (units, padded to 8)."""
        start = 0
        for site in sites:
            size = math.prod(site.shape[1:])
            row = size + -size % 8
            self._blocks[site.index] = (start, row)
            start += batch_size * row
        self.batch_size = batch_size
        self.buffer = _filled(heap, start, torch.int8, device, 1)
        self.packed = _filled(heap, start // 8, torch.uint8, device, 255)
        """The gates as of the last :meth:`changed`, eight units a byte, block for block."""
        self.history: List[Tensor] = []
        """The packed gates as of each earlier call to :meth:`changed`, oldest first (kept only
        with ``keep_history``: one bit a unit per pass)."""
        self.keep_history = keep_history
        self._slots = {site.index: self._rows(site.index)[:, : math.prod(site.shape[1:])].view(site.shape)
                       for site in sites}
        self._bounds = torch.tensor([0] + [(block + (b + 1) * row) // 8 for block, row in self._blocks.values()
                                           for b in range(batch_size)], dtype=torch.long)
        """Where each row of each site's block ends in :attr:`packed`, after a leading 0: the
        segments whose changes :meth:`changed` asks about."""

    def give_back(self, heap: HeapHold) -> None:
        """Leaves the buffers to ``heap`` for a later store (:meth:`HeapHold.take`); this store
        must not be used afterwards."""
        heap.give(self.buffer, self.packed)

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
        """Per sample, whether any gate changed since the last call (or since all were open), on the CPU.

        It packs the gates into :attr:`packed` and says which site's rows changed in one pass
        (:func:`~.kernels.repack`; it runs at the end of a forward pass, when memory use is at
        its peak, and needs an eighth of the gates' bytes).
        """
        if self.keep_history:
            self.history.append(self.packed.clone())
        changed = repack(self.buffer, self.packed, self._bounds)
        return changed.view(len(self._blocks), self.batch_size).any(0)

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
        """A site's block of ``packed`` (:attr:`packed`, a copy of it, or a comparison with it)
        as ``(B, row / 8)`` values."""
        start, row = self._blocks[index]
        return packed[start // 8 : (start + self.batch_size * row) // 8].view(self.batch_size, row // 8)
