"""Activations of token and channels-last models as ``(B, C, H, W)`` maps, for the Summation
Energy Map, layer maps and Grad-CAM (the ``reshape_transform`` convention of pytorch-grad-cam).

A convolutional network's activations are ``(B, C, H, W)`` already. A vision transformer's are
tokens ``(B, N, C)``: a few prefix tokens (class, distillation, register) and then an ``h x w``
grid of patches, row by row. ConvNeXt's, Swin's and MaxViT's MLP activations are often
channels last, ``(B, H, W, C)``. :class:`MapLayout` tells these apart by comparing each
activation's shape with the size of the model's input -- the grid of a feature map has the
input's aspect ratio -- so it needs no knowledge of the model's class: it reads torchvision's,
timm's and Hugging Face ``transformers``' models alike.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

ReshapeTransform = Callable[[Tensor], Tensor]

MAX_PREFIX_TOKENS = 8
"""The most tokens before the patch grid that :class:`MapLayout` accepts (class, distillation
and register tokens)."""


def channels_last_to_maps(activation: Tensor) -> Tensor:
    """``(B, H, W, C)`` -> ``(B, C, H, W)``; other shapes unchanged."""
    return activation.permute(0, 3, 1, 2) if activation.dim() == 4 else activation


def tokens_to_maps(activation: Tensor) -> Tensor:
    """``(B, N, C)`` tokens -> ``(B, C, h, w)`` of a square grid, row by row: the leading tokens
    that do not fit a square grid (at most :data:`MAX_PREFIX_TOKENS`, ViT's class token) are
    dropped; a sequence with no square grid, and other shapes, are returned unchanged.
    :class:`MapLayout` also reads non-square grids."""
    if activation.dim() != 3:
        return activation
    tokens = activation.shape[1]
    side = math.isqrt(tokens)
    if side == 0 or tokens - side * side > MAX_PREFIX_TOKENS:
        return activation
    return _grid(activation, tokens - side * side, side, side)


def _grid(tokens: Tensor, prefix: int, height: int, width: int) -> Tensor:
    batch, _, channels = tokens.shape
    return tokens[:, prefix:].transpose(1, 2).reshape(batch, channels, height, width)


@dataclass(frozen=True)
class MapLayout:
    """Reads the activations of a model whose input is ``input_size`` (height, width) as
    ``(B, C, h, w)`` maps: a callable ``ReshapeTransform``.

    An ``h x w`` grid is one with the input's aspect ratio (``w`` is ``h * width / height``,
    rounded), ``h`` between 2 and ``height``. Then, for an activation of shape

    * ``(B, C, h, w)``: channels first, returned as it is;
    * ``(B, h, w, C)`` (and not channels first): channels last, permuted;
    * ``(B, p + h * w, C)`` with ``p <= 2`` prefix tokens (the fewest that leave a grid: a
      class and a distillation token): tokens, the prefix dropped and the grid laid out row by
      row;
    * else ``(B, C, h * w)`` where the grid comes from a convolutional stride ``s``, a power
      of two (``h = ceil(height / s)``; a state-space model's flattened map): flattened
      channels first, reshaped;
    * else ``(B, p + h * w, C)`` with up to :data:`MAX_PREFIX_TOKENS` prefix tokens (register
      tokens);
    * anything else: returned as it is (a 2-D vector stays a vector).

    Shapes alone can be ambiguous (a ViT with 4 registers whose MLP width is ``h * w`` of a
    power-of-two stride reads as a flattened map): pass your own ``reshape_transform`` where
    that happens.

    With no ``input_size`` (an input that is not an image), every activation is returned as it is.

    Example::

        >>> layout = MapLayout((224, 224))
        >>> layout(torch.zeros(2, 197, 768)).shape     # ViT-B/16: a class token and 14 x 14 patches
        torch.Size([2, 768, 14, 14])
        >>> layout.describe((2, 56, 56, 384))
        'channels last'
    """

    input_size: Optional[Tuple[int, int]] = None

    @classmethod
    def of(cls, inputs: Sequence[Tensor]) -> MapLayout:
        """The layout of a model whose first input is ``inputs[0]``: an image ``(B, C, H, W)``
        gives its ``(H, W)``; any other input, no grid."""
        first = inputs[0]
        return cls(tuple(first.shape[-2:])) if first.dim() == 4 else cls()

    def _is_grid(self, height: int, width: int) -> bool:
        if self.input_size is None:
            return False
        rows, columns = self.input_size
        return 2 <= height <= rows and width == round(height * columns / rows) and width >= 1

    def describe(self, shape: Sequence[int]) -> Optional[str]:
        """``"channels first"``, ``"channels last"``, ``"tokens"`` (``"tokens, P prefix"``),
        ``"flattened"`` or ``None`` (no map) for an activation of ``shape``."""
        shape = tuple(shape)
        if len(shape) == 4 and self._is_grid(*shape[2:]):
            return "channels first"
        if len(shape) == 4 and self._is_grid(*shape[1:3]):
            return "channels last"
        if len(shape) != 3:
            return None
        tokens = _token_grid(self.input_size, shape[1])
        if tokens is not None and tokens[0] <= 2:
            return "tokens" if tokens[0] == 0 else f"tokens, {tokens[0]} prefix"
        if _strided_grid(self.input_size, shape[2]) is not None:
            return "flattened"
        return None if tokens is None else f"tokens, {tokens[0]} prefix"

    def __call__(self, activation: Tensor) -> Tensor:
        kind = self.describe(activation.shape)
        if kind == "channels last":
            return channels_last_to_maps(activation)
        if kind == "flattened":
            return activation.unflatten(2, _strided_grid(self.input_size, activation.shape[2]))
        if kind is not None and kind.startswith("tokens"):
            return _grid(activation, *_token_grid(self.input_size, activation.shape[1]))
        return activation


@functools.lru_cache(maxsize=256)
def _strided_grid(input_size: Optional[Tuple[int, int]], length: int) -> Optional[Tuple[int, int]]:
    """``(h, w)`` with ``h * w == length``, ``h = ceil(height / s)`` and ``w = ceil(width / s)``
    for a stride ``s`` of 2, 4, 8, ...; ``None`` where there is none."""
    if input_size is None:
        return None
    rows, columns = input_size
    stride = 2
    while stride <= rows // 2:
        height, width = -(-rows // stride), -(-columns // stride)
        if height * width == length:
            return height, width
        stride *= 2
    return None


@functools.lru_cache(maxsize=256)
def _token_grid(input_size: Optional[Tuple[int, int]], tokens: int) -> Optional[Tuple[int, int, int]]:
    """``(prefix, h, w)`` of a sequence of ``tokens`` from an input of ``input_size``, the
    fewest prefix tokens first; ``None`` where no grid fits."""
    if input_size is None:
        return None
    rows, columns = input_size
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens) + 1):
        for height in range(2, rows + 1):
            width = round(height * columns / rows)
            if height * width == tokens - prefix:
                return prefix, height, width
            if height * width > tokens - prefix:
                break
    return None


def is_spatial(shape: Sequence[int], transform: Optional[ReshapeTransform] = None) -> bool:
    """Whether an activation of ``shape`` is a ``(B, C, H, W)`` map larger than one location
    (after ``transform``): a feature map, not a vector of a fully connected layer."""
    if transform is not None:
        shape = tuple(transform(torch.empty(tuple(shape), device="meta")).shape)
    return len(shape) == 4 and shape[-1] * shape[-2] > 1
