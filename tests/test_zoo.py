"""torchvision's classifiers (weights=None) through FSP and FR: finite input-shaped maps, no
hook or mode left, the model's state untouched, batch == per sample, and the linearized target
score never falling. CI runs a small model of each convolutional family; `--slow` adds the
transformers; `python benchmarks/zoo.py` runs all 80 (the table is in docs/benchmarks.md)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import zoo  # noqa: E402

CONVOLUTIONAL = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "squeezenet1_0", "googlenet",
                 "regnet_x_400mf"]
TRANSFORMERS = ["convnext_tiny", "vit_b_32", "maxvit_t"]


def _holds(name):
    finding = zoo.check(zoo.build(name), zoo.input_size(name))
    assert finding["sites"] > 0 and zoo.passes(finding), finding
    return finding


@pytest.mark.parametrize("name", CONVOLUTIONAL)
def test_a_convolutional_classifier_holds_the_contract(name):
    _holds(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_a_transformer_holds_the_contract(name):
    _holds(name)


@pytest.mark.parametrize("name", ["googlenet", "regnet_y_1_6gf"])
def test_batch_invariant_maps_equal_each_image_alone_in_float32(name):
    """The two models whose batched float32 maps differ most from each image's alone (0.13 and
    1e-4 of the map's scale with oneDNN under the pruning rule) agree exactly with
    ``batch_invariant``. On one thread: with several, some of regnet's backward kernels vary by
    1e-10 from one call to the next, Captum's Saliency too."""

    import torch

    from captum_feedback import FSP, PRESETS, summation_energy_map

    model = zoo.build(name)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model(x).argmax(1).tolist()
    fsp = FSP(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for config in (PRESETS["default"], PRESETS["released_code"]):
            invariant = config.replace(batch_invariant=True)
            alone = torch.cat([fsp.attribute(x[i:i + 1], target[i], config=config) for i in range(2)])
            assert torch.equal(fsp.attribute(x, target, config=invariant), alone)
            state = fsp.select(x, target, config=invariant)
            one = fsp.select(x[1:], target[1], config=config)
            # the contrastive map's run on the image and its dual differs at the rounding level
            torch.testing.assert_close(summation_energy_map(state)[1:], summation_energy_map(one), rtol=0, atol=1e-6)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", CONVOLUTIONAL + ["swin_v2_t"])
def test_explain_runs_on_each_family_with_a_weights_file(name, tmp_path):
    """Every convolutional family of the zoo, and Swin V2, whose position-bias MLP (no batch
    dimension) recommended_layers once picked, through the command line."""
    import torch
    import torchvision
    from PIL import Image

    from captum_feedback.app.cli import main
    from captum_feedback.models.classifiers import recommended_layers

    model = torchvision.models.get_model(name, weights=None).eval()  # as the command builds it
    middle, last = recommended_layers(model)
    assert "cpb_mlp" not in {n for n, m in model.named_modules() if m in (middle, last)}
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    Image.new("RGB", (64, 48), (120, 80, 40)).save(tmp_path / "photo.png")
    argv = ["explain", str(tmp_path / "photo.png"), "--model", name, "--weights", str(tmp_path / "weights.pth"),
            "--method", "summation", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert len(list((tmp_path / "out").glob("*_box.json"))) == 1
