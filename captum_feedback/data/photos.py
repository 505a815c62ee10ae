"""Photos that ship with installed packages (scikit-image), and reading images from disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from PIL import Image

_SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "motorcycle")


def _skimage_photo(name: str) -> np.ndarray:
    from skimage import data

    if name == "motorcycle":
        return data.stereo_motorcycle()[0]
    return getattr(data, name)()


def to_tensor(image: np.ndarray) -> Tensor:
    """An ``(H, W, 3)`` uint8 array as a ``(3, H, W)`` uint8 tensor."""
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"Expected an RGB image (H, W, 3), got shape {image.shape}.")
    return torch.from_numpy(np.array(image[..., :3])).permute(2, 0, 1)


def bundled_photos() -> Dict[str, Tensor]:
    """scikit-image's bundled photos (a cat, a coffee cup, an astronaut, a rocket, a
    motorcycle) as ``(3, H, W)`` uint8 tensors, keyed by name."""
    return {name: to_tensor(_skimage_photo(name)) for name in _SKIMAGE_PHOTOS}


def read_image(path: Union[str, Path]) -> Tensor:
    """An image file as a ``(3, H, W)`` uint8 RGB tensor (:func:`load_image` without its note)."""
    return load_image(path)[0]


def load_image(path: Union[str, Path], max_pixels: Optional[int] = None) -> Tuple[Tensor, str]:
    """An image file of any mode Pillow opens as a ``(3, H, W)`` uint8 RGB tensor, and a note of
    the conversion (``""`` for 8-bit RGB), see :func:`rgb_array`.

    Args:
        path: the file.
        max_pixels: downscale a larger image to this many pixels as it is read (a JPEG is
            decoded at a reduced scale first, so memory stays near the target size); ``None``
            reads it whole, within Pillow's decompression-bomb limit.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an image Pillow can read, or one over Pillow's limit.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No image at {path}.")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        if max_pixels is not None:  # the caller bounds the size itself
            Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as image:
            image, note = _downscaled(image, max_pixels)
            array, converted = rgb_array(image)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path} is too large to read safely: {error}") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} is not a readable image: {error}") from error
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return to_tensor(array), "; ".join(n for n in (note, converted) if n)


def _downscaled(image: Image.Image, max_pixels: Optional[int]) -> Tuple[Image.Image, str]:
    """The image at most ``max_pixels`` large, and a note when it was made smaller."""
    from PIL import Image

    width, height = image.size
    if max_pixels is None or width * height <= max_pixels:
        return image, ""
    scale = (max_pixels / (width * height)) ** 0.5
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    image.draft(image.mode, size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale when that is enough
    return image.resize(size, Image.BILINEAR), f"downscaled from {width} x {height} to {size[0]} x {size[1]}"


_WIDE_GRAY = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": None, "F": None}
"""Pillow's modes of one channel wider than 8 bits, and the full scale of each where it is fixed."""


def rgb_array(image: Image.Image) -> Tuple[np.ndarray, str]:
    """An image of any Pillow mode as an ``(H, W, 3)`` uint8 RGB array, and a note of what was done.

    Pillow's own ``convert("RGB")`` clips wide grayscale modes to 255, so that a 16-bit PNG comes
    out all white. Here ``I;16*`` is divided by 65535; ``I`` (32-bit integers, which is how some
    Pillow versions open 16-bit PNGs) by 65535 when its values lie in ``[0, 65535]``; ``F`` is taken
    as it is when it lies in ``[0, 1]``; anything else is stretched from its minimum to its maximum.
    Other modes (palette, CMYK, alpha, 1-bit, ...) go through Pillow's conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image), ""
    if mode not in _WIDE_GRAY:
        return np.asarray(image.convert("RGB")), f"mode {mode} converted to RGB"
    values = np.asarray(image, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    full_scale = _WIDE_GRAY[mode] or (65535.0 if mode == "I" else 1.0)
    if low >= 0 and high <= full_scale:
        scaled, how = values / full_scale, f"divided by {full_scale:g}"
    else:
        scaled, how = (values - low) / max(high - low, 1e-12), f"stretched from [{low:g}, {high:g}]"
    gray = np.round(np.clip(scaled, 0, 1) * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2), f"{mode} grayscale {how} to 8-bit RGB"
