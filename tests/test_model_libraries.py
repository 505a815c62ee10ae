"""The models users bring from timm and Hugging Face ``transformers`` (random weights): the zoo's
contract, Summation maps on token and channels-last layouts read from the shapes, Grad-CAM,
LayerFeedback and recommended layers, and the degeneracy warnings on timm's own initialization.
Both libraries are optional (``pip install captum-feedback[models]``): without them these tests
skip. ``python benchmarks/zoo.py --library timm`` runs one model of every timm family."""

import sys
import warnings
from pathlib import Path

import pytest
import torch

from captum_feedback import FSP, LayerFeedback, summation_energy_map
from captum_feedback.core.diagnosis import FeedbackDegenerateWarning, degeneracies
from captum_feedback.wsol.metrics import map_cosine

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import zoo  # noqa: E402

TIMM_FAST = ["test_vit", "test_convnext", "test_efficientnet", "test_resnet", "test_byobnet", "levit_128s"]
"""timm's own small test models (one per family) and LeViT, whose sites are tokens without a
class token: the fast subset of the timm zoo."""
TIMM_LAYOUTS = ["vit_tiny_patch16_224", "deit_tiny_patch16_224", "coat_lite_tiny", "maxvit_tiny_tf_224"]
"""Token models whose Summation map once failed (no (B, C, H, W) site was recognized), and
MaxViT, whose MLPs are channels last."""


def _holds(name, library):
    finding = zoo.check(zoo.build(name, library), zoo.input_size(name, library))
    assert finding["sites"] > 0 and zoo.passes(finding), finding
    return finding


@pytest.mark.parametrize("name", TIMM_FAST)
def test_a_timm_model_holds_the_zoo_contract(name):
    pytest.importorskip("timm")
    _holds(name, "timm")


@pytest.mark.parametrize("name", list(zoo.HF_MODELS))
def test_a_transformers_model_holds_the_zoo_contract_and_has_a_summation_map(name):
    pytest.importorskip("transformers")
    finding = _holds(name, "transformers")
    assert finding["summation map"] and "None" not in finding["layouts"], finding


@pytest.mark.parametrize("name", TIMM_LAYOUTS)
def test_the_summation_map_of_a_timm_token_or_channels_last_model_reads_its_sites_as_maps(name):
    pytest.importorskip("timm")
    model = zoo.build(name, "timm")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).expand(2, -1, -1, -1)
    with torch.no_grad():
        two = model(x[:1]).topk(2).indices[0].tolist()
    state = FSP(model).select(x, two)
    summation = summation_energy_map(state)
    assert summation.shape == (2, 1, 224, 224) and torch.isfinite(summation).all() and summation.sum() > 0
    assert float(map_cosine(summation[:1], summation[1:])) < 0.99  # two classes, two maps


@pytest.mark.parametrize("library, name", [("timm", "test_vit"), ("timm", "coat_lite_tiny"),
                                           ("transformers", "SwinForImageClassification"),
                                           ("transformers", "ConvNextForImageClassification")])
def test_grad_cam_and_layer_feedback_read_the_recommended_layers_as_maps(library, name):
    pytest.importorskip(library)
    from captum_feedback.compare.methods import MethodMaps
    from captum_feedback.models.classifiers import native_size, recommended_layers

    model = zoo.build(name, library)
    size = native_size(model)
    assert size == zoo.input_size(name, library)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    middle, last = recommended_layers(model)
    maps = MethodMaps(model, ig_steps=2)(x, [1, 2], ["LayerGradCam", "FSP-FR", "Saliency"])
    assert all(m.shape == (2, 1, size, size) and torch.isfinite(m).all() for m in maps.values())
    assert maps["LayerGradCam"].std() > 0  # the last layer's map reaches the head
    layer_map = LayerFeedback(model, middle, reshape_transform="auto").attribute(x, [1, 2])
    assert layer_map.dim() == 4 and layer_map.shape[0] == 2


def test_timms_own_initialization_of_a_convnext_is_a_bypass_and_fsp_says_so():
    """timm starts ConvNeXt's layer scales at 1e-6: every block is almost skipped, the gradient
    passes the GELUs by the residual stream, and FSP's map is the gradient under another name."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_convnext", pretrained=False).eval()
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = FSP(model).select(x, 3)
    assert degeneracies(state)["bypassed"].all()
    assert any(issubclass(w.category, FeedbackDegenerateWarning) and "bypasses" in str(w.message) for w in caught)
    assert not degeneracies(FSP(zoo.informative(model)).select(x, 3))["bypassed"].any()  # layer scales at 1
