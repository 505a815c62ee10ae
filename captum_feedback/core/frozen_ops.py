"""The nonlinearities that are not gate sites but that linearized passes freeze (Sec. 3.3
carried over): softmax and sigmoid gates, normalizations, attention. The first pass records
what makes each nonlinear; later passes evaluate it with that record, so that the network is
linear in its input between gates."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from captum_feedback.core.kernels import centred_backward
from captum_feedback.core.sites import Args, Kwargs, bind_call


@dataclass(frozen=True)
class FrozenOp:
    """A nonlinearity that is not a gate site but that linearized passes freeze (Sec. 3.3
    carried over): the first pass records what makes it nonlinear, later passes evaluate it
    with that record, so that it is linear in its input (or constant).

    ``applies`` says whether a call is frozen at all: a softmax or sigmoid over ``(B, C)``
    scores is the model's output, not a multiplicative gate inside it, and stays as it is.
    """

    label: str
    names: Tuple[str, ...]
    defaults: Tuple[Tuple[str, Any], ...]
    applies: Callable[[Kwargs], bool]
    evaluate: Callable[[Kwargs], Tuple[Tensor, Any]]
    """Runs the real operation: returns (output, frozen state)."""
    frozen: Callable[[Kwargs, Any], Tensor]
    """The operation with the frozen state, on this pass's arguments."""
    constant: bool = False
    """The frozen form is the first pass's output: it reads none of the call's tensors
    (:mod:`~captum_feedback.core.dead_branches`)."""

    def bind(self, args: Args, kwargs: Kwargs) -> Kwargs:
        return bind_call(args, kwargs, self.names, dict(self.defaults))


def _inside(p: Kwargs) -> bool:
    """A gate inside the network: its input has more than the batch and one feature dimension."""
    return p["input"].dim() >= 3


def _constant(real: Callable[[Kwargs], Tensor]) -> Tuple[Callable, Callable]:
    """A multiplicative gate (attention weights, squeeze-excitation scales) frozen to its
    first-pass value."""

    def evaluate(p: Kwargs) -> Tuple[Tensor, Tensor]:
        y = real(p)
        return y, y.detach()

    return evaluate, lambda p, state: state


def _scale(x: Tensor, dims: Tuple[int, ...], eps: float, centred: bool) -> Tensor:
    """``1 / sqrt(var + eps)`` (``1 / rms`` where not ``centred``) of ``x`` over ``dims``, without
    gradient: what linearized passes freeze. Not ``torch.var``: 40 times slower over a permuted
    last dimension."""
    with torch.no_grad():
        centre = x - x.mean(dims, keepdim=True) if centred else x
        return torch.rsqrt(centre.pow(2).mean(dims, keepdim=True) + eps)


def _centred(x: Tensor, dims: Tuple[int, ...], scale: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``(x - mean(x)) * scale`` over ``dims``, as ``x * scale - sum(x) * scale / n``: one
    activation-sized operation and a reduction (issue #22); into ``out`` if given."""
    n = math.prod(x.shape[d] for d in dims)
    return torch.addcmul(x.sum(dims, keepdim=True).mul(scale).mul_(-1 / n), x, scale, out=out)


class _FrozenLayerNorm(torch.autograd.Function):
    """A LayerNorm with its scale frozen, ``(x - mean(x)) * scale * weight + bias`` over the last
    ``dims`` dimensions: linear in ``x``. Its forward is torch operations that autograd does not
    record; its backward is one node, the kernel of
    :func:`~captum_feedback.core.kernels.centred_backward` (ConvNeXt-T's 23 LayerNorms took 2.7
    ms more than ``native_layer_norm`` a pass as recorded operations, issue #22).

    Its output is contiguous, as ``native_layer_norm``'s is, whatever ``x``'s layout: ConvNeXt
    normalizes a permuted view, and the Linear layer after it ran its product through a copy
    and ``mm`` on a permuted output (a paper call 1.6% slower, issue #22)."""

    @staticmethod
    def forward(  # noqa: D102
        ctx: Any, x: Tensor, scale: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], dims: int
    ) -> Tensor:
        ctx.scale, ctx.weight, ctx.dims = scale, weight, dims
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        out = _centred(x, tuple(range(x.dim() - dims, x.dim())), scale, out)
        return _affine(out, weight, bias, x.shape[-dims:])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None, None, None, None]:  # noqa: D102
        return centred_backward(grad, ctx.weight, ctx.scale, ctx.dims), None, None, None, None


def _affine(y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], shape: Tuple[int, ...]) -> Tensor:
    """``y * weight + bias`` in place on ``y``, a temporary of the caller: each activation-sized
    tensor not made saves its page faults (issue #22). The caller detaches the parameters
    (:func:`_detached`): they enter as constants (feedback asks no gradient of them); a parameter
    that asked for one would make autograd keep a copy of ``y`` for it."""
    y = y.mul_(weight.reshape(shape)) if weight is not None else y
    return y.add_(bias.reshape(shape)) if bias is not None else y


def _detached(parameter: Optional[Tensor]) -> Optional[Tensor]:
    return parameter.detach() if parameter is not None else None


def _rescaled(run: Callable[[Kwargs, Optional[Tensor]], Tuple[Tensor, Tensor]]) -> Tuple[Callable, Callable]:
    """A :class:`FrozenOp`'s ``evaluate`` and ``frozen`` from ``run(params, scale)``, which
    returns the output and the scale it used: the first pass's own scale, later the frozen one."""
    return (lambda p: run(p, None)), (lambda p, scale: run(p, scale)[0])


def _layer_norm(centred: bool) -> Callable[[Kwargs, Optional[Tensor]], Tuple[Tensor, Tensor]]:
    """LayerNorm (``centred``) or RMSNorm: the division by the standard deviation (the root
    mean square) is frozen; centring and the affine map are linear."""

    def run(p: Kwargs, scale: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        x, shape = p["input"], tuple(p["normalized_shape"])
        eps = p["eps"] if p["eps"] is not None else torch.finfo(x.dtype).eps
        dims = tuple(range(x.dim() - len(shape), x.dim()))
        scale = _scale(x, dims, eps, centred) if scale is None else scale
        weight, bias = _detached(p.get("weight")), _detached(p.get("bias"))
        if centred:
            return _FrozenLayerNorm.apply(x, scale, weight, bias, len(dims)), scale
        return _affine(x * scale, weight, bias, shape), scale

    return run


def _group_norm(p: Kwargs, scale: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    x = p["input"]
    groups = x.reshape(x.shape[0], p["num_groups"], -1)
    scale = _scale(groups, (2,), p["eps"], True) if scale is None else scale
    shape = (1, -1) + (1,) * (x.dim() - 2)
    weight, bias = _detached(p.get("weight")), _detached(p.get("bias"))
    return _affine(_centred(groups, (2,), scale).view_as(x), weight, bias, shape), scale


def _normalize(p: Kwargs, norm: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    x = p["input"]
    if norm is None:
        norm = x.norm(p["p"], p["dim"], keepdim=True).clamp_min(p["eps"]).detach()
    return x / norm, norm


def _attention_weights(p: Kwargs) -> Tensor:
    q, k = p["query"], p["key"]
    scale = p["scale"] if p["scale"] is not None else q.shape[-1] ** -0.5
    if p.get("enable_gqa") and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
    logits = q @ k.transpose(-2, -1) * scale
    mask = p["attn_mask"]
    if p["is_causal"]:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    return logits.softmax(-1)


def _values(p: Kwargs) -> Tensor:
    v, q = p["value"], p["query"]
    if p.get("enable_gqa") and v.shape[-3] != q.shape[-3]:
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    return v


def _attention_eval(p: Kwargs) -> Tuple[Tensor, Tensor]:
    weights = _attention_weights(p)
    return weights @ _values(p), weights.detach()


_SOFTMAX = FrozenOp("softmax", ("input", "dim", "_stacklevel", "dtype"), (("dim", None), ("dtype", None)),
                    _inside, *_constant(lambda p: F.softmax(p["input"], p["dim"], dtype=p["dtype"])), constant=True)
_SIGMOID = FrozenOp("sigmoid", ("input",), (), _inside, *_constant(lambda p: torch.sigmoid(p["input"])),
                    constant=True)
_HARDSIGMOID = FrozenOp("hardsigmoid", ("input", "inplace"), (), _inside,
                        *_constant(lambda p: F.hardsigmoid(p["input"])), constant=True)
_LAYER_NORM = FrozenOp("layer_norm", ("input", "normalized_shape", "weight", "bias", "eps"),
                       (("weight", None), ("bias", None), ("eps", 1e-5)), lambda p: True, *_rescaled(_layer_norm(True)))
_RMS_NORM = FrozenOp("rms_norm", ("input", "normalized_shape", "weight", "eps"), (("weight", None), ("eps", None)),
                     lambda p: True, *_rescaled(_layer_norm(False)))
_GROUP_NORM = FrozenOp("group_norm", ("input", "num_groups", "weight", "bias", "eps"),
                       (("weight", None), ("bias", None), ("eps", 1e-5)), lambda p: True, *_rescaled(_group_norm))
_NORMALIZE = FrozenOp("normalize", ("input", "p", "dim", "eps", "out"), (("p", 2.0), ("dim", 1), ("eps", 1e-12)),
                      _inside, *_rescaled(_normalize))
_ATTENTION = FrozenOp("scaled_dot_product_attention",
                      ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"),
                      (("attn_mask", None), ("dropout_p", 0.0), ("is_causal", False), ("scale", None),
                       ("enable_gqa", False)),
                      lambda p: not p["dropout_p"], _attention_eval,
                      lambda p, weights: weights @ _values(p))


_MHA_NAMES = ("query", "key", "value", "embed_dim_to_check", "num_heads", "in_proj_weight", "in_proj_bias", "bias_k",
              "bias_v", "add_zero_attn", "dropout_p", "out_proj_weight", "out_proj_bias", "training",
              "key_padding_mask", "need_weights", "attn_mask", "use_separate_proj_weight", "q_proj_weight",
              "k_proj_weight", "v_proj_weight", "static_k", "static_v", "average_attn_weights", "is_causal")


def _plain_attention(p: Kwargs) -> bool:
    """Multi-head attention without the extras that change its shape (added bias keys, zero
    attention, static keys) and without dropout: its weights can be frozen."""
    return (p.get("bias_k") is None and not p.get("add_zero_attn") and p.get("static_k") is None
            and p.get("static_v") is None and not (p.get("training") and p.get("dropout_p")))


def _mha_eval(p: Kwargs) -> Tuple[Tuple[Tensor, Optional[Tensor]], Tensor]:
    call = {**p, "need_weights": True, "average_attn_weights": False}
    output, weights = F.multi_head_attention_forward(**call)
    asked = (weights.mean(1) if p.get("average_attn_weights", True) else weights) if p.get("need_weights") else None
    return (output, asked), weights.detach()


def _mha_frozen(p: Kwargs, weights: Tensor) -> Tuple[Tensor, None]:
    """``out_proj(weights @ v_proj(value))`` with the first pass's attention weights:
    linear in the value (the attention's query and key no longer matter)."""
    value, heads = p["value"], p["num_heads"]
    embed = p["out_proj_weight"].shape[0]
    bias = p["in_proj_bias"][2 * embed:] if p.get("in_proj_bias") is not None else None
    v_weight = p["v_proj_weight"] if p.get("use_separate_proj_weight") else p["in_proj_weight"][2 * embed:]
    sources, batch = value.shape[0], value.shape[1]
    v = F.linear(value, v_weight, bias).reshape(sources, batch * heads, -1).transpose(0, 1)
    mixed = weights.reshape(batch * heads, weights.shape[-2], sources) @ v
    mixed = mixed.transpose(0, 1).reshape(weights.shape[-2], batch, embed)
    return F.linear(mixed, p["out_proj_weight"], p.get("out_proj_bias")), None


def _tanh_eval(p: Kwargs) -> Tuple[Tensor, Tensor]:
    """``tanh(x) = x * s(x)``, ``s(x) = tanh(x) / x`` (1 at 0): frozen like a smooth activation."""
    x = p["input"]
    y = torch.tanh(x)
    return y, torch.where(x == 0, torch.ones_like(x), y / x).detach()


def _frozen_table() -> Dict[Callable, FrozenOp]:
    table: Dict[Callable, FrozenOp] = {}
    for fn in (F.softmax, torch.softmax, Tensor.softmax):
        table[fn] = _SOFTMAX
    for fn in (torch.sigmoid, F.sigmoid, Tensor.sigmoid):
        table[fn] = _SIGMOID
    table[F.hardsigmoid] = _HARDSIGMOID
    for fn in (torch.tanh, F.tanh, Tensor.tanh):
        table[fn] = FrozenOp("tanh", ("input",), (), lambda p: True, _tanh_eval, lambda p, scale: p["input"] * scale)
    table[F.layer_norm], table[F.group_norm], table[F.normalize] = _LAYER_NORM, _GROUP_NORM, _NORMALIZE
    if hasattr(F, "rms_norm"):
        table[F.rms_norm] = _RMS_NORM
    table[F.scaled_dot_product_attention] = _ATTENTION
    table[F.multi_head_attention_forward] = FrozenOp(
        "multi_head_attention", _MHA_NAMES, (("training", True), ("need_weights", True)), _plain_attention,
        _mha_eval, _mha_frozen)
    return table


FROZEN_OPS: Dict[Callable, FrozenOp] = _frozen_table()
"""Every function that linearized passes freeze, mapped to its operation."""
