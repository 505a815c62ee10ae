"""Activations of token models as ``(B, C, H, W)`` maps, for the Summation Energy Map and for
layer maps (the ``reshape_transform`` convention of pytorch-grad-cam).

A convolutional network's sites are ``(B, C, H, W)`` already. A vision transformer's are
tokens ``(B, N, C)`` (a class token, then an ``h x w`` grid of patches); ConvNeXt's and Swin's
MLP activations are channels-last ``(B, H, W, C)``. :func:`default_reshape_transform` knows
torchvision's ViT, Swin and ConvNeXt; pass your own for other models.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

ReshapeTransform = Callable[[Tensor], Tensor]


def channels_last_to_maps(activation: Tensor) -> Tensor:
    """``(B, H, W, C)`` -> ``(B, C, H, W)``; other shapes unchanged."""
    return activation.permute(0, 3, 1, 2) if activation.dim() == 4 else activation


def tokens_to_maps(activation: Tensor) -> Tensor:
    """``(B, N, C)`` tokens -> ``(B, C, h, w)``: the leading tokens that do not fit a square
    grid (ViT's class token) are dropped, the rest laid out row by row; a token sequence with no
    square grid, and other shapes, are returned unchanged."""
    if activation.dim() != 3:
        return activation
    batch, tokens, channels = activation.shape
    side = math.isqrt(tokens)
    if side == 0 or tokens - side * side > 8:  # more than a few register / class tokens: no grid
        return activation
    grid = activation[:, tokens - side * side:]
    return grid.transpose(1, 2).reshape(batch, channels, side, side)


def default_reshape_transform(model: object) -> Optional[ReshapeTransform]:
    """The transform for torchvision's token and channels-last classifiers, else ``None``."""
    if not isinstance(model, nn.Module):
        return None
    from torchvision.models import ConvNeXt, SwinTransformer, VisionTransformer

    if isinstance(model, VisionTransformer):
        return tokens_to_maps
    if isinstance(model, (SwinTransformer, ConvNeXt)):
        return channels_last_to_maps
    return None


def is_spatial(shape: Sequence[int], transform: Optional[ReshapeTransform] = None) -> bool:
    """Whether an activation of ``shape`` is a ``(B, C, H, W)`` map larger than one location
    (after ``transform``): a feature map, not a vector of a fully connected layer."""
    if transform is not None:
        shape = tuple(transform(torch.empty(tuple(shape), device="meta")).shape)
    return len(shape) == 4 and shape[-1] * shape[-2] > 1
