"""Loading the scene models' packaged weights (``models/weights/*.pt``)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar, Union

import torch
from torch import nn

ModelT = TypeVar("ModelT", bound=nn.Module)


def load_packaged(model: ModelT, weights: Union[str, Path, None, bool], packaged: Path) -> ModelT:
    """``model`` with ``weights`` loaded (``True``: the ``packaged`` file, a path: that state dict,
    ``None``/``False``: as initialized), in eval mode.

    Raises:
        FileNotFoundError: the weights file does not exist.
    """
    if weights is not None and weights is not False:
        path = packaged if weights is True else Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"No weights at {path}; train them with scripts/train_scene_model.py.")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
