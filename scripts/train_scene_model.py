"""Train a cluttered-scene classifier on image-level labels only (the paper's Sec. 4.5 setting).

Two models, both packaged: the VGG-style ``cluttered_vgg`` (fully connected head, spatially
specific) and the ResNet-style ``cluttered_resnet`` (global average pooling, as the models users
bring). Every epoch draws fresh training scenes (scene indices never repeat), so a model never
sees the same canvas twice; the test mAP is measured on the 1,000 test scenes (seed 0) that
``benchmarks/quality.py`` scores. The weights are saved as float16.

Usage::

    python scripts/train_scene_model.py --model cluttered_vgg      # writes the packaged weights
    python scripts/train_scene_model.py --model cluttered_resnet
    python scripts/train_scene_model.py --model cluttered_resnet --epochs 1 --out /tmp/w.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from captum_feedback.data import ClutteredScenes, collate
from captum_feedback.models import cluttered_resnet, cluttered_vgg
from captum_feedback.wsol.metrics import mean_average_precision

MODELS: Dict[str, Tuple[Callable[[], nn.Module], Path]] = {
    "cluttered_vgg": (cluttered_vgg.ClutteredVGG, cluttered_vgg.WEIGHTS),
    "cluttered_resnet": (cluttered_resnet.ClutteredResNet, cluttered_resnet.WEIGHTS),
}


@torch.no_grad()
def test_map(model: nn.Module, scenes: ClutteredScenes) -> float:
    model.eval()
    batch = scenes.batch(range(len(scenes)))
    return mean_average_precision(model(batch.images), batch.labels)


def train(name: str, epochs: int, scenes_per_epoch: int, batch_size: int, lr: float, seed: int,
          out: Path) -> None:
    torch.manual_seed(seed)
    model = MODELS[name][0]()
    train_scenes = ClutteredScenes("train", length=epochs * scenes_per_epoch, seed=seed)
    test_scenes = ClutteredScenes("test", length=1000, seed=0)
    loader = DataLoader(train_scenes, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=len(loader))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    start = time.time()
    for step, batch in enumerate(loader):
        model.train()
        loss = loss_fn(model(batch.images), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % (scenes_per_epoch // batch_size) == 0:
            print(f"epoch {(step + 1) * batch_size / scenes_per_epoch:.0f}: loss {loss.item():.4f}, "
                  f"test mAP {test_map(model, test_scenes):.4f}, {time.time() - start:.0f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, out)
    print(f"saved {out}; test mAP {test_map(model, test_scenes):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="cluttered_vgg")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--scenes-per-epoch", type=int, default=10240)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="where to save the weights (default: the packaged file)")
    args = parser.parse_args()
    train(args.model, args.epochs, args.scenes_per_epoch, args.batch_size, args.lr, args.seed,
          args.out or MODELS[args.model][1])


if __name__ == "__main__":
    main()
