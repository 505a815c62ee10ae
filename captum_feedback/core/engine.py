"""The gating engine shared by every feedback method.

A :class:`GatingSession` runs forward passes of a model in which every call of a gate-site
operation (:mod:`captum_feedback.core.sites`) is intercepted by a ``torch.overrides.TorchFunctionMode``
-- never by patching torch -- so modules, reused modules, in-place and functional calls are all
seen, in execution order. Each call becomes a :class:`Site`. Where all of them came from
standard modules such as ``nn.ReLU``, later passes replace those modules' ``forward`` for the
session's thread instead (:class:`_Replay`): the mode costs a Python call per torch call.
A :class:`GatePolicy` decides the binary feedback gate of each site in the forward pass and
how the contribution weight (CW, Eq. 6: ``alpha = dS / d(gated output)``) is treated in the
backward pass. Methods differ only in their policy.

Linearization (Sec. 3.3): with ``linearize=True`` the first forward pass freezes every site
(ReLU on/off states, max-pool choices) and later passes evaluate the frozen, piecewise-linear
network, in which ``S = sum(alpha * z * x)`` holds exactly at every site.
Where a frozen sigmoid leaves a branch unread (squeeze-excitation blocks), later replayed passes
skip its modules once the policy has settled its sites (:mod:`~captum_feedback.core.dead_branches`).
Every pass after the first folds each evaluation-mode batch normalization into the convolution
whose output only it reads (:mod:`~captum_feedback.core.folding`).

Everything a session installs (the mode, replayed forwards, layer taps) is removed on every
exit path, and the model's training flags, ``requires_grad`` and ``.grad`` are restored.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge, Node, get_gradient_edge
from torch.overrides import TorchFunctionMode

from captum_feedback.core.autograd_graph import OutsideReads
from captum_feedback.core.dead_branches import WATCHED_FRAME, DeadBranches, Stub, Watched
from captum_feedback.core.folding import Folds
from captum_feedback.core.frozen_ops import FROZEN_OPS, FrozenOp
from captum_feedback.core.guards import check_depends_on_inputs, check_model, named_modules, preserved_state
from captum_feedback.core.kernels import RELU, Transfer, gated_backward, gated_forward
from captum_feedback.core.sites import SITE_OPS, SiteOp


@dataclass
class Site:
    """One gate site: one call of a ReLU-like or max-pooling operation in a forward pass."""

    index: int
    name: str
    kind: str
    """``"activation"`` or ``"pool"``; ``"layer"`` for a tapped module's output."""
    shape: Tuple[int, ...]
    op: Optional[SiteOp] = None
    frozen: Any = None
    """Linearization state recorded by the first forward pass (``None`` when not linearized)."""
    on_states: Optional[Tensor] = None
    """A ReLU's first-pass on-states, when linearized or when the policy asks for them."""
    input_shape: Tuple[int, ...] = ()
    """The shape of the operation's input in the first pass; later passes must match it."""
    transfer: Optional[Transfer] = None
    """The frozen operation as the gate kernels apply it, made once (``SiteOp.transfer``)."""
    holds: bool = False
    """Its output is large enough to hold the heap between calls (:class:`HeapHold`,
    :meth:`GatingSession._holds`)."""

    @property
    def nonnegative(self) -> bool:
        """Whether the site's activations are never negative: a ReLU that is not linearized."""
        return self.op is not None and self.op.masks_input and self.frozen is None

    @property
    def support(self) -> Optional[Tensor]:
        """For a frozen ReLU, the units that can be non-zero (its on-states); else ``None``."""
        return self.frozen if self.op is not None and self.op.masks_input else None


class Gate(NamedTuple):
    """A site's feedback gate ``z``, one byte a unit (booleans or 0/1 bytes of the activation's shape)."""

    keep: Tensor
    """``z``; with :attr:`selects`, a selector ``s`` that the engine turns into ``z`` in place."""
    selects: bool = False
    """``keep`` holds a selector ``s`` (:meth:`~captum_feedback.core.selection.SelectionRule.selector`:
    -1, 0 or 1 a unit, or :data:`~captum_feedback.core.kernels.PINNED` for a unit kept open) and
    the gate is ``z = 1[s * x > 0]`` for the site's activation ``x`` (Eq. 6's rule, decided in the
    same pass over memory as the gated activation, :mod:`~captum_feedback.core.kernels`). The
    engine writes ``z`` into ``keep``."""
    pinned: bool = False
    """The selector may hold :data:`~captum_feedback.core.kernels.PINNED` units."""


class GatePolicy:
    """How a method sets gates. Subclasses override the two hooks."""

    wants_on_states = False
    """Keep every ReLU's first-pass on-states in :attr:`Site.on_states`, even unlinearized."""
    reads_activations = True
    """:meth:`gate` reads its ``x``; when ``False`` it receives ``None``, and a frozen site's
    activation is never built apart from its gated one."""
    passes_cws_through = False
    """:meth:`backward` returns the CW it receives at gated sites: the engine then gates the CW
    before the policy sees it, and the policy may reuse the gate's bytes."""

    settles = False
    """:meth:`settled` may hold: the first pass of a linearized session then looks for the
    branches that later passes need not run (:mod:`~captum_feedback.core.dead_branches`)."""

    def settled(self, site: Site) -> bool:
        """Whether this pass may leave out the site's call where nothing reads its output: the
        gate it would take is the one it has, and the policy wants nothing else of the call
        (no CW, no output)."""
        return False

    def needs_cw(self, site: Site) -> bool:
        """Whether the next backward pass must hand this ungated site its CW.

        When it need not, and every other site is gated or need not either, the update's
        backward pass may stop at the lowest gated site (:meth:`GatingSession.propagate_cws`).
        """
        return True

    def gate(self, site: Site, x: Optional[Tensor]) -> Optional[Gate]:
        """Forward: the gate ``z`` for the site's activation ``x``; ``None`` leaves it open.

        Where ``site.support`` is set (a frozen ReLU), ``x`` is the ReLU's input, whose units
        outside the support are zero after the site; the engine keeps the gate within the
        support, and a re-evaluated ReLU's gate within its active units.
        """
        return None

    @property
    def observes(self) -> bool:
        """Whether :meth:`observe` wants this pass's outputs."""
        return True

    def observe(self, site: Site, output: Tensor) -> None:
        """Forward: sees the site's gated output ``z * x`` (detached), as the model receives it,
        in a pass that it :attr:`observes`."""

    def signs_into(self, site: Site, cw: Tensor) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        """Backward, at a gated site of a policy that passes CWs through, before :meth:`backward`:
        where all that :meth:`backward` would read of the CW ``cw`` is its signs (Eq. 6's rule
        with ``tau = 0``), the bytes to write ``sign(cw)`` into (the gate's own may be among
        them) and booleans to keep them within (``None``: every unit). The engine writes them
        in the same pass over memory as it gates the CW (:func:`~.kernels.gated_backward`) and
        tells :meth:`backward` so."""
        return None

    def backward(self, site: Site, cw: Tensor, signs_written: bool = False) -> Tensor:
        """Backward: receives the site's CW ``dS/d(z * x)``; returns the CW to propagate instead.

        Autograd then multiplies it by the site's gate and carries it down the network.
        ``signs_written``: the engine has written the signs that :meth:`signs_into` asked for.
        """
        return cw


_RELU, _IDENTITY = Transfer(RELU), Transfer()
_BALLAST_BYTES = 1 << 20
"""Site outputs from this size on may hold the heap between calls (:class:`HeapHold`)."""
_MODULE_CALL = nn.Module._call_impl.__code__
"""The code of ``nn.Module.__call__``'s frame, whose ``self`` is the module being called."""
_SPARES = 4
"""Spare buffers a :class:`HeapHold` keeps: two gate stores, each its bytes and packed bits."""
_REPLAYABLE = frozenset({
    nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Softmax, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.LayerNorm, nn.GroupNorm,
})
"""``torch.nn``'s leaf modules whose ``forward`` is one call of a torch function on its input,
the module's settings being the call's other arguments: a later pass may make that call itself
(:class:`_Replay`)."""

_DIRECT, _INSIDE = "direct", "inside"
"""How a first-pass call came from its module (:meth:`GatingSession._calling_module`): as the
one call of a :data:`_REPLAYABLE` module's ``forward`` on its input, or from inside the
``forward`` of another leaf module."""


@dataclass
class HeapHold:
    """What a feedback method's sessions keep from one call to the next, so that the system
    need not fault fresh pages in for them again: on this project's 2-core machine a page
    fault costs 1 to 5 us, and a call of FSP's paper preset on EfficientNet-Lite0 took 250,000
    to 570,000 of them, a fifth of its time, where Saliency took none.

    * :attr:`tensor`, the latest large CPU site output of the last session, held until the
      next session ends. Between FSP's passes, and between calls, every activation is freed;
      glibc's allocator then finds more than its trim threshold free at the top of its heap and
      hands it back to the system. A late, large output of the last call, still held, lies near
      the top of the heap and keeps what lies below it (measured: 12 faults a call).
    * :attr:`spares`, buffers a session is done with (FSP's gate store,
      :class:`~captum_feedback.core.gate_store.GateStore`), for the next session to take
      (:meth:`take`) rather than allocate: on ConvNeXt-T at batch 16 a new gate store took
      200 ms to fault its 137 MB in, refilling a held one takes 15 ms.

    It costs memory beyond a call: one activation (the last site output of at least 1 MiB)
    and the last two gate stores of other sizes, held by the attribution object that owns the
    holder.
    """

    tensor: Optional[Tensor] = None
    spares: List[Tensor] = field(default_factory=list)

    def give(self, *buffers: Tensor) -> None:
        """Keeps ``buffers`` as the newest spares; of the older ones, as many as keep
        :data:`_SPARES` in all (the stores of two configurations run in turn, say)."""
        self.spares = [*buffers, *self.spares][:_SPARES]

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> Optional[Tensor]:
        """A spare buffer of ``numel`` units of ``dtype`` on ``device`` (its values are those
        it was left with), or ``None``."""
        for k, spare in enumerate(self.spares):
            if spare.numel() == numel and spare.dtype == dtype and spare.device == device:
                return self.spares.pop(k)
        return None


class _Gate(torch.autograd.Function):
    """``y = z * f(x)`` for a site's gate ``z`` and transfer ``f`` (the frozen operation of a
    linearized pass, or none); its backward hands the CW ``dS/dy`` to the policy's ``backward``
    and propagates ``z * f'(x) *`` the CW that it returns. Both directions are one pass over
    memory (:mod:`~captum_feedback.core.kernels`).

    It also takes the session's *anchor*, a scalar leaf, as an input, so that a backward pass
    asked only for the anchor's gradient runs through every gated site and no further
    (:meth:`GatingSession.propagate_cws`).

    It keeps ``z`` as bytes. With a policy that passes CWs through
    (:attr:`GatePolicy.passes_cws_through`) the backward pass reads ``z`` before the policy
    sees the CW, so the policy may reuse ``z``'s bytes from then on, and may have the CW's
    signs written into them as ``z`` is read (:meth:`GatePolicy.signs_into`).
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: Any, x: Tensor, anchor: Tensor, transfer: Transfer, gate: Gate, site: Site, policy: GatePolicy,
    ) -> Tensor:
        # Kept on ctx, not saved: a policy may hold gates as views of one buffer whose other
        # views it writes later in the pass, which autograd's version check would reject.
        ctx.keep, ctx.transfer, ctx.site, ctx.policy = gate.keep, transfer, site, policy
        return gated_forward(x, transfer, gate.keep, gate.selects, gate.pinned)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:  # noqa: D102
        policy, site = ctx.policy, ctx.site
        if not policy.passes_cws_through:
            return gated_backward(policy.backward(site, grad), ctx.transfer, ctx.keep), None, None, None, None, None
        signs = policy.signs_into(site, grad)
        gated = gated_backward(grad, ctx.transfer, ctx.keep, *(signs or ()))
        if signs is None:  # a policy of its own that passes CWs through may not know signs_written
            policy.backward(site, grad)
        else:
            policy.backward(site, grad, signs_written=True)
        return gated, None, None, None, None, None


def _all_reach(lowest: Node, nodes: Sequence[Node]) -> bool:
    """Whether a backward pass from each of ``nodes`` passes through ``lowest``."""
    known: Dict[Node, bool] = {lowest: True}
    return all(_reaches(node, known) for node in nodes)


def _reaches(node: Node, known: Dict[Node, bool]) -> bool:
    """Whether some path from ``node`` down the graph meets a node that ``known`` holds true; a
    depth-first search (iterative: graphs are deeper than Python's recursion limit) that stops
    at the first such path and records what it learnt in ``known``: the nodes of that path lead
    there, the nodes it left behind do not. Stopping there, the nodes of a main path that a
    later search meets at once, took a third of searching the whole graph on MobileNetV3."""
    if node in known:
        return known[node]
    path = [(node, iter(node.next_functions))]
    while path:
        top, below = path[-1]
        for child, _ in below:
            if child is None:
                continue
            leads = known.get(child)
            if leads:
                known.update((n, True) for n, _ in path)
                return True
            if leads is None:  # not searched yet
                known[child] = False  # unless the search below it finds a path (then set above)
                path.append((child, iter(child.next_functions)))
                break
        else:
            path.pop()
    known[node] = False
    return False


def _hooked(output: Tensor, on_cw: Callable[[Tensor], Tensor]) -> Tensor:
    """``output`` itself, handing its CW to ``on_cw`` in the backward pass.

    Models may still modify it in place: ``on_cw`` then sees the CW of the value it had.
    """
    if output.requires_grad:
        output.register_hook(on_cw)
    return output


class _Call(NamedTuple):
    """A gate-site or frozen call that a module's ``forward`` made on its input in the first pass."""

    handler: Callable[[Callable, Any, dict, tuple, dict], Any]
    """The session's method for such a call after the first pass."""
    func: Callable
    op: Any
    params: dict
    """The call's other arguments, bound to the operation's names."""
    args: tuple
    """The call's positional arguments after the input."""
    kwargs: dict

    @classmethod
    def of(cls, handler: Callable, func: Callable, op: Any, params: dict, args: tuple, kwargs: dict) -> _Call:
        """The call without its input, which later passes replace (and the first pass's may go)."""
        return cls(handler, func, op, {name: value for name, value in params.items() if name != "input"}, args[1:],
                   kwargs)


class _Replay:
    """Later passes without the ``TorchFunctionMode``, where the first pass showed that every
    gate-site and frozen call came from a standard leaf module (:data:`_REPLAYABLE`) applied to
    its input, or from inside the ``forward`` of some other leaf module: for the pass, each such
    standard module's ``forward`` (an instance attribute, removed after) hands the engine the
    call the mode saw, and each other module runs its own ``forward`` under the mode (ConvNeXt's
    ``LayerNorm2d`` permutes, normalizes and permutes back). On MobileNetV3 the mode's Python
    call for each of ~190 torch calls was 1.1 ms of a 10 ms pass; on ConvNeXt-T, whose four
    ``LayerNorm2d`` made it run the mode, about 0.8 ms of a 100 ms pass.

    Only the session's thread is redirected: the model called from another thread meanwhile
    runs its modules' own ``forward``. A later pass that calls a gate-site operation from
    anywhere else is not seen (the mode would refuse the changed control flow); the passes must
    compute the same thing anyway.
    """

    def __init__(self, on_stub: Callable[[Stub], Tensor], mode: Callable[[], TorchFunctionMode]) -> None:
        self.calls: Dict[nn.Module, _Call] = {}
        self.scoped: Set[nn.Module] = set()
        """Leaf modules whose own ``forward`` made a call other than on its input: they run it under the mode."""
        self.possible = True
        """No first-pass call came from anywhere else."""
        self._on_stub = on_stub
        """The session's stand-in for a skipped module's call (:mod:`~.dead_branches`)."""
        self._mode = mode
        """The session's mode for a later pass."""
        self._forwards: Dict[nn.Module, Callable[..., Any]] = {}
        self._skipping: Dict[nn.Module, Callable[..., Any]] = {}
        self._thread = 0

    def note(self, module: Optional[nn.Module], how: str, call: _Call) -> None:
        """Records a first-pass call made by ``module``, ``how`` :meth:`GatingSession._calling_module` says."""
        if not self.possible:
            return
        if how == _DIRECT:
            if module not in self.scoped:
                self.calls.setdefault(module, call)
        elif how == _INSIDE:
            self.scoped.add(module)
            self.calls.pop(module, None)
        else:
            self.possible, self.calls, self.scoped = False, {}, set()

    @contextlib.contextmanager
    def installed(self, stubs: Dict[nn.Module, Stub]) -> Iterator[None]:
        """Every recorded module's ``forward`` makes its call, for this thread; with ``stubs``
        (the same every pass that has them), those modules return their stub's output."""
        self._thread = threading.get_ident()
        if not self._forwards:
            self._forwards = {module: self._forward(module, call) for module, call in self.calls.items()}
            self._forwards.update({module: self._under_mode(module) for module in self.scoped})
        if stubs and not self._skipping:
            self._skipping = {**self._forwards, **{module: self._stub(module, stub) for module, stub in stubs.items()}}
        forwards = self._skipping if stubs else self._forwards
        try:
            for module, forward in forwards.items():
                vars(module)["forward"] = forward  # not a parameter, buffer or module: nn.Module's setattr adds nothing
            yield
        finally:
            for module in forwards:
                vars(module).pop("forward", None)

    def _forward(self, module: nn.Module, call: _Call) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if len(args) != 1 or kwargs:
                raise RuntimeError(
                    f"The model called its {type(module).__name__} module with other arguments on a later forward "
                    "pass than on the first. Feedback runs the model several times and needs the same "
                    "computation every time (no randomness or data-dependent branches).")
            return call.handler(call.func, call.op, {**call.params, "input": args[0]}, (*args, *call.args), call.kwargs)

        return self._for_thread(module, forward)

    def _under_mode(self, module: nn.Module) -> Callable[..., Any]:
        own = type(module).forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            with self._mode():
                return own(module, *args, **kwargs)

        return self._for_thread(module, forward)

    def _stub(self, module: nn.Module, stub: Stub) -> Callable[..., Any]:
        return self._for_thread(module, lambda *args, **kwargs: self._on_stub(stub))

    def _for_thread(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` for the session's thread, the module's own for any other."""
        own = type(module).forward

        def redirected(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._thread:
                return own(module, *args, **kwargs)
            return forward(*args, **kwargs)

        return redirected


class _SiteMode(TorchFunctionMode):
    def __init__(self, on_site: Callable[[Callable, SiteOp, tuple, dict], Any],
                 on_frozen: Optional[Callable[[Callable, FrozenOp, tuple, dict], Any]],
                 on_escape: Optional[Callable[[tuple, dict, Callable], None]] = None) -> None:
        super().__init__()
        self.on_site, self.on_frozen, self.on_escape = on_site, on_frozen, on_escape
        """``on_escape``: told of every other call whose result autograd does not tie to its arguments."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        op = SITE_OPS.get(func)
        if op is not None:
            return self.on_site(func, op, args, kwargs)
        frozen = FROZEN_OPS.get(func) if self.on_frozen is not None else None
        if frozen is not None:
            return self.on_frozen(func, frozen, args, kwargs)
        output = func(*args, **kwargs)
        if self.on_escape is not None and not (isinstance(output, Tensor) and output.requires_grad):
            self.on_escape(args, kwargs, func)
        return output


class GatingSession:
    """Forward passes of one model on one batch, with gates at every site.

    Args:
        forward_func: The model (an ``nn.Module`` gets site names from its module paths) or
            any callable.
        linearize: Freeze sites after the first forward pass (Sec. 3.3).
        batch_size: Leading size every site's activation must have (gates are per sample).
        heap: Where the session holds its latest large output (:class:`HeapHold`); one of its
            own, gone with it, when not given.
    """

    def __init__(self, forward_func: Callable, linearize: bool, batch_size: int,
                 heap: Optional[HeapHold] = None, single_pass: bool = False) -> None:
        self.forward_func = forward_func
        self.linearize = linearize
        self.single_pass = single_pass
        """No pass follows the first (FR, a custom rule's one pass): it looks for nothing later
        passes could leave out (:meth:`_look_for_savings`)."""
        self.batch_size = batch_size
        self.sites: List[Site] = []
        self.passes = 0
        self._modules = named_modules(forward_func)
        self._module_names: Dict[nn.Module, str] = {m: n for n, m in self._modules}
        self._calls = 0
        self._names_seen: Counter = Counter()
        self._policy: GatePolicy = GatePolicy()
        self._anchor = torch.zeros(())
        """A scalar leaf that every gated site takes as an input (:class:`_Gate`); the first
        pass makes it, gradient-requiring, on the inputs' device."""
        self._inputs: Tuple[Tensor, ...] = ()
        self.unbatched: List[str] = []
        """Calls of gate-site operations whose first dimension is not the batch (computed from
        parameters alone): the first pass leaves them ungated and names them here."""
        self._frozen: List[Tuple[FrozenOp, Any]] = []
        """Per call of a frozen operation in the first pass: the operation and its state
        (``None`` where the call is not frozen)."""
        self._frozen_calls = 0
        self._open: List[Tuple[Site, GradientEdge]] = []
        """The ungated sites of the last pass whose output autograd reaches, in execution order,
        with the edge of their output: where :meth:`propagate_cws` may stop."""
        self.heap = heap if heap is not None else HeapHold()
        """What the sessions of one attribution object keep for the next (:class:`HeapHold`):
        the latest site output of at least :data:`_BALLAST_BYTES`, held until the next session
        ends, and the buffers a policy leaves (FSP's gate store)."""
        self._latest: Optional[Tensor] = None
        self._replay = _Replay(self._stubbed, self._mode)
        self._branches: Optional[DeadBranches] = None
        """What later passes may skip, where the first pass looked (:meth:`_look_for_savings`)."""
        self._folds: Optional[Folds] = None
        """The convolutions and normalizations later passes fold, where the first pass looked."""
        self._reads: Optional[OutsideReads] = None
        """The first pass's reads outside autograd, where it looks for either."""

    # ------------------------------------------------------------------ site naming
    def _calling_module(self, args: tuple) -> Tuple[Optional[nn.Module], str]:
        """The innermost of the model's modules whose call is running, to name a first-pass site
        after, and how the call came from it (:data:`_DIRECT`, :data:`_INSIDE` or neither, ""),
        which says what :class:`_Replay` may do in later passes: read from the Python stack, the
        ``self`` of the nearest ``nn.Module`` call frame that is one of the model's modules (its
        forward, or its hooks). Per site call this costs a few microseconds; hooks that tracked
        every module call cost about 1 ms a pass on MobileNetV3, 15% of a forward pass."""
        frame, below = sys._getframe(2), None  # above this method and _on_site
        while frame is not None:
            if frame.f_code is _MODULE_CALL:
                module = frame.f_locals.get("self")
                if module in self._module_names:
                    return module, self._how(module, below, frame.f_locals, args)
                below = None
            elif frame.f_code is not WATCHED_FRAME:  # a first-pass recording of the call, transparent
                below = frame
            frame = frame.f_back
        return None, ""

    @staticmethod
    def _how(module: nn.Module, below: Any, call: Dict[str, Any], args: tuple) -> str:
        """How a call came from ``module``: ``below`` is the frame its call ran (its ``forward``,
        or a hook), ``call`` the locals of that call."""
        cls = type(module)
        if (below is None or below.f_code is not getattr(cls.forward, "__code__", None)
                or not isinstance(module.__dict__.get("forward"), (type(None), Watched))):
            return ""
        called = call.get("args", ())
        if (cls in _REPLAYABLE and not call.get("kwargs") and len(called) == 1 and len(args) > 0
                and args[0] is called[0]):
            return _DIRECT
        return _INSIDE if next(module.children(), None) is None else ""

    def _site_name(self, module: Optional[nn.Module], op: SiteOp, seen: Counter) -> str:
        base = self._module_names.get(module, "") if module is not None else ""
        is_leaf = module is not None and next(module.children(), None) is None
        name = base if (is_leaf and base) else ".".join(p for p in (base, op.label) if p)
        seen[name] += 1
        return name if seen[name] == 1 else f"{name}#{seen[name]}"

    # ------------------------------------------------------------------ the intercepted call
    def _on_site(self, func: Callable, op: SiteOp, args: tuple, kwargs: dict) -> Any:
        params = op.bind(args, kwargs)
        if self.passes > 0:
            return self._later_site(func, op, params, args, kwargs)
        module, direct = self._calling_module(args)
        self._replay.note(module, direct, _Call.of(self._later_site, func, op, params, args, kwargs))
        if self._unbatched(params):
            self.unbatched.append(self._site_name(module, op, Counter()))
            return func(*args, **kwargs)
        output, state = self._first_pass(op, params)
        site = self._new_site(self._calls, op, output, state, module)
        self._calls += 1
        site.input_shape = tuple(params["input"].shape)
        gated = self._apply_gate(site, params, output)
        if self._branches is not None:
            self._branches.site(site.index, gated)
        return (gated, state) if op.returns_indices(params) else gated

    def _unbatched(self, params: dict) -> bool:
        """Whether a site operation's input is not per sample (Swin V2's position-bias MLP runs on
        a table of the parameters): the call is not gated, and not counted among the sites."""
        return params["input"].dim() == 0 or params["input"].shape[0] != self.batch_size

    def _later_site(self, func: Callable, op: SiteOp, params: dict, args: tuple, kwargs: dict) -> Any:
        """A gate-site call after the first pass (``params``: the call's arguments bound)."""
        if self._unbatched(params):  # not gated in the first pass either
            return func(*args, **kwargs)
        site = self._site_at(self._calls, op)
        self._calls += 1
        shape = params["input"].shape
        if shape != site.input_shape:
            raise self._changed(site, f"took an input of shape {tuple(shape)}, not {site.input_shape} as in the first")
        output, state = self._later_pass(site, params)
        gated = self._apply_gate(site, params, output)
        return (gated, state) if op.returns_indices(params) else gated

    def _on_frozen(self, func: Callable, op: FrozenOp, args: tuple, kwargs: dict) -> Any:
        """A nonlinearity that is not a gate site, in a linearized session: the first pass
        records its state, later passes evaluate it frozen (:class:`~.frozen_ops.FrozenOp`)."""
        params = op.bind(args, kwargs)
        if self.passes > 0:
            return self._later_frozen(func, op, params, args, kwargs)
        self._replay.note(*self._calling_module(args), _Call.of(self._later_frozen, func, op, params, args, kwargs))
        output, state = op.evaluate(params) if op.applies(params) else (None, None)
        if self._branches is not None and op.constant and state is not None:
            self._branches.cut(output)
        self._frozen.append((op, state))
        self._frozen_calls += 1
        return output if state is not None else func(*args, **kwargs)

    def _later_frozen(self, func: Callable, op: FrozenOp, params: dict, args: tuple, kwargs: dict) -> Any:
        index = self._frozen_calls
        self._frozen_calls += 1
        if index >= len(self._frozen) or self._frozen[index][0] is not op:
            raise self._changed(None, f"called {op.label} as frozen operation {index}, unlike the first")
        state = self._frozen[index][1]
        return op.frozen(params, state) if state is not None else func(*args, **kwargs)

    def _first_pass(self, op: SiteOp, params: dict) -> Tuple[Tensor, Any]:
        """The site's operation on the first pass, with the state that linearization or the
        gate policy will read (none for re-evaluated passes of an operation that has a plain
        output)."""
        needs_state = self.linearize or (op.masks_input and self._policy.wants_on_states)
        if not needs_state and op.output is not None:
            return op.output(params), None
        return op.evaluate(params)

    def _later_pass(self, site: Site, params: dict) -> Tuple[Optional[Tensor], Any]:
        """The site's operation after the first pass: frozen when linearized (Sec. 3.3). The
        output is ``None`` where the site's transfer (:meth:`_transfer`) computes it."""
        if site.transfer is not None or site.nonnegative:  # a frozen transfer, or a re-evaluated ReLU's
            return None, site.frozen
        if site.frozen is None:
            return (site.op.output(params), None) if site.op.output is not None else site.op.evaluate(params)
        if site.op.transfer is not None:
            return None, site.frozen
        return site.op.frozen(params["input"], site.frozen, params), site.frozen

    def _transfer(self, site: Site, params: dict, output: Optional[Tensor]) -> Tuple[Transfer, Tensor]:
        """The map from the tensor the site's gate kernel reads to its activation, and that
        tensor: a frozen ReLU, ReLU6 or smooth activation (after the first pass for all but the
        ReLU, whose support the first pass knows) and a re-evaluated ReLU read the operation's
        input; every other site (max-pooling, and the first pass) its computed output."""
        if site.transfer is not None:
            return site.transfer, params["input"]
        if site.support is not None or (site.frozen is not None and output is None):
            site.transfer = site.op.transfer(site.frozen, params)
            return site.transfer, params["input"]
        return (_RELU, params["input"]) if site.nonnegative else (_IDENTITY, output)

    def _apply_gate(self, site: Site, params: dict, output: Optional[Tensor]) -> Tensor:
        policy, support = self._policy, site.support
        transfer, source = self._transfer(site, params, output)
        activation = None
        if policy.reads_activations:  # a frozen ReLU's input; else the site's output
            if output is None and support is None:
                output = transfer.apply(source)
            activation = (params["input"] if support is not None else output).detach()
        gate = policy.gate(site, activation)
        if gate is None and support is not None and self.passes > 0:
            gate = Gate(support)  # a frozen ReLU is x on its support
        if gate is None:
            gated = _hooked(output if output is not None else transfer.apply(source),
                            lambda cw: self._policy.backward(site, cw))
            if gated.requires_grad and policy.needs_cw(site):
                self._open.append((site, get_gradient_edge(gated)))
        else:  # only sites whose CWs are needed lead an update's backward pass to the anchor
            anchor = self._anchor if policy.needs_cw(site) else self._anchor.detach()
            gated = _Gate.apply(source, anchor, transfer, gate, site, policy)
        if policy.observes:
            policy.observe(site, gated.detach())
        if site.holds:
            self._latest = gated.detach()
        return gated

    @staticmethod
    def _holds(output: Tensor) -> bool:
        """Whether a site's output is a large CPU tensor, which the session holds until a later
        one replaces it, and from the session's end until the next session's end (:class:`HeapHold`)."""
        return output.device.type == "cpu" and output.numel() * output.element_size() >= _BALLAST_BYTES

    def _new_site(self, index: int, op: SiteOp, output: Tensor, state: Any, module: Optional[nn.Module]) -> Site:
        site = Site(index, self._site_name(module, op, self._names_seen), op.kind, tuple(output.shape), op)
        site.holds = self._holds(output)
        # The frozen form reproduces the first pass exactly and keeps only masks for backward.
        site.frozen = state if self.linearize else None
        if op.masks_input and (self.linearize or self._policy.wants_on_states):
            site.on_states = state
        self.sites.append(site)
        return site

    def _site_at(self, index: int, op: SiteOp) -> Site:
        if index >= len(self.sites):
            raise self._changed(None, f"called {op.label} as gate site {index}, one more than in the first")
        if self.sites[index].op is not op:
            raise self._changed(self.sites[index], f"called {op.label} in its place, unlike the first")
        return self.sites[index]

    def _changed(self, site: Optional[Site], what: str) -> RuntimeError:
        """The error for a model whose control flow differs from the first pass's."""
        where = f"at site '{site.name}' ({site.op.label})" if site is not None else "after its last site"
        return RuntimeError(
            f"The model's control flow changed on forward pass {self.passes + 1} {where}: it {what} pass. "
            "Feedback runs the model several times and needs the same computation every time (no "
            "randomness or data-dependent branches: call model.eval(), fix random choices)."
        )

    # ------------------------------------------------------------------ public
    def module_name(self, module: nn.Module) -> str:
        """The module's path in the model, or its class name when it is not a submodule."""
        return self._module_names.get(module, type(module).__name__)

    def forward(
        self,
        inputs: Tuple[Tensor, ...],
        additional_forward_args: Tuple[Any, ...],
        policy: GatePolicy,
        taps: Sequence[nn.Module] = (),
    ) -> Tuple[Tensor, Dict[nn.Module, Tensor]]:
        """One forward pass with the policy's gates; returns the output and the tapped outputs.

        The policy's ``backward`` also receives the CW of each tapped module's output, with a
        ``Site`` whose ``kind`` is ``"layer"``.
        """
        self._policy, self._calls, self._names_seen = policy, 0, Counter()
        self._frozen_calls = 0
        self._inputs, self._open = inputs, []
        tapped: Dict[nn.Module, Tensor] = {}
        handles = [self._tap(module, tapped) for module in taps]
        if self.passes == 0:
            self._anchor = torch.zeros((), device=inputs[0].device, requires_grad=True)
            if not self.single_pass:
                self._look_for_savings(policy)
        try:
            with self._intercepted():
                output = self.forward_func(*inputs, *additional_forward_args)
        finally:
            for handle in handles:
                handle.remove()
        if self.passes == 0 and self._reads is not None:
            self._find_savings(output)
        if self.passes > 0 and self._calls != len(self.sites):
            raise RuntimeError(
                f"The model made {self._calls} gate-site calls on this pass but "
                f"{len(self.sites)} on the first; feedback needs the same control flow."
            )
        self.passes += 1
        return output, tapped

    @contextlib.contextmanager
    def _intercepted(self) -> Iterator[None]:
        """The first pass under the mode, with what later passes may leave out recorded; a later
        pass under the mode or, where its calls all come from standard modules, their replay,
        with its folded convolutions."""
        with contextlib.ExitStack() as stack:
            if self.passes == 0:
                if self._branches is not None:
                    stack.enter_context(self._branches.watched(lambda: (self._calls, self._frozen_calls)))
                if self._folds is not None:
                    stack.enter_context(self._folds.watched())
                stack.enter_context(self._mode(self._reads.record if self._reads is not None else None))
            else:
                if self._folds is not None:
                    stack.enter_context(self._folds.installed())
                stack.enter_context(self._replay.installed(self._skipped()) if self._replay.possible
                                    else self._mode())
            yield

    def _mode(self, on_escape: Optional[Callable[[tuple, dict, Callable], None]] = None) -> _SiteMode:
        """The session's mode: every torch call seen, gate-site and frozen calls handled, and
        ``on_escape`` (the first pass's :class:`OutsideReads`) told of the others that autograd
        does not tie to their arguments."""
        return _SiteMode(self._on_site, self._on_frozen if self.linearize else None, on_escape)

    # ------------------------------------------------------------------ what later passes leave out
    def _look_for_savings(self, policy: GatePolicy) -> None:
        """Before the first pass: where it looks for branches that later passes need not run
        (a linearized session, whose policy may settle sites: :mod:`~.dead_branches`), and for
        convolutions they fold with a batch normalization (:mod:`~.folding`)."""
        branches = DeadBranches(self._modules) if self.linearize and policy.settles else None
        self._branches = branches if branches is not None and branches.candidates else None
        folds = Folds(self._modules)
        self._folds = folds if folds.candidates else None
        self._reads = OutsideReads() if self._branches is not None or self._folds is not None else None

    def _find_savings(self, output: Any) -> None:
        """After the first pass: what later passes leave out. Stubs replace forwards, which only
        replayed passes do."""
        reads, self._reads = self._reads, None
        if self._branches is not None and self._replay.possible:
            self._branches.find(output, reads)
        else:
            self._branches = None
        if self._folds is not None:
            self._folds.find(output, reads)
            self._folds = self._folds if self._folds.pairs else None

    def _skipped(self) -> Dict[nn.Module, Stub]:
        """The stubs this later pass runs: all of them where the policy has settled every site
        whose output later passes never read; none otherwise. Only replayed passes ask: a session
        whose first pass could not be replayed keeps no branches."""
        branches = self._branches
        if (branches is None or not branches.skippable()
                or not all(self._policy.settled(self.sites[i]) for i in branches.dead_sites)):
            return {}
        return branches.stubs

    def _stubbed(self, stub: Stub) -> Tensor:
        """A skipped module's call: its sites and frozen calls counted as made, its stand-in output."""
        self._calls += stub.sites
        self._frozen_calls += stub.frozen
        return stub.output

    def _tap(self, module: nn.Module, tapped: Dict[nn.Module, Tensor]) -> Any:
        name = self.module_name(module)
        site = Site(-1, name, "layer", ())

        def hook(_module: nn.Module, _inputs: Any, output: Any) -> Tensor:
            if module in tapped:
                raise RuntimeError(f"Layer '{name}' is called more than once in one forward pass.")
            if not isinstance(output, Tensor):
                raise TypeError(f"Layer '{name}' must return a single tensor, got {type(output)}.")
            site.shape = tuple(output.shape)
            tapped[module] = _hooked(output, lambda cw: self._policy.backward(site, cw))
            return tapped[module]

        return module.register_forward_hook(hook)

    def propagate_cws(self, scores: Tensor) -> None:
        """A backward pass from the summed per-sample scores of the last forward pass that hands
        every site whose CW the policy needs (:meth:`GatePolicy.needs_cw`) its CW.

        It stops as low as it can: at the gated sites (through the session's anchor; gated
        sites no update needs keep off it) and at the output of the lowest ungated site whose
        CW is needed, when every other such site lies above it in the graph. What lies below
        (the first convolution's input gradient, for one; all layers below the sites of a
        stage of the top sites) only matters for the input's gradient. Otherwise it goes to
        the inputs. It never ends at several sites' outputs: autograd would hold all their
        gradients at once.
        """
        check_depends_on_inputs(scores)
        edges = [edge for site, edge in self._open if self._policy.needs_cw(site)]
        self._open = []
        if not edges:
            ends: Tuple[Any, ...] = (self._anchor,)
        elif _all_reach(edges[0].node, [edge.node for edge in edges[1:]]):
            ends = (self._anchor, edges[0])
        else:
            ends = (self._anchor, *self._inputs)
        torch.autograd.grad(scores.sum(), ends, allow_unused=True)

    @contextlib.contextmanager
    def installed(self) -> Iterator[GatingSession]:
        """Enables autograd (also inside a caller's ``no_grad``) and guards the model's state
        for the session's lifetime."""
        check_model(self._modules)
        try:
            with preserved_state(self._modules), torch.enable_grad():
                yield self
        finally:
            self._open = []  # its edges reach hooks that hold the session: a cycle through autograd
            if self._latest is not None:
                self.heap.tensor, self._latest = self._latest, None
