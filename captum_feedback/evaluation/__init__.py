"""The paper's tables on whole data sets: the pointing game (Table 2), ILSVRC-style
localization (Table 1) and segmentation mIoU (Table 3), for any classifier and any of the
package's methods, in one process or many with ``torchrun``.

::

    captum-feedback benchmark pointing --dataset voc --root ~/data --year 2007 --out runs/voc07
    torchrun --nproc-per-node 4 --no-python captum-feedback benchmark pointing --dataset voc ...

:func:`run_benchmark` is what the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

from captum_feedback.compare.methods import MethodMaps
from captum_feedback.core.config import ConfigLike, resolve_config
from captum_feedback.data.layouts import Layout
from captum_feedback.evaluation.report import run_stats, write_report
from captum_feedback.evaluation.runner import (
    barrier,
    check_settings,
    join_process_group,
    read_records,
    score_images,
    totals,
)
from captum_feedback.evaluation.tasks import PROCEDURE_1, TASKS, Context, TargetMap, method_view
from captum_feedback.models.classifiers import Classifier

__all__ = ["PROCEDURE_1", "TASKS", "TargetMap", "run_benchmark"]


def run_benchmark(task_name: str, layout: Layout, classifier: Classifier, methods: Sequence[str], out: Path,
                  config: ConfigLike = None, tolerance: int = 15,
                  box_fraction: float = 0.99, limit: Optional[int] = None, progress: bool = True,
                  settings: Optional[dict] = None, faithfulness_steps: int = 16) -> Optional[Dict[str, dict]]:
    """Scores the first ``limit`` images (all by default) of ``layout`` and writes the report.

    The model runs where its parameters are. Under ``torchrun`` each process scores its shard;
    rank 0 writes the report and gets the summary, the others ``None``. A run in an ``out`` that
    holds records of the same settings (``settings`` plus the arguments here) scores only the
    images without one.

    Returns:
        The summary: per method, ``hits``, ``total``, ``accuracy`` and ``per_class`` (see
        :mod:`captum_feedback.evaluation.tasks` for each task's further fields).

    Raises:
        ValueError: an unknown task or method, settings that differ from the records in ``out``,
            an image scored twice or not at all.
    """
    if task_name not in TASKS:
        raise ValueError(f"Unknown task {task_name!r}; choose from {sorted(TASKS)}.")
    task = TASKS[task_name](len(layout.classes))
    unknown = [m for m in methods if m not in task.methods]
    if unknown or not methods:
        raise ValueError(f"Unknown method(s) {unknown} for {task_name}; choose from {list(task.methods)}.")
    device = classifier.device
    shard = join_process_group(device)
    config = resolve_config(config)
    maps = MethodMaps(classifier.model, classifier.middle, classifier.last, ig_steps=32, internal_batch_size=16,
                      config=config)
    ctx = Context(classifier, layout, maps, methods, device, config, tolerance, box_fraction, faithfulness_steps)
    count = len(layout) if limit is None else min(limit, len(layout))
    check_settings(out, {**(settings or {}), "task": task_name, "methods": list(methods), "images": count,
                         "tolerance": tolerance, "box_fraction": box_fraction, "config": repr(config)}, shard)
    mine = score_images(task, ctx, out, shard, count, progress)
    sums = totals(task, out, [layout.names[i] for i in mine], methods, shard)
    scored = {int(s[-1]) for s in sums.values()}
    if scored != {count}:
        raise ValueError(f"{sorted(scored)} images have records, expected {count}: records of other images in {out}?")
    summary = None
    if shard.rank == 0:
        records = list(read_records(out).values())  # every rank's, complete after the all_reduce
        summary = {m: task.summary(sums[m][:-1], layout.classes, [method_view(r, m) for r in records])
                   for m in methods}
        write_report(task_name, summary, layout.classes, out,
                     {**run_stats(records, shard.world), "unmapped_classes": ctx.target_map.unmapped})
    barrier(shard)
    return summary
