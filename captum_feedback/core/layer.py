"""Feedback for hidden neurons, along Captum's contract (Sec. 3.5, Fig. 9).

* :class:`NeuronFeedback` is a ``NeuronAttribution``: FR from neurons of a layer down to the
  input, input-shaped like Captum's ``NeuronGradient``.
* :class:`LayerFeedback` is a ``LayerAttribution``: each neuron's contribution to a class
  score after FSP, layer-shaped like Captum's ``LayerGradientXActivation``.

The FSP-FR map, FR from the neurons FSP kept (Procedure 1, steps 5-6), is
:meth:`captum_feedback.FeedbackPipeline.fsp_fr`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum.attr import LayerAttribution, NeuronAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_feedback.core._compat import TargetType, TensorOrTuple, format_inputs, format_output
from captum_feedback.core.attribution import FeedbackAttribution
from captum_feedback.core.config import ConfigLike, resolve_config
from captum_feedback.core.pruning import FeedbackSelectivePruning
from captum_feedback.core.recovering import RecoveringPolicy
from captum_feedback.core.selection import Threshold, as_rule
from captum_feedback.core.state import FeedbackState
from captum_feedback.core.tokens import MapLayout, ReshapeTransform

NeuronSelector = Union[int, Tuple[Any, ...], slice, Callable[[Tensor], Tensor]]


def _neuron_scores(layer_output: Tensor, selector: NeuronSelector) -> Tensor:
    """Sum of the selected neurons per sample, as Captum's ``Neuron*`` classes select them."""
    if callable(selector):
        scores = selector(layer_output)
        if not isinstance(scores, Tensor) or scores.shape[:1] != layer_output.shape[:1]:
            raise ValueError("A callable neuron_selector must return one value per sample.")
        return scores.reshape(scores.shape[0], -1).sum(1)
    index = selector if isinstance(selector, tuple) else (selector,)
    if len(index) > layer_output.dim() - 1:
        raise ValueError(
            f"neuron_selector {selector!r} has more dimensions than the layer output "
            f"{tuple(layer_output.shape[1:])} (batch excluded)."
        )
    for i, size in zip(index, layer_output.shape[1:]):
        if isinstance(i, int) and not -size <= i < size:
            raise ValueError(f"neuron_selector {selector!r} is out of range for {tuple(layer_output.shape[1:])}.")
    selected = layer_output[(slice(None),) + index]
    return selected.reshape(selected.shape[0], -1).sum(1)


def check_layer(model: Any, layer: Any) -> str:
    """The layer's name in the model; raises for a model that is no ``nn.Module`` or a layer
    that is not one of its submodules."""
    if not isinstance(model, nn.Module):
        raise TypeError("Layer and neuron feedback need an nn.Module to find the layer in.")
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ValueError(f"The layer {type(layer).__name__} is not a submodule of the model.")


class NeuronFeedback(NeuronAttribution, FeedbackAttribution):
    r"""FR from hidden neurons of one layer to the input (Sec. 3.5, Fig. 8).

    The selected neurons together are the target, their gradients set to one, and FR
    (Algorithm 1) carries them down to the input.

    Args:
        forward_func: The model, an ``nn.Module`` in ``eval()`` mode.
        layer: A submodule whose output holds the neurons. It must be called once per forward
            pass and return a tensor.
    """

    def __init__(self, forward_func: nn.Module, layer: nn.Module) -> None:
        check_layer(forward_func, layer)
        FeedbackAttribution.__init__(self, forward_func)
        NeuronAttribution.__init__(self, forward_func, layer)

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        neuron_selector: NeuronSelector,
        additional_forward_args: Any = None,
        threshold: Threshold = "zero",
    ) -> TensorOrTuple:
        r"""Input attribution of hidden neurons, propagated with FR.

        Args:
            inputs: A tensor or tuple of tensors with the batch first.
            neuron_selector: The neurons: an int or a tuple of ints and slices indexing the
                layer's output without its batch dimension (slices select sets, which are
                summed), or a callable mapping the layer output to one score per sample.
            additional_forward_args: Further arguments to the model, after the inputs.
            threshold: FR's selection threshold (:data:`~captum_feedback.core.selection.Threshold`).

        Returns:
            Gradients of the selected neurons with respect to each input under FR's gates.
        """
        rule = as_rule(threshold)
        batch = self._batch(inputs, None, additional_forward_args)

        def score(_output: Tensor, tapped: dict) -> Tensor:
            return _neuron_scores(tapped[self.layer], neuron_selector)

        grads = self.gated_gradients(batch, RecoveringPolicy(rule), score, taps=(self.layer,))
        return format_output(batch.is_tuple, grads)


class LayerFeedback(LayerAttribution, FeedbackAttribution):
    r"""Each neuron's contribution ``dS/dh * h`` to a class score after FSP (Eq. 6 at one layer).

    The layer's own attribution after FSP, shaped like the layer's output, to rank channels as
    in Fig. 9 (:func:`rank_channels`). In a bias-free linearized network the contributions of a
    layer add up to the target score.

    Args:
        forward_func: The model, an ``nn.Module`` in ``eval()`` mode.
        layer: A submodule of the model, called once per forward pass, returning a tensor.
        reshape_transform: Turns the layer's output shape into ``(B, C, H, W)`` for channel
            ranking and maps (pytorch-grad-cam's convention): ``"auto"`` reads token and
            channels-last outputs by their shape (:class:`~captum_feedback.core.tokens.MapLayout`
            of the inputs), a callable such as
            :func:`~captum_feedback.core.tokens.tokens_to_maps` is applied as it is; ``None``
            returns the layer's own shape.

    Example::

        >>> layer_map = LayerFeedback(vit, vit.encoder.layers[-1], reshape_transform="auto")
        >>> layer_map.attribute(images, target=3).shape   # (B, 768, 14, 14) for vit_b_16
    """

    def __init__(self, forward_func: nn.Module, layer: nn.Module,
                 reshape_transform: Union[None, str, ReshapeTransform] = None) -> None:
        if not (reshape_transform in (None, "auto") or callable(reshape_transform)):
            raise ValueError(f"reshape_transform must be None, 'auto' or a callable, got {reshape_transform!r}.")
        self._layer_name = check_layer(forward_func, layer)
        FeedbackAttribution.__init__(self, forward_func)
        LayerAttribution.__init__(self, forward_func, layer)
        self.reshape_transform = reshape_transform

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        config: ConfigLike = None,
        updates: Optional[int] = None,
        state: Optional[FeedbackState] = None,
    ) -> Union[Tensor, TensorOrTuple]:
        r"""The layer's contributions to the target after FSP.

        Args:
            inputs: A tensor or tuple of tensors with the batch first.
            target: The class target, in any of Captum's target forms.
            additional_forward_args: Further arguments to the model, after the inputs.
            config: FSP's configuration (a preset name or a
                :class:`~captum_feedback.FeedbackConfig`).
            updates: FSP's gate updates in all, as for
                :meth:`FeedbackSelectivePruning.attribute`.
            state: A :class:`FeedbackState` from :meth:`FeedbackPipeline.select` on the same
                inputs and layer, to reuse instead of running FSP again.

        Returns:
            ``dS/dh * h`` under FSP's final gates, shaped like the layer's output (after the
            ``reshape_transform``, if any).
        """
        if state is None:
            settings = resolve_config(config, updates)
            state = FeedbackSelectivePruning(self.forward_func).select(
                inputs, target, additional_forward_args, config=settings, keep_cws=False, layers=(self.layer,))
        state.check_inputs(inputs)
        contribution = layer_contribution(state, self._layer_name)
        if self.reshape_transform == "auto":
            return MapLayout.of(format_inputs(inputs)[0])(contribution)
        return self.reshape_transform(contribution) if self.reshape_transform else contribution


def layer_contribution(state: FeedbackState, name: str) -> Tensor:
    """``dS/dh * h`` of the tapped layer ``name`` under the state's final gates."""
    if name not in state.layer_cws:
        raise ValueError(f"The state holds no output of layer '{name}'; make it with FeedbackPipeline.select.")
    return state.layer_cws[name] * state.layer_outputs[name]


def rank_channels(layer_attribution: Tensor, k: int = 5) -> Tuple[Tensor, Tensor]:
    """The ``k`` channels with the largest maximum over positions, per sample (Fig. 9).

    Args:
        layer_attribution: ``(B, C, ...)``, e.g. :meth:`LayerFeedback.attribute` or the
            layer's activation after FSP.
        k: How many channels.

    Returns:
        ``(values, channels)``, each ``(B, k)``, best first.
    """
    if layer_attribution.dim() < 2:
        raise ValueError("layer_attribution needs a batch and a channel dimension.")
    k = min(k, layer_attribution.shape[1])
    peak = layer_attribution.flatten(2).amax(2) if layer_attribution.dim() > 2 else layer_attribution
    return torch.topk(peak, k, dim=1)
