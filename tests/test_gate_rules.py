"""Your own gate rule as a Captum attribution: GatePolicyAttribution runs any GatePolicy."""

import pytest
import torch
from nets import VGGish, seeded

from captum_feedback import FR, Gate, GatePolicy, GatePolicyAttribution
from captum_feedback.core.recovering import RecoveringPolicy
from captum_feedback.core.selection import as_rule


def test_with_every_gate_open_it_is_the_plain_gradient():
    model = seeded(VGGish())
    x = torch.rand(3, 3, 16, 16)
    inputs = x.clone().requires_grad_()
    expected = torch.autograd.grad(model(inputs)[torch.arange(3), [0, 2, 4]].sum(), inputs)[0]
    assert torch.allclose(GatePolicyAttribution(model, GatePolicy()).attribute(x, target=[0, 2, 4]), expected)


def test_with_fr_s_rule_it_is_fr_and_a_forward_rule_changes_the_gradient():
    model = seeded(VGGish())
    x = torch.rand(2, 3, 16, 16)
    recovered = GatePolicyAttribution(model, RecoveringPolicy(as_rule("zero"))).attribute(x, target=1)
    assert torch.equal(recovered, FR(model).attribute(x, target=1))

    class ClosedBelowMean(GatePolicy):
        def gate(self, site, x):
            return Gate(x > x.mean()) if site.kind == "activation" else None

    gated = GatePolicyAttribution(model, ClosedBelowMean()).attribute(x, target=1)
    assert gated.shape == x.shape and not torch.allclose(gated, GatePolicyAttribution(model, GatePolicy())
                                                         .attribute(x, target=1))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_policy_that_passes_cws_through_gets_them_gated_by_the_engine_and_needs_no_signs_hook():
    model = seeded(VGGish())
    x = torch.rand(2, 3, 16, 16)

    class ClosedBelowMean(GatePolicy):
        def __init__(self, passes_through):
            self.passes_cws_through, self.seen = passes_through, []

        def gate(self, site, x):
            return Gate(x > x.mean()) if site.kind == "activation" else None

        def backward(self, site, cw):  # written before signs_into and signs_written existed
            self.seen.append(site.name)
            return cw

    through, plain = ClosedBelowMean(True), ClosedBelowMean(False)
    a = GatePolicyAttribution(model, through).attribute(x, target=1)
    b = GatePolicyAttribution(model, plain).attribute(x, target=1)
    assert torch.equal(a, b) and through.seen == plain.seen and through.seen


def test_a_policy_must_be_a_gate_policy():
    with pytest.raises(TypeError, match="policy must be a GatePolicy"):
        GatePolicyAttribution(seeded(VGGish()), lambda site, x: None)


def test_the_ungated_share_is_zero_when_every_path_has_a_gate_and_high_around_a_plain_skip():
    from torch import nn

    from captum_feedback import ungated_share
    from captum_feedback.app.commands import bypass_note

    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(ungated_share(seeded(VGGish()), x, target=1), torch.zeros(2))

    class Skip(nn.Module):  # a residual stream without activations, as in a transformer
        def __init__(self):
            super().__init__()
            self.block, self.head = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()), nn.Linear(3 * 256, 4)

        def forward(self, x):
            return self.head((x + 0.1 * self.block(x)).flatten(1))

    share = ungated_share(Skip().eval(), x, target=1)
    assert (share > 0.5).all() and (share < 1.5).all()
    assert "takes paths through no activation" in bypass_note(0.9) and bypass_note(0.2) == ""
