"""Feedback Selective Pruning (Algorithm 2) as a Captum attribution."""


import pytest
import torch
import torchvision
from captum.attr import Saliency
from nets import FunctionalVGGish, ResNetish, VGGish, seeded
from torch import nn

from captum_feedback import FSP, PRESETS, FeedbackSelectivePruning, FeedbackState, MeanRatio, Stage


def hand_net() -> nn.Sequential:
    """x -> identity -> ReLU -> S = x1 - x2 + 2 x3, worked out by hand below."""
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(3))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0, 2.0]]))
    return net.eval()


def test_hand_worked_gates_and_attribution():
    # h = (1, 2, -1), ReLU -> (1, 2, 0), CWs alpha = (1, -1, 2): FSP keeps only unit 1
    # (unit 2 speaks against S, unit 3 is inactive), so S rises from -1 to 1 and the
    # attribution is the first row of W1 alone, where the plain gradient is (1, -1, 0).
    x = torch.tensor([[1.0, 2.0, -1.0]])
    state = FSP(hand_net()).select(x, updates=3, config="paper", keep_cws=True)
    assert state.gates["1"].tolist() == [[True, False, False]]
    torch.testing.assert_close(state.cws["1"], torch.tensor([[1.0, -1.0, 2.0]]))
    assert state.target_scores[:, 0].tolist() == [-1.0, 1.0, 1.0, 1.0]
    torch.testing.assert_close(state.attributions[0], torch.tensor([[1.0, 0.0, 0.0]]))
    torch.testing.assert_close(Saliency(hand_net()).attribute(x, abs=False), torch.tensor([[1.0, -1.0, 0.0]]))
    assert state.updates.tolist() == [1] and state.converged.tolist() == [True]


def reference_sweep(linears, x, target, iterations):
    """Algorithm 2 literally: layer by layer from the bottom, the CW of each layer recomputed
    by its own backward pass after the layers below it were updated."""
    with torch.no_grad():
        masks, h = [], x
        for lin in linears[:-1]:
            pre = lin(h)
            masks.append(pre > 0)
            h = pre * masks[-1]
    gates = [torch.ones_like(m) for m in masks]

    def forward_from(layer, h):
        for k in range(layer, len(masks)):
            h = linears[k](h) * masks[k] * gates[k] if k > layer else h
        return linears[-1](h)[:, target].sum()

    for _ in range(iterations):
        h = x
        for layer in range(len(masks)):
            y = linears[layer](h) * masks[layer]  # frozen ReLU, new gates below
            leaf = (y * gates[layer]).detach().requires_grad_()
            cw = torch.autograd.grad(forward_from(layer, leaf), leaf)[0]
            gates[layer] = (cw * y) > 0  # the unit's contribution alpha * x is positive
            h = y * gates[layer]
    return gates


@pytest.mark.parametrize("seed", range(4))
def test_one_backward_per_update_equals_the_bottom_up_sweep(seed):
    torch.manual_seed(seed)
    linears = [nn.Linear(6, 12), nn.Linear(12, 12), nn.Linear(12, 12), nn.Linear(12, 4)]
    model = nn.Sequential(linears[0], nn.ReLU(), linears[1], nn.ReLU(), linears[2], nn.ReLU(), linears[3]).eval()
    x = torch.randn(1, 6)
    for iterations in (1, 2, 4):
        expected = reference_sweep(linears, x, target=2, iterations=iterations)
        state = FSP(model).select(x, target=2, updates=iterations, config="paper")
        for name, gates in zip(("1", "3", "5"), expected):
            assert torch.equal(state.gates[name], gates), (iterations, name)


def monotone(scores: torch.Tensor) -> bool:
    steps = scores[1:] - scores[:-1]
    return bool((steps >= -1e-4 * scores.abs().max().clamp(min=1)).all())


@pytest.mark.parametrize("make", [VGGish, ResNetish], ids=["vgg-style", "resnet-style"])
@pytest.mark.parametrize("seed", range(5))
def test_target_score_never_decreases_over_linearized_updates(make, seed):
    """Sec. 4.1: in the linearized network every update is a greedy ascent step."""
    model = seeded(make(), seed)
    x = torch.randn(3, 3, 16, 16)
    state = FSP(model).select(x, target=[0, 2, 4], updates=8, config="paper")
    for sample in range(3):
        assert monotone(state.target_scores[:, sample]), state.target_scores[:, sample]
    assert (state.target_scores[-1] > state.target_scores[0]).all()


def test_target_score_never_decreases_on_torchvision_resnet18():
    model = torchvision.models.resnet18(weights=None).eval()
    state = FSP(model).select(torch.randn(2, 3, 32, 32), target=[3, 7], updates=5, config="paper")
    for sample in range(2):
        assert monotone(state.target_scores[:, sample])


def test_select_records_the_full_output_of_every_pass_for_fig6():
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    state = FSP(model).select(x, target=1, updates=4, config="paper", keep_cws=True)
    assert isinstance(state, FeedbackState)
    assert state.outputs.shape == (5, 2, 5)
    torch.testing.assert_close(state.outputs[0], model(x))
    torch.testing.assert_close(state.target_scores, state.outputs[:, :, 1])
    assert set(state.gates) == set(state.cws) == set(state.site_kinds)
    assert all(g.dtype == torch.bool for g in state.gates.values())


def test_a_unit_off_in_the_first_pass_stays_closed_where_opening_it_would_raise_the_score():
    # h = (1, -1), ReLU -> (1, 0), S = y1 - y2. Unit 2 has alpha = -1 and x = -1, so
    # alpha * x > 0; but the linearized ReLU keeps its first-pass on-states (Sec. 3.3), and a
    # gate only ever closes units within them.
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0]]))
    state = FSP(net.eval()).select(torch.tensor([[1.0, -1.0]]), updates=3, config="paper")
    assert state.gates["1"].tolist() == [[True, False]]
    assert state.target_scores[:, 0].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_updates_stop_per_sample_at_a_fixed_point():
    state = FSP(hand_net()).select(torch.tensor([[1.0, 2.0, -1.0], [3.0, -1.0, 1.0]]), updates=6, config="paper")
    assert state.converged.all()
    assert (state.updates <= 2).all()
    torch.testing.assert_close(state.outputs[-1], state.outputs[-2])


@pytest.mark.parametrize("make", [VGGish, ResNetish])
def test_samples_that_stop_early_keep_their_gates_while_the_batch_goes_on(make):
    model = seeded(make())
    torch.manual_seed(1)
    x, targets = torch.randn(4, 3, 16, 16), [4, 0, 2, 1]
    batched = FSP(model).select(x, target=targets, updates=30, config="paper")
    assert len(set(batched.updates.tolist())) > 1  # the samples stop at different updates
    for i, target in enumerate(targets):
        single = FSP(model).select(x[i : i + 1], target=target, updates=30, config="paper")
        assert single.updates.item() == batched.updates[i].item()
        for name, gates in single.gates.items():
            assert torch.equal(gates[0], batched.gates[name][i]), name
        torch.testing.assert_close(single.attributions[0][0], batched.attributions[0][i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("make", [VGGish, ResNetish])
def test_a_batch_with_a_list_of_targets_equals_one_call_per_sample(make):
    model = seeded(make())
    x = torch.randn(3, 3, 16, 16)
    targets = [4, 0, 2]
    batched = FSP(model).attribute(x, target=targets)
    single = torch.cat([FSP(model).attribute(x[i:i + 1], target=t) for i, t in enumerate(targets)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_functional_relu_model_equals_the_module_model():
    modules = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(
        FSP(FunctionalVGGish(modules)).attribute(x, target=3), FSP(modules).attribute(x, target=3)
    )


@pytest.mark.parametrize(
    "target, expected",
    [(2, [2, 2]), ((2,), [2, 2]), (torch.tensor(2), [2, 2]), (torch.tensor([1, 3]), [1, 3]), ([1, 3], [1, 3]),
     ([(1,), (3,)], [1, 3])],
)
def test_every_captum_target_form(target, expected):
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    reference = torch.cat([FSP(model).attribute(x[i:i + 1], target=t) for i, t in enumerate(expected)])
    torch.testing.assert_close(FSP(model).attribute(x, target=target), reference, atol=1e-5, rtol=1e-4)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x1, x2, scale, shift=0.0):
        return self.head(torch.relu(self.a(x1) + scale * self.b(x2))) + shift


def test_tuple_inputs_and_additional_forward_args_work_like_captum():
    model = seeded(TwoInputs())
    x1, x2 = torch.randn(2, 4), torch.randn(2, 4)
    attribution = FSP(model).attribute((x1, x2), target=1, additional_forward_args=(2.0, 1.0))
    assert isinstance(attribution, tuple) and [a.shape for a in attribution] == [x1.shape, x2.shape]
    scaled = FSP(model).attribute((x1, x2), target=1, additional_forward_args=0.0)
    torch.testing.assert_close(scaled[1], torch.zeros_like(x2))


def test_batch_invariant_runs_each_sample_alone_with_its_own_rows_of_tensor_arguments():
    """The whole state of a batch is each sample's alone: inputs and per-sample tensor arguments
    are split, shared arguments passed whole, targets kept in order."""
    model, config = seeded(TwoInputs()), PRESETS["paper"].replace(batch_invariant=True)
    x1, x2, scale = torch.randn(3, 4), torch.randn(3, 4), torch.tensor([[0.5], [2.0], [-1.0]])
    batch = FSP(model).select((x1, x2), target=[0, 1, 2], additional_forward_args=(scale, 1.0), config=config)
    for i in range(3):
        alone = FSP(model).select((x1[i:i + 1], x2[i:i + 1]), target=i, additional_forward_args=(scale[i:i + 1], 1.0),
                                  config="paper")
        for got, expected in zip(batch.attributions, alone.attributions):
            assert torch.equal(got[i:i + 1], expected)
        assert all(torch.equal(batch.gates[k][i:i + 1], alone.gates[k]) for k in alone.gates)
        assert all(torch.equal(batch.cws[k][i:i + 1], alone.cws[k]) for k in alone.cws)
        assert torch.equal(batch.target_scores[:, i:i + 1], alone.target_scores)
        assert batch.updates[i] == alone.updates[0] and batch.converged[i] == alone.converged[0]
    batch.check_inputs((x1, x2))


def test_fsp_is_class_specific_where_the_gradient_is_shared():
    """Two targets on one image get different maps, and differ more than plain gradients."""
    model = seeded(VGGish())
    x = torch.randn(1, 3, 16, 16)
    fsp = FeedbackSelectivePruning(model)
    a, b = fsp.attribute(x, target=0).flatten(), fsp.attribute(x, target=1).flatten()
    assert torch.cosine_similarity(a, b, dim=0) < 0.99


@pytest.mark.parametrize("threshold", [MeanRatio(1.0), MeanRatio(2.0), 0.01, lambda cw: cw.flatten(1).std(1)])
def test_threshold_rules_prune_at_least_as_much_as_zero(threshold):
    model = seeded(VGGish())
    x = torch.randn(2, 3, 16, 16)
    zero = FSP(model).select(x, target=1, updates=1, config="paper")
    other = FSP(model).select(x, target=1, updates=1, config=PRESETS["paper"].replace(threshold=threshold))
    kept = lambda s: sum(int(g.sum()) for g in s.gates.values())  # noqa: E731
    assert kept(other) <= kept(zero)


def test_the_non_linearized_variant_re_evaluates_activations():
    model = seeded(ResNetish())
    x = torch.randn(2, 3, 16, 16)
    state = FSP(model).select(x, target=1, updates=3, config=PRESETS["paper"].replace(linearize=False))
    assert torch.isfinite(state.attributions[0]).all()
    assert not torch.equal(state.attributions[0], FSP(model).attribute(x, target=1, updates=3, config="paper"))


@pytest.mark.parametrize("name", ["resnet18", "vgg11"])
def test_torchvision_models_run(name):
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    attribution = FSP(model).attribute(x, target=[1, 2], updates=2)
    assert attribution.shape == x.shape and torch.isfinite(attribution).all()


def test_captum_basic_models_run():
    from captum.testing.helpers import basic_models as bm

    cases = [
        (bm.BasicModel_ConvNet_One_Conv(), torch.randn(2, 1, 4, 4), 0),
        (bm.BasicModel_ConvNet(), torch.randn(2, 1, 10, 10), 1),
        (bm.BasicModel_MultiLayer(), torch.randn(2, 3), 0),
        (bm.ReLULinearModel(), (torch.randn(2, 3), torch.randn(2, 3)), None),
    ]
    for model, inputs, target in cases:
        attribution = FSP(model.eval()).attribute(inputs, target=target, updates=2)
        flat = attribution if isinstance(attribution, tuple) else (attribution,)
        assert all(torch.isfinite(a).all() for a in flat), type(model).__name__


@pytest.mark.parametrize("shape", [(1, 8), (2, 16), (3, 64), (2, 8 * 37)])
def test_gates_pack_eight_to_a_byte_in_unit_order(shape):
    from captum_feedback.core.kernels import pack_bits

    gates = torch.rand(shape) > 0.5
    packed = pack_bits(gates)
    expected = (gates.view(shape[0], -1, 8).long() << torch.arange(8)).sum(-1)  # unit 8j+i is bit i of byte j
    assert packed.dtype == torch.uint8 and torch.equal(packed.long(), expected)


def test_site_bytes_tell_per_sample_whether_any_gate_changed_since_the_last_pass():
    from captum_feedback.core.engine import Site
    from captum_feedback.core.gate_store import GateStore

    sites = [Site(0, "conv", "activation", (2, 3, 5)), Site(1, "pool", "pool", (2, 4))]
    store = GateStore(sites, 2, torch.device("cpu"), keep_history=False)
    assert store.changed().tolist() == [False, False]  # all open, as before the first update
    store.slot(sites[1])[1, 3] = 0
    assert store.changed().tolist() == [False, True]
    assert store.changed().tolist() == [False, False]  # compared with the previous call
    store.slot(sites[0])[0, 2, 4] = 0
    store.slot(sites[1])[1, 3] = 1
    assert store.changed().tolist() == [True, True]
    assert store.slot(sites[0]).shape == (2, 3, 5) and store.slot(sites[0]).sum() == 2 * 3 * 5 - 1
    store.slot(sites[0]).fill_(-1)  # a CW selector now; the gates of the last pass stay packed
    expected = torch.ones(2, 3, 5, dtype=torch.uint8)
    expected[0, 2, 4] = 0
    assert torch.equal(store.packed_gates(sites[0]), expected)


def test_a_single_samples_store_tells_whether_any_of_its_sites_gates_changed():
    from captum_feedback.core.engine import Site
    from captum_feedback.core.gate_store import GateStore

    sites = [Site(0, "conv", "activation", (1, 3, 5)), Site(1, "pool", "pool", (1, 4))]
    store = GateStore(sites, 1, torch.device("cpu"), keep_history=False)
    assert store.changed().tolist() == [False]
    store.slot(sites[1])[0, 3] = 0
    assert store.changed().tolist() == [True]
    assert store.changed().tolist() == [False]
    store.slot(sites[0])[0, 1, 2] = 0
    assert store.changed().tolist() == [True]


def test_a_gate_store_made_from_spare_buffers_starts_with_every_gate_open():
    from captum_feedback.core.engine import HeapHold, Site
    from captum_feedback.core.gate_store import GateStore

    sites = [Site(0, "conv", "activation", (2, 3, 5)), Site(1, "pool", "pool", (2, 4))]
    old = GateStore(sites, 2, torch.device("cpu"), keep_history=False)
    old.buffer.fill_(-1)  # a selector, and packed gates all closed
    old.packed.fill_(0)
    heap = HeapHold()
    old.give_back(heap)
    store = GateStore(sites, 2, torch.device("cpu"), False, heap)
    assert store.buffer.data_ptr() == old.buffer.data_ptr() and not heap.spares
    assert store.changed().tolist() == [False, False]
    assert bool((store.buffer == 1).all()) and bool((store.packed == 255).all())  # padding units too


def test_works_inside_a_no_grad_block_like_captum():
    model = seeded(VGGish())
    x = torch.randn(1, 3, 16, 16)
    expected = FSP(model).attribute(x, target=1)
    with torch.no_grad():
        torch.testing.assert_close(FSP(model).attribute(x, target=1), expected)


def test_update_passes_stop_their_backward_pass_at_the_lowest_gate_site():
    """Only the last pass needs the input gradient; the updates need the CWs of the sites."""
    model = seeded(VGGish())
    calls = []
    model.features[0].register_full_backward_hook(lambda *_: calls.append(1))  # below every site
    state = FSP(model).select(torch.randn(1, 3, 16, 16), target=1, updates=3, config="paper")
    assert state.updates.item() == 3  # no early stop: passes 0-3 all ran
    assert len(calls) == 1  # the last pass alone reaches the input


class TwoTowers(nn.Module):
    """Two inputs, each through its own conv-ReLU tower; the towers meet in the head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.head = nn.Linear(2 * 4 * 12 * 12, 5)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(a).flatten(1), self.b(b).flatten(1)], 1))


def test_an_update_whose_sites_do_not_all_lie_above_the_lowest_one_reaches_them_all():
    """The first tower's sites run first, but the second tower's do not lie above them: the
    backward pass must not stop at the lowest site, or the second tower would keep its gates."""
    model = seeded(TwoTowers())
    inputs = (torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16))
    state = FSP(model).select(inputs, target=1, updates=1, config="paper")
    for name in ("a.1", "a.3", "b.1", "b.3"):
        assert not state.gates[name].all(), name
    for i in range(2):  # and each sample's gates are those of a call of its own
        single = FSP(model).select(tuple(x[i:i + 1] for x in inputs), target=1, updates=1, config="paper")
        for name, gates in single.gates.items():
            assert torch.equal(state.gates[name][i:i + 1], gates), name


def test_a_linearized_stage_of_upper_sites_ends_its_later_backward_passes_at_them():
    model = seeded(VGGish())
    calls = []
    model.features[2].register_full_backward_hook(lambda *_: calls.append(1))  # below the upper half
    config = PRESETS["paper"].replace(stages=(Stage(0.5, 3),))
    state = FSP(model).select(torch.randn(1, 3, 16, 16), target=1, config=config)
    assert len(calls) == 1  # the last pass alone: the first stops at the upper sites too
    assert state.gates["features.1"].all() and not state.gates["features.6"].all()


def test_the_attribution_object_holds_its_last_large_site_output_between_calls_and_nothing_more():
    # glibc keeps its heap while a large late output stays alive (engine.HeapHold): one tensor,
    # replaced when the next call ends, and none where no site output reaches 1 MiB.
    big = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 3)).eval()
    fsp, x = FSP(big), torch.randn(2, 3, 64, 64)  # the ReLU's output: 2 MiB
    fsp.attribute(x, target=1, config="paper")
    first = fsp._heap.tensor
    assert first is not None and first.shape == (2, 64, 64, 64) and not first.requires_grad
    fsp.attribute(x, target=1, config="paper")
    assert fsp._heap.tensor is not first
    small = FSP(seeded(VGGish()))
    small.attribute(torch.randn(1, 3, 16, 16), target=1)
    assert small._heap.tensor is None


@pytest.mark.parametrize("config", ["paper", "default"])
def test_a_call_takes_the_last_calls_gate_store_buffers_and_gives_the_same_result(config):
    # Fresh pages cost a fault each (engine.HeapHold); a store of the same size reuses them.
    fsp, x = FSP(seeded(VGGish())), torch.randn(2, 3, 16, 16)
    first = fsp.attribute(x, target=[1, 2], config=config)
    buffers = [t.data_ptr() for t in fsp._heap.spares]
    assert len(buffers) == 2  # the gate bytes and their packed bits
    assert torch.equal(fsp.attribute(x, target=[1, 2], config=config), first)
    assert [t.data_ptr() for t in fsp._heap.spares] == buffers
    other = fsp.attribute(torch.randn(1, 3, 16, 16), target=1, config=config)  # another size: new buffers
    assert other.shape == (1, 3, 16, 16) and [t.data_ptr() for t in fsp._heap.spares] != buffers
