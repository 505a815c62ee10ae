"""What a session's first pass learns from the autograd graph it builds, for the later passes
that leave work out (:mod:`~captum_feedback.core.dead_branches`,
:mod:`~captum_feedback.core.folding`).

Autograd shows every differentiable read of a first-pass tensor: the nodes that take its node
as an input. Reads outside its sight (a comparison, ``item()``, ``detach()``, a call under
``no_grad``) are torch calls whose result is not a tensor that requires a gradient; the
session's ``TorchFunctionMode`` tells :class:`OutsideReads` of each, and the nodes of their
tensor arguments count as read by them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import Tensor, nn
from torch.autograd.graph import Node

_LAYOUT_READS = frozenset({
    Tensor.size, Tensor.dim, Tensor.numel, Tensor.stride, Tensor.is_contiguous, Tensor.__len__,
    Tensor.shape.__get__, Tensor.ndim.__get__, Tensor.dtype.__get__, Tensor.device.__get__,
})
"""Torch calls that read only a tensor's layout, which a stand-in of the same layout shares."""

_PLAIN = (bool, int, float, complex, str, slice, torch.dtype, torch.device, torch.layout, torch.memory_format)
"""Argument kinds that hold no tensor."""


def tensors(value: Any) -> Optional[List[Tensor]]:
    """The tensors in ``value`` (nested lists, tuples and dicts); ``None`` where it holds an
    object of another kind, which may hold tensors unseen."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple, dict)):
        found: List[Tensor] = []
        for item in (value.values() if isinstance(value, dict) else value):
            inner = tensors(item)
            if inner is None:
                return None
            found += inner
        return found
    if value is None or value is Ellipsis or isinstance(value, _PLAIN):
        return []
    return None


class OutsideReads:
    """The first pass's torch calls whose result autograd does not tie to their arguments."""

    def __init__(self) -> None:
        self.nodes: Dict[Node, None] = {}
        """The nodes of the tensors those calls read."""
        self.unseen = False
        """Such a call took an argument whose tensors could not be listed: any tensor may be read."""

    def record(self, args: tuple, kwargs: dict, func: Callable) -> None:
        """A call of ``func`` whose result is not a tensor that requires a gradient
        (``_SiteMode``'s ``on_escape``); layout reads are not reads of values."""
        if func in _LAYOUT_READS:
            return
        found = tensors((args, kwargs))
        if found is None:
            self.unseen = True
        else:
            self.nodes.update((t.grad_fn, None) for t in found if t.grad_fn is not None)

    def roots(self, output: Any) -> Optional[List[Node]]:
        """Where every read of a first-pass tensor starts: the nodes of the model's outputs and
        of the tensors read outside autograd; ``None`` where some read cannot be seen."""
        outputs = tensors(output)
        if outputs is None or self.unseen:
            return None
        return [t.grad_fn for t in outputs if t.grad_fn is not None] + list(self.nodes)


def live(roots: Iterable[Node], cuts: Dict[Node, None]) -> Dict[Node, None]:
    """The nodes a backward pass from ``roots`` reaches without passing through ``cuts``."""
    reached = dict.fromkeys(roots)
    stack = list(reached)
    while stack:
        node = stack.pop()
        if node in cuts:
            continue
        for child, _ in node.next_functions:
            if child is not None and child not in reached:
                reached[child] = None
                stack.append(child)
    return reached


def readers(roots: List[Node], nodes: Iterable[Node]) -> Counter:
    """For each of ``nodes``, how many times what starts at ``roots`` reads its output: once
    for each root it is, and once for each input of a node reached from them that takes it
    (a node that takes it twice reads it twice)."""
    wanted = set(nodes)
    counts = Counter(root for root in roots if root in wanted)
    for node in live(roots, {}):
        for child, _ in node.next_functions:
            if child in wanted:
                counts[child] += 1
    return counts


def has_hooks(module: nn.Module) -> bool:
    """Whether hooks are registered on ``module``, which a replaced ``forward`` would skip."""
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def global_hooks() -> bool:
    """Whether hooks for every module are registered (``torch.nn.modules.module``)."""
    table = nn.modules.module
    return any(getattr(table, name, None) for name in (
        "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks"))
