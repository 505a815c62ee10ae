"""Gate sites: the ReLU-like, smooth (SiLU, GELU, Hardswish) and max-pooling operations that
carry feedback gates (the other nonlinearities that linearized passes freeze are in
:mod:`captum_feedback.core.frozen_ops`).

Sec. 3.1 of the paper reads ReLU and max-pooling as gates ``y = z o x``; a smooth activation
``x * s(x)`` is gated the same way, ``y = z o x o s(x)``. Every call of one of the operations
below during a forward pass is one gate site. Each operation knows three things:
how to evaluate itself out of place, how to *freeze* itself after the first forward pass (the
linearization of Sec. 3.3: ReLU on/off states and max-pool choices are fixed), and how to
evaluate the frozen, piecewise-linear version on new inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_feedback.core.kernels import CODED, SCALED, Transfer, clamp_codes, clamped

Args = Tuple[Any, ...]
Kwargs = Dict[str, Any]


def bind_call(args: Args, kwargs: Kwargs, names: Sequence[str], defaults: Kwargs) -> Kwargs:
    """Map a call's positional and keyword arguments onto parameter names."""
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    if "self" in bound:  # Tensor methods such as ``x.relu()``
        bound["input"] = bound.pop("self")
    return bound


@dataclass(frozen=True)
class SiteOp:
    """One gate-site operation family.

    ``label`` names the operation in site names, ``kind`` is ``"activation"`` or ``"pool"``.
    """

    label: str
    kind: str
    names: Tuple[str, ...]
    defaults: Tuple[Tuple[str, Any], ...]
    evaluate: Callable[[Kwargs], Tuple[Tensor, Any]]
    """Runs the real operation out of place: returns (output, frozen state)."""
    frozen: Optional[Callable[[Tensor, Any, Kwargs], Tensor]]
    """Evaluates the linearized operation on a new input, given the frozen state; ``None``
    where :attr:`transfer` says it."""
    returns_indices: Callable[[Kwargs], bool] = lambda params: False
    masks_input: bool = False
    """The frozen operation is ``x * state``: its state is the support of the activation."""
    output: Optional[Callable[[Kwargs], Tensor]] = None
    """The real operation's output alone, for passes that need no state (re-evaluated passes
    keep no frozen state; on a ReLU6 network computing it cost a sixth of the time)."""
    transfer: Optional[Callable[[Any, Kwargs], Transfer]] = None
    """The frozen operation as a :class:`~captum_feedback.core.kernels.Transfer`, which the gate
    kernels apply in the same pass as the gate (or ``Transfer.apply`` where a site has no gate)."""

    def __post_init__(self) -> None:
        if (self.frozen is None) == (self.transfer is None):
            raise ValueError(f"Site operation {self.label!r} needs exactly one of a frozen form and a transfer.")

    def bind(self, args: Args, kwargs: Kwargs) -> Kwargs:
        return bind_call(args, kwargs, self.names, dict(self.defaults))


def as_mask(gate: Tensor, like: Tensor) -> Tensor:
    """A boolean gate as 0/1 values in ``like``'s dtype, to multiply by.

    Converting through ``int8`` is the fast kernel on the CPU, where a float-by-bool multiply
    (and even a direct bool-to-float conversion) is several times slower.
    """
    return gate.view(torch.int8).to(like.dtype)


# ----------------------------------------------------------------------------- activations
def _relu_eval(p: Kwargs) -> Tuple[Tensor, Tensor]:
    y = torch.relu(p["input"])
    return y, y.to(torch.bool)  # x > 0, from y: a comparison writing booleans is slower


def _relu_transfer(on: Tensor, p: Kwargs) -> Transfer:
    """A frozen ReLU: ``x`` where it was on, else 0."""
    return Transfer(CODED, on.view(torch.int8), (0.0, 1.0), (0.0, 0.0))


def _hardtanh_eval(p: Kwargs) -> Tuple[Tensor, Tensor]:
    """The real hardtanh (ReLU6) and its state, a byte a unit: 0 where it clamped at ``min_val``,
    1 where it was linear, 2 where it clamped at ``max_val``."""
    return clamp_codes(p["input"], p["min_val"], p["max_val"])


def _hardtanh_transfer(codes: Tensor, p: Kwargs) -> Transfer:
    return clamped(codes, p["min_val"], p["max_val"])


def _negative_slope(x: Tensor, p: Kwargs) -> Any:
    weight = p.get("weight")
    if weight is None:
        return p["negative_slope"]
    if weight.numel() == 1 or x.dim() < 2:
        return weight.reshape(-1)[0] if weight.numel() == 1 else weight
    return weight.reshape((1, -1) + (1,) * (x.dim() - 2))


def _leaky_eval(p: Kwargs) -> Tuple[Tensor, Tensor]:
    x = p["input"]
    on = x > 0
    return torch.where(on, x, x * _negative_slope(x, p)), on


def _leaky_frozen(x: Tensor, on: Tensor, p: Kwargs) -> Tensor:
    return torch.where(on, x, x * _negative_slope(x, p))


def _gelu_scale(x: Tensor, p: Kwargs) -> Tensor:
    """GELU's scale: the normal CDF ``Phi(x)``, or its tanh approximation, of the detached input
    (:func:`_scaled`). In place after the first operation: one new activation-sized tensor where
    the formula written out makes four, each of whose pages the system must fault in (issue #22)."""
    if p.get("approximate", "none") == "tanh":
        inner = x.pow(3).mul_(0.044715).add_(x).mul_((2 / torch.pi) ** 0.5)
        return inner.tanh_().add_(1).mul_(0.5)
    return (x / 2**0.5).erf_().add_(1).mul_(0.5)


def _scaled(label: str, names: Tuple[str, ...], defaults: Kwargs, real: Callable[[Kwargs], Tensor],
            scale: Callable[[Tensor, Kwargs], Tensor]) -> SiteOp:
    """A smooth activation ``x * s(x)`` (Sec. 3.3's linearization carried over): a linearized pass
    keeps the first pass's scale ``s`` and computes ``x * s``, linear in ``x``; a re-evaluated pass
    runs the real operation."""

    def evaluate(p: Kwargs) -> Tuple[Tensor, Tensor]:
        return real(p), scale(p["input"].detach(), p)

    return SiteOp(label, "activation", names, tuple(defaults.items()), evaluate, None, output=real,
                  transfer=lambda state, p: Transfer(SCALED, scale=state))


def _activation(label: str, names: Tuple[str, ...], defaults: Kwargs, evaluate, frozen) -> SiteOp:
    return SiteOp(label, "activation", names, tuple(defaults.items()), evaluate, frozen)


_RELU = SiteOp("relu", "activation", ("input", "inplace"), (), _relu_eval, None, masks_input=True,
               output=lambda p: torch.relu(p["input"]), transfer=_relu_transfer)
def _hardtanh(p: Kwargs) -> Tensor:
    return F.hardtanh(p["input"], p["min_val"], p["max_val"])


_HARDTANH = SiteOp("hardtanh", "activation", ("input", "min_val", "max_val", "inplace"),
                   (("min_val", -1.0), ("max_val", 1.0)), _hardtanh_eval, None,
                   output=_hardtanh, transfer=_hardtanh_transfer)
_RELU6 = SiteOp("relu6", "activation", ("input", "inplace"), (("min_val", 0.0), ("max_val", 6.0)),
                _hardtanh_eval, None, output=_hardtanh, transfer=_hardtanh_transfer)
_LEAKY = _activation(
    "leaky_relu", ("input", "negative_slope", "inplace"), {"negative_slope": 0.01},
    _leaky_eval, _leaky_frozen,
)
_PRELU = _activation("prelu", ("input", "weight"), {}, _leaky_eval, _leaky_frozen)
_SILU = _scaled("silu", ("input", "inplace"), {}, lambda p: F.silu(p["input"]), lambda x, p: torch.sigmoid(x))
_GELU = _scaled("gelu", ("input", "approximate"), {"approximate": "none"},
                lambda p: F.gelu(p["input"], approximate=p["approximate"]), _gelu_scale)
_HARDSWISH = _scaled("hardswish", ("input", "inplace"), {}, lambda p: F.hardswish(p["input"]),
                     lambda x, p: F.hardsigmoid(x))


# ----------------------------------------------------------------------------- max pooling
_POOL_WITH_INDICES = {
    ("max", 1): F.max_pool1d_with_indices,
    ("max", 2): F.max_pool2d_with_indices,
    ("max", 3): F.max_pool3d_with_indices,
    ("adaptive", 1): F.adaptive_max_pool1d_with_indices,
    ("adaptive", 2): F.adaptive_max_pool2d_with_indices,
    ("adaptive", 3): F.adaptive_max_pool3d_with_indices,
}


def _pool_frozen_factory(dims: int) -> Callable[[Tensor, Tensor, Kwargs], Tensor]:
    def frozen(x: Tensor, indices: Tensor, p: Kwargs) -> Tensor:
        # The frozen max-pool picks the same input element as in the first forward pass.
        flat_x = x.flatten(start_dim=-dims)
        flat_i = indices.flatten(start_dim=-dims)
        return flat_x.gather(-1, flat_i).view(indices.shape)

    return frozen


def _pool(variant: str, dims: int, always_tuple: Optional[bool]) -> SiteOp:
    with_indices = _POOL_WITH_INDICES[(variant, dims)]
    if variant == "max":
        names: Tuple[str, ...] = (
            "input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"
        )
        defaults: Kwargs = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}
        label = f"max_pool{dims}d"
    else:
        names, defaults, label = ("input", "output_size", "return_indices"), {}, f"adaptive_max_pool{dims}d"

    def evaluate(p: Kwargs) -> Tuple[Tensor, Tensor]:
        call = {k: v for k, v in p.items() if k in names and k != "return_indices"}
        if call.get("stride") == []:  # torch.max_pool2d's "same as kernel" spelling
            call["stride"] = None
        return with_indices(**call)

    def returns_indices(p: Kwargs) -> bool:
        return bool(p.get("return_indices", False)) if always_tuple is None else always_tuple

    return SiteOp(
        label, "pool", names, tuple(defaults.items()), evaluate, _pool_frozen_factory(dims),
        returns_indices,
    )


def _site_table() -> Dict[Callable, SiteOp]:
    table: Dict[Callable, SiteOp] = {}
    for fn in (F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_):
        table[fn] = _RELU
    for fn in (F.hardtanh, F.hardtanh_):
        table[fn] = _HARDTANH
    table[F.relu6] = _RELU6
    for fn in (F.leaky_relu, F.leaky_relu_):
        table[fn] = _LEAKY
    for fn in (F.prelu, torch.prelu):
        table[fn] = _PRELU
    table[F.silu], table[F.gelu], table[F.hardswish] = _SILU, _GELU, _HARDSWISH
    for dims in (1, 2, 3):
        table[getattr(F, f"max_pool{dims}d")] = _pool("max", dims, None)
        table[getattr(F, f"max_pool{dims}d_with_indices")] = _pool("max", dims, True)
        table[getattr(torch, f"max_pool{dims}d")] = _pool("max", dims, False)
        table[getattr(F, f"adaptive_max_pool{dims}d")] = _pool("adaptive", dims, None)
        table[getattr(F, f"adaptive_max_pool{dims}d_with_indices")] = _pool("adaptive", dims, True)
    table[torch.adaptive_max_pool1d] = _pool("adaptive", 1, True)
    return table


SITE_OPS: Dict[Callable, SiteOp] = _site_table()
"""Every function that is a gate site, mapped to its operation family."""
