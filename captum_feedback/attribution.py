"""The base class of the feedback attributions: Captum's conventions around a gating session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Sequence, Tuple

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn

from captum_feedback._compat import (
    TargetType,
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    per_sample_targets,
)
from captum_feedback.engine import GatePolicy, GatingSession, check_depends_on_inputs


@dataclass
class Batch:
    """Validated inputs of one ``attribute`` call."""

    inputs: Tuple[Tensor, ...]
    is_tuple: bool
    args: Tuple[Any, ...]
    targets: List[Tuple[int, ...]]

    @property
    def size(self) -> int:
        return self.inputs[0].shape[0]


def input_gradients(scores: Tensor, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Gradients of the summed per-sample scores with respect to every input.

    ``torch.autograd.grad`` leaves every parameter's ``.grad`` untouched.
    """
    check_depends_on_inputs(scores)
    grads = torch.autograd.grad(scores.sum(), inputs, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads))


class FeedbackAttribution(GradientAttribution):
    """Shared plumbing of :class:`FeedbackSelectivePruning` and :class:`FeedbackRecovering`.

    Args:
        forward_func: The model, an ``nn.Module`` (site names then follow module paths) or any
            callable that returns one row of outputs per sample.
    """

    def __init__(self, forward_func: Callable) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}.")
        super().__init__(forward_func)

    def _batch(self, inputs: TensorOrTuple, target: TargetType, additional_forward_args: Any) -> Batch:
        formatted, is_tuple = format_inputs(inputs)
        batch_size = formatted[0].shape[0]
        low = sorted({str(x.dtype) for x in formatted if x.dtype in (torch.float16, torch.bfloat16)})
        if low:
            warnings.warn(
                f"Inputs in {', '.join(low)}: gates are decided from alpha * x at that precision, where "
                "many units sit at the rounding level, so the maps differ from those of the same model in "
                "float32. Convert the model and inputs with .float() for maps you can compare or publish.",
                UserWarning, stacklevel=3)
        return Batch(
            formatted, is_tuple, format_additional_args(additional_forward_args),
            per_sample_targets(target, batch_size),
        )

    def _session(self, batch: Batch, linearize: bool) -> GatingSession:
        return GatingSession(self.forward_func, linearize, batch.size)

    @staticmethod
    def _forward(
        session: GatingSession, batch: Batch, policy: GatePolicy, taps: Sequence[nn.Module] = ()
    ) -> Tuple[Tensor, dict]:
        output, tapped = session.forward(batch.inputs, batch.args, policy, taps)
        if not isinstance(output, Tensor):
            raise TypeError(f"The model must return a tensor, got {type(output).__name__}.")
        if not session.sites:
            raise ValueError(
                "The model has no gate site: no ReLU-like activation (relu, relu6, hardtanh, "
                "leaky_relu, prelu) or max-pooling was called in its forward pass."
            )
        return output, tapped

