"""When FSP's map is not FSP's: the gates changed nothing, the gradient bypassed them, the call
fell back to an earlier pass's gates, a pass overflowed, or pruning removed the class.

FSP (Sec. 3.4.2) makes a class-specific map by switching off the units that speak against the
target. On some models that does not happen, and the map looks like any other: a transformer
whose residual stream carries the gradient past every gate site, a random ConvNeXt whose
layer scales are tiny, a rule that closes so much that the target's score is gone. Each call
of :meth:`~captum_feedback.FSP.select` measures what it needs to tell (where the final gates
left the outputs as they were, the gradients with every gate open and with every gate closed, two
more passes), records it in the
:class:`~captum_feedback.core.state.FeedbackState`, and ``attribute`` and ``select`` warn once
per reason with a :class:`FeedbackDegenerateWarning`.
"""

from __future__ import annotations

import warnings
from typing import Dict, Tuple

import torch
from torch import Tensor

from captum_feedback.core._compat import finite_rows
from captum_feedback.core.state import FeedbackState

MAP_TOLERANCE = 1e-3
"""FSP's attribution counts as the gradient with every gate open when ``||a - g|| <= MAP_TOLERANCE * ||g||``."""
BYPASS_SHARE = 0.5
"""The share of the gradient left with every gate closed above which the gradient bypasses the
gates (:func:`~captum_feedback.core.attribution.ungated_share`)."""
COLLAPSE_RATIO = 0.01
"""A final target score below this fraction of the plain network's (positive) score is a
collapse."""

REASONS: Dict[str, str] = {
    "unchanged": (
        "FSP's gates changed nothing that matters here: its attribution is the gradient with every gate "
        f"open (within {MAP_TOLERANCE:g} of its norm), though closing every gate would change it. The threshold "
        "kept every unit the target depends on. The Summation Energy Map of select()'s state may still differ."),
    "bypassed": (
        "The gradient bypasses FSP's gates: its attribution is the gradient with every gate open "
        f"(within {MAP_TOLERANCE:g} of its norm), and with every gate closed over {BYPASS_SHARE:.0%} of the gradient "
        "remains (a residual stream or tiny layer scales carry it past every ReLU-like site). The map is the "
        "gradient under another name; ungated_share(model, x, target) measures the bypass."),
    "reverted": (
        "FSP's final gates cut the target off the inputs (a blank map), so the attribution of some samples "
        "comes from the gates of an earlier pass, at worst the plain network's gradient (state.reverted)."),
    "nonfinite": (
        "FSP's passes gave a non-finite target score or attribution (NaN or inf): in linearized passes (the "
        "'paper' preset) units that no longer saturate can make the scores overflow. Try "
        "config=PRESETS['paper'].replace(linearize=False) or fewer updates=; state.target_scores shows where."),
    "collapsed": (
        f"Pruning lowered the target score below {COLLAPSE_RATIO:.0%} of the plain network's: the map shows what "
        "is left after the class's evidence was removed. The paper's linearized zero threshold "
        "(config='paper') never lowers the score."),
}
"""Each reason a map can be degenerate, and what its warning says."""


class FeedbackDegenerateWarning(UserWarning):
    """FSP's map is degenerate for a reason of :data:`REASONS`; filter it as any warning."""


def relative_change(attributions: Tuple[Tensor, ...], plain: Tuple[Tensor, ...]) -> Tensor:
    """Per sample, ``||a - g|| / ||g||`` over all inputs (0 where both are zero, ``inf`` where
    only the gradient ``g`` with every gate open is)."""
    difference = torch.cat([(a - g).flatten(1) for a, g in zip(attributions, plain)], 1).norm(dim=1)
    scale = torch.cat([g.flatten(1) for g in plain], 1).norm(dim=1)
    return torch.where(scale > 0, difference / scale.clamp_min(1e-30),
                       torch.where(difference > 0, torch.full_like(scale, float("inf")), torch.zeros_like(scale)))


def outputs_unchanged(outputs: Tensor) -> Tensor:
    """Per sample, whether the last pass's outputs are those of the first, every gate open,
    within :data:`MAP_TOLERANCE` of their norm (``outputs``: ``(passes, B, n)``, as in
    :attr:`~captum_feedback.core.state.FeedbackState.outputs`). Gates that change the map
    change the outputs too, but for rare units; only where they did not is the map compared
    with the gradient with every gate open, which takes one more pass."""
    first, last = outputs[0].flatten(1), outputs[-1].flatten(1)
    return ((last - first).norm(dim=1) <= MAP_TOLERANCE * first.norm(dim=1)).cpu()


def degeneracies(state: FeedbackState) -> Dict[str, Tensor]:
    """Per reason of :data:`REASONS`, which samples of ``state`` it holds for, ``(B,)`` booleans
    (all ``False`` where the state measured nothing: a plain run, a dual).

    * ``"unchanged"`` and ``"bypassed"``: the attribution is the gradient with every gate open,
      linearized as the run was (:data:`MAP_TOLERANCE`); ``"bypassed"`` where the gradient
      with every gate closed keeps more than :data:`BYPASS_SHARE` of its norm, ``"unchanged"``
      where it does not;
    * ``"reverted"``: :attr:`~captum_feedback.core.state.FeedbackState.reverted`;
    * ``"nonfinite"``: a target score of some pass, or the attribution, is NaN or infinite;
    * ``"collapsed"``: the final target score is below :data:`COLLAPSE_RATIO` times the plain
      network's, which was positive.
    """
    size = state.target_scores.shape[1]
    none = torch.zeros(size, dtype=torch.bool)
    if state.map_change is None:
        return {reason: none for reason in REASONS}
    finite = torch.isfinite(state.target_scores.cpu()).all(0)
    for attribution in state.attributions:
        finite &= finite_rows(attribution.detach().flatten(1)).cpu()
    same = state.map_change.cpu() <= MAP_TOLERANCE  # NaN (outputs changed: not measured) compares False
    bypass = state.ungated_share.cpu() > BYPASS_SHARE  # NaN (not measured) compares False
    first, last = state.target_scores[0].cpu(), state.target_scores[-1].cpu()
    return {"unchanged": same & ~bypass, "bypassed": same & bypass, "reverted": state.reverted.cpu(),
            "nonfinite": ~finite, "collapsed": (first > 0) & (last < COLLAPSE_RATIO * first)}


def warn_degenerate(state: FeedbackState, stacklevel: int = 3) -> None:
    """Warns once (Python's default filter: one text, one place) for each reason that holds for
    any sample of ``state``."""
    for reason, holds in degeneracies(state).items():
        if holds.any():
            warnings.warn(REASONS[reason], FeedbackDegenerateWarning, stacklevel=stacklevel + 1)
