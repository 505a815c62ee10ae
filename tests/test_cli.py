"""The captum-feedback command: real outputs on the embedded model, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from captum_feedback.app.cli import main
from captum_feedback.app.commands import device
from captum_feedback.data.photos import bundled_photos


@pytest.fixture(scope="module")
def cat_jpg(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos") / "cat.jpg"
    Image.fromarray(bundled_photos()["chelsea"].permute(1, 2, 0).numpy()).save(path)
    return path


def test_explain_writes_overlay_mask_box_and_map_in_the_photos_own_pixels(cat_jpg, tmp_path, capsys):
    argv = ["explain", str(cat_jpg), "--method", "fsp", "--updates", "1", "--save-maps", "--out", str(tmp_path)]
    assert main(argv) == 0
    stem = "cat_egyptian-cat_fsp"  # the top class of the whole photo, squeezed to 224 x 224
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"{stem}.png", f"{stem}_box.json", f"{stem}_map.npy", f"{stem}_mask.png"]
    box = json.loads((tmp_path / f"{stem}_box.json").read_text())
    height, width = box["image_size"]
    assert (height, width) == (300, 451) and box["class"] == "Egyptian cat"
    x1, y1, x2, y2 = box["box_xyxy"]
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    mx1, my1, mx2, my2 = box["box_xyxy_on_model_input"]
    assert x1 == pytest.approx(mx1 * width / 224) and y2 == pytest.approx(my2 * height / 224)
    assert Image.open(tmp_path / f"{stem}_mask.png").size == (width, height)
    assert np.load(tmp_path / f"{stem}_map.npy").shape == (height, width)


def test_a_16_bit_grayscale_photo_is_explained_and_the_conversion_named(cat_jpg, tmp_path, capsys):
    gray = np.asarray(Image.open(cat_jpg).convert("L")).astype(np.uint16) * 257  # full 16-bit range
    path = tmp_path / "cat16.png"
    Image.fromarray(gray).save(path)
    assert main(["explain", str(path), "--method", "saliency", "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "grayscale divided by 65535" in err, err
    assert any((tmp_path / "out").glob("cat16_*_saliency.png"))


def test_targets_by_name_and_top_k(cat_jpg, tmp_path):
    argv = ["explain", str(cat_jpg), "--target", "top2", "--target", "Egyptian cat", "--method", "saliency",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    overlays = sorted(p.name for p in tmp_path.glob("*_saliency.png"))
    assert overlays == ["cat_egyptian-cat_saliency.png", "cat_tiger-cat_saliency.png"]  # top2 holds Egyptian cat


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "{missing}"], "No image at"),
        (["explain", "{corrupt}"], "not a readable image"),
        (["explain", "{cat}", "--target", "unicorn"], "unknown class 'unicorn'"),
        (["explain", "{cat}", "--model", "resnet18", "--weights", "{corrupt}"], "cannot load weights"),
        (["explain", "{cat}", "--model", "resnet18"], "--model needs --weights"),
        (["explain", "{cat}", "--model", "nonet", "--weights", "{corrupt}"], "unknown torchvision model"),
        (["explain", "{cat}", "--model", "get_weight", "--weights", "{corrupt}"], "unknown torchvision model"),
        (["explain", "{cat}", "--model", "resnet18", "--weights", "{pickled}"], "loads safely"),
        (["explain", "{cat}", "--updates", "0"], "argument --updates: 0 must be at least 1"),
        (["explain", "{cat}", "--updates", "-1"], "argument --updates: -1 must be at least 1"),
        (["explain", "{cat}", "--target", "top0"], "K must lie in 1..1000"),
        (["explain", "{cat}", "--target", "top5000"], "K must lie in 1..1000"),
        (["explain", "{cat}", "--target", "1000"], "class index out of range (0..999)"),
        (["explain", "{cat}", "{missing}"], "No image at"),  # nothing written for the first image either
        (["explain", "{huge}"], "over the limit of 50"),
        (["explain", "{cat}", "--out", "{a_file}"], "is a file, not a folder"),
        (["explain", "{cat}", "--out", "/proc/captum-feedback-test"], "cannot create --out"),
        (["explain", "{cat}", "--method", "magic"], "invalid choice: 'magic'"),
    ],
)
def test_errors_are_one_line_on_stderr_with_exit_status_2(argv, message, cat_jpg, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_text("not a jpeg")
    pickled = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a pickled module, not a state dict
    huge = tmp_path / "huge.png"
    if "{huge}" in argv:
        Image.new("1", (20000, 20000)).save(huge)  # 400 megapixels: past Pillow's decompression-bomb limit
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    paths = {"missing": str(tmp_path / "nope.jpg"), "corrupt": str(corrupt), "cat": str(cat_jpg),
             "pickled": str(pickled), "huge": str(huge), "a_file": str(a_file)}
    out = tmp_path / "out"
    argv = [a.format(**paths) for a in argv]
    argv += [] if "--out" in argv else ["--out", str(out)]
    code = main(argv) if "--updates" not in argv and "--method" not in argv else _exit_code(argv)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err and "\x1b" not in err, err
    assert not out.exists() or not any(out.iterdir())


def _exit_code(argv):
    """argparse's own errors leave through SystemExit."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])  # ReLU, and SiLU gate sites
def test_a_torchvision_model_with_a_weights_file(cat_jpg, tmp_path, name):
    weights = tmp_path / f"{name}.pth"
    torch.save(getattr(torchvision.models, name)(weights=None).state_dict(), weights)
    argv = ["explain", str(cat_jpg), "--model", name, "--weights", str(weights), "--target", "3",
            "--method", "fsp", "--updates", "1", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_the_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "captum_feedback", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "explain" in result.stdout and "demo" in result.stdout


def test_version_and_notes_for_outputs_that_say_little(capsys):
    from captum_feedback.app.commands import weak_outputs

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("captum-feedback ")
    empty, full = torch.zeros(10, 10, dtype=torch.bool), [0.0, 0.0, 10.0, 10.0]
    assert len(weak_outputs(empty, full, (10, 10))) == 2
    assert weak_outputs(empty, [2.0, 2.0, 6.0, 6.0], (10, 10))[0].startswith("the mask is empty")


def test_help_is_plain_text_with_defaults_and_needs_no_torch():
    code = ("import sys\nfrom captum_feedback.app.cli import main\n"
            "try:\n    main(['benchmark', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    *help_lines, torch_loaded = result.stdout.splitlines()
    assert torch_loaded == "False"
    help_text = "\n".join(help_lines)
    assert "``" not in help_text and "::" not in help_text
    assert "default 15)" in help_text and "(default: all)" in help_text and "(default: cpu)" in help_text


def test_the_cli_names_every_preset():
    from captum_feedback import PRESETS
    from captum_feedback.app.cli import CONFIG_NAMES

    assert sorted(CONFIG_NAMES) == sorted(PRESETS)


def test_a_portrait_photo_gets_a_mask_of_its_own_size_and_a_box_inside_it(cat_jpg, tmp_path):
    photo = tmp_path / "portrait.jpg"
    Image.open(cat_jpg).resize((810, 1080)).save(photo)  # 810 wide, 1080 high
    argv = ["explain", str(photo), "--method", "saliency", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    (mask,) = (tmp_path / "out").glob("*_mask.png")
    assert Image.open(mask).size == (810, 1080)
    x1, y1, x2, y2 = json.loads(next((tmp_path / "out").glob("*_box.json")).read_text())["box_xyxy"]
    assert 0 <= x1 < x2 <= 810 and 0 <= y1 < y2 <= 1080


def test_under_torchrun_cuda_means_this_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert device("cuda") == torch.device("cuda", 1)
    assert device("cuda:0") == torch.device("cuda", 0) and device("cpu") == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert device("cuda") == torch.device("cuda")
