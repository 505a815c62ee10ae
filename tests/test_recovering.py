"""Feedback Recovering (Algorithm 1) and its relation to Guided Backpropagation."""

import torch
from captum.attr import GuidedBackprop
from nets import ResNetish, VGGish, seeded

from captum_feedback import FR, FeedbackRecovering


def test_fr_is_guided_backprop_where_every_gate_site_is_a_relu_or_a_disjoint_pool():
    """Both pass relu(grad) * 1[x > 0] through a ReLU. A 2x2/stride-2 max-pool sends each
    output's gradient to one input, the ReLU output that produced it, so FR's extra gate on
    the pool output is the same test again: nothing changes."""
    model = seeded(VGGish())
    x = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(
        FR(model).attribute(x, target=[0, 2, 4]), GuidedBackprop(model).attribute(x, target=[0, 2, 4])
    )


def test_fr_differs_from_guided_backprop_at_overlapping_pools():
    """A 3x3/stride-2 pool sums the gradients of several windows into one input: Guided
    Backprop rectifies the sum at the ReLU below, FR rectifies each window's part first."""
    model = seeded(ResNetish())
    x = torch.randn(2, 3, 16, 16)
    fr, gb = FR(model).attribute(x, target=1), GuidedBackprop(model).attribute(x, target=1)
    assert not torch.allclose(fr, gb)


def test_fr_is_not_class_specific_fsp_is():
    """Fig. 4: FR recovers the receptive field's pattern for any target."""
    from captum_feedback import FSP

    model = seeded(VGGish())
    x = torch.randn(1, 3, 16, 16)
    fr = FeedbackRecovering(model)
    cos = lambda a, b: torch.cosine_similarity(a.flatten(), b.flatten(), dim=0)  # noqa: E731
    fr_similarity = cos(fr.attribute(x, target=0), fr.attribute(x, target=3))
    fsp_similarity = cos(FSP(model).attribute(x, target=0), FSP(model).attribute(x, target=3))
    assert fr_similarity > fsp_similarity


def test_fr_batch_equals_per_sample_and_keeps_input_form():
    model = seeded(ResNetish())
    x = torch.randn(3, 3, 16, 16)
    batched = FR(model).attribute(x, target=[1, 0, 2])
    single = torch.cat([FR(model).attribute(x[i:i + 1], target=t) for i, t in enumerate([1, 0, 2])])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert isinstance(FR(model).attribute((x,), target=0), tuple)


def test_fr_keeps_a_units_cw_where_its_sign_agrees_with_a_signed_activation():
    """Algorithm 1's ``z = 1[sign(CW) * x > 0]`` at a Hardswish, whose outputs can be negative:
    a unit with a negative activation and a negative CW stays open, as one with both positive;
    the gated CW then goes on through the Hardswish's own derivative."""
    torch.manual_seed(0)
    first, act, last = torch.nn.Linear(6, 40), torch.nn.Hardswish(), torch.nn.Linear(40, 3)
    model = torch.nn.Sequential(first, act, last).eval()
    x = torch.randn(4, 6) * 3
    z = first(x).detach().requires_grad_()
    h = act(z)
    cw = last.weight[2].detach().expand_as(h)
    assert ((h < 0) & (cw < 0)).any() and ((h > 0) & (cw < 0)).any()
    (expected_z,) = torch.autograd.grad(h, z, cw * (torch.sign(cw) * h.detach() > 0))
    torch.testing.assert_close(FR(model).attribute(x, target=2), expected_z @ first.weight.detach())
