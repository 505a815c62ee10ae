"""Branches that linearized passes compute for nothing (Sec. 3.3 carried over).

A linearized pass freezes a squeeze-excitation block's sigmoid to its first-pass output
(:mod:`~captum_feedback.core.frozen_ops`): the pooling, the two small convolutions and the
ReLU site that feed it still run on every later pass, and nothing reads what they compute.
On MobileNetV3-Small they are 9 of its 33 gate sites and 27 of its other calls, a tenth of a
later pass. :class:`DeadBranches` finds such modules in the first pass and hands later passes a
stand-in for each, which returns a zero tensor of the output's layout without running it.

What the first pass proves, and how:

* Nothing later passes compute depends on a module's output: its autograd node is not reached
  from the model's output when the search does not pass through frozen constant operations
  (:attr:`~.frozen_ops.FrozenOp.constant`), whose later output is their recorded one.
* Nothing reads its values outside autograd's sight: every torch call whose result is not a
  tensor that requires a gradient (a comparison, ``item()``, ``detach()``, a call under
  ``no_grad``) makes the nodes of its tensor arguments roots of the search too. Only calls
  that read a tensor's layout (shape, strides, dtype, device), which the stand-in shares, are
  exempt.
* Skipping it changes nothing else: it is a leaf module of a standard stateless type (no
  buffers it updates, no attributes it sets), called once a pass, with no hooks.

Skipping a branch also leaves its gate sites out of the pass, so a session skips only where its
policy says their calls would change nothing (:meth:`~.engine.GatePolicy.settled`).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.graph import Node

from captum_feedback.core import autograd_graph
from captum_feedback.core.autograd_graph import OutsideReads, global_hooks, has_hooks

_GATES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softmax)
"""Modules whose call a linearized pass may freeze to a constant: their siblings are the
candidates (a squeeze-excitation block's pooling, convolutions and activation)."""
_STATELESS = frozenset({
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.Flatten, nn.Identity, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.BatchNorm3d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.ReLU, nn.ReLU6, nn.Hardtanh,
    nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.LayerNorm,
    nn.GroupNorm,
})
"""Leaf modules whose ``forward`` only computes its output, by exact type (a subclass may do
more). Training modes that would update statistics or drop units are refused before any pass
(:func:`~.guards.check_model`)."""


class Watched:
    """A candidate's ``forward`` in the first pass (an instance attribute, removed after): the
    module's own, its calls recorded with the session's site and frozen-call counts before and
    after, and its output. Cheaper than a pair of hooks, which also hide the call's frames
    from the session's site naming (:data:`WATCHED_FRAME`)."""

    __slots__ = ("module", "counts", "calls")

    def __init__(self, module: nn.Module, counts: Callable[[], Tuple[int, int]]) -> None:
        self.module, self.counts = module, counts
        self.calls: List[Tuple[Tuple[int, int], Tuple[int, int], Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = self.counts()
        output = type(self.module).forward(self.module, *args, **kwargs)
        self.calls.append((start, self.counts(), output))
        return output


WATCHED_FRAME = Watched.__call__.__code__
"""The code of a :class:`Watched` call's frame, between ``nn.Module.__call__`` and ``forward``."""


class Stub(NamedTuple):
    """What a later pass does instead of calling a module of a dead branch."""

    sites: int
    """Gate-site calls the module made in the first pass, which the session counts as made."""
    frozen: int
    """Calls of frozen operations it made."""
    output: Tensor
    """Zeros of the first-pass output's shape, strides, dtype and device."""


def _dead(output: Tensor, live: Dict[Node, None]) -> bool:
    """Whether a first-pass tensor is computed in autograd's sight and nothing live reads it."""
    return output.grad_fn is not None and output.grad_fn not in live


class DeadBranches:
    """The modules of a model whose output linearized passes after the first never read.

    Args:
        modules: The model's modules (:func:`~.guards.named_modules`).
    """

    def __init__(self, modules: Iterable[Tuple[str, nn.Module]]) -> None:
        self.candidates = [child for _, parent in modules
                           if any(isinstance(c, _GATES) for c in parent._modules.values())
                           for child in parent._modules.values()
                           if child is not None and not isinstance(child, _GATES) and type(child) in _STATELESS
                           and not child._modules]
        """Leaf modules of a stateless type beside a sigmoid-like module (:data:`_GATES`)."""
        self.stubs: Dict[nn.Module, Stub] = {}
        """The modules later passes may skip, found by :meth:`find`."""
        self.dead_sites: List[int] = []
        """Every site whose output later passes never read (skipped or not)."""
        self._watched: List[Watched] = []
        self._cuts: Dict[Node, None] = {}
        self._sites: Dict[int, Tensor] = {}

    # ------------------------------------------------------------------ the first pass
    @contextlib.contextmanager
    def watched(self, counts: Callable[[], Tuple[int, int]]) -> Iterator[None]:
        """Records each candidate's calls in the first pass (:class:`Watched`), with the
        session's site and frozen-call ``counts``. A candidate whose ``forward`` was replaced
        already is left alone, and never skipped."""
        self._watched = [Watched(m, counts) for m in self.candidates if "forward" not in m.__dict__]
        try:
            for watched in self._watched:
                vars(watched.module)["forward"] = watched
            yield
        finally:
            for watched in self._watched:
                vars(watched.module).pop("forward", None)

    def cut(self, output: Tensor) -> None:
        """The first-pass output of an operation that later passes freeze to a constant."""
        if output.grad_fn is not None:
            self._cuts[output.grad_fn] = None

    def site(self, index: int, output: Tensor) -> None:
        """A gate site's first-pass output."""
        self._sites[index] = output

    def find(self, output: Any, reads: OutsideReads) -> None:
        """Decides, after the first forward pass, which candidates later passes may skip."""
        roots = reads.roots(output)
        if roots is not None:
            live = autograd_graph.live(roots, self._cuts)
            self.dead_sites = [i for i, out in self._sites.items() if _dead(out, live)]
            self.stubs = {w.module: stub for w in self._watched for stub in [_stub(w.calls, live)] if stub is not None}
        self._watched, self._cuts, self._sites = [], {}, {}

    # ------------------------------------------------------------------ later passes
    def skippable(self) -> bool:
        """Whether no hook would miss a stub's call now."""
        return bool(self.stubs) and not global_hooks() and not any(has_hooks(m) for m in self.stubs)


def _stub(calls: List[Tuple[Tuple[int, int], Tuple[int, int], Any]], live: Dict[Node, None]) -> Optional[Stub]:
    """The stub of a candidate called once, whose output is a dead tensor of a dense layout."""
    if len(calls) != 1 or not isinstance(calls[0][2], Tensor):
        return None
    (sites, frozen), (sites_after, frozen_after), out = calls[0]
    dense = out.is_contiguous() or (out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last))
    if not (dense and _dead(out, live)):
        return None
    zeros = torch.empty_strided(out.shape, out.stride(), dtype=out.dtype, device=out.device).zero_()
    return Stub(sites_after - sites, frozen_after - frozen, zeros)

