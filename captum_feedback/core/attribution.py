"""The base class of the feedback attributions: Captum's conventions around a gating session."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch
from captum.attr import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_feedback.core._compat import (
    TargetType,
    TensorOrTuple,
    format_additional_args,
    format_inputs,
    format_output,
    per_sample_targets,
    select_targets,
)
from captum_feedback.core.engine import Gate, GatePolicy, GatingSession, HeapHold, Site
from captum_feedback.core.guards import check_depends_on_inputs


@dataclass
class Batch:
    """Validated inputs of one ``attribute`` call.

    Attributes:
        signs: Per sample, ``1`` to explain its target score or ``-1`` for the score's negation
            (the dual of :meth:`negated`); ``None``: all ``1``.
    """

    inputs: Tuple[Tensor, ...]
    is_tuple: bool
    args: Tuple[Any, ...]
    targets: List[Tuple[int, ...]]
    signs: Optional[Tensor] = None

    @property
    def size(self) -> int:
        return self.inputs[0].shape[0]

    def scores(self, output: Tensor) -> Tensor:
        """The per-sample scores the batch explains: its targets' outputs, negated where
        :attr:`signs` says so."""
        scores = select_targets(output, self.targets)
        return scores if self.signs is None else scores * self.signs.to(scores)

    def _per_sample(self, value: Any) -> bool:
        """Captum's convention: an additional tensor argument whose first dimension is the batch."""
        return isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == self.size

    def samples(self) -> List[Batch]:
        """One batch per sample, as if each had been given alone: the inputs' rows (new leaves),
        the rows of every additional tensor argument whose first dimension is the batch (Captum's
        convention for additional arguments), every other argument as it is, and its target."""
        def row(value: Any, i: int) -> Any:
            return value[i:i + 1] if self._per_sample(value) else value

        return [Batch(tuple(x[i:i + 1].detach().requires_grad_() for x in self.inputs), self.is_tuple,
                      tuple(row(arg, i) for arg in self.args), [self.targets[i]],
                      None if self.signs is None else self.signs[i:i + 1]) for i in range(self.size)]

    def negated(self) -> Batch:
        """The same samples (new leaves) for their negated target scores: the targets' duals
        (Zhang et al., ECCV 2016)."""
        return replace(self, inputs=tuple(x.detach().requires_grad_() for x in self.inputs),
                       signs=-torch.ones(self.size))


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


class _EveryGateClosed(GatePolicy):
    def gate(self, site: Site, x: Tensor) -> Gate:
        return Gate(torch.zeros_like(x, dtype=torch.bool))


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
        self._heap = HeapHold()  # keeps glibc's heap between calls (engine.HeapHold)

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

    def _session(self, batch: Batch, linearize: bool, single_pass: bool = False) -> GatingSession:
        return GatingSession(self.forward_func, linearize, batch.size, self._heap, single_pass)

    def _forward(
        self, session: GatingSession, batch: Batch, policy: GatePolicy, taps: Sequence[nn.Module] = ()
    ) -> Tuple[Tensor, dict]:
        output, tapped = session.forward(batch.inputs, batch.args, policy, taps)
        output = model_scores(output) if self.output_selector is None else self.output_selector(output)
        if not isinstance(output, Tensor):
            raise TypeError(f"output_selector must return a tensor, got {type(output).__name__}.")
        if not session.sites:
            unbatched = (f" ({len(session.unbatched)} such calls, e.g. '{session.unbatched[0]}', do not have the "
                         "batch as their first dimension: run the model batch-first)") if session.unbatched else ""
            raise ValueError(
                "The model has no gate site: no ReLU-like or smooth activation (relu, relu6, hardtanh, "
                f"leaky_relu, prelu, silu, gelu, hardswish) or max-pooling was called in its forward pass{unbatched}."
            )
        return output, tapped


    def gated_gradients(
        self,
        batch: Batch,
        policy: GatePolicy,
        score: Callable[[Tensor, dict], Tensor],
        taps: Sequence[nn.Module] = (),
        linearize: bool = False,
    ) -> Tuple[Tensor, ...]:
        """One forward pass with ``policy``'s gates and one backward pass from ``score(output,
        tapped layers' outputs)`` (one value per sample) to the inputs: FR, and any custom rule."""
        session = self._session(batch, linearize, single_pass=True)
        with session.installed():
            output, tapped = self._forward(session, batch, policy, taps)
            return input_gradients(score(output, tapped), batch.inputs)

    def ungated_share_of(self, batch: Batch, plain: Tuple[Tensor, ...], linearize: bool = False) -> Tensor:
        """Per sample, the norm of the target's input gradient with every gate closed over that
        of ``plain``, the gradient with every gate open (:func:`ungated_share`)."""
        closed = self.gated_gradients(batch, _EveryGateClosed(), lambda output, _: batch.scores(output),
                                      linearize=linearize)
        norm = lambda grads: torch.cat([g.flatten(1) for g in grads], 1).norm(dim=1)  # noqa: E731
        return torch.where(norm(plain) > 0, norm(closed) / norm(plain).clamp_min(1e-30), torch.zeros(()))

    def target_gradients(self, inputs: TensorOrTuple, target: TargetType, additional_forward_args: Any,
                         policy: GatePolicy, linearize: bool = False) -> TensorOrTuple:
        """:meth:`gated_gradients` of the target score, shaped as ``inputs`` (Captum's
        ``attribute`` contract): FR's and :class:`GatePolicyAttribution`'s attribution."""
        batch = self._batch(inputs, target, additional_forward_args)
        grads = self.gated_gradients(batch, policy, lambda output, _: batch.scores(output), linearize=linearize)
        return format_output(batch.is_tuple, grads)


class GatePolicyAttribution(FeedbackAttribution):
    r"""Input attribution under your own gate rule: one forward pass in which ``policy`` sets
    the gate of every ReLU-like and max-pooling site (:meth:`GatePolicy.gate`), and one backward
    pass in which it sees, and may change, each site's contribution weight on the way down
    (:meth:`GatePolicy.backward`). FR is this with its top-down rule; ``docs/gate_rules.md``
    writes a rule from scratch.

    Args:
        forward_func: The model (``nn.Module`` or callable), in ``eval()`` mode.
        policy: The rule, a :class:`~captum_feedback.core.engine.GatePolicy`; it must not carry
            state from one ``attribute`` call to the next.
        linearize: Freeze the first pass's activation states (Sec. 3.3), which a one-pass rule
            rarely needs.
        output_selector: As for :class:`FeedbackAttribution`.

    Example::

        >>> attribution = GatePolicyAttribution(model.eval(), MyRule()).attribute(images, target=3)
    """

    def __init__(self, forward_func: Callable, policy: GatePolicy, linearize: bool = False,
                 output_selector: Optional[Callable[[Any], Tensor]] = None) -> None:
        if not isinstance(policy, GatePolicy):
            raise TypeError(f"policy must be a GatePolicy, got {type(policy).__name__}.")
        super().__init__(forward_func, output_selector)
        self.policy, self.linearize = policy, linearize

    @log_usage()
    def attribute(self, inputs: TensorOrTuple, target: TargetType = None,
                  additional_forward_args: Any = None) -> TensorOrTuple:
        """The gradients of the target with respect to each input under the policy's gates,
        the same shapes as ``inputs`` (Captum's conventions, as ``Saliency``)."""
        return self.target_gradients(inputs, target, additional_forward_args, self.policy, self.linearize)


def ungated_share(model: Callable, inputs: TensorOrTuple, target: TargetType = None,
                  additional_forward_args: Any = None) -> Tensor:
    """Per sample, how much of the target's input gradient passes no gate site: the norm of the
    gradient with every gate closed over the norm of the plain gradient (Sec. 3.1's gates
    ``z = 0`` everywhere).

    0 for a network whose every path from the input to the output runs through a ReLU-like or
    max-pooling site (VGG, ResNet); close to 1 where most of the gradient takes a path without
    one, such as a transformer's residual stream, where FSP's gates can change little and its
    map stays close to the gradient. The CLI warns above one half.

    Returns:
        ``(B,)`` shares (0 where the plain gradient is zero).
    """
    attribution = GatePolicyAttribution(model, GatePolicy())
    batch = attribution._batch(inputs, target, additional_forward_args)
    plain = attribution.gated_gradients(batch, GatePolicy(), lambda output, _: batch.scores(output))
    return attribution.ungated_share_of(batch, plain)
