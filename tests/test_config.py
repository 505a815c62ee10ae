"""One way to say each setting: a preset name or a ``FeedbackConfig`` of three groups, variants
through ``replace``, and ``updates=`` as the only per-call override, meaning FSP's gate updates
over every stage wherever it appears."""

from dataclasses import replace

import pytest
import torch
from nets import VGGish, seeded

from captum_feedback import (
    FSP,
    PRESETS,
    ExecutionSettings,
    FeedbackConfig,
    LayerFeedback,
    MapSettings,
    MeanRatio,
    SelectionSettings,
    Stage,
)
from captum_feedback.app.cli import build_parser
from captum_feedback.app.commands import config as command_config


def test_a_config_is_its_selection_map_and_execution_groups():
    config = FeedbackConfig(SelectionSettings(threshold=MeanRatio(1.0), linearize=False),
                            MapSettings(summation="activation"), ExecutionSettings(batch_invariant=True))
    assert config.selection.rule.threshold == MeanRatio(1.0) and not config.selection.linearize
    assert config.maps.summation == "activation" and config.execution.batch_invariant
    with pytest.raises(TypeError):
        FeedbackConfig(threshold="zero")
    with pytest.raises(TypeError, match="FeedbackConfig.selection must be a SelectionSettings"):
        FeedbackConfig(MapSettings())


def test_replace_changes_settings_of_any_group_by_name_and_nothing_else():
    base = PRESETS["released_code"]
    variant = base.replace(threshold=MeanRatio(2.0), site_normalization="sum", batch_invariant=True)
    assert variant.selection == replace(base.selection, threshold=MeanRatio(2.0))
    assert variant.maps == replace(base.maps, site_normalization="sum")
    assert variant.execution == ExecutionSettings(batch_invariant=True)
    assert base.replace() == base
    with pytest.raises(ValueError, match=r"Unknown settings \['iterations'\]"):
        base.replace(iterations=3)


@pytest.mark.parametrize("preset, updates, stages", [
    ("paper", 3, (Stage(1.0, 3),)),
    ("released_code", 2, PRESETS["released_code"].selection.stages),
    ("released_code", 4, (Stage(7 / 15, 1), Stage(1.0, 3))),
    ("default", 2, (Stage("head", 2),)),
])
def test_updates_count_every_stage_and_the_last_stage_makes_the_rest(preset, updates, stages):
    config = PRESETS[preset].replace(updates=updates)
    assert config.selection.stages == stages and config.selection.updates == updates


def test_the_per_call_updates_mean_the_same_in_fsp_layer_feedback_and_the_cli():
    model, x = seeded(VGGish()).eval(), torch.randn(2, 3, 16, 16)
    config = PRESETS["released_code"].replace(updates=3)
    state = FSP(model).select(x, [1, 2], config="released_code", updates=3)
    assert state.outputs.shape[0] == 4 and state.config == config
    assert torch.equal(state.attributions[0], FSP(model).attribute(x, [1, 2], config=config))
    layer = LayerFeedback(model, model.features[3])
    assert torch.equal(layer.attribute(x, [1, 2], config="released_code", updates=3),
                       layer.attribute(x, [1, 2], config=config))
    args = build_parser().parse_args(["explain", "cat.jpg", "--config", "released_code", "--updates", "3"])
    assert command_config(args) == config
