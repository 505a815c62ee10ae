"""Properties over random small ReLU / max-pool networks (hypothesis): whatever the net, batch,
layout and configuration, FSP and FR give finite input-shaped maps, a batch gives each sample's
own result (float64), the model is left as it was, and bad targets fail with the documented error."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_errors import assert_untouched, snapshot
from torch import nn

from captum_feedback import FR, FSP, PRESETS

CLASSES = 4


class Block(nn.Module):
    """conv, a ReLU (module, in-place module or functional), and maybe a 2x2 max-pool."""

    def __init__(self, c_in: int, c_out: int, relu: str, pool: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.relu = {"module": nn.ReLU(), "inplace": nn.ReLU(inplace=True), "functional": None}[relu]
        self.pool = nn.MaxPool2d(2) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = torch.relu(x) if self.relu is None else self.relu(x)
        return x if self.pool is None else self.pool(x)


@st.composite
def networks(draw):
    channels = [3] + draw(st.lists(st.integers(2, 6), min_size=1, max_size=3))
    blocks = [Block(a, b, draw(st.sampled_from(["module", "inplace", "functional"])), draw(st.booleans()))
              for a, b in zip(channels, channels[1:])]
    size = 8
    torch.manual_seed(draw(st.integers(0, 2**16)))
    net = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(channels[-1] * 4, CLASSES))
    return net.double().eval(), size


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(net_size=networks(), batch=st.integers(1, 3), channels_last=st.booleans(),
       config=st.sampled_from(sorted(PRESETS)), seed=st.integers(0, 2**16))
def test_any_small_net_gives_each_sample_its_own_finite_map_and_is_left_as_it_was(
        net_size, batch, channels_last, config, seed):
    net, size = net_size
    before = snapshot(net)
    x = torch.randn(batch, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    targets = [i % CLASSES for i in range(batch)]
    state = FSP(net).select(x, targets, config=config)
    recovered = FR(net).attribute(x, target=targets)
    for result in (state.attributions[0], recovered):
        assert result.shape == x.shape and torch.isfinite(result).all()
    for i in range(batch):
        single = FSP(net).select(x[i:i + 1], targets[i], config=config)
        torch.testing.assert_close(state.attributions[0][i:i + 1], single.attributions[0])
        for name, gates in single.gates.items():
            assert torch.equal(state.gates[name][i:i + 1], gates), name
        torch.testing.assert_close(recovered[i:i + 1], FR(net).attribute(x[i:i + 1], target=targets[i]))
    assert_untouched(net, before)


@settings(max_examples=20, deadline=None, database=None)
@given(net_size=networks(), target=st.integers(-3 * CLASSES, 3 * CLASSES), method=st.sampled_from([FSP, FR]))
def test_a_target_outside_the_outputs_is_a_value_error_and_leaves_no_trace(net_size, target, method):
    net, size = net_size
    before = snapshot(net)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    if -CLASSES <= target < CLASSES:
        assert method(net).attribute(x, target=target).shape == x.shape
    else:
        with pytest.raises(ValueError, match="out of range"):
            method(net).attribute(x, target=target)
    assert_untouched(net, before)
