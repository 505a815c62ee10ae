"""Classifiers with what explaining them needs: input size and normalization, class names, and
the layers the maps read (the middle layer of FSP-FR, Procedure 1 step 5; the last layer of
Grad-CAM).

The CLI's ``explain`` and ``benchmark`` take their model from :func:`load_classifier`: one of the
embedded models (weights ship with the packages) or a torchvision classifier by name with a
weights file that loads with ``torch.load(..., weights_only=True)`` (never downloaded).
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from captum_feedback.core.attribution import model_scores
from captum_feedback.core.tokens import MapLayout, is_spatial
from captum_feedback.models.framing import to_square

EMBEDDED = ("efficientnet_lite0", "cluttered_vgg", "cluttered_resnet")
"""The models that ship with their weights; the first is the default."""

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.SiLU, nn.GELU)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model that cannot be built or loaded: the message is one line for the user."""


@dataclass
class Classifier:
    """A classifier in ``eval()`` mode and how to feed and read it.

    Attributes:
        model: the network.
        classes: its output classes' names, in output order.
        middle: the layer of the FSP-FR map.
        last: the layer Grad-CAM reads.
        size: the side of its square input.
        normalize: ``(B, C, size, size)`` images in [0, 1] to model input.
        channels: 3 for RGB, 1 for grayscale models.
        imagenet: whether the outputs are ImageNet-1k's classes (VOC and COCO classes are then
            mapped onto groups of them, see :mod:`captum_feedback.data.layouts`).
        multilabel: whether each output is a probability of its own (a sigmoid, as the scene
            models are trained), rather than one of a softmax over the outputs.
    """

    model: nn.Module
    classes: List[str]
    middle: nn.Module
    last: nn.Module
    size: int
    normalize: Callable[[Tensor], Tensor]
    channels: int = 3
    imagenet: bool = True
    multilabel: bool = False

    def squeeze(self, images: Tensor, size: Optional[int] = None, resize: str = "squeeze") -> Tensor:
        """``(B, 3, H, W)`` uint8 photos as ``(B, C, size, size)`` in [0, 1] (``size``: the
        model's input size), squeezed whole (every pixel maps back to the photo) or centre-cropped
        (:mod:`captum_feedback.models.framing`)."""
        square = to_square(images, size or self.size, resize)
        return square.mean(1, keepdim=True) if self.channels == 1 else square

    def inputs(self, images: Tensor, resize: str = "squeeze") -> Tensor:
        """Photos ``(3, H, W)`` or ``(B, 3, H, W)`` (uint8) as the model's input on its device:
        what ``captum-feedback explain --resize`` feeds it.

        Example::

            model = load_classifier()                       # EfficientNet-Lite0, as the command
            x = model.inputs(read_image("cat.jpg"))         # (1, 3, 224, 224), squeezed whole
            probabilities = model.probabilities(model.model(x))
        """
        images = images[None] if images.dim() == 3 else images
        return self.normalize(self.squeeze(images, resize=resize).to(self.device))

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    def probabilities(self, logits: Tensor) -> Tensor:
        """The outputs' probabilities: a softmax over them, or each output's sigmoid for a
        multi-label model."""
        return logits.sigmoid() if self.multilabel else logits.softmax(1)

    def to(self, device: torch.device) -> Classifier:
        """Moves the model to ``device``; returns ``self``."""
        self.model.to(device)
        return self


def load_classifier(name: Optional[str] = None, weights: Optional[Path] = None,
                    num_classes: Optional[int] = None, classes: Optional[Sequence[str]] = None) -> Classifier:
    """An embedded model (``name`` in :data:`EMBEDDED` or ``None``) or a torchvision classifier.

    Args:
        name: ``"efficientnet_lite0"`` (the default, ImageNet), ``"cluttered_vgg"`` or
            ``"cluttered_resnet"`` (Fashion-MNIST scenes) or a name of ``torchvision.models.list_models()``.
        weights: a state dict for a torchvision model (required for one, never downloaded).
        num_classes: the torchvision model's number of outputs, for a head trained on other
            classes than ImageNet's (a multi-label VOC model has 20).
        classes: the names of those outputs (default: ImageNet's for 1000 outputs).

    Raises:
        ModelError: an unknown name, a missing or unsafe weights file, weights of another model.
    """
    if name in (None, *EMBEDDED):
        if weights is not None:
            raise ModelError(f"the embedded model {name or EMBEDDED[0]} ships its weights; --weights is for "
                             "torchvision models.")
        return _embedded(name or EMBEDDED[0])
    return _torchvision(name, weights, num_classes, classes)


def _embedded(name: str) -> Classifier:
    if name in ("cluttered_vgg", "cluttered_resnet"):
        from captum_feedback.data.fashion_mnist import CLASSES
        from captum_feedback.models.cluttered_resnet import cluttered_resnet
        from captum_feedback.models.cluttered_vgg import INPUT_SIZE, cluttered_vgg

        scene_model = cluttered_vgg() if name == "cluttered_vgg" else cluttered_resnet()
        return Classifier(scene_model, list(CLASSES), *recommended_layers(scene_model), INPUT_SIZE, lambda x: x,
                          channels=1, imagenet=False, multilabel=True)
    from captum_feedback.models import efficientnet_lite as lite_module

    lite = lite_module.efficientnet_lite0()
    return Classifier(lite, lite_module.imagenet_classes(), *recommended_layers(lite), lite_module.INPUT_SIZE,
                      lambda x: x * 2 - 1)


def _torchvision(name: str, weights: Optional[Path], num_classes: Optional[int],
                 classes: Optional[Sequence[str]]) -> Classifier:
    import torchvision

    from captum_feedback.models import imagenet_classes

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"unknown torchvision model {name!r}: name an embedded model ({', '.join(EMBEDDED)}) "
                         "or one of torchvision.models.list_models().")
    if weights is None:
        raise ModelError(f"--model needs --weights PATH for {name} (weights are never downloaded).")
    outputs = num_classes or (len(classes) if classes else 1000)
    names = list(classes) if classes else imagenet_classes() if outputs == 1000 else [str(i) for i in range(outputs)]
    if len(names) != outputs:
        raise ModelError(f"{len(names)} class names for a model with {outputs} outputs.")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=outputs)
    except TypeError as error:
        raise ModelError(f"cannot build {name}: {first_line(error)}") from None
    try:
        model.load_state_dict(_read_state_dict(weights, name))
    except RuntimeError as error:  # a state dict of another model
        raise ModelError(f"cannot load weights {weights} into {name}: {first_line(error)}") from None
    model.eval()
    middle, last = recommended_layers(model)
    mean, std = torch.tensor(_IMAGENET_MEAN)[:, None, None], torch.tensor(_IMAGENET_STD)[:, None, None]
    return Classifier(model, names, middle, last, 224, lambda x: (x - mean.to(x)) / std.to(x),
                      imagenet=outputs == 1000 and not classes)


def _read_state_dict(path: Path, name: str) -> dict:
    if not path.is_file():
        raise ModelError(f"no weights file at {path}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never for a user's file
        raise ModelError(f"cannot load weights {path}: not a file of tensors that loads safely "
                         "(torch.load(weights_only=True) refused it; save model.state_dict()).") from None
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise ModelError(f"cannot load weights {path}: {first_line(error)}") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ModelError(f"cannot load weights {path} into {name}: the file holds a {type(state).__name__}, "
                         "not a state dict.")
    return state


def recommended_layers(model: nn.Module, size: Optional[int] = None, channels: int = 3) -> Tuple[nn.Module, nn.Module]:
    """The layer for FSP-FR (the paper's ``conv5_2``, Procedure 1 step 5) and the one for
    Grad-CAM (the last convolutional block), as ``(middle, last)``.

    The embedded models have theirs (EfficientNet-Lite0: the last depthwise ReLU6 at 14 x 14 and
    the head's ReLU6; the cluttered VGG: ``middle_layer`` and the ReLU before the last pool; the
    cluttered ResNet: ``middle_layer`` and ``last_layer``).
    For any other model they are found by a forward and a backward pass of two random
    ``(channels, size, size)`` images: among the submodules that return a map of the batch once
    per pass -- channels first or last, or tokens on a patch grid
    (:class:`~captum_feedback.core.tokens.MapLayout`) -- and whose map the target's gradient
    reaches (a ViT's last block reaches the head through its class token alone), activations
    and blocks (which end in one) before convolutions and norms, the one about two thirds deep
    and the last. A reused ``relu`` module, as in ResNet, has no single output to target; Swin
    V2's position-bias MLP runs on a table of its parameters, not on the images. ``size``
    defaults to the one the model states (:func:`native_size`).

    Example::

        middle, last = recommended_layers(model)
        maps = MethodMaps(model, middle, last)(x, target, ["FSP-FR", "LayerGradCam"])
    """
    from captum_feedback.models.cluttered_resnet import ClutteredResNet
    from captum_feedback.models.cluttered_vgg import ClutteredVGG
    from captum_feedback.models.efficientnet_lite import EfficientNetLite, feedback_layer

    if isinstance(model, EfficientNetLite):
        return feedback_layer(model), model.head_relu
    if isinstance(model, ClutteredVGG):
        return model.middle_layer, model.features[24]
    if isinstance(model, ClutteredResNet):
        return model.middle_layer, model.last_layer
    return _traced_layers(model, size or native_size(model), channels)


def native_size(model: nn.Module, default: int = 224) -> int:
    """The input side a model states: a Hugging Face model's ``config.image_size``, a timm
    model's ``pretrained_cfg["input_size"]``; else ``default``."""
    side = getattr(getattr(model, "config", None), "image_size", None)
    cfg = getattr(model, "pretrained_cfg", None)
    if side is None and isinstance(cfg, dict) and cfg.get("input_size"):
        side = cfg["input_size"][-1]
    if isinstance(side, (tuple, list)):
        side = side[-1]
    return int(side) if isinstance(side, int) else default


def _traced_layers(model: nn.Module, size: int, channels: int) -> Tuple[nn.Module, nn.Module]:
    calls: List[nn.Module] = []
    maps: Dict[nn.Module, Tensor] = {}
    layout = MapLayout((size, size))

    def record(module: nn.Module, _inputs: object, output: object) -> None:
        calls.append(module)  # a map of the two probe images, the batch first
        if isinstance(output, Tensor) and output.dim() > 2 and output.shape[0] == 2 and output.requires_grad \
                and is_spatial(output.shape, layout):
            maps[module] = output

    handles = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    probe = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.enable_grad():
            scores = model_scores(model(probe.to(next(model.parameters()).device)))
            top = scores.detach().argmax(1, keepdim=True)
            gradients = torch.autograd.grad(scores.gather(1, top).sum(), list(maps.values()), allow_unused=True)
    finally:
        for handle in handles:
            handle.remove()
    reached = {m for m, g in zip(maps, gradients) if g is not None and layout(g).ne(0).any()}
    reached = reached or set(maps)  # no gradient at all (a head initialized at zero): every map
    once = [m for m in dict.fromkeys(calls) if calls.count(m) == 1 and m in reached]
    rectified = [m for m in once if isinstance(m, _ACTIVATIONS) or any(True for _ in m.children())]
    once = rectified or once
    if not once:
        raise ModelError("the model has no layer with a spatial output, reached by the gradient, to read maps from.")
    return once[(2 * len(once)) // 3], once[-1]


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def first_line(error: BaseException) -> str:
    """An exception's first line, without terminal colour codes."""
    text = _ANSI.sub("", str(error)).strip()
    return text.splitlines()[0] if text else type(error).__name__
