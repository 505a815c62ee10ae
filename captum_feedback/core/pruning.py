"""Feedback Selective Pruning (FSP, Algorithm 2 of the paper)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Sequence, Tuple

import torch
from captum.log import log_usage
from torch import Tensor, nn

from captum_feedback.core._compat import TargetType, TensorOrTuple, blank_rows, format_output
from captum_feedback.core.attribution import Batch, FeedbackAttribution, input_gradients
from captum_feedback.core.config import ConfigLike, FeedbackConfig, SelectionSettings, resolve_config
from captum_feedback.core.diagnosis import MAP_TOLERANCE, outputs_unchanged, relative_change, warn_degenerate
from captum_feedback.core.engine import Gate, GatePolicy, GatingSession, HeapHold, Site
from captum_feedback.core.gate_store import GateStore
from captum_feedback.core.kernels import PINNED
from captum_feedback.core.selection import SelectionRule
from captum_feedback.core.state import KEEP_CWS, FeedbackState, KeepCws, digest, summed_sites
from captum_feedback.core.tokens import MapLayout, ReshapeTransform, is_spatial


class _Pass(NamedTuple):
    """What FSP's driver (:meth:`FeedbackSelectivePruning._iterate`) tells the policy about the
    pass it runs: the policy reads it and holds no orchestration state of its own. The driver
    hands a new one before the forward pass and, where the forward pass changed what its
    backward pass must do, before the backward pass."""

    updating: Optional[FrozenSet[int]] = None
    """Sites whose gates this pass's backward pass updates; ``None``: every site (the first
    forward pass, before the sites are known)."""
    final: bool = False
    """This pass's CWs choose no further gates: its gates are FSP's result."""
    may_be_final: bool = False
    """A pass of the last stage, which may turn out the last (every sample converged): its site
    outputs are kept, and so are its CWs of :attr:`kept_sites`."""
    converged: Optional[Tensor] = None
    """Per sample, whether its gates reached a fixed point in this stage, so that it keeps them;
    ``None`` when no sample has (the common case, which asks nothing of the tensor)."""
    kept_sites: Optional[FrozenSet[int]] = None
    """The sites whose CWs the last pass keeps, when it ends at the lowest of them rather than
    at the inputs (the dual's, whose map needs no input gradient); ``None``: every site."""
    updatable: Optional[FrozenSet[int]] = None
    """Every site some stage of the run updates: the gate store holds these alone (the
    default's head stage keeps one byte a unit of the head, not of the whole network)."""
    shared: bool = False
    """The first pass of a contrastive run, which the dual's policy mirrors: with every gate open
    the dual's score is the target's negation, so its CWs are this pass's negated and its
    outputs the same: one backward pass serves both, and the dual starts at its first update."""


class _PruningPolicy(GatePolicy):
    """Gates from the previous pass's CWs, decided site by site as the forward pass reaches them.

    Deciding a site's gate when the forward pass reaches it, from CWs of the previous backward
    pass and the activation ``x`` computed with the *already updated* gates below, is exactly
    Algorithm 2's bottom-up sweep: a site's CW depends only on the gates above it, which the
    sweep has not touched yet. One forward and one backward pass per update suffice.

    Only the sites the pass's plan (:class:`_Pass`) names take new gates from its backward
    pass (a stage of the released code's schedule); the others keep theirs. The policy keeps
    the gates, the CWs and outputs the state will hold, and the history that reverts read; the
    driver decides everything about the passes.
    """

    reads_activations = False  # the engine decides a selecting gate in the gate's own pass
    passes_cws_through = True  # and the selector reuses the gate's bytes
    settles = True

    def __init__(self, rule: SelectionRule, sites: Sequence[Site], batch_size: int, keep_cws: bool,
                 heap: HeapHold, mirror: Optional[_PruningPolicy] = None) -> None:
        self.rule = rule
        self.heap = heap
        """Where the gate store takes its buffers from and leaves them (:meth:`release`)."""
        self.keep_cws = keep_cws
        self.wants_on_states = rule.prunes_only
        self.sites = sites
        """The session's sites, all known once the first pass is done."""
        self.batch_size = batch_size
        self.plan = _Pass()
        """The pass being run, as the driver describes it."""
        self.mirror = mirror
        """The dual's policy, which sees the :attr:`_Pass.shared` pass's sites and CWs."""
        self.bytes: Optional[GateStore] = None
        self.selected: set = set()
        """Sites whose bytes hold a CW selector (the others hold gates)."""
        self.gated: set = set()
        """Sites that were ever gated (the others are open)."""
        self.cws: Dict[int, Tensor] = {}
        self.outputs: Dict[int, Tensor] = {}
        """Each site's gated output in the last pass, kept with the CWs."""
        self.layer_cws: Dict[str, Tensor] = {}
        self.reverts = 0
        """How many passes back :meth:`revert` has gone."""
        self.reverted = torch.zeros(batch_size, dtype=torch.bool)
        """Samples whose final gates :meth:`revert` took from an earlier pass."""

    def needs_cw(self, site: Site) -> bool:
        plan = self.plan
        kept = plan.kept_sites is not None and plan.may_be_final and site.index in plan.kept_sites
        if plan.final and plan.kept_sites is not None:
            return kept
        return kept or self._updates(site)

    def settled(self, site: Site) -> bool:
        """A site no CW reached in the last pass, whose gate stays (or stays open, no CW
        wanted), in a pass that keeps no outputs."""
        index = site.index
        return (not self.observes and index not in self.selected
                and (index in self.gated or not self.needs_cw(site)))

    def _updates(self, site: Site) -> bool:
        """Whether this pass's CW of the site chooses its next gates."""
        return self.plan.updating is None or site.index in self.plan.updating

    def gate(self, site: Site, x: Optional[Tensor]) -> Optional[Gate]:
        if site.index not in self.selected and site.index not in self.gated:
            return None  # first pass, or a site no update has reached: open
        slot = self.bytes.slot(site)
        if site.index not in self.selected:  # no CW reached the site this time: gates stay
            return Gate(slot)
        self.selected.remove(site.index)
        pinned = self.plan.converged is not None and not site.nonnegative
        if self.plan.converged is not None:  # converged samples keep their gates: their rows'
            rows = self.plan.converged.nonzero().flatten().to(slot.device)  # selectors become them
            kept = self.bytes.packed_gates(site).index_select(0, rows).to(torch.int8)
            slot.index_copy_(0, rows, kept.mul_(PINNED) if pinned else kept)
        self.gated.add(site.index)
        return Gate(slot, selects=True, pinned=pinned)

    def _mirrored(self) -> Optional[_PruningPolicy]:
        """The dual's policy, given this pass's plan, during the shared first pass."""
        if self.mirror is None or not self.plan.shared:
            return None
        self.mirror.plan = self.plan
        return self.mirror

    @property
    def observes(self) -> bool:
        return (self.keep_cws and self.plan.may_be_final) or self._mirrored() is not None

    def observe(self, site: Site, output: Tensor) -> None:
        mirror = self._mirrored()
        if mirror is not None:
            mirror.observe(site, output)
        if self.keep_cws and self.plan.may_be_final:
            self.outputs[site.index] = output

    def gates(self, site: Site) -> Tensor:
        """The site's current gates; all open, as a read-only view of one value, if it never had any."""
        if site.index not in self.gated:
            return torch.ones((), dtype=torch.bool).expand(site.shape)
        return self.bytes.slot(site).view(torch.bool).clone()

    def snapshot(self) -> Tuple[Tensor, Tensor, Dict[int, Tensor], Dict[int, Tensor], Dict[str, Tensor]]:
        """The final gates, outputs and CWs, before :meth:`revert` changes them."""
        return (self.bytes.buffer.clone(), self.bytes.packed.clone(), dict(self.outputs), dict(self.cws),
                dict(self.layer_cws))

    def restore(self, kept: Tuple[Tensor, Tensor, Dict[int, Tensor], Dict[int, Tensor], Dict[str, Tensor]]) -> None:
        buffer, packed, self.outputs, self.cws, self.layer_cws = kept
        self.bytes.buffer.copy_(buffer)
        self.bytes.packed.copy_(packed)

    def revert(self, rows: Tensor) -> Tensor:
        """Takes the samples ``rows`` one pass further back than the last revert (the first goes
        back to the gates before the last update); returns those whose gates changed."""
        reverted = torch.zeros_like(rows)
        while self.bytes is not None and self.reverts < len(self.bytes.history) and not reverted.any():
            self.reverts += 1
            reverted = self.bytes.revert(rows, self.reverts)
        self.reverted |= reverted
        if reverted.any():
            for site in self.sites:  # a frozen ReLU's gates stay within its support
                if site.support is not None and site.index in self.gated:
                    self.bytes.slot(site).mul_(site.support.view(torch.int8))
        return reverted

    def release(self) -> None:
        """Leaves the gate store's buffers to the next run (:class:`~.engine.HeapHold`), once the
        state holds what it keeps of the gates."""
        if self.bytes is not None:
            self.bytes.give_back(self.heap)
            self.bytes = None

    def changed(self) -> Tensor:
        """Per sample (on the CPU), whether this pass's gates differ from the last pass's."""
        if self.bytes is None:
            return torch.ones(self.batch_size, dtype=torch.bool)
        return self.bytes.changed().cpu()

    def signs_into(self, site: Site, cw: Tensor) -> Optional[Tuple[Tensor, Optional[Tensor]]]:
        if not self.rule.writes_signs or not self._selects(site) or self._mirrored() is not None:
            return None
        return self._selector_bytes(site, cw.device), site.support

    def backward(self, site: Site, cw: Tensor, signs_written: bool = False) -> Tensor:
        if signs_written:  # signs_into's site: it selects, in a pass that is not the last, with no dual
            self.selected.add(site.index)
            return cw
        mirror = self._mirrored()
        if mirror is not None:
            mirror.backward(site, -cw)
        if site.kind == "layer":
            self.layer_cws[site.name] = cw.detach()
            return cw
        if self._selects(site):  # a frozen ReLU's gates stay within its support
            slot = self._selector_bytes(site, cw.device)
            self.rule.write_selector(cw, slot, self._open_units(site, slot), not site.nonnegative, site.support)
            self.selected.add(site.index)
        if self.keep_cws and self.plan.final:
            self.cws[site.index] = cw.detach()
        return cw

    def _selects(self, site: Site) -> bool:
        """Whether this pass's CW of the site selects its next gates: its gates have been used,
        and its bytes take the selector."""
        return site.kind != "layer" and not self.plan.final and self._updates(site)

    def _selector_bytes(self, site: Site, device: torch.device) -> Tensor:
        """The site's bytes in the gate store, made on the first site that selects."""
        if self.bytes is None:
            stored = [s for s in self.sites if self.plan.updatable is None or s.index in self.plan.updatable]
            self.bytes = GateStore(stored, self.batch_size, device, self.rule.prunes_only, self.heap)
        return self.bytes.slot(site)

    def _open_units(self, site: Site, slot: Tensor) -> Optional[Tensor]:
        """The site's open, active units, which a pruning rule averages over and keeps within."""
        if not self.rule.prunes_only:
            return None
        if site.index in self.gated:  # a gate keeps only units with alpha * x > tau >= 0
            return slot.view(torch.bool)
        return site.on_states


class _Passes(NamedTuple):
    """What the passes of one FSP run produced, beside the policy's gates and CWs."""

    grads: Tuple[Tensor, ...]
    """The input gradients under the final gates."""
    outputs: Tensor
    scores: Tensor
    updates: Tensor
    layer_outputs: Dict[str, Tensor]
    converged: Tensor
    """Per sample, whether its gates reached a fixed point in the last stage."""

    def negated(self) -> _Passes:
        """The passes of the dual of a run with no update: its one pass is this one's, with the
        score, and so its gradients, negated."""
        return self._replace(grads=tuple(-g for g in self.grads), scores=-self.scores)


class FeedbackSelectivePruning(FeedbackAttribution):
    r"""Feedback Selective Pruning (Cao et al., TPAMI 2018, Sec. 3.4.2, Algorithm 2).

    FSP looks for the binary gates ``z`` on every ReLU-like and max-pooling output that
    maximize the target score (Eq. 4). Starting with all gates open, each update runs the
    model with the current gates, takes the contribution weights ``alpha = dS/d(z x)``
    (Eq. 6) of every site from one backward pass, and keeps the units with
    ``alpha * sign(x) > tau``. The attribution is the gradient of the target score with
    respect to the input under the final gates: a class-specific map, because neurons that
    speak against the target are switched off in every layer.

    How gates are chosen follows a :class:`~captum_feedback.FeedbackConfig` (``config=``):
    ``"paper"`` is Algorithm 2 as written (zero threshold, every ReLU and max-pool site, 5
    linearized updates); ``"released_code"`` is the authors' Caffe code (``MeanRatio(1)``, two
    stages, ReLU gates only, edges dropped, re-evaluated activations); ``"default"`` is contrastive
    FSP (the zero threshold on the head sites, for the target and for its dual, the negated
    score), chosen by measurement on pooled and VGG-style models (README, "Configurations");
    its input gradient updates only the head's gates, its Summation Energy Map is the
    class-specific map.

    Linearization (Sec. 3.3, the ``"paper"`` preset) freezes ReLU states and max-pool choices
    after the first pass. Then ``S`` is linear in each site's gates, every update is a greedy
    ascent step, and with ``threshold="zero"`` the target score never decreases from one update
    to the next (Sec. 4.1). Frozen units are not clamped any more, so scores can grow well
    beyond the model's normal logits. ``linearize=False`` re-evaluates the activations on every
    pass as the authors' Caffe code does; it carries no such guarantee. For the zero threshold,
    linearized was chosen by measurement (``python benchmarks/linearization.py``,
    EfficientNet-Lite0, top-2 classes of five bundled photos, 5 updates): the score rose on 10
    of 10 runs (re-evaluated: 0 of 10 never dropped), and the deletion area of the Summation
    Energy Map was 0.46 against 0.59 (lower is better). The released code's rule prunes
    instead of ascending: its gates only close, and the target score may fall.

    Nonlinearities other than the gate sites (sigmoid, GELU, softmax, ...) are evaluated as
    they are, so the guarantee covers piecewise-linear networks.

    Args:
        forward_func: The model (``nn.Module`` or callable). It is used as it is: put it in
            ``eval()`` mode first, as for any attribution, or batch statistics and dropout
            make every pass different.
    """

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        config: ConfigLike = None,
        updates: Optional[int] = None,
    ) -> TensorOrTuple:
        r"""Input attribution of the target under the gates FSP selects.

        Args:
            inputs: A tensor or a tuple of tensors, with the batch as the first dimension,
                exactly as for ``captum.attr.Saliency``.
            target: Output index of the target score: an int, a tuple, a tensor or a list
                with one entry per sample (Captum's target forms). ``None`` when the model
                returns one value per sample.
            additional_forward_args: Further arguments to the model, passed after the inputs.
            config: A preset name (``"default"``, ``"paper"``, ``"released_code"``,
                ``"pruning"``) or a :class:`~captum_feedback.FeedbackConfig`: every setting
                of the method (threshold, stages, linearization, maps), ``None`` for
                ``"default"``.
            updates: FSP's gate updates in all, over every stage (the last stage makes what
                the earlier ones leave); ``None`` takes the configuration's. Each sample stops
                early once an update of the last stage changes none of its gates (a fixed
                point). The paper converges in about 5 (Sec. 4.1, Figs. 6-7).

        Returns:
            Gradients of the target with respect to each input under the final gates, the
            same shapes as ``inputs`` (a tensor or a tuple, as given).

        Examples::

            >>> fsp = FeedbackSelectivePruning(model.eval())
            >>> attribution = fsp.attribute(images, target=labels)
            >>> paper = fsp.attribute(images, target=labels, config="paper", updates=3)
        """
        settings = resolve_config(config, updates)
        batch = self._batch(inputs, target, additional_forward_args)
        state = self._select(batch, settings, False, (), dual=False, whole=False)
        warn_degenerate(state)
        return format_output(batch.is_tuple, state.attributions)

    def select(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        config: ConfigLike = None,
        updates: Optional[int] = None,
        keep_cws: KeepCws = "summed",
        layers: Sequence[nn.Module] = (),
        attributions: bool = True,
    ) -> FeedbackState:
        r"""Runs FSP and returns everything it chose: gates, CWs and per-pass outputs.

        Takes the arguments of :meth:`attribute`, and:

        Args:
            keep_cws: Which sites' CWs and gated outputs the state keeps: ``"summed"``, those
                the configuration's :func:`captum_feedback.summation_energy_map` sums;
                ``True``, every site's (to sum other sites); ``False``, none.
            layers: Modules whose outputs and CWs under the final gates are kept in
                ``layer_outputs`` and ``layer_cws`` (keyed by module name).
            attributions: ``False`` when only the sites' CWs and outputs are wanted (a
                :func:`~captum_feedback.summation_energy_map`): the state's ``attributions`` are
                empty, the last pass's backward pass ends at the lowest site whose CWs the state
                keeps rather than at the inputs (unless ``layers`` need it to go on), and no
                diagnosis pass runs (``map_change`` and ``ungated_share`` are ``None``). Gates,
                CWs and maps are the same. The default configuration's Summation Energy Map took
                1.1 to 2.3 times less time (docs/benchmarks.md, issue #22's fifth session).

        Returns:
            A :class:`FeedbackState`.
        """
        if keep_cws not in KEEP_CWS:
            raise ValueError(f"keep_cws must be one of {KEEP_CWS}, got {keep_cws!r}.")
        if not attributions and keep_cws is False and not layers:
            raise ValueError("select(attributions=False, keep_cws=False) would keep nothing of the run; keep the "
                             "CWs (keep_cws='summed' or True) or the attributions.")
        settings = resolve_config(config, updates)
        state = self._select(self._batch(inputs, target, additional_forward_args), settings, keep_cws, layers,
                             attributions=attributions)
        warn_degenerate(state)
        return state

    def ungated(self, inputs: TensorOrTuple, target: TargetType = None, additional_forward_args: Any = None,
                config: ConfigLike = None) -> FeedbackState:
        r"""The state of the plain network, every gate open: the no-FSP ablation.

        Maps drawn from it (:func:`~captum_feedback.summation_energy_map` with the same
        configuration) show what FSP's selection adds to a map and what the summation alone gives.

        Args:
            inputs, target, additional_forward_args: As for :meth:`attribute`.
            config: The configuration whose maps will be drawn (a contrastive one makes the
                dual's state too); no gate is set, so its selection settings do not matter.

        Returns:
            A :class:`FeedbackState` whose ``outputs`` hold the one plain pass.
        """
        batch = self._batch(inputs, target, additional_forward_args)
        return self._select(batch, resolve_config(config), "summed", (), updates=0)

    def _select(self, batch: Batch, config: FeedbackConfig, keep_cws: KeepCws, layers: Sequence[nn.Module],
                updates: Optional[int] = None, dual: Optional[bool] = None, attributions: bool = True,
                whole: bool = True) -> FeedbackState:
        """The state of one run; with ``batch_invariant`` execution, each sample's own run; with
        ``dual`` (default: a contrastive selection), also the run for the target's dual, the
        negated score, in :attr:`FeedbackState.dual`: after the shared first pass, the target's
        passes and then the dual's, each on the batch alone, so that memory stays that of one
        batch. Without ``attributions`` (:meth:`select`) the target's run, as the dual's always,
        ends its last backward pass at the lowest site whose CWs the state keeps. Without
        ``whole`` (:meth:`attribute`, which returns the attributions alone) the state leaves out
        the gates and the input digest: unpacking 33 sites' gates and summing the inputs cost
        0.5 ms a call on MobileNetV3 (issue #22)."""
        selection = config.selection
        dual = selection.contrastive if dual is None else dual
        if config.execution.batch_invariant and batch.size > 1:
            states = [self._select(sample, config, keep_cws, layers, updates, dual, attributions, whole)
                      for sample in batch.samples()]
            return FeedbackState.cat(states, batch.inputs)
        session = self._session(batch, selection.linearize)
        settings = (selection.rule, session.sites, batch.size, bool(keep_cws), session.heap)
        mirror = _PruningPolicy(*settings) if dual else None
        policy = _PruningPolicy(*settings, mirror)
        total = selection.updates if updates is None else updates
        layout = MapLayout.of(batch.inputs)

        def kept() -> Optional[FrozenSet[int]]:  # the sites whose CWs a map needs, when it needs no input gradient
            return _kept_indices(session, config, keep_cws, layout) if not layers else None

        with session.installed():
            passes = self._iterate(session, batch, policy, selection, layers, total,
                                   kept=None if attributions else kept)
            state = self._state(session, policy, passes, config, batch.inputs, whole).kept(keep_cws)
            policy.release()  # the dual's gate store takes its buffers
            del policy  # what the state does not keep goes once the dual's first pass replaces it
            if mirror is not None:
                negated = batch.negated()
                if total == 0:
                    dual_passes = passes.negated()
                else:  # the dual's map needs no input gradient
                    dual_passes = self._iterate(session, negated, mirror, selection, layers, total, first=passes,
                                                kept=kept if keep_cws == "summed" or not attributions else None)
                dual_state = self._state(session, mirror, dual_passes, config, negated.inputs, whole).kept(keep_cws)
                mirror.release()
                state = replace(state, dual=dual_state)
        if not attributions:
            return replace(state, attributions=())
        return self._diagnosed(state, batch, selection.linearize) if total > 0 and state.attributions else state

    def _diagnosed(self, state: FeedbackState, batch: Batch, linearize: bool) -> FeedbackState:
        """The state with what tells a degenerate map (:mod:`~captum_feedback.core.diagnosis`).
        Where the final gates left the model's outputs as they were (:func:`outputs_unchanged`),
        one more pass takes the gradient with every gate open (linearized as the run was), to
        measure how far the attribution is from it, and where it is not, one more, every gate
        closed, how much of it bypasses the gates."""
        nan = torch.full((batch.size,), float("nan"))
        change, share = nan, nan
        if outputs_unchanged(state.outputs).any():
            score = lambda output, _: batch.scores(output)  # noqa: E731
            plain = self.gated_gradients(batch, GatePolicy(), score, linearize=linearize)
            change = relative_change(state.attributions, plain).cpu()
            if (change <= MAP_TOLERANCE).any():
                share = self.ungated_share_of(batch, plain, linearize).cpu()
        return replace(state, map_change=change, ungated_share=share)

    def _iterate(
        self, session: GatingSession, batch: Batch, policy: _PruningPolicy, selection: SelectionSettings,
        layers: Sequence[nn.Module], total_updates: int, first: Optional[_Passes] = None,
        kept: Optional[Callable[[], Optional[FrozenSet[int]]]] = None,
    ) -> _Passes:
        """FSP's driver: the first pass with every gate open, then one per update, stage by
        stage; each sample stops updating at a fixed point of the last stage, and the passes end
        when every sample has. Before each forward pass, and again before its backward pass, the
        policy is told what the pass is (:class:`_Pass`). ``first``: the target's passes, whose
        first pass this policy (the target's dual) mirrored; ``kept``: the sites whose CWs the
        last pass keeps, when they are all it needs (:attr:`_Pass.kept_sites`), asked once the
        sites are known (after the first pass)."""
        stage_of = [k for k, stage in enumerate(selection.stages) for _ in range(stage.updates)]
        transform = MapLayout.of(batch.inputs)
        outputs: List[Tensor] = [] if first is None else [first.outputs[0]]
        scores: List[Tensor] = [] if first is None else [-first.scores[0]]
        updates = torch.zeros(batch.size, dtype=torch.long)
        active = torch.ones(batch.size, dtype=torch.bool)
        """Samples whose gates still change in this stage."""
        stages = None if first is None else _stages_sites(session.sites, selection, transform)
        """Each stage's sites, once the first pass has found the sites."""
        updating, updatable = (None, None) if stages is None else (stages[0], frozenset().union(*stages))
        kept_sites = kept() if kept is not None and stages is not None else None
        for update in range(len(outputs), total_updates + 1):
            in_last_stage = update > 0 and stage_of[update - 1] == len(selection.stages) - 1
            # A new stage names its sites before the forward pass, whose backward updates them.
            new_stage = 0 < update < total_updates and stage_of[update] != stage_of[update - 1]
            if new_stage:
                updating = stages[stage_of[update]]
            final = update == total_updates
            policy.plan = _Pass(updating, final, final or in_last_stage, None if active.all() else ~active,
                                kept_sites, updatable, update == 0)
            output, tapped, target_scores = self._pass(session, batch, policy, layers, outputs, scores)
            if update > 0:
                active &= policy.changed()
                updates += active.long()
                # Every sample at a fixed point in the last stage: these gates are final.
                final = final or (in_last_stage and not active.any())
            if final:
                policy.plan = policy.plan._replace(final=True)
                grads, layer_outputs = self._final_backward(session, batch, policy, layers, output, tapped,
                                                            target_scores)
                break
            if update == 0:
                stages = _stages_sites(session.sites, selection, transform)
                updating, updatable = stages[0], frozenset().union(*stages)
                kept_sites = kept() if kept is not None else None
            if new_stage:  # every sample takes part in the new stage, converged in the last or not
                active.fill_(True)
            policy.plan = policy.plan._replace(updating=updating, updatable=updatable)
            session.propagate_cws(target_scores)
            # The graph below the lowest site, which that backward pass did not free, goes now
            # rather than during the next forward pass.
            del output, tapped, target_scores
        missing = total_updates + 1 - len(outputs)
        return _Passes(grads, _padded(outputs, missing), _padded(scores, missing), updates, layer_outputs, ~active)

    def _final_backward(self, session: GatingSession, batch: Batch, policy: _PruningPolicy,
                        layers: Sequence[nn.Module], output: Tensor, tapped: Dict[nn.Module, Tensor],
                        target_scores: Tensor) -> Tuple[Tuple[Tensor, ...], Dict[str, Tensor]]:
        """The last pass's backward pass: the input gradients and the tapped layers' outputs
        under the final gates, or, where the plan keeps only some sites' CWs, those alone."""
        if policy.plan.kept_sites is not None:
            session.propagate_cws(target_scores)
            return (), {}
        grads = input_gradients(target_scores, batch.inputs)
        layer_outputs = {session.module_name(m): tapped[m].detach() for m in layers}
        del output, tapped, target_scores
        if policy.bytes is not None and _blank(grads).any():
            grads = self._earlier_gradients(session, batch, policy, layers, grads, layer_outputs)
        return grads, layer_outputs

    def _earlier_gradients(self, session: GatingSession, batch: Batch, policy: _PruningPolicy,
                           layers: Sequence[nn.Module], grads: Tuple[Tensor, ...], layer_outputs: Dict[str, Tensor]
                           ) -> Tuple[Tensor, ...]:
        """For samples whose final gates cut the target off the inputs (every input gradient
        zero), what the backward pass to the inputs gives -- the input gradients, and the tapped
        layers' outputs and CWs (updated in place) -- taken under the gates of their latest pass
        that did not; the final gates, site outputs and site CWs stay as FSP chose them."""
        kept = policy.snapshot()
        layer_cws = kept[4]
        reverted = policy.revert(_blank(grads))
        while reverted.any():
            output, tapped = self._forward(session, batch, policy, layers)
            earlier = input_gradients(batch.scores(output), batch.inputs)
            grads = _rows(reverted, earlier, grads)
            for module in layers:
                name = session.module_name(module)
                layer_outputs[name] = _rows(reverted, (tapped[module].detach(),), (layer_outputs[name],))[0]
                layer_cws[name] = _rows(reverted, (policy.layer_cws[name],), (layer_cws[name],))[0]
            reverted = policy.revert(_blank(grads) & reverted)
        policy.restore(kept)
        return grads

    def _pass(self, session: GatingSession, batch: Batch, policy: _PruningPolicy, layers: Sequence[nn.Module],
              outputs: List[Tensor], scores: List[Tensor]) -> Tuple[Tensor, Dict[nn.Module, Tensor], Tensor]:
        """One forward pass under the policy's gates; appends its outputs and target scores."""
        output, tapped = self._forward(session, batch, policy, layers)
        target_scores = batch.scores(output)
        outputs.append(output.detach().reshape(batch.size, -1))
        scores.append(target_scores.detach())
        return output, tapped, target_scores

    @staticmethod
    def _state(session: GatingSession, policy: _PruningPolicy, passes: _Passes, config: FeedbackConfig,
               inputs: Tuple[Tensor, ...], whole: bool = True) -> FeedbackState:
        names = {site.index: site.name for site in session.sites}
        device = inputs[0].device
        return FeedbackState(
            attributions=passes.grads,
            gates={site.name: policy.gates(site).to(device) for site in session.sites} if whole else {},
            cws={names[i]: cw for i, cw in policy.cws.items()},
            site_outputs={names[i]: y for i, y in policy.outputs.items()},
            site_kinds={site.name: site.kind for site in session.sites},
            outputs=passes.outputs,
            target_scores=passes.scores,
            updates=passes.updates,
            converged=passes.converged,
            reverted=policy.reverted,
            layer_outputs=passes.layer_outputs,
            layer_cws=dict(policy.layer_cws),
            config=config,
            input_digest=digest(inputs) if whole else None,
            reshape_transform=MapLayout.of(inputs),
        )


def _stages_sites(sites: Sequence[Site], selection: SelectionSettings, transform: ReshapeTransform
                  ) -> List[FrozenSet[int]]:
    """The indices of the sites each stage updates: the top share of the sites that take gates,
    or those from the output down to the last spatial one (``Stage("head")``)."""
    gated = [site for site in sites if site.kind == "activation" or selection.gate_pools]
    spatial = [k for k, site in enumerate(gated) if is_spatial(site.shape, transform)]
    head = len(gated) - spatial[-1] if spatial else 1
    return [frozenset(site.index for site in gated[len(gated) - stage.count(len(gated), head):])
            for stage in selection.stages]


def _kept_indices(session: GatingSession, config: FeedbackConfig, keep_cws: KeepCws, transform: ReshapeTransform
                  ) -> FrozenSet[int]:
    """The indices of the sites whose CWs a state keeps (``keep_cws``): every site, or those the
    configuration's Summation Energy Map sums (``transform``: the activations' :class:`MapLayout`)."""
    if keep_cws is True:
        return frozenset(site.index for site in session.sites)
    by_name = {site.name: site for site in session.sites}
    kinds = {name: site.kind for name, site in by_name.items()}
    shapes = {name: tuple(site.shape) for name, site in by_name.items()}
    return frozenset(by_name[name].index for name in summed_sites(kinds, shapes, config.maps, transform))


def _rows(rows: Tensor, new: Tuple[Tensor, ...], old: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """``new`` where ``rows`` (per sample, booleans) is set, else ``old``."""
    index = rows.to(old[0].device)
    return tuple(torch.where(index.view((-1,) + (1,) * (o.dim() - 1)), n, o) for n, o in zip(new, old))


def _blank(grads: Tuple[Tensor, ...]) -> Tensor:
    """Per sample, whether every input gradient is zero (on the CPU)."""
    return torch.stack([blank_rows(g.detach().flatten(1)) for g in grads]).all(0).cpu()


def _padded(rows: List[Tensor], missing: int) -> Tensor:
    """Stacks per-pass rows, repeating the last for passes skipped after convergence."""
    return torch.stack(rows + [rows[-1]] * missing)


FSP = FeedbackSelectivePruning
