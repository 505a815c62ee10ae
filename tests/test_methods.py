"""MethodMaps compares methods honestly: Captum's guided methods (Guided Backprop, Deconvolution,
Guided Grad-CAM) and DeepLift have their rule for nn.ReLU modules only, so on a model whose
ReLU-like sites are something else their maps would silently be plain gradients."""

import warnings

import pytest
import torch
from nets import FunctionalVGGish, VGGish, seeded
from torch import nn

from captum_feedback.compare.methods import RELU_MODULE_METHODS, MethodMaps, unguided_sites


def maps_of(model, methods):
    model = model.eval()
    layer = model.features[3] if hasattr(model, "features") else model.net.features[3]
    return MethodMaps(model, layer, layer)(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)),
                                           [1, 2], methods)


def test_relu_rules_reach_a_model_of_relu_modules_and_change_its_maps():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of ours
        maps = maps_of(seeded(VGGish()), (*RELU_MODULE_METHODS, "Saliency", "InputXGradient"))
    assert not torch.allclose(maps["GuidedBackprop"], maps["Saliency"])
    assert not torch.allclose(maps["DeepLift"], maps["InputXGradient"])


@pytest.mark.parametrize("method", RELU_MODULE_METHODS)
def test_relu_rules_refuse_a_model_without_relu_modules(method):
    with pytest.raises(ValueError, match=r"nn\.ReLU modules only.*none of this model's 4 ReLU-like sites.*FR"):
        maps_of(FunctionalVGGish(seeded(VGGish())), (method,))


def test_relu_rules_warn_where_some_sites_are_not_relu_modules():
    model = seeded(VGGish())
    model.features[3] = nn.ReLU6()
    assert unguided_sites(model.eval(), torch.rand(1, 3, 16, 16), 0) == (["features.3"], 4)
    with pytest.warns(UserWarning, match=r"1 of this model's 4 ReLU-like sites \(features\.3\)"):
        maps = maps_of(model, ("GuidedBackprop",))
    assert maps["GuidedBackprop"].shape == (2, 1, 16, 16)
