"""What a benchmark run leaves in ``OUT``: ``summary.json`` (an object keyed by method name),
``per_class.csv`` (one row per method, subset and class: ``class_id, class, hits, misses,
accuracy``, TorchRay's counters; for segmentation the hits are a class's correct pixels and the
misses the rest of its union) and ``per_class.png`` (per-class bars of every method, as the
paper's Figs. 11-12), and ``run.json`` (images, throughput and memory over the run)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np


def write_report(task_name: str, summary: Dict[str, dict], classes: Sequence[str], out: Path, run: dict) -> List[Path]:
    """Writes the report files; returns their paths."""
    paths = [out / "summary.json", out / "per_class.csv", out / "per_class.png", out / "run.json"]
    paths[0].write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n")
    _write_csv(task_name, summary, classes, paths[1])
    _plot(task_name, summary, classes, paths[2])
    paths[3].write_text(json.dumps(run, indent=1) + "\n")
    return paths


def _rows(task_name: str, summary: Dict[str, dict], classes: Sequence[str]) -> List[list]:
    rows = []
    names = _row_names(task_name, classes)
    for method, scores in summary.items():
        subsets = [("all", scores)] + [(name, part) for name, part in scores.items()
                                       if isinstance(part, dict) and "per_class_hits" in part]
        for subset, part in subsets:
            for class_id, name in enumerate(names):
                if name in part["per_class"]:
                    hits, total = part["per_class_hits"][name], part["per_class_total"][name]
                    rows.append([method, subset, class_id, name, hits, total - hits, part["per_class"][name]])
    return rows


def _row_names(task_name: str, classes: Sequence[str]) -> Tuple[str, ...]:
    """The classes a task scores: segmentation scores the background too."""
    return ("background", *classes) if task_name == "segmentation" else tuple(classes)


def _write_csv(task_name: str, summary: Dict[str, dict], classes: Sequence[str], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        measure = "iou" if task_name == "segmentation" else "accuracy"
        misses = "wrong_pixels" if task_name == "segmentation" else "misses"
        writer.writerow(["method", "subset", "class_id", "class", "hits", misses, measure])
        for row in _rows(task_name, summary, classes):
            writer.writerow(row[:6] + [f"{row[6]:.4f}"])


def _plot(task_name: str, summary: Dict[str, dict], classes: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if task_name == "grid-pointing":
        _plot_measures(summary, path, plt)
        return
    names = _row_names(task_name, classes)
    shown = [n for n in names if any(n in s["per_class"] for s in summary.values())]
    figure, axis = plt.subplots(figsize=(max(6.0, 0.45 * len(shown) * max(1, len(summary)) / 2), 3.6))
    width = 0.8 / max(len(summary), 1)
    for k, (method, scores) in enumerate(summary.items()):
        values = [scores["per_class"].get(n, math.nan) for n in shown]
        headline = scores.get("miou", scores.get("accuracy"))
        axis.bar(np.arange(len(shown)) + k * width, values, width, label=f"{method} ({headline:.3f})")
    axis.set_xticks(np.arange(len(shown)) + 0.4 - width / 2, shown, rotation=60, ha="right", fontsize=8)
    measure = {"pointing": "pointing accuracy", "localization": "GT-known box accuracy",
               "segmentation": "IoU"}[task_name]
    axis.set_ylabel(measure)
    axis.set_ylim(0, 1)
    axis.set_title(f"{task_name}: per-class {measure}")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def _plot_measures(summary: Dict[str, dict], path: Path, plt: object) -> None:
    """grid-pointing: each measure's mean per method with its bootstrap interval."""
    measures = ("share", "pointing", "deletion", "insertion")
    figure, axes = plt.subplots(1, len(measures), figsize=(3.2 * len(measures), 0.35 * len(summary) + 1.4),
                                sharey=True)
    methods = list(summary)
    for axis, measure in zip(axes, measures):
        means = np.array([summary[m][measure] for m in methods])
        low, high = np.array([summary[m]["intervals"][measure] for m in methods]).T
        axis.barh(range(len(methods)), means, xerr=[means - low, high - means], color="tab:gray", capsize=2)
        axis.set_xlim(0, 1)
        better = "lower" if measure == "deletion" else "higher"
        axis.set_title(f"{measure} ({better} is better)", fontsize=9)
    axes[0].set_yticks(range(len(methods)), methods, fontsize=8)
    axes[0].invert_yaxis()
    figure.suptitle("grid pointing game: mean over targets, 95% interval over grids", fontsize=9)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(figure)


def run_stats(records: Sequence[dict], processes: int) -> dict:
    """Images, seconds of scoring per image, and the resident memory of each process over its
    images (first, median, last, most), from the records."""
    seconds = [r["seconds"] for r in records if "seconds" in r]
    memory: Dict[int, List[float]] = {}
    for record in records:
        memory.setdefault(int(record.get("rank", 0)), []).append(float(record.get("rss_mb", math.nan)))
    return {"images": len(records), "processes": processes,
            "seconds_per_image_median": float(np.median(seconds)) if seconds else math.nan,
            "rss_mb_by_rank": {str(rank): {"first": v[0], "median": float(np.median(v)), "last": v[-1], "max": max(v)}
                               for rank, v in sorted(memory.items())}}
