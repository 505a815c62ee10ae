"""The authors' released code as a specification (``caochunshui/FeedbackCNN-demo``):
``relu_layer.cu``'s FSP mode, ``FSP_SumEnergy.m``'s two stages, ``drop_edge_pixels``, and what
each configuration guarantees."""


import pytest
import torch
from nets import VGGish, seeded
from test_errors import assert_untouched, snapshot
from torch import nn

from captum_feedback import FSP, PRESETS, FeedbackConfig, FeedbackPipeline, MeanRatio, SelectionSettings, Stage
from captum_feedback.core.selection import Computed, Constant, SelectionRule, Zero, as_rule


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                         nn.Linear(12, 4)).eval()


def caffe_fsp(model: nn.Sequential, x: torch.Tensor, target: int, ratio: float, schedule):
    """relu_layer.cu, bp_mode 2, literally, one sample: each update is one forward pass with the
    gates, one backward pass from the target, and at each ReLU of the update's layers
    ``gate = (bottom_diff >= ratio * mean(positive bottom_diff))`` where ``bottom_diff`` is the
    gated ReLU's input gradient. Where no ``bottom_diff`` is positive (Caffe: 0 / 0) the gates stay.
    Returns the gates that pass a unit in the final forward pass (open and active)."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    gates = [torch.ones(lin.out_features) for lin in linears[:-1]]
    for layers in schedule:
        h, outs = x[0], []
        for lin, gate in zip(linears[:-1], gates):
            outs.append((gate * torch.relu(lin(h))).detach().requires_grad_())
            h = outs[-1]
        score = linears[-1](h)[target]
        diffs = []
        for k in range(len(outs) - 1, -1, -1):  # top-down: dS/d(out_k) with the gates above
            grad = torch.autograd.grad(score, outs[k], retain_graph=True)[0] if k == len(outs) - 1 else \
                (linears[k + 1].weight.t() @ diffs[-1])
            diffs.append(gates[k] * grad * (outs[k] > 0))  # bottom_diff
        diffs = diffs[::-1]
        for k in layers:
            positive = diffs[k].clamp(min=0)
            if (positive > 0).any():
                gates[k] = (diffs[k] >= ratio * positive.sum() / (positive > 0).sum()).float()
    h, passing = x[0], []
    for lin, gate in zip(linears[:-1], gates):
        h = gate * torch.relu(lin(h))
        passing.append(h > 0)
    return passing


def gated_input_gradient(linears, gates, x, target):
    x = x.clone().requires_grad_()
    h = x
    for lin, gate in zip(linears[:-1], gates):
        h = gate * torch.relu(lin(h))
    return torch.autograd.grad(linears[-1](h)[target], x)[0]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ratio", [0.5, 1.0])
def test_the_mean_ratio_rule_equals_the_released_relu_layer(seed, ratio):
    model = mlp(seed)
    x = torch.randn(1, 6)
    config = FeedbackConfig(SelectionSettings(threshold=MeanRatio(ratio), linearize=False, stages=(Stage(1.0, 2),)))
    state = FSP(model).select(x, target=1, config=config)
    expected = caffe_fsp(model, x, 1, ratio, [(0, 1, 2), (0, 1, 2)])
    for name, gates in zip(("1", "3", "5"), expected):
        assert torch.equal(state.gates[name][0], gates), name


@pytest.mark.parametrize("seed", range(4))
def test_two_stages_update_the_top_sites_then_all_of_them(seed):
    """FSP_SumEnergy.m: one update of the top layers, then one of all layers."""
    model = mlp(seed)
    x = torch.randn(1, 6)
    config = FeedbackConfig(SelectionSettings(threshold=MeanRatio(1.0),
                                              linearize=False, stages=(Stage(2 / 3, 1), Stage(1.0, 1))))
    state = FSP(model).select(x, target=2, config=config)
    expected = caffe_fsp(model, x, 2, 1.0, [(1, 2), (0, 1, 2)])
    for name, gates in zip(("1", "3", "5"), expected):
        assert torch.equal(state.gates[name][0], gates), name


@pytest.mark.parametrize("config", ["default", "released_code", PRESETS["released_code"].replace(linearize=True)],
                         ids=["default", "released_code", "released_code-linearized"])
def test_a_batch_equals_one_call_per_sample(config):
    model = seeded(VGGish())
    x, targets = torch.randn(3, 3, 16, 16), [0, 2, 4]
    batched = FSP(model).select(x, target=targets, config=config)
    for i, target in enumerate(targets):
        single = FSP(model).select(x[i:i + 1], target=target, config=config)
        for name, gates in single.gates.items():
            assert torch.equal(batched.gates[name][i:i + 1], gates), name
        torch.testing.assert_close(batched.attributions[0][i:i + 1], single.attributions[0])


@pytest.mark.parametrize("config", sorted(PRESETS))
def test_every_preset_leaves_the_model_as_it_was_on_success_and_on_error(config):
    model = seeded(VGGish()).train()
    before = snapshot(model)
    maps = FeedbackPipeline(model.eval(), model.features[3], config).energy_maps(torch.randn(2, 3, 16, 16), [1, 2])
    assert torch.isfinite(maps.summation_fsp_fr).all()
    model.train()
    with pytest.raises(ValueError, match="entries for a batch"):
        FeedbackPipeline(model, model.features[3], config).energy_maps(torch.randn(2, 3, 16, 16), [1, 2, 3])
    assert_untouched(model, before)


def test_pruning_gates_only_close():
    """What the released rule keeps instead of the ascent guarantee: each update's open units
    lie within the last update's."""
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    previous = None
    for updates in (1, 2, 3, 4):
        config = PRESETS["released_code"].replace(stages=(Stage(1.0, updates),))
        state = FSP(model).select(x, target=1, config=config)
        if previous is not None:
            for name, gates in state.gates.items():
                assert not (gates & ~previous.gates[name]).any(), (updates, name)
        previous = state


def test_the_mean_ratio_rule_never_closes_a_whole_site():
    """At least the largest CW reaches the mean; where no open unit has a positive CW the site
    keeps its gates (the released code divides 0 by 0 there and blanks the map)."""
    rule = SelectionRule(MeanRatio(1.0))
    cw = torch.tensor([[0.5, 2.0, -1.0, 3.0], [-1.0, -2.0, 0.0, 4.0], [-1.0, -2.0, 3.0, 0.0]])
    open_units = torch.tensor([[True, True, True, False], [True, True, True, False], [True, True, False, True]])
    assert rule.selector(cw, open_units).tolist() == [[0, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 1]]
    # Sample 0: tau = 1.25, the mean of the open positive CWs 0.5 and 2, and the closed unit
    # stays closed; sample 1: no open positive CW, so its open units stay open; sample 2:
    # likewise, its positive CW belongs to a closed unit.


def test_a_stage_leaves_the_sites_below_it_open():
    model = seeded(VGGish())
    config = FeedbackConfig(SelectionSettings(threshold=MeanRatio(1.0),
                                              linearize=False, gate_pools=False, stages=(Stage(0.5, 1),)))
    state = FSP(model).select(torch.randn(2, 3, 16, 16), target=1, config=config)
    relus = [name for name, kind in state.site_kinds.items() if kind == "activation"]  # 4 ReLUs
    assert all(state.gates[name].all() for name in relus[:2])
    assert not any(state.gates[name].all() for name in relus[2:])


def test_without_pool_gates_every_pool_stays_open():
    model = seeded(VGGish())
    state = FSP(model).select(torch.randn(2, 3, 16, 16), target=1, config="released_code")
    pools = [name for name, kind in state.site_kinds.items() if kind == "pool"]
    assert pools and all(state.gates[name].all() for name in pools)


def test_dropped_edges_close_the_outermost_row_and_column_of_every_map():
    model = seeded(VGGish())
    config = PRESETS["paper"].replace(drop_edges=True, stages=(Stage(1.0, 2),))
    state = FSP(model).select(torch.randn(2, 3, 16, 16), target=1, config=config)
    for name, gates in state.gates.items():
        if gates.dim() == 4:
            edges = torch.ones(gates.shape[-2:], dtype=torch.bool)
            edges[1:-1, 1:-1] = False
            assert not gates[..., edges].any(), name
    selector = SelectionRule("zero", drop_edges=True).selector(torch.ones(1, 1, 4, 4))
    assert selector[0, 0].tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("stages", [(Stage(0.5, 2), Stage(1.0, 3)), (Stage(1.0, 5),)])
def test_the_zero_threshold_keeps_the_ascent_guarantee_with_stages(stages):
    config = PRESETS["paper"].replace(stages=stages)
    assert config.selection.guarantees_ascent and not PRESETS["released_code"].selection.guarantees_ascent
    model = seeded(VGGish(), 3)
    state = FSP(model).select(torch.randn(3, 3, 16, 16), target=[0, 2, 4], config=config)
    steps = state.target_scores[1:] - state.target_scores[:-1]
    assert (steps >= -1e-4 * state.target_scores.abs().max()).all()


CWS = torch.tensor([[3.0, 1.0, -2.0, 0.5, -0.1]])


@pytest.mark.parametrize("threshold, expected", [
    ("zero", [1, 1, -1, 1, -1]),                                   # sign(alpha)
    (0.75, [1, 1, -1, 0, 0]),                                      # |alpha| > 0.75
    (lambda cw: cw.abs().mean(1), [1, 0, -1, 0, 0]),               # tau = mean |alpha| = 1.32
    (-5.0, [1, 1, -1, 1, -1]),                                     # raised to zero
])
def test_each_following_rule_on_a_hand_computed_example(threshold, expected):
    assert as_rule(threshold).selector(CWS).tolist() == [expected]


@pytest.mark.parametrize("threshold, open_units, expected", [
    (MeanRatio(1.0), None, [1, 0, -1, 0, 0]),          # mean positive CW (3 + 1 + 0.5) / 3 = 1.5
    (MeanRatio(0.5), None, [1, 1, -1, 0, 0]),          # tau 0.75
    (MeanRatio(1.0), [0, 1, 1, 1, 1], [0, 1, -1, 0, 0]),  # unit 0 closed: (1 + 0.5) / 2 = 0.75
    (MeanRatio(4.0), [0, 1, 1, 1, 0], [0, 1, 1, 1, 0]),    # no open CW reaches 3: the site keeps its gates
])
def test_each_pruning_rule_on_a_hand_computed_example(threshold, open_units, expected):
    opened = None if open_units is None else torch.tensor([open_units], dtype=torch.bool)
    assert as_rule(threshold).selector(CWS, opened).tolist() == [expected]


def test_the_text_rule_mean_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="almost always negative.*MeanRatio"):
        as_rule("mean")


def test_every_threshold_form_becomes_one_typed_validated_rule():
    def tau(cw):
        return cw.abs().mean(1)

    for given, rule in [("zero", Zero()), (Zero(), Zero()), (0.75, Constant(0.75)), (2, Constant(2)),
                        (tau, Computed(tau)), (MeanRatio(1.0), MeanRatio(1.0))]:
        assert as_rule(given) == SelectionRule(given) == SelectionRule(rule)
        assert as_rule(given).threshold == rule
    assert as_rule(MeanRatio(1.0)).prunes_only and not as_rule(0.75).prunes_only
    assert as_rule("zero").is_zero and not as_rule(0.0).is_zero  # only the named rule keeps the guarantee
    with pytest.raises(ValueError, match=r"another name of MeanRatio\(1.0\)"):
        as_rule("positive_mean")
    assert as_rule(MeanRatio(0.1), drop_edges=True).drop_edges
    for bad, error in [("median", ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                       (True, TypeError), ([1], TypeError)]:
        with pytest.raises(error):
            as_rule(bad)
    for ratio in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="finite ratio >= 0"):
            MeanRatio(ratio)


def test_presets_and_configs_are_validated_once():
    assert PRESETS["released_code"].selection.updates == 2 and PRESETS["paper"].selection.updates == 5
    with pytest.raises(ValueError, match="Unknown configuration"):
        FSP(seeded(VGGish())).attribute(torch.randn(1, 3, 16, 16), target=0, config="caffe")
    for bad in [dict(stages=()), dict(stages=((0.5, 1),)), dict(summation="gradients"),
                dict(summation_sites=(0.8, 0.2)), dict(neuron_ratio=-1.0), dict(fr_threshold="median"),
                dict(evidence_weighted=True), dict(iterations=3)]:
        with pytest.raises(ValueError):
            FeedbackConfig().replace(**bad)
    with pytest.raises(TypeError, match="FeedbackConfig.maps must be a MapSettings"):
        FeedbackConfig(maps=SelectionSettings())
    for sites, updates in [(0.0, 1), (1.5, 1), (0.5, 0), (0.5, 1.5)]:
        with pytest.raises(ValueError, match="Stage"):
            Stage(sites, updates)


def test_a_sample_whose_final_gates_blank_its_map_takes_its_gradient_from_the_latest_pass_with_one():
    """Pruning can close every path from the inputs to the target (here the second update of
    ratio 1 on this MLP): the input gradient is then taken under the gates of the pass before,
    while the state keeps the final gates (the released code's) for every other map."""
    model = mlp(14)
    x = torch.randn(1, 6)
    config = FeedbackConfig(SelectionSettings(threshold=MeanRatio(1.0), linearize=False, stages=(Stage(1.0, 2),)))
    state = FSP(model).select(x, target=1, config=config)
    once = FSP(model).select(x, target=1, config=config.replace(stages=(Stage(1.0, 1),)))
    assert state.reverted.tolist() == [True] and once.reverted.tolist() == [False]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    final = [state.gates[name][0].float() for name in ("1", "3", "5")]
    assert not gated_input_gradient(linears, final, x[0], 1).any()  # the final gates: a blank map
    torch.testing.assert_close(state.attributions[0], once.attributions[0])
    assert state.attributions[0].abs().sum() > 0
    others = torch.randn(3, 6)
    batch = FSP(model).select(torch.cat([others, x]), target=1, config=config)
    for i, row in enumerate(others):
        single = FSP(model).select(row[None], target=1, config=config)
        assert batch.reverted[i] == single.reverted[0]
        torch.testing.assert_close(batch.attributions[0][i:i + 1], single.attributions[0])
        for name, gates in single.gates.items():
            assert torch.equal(batch.gates[name][i:i + 1], gates), name
    assert batch.reverted[-1]
    torch.testing.assert_close(batch.attributions[0][-1:], state.attributions[0])
    for name, gates in state.gates.items():
        assert torch.equal(batch.gates[name][-1:], gates), name


def test_the_fallback_also_gives_the_tapped_layers_of_the_latest_pass_with_a_map():
    """FSP-FR and LayerFeedback read the tapped layer's outputs and CWs: for a sample whose final
    gates blank its map, those come from the same earlier gates as its input gradient."""
    model = mlp(14)
    x = torch.randn(1, 6)
    config = FeedbackConfig(SelectionSettings(threshold=MeanRatio(1.0), linearize=False, stages=(Stage(1.0, 2),)))
    state = FeedbackPipeline(model, model[3], config).select(x, target=1)
    once = FeedbackPipeline(model, model[3], config.replace(stages=(Stage(1.0, 1),))).select(x, target=1)
    assert state.reverted.tolist() == [True]
    torch.testing.assert_close(state.layer_outputs["3"], once.layer_outputs["3"])
    torch.testing.assert_close(state.layer_cws["3"], once.layer_cws["3"])
    assert FeedbackPipeline(model, model[3], config).kept_neurons(state).any()
