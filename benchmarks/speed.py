"""Seconds per image and peak memory of FSP and FR beside Captum's own methods.

Every method runs in the same process on the same images: torchvision ``vgg16``, ``resnet50``,
``mobilenet_v3_small`` and ``convnext_tiny`` (weights=None, random 224x224 images) and the
embedded EfficientNet-Lite0 on real photos (scikit-image's, squeezed to 320x320, as the grid
pointing benchmark feeds it), at batch sizes 1 and 16 (``--batch-sizes``). Times are medians over
``--repeats`` rounds after one warm-up, each round running every method once (Integrated
Gradients, 50 passes a call, runs ``--ig-repeats`` rounds); ratios are against ``Saliency``
measured in the same run: the ratio of the medians, and the median over rounds of the ratio
within a round ("paired"), which drift in a shared machine's speed disturbs less.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` above the memory held before the
call; on the CPU, the peak of memory allocated by the call as seen by a
``torch.profiler`` memory trace (allocations of tensors, freed ones subtracted), so the
numbers compare methods with each other rather than with the process size.

Page faults: the median over rounds of the minor page faults a call took (``getrusage``; 0
where the platform does not count them). A call that needs more memory than the C allocator
kept from the call before faults fresh pages in, one to five microseconds each here
(``--keep-freed-memory`` removes them; on ConvNeXt-T's paper call at batch 1 they are 1-2% of
the call, less than the machine's drift between runs).

FSP runs in the default configuration (``--config``; its number of updates ``k`` is the
configuration's unless ``--updates`` sets them, over all stages) and, as a second row, as the
paper's Algorithm 2 with 5 updates; a third row draws the configuration's Summation Energy Map
from ``select(..., attributions=False)`` (no input gradient), which for a contrastive
configuration runs FSP for the target and then for its dual after one shared first pass.
Target (issues #2, #10 and #22): a call of P passes costs at most 1.15 P Saliency calls
(:func:`passes`), and its peak memory is at most 1.5 x Saliency's.

Usage::

    python benchmarks/speed.py                       # the full table (slow on a CPU)
    python benchmarks/speed.py --models vgg16 --batch-sizes 1 --repeats 3
    python benchmarks/speed.py --models efficientnet_lite0 --batch-sizes 4   # issue #22's setting
    python benchmarks/speed.py --models efficientnet_lite0 --batch-sizes 4 --keep-freed-memory

``--keep-freed-memory`` has glibc keep freed memory for the whole run, every method alike
(:func:`captum_feedback.core.allocator.keep_freed_memory`, what the ``captum-feedback`` command
does): FSP's passes then reuse their pages instead of faulting them in again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import zoo
from captum.attr import GuidedBackprop, IntegratedGradients, LayerGradCam, Saliency

from captum_feedback import PRESETS, FeedbackConfig, FeedbackRecovering, FeedbackSelectivePruning
from captum_feedback.core.allocator import keep_freed_memory
from captum_feedback.core.config import resolve_config
from captum_feedback.data.photos import bundled_photos
from captum_feedback.models.classifiers import load_classifier, recommended_layers
from captum_feedback.wsol.energy import summation_energy_map

EMBEDDED = "efficientnet_lite0"
PHOTO_SIDE = 320
"""The embedded model runs on real photos at the grid pointing benchmark's size (2 x 2 cells of 160)."""


def passes(config: FeedbackConfig, summation: bool = False) -> int:
    """Forward and backward passes of one call, in units of the input batch: the plain pass and
    one per update; the Summation map of a contrastive configuration runs the updates again for
    the target's dual (the plain pass is shared)."""
    updates = config.selection.updates
    return 2 * updates + 1 if summation and config.selection.contrastive else updates + 1


def model_and_inputs(name: str, batch: int, device: torch.device) -> Tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model, a batch of inputs and each input's target (the embedded model's own top class
    on real photos; a random class on random images)."""
    torch.manual_seed(0)
    if name != EMBEDDED:
        model = zoo.build(name).to(device)  # ViT's zero head and ConvNeXt's tiny layer scales made informative
        x = torch.randn(batch, 3, 224, 224, device=device)
        return model, x, torch.randint(0, 1000, (batch,), device=device)
    classifier = load_classifier(EMBEDDED)
    photos = list(bundled_photos().values())
    model = classifier.to(device).model
    squeezed = torch.cat([classifier.squeeze(photos[i % len(photos)][None], PHOTO_SIDE) for i in range(batch)])
    x = classifier.normalize(squeezed.to(device))
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def _gradcam_layer(name: str, model: torch.nn.Module) -> torch.nn.Module:
    if name in ("vgg16", "resnet50"):  # the layers of the earlier tables
        return model.features[28] if name == "vgg16" else model.layer4
    return recommended_layers(model)[1]


def fsp_label(config: FeedbackConfig, name: str, summation: bool = False) -> str:
    return f"FSP {'Summation ' if summation else ''}{name} ({passes(config, summation)} passes)"


def methods(name: str, model: torch.nn.Module, configs: Dict[str, FeedbackConfig], ig_batch: int
            ) -> Dict[str, Callable]:
    """Each method as ``f(x, target) -> attribution``."""
    fsp, fr = FeedbackSelectivePruning(model), FeedbackRecovering(model)
    gradcam = LayerGradCam(model, _gradcam_layer(name, model))
    fsp_calls = {fsp_label(config, label): (lambda x, t, config=config: fsp.attribute(x, target=t, config=config))
                 for label, config in configs.items()}
    default_label, default = next(iter(configs.items()))
    fsp_calls[fsp_label(default, default_label, summation=True)] = (
        lambda x, t: summation_energy_map(fsp.select(x, t, config=default, attributions=False)))
    return {
        "Saliency": lambda x, t: Saliency(model).attribute(x, target=t, abs=False),
        **fsp_calls,
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


def _seconds(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _minor_faults() -> int:
    """The process's minor page faults so far (0 where the platform does not count them)."""
    if sys.platform == "win32":
        return 0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _interleaved_times(calls: Dict[str, Callable[[], object]], repeats: Dict[str, int], device: torch.device
                       ) -> Tuple[Dict[str, List[float]], Dict[str, List[int]]]:
    """Seconds and minor page faults of each call per round; every round runs each method
    once, so drift in the machine's speed affects all methods of a round alike."""
    times: Dict[str, List[float]] = {label: [] for label in calls}
    faults: Dict[str, List[int]] = {label: [] for label in calls}
    for round_ in range(max(repeats.values())):
        for label, call in calls.items():
            if round_ < repeats[label]:
                before = _minor_faults()
                times[label].append(_seconds(call, device))
                faults[label].append(_minor_faults() - before)
    return times, faults


def _paired_ratio(times: List[float], base: List[float]) -> float:
    """Median over rounds of the ratio to the base method's time in the same round."""
    return statistics.median(t / b for t, b in zip(times, base))


def run(models: List[str], batch_sizes: List[int], repeats: int, configs: Dict[str, FeedbackConfig],
        device: torch.device, ig_repeats: int, skip: Sequence[str] = ()) -> List[Tuple]:
    rows = []
    for name in models:
        for batch in batch_sizes:
            model, x, target = model_and_inputs(name, batch, device)
            calls = {
                label: (lambda method=method: method(x, target))
                for label, method in methods(name, model, configs, ig_batch=max(batch, 16)).items()
                if not label.startswith(tuple(skip))
            }
            for label, call in calls.items():
                if not label.startswith("Integrated"):  # IG runs 50 passes: warm enough
                    call()
            reps = {label: ig_repeats if label.startswith("Integrated") else repeats for label in calls}
            times, faults = _interleaved_times(calls, reps, device)
            seconds = {label: statistics.median(t) for label, t in times.items()}
            memory = {label: _peak_memory(call, device) / 2**20 for label, call in calls.items()}
            for label in calls:
                print(f"  {name} b={batch} {label}: {seconds[label] / batch:.4f} s/img, {memory[label]:.0f} MiB",
                      flush=True)
            for label, config in configs.items():
                state = FeedbackSelectivePruning(model).select(x, target, config=config, keep_cws=False)
                print(f"  {name} b={batch} {fsp_label(config, label)}: {int(state.reverted.sum())} of {batch} "
                      "samples reverted (blank maps: extra passes)", flush=True)
            base_m = memory["Saliency"]
            for label in calls:
                t, m = seconds[label], memory[label]
                paired = _paired_ratio(times[label], times["Saliency"])
                rows.append((name, batch, label, t / batch, t / seconds["Saliency"], paired, m, m / base_m,
                             statistics.median(faults[label])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+",
                        default=["vgg16", "resnet50", "mobilenet_v3_small", "convnext_tiny", EMBEDDED])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ig-repeats", type=int, default=1, help="repeats for Integrated Gradients")
    parser.add_argument("--config", default="default", choices=sorted(PRESETS))
    parser.add_argument("--updates", type=int, default=None, help="FSP's gate updates over all stages")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", nargs="*", default=[], metavar="METHOD",
                        help="methods to leave out, by the start of their label (e.g. IntegratedGradients)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed memory for every method (captum_feedback.core.allocator), as the "
                             "captum-feedback command does")
    args = parser.parse_args()
    device = torch.device(args.device)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"allocator keeps freed memory: {kept}")
    configs = {args.config: resolve_config(args.config, updates=args.updates), "paper": PRESETS["paper"]}
    rows = run(args.models, args.batch_sizes, args.repeats, configs, device, args.ig_repeats, args.skip)
    labelled = [(label, config, False) for label, config in configs.items()]
    labelled.append((args.config, configs[args.config], True))
    for label, config, summation in labelled:
        budget = 1.15 * passes(config, summation)
        print(f"\nTarget for {fsp_label(config, label, summation)}: time ratio <= {budget:.2f} (1.15 x passes), "
              "memory ratio <= 1.5")
    print()
    print("| model | batch | method | s / image | x Saliency | x Saliency (paired) | peak MiB | x Saliency "
          "| page faults |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, label, t, tr, paired, m, mr, pf in rows:
        print(f"| {name} | {batch} | {label} | {t:.4f} | {tr:.2f} | {paired:.2f} | {m:.0f} | {mr:.2f} | {pf:.0f} |")


if __name__ == "__main__":
    main()
