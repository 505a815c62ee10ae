"""Contrastive FSP, the default (issue #21): on a network with global average pooling, FSP for
the target and for its dual (the negated score) at the head, and a Summation Energy Map that
subtracts, site by site, where the evidence against the target lies from where its evidence
lies. Every number here is computed by hand."""

from dataclasses import replace

import pytest
import torch
from nets import VGGish, seeded
from torch import nn

from captum_feedback import FSP, PRESETS, FeedbackConfig, MeanRatio, SelectionSettings, Stage, summation_energy_map

CONTRASTIVE = PRESETS["default"].replace(summation_sites=None)
"""The default, summing both spatial sites of the tiny network."""


class Pooled(nn.Module):
    """``x -> relu -> 1x1 conv (identity) -> relu (the head) -> global average -> linear``: class 0
    is ``mean(channel 0) - mean(channel 1)``, class 1 its opposite."""

    def __init__(self) -> None:
        super().__init__()
        self.low = nn.ReLU()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)
        self.head = nn.ReLU()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.head(self.conv(self.low(x))).mean((2, 3)))


def picture(against=2.0):
    """One row of two locations: channel 0 (evidence for class 0) is 3 and 1, channel 1 (evidence
    against it) 0 and ``against``."""
    return torch.tensor([[[[3.0, 1.0]], [[0.0, against]]]])


def test_the_head_stage_gates_the_last_feature_map_for_the_target_and_its_dual():
    state = FSP(Pooled().eval()).select(picture(), target=0, config=CONTRASTIVE)
    # CWs at the head: +1/2 for channel 0, -1/2 for channel 1, at both locations
    assert state.gates["low"].all() and state.dual.gates["low"].all()  # below the head: open
    assert state.gates["head"].tolist() == [[[[True, True]], [[False, False]]]]
    assert state.dual.gates["head"].tolist() == [[[[False, False]], [[False, True]]]]  # 0 at the left
    assert state.target_scores[-1].item() == pytest.approx(2.0)  # (3 + 1) / 2 with channel 1 closed
    assert state.dual.target_scores[-1].item() == pytest.approx(1.0)  # -S with channel 0 closed


def test_the_map_is_where_the_evidence_for_is_denser_than_the_evidence_against():
    state = FSP(Pooled().eval()).select(picture(against=0.4), target=0, config=CONTRASTIVE)
    # Both sites: contributions for 1.5 and 0.5 (a distribution 0.75, 0.25); against 0 and 0.2
    # (0, 1). Difference per site 0.75 and -0.75, twice: rectified and normalized, (1, 0).
    torch.testing.assert_close(summation_energy_map(state)[0, 0, 0], torch.tensor([1.0, 0.0]))
    # Unnormalized, the weak evidence against does not cancel: (3 - 0, 1 - 0.4) = (3, 0.6)
    unweighted = CONTRASTIVE.replace(site_normalization="none", evidence_weighted=False)
    plain = summation_energy_map(replace(state, config=unweighted))
    torch.testing.assert_close(plain[0, 0, 0], torch.tensor([3.0, 0.6]) / torch.tensor([3.0, 0.6]).norm())


def test_the_contrast_is_weighted_by_the_targets_own_evidence():
    """Where the target's evidence is faint, a positive contrast is faint too."""
    x = torch.tensor([[[[3.0, 0.1, 0.0]], [[0.0, 0.0, 2.0]]]])
    state = FSP(Pooled().eval()).select(x, target=0, config=CONTRASTIVE)
    # At both sites the kept contributions are (3, 0.1, 0) / 3 for the target and (0, 0, 2) / 3
    # against it (the 1/3 of the mean cancels in each normalization).
    evidence, against = torch.tensor([3.0, 0.1, 0.0]), torch.tensor([0.0, 0.0, 2.0])
    contrast = (2 * (evidence / evidence.sum() - against / against.sum())).clamp(min=0)  # (1.94, 0.065, 0)
    weighted = contrast * 2 * evidence / evidence.max()  # times (2, 0.067, 0)
    torch.testing.assert_close(summation_energy_map(state)[0, 0, 0], weighted / weighted.norm())
    unweighted = summation_energy_map(replace(state, config=CONTRASTIVE.replace(evidence_weighted=False)))
    torch.testing.assert_close(unweighted[0, 0, 0], contrast / contrast.norm())


def test_evidence_weighting_needs_the_contrast():
    with pytest.raises(ValueError, match="contrastive=True"):
        PRESETS["default"].replace(contrastive=False)


def test_with_every_gate_open_the_map_nets_the_signed_contributions():
    state = FSP(Pooled().eval()).ungated(picture(against=0.4), target=0, config=CONTRASTIVE)
    assert all(g.all() for g in state.gates.values()) and all(g.all() for g in state.dual.gates.values())
    torch.testing.assert_close(state.dual.cws["head"], -state.cws["head"])
    torch.testing.assert_close(summation_energy_map(state)[0, 0, 0], torch.tensor([1.0, 0.0]))


def test_attribute_explains_the_target_alone():
    model = Pooled().eval()
    x = picture()
    gradient = FSP(model).attribute(x, target=0)
    state = FSP(model).select(x, target=0)
    torch.testing.assert_close(gradient, state.attributions[0])
    # d/dx of the kept evidence (3 + 1) / 2: 1/2 on channel 0, 0 on the closed channel 1
    torch.testing.assert_close(gradient, torch.tensor([[[[0.5, 0.5]], [[0.0, 0.0]]]]))


def test_a_batch_runs_its_targets_and_their_duals_together():
    model = Pooled().eval()
    x = torch.cat([picture(), picture(against=0.4)])
    both = FSP(model).select(x, target=[0, 1])
    for k, target in enumerate((0, 1)):
        alone = FSP(model).select(x[k:k + 1], target=target)
        for state, single in ((both, alone), (both.dual, alone.dual)):
            assert all(torch.equal(state.gates[n][k:k + 1], single.gates[n]) for n in single.gates)
            torch.testing.assert_close(state.target_scores[:, k:k + 1], single.target_scores)
    assert both.outputs.shape == (2, 2, 2) and both.dual.outputs.shape == (2, 2, 2)


def test_the_head_of_a_vgg_is_its_last_feature_map_and_the_fully_connected_relus():
    model = seeded(VGGish())
    config = FeedbackConfig(SelectionSettings(stages=(Stage("head", 1),), linearize=False, gate_pools=False))
    state = FSP(model).select(torch.rand(1, 3, 16, 16), target=2, config=config)
    gated = [name for name, gate in state.gates.items() if not gate.all()]
    assert gated and set(gated) <= {"features.6", "classifier.2"}
    assert all(state.gates[name].all() for name in ("features.1", "features.3"))


class Located(nn.Module):
    """``x (1, 2, 1, 2) -> relu (the head) -> flatten -> linear``: a fully connected head, whose
    class 0 weighs channel 0's two locations 4 and 1, channel 1's 2 and 1 (the CWs at the head)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.ReLU()
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[4.0, 1.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.head(x).flatten(1))


def test_where_the_cws_tell_locations_apart_the_default_keeps_twice_the_mean():
    state = FSP(Located().eval()).select(torch.ones(1, 2, 1, 2), target=0)
    # mean positive CW (4 + 1 + 2 + 1) / 4 = 2, tau = 4: only channel 0's first location stays open
    assert state.gates["head"].flatten().tolist() == [True, False, False, False]
    assert state.target_scores[-1].item() == pytest.approx(4.0)


def test_where_every_channel_cw_is_the_same_at_all_locations_the_default_keeps_alpha_above_zero():
    """Global average pooling: a ratio would rank channels, not places (the tiny network's head
    above keeps its weak channel 0 location too, which twice the mean would close)."""
    x = torch.tensor([[[[3.0, 1.0]], [[0.0, 2.0]]]])
    default = FSP(Pooled().eval()).select(x, target=0)
    zero = FSP(Pooled().eval()).select(x, target=0, config=PRESETS["default"].replace(threshold="zero"))
    assert all(torch.equal(default.gates[n], zero.gates[n]) for n in zero.gates)
    assert default.gates["head"].tolist() == [[[[True, True]], [[False, False]]]]


@pytest.mark.parametrize("positive, located", [
    ([[[[0.5, 0.5]], [[0.0, 0.0]]]], False),        # (B, C, H, W), constant per channel
    ([[[[0.5, 0.0]], [[0.2, 0.2]]]], False),        # a closed or inactive unit (0) is left out
    ([[[[0.5, 0.2], [0.5, 0.2]]]], False),          # channels last (B, H, W, C), constant per channel
    ([[[[0.5, 0.25]], [[0.1, 0.1]]]], True),        # channel 0 differs between its locations
    ([[0.5, 0.25, 0.0]], False),                    # (B, n): no locations
])
def test_located_only_applies_the_ratio_where_cws_differ_between_locations(positive, located):
    positive = torch.tensor(positive)
    tau = MeanRatio(2.0, located_only=True).tau(positive).flatten()
    mean = positive.sum() / (positive > 0).sum()
    expected = 2 * mean if located else torch.finfo(torch.float32).tiny
    torch.testing.assert_close(tau, torch.full((1,), float(expected)))


def test_a_stage_names_a_share_or_the_head():
    assert Stage("head").sites == "head"
    with pytest.raises(ValueError, match="'head'"):
        Stage("top")


class Negated(nn.Module):
    """The model with its output negated: FSP of its target is FSP of the original's dual."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return -self.model(x)


@pytest.mark.parametrize("config", [PRESETS["default"], PRESETS["paper"].replace(contrastive=True),
                                    PRESETS["default"].replace(stages=(Stage("head", 3),))],
                         ids=["default", "paper-contrastive", "head-three-updates"])
def test_the_dual_shares_the_first_pass_and_equals_fsp_of_the_negated_score(config):
    """The dual's first pass is the target's with the CWs negated (every gate is open), so it is
    not run again; what follows must equal FSP run on the negated model from scratch."""
    model = seeded(VGGish())
    x = torch.rand(3, 3, 16, 16)
    state = FSP(model).select(x, target=[0, 1, 2], config=config, keep_cws=True)
    single = config.replace(contrastive=False, evidence_weighted=False)
    alone = FSP(Negated(model).eval()).select(x, target=[0, 1, 2], config=single, keep_cws=True)
    assert {f"model.{name}" for name in state.dual.gates} == set(alone.gates)
    for name, gate in state.dual.gates.items():
        assert torch.equal(gate, alone.gates[f"model.{name}"]), name
        torch.testing.assert_close(state.dual.cws[name], alone.cws[f"model.{name}"])
    torch.testing.assert_close(state.dual.target_scores, alone.target_scores)
    torch.testing.assert_close(state.dual.attributions, alone.attributions)
    torch.testing.assert_close(state.dual.outputs, -alone.outputs)


def test_a_run_whose_samples_all_converge_early_keeps_what_its_map_needs():
    """Every sample at a fixed point before the last update: that pass is the last, and its
    site outputs and the dual's CWs of the summed sites are kept all the same."""
    model = seeded(VGGish())
    x = torch.rand(2, 3, 16, 16)
    config = PRESETS["default"].replace(stages=(Stage("head", 30),))
    summed = FSP(model).select(x, target=[0, 1], config=config)
    assert summed.converged.all() and summed.dual.converged.all() and summed.updates.max() < 30
    assert list(summed.site_outputs) == list(summed.dual.site_outputs) == ["features.6"]
    every = FSP(model).select(x, target=[0, 1], config=config, keep_cws=True)
    torch.testing.assert_close(summation_energy_map(summed), summation_energy_map(every))


def test_select_keeps_the_cws_of_the_summed_sites_unless_asked_for_all():
    model = seeded(VGGish())
    x = torch.rand(2, 3, 16, 16)
    summed = FSP(model).select(x, target=1)
    every = FSP(model).select(x, target=1, keep_cws=True)
    assert list(summed.cws) == list(summed.site_outputs) == summed.summation_sites() == ["features.6"]
    assert list(summed.dual.cws) == ["features.6"]
    # the dual's last backward pass ends at the summed site: its map needs no input gradient
    assert summed.dual.attributions == () and len(every.dual.attributions) == 1
    torch.testing.assert_close(summed.dual.cws["features.6"], every.dual.cws["features.6"])
    assert set(every.cws) == set(every.gates)
    torch.testing.assert_close(summation_energy_map(summed), summation_energy_map(every))
    assert not FSP(model).select(x, target=1, keep_cws=False).cws
    with pytest.raises(ValueError, match="keep_cws=True"):
        summation_energy_map(summed, sites=["features.1"])
    with pytest.raises(ValueError, match="keep_cws must be one of"):
        FSP(model).select(x, target=1, keep_cws="all")



def _grads_reaching(model: nn.Module) -> list:
    """Counts the gradients that reach the model's first convolution's input, pass by pass."""
    reached = []

    def watch(_module, inputs):
        if inputs[0].requires_grad:
            inputs[0].register_hook(lambda grad: reached.append(1))

    model.features[0].register_forward_pre_hook(watch)
    return reached


@pytest.mark.parametrize("config", ["default", "paper", "released_code"])
@pytest.mark.parametrize("keep_cws", ["summed", True])
def test_a_state_without_attributions_holds_the_same_gates_cws_and_map(config, keep_cws):
    model = seeded(VGGish())
    x = torch.rand(2, 3, 16, 16)
    full = FSP(model).select(x, target=[1, 3], config=config, keep_cws=keep_cws)
    light = FSP(model).select(x, target=[1, 3], config=config, keep_cws=keep_cws, attributions=False)
    assert light.attributions == () and light.map_change is None and light.ungated_share is None
    assert light.input_size == full.input_size == (16, 16)
    for ours, theirs in ((light, full), (light.dual, full.dual)) if full.dual is not None else ((light, full),):
        assert ours.gates.keys() == theirs.gates.keys() and ours.cws.keys() == theirs.cws.keys()
        for name in theirs.gates:
            assert torch.equal(ours.gates[name], theirs.gates[name]), name
        for name in theirs.cws:
            assert torch.equal(ours.cws[name], theirs.cws[name]), name
            assert torch.equal(ours.site_outputs[name], theirs.site_outputs[name]), name
        assert torch.equal(ours.outputs, theirs.outputs)
    assert torch.equal(summation_energy_map(light), summation_energy_map(full))


def test_without_attributions_the_last_backward_pass_stops_above_the_inputs():
    """The default's updates end at the head; its last pass goes to the inputs only for the
    attributions: the summed site (the last feature map) is where it stops without them."""
    model = seeded(VGGish())
    x = torch.rand(1, 3, 16, 16)
    reached = _grads_reaching(model)
    FSP(model).select(x, target=1)
    assert reached  # the target's last pass (and a diagnosis pass, where the outputs did not change)
    reached.clear()
    FSP(model).select(x, target=1, attributions=False)
    assert reached == []


def test_a_state_that_keeps_nothing_is_refused():
    model = seeded(VGGish())
    with pytest.raises(ValueError, match="keep nothing"):
        FSP(model).select(torch.rand(1, 3, 16, 16), target=1, keep_cws=False, attributions=False)


def test_without_attributions_the_tapped_layers_keep_their_outputs_and_cws():
    model = seeded(VGGish())
    x = torch.rand(2, 3, 16, 16)
    full = FSP(model).select(x, target=[0, 1], layers=(model.features[3],))
    light = FSP(model).select(x, target=[0, 1], layers=(model.features[3],), attributions=False, keep_cws=False)
    assert light.attributions == () and not light.cws
    assert torch.equal(light.layer_outputs["features.3"], full.layer_outputs["features.3"])
    assert torch.equal(light.layer_cws["features.3"], full.layer_cws["features.3"])
