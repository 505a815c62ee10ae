"""One FSP -> FR pipeline: every map of the paper from one FSP run (Secs. 3.4-4.5).

:class:`FeedbackPipeline` runs FSP for a class with a middle layer tapped, draws the Summation
Energy Map from its gates (Sec. 4.3), picks the layer's neurons FSP kept and recovers them to
the input with FR (the FSP-FR map, Procedure 1 steps 5-6), and adds the two (Procedure 2
step 4). Energy maps, Procedures 1 and 2, the figures, the CLI and the benchmarks all call it,
with one :class:`~captum_feedback.FeedbackConfig`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn

from captum_feedback.core._compat import TargetType, TensorOrTuple
from captum_feedback.core.config import ConfigLike, FeedbackConfig, resolve_config
from captum_feedback.core.layer import NeuronFeedback, check_layer, layer_contribution
from captum_feedback.core.pruning import FeedbackSelectivePruning
from captum_feedback.core.selection import MeanRatio, SelectionRule, keep_mask
from captum_feedback.core.state import FeedbackState, KeepCws
from captum_feedback.wsol.energy import energy_map, summation_energy_map, summation_fsp_fr_energy_map


class FeedbackEnergyMaps(NamedTuple):
    """The maps of one FSP run (:meth:`FeedbackPipeline.energy_maps`), each ``(B, 1, H, W)``."""

    fsp: Tensor
    """The FSP energy map (Sec. 3.4.1)."""
    summation: Tensor
    """The Summation Energy Map (Sec. 4.3)."""
    fsp_fr: Tensor
    """The FSP-FR energy map (Sec. 4.3, Procedure 1 step 6)."""
    summation_fsp_fr: Tensor
    """Their sum (Procedure 2, step 4)."""
    state: FeedbackState


class FeedbackPipeline:
    r"""FSP for a class, then FR from the neurons it kept at a middle layer.

    Args:
        model: The classifier, an ``nn.Module`` in ``eval()`` mode.
        layer: The middle layer of the FSP-FR map (the paper's ``conv5_2``; the released code
            uses ``conv5_1``), called once per forward pass.
        config: A preset name (``"default"``, ``"paper"``, ``"released_code"``) or a
            :class:`~captum_feedback.FeedbackConfig`.

    Example::

        pipeline = FeedbackPipeline(model, model.features[23], config="released_code")
        maps = pipeline.energy_maps(images, target=[3, 7])
        maps.summation.shape   # (2, 1, H, W)
    """

    def __init__(self, model: nn.Module, layer: nn.Module, config: ConfigLike = None) -> None:
        self.layer_name = check_layer(model, layer)
        self.model, self.layer = model, layer
        self.config: FeedbackConfig = resolve_config(config)
        self._fsp = FeedbackSelectivePruning(model)
        self._neurons = NeuronFeedback(model, layer)

    def select(self, inputs: TensorOrTuple, target: TargetType = None, additional_forward_args: Any = None,
               keep_cws: KeepCws = "summed") -> FeedbackState:
        """FSP with the layer's output and CWs kept (:meth:`FeedbackSelectivePruning.select`)."""
        return self._fsp.select(inputs, target, additional_forward_args, config=self.config, keep_cws=keep_cws,
                                layers=(self.layer,))

    def kept_neurons(self, state: FeedbackState) -> Tensor:
        """The layer's neurons FSP kept, as booleans shaped like the layer's output.

        A neuron is kept when its contribution ``dS/dh * h`` is positive and its CW is at
        least ``config.maps.neuron_ratio`` times the mean positive CW of the layer's active neurons
        (``mean_thd.m`` of the released code; ratio 0 keeps every positive contribution).
        """
        contribution = layer_contribution(state, self.layer_name)
        output = state.layer_outputs[self.layer_name]
        selector = SelectionRule(MeanRatio(self.config.maps.neuron_ratio)).selector(
            state.layer_cws[self.layer_name], output != 0)
        return keep_mask(selector, output).bool() & (contribution > 0)

    def fsp_fr(self, inputs: TensorOrTuple, state: FeedbackState, additional_forward_args: Any = None
               ) -> TensorOrTuple:
        """The FSP-FR attribution: the kept neurons together are the target of one FR pass
        (threshold ``config.maps.fr_threshold``) down to the input (Procedure 1, steps 5-6).

        Returns:
            Input-shaped gradients, a tensor or a tuple as ``inputs``.
        """
        state.check_inputs(inputs)
        kept = self.kept_neurons(state)

        def kept_sum(output: Tensor) -> Tensor:
            return (output * kept.to(output)).flatten(1).sum(1)

        return self._neurons.attribute(inputs, kept_sum, additional_forward_args, self.config.fr_rule)

    def summation(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None) -> Tensor:
        """The Summation Energy Map alone, ``(B, 1, H, W)``: the same as :meth:`energy_maps`'s,
        from one FSP run that keeps neither the layer nor the input gradient
        (``select(..., attributions=False)``) and makes no FR pass."""
        return summation_energy_map(self._fsp.select(inputs, target, additional_forward_args, config=self.config,
                                                     attributions=False))

    def energy_maps(self, inputs: Tensor, target: TargetType = None, additional_forward_args: Any = None
                    ) -> FeedbackEnergyMaps:
        """Every energy map of the paper from one FSP run on images ``(B, C, H, W)``."""
        state = self.select(inputs, target, additional_forward_args)
        fsp_fr = energy_map(self.fsp_fr(inputs, state, additional_forward_args))
        summation = summation_energy_map(state)
        return FeedbackEnergyMaps(energy_map(state.attributions[0]), summation, fsp_fr,
                                  summation_fsp_fr_energy_map(summation, fsp_fr), state)
