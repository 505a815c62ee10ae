"""Energy maps of the Feedback methods and of Captum's, side by side, for one model.

:class:`MethodMaps` turns every method into the same kind of map, ``(B, 1, H, W)``,
non-negative and L2-normalized per image (Sec. 3.4.1), so that figures and scores compare like
with like: input attributions become :func:`captum_feedback.energy_map`, Grad-CAM's layer map is
rectified and upsampled, and the Feedback maps all come from one FSP run per batch.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from captum.attr import (
    LRP,
    Deconvolution,
    DeepLift,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    Saliency,
)
from torch import Tensor, nn

from captum_feedback.compare.registry import names
from captum_feedback.core._compat import TargetType, per_sample_targets, select_targets
from captum_feedback.core.attribution import GatePolicyAttribution, model_scores
from captum_feedback.core.config import ConfigLike
from captum_feedback.core.engine import Gate, GatePolicy, Site
from captum_feedback.core.pruning import FeedbackSelectivePruning
from captum_feedback.core.recovering import FeedbackRecovering
from captum_feedback.core.tokens import MapLayout
from captum_feedback.wsol.energy import energy_map, l2_normalize, summation_energy_map
from captum_feedback.wsol.pipeline import FeedbackPipeline

PIPELINE_METHODS = names("pipeline")
"""The maps one :class:`~captum_feedback.FeedbackPipeline` run gives."""
FEEDBACK_METHODS = PIPELINE_METHODS + names("feedback")
ABLATION_SUMS = dict(zip(names("ablation"), (None, "cw", "contribution")))
"""Summation Energy Maps of the plain network (every gate open), keyed by name: the
configuration's own map (contrastive where it is), and, not contrastive, the absolute gradients
``|alpha|`` of the summed sites and their gradient x activation ``alpha x``, each rectified per
unit. Beside FSP's maps they show what its selection adds."""
ABLATIONS = names("ablation")
CAPTUM_METHODS = names("captum")
BASELINES = names("baseline")
ALL_METHODS = names()
"""Every method with a map, in :data:`~captum_feedback.compare.registry.REGISTRY`'s order."""


def center_map(inputs: Tensor, sigma: float = 0.25) -> Tensor:
    """The center baseline: a Gaussian at the image center with standard deviation ``sigma``
    times the image side, the same for every image."""
    height, width = inputs.shape[-2:]
    ys = (torch.arange(height, device=inputs.device) + 0.5) / height - 0.5
    xs = (torch.arange(width, device=inputs.device) + 0.5) / width - 0.5
    gauss = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    return l2_normalize(gauss.expand(inputs.shape[0], 1, height, width).clone())


RELU_MODULE_METHODS = {"GuidedBackprop": "the gradient's", "Deconvolution": "the gradient's",
                       "GuidedGradCam": "Grad-CAM times the gradient", "DeepLift": "InputXGradient's"}
"""Captum's methods whose rule for ReLU-like units applies to ``nn.ReLU`` modules only (Captum
0.9: the backward hooks of ``ModifiedReluGradientAttribution``, DeepLift's ``SUPPORTED_NON_LINEAR``),
and what each map is where no site is one."""


class _SiteRecorder(GatePolicy):
    def __init__(self) -> None:
        self.sites: List[Site] = []

    def gate(self, site: Site, x: Tensor) -> Optional[Gate]:
        self.sites.append(site)
        return None


def unguided_sites(model: nn.Module, inputs: Tensor, target: TargetType) -> Tuple[List[str], int]:
    """The ReLU-like sites of one forward pass (of the first sample) that the methods of
    :data:`RELU_MODULE_METHODS` leave with their plain gradient -- Captum hooks ``nn.ReLU``
    modules only, not ReLU6, SiLU, GELU, ... nor functional calls -- and the number of ReLU-like
    sites. FR gates every one of them (it is Guided Backpropagation where the sites are ReLUs)."""
    recorder = _SiteRecorder()
    GatePolicyAttribution(model, recorder).attribute(inputs[:1], per_sample_targets(target, len(inputs))[:1])
    relus = {name for name, module in model.named_modules() if isinstance(module, nn.ReLU)}
    activations = [site.name for site in recorder.sites if site.kind == "activation"]
    return [name for name in activations if name.split("#")[0] not in relus], len(activations)


class _Scores(nn.Module):
    """The model with its scores as its output (:func:`model_scores`: a Hugging Face model's
    ``logits``), for Captum's methods, which take a tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: Any) -> Tensor:
        return model_scores(self.model(*inputs))


class _GradCam:
    """Grad-CAM (Selvaraju et al.) of any layer: its output and gradient read as ``(B, C, H, W)``
    through the inputs' :class:`~captum_feedback.core.tokens.MapLayout` (token and channels-last
    layers too), channel weights the spatial mean of the gradient, as Captum's ``LayerGradCam``
    on a convolutional layer."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        self.model, self.layer = model, layer

    def attribute(self, inputs: Tensor, target: TargetType) -> Tensor:
        outputs: list = []
        handle = self.layer.register_forward_hook(lambda _m, _i, output: outputs.append(output))
        try:
            with torch.enable_grad():
                scores = select_targets(model_scores(self.model(inputs)), per_sample_targets(target, len(inputs)))
                (gradient,) = torch.autograd.grad(scores.sum(), outputs[0])
        finally:
            handle.remove()
        layout = MapLayout.of((inputs,))
        activation, gradient = layout(outputs[0].detach()), layout(gradient)
        if activation.dim() != 4:
            raise ValueError(f"Grad-CAM's layer gives {tuple(outputs[0].shape)}, which is not a map of the "
                             f"{tuple(inputs.shape[-2:])} input (channels first or last, or tokens).")
        return (gradient.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True)


def _layer_map(layer_attribution: Tensor, size: Sequence[int]) -> Tensor:
    cam = F.interpolate(layer_attribution.detach().clamp_min(0), size=tuple(size), mode="bilinear",
                        align_corners=False)
    return l2_normalize(cam.sum(1, keepdim=True))


class MethodMaps:
    r"""Energy maps of many attribution methods for one model.

    Args:
        model: The classifier, in ``eval()`` mode.
        layer: Middle layer for the FSP-FR map (the paper's ``conv5_2``); default: the first of
            :func:`~captum_feedback.models.classifiers.recommended_layers`.
        gradcam_layer: The layer Grad-CAM and Guided Grad-CAM read (the last convolutional
            block, as usual); default: the second of ``recommended_layers``.
        ig_steps: Integrated Gradients' ``n_steps`` (zero baseline).
        internal_batch_size: Integrated Gradients' ``internal_batch_size``.
        config: The feedback maps' configuration (a preset name or a
            :class:`~captum_feedback.FeedbackConfig`).

    Example::

        maps = MethodMaps(model)   # the layers of recommended_layers(model)
        out = maps(images, target=[3, 7], methods=("FSP Summation", "IntegratedGradients"))
        out["FSP Summation"].shape   # (2, 1, H, W)
    """

    def __init__(self, model: nn.Module, layer: Optional[nn.Module] = None, gradcam_layer: Optional[nn.Module] = None,
                 ig_steps: int = 50, internal_batch_size: Optional[int] = None, config: ConfigLike = None) -> None:
        if layer is None or gradcam_layer is None:
            from captum_feedback.models.classifiers import recommended_layers

            middle, last = recommended_layers(model)
            layer, gradcam_layer = layer or middle, gradcam_layer or last
        self.model, self.gradcam_layer = model, gradcam_layer
        self.ig_steps, self.internal_batch_size = ig_steps, internal_batch_size
        self.pipeline = FeedbackPipeline(model, layer, config)
        self._unguided: Optional[Tuple[List[str], int]] = None
        """:func:`unguided_sites` of the model, found on the first guided method's call."""
        self._single_maps = self._attribution_maps()

    def __call__(self, inputs: Tensor, target: TargetType, methods: Sequence[str] = ALL_METHODS
                 ) -> Dict[str, Tensor]:
        """``{method: (B, 1, H, W) map}`` for each method named (see ``ALL_METHODS``)."""
        unknown = [m for m in methods if m not in ALL_METHODS]
        if unknown:
            raise ValueError(f"Unknown method(s) {unknown}; choose from {list(ALL_METHODS)}.")
        maps: Dict[str, Tensor] = {}
        if [m for m in methods if m in PIPELINE_METHODS] == ["FSP Summation"]:
            maps["FSP Summation"] = self.pipeline.summation(inputs, target)
        elif any(m in methods for m in PIPELINE_METHODS):
            fb = self.pipeline.energy_maps(inputs, target)
            maps.update({"FSP": fb.fsp, "FSP Summation": fb.summation, "FSP-FR": fb.fsp_fr,
                         "Summation-FSP-FR": fb.summation_fsp_fr})
        if any(m in methods for m in ABLATIONS):
            plain = FeedbackSelectivePruning(self.model).ungated(inputs, target, config=self.pipeline.config)
            one_sided = replace(plain, config=plain.config.replace(contrastive=False, evidence_weighted=False),
                                dual=None)
            maps.update({name: summation_energy_map(one_sided if quantity else plain, summation=quantity)
                         for name, quantity in ABLATION_SUMS.items() if name in methods})
        for method in methods:
            if method not in maps:
                maps[method] = self.single(method, inputs, target)
        return {m: maps[m] for m in methods}

    def single(self, method: str, inputs: Tensor, target: TargetType) -> Tensor:
        """The map of one method that is not computed from the shared FSP run."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
            return self._single_maps[method](inputs, target)

    def _relu_rule(self, method: str, attribution: Callable[[Tensor, TargetType], Tensor]
                   ) -> Callable[[Tensor, TargetType], Tensor]:
        """``attribution``, after checking that Captum's ``method`` (one of
        :data:`RELU_MODULE_METHODS`) reaches the model's ReLU-like sites: an error where it
        reaches none (its map would be :data:`RELU_MODULE_METHODS`'s), a warning where it misses
        some."""
        def checked(inputs: Tensor, target: TargetType) -> Tensor:
            if self._unguided is None:
                self._unguided = unguided_sites(self.model, inputs, target)
            unguided, total = self._unguided
            if unguided:
                sites = f"({', '.join(unguided[:3])}{', ...' if len(unguided) > 3 else ''})"
                rule = f"Captum's {method} has its rule for nn.ReLU modules only"
                fix = "FR (Feedback Recovering) is Guided Backpropagation on every ReLU-like site."
                if len(unguided) == total:
                    raise ValueError(f"{rule}, and none of this model's {total} ReLU-like sites {sites} is one: "
                                     f"its map would be {RELU_MODULE_METHODS[method]}. {fix}")
                warnings.warn(f"{rule}: {len(unguided)} of this model's {total} ReLU-like sites {sites} keep their "
                              f"plain gradient. {fix}", UserWarning, stacklevel=3)
            return attribution(inputs, target)

        return checked

    def _attribution_maps(self) -> Dict[str, Callable[[Tensor, TargetType], Tensor]]:
        model = _Scores(self.model)

        def input_attribution(method: Any, **kwargs: Any) -> Callable[[Tensor, TargetType], Tensor]:
            return lambda x, t: energy_map(method.attribute(x, target=t, **kwargs))

        gradcam = _GradCam(model, self.gradcam_layer)
        maps = {
            "FR": input_attribution(FeedbackRecovering(model)),
            "Saliency": input_attribution(Saliency(model), abs=True),
            "IntegratedGradients": input_attribution(IntegratedGradients(model), n_steps=self.ig_steps,
                                                     internal_batch_size=self.internal_batch_size),
            "GuidedBackprop": input_attribution(GuidedBackprop(model)),
            "Deconvolution": input_attribution(Deconvolution(model)),
            "GuidedGradCam": input_attribution(GuidedGradCam(model, self.gradcam_layer)),
            "LayerGradCam": lambda x, t: _layer_map(gradcam.attribute(x, target=t), x.shape[-2:]),
            "InputXGradient": input_attribution(InputXGradient(model)),
            "DeepLift": input_attribution(DeepLift(model)),
            "LRP": input_attribution(LRP(model)),
            "Center": lambda x, t: center_map(x),
        }
        return {name: self._relu_rule(name, make) if name in RELU_MODULE_METHODS else make
                for name, make in maps.items()}
