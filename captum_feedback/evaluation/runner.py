"""Running a task over a data set: in one process or many (``torchrun``), resumable.

Images are sharded by rank (image ``i`` goes to rank ``i % world_size``: every image once, none
repeated to pad). Each process appends one JSON line per image to its own file in
``OUT/records/`` and syncs it to disk, so a killed run loses at most the image in flight; a run
in the same ``OUT`` skips every image that has a record in any file (whatever the number of
processes that wrote it). Each rank then adds up the records of its own images, an
``all_reduce`` sums the counts, and rank 0 writes the report (:mod:`~captum_feedback.evaluation.report`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.distributed as dist

from captum_feedback.evaluation.tasks import Context, Task

RECORDS = "records"
SETTINGS = "settings.json"


@dataclass(frozen=True)
class Shard:
    """This process's part of a run: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1

    def images(self, count: int) -> range:
        """The indices of the images this rank scores."""
        return range(self.rank, count, self.world)


def join_process_group(device: torch.device) -> Shard:
    """Joins ``torchrun``'s process group (gloo on CPU, NCCL on CUDA) when it launched several
    processes; one process runs without one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Shard(dist.get_rank(), dist.get_world_size())


def check_settings(out: Path, settings: dict, shard: Shard) -> None:
    """Records of another task, data set, model or method list must not mix: the first run in
    ``out`` writes its settings, later runs must match them."""
    path = out / SETTINGS
    if shard.rank == 0:
        (out / RECORDS).mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(json.dumps(settings, indent=1, sort_keys=True))
    barrier(shard)
    earlier = json.loads(path.read_text())
    if earlier != json.loads(json.dumps(settings)):
        changed = sorted(k for k in set(earlier) | set(settings) if earlier.get(k) != settings.get(k))
        raise ValueError(f"--out {out} holds a run with other settings ({', '.join(changed)}); resume it with the "
                         "same arguments or choose another --out.")


def read_records(out: Path) -> Dict[str, dict]:
    """Every complete record in ``out/records/*.jsonl`` by image name (a line cut short by a
    kill is not a record)."""
    records: Dict[str, dict] = {}
    for path in sorted((out / RECORDS).glob("*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[record["image"]] = record
    return records


class RecordFile:
    """This rank's record file, opened for appending after any line a kill cut short."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            text = path.read_bytes()
            keep = text.rfind(b"\n") + 1
            if keep != len(text):
                with path.open("r+b") as file:
                    file.truncate(keep)
        self.file = path.open("a")

    def append(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def score_images(task: Task, ctx: Context, out: Path, shard: Shard, count: int, progress: bool = True) -> List[int]:
    """Scores this rank's share of the first ``count`` images, those without a record yet;
    returns the indices it owns."""
    from tqdm import tqdm

    mine = list(shard.images(count))
    done = read_records(out)
    todo = [i for i in mine if ctx.layout.names[i] not in done]
    records = RecordFile(out / RECORDS / f"rank-{shard.rank:03d}-of-{shard.world:03d}.jsonl")
    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"{task.name} (rank {shard.rank})",
               unit="image", disable=not progress or shard.rank != 0, dynamic_ncols=True)
    try:
        for index in todo:
            start = time.perf_counter()
            record = task.score(ctx.layout[index], ctx)
            record.update(seconds=round(time.perf_counter() - start, 3), rss_mb=round(resident_mb(), 1),
                          rank=shard.rank)
            records.append(record)
            bar.update(1)
    finally:
        bar.close()
        records.close()
    return mine


def totals(task: Task, out: Path, names: Sequence[str], methods: Sequence[str], shard: Shard) -> Dict[str, np.ndarray]:
    """The counts of each method over every image of the run: this rank adds up the records of
    its images, an ``all_reduce`` adds the ranks' sums. The last entry of each vector counts the
    images with a record, so that the caller can check every image was scored once."""
    records = read_records(out)
    sums = {}
    for method in methods:
        own = [task.counts(records[n], method) for n in names if n in records]
        total = np.sum(own, axis=0) if own else np.zeros(task.width)
        sums[method] = np.append(total, len(own))
    if shard.world > 1:
        flat = torch.from_numpy(np.concatenate([sums[m] for m in methods]))
        dist.all_reduce(flat)
        pieces = np.split(flat.numpy(), np.cumsum([len(sums[m]) for m in methods])[:-1])
        sums = dict(zip(methods, pieces))
    return sums


def barrier(shard: Shard) -> None:
    if shard.world > 1:
        dist.barrier()


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux ``/proc``; else the peak from ``resource``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

