"""Convolutions and the batch normalizations that read them, folded into one convolution for
the passes after a session's first.

An evaluation-mode batch normalization of a convolution's output is the convolution with weights
``w * s`` and bias ``(b - mean) * s + beta``, where ``s = gamma / sqrt(var + eps)`` per output
channel. Captum's methods and a session's first pass run both; later passes run the folded
convolution and skip the normalization, one operation fewer in each forward and backward pass
(a tenth of a later pass on MobileNetV3 at batch 1, issue #22). Their results differ from the
unfolded ones by rounding only.

What the first pass proves, and how (:mod:`~.autograd_graph`):

* The normalization reads the convolution's output as it was returned: its input is that
  tensor (not a view of it), which nothing changed in place (its version is still 0 after the
  pass, so its autograd node is still the convolution's).
* Nothing else reads it: the convolution's node has one reader in all, where the normalization
  is one (through autograd, or outside its sight: a call under ``no_grad`` counts as a read).
* Each module is called once a pass: the convolution through ``_conv_forward`` with its own
  weight and bias (as ``nn.Conv2d.forward`` and subclasses that pad first call it), the
  normalization a standard ``nn.BatchNorm*d`` by exact type, in evaluation mode with running
  statistics.
* The folded weights hold no more elements than one sample's activation, which the skipped
  normalization no longer keeps for its backward pass; a batch folds the pairs its samples
  alone fold.

A later pass replaces, for the session's thread, the convolution's ``_conv_forward`` and the
normalization's ``forward`` (instance attributes, removed after the pass). A pair with hooks
on either module at that time, or whose methods something else replaced after the first pass
(another session, on another thread), or every pair while hooks for all modules are registered,
runs unfolded.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_feedback.core.autograd_graph import OutsideReads, global_hooks, has_hooks, readers

_CONV_FORWARDS = (nn.Conv1d._conv_forward, nn.Conv2d._conv_forward, nn.Conv3d._conv_forward)
"""The convolutions' own ``_conv_forward``: a subclass that overrides it may use the weights otherwise."""
_NORMS = frozenset({nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d})


class Pair(NamedTuple):
    """A convolution whose output only a batch normalization reads."""

    conv: nn.Module
    norm: nn.Module


def _foldable_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and type(module)._conv_forward in _CONV_FORWARDS


def _foldable_norm(module: nn.Module) -> bool:
    return (type(module) in _NORMS and not module.training and module.running_mean is not None
            and module.running_var is not None)


def folded(pairs: Iterable[Pair]) -> Dict[Pair, Tuple[Tensor, Tensor]]:
    """Per pair, the weight and bias of the convolution that computes its output (no gradient)."""
    weights = {}
    with torch.no_grad():
        for pair in pairs:
            conv, norm = pair
            scale = torch.add(norm.running_var, norm.eps).rsqrt_()
            if norm.weight is not None:
                scale.mul_(norm.weight)
            shift = torch.mul(norm.running_mean, scale).neg_()
            if norm.bias is not None:
                shift.add_(norm.bias)
            if conv.bias is not None:
                shift.addcmul_(conv.bias, scale)
            weights[pair] = conv.weight * scale.view((-1,) + (1,) * (conv.weight.dim() - 1)), shift
    return weights


class Folds:
    """The convolution and batch-normalization pairs of a model that later passes fold.

    Args:
        modules: The model's modules (:func:`~.guards.named_modules`).
    """

    def __init__(self, modules: Iterable[Tuple[str, nn.Module]]) -> None:
        modules = [module for _, module in modules]
        self._convs = [m for m in modules if _foldable_conv(m)]
        self._norms = [m for m in modules if _foldable_norm(m)]
        self.pairs: List[Pair] = []
        """The pairs later passes fold, found by :meth:`find`."""
        self._conv_calls: Dict[nn.Module, List[Optional[Tensor]]] = {}
        """Per convolution, its first-pass outputs (``None``: a call with other weights)."""
        self._norm_calls: Dict[nn.Module, List[Optional[Tensor]]] = {}
        """Per normalization, its first-pass inputs (``None``: a call with other arguments)."""
        self._forwards: Dict[Pair, Tuple[Callable[..., Tensor], Callable[..., Any]]] = {}
        """Per pair, the convolution's ``_conv_forward`` and the normalization's ``forward`` of later passes."""
        self._outputs: Dict[nn.Module, Tensor] = {}
        """Per normalization, the folded convolution's output it is about to read."""
        self._thread = 0

    @property
    def candidates(self) -> bool:
        """Whether the model has both kinds of module."""
        return bool(self._convs and self._norms)

    # ------------------------------------------------------------------ the first pass
    @contextlib.contextmanager
    def watched(self) -> Iterator[None]:
        """Records the first pass's calls of the convolutions and normalizations; a module whose
        method was replaced already is left alone, and never folded."""
        convs = [m for m in self._convs if "_conv_forward" not in m.__dict__]
        norms = [m for m in self._norms if "forward" not in m.__dict__]
        try:
            for conv in convs:
                vars(conv)["_conv_forward"] = self._recording_conv(conv)
            for norm in norms:
                vars(norm)["forward"] = self._recording_norm(norm)
            yield
        finally:
            for conv in convs:
                vars(conv).pop("_conv_forward", None)
            for norm in norms:
                vars(norm).pop("forward", None)

    def _recording_conv(self, conv: nn.Module) -> Callable[..., Tensor]:
        calls = self._conv_calls.setdefault(conv, [])

        def record(input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
            out = type(conv)._conv_forward(conv, input, weight, bias)
            calls.append(out if weight is conv.weight and bias is conv.bias else None)
            return out

        return record

    def _recording_norm(self, norm: nn.Module) -> Callable[..., Any]:
        calls = self._norm_calls.setdefault(norm, [])

        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append(args[0] if len(args) == 1 and not kwargs else None)
            return type(norm).forward(norm, *args, **kwargs)

        return record

    def find(self, output: Any, reads: OutsideReads) -> None:
        """Decides, after the first forward pass, which pairs later passes fold. A convolution's
        output that nothing changed in place (version 0) still has its own node; a normalization
        reads it in or outside autograd's sight, so where it has one reader that is all."""
        produced = {id(calls[0]): conv for conv, calls in self._conv_calls.items()  # the outputs are held
                    if len(calls) == 1 and calls[0] is not None and calls[0]._version == 0}
        matches = []
        for norm, calls in self._norm_calls.items():
            if len(calls) != 1 or id(calls[0]) not in produced:
                continue
            x, conv = calls[0], produced[id(calls[0])]
            if x.grad_fn is not None and conv.weight.numel() <= x.numel() // x.shape[0] \
                    and conv.weight.dtype == norm.running_var.dtype:
                matches.append((Pair(conv, norm), x.grad_fn))
        roots = reads.roots(output)
        if roots is not None and matches:
            counts = readers(roots, [node for _, node in matches])
            self.pairs = [pair for pair, node in matches if counts[node] == 1]
        self._conv_calls, self._norm_calls = {}, {}

    # ------------------------------------------------------------------ later passes
    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """This thread's pass runs the folded pairs that no hook would miss now, and whose methods
        nothing else (another session, on another thread) has replaced meanwhile."""
        if not self._forwards:
            weights = folded(self.pairs)
            self._forwards = {pair: (self._folded_conv(pair, *weights[pair]), self._skipped_norm(pair.norm))
                              for pair in self.pairs}
        pairs = [] if global_hooks() else [p for p in self.pairs if not (has_hooks(p.conv) or has_hooks(p.norm))
                                           and "_conv_forward" not in vars(p.conv) and "forward" not in vars(p.norm)]
        self._thread = threading.get_ident()
        try:
            for pair in pairs:
                vars(pair.conv)["_conv_forward"], vars(pair.norm)["forward"] = self._forwards[pair]
            yield
        finally:
            for pair in pairs:
                vars(pair.conv).pop("_conv_forward", None)
                vars(pair.norm).pop("forward", None)
            self._outputs = {}

    def _folded_conv(self, pair: Pair, weight: Tensor, bias: Tensor) -> Callable[..., Tensor]:
        conv, own = pair.conv, type(pair.conv)._conv_forward

        def forward(input: Tensor, conv_weight: Tensor, conv_bias: Optional[Tensor]) -> Tensor:
            if threading.get_ident() != self._thread or conv_weight is not conv.weight or conv_bias is not conv.bias:
                return own(conv, input, conv_weight, conv_bias)
            out = own(conv, input, weight, bias)
            self._outputs[pair.norm] = out
            return out

        return forward

    def _skipped_norm(self, norm: nn.Module) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if (threading.get_ident() == self._thread and len(args) == 1 and not kwargs
                    and self._outputs.pop(norm, None) is args[0]):
                return args[0]
            return type(norm).forward(norm, *args, **kwargs)

        return forward
