"""The base class of the feedback attributions: Captum's conventions around a gating session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

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


def model_scores(output: Any) -> Tensor:
    """The scores in what a model returns: a tensor as it is, else the ``logits`` attribute or
    key, the only tensor of a dict, or the first tensor of a tuple or list.

    Raises:
        TypeError: no tensor, or a dict of several tensors and no ``logits`` (pass an
            ``output_selector``).
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(getattr(output, "logits", None), Tensor):
        return output.logits
    if isinstance(output, Mapping):
        if isinstance(output.get("logits"), Tensor):
            return output["logits"]
        tensors = [key for key, value in output.items() if isinstance(value, Tensor)]
        if len(tensors) == 1:
            return output[tensors[0]]
        raise TypeError(f"The model returned a dict with tensors {tensors} and no 'logits'; say which holds the "
                        "scores with output_selector=lambda out: out[KEY].")
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    raise TypeError(f"The model must return a tensor (or a tuple, dict or object holding one), got "
                    f"{type(output).__name__}; pass an output_selector.")


class FeedbackAttribution(GradientAttribution):
    """Shared plumbing of :class:`FeedbackSelectivePruning` and :class:`FeedbackRecovering`.

    Args:
        forward_func: The model, an ``nn.Module`` (site names then follow module paths) or any
            callable that returns one row of outputs per sample.
        output_selector: Picks the scores from what the model returns; ``None`` takes a tensor
            as it is, the ``logits`` of an object or dict (Hugging Face style), the only tensor
            of a dict, or the first tensor of a tuple or list (:func:`model_scores`).
    """

    def __init__(self, forward_func: Callable, output_selector: Optional[Callable[[Any], Tensor]] = None) -> None:
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}.")
        if output_selector is not None and not callable(output_selector):
            raise TypeError(f"output_selector must be callable, got {type(output_selector).__name__}.")
        super().__init__(forward_func)
        self.output_selector = output_selector

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

    def _forward(
        self, session: GatingSession, batch: Batch, policy: GatePolicy, taps: Sequence[nn.Module] = ()
    ) -> Tuple[Tensor, dict]:
        output, tapped = session.forward(batch.inputs, batch.args, policy, taps)
        output = model_scores(output) if self.output_selector is None else self.output_selector(output)
        if not isinstance(output, Tensor):
            raise TypeError(f"output_selector must return a tensor, got {type(output).__name__}.")
        if not session.sites:
            raise ValueError(
                "The model has no gate site: no ReLU-like or smooth activation (relu, relu6, hardtanh, "
                "leaky_relu, prelu, silu, gelu, hardswish) or max-pooling was called in its forward pass."
            )
        return output, tapped

