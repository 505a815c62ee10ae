"""Feedback Selective Pruning (FSP, Algorithm 2 of the paper)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_feedback._compat import TargetType, TensorOrTuple, format_output, select_targets
from captum_feedback.attribution import Batch, FeedbackAttribution, check_iterations, input_gradients
from captum_feedback.engine import Gate, GatePolicy, GatingSession, Site
from captum_feedback.selection import Threshold, check_threshold, cw_selector, keep_mask
from captum_feedback.state import FeedbackState

_GATHER_BITS = 0x0102040810204080
"""Multiplying eight 0/1 bytes, read as one little-endian int64, by this constant gathers
them into the top byte (byte ``i`` becomes bit ``i``) without carries."""


def pack_bits(gate: Tensor) -> Tensor:
    """A boolean gate ``(B, ...)`` as ``(B, ceil(n / 8))`` bytes, eight units a byte."""
    flat = gate.reshape(gate.shape[0], -1)
    if flat.shape[1] % 8:
        flat = F.pad(flat, (0, -flat.shape[1] % 8))
    gathered = flat.view(torch.int64) * _GATHER_BITS  # eight gates a little-endian word
    return gathered.bitwise_right_shift_(56).to(torch.uint8)


def unpack_bits(packed: Tensor, shape: Tuple[int, ...]) -> Tensor:
    """The inverse of :func:`pack_bits`."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = ((packed.unsqueeze(-1) >> shifts) & 1).bool()
    return bits.view(packed.shape[0], -1)[:, : math.prod(shape[1:])].view(shape)


class _PruningPolicy(GatePolicy):
    """Gates from the previous pass's CWs, decided site by site as the forward pass reaches them.

    Deciding a site's gate when the forward pass reaches it, from CWs of the previous backward
    pass and the activation ``x`` computed with the *already updated* gates below, is exactly
    Algorithm 2's bottom-up sweep: a site's CW depends only on the gates above it, which the
    sweep has not touched yet. One forward and one backward pass per update suffice.

    Memory: between passes a site holds one byte per unit (the CW selector, dropped as soon
    as the forward pass has used it) and its gates packed eight to a byte.
    """

    def __init__(self, threshold: Threshold, batch_size: int, keep_cws: bool) -> None:
        self.threshold = threshold
        self.keep_cws = keep_cws
        self.selectors: Dict[int, Tensor] = {}
        self.packed_gates: Dict[int, Tensor] = {}
        self.cws: Dict[int, Tensor] = {}
        self.layer_cws: Dict[str, Tensor] = {}
        self.final_pass = False
        """Set before the last pass: its CWs choose no further gates."""
        self.active = torch.ones(batch_size, dtype=torch.bool)
        self.converged_any = False
        """``not active.all()``, kept as a flag so that sites need not ask the tensor each pass."""
        self.changed: Optional[Tensor] = None
        """Per sample, whether this pass changed a gate (on the activations' device)."""

    def gate(self, site: Site, x: Tensor) -> Optional[Gate]:
        selector = self.selectors.pop(site.index, None)
        previous = self.packed_gates.get(site.index)
        if selector is None:  # first pass, or a site the target does not reach: gates open
            return None if previous is None else Gate.of(unpack_bits(previous, site.shape), x)
        mask = keep_mask(selector, x)
        gate = Gate(mask.to(torch.bool), mask)
        if self.converged_any:  # converged samples keep their gates
            active = self.active.to(x.device).view((-1,) + (1,) * (x.dim() - 1))
            gate = Gate.of(torch.where(active, gate.keep, self.gates(site, x.device)), x)
        packed = pack_bits(gate.keep)
        # Gates start open: the first selection changes a sample where it closes any unit.
        changed = ~gate.keep.flatten(1).all(1) if previous is None else (packed != previous).any(1)
        self.changed = changed if self.changed is None else self.changed | changed
        self.packed_gates[site.index] = packed
        return gate

    def gates(self, site: Site, device: torch.device) -> Tensor:
        """The site's current gates, all open if it never had any."""
        packed = self.packed_gates.get(site.index)
        return torch.ones(site.shape, dtype=torch.bool, device=device) if packed is None else unpack_bits(
            packed, site.shape
        )

    def end_pass(self) -> Tensor:
        """Marks samples whose gates this pass left unchanged as converged; returns the still active."""
        if self.changed is not None:
            self.active &= self.changed.cpu()
        self.changed = None
        self.converged_any = not bool(self.active.all())
        return self.active

    def backward(self, site: Site, cw: Tensor) -> Tensor:
        if site.kind == "layer":
            self.layer_cws[site.name] = cw.detach()
            return cw
        if not self.final_pass:
            selector = cw_selector(cw, self.threshold)
            if site.support is not None:  # a frozen ReLU's gates stay within its support
                selector.mul_(site.support.view(torch.int8))
            self.selectors[site.index] = selector
        if self.keep_cws:
            self.cws[site.index] = cw.detach()
        return cw


class FeedbackSelectivePruning(FeedbackAttribution):
    r"""Feedback Selective Pruning (Cao et al., TPAMI 2018, Sec. 3.4.2, Algorithm 2).

    FSP looks for the binary gates ``z`` on every ReLU-like and max-pooling output that
    maximize the target score (Eq. 4). Starting with all gates open, each update runs the
    model with the current gates, takes the contribution weights ``alpha = dS/d(z x)``
    (Eq. 6) of every site from one backward pass, and keeps the units with
    ``alpha * sign(x) > tau``. The attribution is the gradient of the target score with
    respect to the input under the final gates: a class-specific map, because neurons that
    speak against the target are switched off in every layer.

    Linearization (Sec. 3.3), the default, freezes ReLU states and max-pool choices after the
    first pass. Then ``S`` is linear in each site's gates, every update is a greedy ascent
    step, and with ``threshold="zero"`` the target score never decreases from one update to
    the next (Sec. 4.1). Frozen units are not clamped any more, so scores can grow well beyond
    the model's normal logits. ``linearize=False`` re-evaluates the activations on every pass
    as the authors' Caffe demo does; it carries no such guarantee. The default was chosen by
    measurement (``python benchmarks/linearization.py``, EfficientNet-Lite0, top-2 classes of
    five bundled photos, 5 updates): linearized, the score rose on 10 of 10 runs (re-evaluated:
    0 of 10 never dropped), and the deletion area of the Summation Energy Map was 0.46 against
    0.59 (lower is better); the input-gradient maps scored alike (0.15 and 0.13; the plain
    gradient 0.17). The re-evaluated maps also look like speckle where the linearized ones
    follow object contours.

    Nonlinearities other than the gate sites (sigmoid, GELU, softmax, ...) are evaluated as
    they are, so the guarantee covers piecewise-linear networks.

    Args:
        forward_func: The model (``nn.Module`` or callable). It is used as it is: put it in
            ``eval()`` mode first, as for any attribution, or batch statistics and dropout
            make every pass different.
    """

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        iterations: int = 5,
        threshold: Threshold = "zero",
        linearize: bool = True,
    ) -> TensorOrTuple:
        r"""Input attribution of the target under the gates FSP selects.

        Args:
            inputs: A tensor or a tuple of tensors, with the batch as the first dimension,
                exactly as for ``captum.attr.Saliency``.
            target: Output index of the target score: an int, a tuple, a tensor or a list
                with one entry per sample (Captum's target forms). ``None`` when the model
                returns one value per sample.
            additional_forward_args: Further arguments to the model, passed after the inputs.
            iterations: Maximum number of gate updates. Each sample stops early once an
                update changes none of its gates (a fixed point). The paper converges in
                about 5 (Sec. 4.1, Figs. 6-7).
            threshold: ``"zero"`` (Algorithm 2; guarantees a non-decreasing score when
                linearized), ``"mean"`` (the layer-mean rule of Sec. 3.5, per sample and
                site), ``"positive_mean"``, a number, or a callable; see
                :data:`captum_feedback.selection.Threshold`.
            linearize: Freeze ReLU states and max-pool choices after the first forward pass
                (Sec. 3.3).

        Returns:
            Gradients of the target with respect to each input under the final gates, the
            same shapes as ``inputs`` (a tensor or a tuple, as given).

        Examples::

            >>> fsp = FeedbackSelectivePruning(model.eval())
            >>> attribution = fsp.attribute(images, target=labels)
        """
        state = self.select(
            inputs, target, additional_forward_args, iterations, threshold, linearize, keep_cws=False
        )
        return format_output(isinstance(inputs, tuple), state.attributions)

    def select(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        iterations: int = 5,
        threshold: Threshold = "zero",
        linearize: bool = True,
        keep_cws: bool = True,
        layers: Sequence[nn.Module] = (),
    ) -> FeedbackState:
        r"""Runs FSP and returns everything it chose: gates, CWs and per-pass outputs.

        Takes the arguments of :meth:`attribute`, and:

        Args:
            keep_cws: Keep every site's CWs in the state (needed by
                :func:`captum_feedback.summation_energy_map`).
            layers: Modules whose outputs and CWs under the final gates are kept in
                ``layer_outputs`` and ``layer_cws`` (keyed by module name).

        Returns:
            A :class:`FeedbackState`.
        """
        check_iterations(iterations)
        check_threshold(threshold)
        batch = self._batch(inputs, target, additional_forward_args)
        session = self._session(batch, linearize)
        policy = _PruningPolicy(threshold, batch.size, keep_cws)
        with session.installed():
            return self._iterate(session, batch, policy, iterations, layers)

    def _iterate(
        self, session: GatingSession, batch: Batch, policy: _PruningPolicy, iterations: int,
        layers: Sequence[nn.Module],
    ) -> FeedbackState:
        outputs: List[Tensor] = []
        scores: List[Tensor] = []
        updates = torch.zeros(batch.size, dtype=torch.long)
        for update in range(iterations + 1):
            policy.final_pass = update == iterations
            output, tapped = self._forward(session, batch, policy, layers)
            target_scores = select_targets(output, batch.targets)
            outputs.append(output.detach().reshape(batch.size, -1))
            scores.append(target_scores.detach())
            if update > 0:
                active = policy.end_pass()
                updates += active.long()
                if not active.any():
                    break  # every sample at a fixed point: the last gradients are final
            grads = input_gradients(target_scores, batch.inputs)
            layer_outputs = {session.module_name(m): tapped[m].detach() for m in layers}
        missing = iterations + 1 - len(outputs)
        return self._state(
            session, policy, _padded(outputs, missing), _padded(scores, missing), grads, updates,
            layer_outputs,
        )

    @staticmethod
    def _state(
        session: GatingSession, policy: _PruningPolicy, outputs: Tensor, scores: Tensor,
        grads: Tuple[Tensor, ...], updates: Tensor, layer_outputs: Dict[str, Tensor],
    ) -> FeedbackState:
        names = {site.index: site.name for site in session.sites}
        device = grads[0].device
        gates = {site.name: policy.gates(site, device) for site in session.sites}
        return FeedbackState(
            attributions=grads,
            gates=gates,
            cws={names[i]: cw for i, cw in policy.cws.items()},
            site_kinds={site.name: site.kind for site in session.sites},
            outputs=outputs,
            target_scores=scores,
            updates=updates,
            converged=~policy.active,
            layer_outputs=layer_outputs,
            layer_cws=dict(policy.layer_cws),
        )


def _padded(rows: List[Tensor], missing: int) -> Tensor:
    """Stacks per-pass rows, repeating the last for passes skipped after convergence."""
    return torch.stack(rows + [rows[-1]] * missing)


FSP = FeedbackSelectivePruning
