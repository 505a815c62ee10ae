"""Seconds per image and peak memory of FSP and FR beside Captum's own methods.

Every method runs in the same process on the same random images, on torchvision ``vgg16``
and ``resnet50`` (weights=None, 224x224), at batch sizes 1 and 16. Times are medians over
``--repeats`` runs after one warm-up; ratios are against ``Saliency`` measured in the same run.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the memory held before the
call; on the CPU, the peak of memory allocated by the call as seen by a
``torch.profiler`` memory trace (allocations of tensors, freed ones subtracted), so the
numbers compare methods with each other rather than with the process size.

Target (issue #2): FSP with k updates costs at most 1.15 x (k + 1) Saliency calls, and its
peak memory is at most 1.5 x Saliency's.

Usage::

    python benchmarks/speed.py                       # the full table (slow on a CPU)
    python benchmarks/speed.py --models vgg16 --batch-sizes 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
import torchvision
from captum.attr import GuidedBackprop, IntegratedGradients, LayerGradCam, Saliency

from captum_feedback import FeedbackRecovering, FeedbackSelectivePruning


def _gradcam_layer(name: str, model: torch.nn.Module) -> torch.nn.Module:
    return model.features[28] if name == "vgg16" else model.layer4


def methods(name: str, model: torch.nn.Module, iterations: int, ig_batch: int) -> Dict[str, Callable]:
    """Each method as ``f(x, target) -> attribution``."""
    fsp, fr = FeedbackSelectivePruning(model), FeedbackRecovering(model)
    gradcam = LayerGradCam(model, _gradcam_layer(name, model))
    return {
        "Saliency": lambda x, t: Saliency(model).attribute(x, target=t, abs=False),
        f"FSP (k={iterations})": lambda x, t: fsp.attribute(x, target=t, iterations=iterations),
        "FR": lambda x, t: fr.attribute(x, target=t),
        "GuidedBackprop": lambda x, t: GuidedBackprop(model).attribute(x, target=t),
        "IntegratedGradients (n_steps=50)": lambda x, t: IntegratedGradients(model).attribute(
            x, target=t, n_steps=50, internal_batch_size=ig_batch
        ),
        "LayerGradCam": lambda x, t: gradcam.attribute(x, target=t),
    }


def _peak_memory(fn: Callable[[], object], device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        ((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage),
        key=lambda p: p[0],
    )
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(models: List[str], batch_sizes: List[int], repeats: int, iterations: int, device: torch.device,
        ig_repeats: int) -> List[Tuple]:
    rows = []
    for name in models:
        model = getattr(torchvision.models, name)(weights=None).eval().to(device)
        for batch in batch_sizes:
            torch.manual_seed(0)
            x = torch.randn(batch, 3, 224, 224, device=device)
            target = torch.randint(0, 1000, (batch,), device=device)
            results = {}
            for label, method in methods(name, model, iterations, ig_batch=max(batch, 16)).items():
                call = lambda: method(x, target)  # noqa: E731
                is_ig = label.startswith("Integrated")
                if not is_ig:  # IG runs 50 passes: the model is warm by then
                    call()
                reps = ig_repeats if is_ig else repeats
                seconds = _median_seconds(call, reps, device)
                results[label] = (seconds / batch, _peak_memory(call, device) / 2**20)
                print(f"  {name} b={batch} {label}: {seconds / batch:.4f} s/img", flush=True)
            base_t, base_m = results["Saliency"]
            for label, (t, m) in results.items():
                rows.append((name, batch, label, t, t / base_t, m, m / base_m if base_m else float("nan")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ig-repeats", type=int, default=1, help="repeats for Integrated Gradients")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    rows = run(args.models, args.batch_sizes, args.repeats, args.iterations, device, args.ig_repeats)
    budget = 1.15 * (args.iterations + 1)
    print(f"\nTarget: FSP time ratio <= {budget:.2f} (1.15 x (k + 1)), FSP memory ratio <= 1.5\n")
    print("| model | batch | method | s / image | x Saliency | peak MiB | x Saliency |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, batch, label, t, tr, m, mr in rows:
        print(f"| {name} | {batch} | {label} | {t:.4f} | {tr:.2f} | {m:.0f} | {mr:.2f} |")


if __name__ == "__main__":
    main()
