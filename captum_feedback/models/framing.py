"""How a photo becomes a model's square input, and how a map on that input goes back onto the
photo. One definition for the command line and the Python API, so that both see the same
picture and give the same numbers.

* ``"squeeze"``: the whole photo, resized to the square (every pixel is seen; shapes stretch).
* ``"crop"``: the centre square of ``224 / 256`` of the shorter side, resized to the square --
  ImageNet's usual evaluation (resize the shorter side to 256, crop 224); the rest of the photo
  is not seen, and maps are zero there.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

RESIZES = ("squeeze", "crop")
CROP_SHARE = 224 / 256


def region(size: Tuple[int, int], resize: str) -> Tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the part of a photo of ``size`` ``(H, W)`` the model sees."""
    height, width = size
    if resize == "squeeze":
        return 0, 0, height, width
    if resize != "crop":
        raise ValueError(f"Unknown resize {resize!r}; use one of {RESIZES}.")
    side = max(1, round(min(height, width) * CROP_SHARE))
    return (height - side) // 2, (width - side) // 2, side, side


def to_square(images: Tensor, side: int, resize: str = "squeeze") -> Tensor:
    """``(B, C, H, W)`` photos (uint8, or floats in [0, 1]) as ``(B, C, side, side)`` floats in
    [0, 1] (bilinear, antialiased)."""
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    top, left, height, width = region(tuple(images.shape[-2:]), resize)
    seen = images[..., top:top + height, left:left + width]
    if seen.shape[-2:] != (side, side):
        seen = F.interpolate(seen, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return seen.clamp(0, 1)


def map_to_photo(maps: Tensor, size: Tuple[int, int], resize: str = "squeeze") -> Tensor:
    """``(B, 1, s, s)`` maps on the model's input as ``(B, 1, H, W)`` maps on the photo (zero
    where the model saw nothing)."""
    top, left, height, width = region(size, resize)
    photo = maps.new_zeros(maps.shape[0], maps.shape[1], *size)
    photo[..., top:top + height, left:left + width] = F.interpolate(maps, size=(height, width), mode="bilinear",
                                                                   align_corners=False)
    return photo


def box_to_photo(boxes: Tensor, side: int, size: Tuple[int, int], resize: str = "squeeze") -> Tensor:
    """``(B, 4)`` boxes ``(x1, y1, x2, y2)`` on the ``side x side`` input in the photo's pixels."""
    top, left, height, width = region(size, resize)
    scale = boxes.new_tensor([width / side, height / side] * 2)
    return boxes * scale + boxes.new_tensor([left, top] * 2)
