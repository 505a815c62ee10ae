"""Feedback for hidden neurons: :class:`LayerFeedback` (Sec. 3.5, Procedure 1 steps 5-6)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum.attr import LayerAttribution
from torch import Tensor, nn

from captum_feedback._compat import TargetType, TensorOrTuple, format_output
from captum_feedback.attribution import FeedbackAttribution
from captum_feedback.pruning import FeedbackSelectivePruning
from captum_feedback.recovering import FeedbackRecovering
from captum_feedback.selection import Threshold
from captum_feedback.state import FeedbackState

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


class LayerFeedback(LayerAttribution, FeedbackAttribution):
    r"""Feedback for hidden neurons of one layer (Sec. 3.5 and Procedure 1, steps 5-6).

    Three uses:

    * ``attribute(x, neuron_selector=...)``: FR from a neuron or a set of neurons of the layer
      down to the input (the selected neurons together are the target, their gradients set to
      one).
    * ``attribute(x, target=t)``: the FSP-FR map. FSP runs for class ``t``; the neurons of the
      layer it keeps -- those whose contribution ``dS/dh * h`` to the class score is positive
      under the final gates -- become the target of one FR pass to the input.
    * ``contribution(x, target=t)``: the layer's own attribution after FSP, ``dS/dh * h`` per
      neuron (Eq. 6 expanded at this layer), to rank channels as in Fig. 9.

    Args:
        forward_func: The model, an ``nn.Module`` in ``eval()`` mode.
        layer: A submodule of the model whose output holds the neurons (the paper uses
            ``conv5_2`` of VGG16). It must be called once per forward pass and return a tensor.
    """

    def __init__(self, forward_func: nn.Module, layer: nn.Module) -> None:
        if not isinstance(forward_func, nn.Module):
            raise TypeError("LayerFeedback needs an nn.Module to find the layer in.")
        if not isinstance(layer, nn.Module) or not any(m is layer for m in forward_func.modules()):
            raise ValueError(f"The layer {type(layer).__name__} is not a submodule of the model.")
        FeedbackAttribution.__init__(self, forward_func)
        self.layer = layer
        self._layer_name = next(n for n, m in forward_func.named_modules() if m is layer)
        self._fsp = FeedbackSelectivePruning(forward_func)
        self._fr = FeedbackRecovering(forward_func)

    def select(self, inputs: TensorOrTuple, target: TargetType = None, **fsp_kwargs: Any) -> FeedbackState:
        """:meth:`FeedbackSelectivePruning.select` with this layer's output and CWs kept."""
        return self._fsp.select(inputs, target, layers=(self.layer,), **fsp_kwargs)

    def kept_neurons(self, state: FeedbackState) -> Tensor:
        """Boolean mask of the layer's neurons FSP kept: positive contribution ``dS/dh * h``."""
        return self._layer_contribution(state) > 0

    def contribution(self, inputs: TensorOrTuple, target: TargetType = None,
                     state: Optional[FeedbackState] = None, **fsp_kwargs: Any) -> Tensor:
        """Per-neuron contribution ``dS/dh * h`` of the layer to the target after FSP.

        Args:
            inputs, target, **fsp_kwargs: As for :meth:`select`.
            state: A :class:`FeedbackState` from :meth:`select` on these inputs, to reuse.

        Returns:
            A tensor shaped like the layer's output, batch first.
        """
        return self._layer_contribution(state if state is not None else self.select(inputs, target, **fsp_kwargs))

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        neuron_selector: Optional[NeuronSelector] = None,
        additional_forward_args: Any = None,
        state: Optional[FeedbackState] = None,
        iterations: int = 5,
        threshold: Threshold = "zero",
        linearize: bool = True,
    ) -> TensorOrTuple:
        r"""Input attribution of hidden neurons of the layer, propagated with FR.

        Args:
            inputs: A tensor or tuple of tensors with the batch first.
            target: Class target for the FSP-FR map (any Captum target form). Give either
                ``target`` (or ``state``) or ``neuron_selector``.
            neuron_selector: The neurons: an int or a tuple of ints and slices indexing the
                layer's output without its batch dimension (slices select sets, which are
                summed), or a callable mapping the layer output to one score per sample.
            additional_forward_args: Further arguments to the model, after the inputs.
            state: A :class:`FeedbackState` from :meth:`select` on the same inputs, to reuse
                its FSP result instead of running FSP again.
            iterations: FSP's maximum number of gate updates (FSP-FR map only).
            threshold: The selection threshold of FSP and of FR.
            linearize: FSP's linearization (FSP-FR map only).

        Returns:
            Gradients of the selected neurons with respect to each input under FR's gates.
        """
        if neuron_selector is not None and (target is not None or state is not None):
            raise ValueError("Give either neuron_selector or a class target (or state), not both.")
        if neuron_selector is None and state is None:
            if target is None:
                raise ValueError("Give a neuron_selector, or a class target for the FSP-FR map.")
            state = self.select(
                inputs, target, additional_forward_args=additional_forward_args,
                iterations=iterations, threshold=threshold, linearize=linearize, keep_cws=False,
            )
        batch = self._batch(inputs, None, additional_forward_args)
        if neuron_selector is not None:
            def score(_output: Tensor, tapped: dict) -> Tensor:
                return _neuron_scores(tapped[self.layer], neuron_selector)
        else:
            kept = self.kept_neurons(state).to(batch.inputs[0].dtype)

            def score(_output: Tensor, tapped: dict) -> Tensor:
                return (tapped[self.layer] * kept).flatten(1).sum(1)
        grads = self._fr.recover(batch, threshold, score, taps=(self.layer,))
        return format_output(batch.is_tuple, grads)

    def _layer_contribution(self, state: FeedbackState) -> Tensor:
        name = self._layer_name
        if name not in state.layer_cws:
            raise ValueError(f"The state holds no output of layer '{name}'; make it with LayerFeedback.select.")
        return state.layer_cws[name] * state.layer_outputs[name]


def rank_channels(layer_attribution: Tensor, k: int = 5) -> Tuple[Tensor, Tensor]:
    """The ``k`` channels with the largest maximum over positions, per sample (Fig. 9).

    Args:
        layer_attribution: ``(B, C, ...)``, e.g. :meth:`LayerFeedback.contribution` or the
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

