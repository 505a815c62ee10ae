"""On a GPU every method gives the CPU's answer and leaves the model as it was (skipped without
CUDA: CI has none; run it on a machine with a GPU)."""

import copy

import pytest
import torch
from nets import ResNetish, VGGish, seeded
from test_errors import assert_untouched, snapshot

from captum_feedback import FR, FSP, PRESETS, FeedbackPipeline, LayerFeedback

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def on_both(net):
    """The model in float64 on the CPU and on the GPU: gate decisions then agree exactly."""
    cpu = seeded(net).double().eval()
    return cpu, copy.deepcopy(cpu).cuda()


@pytest.mark.parametrize("config", sorted(PRESETS))
@pytest.mark.parametrize("net", [VGGish, ResNetish])
def test_fsp_on_the_gpu_gives_the_cpus_gates_maps_and_flags(net, config):
    cpu, gpu = on_both(net())
    x, targets = torch.randn(4, 3, 16, 16, dtype=torch.float64), [0, 1, 2, 3]
    expected = FSP(cpu).select(x, targets, config=config)
    state = FSP(gpu).select(x.cuda(), targets, config=config)
    assert state.attributions[0].is_cuda
    torch.testing.assert_close(state.attributions[0].cpu(), expected.attributions[0])
    for name, gates in expected.gates.items():
        assert torch.equal(state.gates[name].cpu(), gates), name
    assert torch.equal(state.updates, expected.updates) and torch.equal(state.reverted, expected.reverted)


def test_fr_layer_feedback_and_the_energy_maps_on_the_gpu():
    cpu, gpu = on_both(VGGish())
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(FR(gpu).attribute(x.cuda(), target=1).cpu(), FR(cpu).attribute(x, target=1))
    layer = LayerFeedback(gpu, gpu.features[3]).attribute(x.cuda(), target=1)
    torch.testing.assert_close(layer.cpu(), LayerFeedback(cpu, cpu.features[3]).attribute(x, target=1))
    maps = FeedbackPipeline(gpu, gpu.features[3]).energy_maps(x.cuda(), [1, 2])
    expected = FeedbackPipeline(cpu, cpu.features[3]).energy_maps(x, [1, 2])
    torch.testing.assert_close(maps.summation_fsp_fr.cpu(), expected.summation_fsp_fr)


def test_a_failing_call_on_the_gpu_leaves_the_model_as_it_was():
    model = seeded(ResNetish()).cuda().train()
    before = snapshot(model)
    with pytest.raises(ValueError, match="out of range"):
        FSP(model.eval()).attribute(torch.randn(1, 3, 8, 8, device="cuda"), target=7)
    model.train()
    assert_untouched(model, before)


def test_batch_invariant_maps_on_the_gpu_equal_each_image_alone_in_float32():
    """cuDNN picks its algorithms by shape, so a float32 batch rounds differently from one image;
    ``batch_invariant`` runs each image alone and the maps are equal, not close."""

    import torchvision

    model = seeded(torchvision.models.resnet18(num_classes=10)).eval().cuda()
    x, targets = torch.rand(3, 3, 64, 64, device="cuda"), [0, 4, 9]
    config = PRESETS["default"].replace(batch_invariant=True)
    fsp = FSP(model)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):  # the same kernels each call
        alone = torch.cat([fsp.attribute(x[i:i + 1], targets[i], config=config) for i in range(3)])
        assert torch.equal(fsp.attribute(x, targets, config=config), alone)
