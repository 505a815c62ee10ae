"""Small networks for the tests: the same weights in module, functional and residual forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class VGGish(nn.Module):
    """conv-ReLU blocks with 2x2 max-pooling (non-overlapping windows), then a linear head."""

    def __init__(self, classes: int = 5, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=inplace),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=inplace), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class FunctionalVGGish(nn.Module):
    """:class:`VGGish` with the same parameters, but every ReLU and pool a functional call."""

    def __init__(self, modules: VGGish) -> None:
        super().__init__()
        self.net = modules

    def forward(self, x: Tensor) -> Tensor:
        f, c = self.net.features, self.net.classifier
        x = torch.relu(f[0](x))
        x = F.max_pool2d(F.relu(f[2](x), inplace=True), 2)
        x = F.max_pool2d(f[5](x).relu(), kernel_size=2, stride=2)
        return c[3](F.relu(c[1](x.flatten(1))))


class ResNetish(nn.Module):
    """A residual net that calls one ReLU module twice per block, like torchvision's ResNet."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.head = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.relu(self.stem(x)))
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        out += x
        out = self.relu(out)
        return self.head(out.mean((2, 3)))


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    return module.eval()


def calls_of(module: nn.Module, monkeypatch) -> list:
    """A list that grows by one at each call of ``module``'s class ``forward`` on it."""
    calls, own = [], type(module).forward

    def counted(self, *args, **kwargs):
        if self is module:
            calls.append(1)
        return own(self, *args, **kwargs)

    monkeypatch.setattr(type(module), "forward", counted)
    return calls
