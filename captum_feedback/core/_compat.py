"""Captum's input and target conventions, written here because Captum's private helpers
(``captum._utils.*``) have been renamed between releases."""

from __future__ import annotations

from typing import Any, List, Tuple, Union

import torch
from torch import Tensor

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
TargetType = Union[None, int, Tuple[int, ...], Tensor, List[Any]]


def finite_rows(t: Tensor) -> Tensor:
    """Per row of a ``(B, n)`` tensor, whether all its values are finite: its largest and
    smallest values are (a NaN propagates through both, an infinity reaches one). Two reductions
    that make no booleans or copies: ``isfinite(t).all(1)`` is eight times slower on the CPU,
    the row sum of ``0 * t`` (a copy) three times at a batch of 16 (issue #22)."""
    return t.amax(1).isfinite() & t.amin(1).isfinite()


def blank_rows(t: Tensor) -> Tensor:
    """Per row of a ``(B, n)`` tensor, whether every value is zero (a NaN is not), from the same
    reductions as :func:`finite_rows`: ``any(1)`` of floats is seven times slower on the CPU."""
    return (t.amax(1) == 0) & (t.amin(1) == 0)


def format_inputs(inputs: TensorOrTuple) -> Tuple[Tuple[Tensor, ...], bool]:
    """Validated, detached, contiguous, gradient-requiring copies of the inputs, and whether they
    were a tuple.

    Raises:
        TypeError: an input is not a floating-point tensor.
        ValueError: no input is given, an empty batch, inputs that disagree on the batch size,
            a NaN or infinite value, or an input made in ``torch.inference_mode()``.
        RuntimeError: called inside ``torch.inference_mode()``.
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("Feedback attributions cannot run inside torch.inference_mode(): they need "
                           "autograd. Call them outside the inference_mode block (torch.no_grad() is fine).")
    is_tuple = isinstance(inputs, tuple)
    items = inputs if is_tuple else (inputs,)
    if not items:
        raise ValueError("inputs is an empty tuple; give at least one tensor.")
    for i, item in enumerate(items):
        if not isinstance(item, Tensor):
            raise TypeError(f"inputs[{i}] must be a torch.Tensor, got {type(item).__name__}.")
        if not item.is_floating_point():
            raise TypeError(
                f"inputs[{i}] has dtype {item.dtype}; attributions need floating-point inputs "
                "(convert images with .float() and the model's normalization)."
            )
        if item.dim() == 0:
            raise ValueError(f"inputs[{i}] is a scalar; inputs need a leading batch dimension.")
        if item.shape[0] == 0:
            raise ValueError(f"inputs[{i}] is an empty batch (shape {tuple(item.shape)}); give at least one sample.")
        if item.is_inference():
            raise ValueError(f"inputs[{i}] was made inside torch.inference_mode() and cannot take part in "
                             "autograd; make it outside the block, or pass a copy made outside (x.clone()).")
        if not finite_rows(item.detach().reshape(1, -1)).all():
            raise ValueError(f"inputs[{i}] contains NaN or infinite values.")
    if len({item.shape[0] for item in items}) > 1:
        raise ValueError(f"inputs disagree on the batch size: {[tuple(t.shape) for t in items]}.")
    # One memory layout (contiguous) for every input: a channels_last input would run other
    # convolution kernels, whose float rounding flips gates of units at the rounding level.
    return tuple(item.detach().contiguous().requires_grad_(True) for item in items), is_tuple


def format_additional_args(additional_forward_args: Any) -> Tuple[Any, ...]:
    """Captum's rule: ``None`` is no argument, a tuple is several, anything else is one."""
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)


def format_output(is_tuple: bool, values: Tuple[Tensor, ...]) -> TensorOrTuple:
    return values if is_tuple else values[0]


def _check_index(target: Tuple[int, ...], shape: Tuple[int, ...]) -> None:
    if len(target) > len(shape) - 1:
        raise ValueError(f"target {target} has more dimensions than the model output {shape}.")
    for index, size in zip(target, shape[1:]):
        if not -size <= index < size:
            raise ValueError(f"target {target} is out of range for a model output of shape {shape}.")


def _as_index(item: Any) -> Tuple[int, ...]:
    if isinstance(item, Tensor):
        item = item.tolist()
    if isinstance(item, (tuple, list)):
        return tuple(int(i) for i in item)
    if isinstance(item, int) and not isinstance(item, bool):
        return (item,)
    raise TypeError(f"target entries must be ints or tuples of ints, got {type(item).__name__}.")


def per_sample_targets(target: TargetType, batch_size: int) -> List[Tuple[int, ...]]:
    """Expands every target form Captum accepts into one index tuple per sample.

    ``None`` means the output has one value per sample; an int, a tuple or a one-element
    tensor applies to every sample; a list or a tensor of ``batch_size`` entries gives one
    target per sample.
    """
    if target is None:
        return [()] * batch_size
    if isinstance(target, Tensor):
        if target.numel() == 1:
            return [(int(target.item()),)] * batch_size
        target = target.tolist()
    if isinstance(target, list):
        if len(target) != batch_size:
            raise ValueError(f"target has {len(target)} entries for a batch of {batch_size}.")
        return [_as_index(t) for t in target]
    return [_as_index(target)] * batch_size


def select_targets(output: Tensor, targets: List[Tuple[int, ...]]) -> Tensor:
    """The target score of each sample, shape ``(batch,)``.

    Raises:
        ValueError: a target does not index the output, or the output is not one value per
            sample when ``target`` is ``None``.
    """
    shape = tuple(output.shape)
    if not shape or shape[0] != len(targets):
        raise ValueError(f"The model output of shape {shape} has no batch dimension of {len(targets)}.")
    if len({len(index) for index in targets}) == 1 and len(targets[0]) == len(shape) - 1 > 0:
        # One value per sample at full-length indices: one indexing operation, not a few per sample.
        for index in set(targets):
            _check_index(index, shape)
        rows = torch.arange(len(targets), device=output.device)
        return output[(rows, *torch.tensor(targets, device=output.device).unbind(1))]
    scores = []
    for row, index in zip(output, targets):
        _check_index(index, shape)
        value = row[index] if index else row
        if value.numel() != 1:
            raise ValueError(
                f"target {index or None} selects {value.numel()} values from an output of shape "
                f"{shape}; give a target that selects one value per sample."
            )
        scores.append(value.reshape(()))
    return torch.stack(scores)
