"""What Feedback Selective Pruning chose: :class:`FeedbackState`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_feedback.core.config import FeedbackConfig, MapSettings
from captum_feedback.core.tokens import is_spatial

KeepCws = Union[bool, str]
"""Which sites' CWs and outputs a state keeps: ``"summed"`` (the Summation Energy Map's), ``True``
(every site's) or ``False`` (none)."""
KEEP_CWS = (True, False, "summed")


@dataclass
class FeedbackState:
    """The result of :meth:`FeedbackSelectivePruning.select`.

    Attributes:
        attributions: Input gradients of the target score under the final gates, one tensor
            per input (the "visualization map" of Sec. 3.4.1 before normalization).
        gates: Boolean gate ``z`` of every site after the last update, keyed by site name in
            execution order, each shaped like the site's activation ``(B, ...)``. A site that
            never took a gate holds an expanded view of one ``True`` (no memory; ``clone()``
            it to write).
        cws: Contribution weights ``alpha = dS/d(z x)`` (Eq. 6) under the final gates, same keys
            and shapes, of the sites ``select``'s ``keep_cws`` asked for: by default those the
            Summation Energy Map sums (:meth:`summation_sites`).
        site_outputs: Gated output ``z * x`` in the last pass, same keys and shapes; kept with
            the CWs.
        site_kinds: ``"activation"`` (ReLU-like) or ``"pool"`` (max-pooling) per site.
        outputs: The model's full output at every pass, ``(U + 1, B, n_outputs)`` for ``U =
            config.selection.updates``, FSP's gate updates over all stages (what ``updates=``
            of ``attribute`` and ``select`` sets), one row per pass.
            Index 0 is the plain forward pass, index ``i`` the pass with the gates of update
            ``i`` -- the curves of the paper's Fig. 6. Samples that converged early repeat
            their last row.
        target_scores: The target score at every pass, ``(U + 1, B)``.
        updates: Per sample, how many gate updates changed at least one gate.
        converged: Per sample, whether the gates reached a fixed point within ``U`` updates.
        reverted: Per sample, whether its ``attributions`` come from the gates of an earlier pass:
            a pruning rule can leave the target without any dependence on the inputs (every
            input gradient zero, a blank map; see :class:`~captum_feedback.MeanRatio`), and then
            the gradient is taken under the gates of the latest pass that had one, and so are
            ``layer_outputs`` and ``layer_cws`` (FSP-FR and LayerFeedback read them). ``gates``,
            ``cws`` and ``site_outputs`` (the Summation Energy Map) stay those of the final gates.
        layer_outputs: Output of each tapped layer under the final gates, keyed by module name.
        layer_cws: CW ``dS/dh`` of each tapped layer's output ``h`` under the final gates.
        config: The :class:`~captum_feedback.FeedbackConfig` FSP ran with; the energy maps
            drawn from this state follow it.
        input_digest: Per input, its shape and per-sample sums of values and of squares (float64,
            on the CPU): what :meth:`check_inputs` compares a later call's inputs with.
        reshape_transform: Turns a site's activation into ``(B, C, H, W)`` for the Summation
            Energy Map: the :class:`~captum_feedback.core.tokens.MapLayout` of the inputs, which
            reads token and channels-last activations from their shapes.
        dual: With a contrastive configuration, the state of FSP for the negated target score
            (the target's dual), which the Summation Energy Map subtracts; else ``None``.
        map_change: Per sample, ``||a - g|| / ||g||`` of ``attributions`` ``a`` against the
            input gradient ``g`` with every gate open (linearized as the run was), measured
            (one more pass) where the final gates left the outputs as they were, else NaN;
            ``None`` for a plain run and a dual.
        ungated_share: Per sample, the share of ``g`` left with every gate closed
            (:func:`~captum_feedback.core.attribution.ungated_share`), measured where
            ``map_change`` shows no change, else NaN. With ``map_change`` and ``target_scores``
            it tells when the map is degenerate (:func:`~captum_feedback.core.diagnosis.degeneracies`).
    """

    attributions: Tuple[Tensor, ...]
    gates: Dict[str, Tensor]
    cws: Dict[str, Tensor]
    site_outputs: Dict[str, Tensor]
    site_kinds: Dict[str, str]
    outputs: Tensor
    target_scores: Tensor
    updates: Tensor
    converged: Tensor
    reverted: Tensor
    layer_outputs: Dict[str, Tensor] = field(default_factory=dict)
    layer_cws: Dict[str, Tensor] = field(default_factory=dict)
    config: FeedbackConfig = field(default_factory=FeedbackConfig)
    input_digest: Optional[Tuple[Tuple[Tuple[int, ...], Tensor], ...]] = None
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None
    dual: Optional[FeedbackState] = None
    map_change: Optional[Tensor] = None
    ungated_share: Optional[Tensor] = None

    def check_inputs(self, inputs: Union[Tensor, Tuple[Tensor, ...]]) -> None:
        """Raises ``ValueError`` unless ``inputs`` are the inputs this state was made for.

        A state holds gates, CWs and layer outputs of particular samples: used with others, it
        would give their attribution silently wrong.
        """
        if self.input_digest is None:
            return
        given = digest(inputs)
        shapes, expected_shapes = [s for s, _ in given], [s for s, _ in self.input_digest]
        if shapes != expected_shapes:
            raise ValueError(f"The state was made for inputs of shape {expected_shapes}, not {shapes}; make "
                             "it with select() on these inputs.")
        for (_, sums), (_, expected) in zip(given, self.input_digest):
            if not torch.allclose(sums, expected, rtol=1e-9, atol=1e-12):
                raise ValueError("The state was made for other inputs (same shapes, other values); make it "
                                 "with select() on these inputs.")

    @classmethod
    def cat(cls, states: Sequence[FeedbackState], inputs: Tuple[Tensor, ...]) -> FeedbackState:
        """One state for a batch from the states of its samples, in order (``inputs``: the
        batch's inputs, for :attr:`input_digest`)."""
        first = states[0]
        if any(s.gates.keys() != first.gates.keys() for s in states):
            raise ValueError("The samples passed different gate sites (the model's path depends on its input), so "
                             "their states cannot form one batch; run them one at a time.")
        joined = {name: _join(name, [getattr(s, name) for s in states]) for name in _ROWS}
        dual = cls.cat([s.dual for s in states], inputs) if first.dual is not None else None
        return cls(**joined, site_kinds=first.site_kinds, config=first.config, input_digest=digest(inputs),
                   reshape_transform=first.reshape_transform, dual=dual)

    def summation_sites(self, reshape_transform: Optional[Callable[[Tensor], Tensor]] = None) -> List[str]:
        """The sites the configuration's Summation Energy Map sums, in execution order: its
        ``summation_sites`` share of the activation sites that are ``(B, C, H, W)`` maps after
        ``reshape_transform`` (default: the state's), less those that no gradient reached (no CW)."""
        shapes = {name: tuple(gate.shape) for name, gate in self.gates.items()}
        names = summed_sites(self.site_kinds, shapes, self.config.maps, self.maps_transform(reshape_transform))
        return [name for name in names if name in self.cws]

    def maps_transform(self, reshape_transform: Optional[Callable[[Tensor], Tensor]] = None
                       ) -> Callable[[Tensor], Tensor]:
        """``reshape_transform`` if given, else the state's, else the identity: what turns a
        site's activation into ``(B, C, H, W)``."""
        return reshape_transform or self.reshape_transform or (lambda activation: activation)

    def kept(self, keep_cws: KeepCws) -> FeedbackState:
        """The state with the CWs and site outputs ``keep_cws`` names: ``"summed"``, those of
        :meth:`summation_sites`; ``True`` every site's; ``False``, none (the policy kept none)."""
        if keep_cws != "summed":
            return self
        names = set(self.summation_sites())
        return replace(self, cws={k: v for k, v in self.cws.items() if k in names},
                       site_outputs={k: v for k, v in self.site_outputs.items() if k in names})

    @property
    def input_size(self) -> Tuple[int, ...]:
        """Spatial size of the first input (everything after batch and channel dimensions)."""
        if self.attributions:
            return tuple(self.attributions[0].shape[2:])
        if self.input_digest is None:
            raise ValueError("The state holds neither attributions nor its inputs' shapes; pass the map's size.")
        return tuple(self.input_digest[0][0][2:])


def summed_sites(kinds: Dict[str, str], shapes: Dict[str, Tuple[int, ...]], maps: MapSettings,
                 transform: Callable[[Tensor], Tensor]) -> List[str]:
    """The sites (names, in execution order) whose maps a Summation Energy Map of ``maps``
    sums: its ``summation_sites`` share of the activation sites (``kinds``) whose activations
    (``shapes``) are ``(B, C, H, W)`` maps of more than one location after ``transform`` (a
    squeeze-excitation's ``(B, C, 1, 1)`` would add the same value everywhere)."""
    names = [name for name, kind in kinds.items() if kind == "activation" and is_spatial(shapes[name], transform)]
    if maps.summation_sites is not None:
        start, stop = (round(share * len(names)) for share in maps.summation_sites)
        names = names[start:max(stop, start + 1)]
    return names


def digest(inputs: Union[Tensor, Tuple[Tensor, ...]]) -> Tuple[Tuple[Tuple[int, ...], Tensor], ...]:
    """Per input, its shape and its per-sample sums of values and of squares, ``(B, 2)`` float64."""
    rows = []
    for x in inputs if isinstance(inputs, tuple) else (inputs,):
        flat = x.detach().flatten(1).double()
        rows.append((tuple(x.shape), torch.stack([flat.sum(1), flat.square().sum(1)], 1).cpu()))
    return tuple(rows)


_ROWS = ("attributions", "gates", "cws", "site_outputs", "outputs", "target_scores", "updates", "converged",
         "reverted", "layer_outputs", "layer_cws", "map_change", "ungated_share")
"""The fields of a :class:`FeedbackState` that hold rows per sample: tensors, and tuples and dicts
of tensors, with the samples along the first dimension, except in :data:`_PASSES` (``None``
where nothing was measured)."""
_PASSES = ("outputs", "target_scores")
"""Fields of one row per pass, with the samples along the second dimension."""


def _join(name: str, values: List[Any]) -> Any:
    """Field ``name`` of several states, their samples joined in order."""
    first = values[0]
    if first is None:
        return None
    if isinstance(first, dict):
        return {k: torch.cat([v[k] for v in values]) for k in first}
    if isinstance(first, tuple):
        return tuple(torch.cat(parts) for parts in zip(*values))
    return torch.cat(values, 1 if name in _PASSES else 0)
