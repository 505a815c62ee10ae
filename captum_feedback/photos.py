"""Photos that ship with installed packages (scikit-image), and reading images from disk."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch
from torch import Tensor

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
    """An image file as a ``(3, H, W)`` uint8 RGB tensor.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an image Pillow can read.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No image at {path}.")
    try:
        with Image.open(path) as image:
            return to_tensor(np.asarray(image.convert("RGB")))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{path} is not a readable image: {error}") from error
