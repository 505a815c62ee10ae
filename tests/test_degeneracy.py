"""FSP says when its map is not FSP's: the gates change nothing, the gradient bypasses them, the
call falls back to an earlier pass's gates, or pruning removes the class. Each case warns once
per place with a FeedbackDegenerateWarning, and the state records what was measured."""

import warnings
from dataclasses import replace

import pytest
import torch
from torch import nn

from captum_feedback import FSP, ExecutionSettings, FeedbackConfig, MeanRatio, SelectionSettings, Stage
from captum_feedback.core.diagnosis import REASONS, FeedbackDegenerateWarning, degeneracies
from tests.nets import VGGish, seeded


def _calls(model, x, target, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = FSP(model).select(x, target, **kwargs)
    return state, [w for w in caught if issubclass(w.category, FeedbackDegenerateWarning)]


def _holding(state):
    return sorted(reason for reason, holds in degeneracies(state).items() if holds.any())


class Positive(nn.Module):
    """Every weight positive and inputs positive: every unit is on with a positive CW, so the
    zero threshold keeps them all."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        with torch.no_grad():
            for p in self.net.parameters():
                p.uniform_(0.1, 1.0)

    def forward(self, x):
        return self.net(x)


class Bypassed(nn.Module):
    """A residual block whose branch is scaled by 1e-6 (a random ConvNeXt's layer scale): the
    gradient passes the ReLU by the skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(x + 1e-6 * self.branch(x))


def test_a_model_whose_gates_keep_every_unit_warns_that_they_change_nothing():
    state, caught = _calls(Positive().eval(), torch.rand(2, 4) + 0.1, 1, config="paper")
    assert _holding(state) == ["unchanged"]
    assert [str(w.message) for w in caught] == [REASONS["unchanged"]]
    assert (state.map_change == 0).all() and (state.ungated_share == 0).all()


def test_a_gradient_that_passes_the_gates_by_a_skip_connection_is_called_a_bypass():
    torch.manual_seed(0)
    state, caught = _calls(Bypassed().eval(), torch.randn(3, 4), 0, config="paper")
    assert _holding(state) == ["bypassed"] and [str(w.message) for w in caught] == [REASONS["bypassed"]]
    assert (state.map_change < 1e-3).all() and (state.ungated_share > 0.99).all()


def test_a_model_whose_gates_make_the_map_class_specific_is_not_degenerate_and_costs_no_extra_pass():
    model = seeded(VGGish()).eval()
    calls = []
    model.features[0].register_forward_hook(lambda *_: calls.append(1))
    state, caught = _calls(model, torch.randn(2, 3, 16, 16), [1, 2], config="paper", updates=2)
    assert not caught and _holding(state) == []
    assert torch.isnan(state.map_change).all()  # the outputs moved: nothing more to measure
    assert len(calls) == 3  # the plain pass and two updates


def test_a_blank_final_map_warns_that_the_call_reverted():
    from tests.test_released_code import mlp

    config = FeedbackConfig(SelectionSettings(threshold=MeanRatio(1.0), linearize=False, stages=(Stage(1.0, 2),)))
    state, caught = _calls(mlp(14), torch.randn(1, 6), 1, config=config)
    assert state.reverted.all() and "reverted" in _holding(state)
    assert REASONS["reverted"] in [str(w.message) for w in caught]


def test_a_score_below_one_percent_of_the_plain_networks_is_a_collapse():
    state = FSP(seeded(VGGish()).eval()).select(torch.randn(2, 3, 16, 16), [1, 2], config="paper", updates=1)
    plain = torch.tensor([2.0, -1.0])
    collapsed = replace(state, target_scores=torch.stack([plain, torch.tensor([0.01, -50.0])]))
    assert degeneracies(collapsed)["collapsed"].tolist() == [True, False]  # a negative score cannot collapse
    assert degeneracies(replace(collapsed, target_scores=torch.stack([plain, plain])))["collapsed"].tolist() == \
        [False, False]


def test_a_score_or_map_that_is_not_finite_is_said():
    state = FSP(seeded(VGGish()).eval()).select(torch.randn(2, 3, 16, 16), [1, 2], config="paper", updates=1)
    scores = state.target_scores.clone()
    scores[1, 0] = float("nan")
    assert degeneracies(replace(state, target_scores=scores))["nonfinite"].tolist() == [True, False]
    attribution = state.attributions[0].clone()
    attribution[1, 0, 0, 0] = float("inf")
    assert degeneracies(replace(state, attributions=(attribution,)))["nonfinite"].tolist() == [False, True]
    assert not degeneracies(state)["nonfinite"].any()


def test_attribute_warns_once_per_place_with_the_default_filter():
    model = Positive().eval()
    x = torch.rand(2, 4) + 0.1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            FSP(model).attribute(x, 1, config="paper")
    assert len([w for w in caught if issubclass(w.category, FeedbackDegenerateWarning)]) == 1


def test_a_plain_run_and_the_dual_measure_nothing():
    model = seeded(VGGish()).eval()
    x = torch.randn(2, 3, 16, 16)
    assert FSP(model).ungated(x, [1, 2]).map_change is None
    assert FSP(model).select(x, [1, 2]).dual.map_change is None


@pytest.mark.parametrize("invariant", [False, True])
def test_each_sample_is_diagnosed_as_if_alone(invariant):
    """A batch of a degenerate and a normal sample: only the first is flagged, whether the batch
    runs at once or sample by sample (``batch_invariant``)."""
    model = Positive().eval()
    x = torch.tensor([[0.1, 1.0, 0.1, 1.0], [1.0, -3.0, 2.0, -1.0]])
    with torch.no_grad():  # unit 0 speaks against class 1: off for the first sample, on for the second
        model.net[0].weight[0] = torch.tensor([1.0, -1.0, 1.0, -1.0])
        model.net[2].weight[1, 0] = -1.0
    config = FeedbackConfig(SelectionSettings(stages=(Stage(1.0, 2),)),
                            execution=ExecutionSettings(batch_invariant=invariant))
    state = FSP(model).select(x, 1, config=config)
    assert degeneracies(state)["unchanged"].tolist() == [True, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_row_is_finite_without_nan_or_infinity_and_blank_when_every_value_is_zero(dtype):
    from captum_feedback.core._compat import blank_rows, finite_rows

    rows = torch.zeros(6, 50, dtype=dtype)
    rows[0, 7], rows[1, 7], rows[2, 7] = float("nan"), float("inf"), -float("inf")
    rows[3, 7] = torch.finfo(dtype).tiny / 4  # a subnormal is neither infinite nor zero
    rows[4, 7] = -1.0
    assert finite_rows(rows).tolist() == [False, False, False, True, True, True]
    assert blank_rows(rows).tolist() == [False, False, False, False, False, True]
