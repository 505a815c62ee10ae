"""A small ResNet-style multi-label classifier of cluttered Fashion-MNIST scenes, with global
average pooling.

The cluttered VGG's head is two fully connected layers over a 6 x 6 map, which keeps where a
feature fired; the models users bring (ResNet, EfficientNet, MobileNet, ConvNeXt) pool globally
instead, so that a class score is the same linear function of every location's features. This
model is that family at the scenes' size: a stem, four stages of one residual block each
(batch-normalized 3 x 3 convolutions, identity or 1 x 1 projection skips), global average
pooling and one linear layer. Each ReLU call has its own module, so every gate site has a name.
It is trained with a sigmoid loss on image-level labels only (``scripts/train_scene_model.py``);
the weights ship with this package (float16) and load with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

from torch import Tensor, nn

from captum_feedback.models.loading import load_packaged

WIDTHS = (16, 32, 64, 128)
INPUT_SIZE = 96
N_CLASSES = 10
WEIGHTS = Path(__file__).with_name("weights") / "cluttered_resnet.pt"


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with batch normalization and a skip connection (He et al., 2016)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Identity() if stride == 1 and in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ClutteredResNet(nn.Module):
    """ResNet-style classifier of ``(B, 1, 96, 96)`` images in [0, 1]; returns ``(B, 10)`` logits.

    Stages of 16, 32, 64 and 128 channels at 96, 48, 24 and 12 pixels; :attr:`middle_layer` is
    the first ReLU of the last stage (12 x 12), the counterpart of VGG16's ``conv5_2`` for the
    FSP-FR map, and :attr:`last_layer` the last block's output ReLU, which Grad-CAM reads.
    """

    def __init__(self, n_classes: int = N_CLASSES, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(WIDTHS[0]), nn.ReLU())
        blocks, width = [], WIDTHS[0]
        for k, out in enumerate(WIDTHS):
            blocks.append(BasicBlock(width, out, 1 if k == 0 else 2))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, n_classes)

    @property
    def middle_layer(self) -> nn.Module:
        return self.blocks[-1].relu1

    @property
    def last_layer(self) -> nn.Module:
        return self.blocks[-1].relu2

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x - 0.5))).flatten(1))


def cluttered_resnet(weights: Union[str, Path, None, bool] = True) -> ClutteredResNet:
    """The pooled cluttered-scene classifier in eval mode.

    Args:
        weights: ``True`` for the trained weights shipped with the package, a path to a state
            dict, or ``None``/``False`` for random initialization.

    Raises:
        FileNotFoundError: the weights file does not exist.
    """
    return load_packaged(ClutteredResNet(), weights, WEIGHTS)
