"""Figures accept tensors in every common form and return (figure, axes) like Captum's."""

import warnings

import numpy as np
import pytest
import torch
from matplotlib import pyplot as plt
from matplotlib.patches import Rectangle
from nets import VGGish, seeded

from captum_feedback import FSP, FeedbackPipeline, LayerFeedback
from captum_feedback.app.visualization import (
    as_image,
    as_map,
    compare_methods,
    outline_legend,
    plot_channel_ranking,
    plot_fsp_iterations,
    visualize_energy_map,
    visualize_top_neurons,
)
from captum_feedback.core.config import resolve_config


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize(
    "image",
    [
        torch.rand(3, 8, 10),  # CHW in [0, 1]
        torch.rand(1, 3, 8, 10) * 2 - 1,  # a normalized batch of one
        (torch.rand(3, 8, 10) * 255).byte(),  # uint8
        np.random.rand(8, 10, 3),  # HWC numpy
        torch.rand(3, 8, 10, requires_grad=True),  # still attached to a graph
    ],
)
def test_images_become_hwc_in_unit_range(image):
    array = as_image(image)
    assert array.shape == (8, 10, 3) and array.min() >= 0 and array.max() <= 1


def test_normalized_images_are_rescaled_not_clipped():
    array = as_image(torch.tensor([[[-2.0, 0.0], [1.0, 2.0]]]))
    assert array[..., 0].tolist() == [[0.0, 0.5], [0.75, 1.0]]


def test_bad_images_and_maps_are_named():
    with pytest.raises(ValueError, match="batch of 2"):
        as_image(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="channels"):
        as_image(torch.rand(5, 8, 8))
    with pytest.raises(ValueError, match="energy_map"):
        as_map(torch.rand(1, 3, 8, 8))


def test_energy_overlay_draws_boxes_and_mask_onto_captums_heat_map():
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:9, 4:9] = True
    figure, axis = visualize_energy_map(torch.rand(1, 16, 16), torch.rand(3, 16, 16),
                                        boxes=torch.tensor([[4, 4, 9, 9]]), mask=mask, title="cat")
    assert axis.get_title() == "cat" and axis.images  # the blended heat map
    assert sum(isinstance(p, Rectangle) for p in axis.patches) == 1
    assert axis.collections  # the mask contour
    assert len(figure.axes) == 2  # and the energy's colorbar
    assert len(visualize_energy_map(torch.rand(1, 16, 16), torch.rand(3, 16, 16), show_colorbar=False)[0].axes) == 1
    with pytest.raises(ValueError, match="differ in size"):
        visualize_energy_map(torch.rand(1, 8, 8), torch.rand(3, 16, 16))


def test_an_overlay_does_not_depend_on_the_maps_scale():
    """A random model's map can be 1e-7 everywhere: drawn as the same map at scale 1, and without
    Captum's warning of a scale near zero."""
    energy, image = torch.rand(1, 16, 16), torch.rand(3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny = visualize_energy_map(energy * 1e-7, image)[1].images[-1].get_array()
    assert np.allclose(tiny, visualize_energy_map(energy, image)[1].images[-1].get_array())


def test_iteration_curves_highlight_the_target():
    model = seeded(VGGish())
    state = FSP(model).select(torch.rand(1, 3, 16, 16), target=2, updates=3)
    figure, axis = plot_fsp_iterations(state, 2, class_names=list("abcde"), others=3)
    target_line = [line for line in axis.lines if line.get_label() == "c (target)"]
    assert len(target_line) == 1 and target_line[0].get_color() == "tab:red"
    assert len(axis.lines) == 4 and len(target_line[0].get_xdata()) == state.outputs.shape[0]
    others = [line.get_color() for line in axis.lines if line is not target_line[0]]
    assert len(set(others)) == 3  # every other class has a colour of its own
    with pytest.raises(ValueError, match="outputs"):
        plot_fsp_iterations(state, 9)


def test_method_grid_has_one_row_per_image_and_one_column_per_method():
    maps = {"FSP": torch.rand(2, 1, 8, 8), "Saliency": torch.rand(2, 1, 8, 8)}
    figure, axes = compare_methods(torch.rand(2, 3, 8, 8), maps, row_titles=["a", "b"])
    assert axes.shape == (2, 3)
    assert [ax.get_title() for ax in axes[1]] == ["b", "FSP", "Saliency"]
    colorbar = [ax for ax in figure.axes if ax not in axes.flat]
    assert len(colorbar) == 1 and "percentile" in colorbar[0].get_ylabel()


def test_outline_legend_names_each_outline():
    figure, axis = plt.subplots()
    outline_legend(axis, {"box": {"color": "lime"}, "ground truth": {"color": "white", "linestyle": ":"}})
    assert [t.get_text() for t in axis.get_legend().get_texts()] == ["box", "ground truth"]


def test_top_neurons_and_channel_ranking():
    model = seeded(VGGish())
    x = torch.rand(1, 3, 16, 16)
    pipeline = FeedbackPipeline(model, model.features[3], resolve_config("paper", updates=2))
    figure, axes = visualize_top_neurons(pipeline, x, target=1, k=3)
    assert axes.shape == (1, 4) and all(ax.images for ax in axes[0])
    assert axes[0, 1].get_title().startswith("channel ")
    contribution = LayerFeedback(model, model.features[3]).attribute(x, 1, updates=2)
    figure, axis = plot_channel_ranking(contribution, k=5)
    heights = [bar.get_height() for bar in axis.patches]
    assert len(heights) == 5 and heights == sorted(heights, reverse=True)
