"""`captum-feedback benchmark`: the paper's tables over data set folders, in one process or two
(torchrun, gloo), resumable after a kill; DataParallel refused, DDP gated."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from captum_feedback import FSP
from captum_feedback.app.cli import main
from captum_feedback.data import FASHION_MNIST_CLASSES
from captum_feedback.data.layouts import cluttered_images, open_layout, write_layout
from captum_feedback.evaluation.tasks import point_hits

POINTING = ["--model", "cluttered_vgg", "--methods", "FSP Summation", "saliency", "--tolerance", "3"]


@pytest.fixture(scope="module")
def scenes():
    return cluttered_images(8)


@pytest.fixture(scope="module")
def voc(tmp_path_factory, scenes):
    return write_layout("voc", tmp_path_factory.mktemp("voc"), scenes, FASHION_MNIST_CLASSES, "test", 2007)


def _benchmark(task, dataset, root, out, *extra):
    args = ["benchmark", task, "--dataset", dataset, "--root", str(root), "--out", str(out), *extra]
    assert main(args) == 0
    return json.loads((out / "summary.json").read_text())


def _torchrun(*argv, **kwargs):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "--module", "captum_feedback", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, **kwargs})


def _records(out):
    """The image of every complete record line, repeats included."""
    lines = [line for path in sorted((out / "records").glob("*.jsonl")) for line in path.read_text().splitlines()]
    return [json.loads(line)["image"] for line in lines if line.endswith("}")]


def test_layouts_read_back_what_was_written(tmp_path, scenes):
    for kind, split in (("voc", "test"), ("coco", "val"), ("imagenet", "val")):
        root = write_layout(kind, tmp_path / kind, scenes, FASHION_MNIST_CLASSES, split)
        layout = open_layout(kind, root, split)
        assert layout.classes == FASHION_MNIST_CLASSES and len(layout) == len(scenes)
        for written, read in zip(sorted(scenes, key=lambda s: s.name), layout):
            assert read.name == written.name and read.size == written.size == (120, 150)
            assert [i.label for i in read.instances] == [i.label for i in written.instances]
            assert torch.allclose(torch.tensor([i.box for i in read.instances]),
                                  torch.tensor([i.box for i in written.instances]), atol=1e-3)
            assert (read.image.float() - written.image.float()).abs().mean() < 3  # JPEG at quality 95


def test_pointing_counts_every_class_of_every_image_in_the_photos_pixels(tmp_path, voc, scenes):
    summary = _benchmark("pointing", "voc", voc, tmp_path / "out", *POINTING)
    pairs = sum(len(s.present()) for s in scenes)
    for method in ("FSP Summation", "Saliency"):
        scores = summary[method]
        assert scores["total"] == pairs and 0 <= scores["hits"] <= pairs
        per_class = scores["per_class"]
        assert scores["accuracy"] == pytest.approx(sum(per_class.values()) / len(per_class))
        assert sum(scores["per_class_total"].values()) == pairs
        assert scores["small_with_other_classes"]["total"] <= pairs
    assert summary["FSP Summation"]["hits"] >= summary["Saliency"]["hits"]
    csv = (tmp_path / "out" / "per_class.csv").read_text().splitlines()
    assert csv[0] == "method,subset,class_id,class,hits,misses,accuracy"
    assert (tmp_path / "out" / "per_class.png").stat().st_size > 0
    assert sorted(_records(tmp_path / "out")) == sorted(s.name for s in scenes)


def test_a_point_hits_within_the_tolerance_and_inside_the_region_at_zero():
    region = torch.zeros(20, 20, dtype=torch.bool)
    region[5:8, 5:8] = True
    energy = torch.zeros(20, 20)
    energy[7, 11] = 1.0  # 4 pixels right of the region
    assert not point_hits(energy, region, 0) and not point_hits(energy, region, 4) and point_hits(energy, region, 5)
    energy[6, 6] = 2.0
    assert point_hits(energy, region, 0)


def test_coco_layout_and_two_torchrun_processes_give_the_same_summary(tmp_path, scenes):
    root = write_layout("coco", tmp_path / "coco", scenes, FASHION_MNIST_CLASSES, "val")
    one = _benchmark("pointing", "coco", root, tmp_path / "one", *POINTING)
    result = _torchrun("benchmark", "pointing", "--dataset", "coco", "--root", str(root), "--out",
                       str(tmp_path / "two"), *POINTING)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two == one
    assert sorted(_records(tmp_path / "two")) == sorted(s.name for s in scenes)  # each image once
    assert {p.name for p in (tmp_path / "two" / "records").iterdir()} == {"rank-000-of-002.jsonl",
                                                                          "rank-001-of-002.jsonl"}
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2


def test_a_killed_run_resumes_where_it_stopped_and_gives_the_same_result(tmp_path, voc):
    reference = _benchmark("pointing", "voc", voc, tmp_path / "reference", *POINTING)
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "captum_feedback", "benchmark", "pointing", "--dataset", "voc",
               "--root", str(voc), "--out", str(out), *POINTING]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "records" / "rank-000-of-001.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not shard.exists() or shard.read_text().count("\n") < 2):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with shard.open("a") as file:
        file.write('{"image": "scene_0_000')  # a line cut short by the kill
    done = len(_records(out))
    assert 2 <= done < 8
    assert _benchmark("pointing", "voc", voc, out, *POINTING) == reference
    assert sorted(_records(out)) == sorted(_records(tmp_path / "reference"))  # nothing scored twice


def test_a_rerun_with_other_settings_is_refused(tmp_path, voc, capsys):
    _benchmark("pointing", "voc", voc, tmp_path / "out", *POINTING, "--limit", "2")
    argv = ["benchmark", "pointing", "--dataset", "voc", "--root", str(voc), "--out", str(tmp_path / "out"),
            *POINTING[:-1], "7", "--limit", "2"]
    assert main(argv) == 2
    assert "other settings (tolerance)" in capsys.readouterr().err


def test_localization_and_segmentation_summaries(tmp_path):
    single = cluttered_images(4, max_items=1, seed=3)
    imagenet = write_layout("imagenet", tmp_path / "imagenet", single, FASHION_MNIST_CLASSES, "val")
    located = _benchmark("localization", "imagenet", imagenet, tmp_path / "loc", "--model", "cluttered_vgg",
                         "--methods", "FSP two-stage (Procedure 1)", "LayerGradCam", "--updates", "2")
    for scores in located.values():
        assert scores["total"] == 4 and 0 <= scores["top5_loc_error"] <= scores["top1_loc_error"] <= 1
        assert scores["top1_cls_error"] <= scores["top1_loc_error"]
    voc = write_layout("voc", tmp_path / "voc", cluttered_images(3, seed=4), FASHION_MNIST_CLASSES, "val")
    segmented = _benchmark("segmentation", "voc", voc, tmp_path / "seg", "--model", "cluttered_vgg",
                           "--methods", "summation-fsp-fr", "Center", "--updates", "2")
    assert set(segmented) == {"Summation-FSP-FR", "Center"}
    for scores in segmented.values():
        assert 0 < scores["miou"] < 1 and scores["images"] == 3 and "background" in scores["per_class"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "voc", "--root", "{nowhere}"], "nowhere does not exist"),
        (["--dataset", "voc", "--root", "{voc}", "--split", "train"], "No image list"),
        (["--dataset", "imagenet", "--root", "{voc}"], "No synset list"),
        (["--dataset", "voc", "--root", "{voc}", "--methods", "Magic"], "Unknown method 'Magic'"),
        (["--dataset", "voc", "--root", "{voc}", "--model", "efficientnet_lite0"], "No class of the data set"),
        (["--dataset", "voc", "--root", "{voc}", "--num-classes", "3"], "the data set has 10 classes"),
        (["--dataset", "voc", "--root", "{voc}", "--device", "cuda:7"], "--device cuda:7"),
    ],
)
def test_benchmark_errors_are_one_line(argv, message, voc, tmp_path, capsys):
    if "cuda" in argv[-1] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "out"
    argv = ["benchmark", "pointing", *[a.format(voc=voc, nowhere=tmp_path / "nowhere") for a in argv],
            "--out", str(out)]
    if "--model" not in argv:
        argv += ["--model", "cluttered_vgg"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists() or not any(out.iterdir())


def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 3)).eval()


def test_data_parallel_is_refused_by_name_and_leaves_no_hook():
    model = nn.DataParallel(_net())
    with pytest.raises(ValueError, match="torch.nn.DataParallel"):
        FSP(model).attribute(torch.randn(2, 3, 8, 8), target=1)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_distributed_data_parallel_is_gated_like_its_module(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = _net()
        x = torch.randn(2, 3, 8, 8)
        expected = FSP(net).attribute(x, target=1)
        assert torch.equal(FSP(nn.parallel.DistributedDataParallel(net)).attribute(x, target=1), expected)
        plain = torch.autograd.grad(net(x.requires_grad_())[:, 1].sum(), x)[0]
        assert not torch.allclose(expected, plain)  # gated, not the plain gradient
    finally:
        dist.destroy_process_group()


def test_the_embedded_imagenet_model_points_at_voc_classes_through_their_imagenet_groups(tmp_path):
    from captum_feedback.data.layouts import voc_photos
    from captum_feedback.data.voc import VOC_CLASSES

    root = write_layout("voc", tmp_path / "voc", voc_photos(), VOC_CLASSES, "test", 2007)
    summary = _benchmark("pointing", "voc", root, tmp_path / "out", "--methods", "saliency", "Center", "--year", "2007")
    photo = voc_photos()[0]
    assert summary["Saliency"]["total"] == len(photo.present()) == 4  # bottle, chair, dining table, person
    assert set(summary["Saliency"]["per_class"]) == {VOC_CLASSES[c] for c in photo.present()}


def test_coco_classes_map_to_the_imagenet_classes_that_depict_them():
    from types import SimpleNamespace

    from captum_feedback.evaluation.tasks import COCO_IMAGENET_NAMES, TargetMap
    from captum_feedback.models import imagenet_classes

    names = imagenet_classes()
    assert all(n in names for group in COCO_IMAGENET_NAMES.values() for n in group)
    model = SimpleNamespace(classes=names, imagenet=True)
    layout = SimpleNamespace(kind="coco", classes=("cat", "zebra", "giraffe", "traffic light"))
    mapping = TargetMap(model, layout)
    assert mapping.unmapped == ["giraffe"] and mapping.mapped([0, 1, 2, 3]) == [0, 1, 3]
    logits = torch.zeros(1000)
    logits[names.index("Egyptian cat")] = 1.0
    assert mapping.targets([0, 1, 3], logits) == [names.index("Egyptian cat"), names.index("zebra"),
                                                  names.index("traffic light")]


GRID = ["--model", "cluttered_vgg", "--grids", "3", "--pool", "160", "--seed", "1", "--faithfulness-steps", "4",
        "--methods", "FSP Summation", "grad-cam", "center"]


def _grid(out, *extra):
    assert main(["benchmark", "grid-pointing", "--dataset", "scenes", "--out", str(out), *GRID, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_grid_pointing_scores_each_cell_of_each_grid_with_intervals(tmp_path, capsys):
    summary = _grid(tmp_path / "out")
    for scores in summary.values():
        assert scores["targets"] == 12 and scores["grids"] == 3
        for measure in ("share", "pointing", "deletion", "insertion"):
            low, high = scores["intervals"][measure]
            assert 0 <= low <= scores[measure] <= high <= 1
    assert summary["Center"]["share"] == pytest.approx(0.25)  # a map centred on the grid: chance
    records = [json.loads(line) for line in (tmp_path / "out" / "records" / "rank-000-of-001.jsonl").open()]
    assert [len(set(r["labels"])) for r in records] == [4, 4, 4] and all(len(r["cells"]) == 4 for r in records)
    out = capsys.readouterr().out
    assert "FSP Summation: share" in out and "12 targets in 3 grids" in out
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["cell"] == 48 and settings["grid"] == 2  # the VGG takes 96 x 96 only


def test_grid_pointing_under_two_torchrun_processes_gives_the_same_summary(tmp_path):
    one = _grid(tmp_path / "one")
    result = _torchrun("benchmark", "grid-pointing", "--dataset", "scenes", "--out", str(tmp_path / "two"), *GRID)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "summary.json").read_text()) == one
    assert sorted(_records(tmp_path / "two")) == ["grid-00000", "grid-00001", "grid-00002"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["grid-pointing", "--dataset", "scenes", "--root", "x"], "--dataset scenes takes no --root"),
        (["grid-pointing", "--dataset", "folder"], "--dataset folder needs --root"),
        (["pointing", "--dataset", "photos"], "--dataset photos is for grid-pointing"),
        (["grid-pointing", "--dataset", "scenes", "--cell", "40"], "--cell must be 48"),
        (["grid-pointing", "--dataset", "scenes", "--confidence", "1.1"], "needs 4 classes"),
    ],
)
def test_grid_pointing_errors_are_one_line(argv, message, tmp_path, capsys):
    assert main(["benchmark", *argv, "--out", str(tmp_path / "out"), "--model", "cluttered_vgg"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_grid_pointing_on_a_folder_of_photos_with_the_embedded_imagenet_model(tmp_path):
    from PIL import Image

    from captum_feedback.data.photos import bundled_photos

    for name in ("chelsea", "coffee", "rocket", "motorcycle"):  # an Egyptian cat, espresso, ...: four classes
        Image.fromarray(bundled_photos()[name].permute(1, 2, 0).numpy()).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    assert main(["benchmark", "grid-pointing", "--dataset", "folder", "--root", str(tmp_path), "--out", str(out),
                 "--grids", "1", "--faithfulness-steps", "2", "--methods", "FSP Summation", "center"]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["cell"] == 160 and sorted(settings["cells"]) == ["chelsea.png", "coffee.png", "motorcycle.png",
                                                                      "rocket.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["FSP Summation"]["targets"] == 4 and summary["FSP Summation"]["share"] > 0.5
