"""Feedback Recovering (FR, Algorithm 1 of the paper)."""

from __future__ import annotations

from typing import Any, Dict, Optional

from captum.log import log_usage
from torch import Tensor

from captum_feedback.core._compat import TargetType, TensorOrTuple
from captum_feedback.core.attribution import FeedbackAttribution
from captum_feedback.core.engine import GatePolicy, Site
from captum_feedback.core.kernels import agreeing
from captum_feedback.core.selection import SelectionRule, Threshold, as_rule, keep_mask


class RecoveringPolicy(GatePolicy):
    """Gates set top-down inside the backward pass from the *modified* CWs (Algorithm 1)."""

    def __init__(self, rule: SelectionRule) -> None:
        self.rule = rule
        self.activations: Dict[int, Tensor] = {}

    def gate(self, site: Site, x: Tensor) -> Optional[Tensor]:
        self.activations[site.index] = x
        return None

    def backward(self, site: Site, cw: Tensor, signs_written: bool = False) -> Tensor:
        if site.kind == "layer":
            return cw
        x = self.activations.pop(site.index)
        if self.rule.writes_signs:  # the zero threshold: one pass over memory
            return agreeing(cw, x)
        return cw * keep_mask(self.rule.selector(cw), x)


class FeedbackRecovering(FeedbackAttribution):
    r"""Feedback Recovering (Cao et al., TPAMI 2018, Sec. 3.4.1, Algorithm 1).

    FR sets the gates layer by layer from the top: at each ReLU-like or max-pooling site it
    closes the units whose incoming, already-modified contribution weight is not positive,
    then propagates the gated weights further down. The result restores the pattern in the
    target neuron's receptive field but is not class-discriminative (Fig. 4); use
    :class:`FeedbackSelectivePruning` for class-specific maps.

    In the linearized network a site's CW depends only on the gates above it, which the same
    top-down pass has just set, so Algorithm 1's outer loop reaches its fixed point after one
    pass; FR therefore costs one forward and one backward pass.

    On a network whose only gate sites are ReLUs, FR is Guided Backpropagation (Springenberg
    et al.): both pass ``relu(grad) * 1[x > 0]`` through each ReLU. They differ at max-pooling:
    FR also gates a pool's output, Guided Backpropagation does not.

    Args:
        forward_func: The model (``nn.Module`` or callable), in ``eval()`` mode.
    """

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        threshold: Threshold = "zero",
    ) -> TensorOrTuple:
        r"""Input attribution of the target with FR's gates.

        Args:
            inputs: A tensor or a tuple of tensors with the batch first, as for
                ``captum.attr.Saliency``.
            target: Output index of the target score in any of Captum's target forms.
            additional_forward_args: Further arguments to the model, after the inputs.
            threshold: The selection threshold; ``"zero"`` is Algorithm 1's ``delta``, and
                ``MeanRatio(0.1)`` the released code's FR from many neurons (``FR_sim.m``).

        Returns:
            The gradients of the target with respect to each input under FR's gates, the
            same shapes as ``inputs``.

        Examples::

            >>> attribution = FeedbackRecovering(model.eval()).attribute(images, target=3)
        """
        return self.target_gradients(inputs, target, additional_forward_args, RecoveringPolicy(as_rule(threshold)))



FR = FeedbackRecovering
