"""A newcomer on real photos (issue #23): fast one-line refusals before any model loads, one
line for Ctrl-C and SIGTERM, classes found by name and synonym, the same picture from the command
line and from Python, maps Captum's visualizer draws, and outputs that say when they say little."""

import json
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib

import pytest
import torch
from PIL import Image

from captum_feedback.app.checks import find_classes, imagenet_classes, photo_size
from captum_feedback.app.cli import main
from captum_feedback.data.photos import bundled_photos, load_image, read_image

COMMAND = [sys.executable, "-m", "captum_feedback"]


def header_only_png(path, width, height):
    """A PNG whose header says ``width x height`` RGB, with no pixels: what a check from the
    header must refuse without decoding anything."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def cat_jpg(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "cat.jpg"
    Image.fromarray(bundled_photos()["chelsea"].permute(1, 2, 0).numpy()).save(path)
    return path


def _run(*argv, timeout=120):
    start = time.perf_counter()
    result = subprocess.run([*COMMAND, *argv], capture_output=True, text=True, timeout=timeout)
    return result, time.perf_counter() - start


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "{huge}"], "12000 x 12000 pixels (144 megapixels), over the limit of 50"),
        (["explain", "{tiny}"], "1 x 1 pixels: too small to explain"),
        (["explain", "{cat}", "--device", "cuda:7"], "--device cuda:7"),
        (["explain", "{cat}", "--target", "unicorn"], "unknown class 'unicorn'"),
        (["explain", "{cat}", "--model", "resnet18", "--weights", "{nowhere}"], "no weights file"),
        (["benchmark", "pointing", "--dataset", "voc", "--root", "{nowhere}", "--out", "{out}"], "does not exist"),
    ],
)
def test_bad_arguments_are_refused_in_one_line_within_two_seconds(argv, message, tmp_path, cat_jpg):
    if "cuda" in argv[-1] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    paths = {"huge": header_only_png(tmp_path / "huge.png", 12000, 12000), "cat": cat_jpg,
             "tiny": header_only_png(tmp_path / "tiny.png", 1, 1), "nowhere": tmp_path / "nowhere",
             "out": tmp_path / "out"}
    result, seconds = _run(*[a.format(**paths) for a in argv])
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert seconds < 2 * 1.5  # 2 s, with room for a loaded CI machine; no model (nor torch) loads first
    assert not (tmp_path / "out").exists()


def test_a_huge_photo_is_read_downscaled_on_request(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (200, 30, 30)).save(path)
    assert photo_size(path, max_megapixels=1, downscale=True) == (4000, 3000)
    image, note = load_image(path, max_pixels=1_000_000)
    assert image.shape[0] == 3 and image.shape[1] * image.shape[2] <= 1_000_000
    assert image.shape[1:] == (866, 1154) and "downscaled from 4000 x 3000" in note


def test_help_stays_fast():
    result, seconds = _run("--help")
    assert result.returncode == 0 and seconds < 0.5 * 3  # 0.5 s on a quiet machine


def test_horse_finds_sorrel_and_bike_finds_mountain_bike():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[339] == "sorrel"
    if not __import__("pathlib").Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed (make install adds it)")
    assert "sorrel" in [classes[k] for k in find_classes("horse", classes)]
    assert "mountain bike" in [classes[k] for k in find_classes("bike", classes)]
    result, _ = _run("classes", "horse")
    assert result.returncode == 0 and "339  sorrel" in result.stdout
    result, _ = _run("explain", "nowhere.png", "--target", "horse")  # the image check comes first
    assert "No image" in result.stderr
    with pytest.raises(SystemExit):
        main(["classes", "--help"])


def test_unknown_classes_suggest_synonyms(cat_jpg, capsys):
    if not __import__("pathlib").Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("Debian's wordnet-base is not installed (make install adds it)")
    assert main(["explain", str(cat_jpg), "--target", "horse"]) == 2
    assert "Did you mean: horse cart, sorrel" in capsys.readouterr().err


@pytest.mark.parametrize("resize", ["squeeze", "crop"])
def test_the_command_and_python_see_the_same_picture(resize, cat_jpg, tmp_path):
    from captum_feedback.models import preprocess
    from captum_feedback.models.classifiers import load_classifier

    assert main(["explain", str(cat_jpg), "--method", "saliency", "--resize", resize, "--out", str(tmp_path)]) == 0
    (box,) = tmp_path.glob("*_box.json")
    reported = json.loads(box.read_text())
    model = load_classifier()  # the README's "your own photo in Python"
    x = model.inputs(read_image(cat_jpg), resize)
    with torch.no_grad():
        probability = model.probabilities(model.model(x))[0, model.classes.index(reported["class"])]
    assert reported["probability"] == pytest.approx(float(probability), abs=1e-6)
    if resize == "crop":
        torch.testing.assert_close(x, preprocess(read_image(cat_jpg)))
        height, width = reported["image_size"]
        x1, _, x2, _ = reported["box_xyxy"]  # inside the centre square the model saw
        side = round(min(height, width) * 224 / 256)
        assert (width - side) // 2 <= x1 < x2 <= (width - side) // 2 + side


def test_fsps_input_gradient_is_drawn_by_captums_visualizer_without_a_warning():
    from captum.attr import visualization as viz

    from captum_feedback import FSP
    from captum_feedback.models import efficientnet_lite0, preprocess, to_display

    model = efficientnet_lite0()
    x = preprocess(bundled_photos()["chelsea"])
    attribution = FSP(model).attribute(x, target=282)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure, _ = viz.visualize_image_attr(attribution[0].permute(1, 2, 0).numpy(),
                                             to_display(x)[0].permute(1, 2, 0).numpy(),
                                             method="blended_heat_map", sign="absolute_value", use_pyplot=False)
    assert figure is not None


def test_top_neurons_pass_over_channels_without_kept_neurons():
    import matplotlib

    matplotlib.use("Agg")
    from captum_feedback import FeedbackPipeline
    from captum_feedback.app.visualization import visualize_top_neurons
    from captum_feedback.models import efficientnet_lite0, preprocess
    from captum_feedback.models.classifiers import recommended_layers

    model = efficientnet_lite0()
    x = preprocess(bundled_photos()["chelsea"])
    figure, axes = visualize_top_neurons(FeedbackPipeline(model, recommended_layers(model)[0]), x, 282, k=6)
    for axis in axes[0, 1:]:
        assert axis.get_title().startswith("channel") and "empty" not in axis.get_title()
        assert axis.images and axis.images[0].get_array().max() > 0  # not a blank map


def test_a_uniform_photo_and_a_tiny_one_end_in_seconds_without_a_traceback(tmp_path):
    white = tmp_path / "white.png"
    Image.new("RGB", (640, 480), (255, 255, 255)).save(white)
    Image.new("RGB", (1, 1), (9, 9, 9)).save(tmp_path / "one.png")
    for config in ("default", "released_code"):
        result, seconds = _run("explain", str(white), "--method", "fsp", "--updates", "2", "--config", config,
                               "--out", str(tmp_path / config))
        assert result.returncode == 0 and "Traceback" not in result.stderr and seconds < 90, result.stderr
    result, _ = _run("explain", str(tmp_path / "one.png"))
    assert result.returncode == 2 and "too small" in result.stderr and "Traceback" not in result.stderr


def test_notes_say_when_a_mask_or_box_covers_most_of_the_photo():
    from captum_feedback.app.commands import weak_outputs

    full, half = torch.ones(10, 10, dtype=torch.bool), torch.zeros(10, 10, dtype=torch.bool)
    half[:4] = True
    notes = weak_outputs(full, [0.0, 0.0, 10.0, 8.0], (10, 10))
    assert len(notes) == 2 and "covers 100% of the photo" in notes[0] and "covers 80%" in notes[1]
    assert weak_outputs(half, [2.0, 2.0, 6.0, 6.0], (10, 10)) == []
    assert "empty" in weak_outputs(~full, [2.0, 2.0, 6.0, 6.0], (10, 10))[0]


@pytest.mark.parametrize("stop, code, line", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_stopped_benchmark_ends_in_one_line_and_resumes(stop, code, line, tmp_path):
    out = tmp_path / "out"
    argv = ["benchmark", "grid-pointing", "--dataset", "scenes", "--model", "cluttered_vgg", "--grids", "40",
            "--faithfulness-steps", "2", "--methods", "saliency", "center", "--out", str(out)]
    # As from a terminal: a job started in the background by a non-interactive shell (CI under
    # nohup or make &) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt.
    process = subprocess.Popen([*COMMAND, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    records = out / "records" / "rank-000-of-001.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not records.exists() or records.read_text().count("\n") < 2):
        time.sleep(0.05)
    process.send_signal(stop)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code and err.strip().splitlines()[-1] == f"captum-feedback: {line}", err[-2000:]
    assert "Traceback" not in err
    done = records.read_text().count("\n")
    assert 2 <= done < 40
    assert main(argv[:-2] + ["--out", str(out)]) == 0  # the rerun scores the rest
    assert records.read_text().count("\n") == 40


def test_the_benchmark_console_names_its_accuracy(tmp_path, capsys):
    from captum_feedback.data import FASHION_MNIST_CLASSES
    from captum_feedback.data.layouts import cluttered_images, write_layout

    root = write_layout("voc", tmp_path / "voc", cluttered_images(3), FASHION_MNIST_CLASSES, "test", 2007)
    assert main(["benchmark", "pointing", "--dataset", "voc", "--root", str(root), "--out", str(tmp_path / "out"),
                 "--model", "cluttered_vgg", "--methods", "saliency"]) == 0
    out = capsys.readouterr().out
    assert "Saliency: mean per-class accuracy" in out and "hits of" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert "small_with_other_classes" in summary["Saliency"] and "difficult" not in summary["Saliency"]
