"""A small VGG-style multi-label classifier of cluttered Fashion-MNIST scenes.

Four blocks of two 3x3 convolutions (batch-normalized, ReLU) each followed by a 2x2
max-pool, as VGG16 but 16-128 channels wide, then two fully connected layers. It is trained
with a sigmoid (binary cross-entropy) loss on image-level labels only, as the paper's
weakly supervised segmentation model (Sec. 4.5); see ``scripts/train_scene_model.py``.
The trained weights ship with this package (float16, 1.8 MB) and load with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Union

import torch
from torch import Tensor, nn

from captum_feedback.models.loading import load_packaged

WIDTHS = (16, 32, 64, 128)
INPUT_SIZE = 96
N_CLASSES = 10
WEIGHTS = Path(__file__).with_name("weights") / "cluttered_vgg.pt"


def _features(in_channels: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for width in WIDTHS:
        for _ in range(2):
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
            in_channels = width
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class ClutteredVGG(nn.Module):
    """VGG-style classifier of ``(B, 1, 96, 96)`` images in [0, 1]; returns ``(B, 10)`` logits.

    ``features[k]`` indexes layers as in torchvision's VGG; :attr:`middle_layer` is the ReLU
    of the first convolution of the last block (12x12), the counterpart of VGG16's ``conv5_2``
    that the paper's FSP-FR map uses (Procedure 1, step 5).
    """

    def __init__(self, n_classes: int = N_CLASSES, in_channels: int = 1) -> None:
        super().__init__()
        self.features = _features(in_channels)
        side = INPUT_SIZE // 2 ** len(WIDTHS)
        self.classifier = nn.Sequential(
            nn.Linear(WIDTHS[-1] * side * side, 128),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(128, n_classes),
        )

    @property
    def middle_layer(self) -> nn.Module:
        return self.features[23]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x - 0.5), 1))


def cluttered_vgg(weights: Union[str, Path, None, bool] = True) -> ClutteredVGG:
    """The cluttered-scene classifier in eval mode.

    Args:
        weights: ``True`` for the trained weights shipped with the package, a path to a state
            dict, or ``None``/``False`` for random initialization.

    Raises:
        FileNotFoundError: the weights file does not exist.
    """
    return load_packaged(ClutteredVGG(), weights, WEIGHTS)
