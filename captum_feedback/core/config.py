"""One typed configuration for the whole FSP -> FR pipeline, and its named presets.

A :class:`FeedbackConfig` holds three groups: :class:`SelectionSettings`, how FSP selects
gates (threshold rule, stages, linearization, which sites get gates, the contrastive dual);
:class:`MapSettings`, which Summation Energy Map (Sec. 4.3) and FSP-FR map (Procedure 1,
steps 5-6) are drawn from them; :class:`ExecutionSettings`, how the work runs. Every entry
point -- :class:`~captum_feedback.FSP`, the energy maps, Procedures 1 and 2, the CLI and the
benchmarks -- takes a preset name or a ``FeedbackConfig`` (:data:`ConfigLike`), so that no
option is dropped on the way; the only per-call override is FSP's number of gate updates
(``updates=``, the same as :meth:`FeedbackConfig.replace`'s). Presets:

* ``"paper"``: the paper's text. Algorithm 2 with ``alpha > 0`` over every ReLU and max-pool
  site, 5 linearized updates, the Summation Energy Map of the kept CWs ``z * |alpha|``.
* ``"released_code"``: the authors' released Caffe/MATLAB code (``caochunshui/FeedbackCNN-demo``),
  the source of the paper's tables. ``relu_layer.cu``: ReLU gates only, re-evaluated ReLUs,
  a unit stays open while its CW is at least the mean positive CW of its layer's open units
  (``MeanRatio(1)``), edge pixels dropped, gates only close. ``FSP_SumEnergy.m``: one update
  over the top layers (fc8 down to conv4_2: 7 of VGG16's 15 ReLUs), then one over all; the
  Summation Energy Map sums the gated activations of conv2_1 ... conv4_2 (spatial ReLU sites
  2-8 of 13), each divided by its maximum. ``FR_sim.m`` and ``mean_thd.m``: FR from the layer's
  neurons whose CW is at least 0.1 times the mean positive CW, FR threshold ``MeanRatio(0.1)``.
* ``"default"``: contrastive FSP, chosen by measurement on three models (README, "Which
  configuration is the default"): one update of the head sites (the last feature map and any
  fully connected ReLUs above it), run for the target and for its dual, the negated score; a
  unit stays open while its CW is at least twice its site's mean positive CW where the CWs tell
  locations apart (a VGG-style head's last feature map), and while it is positive elsewhere
  (the paper's ``alpha > 0``: global pooling, fully connected ReLUs); the Summation Energy
  Map sums the upper half of the spatial sites' contributions ``alpha x``, the target's less
  the dual's, each a distribution over locations. FSP-FR as in the released code.
* ``"pruning"``: the default before issue #21, the released code's rule with ratio 2 and sites
  4-10 of 13; for VGG-style heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional, Tuple, Union

from captum_feedback.core.selection import MeanRatio, SelectionRule, Threshold, as_rule

SUMMATIONS = ("cw", "activation", "contribution")
"""What the Summation Energy Map sums per kept unit: the CW ``z |alpha|`` (the paper's text),
the gated activation ``z x`` (the released code) or the contribution ``z alpha x`` (the terms of
Eq. 6, whose sum over a site is the target score)."""

SITE_NORMALIZATIONS = ("none", "max", "sum")
"""How each summed site's map is scaled before the sites are added: not at all, by its maximum
(the released code's ``FSP_SumEnergy.m``), or by its sum, so that it is a distribution over
locations (what a contrastive map compares, as contrastive excitation backprop compares two
probability maps)."""

HEAD = "head"
"""A :class:`Stage`'s sites: those from the output down to the last spatial site (the feature
map that global pooling or the fully connected layers read), whatever their number."""


@dataclass(frozen=True)
class Stage:
    """One stage of FSP: ``updates`` gate updates of the top ``sites`` share of the gate sites.

    Sites are counted in execution order from the output end, so ``Stage(0.47, 1)`` updates the
    upper 47% of the sites once, whatever the model (``FSP_SumEnergy.m`` updates 7 of VGG16's 15
    ReLUs, fc8 down to conv4_2, then all of them). ``Stage("head")`` updates the sites from the
    output down to the last spatial one (:data:`HEAD`): on a network with global pooling the
    last feature map's activation, on a VGG also its fully connected ReLUs.
    """

    sites: Union[float, str] = 1.0
    updates: int = 1

    def __post_init__(self) -> None:
        if self.sites != HEAD and not (isinstance(self.sites, (int, float)) and not isinstance(self.sites, bool)
                                       and 0 < self.sites <= 1):
            raise ValueError(f"Stage.sites is a share of the gate sites in (0, 1] or {HEAD!r}, got {self.sites!r}.")
        if isinstance(self.updates, bool) or not isinstance(self.updates, int) or self.updates < 1:
            raise ValueError(f"Stage.updates must be an integer >= 1, got {self.updates!r}.")

    def count(self, n_sites: int, head: int) -> int:
        """How many of ``n_sites`` sites, from the top, this stage updates (at least one);
        ``head`` is how many sites lie at or above the last spatial one."""
        share = head / max(n_sites, 1) if self.sites == HEAD else self.sites
        return max(1, min(n_sites, round(share * n_sites)))


SiteRange = Tuple[float, float]
"""``(start, stop)`` shares of the spatial activation sites, counted from the input."""


@dataclass(frozen=True)
class SelectionSettings:
    """How FSP selects its gates (Sec. 3.4.2, Alg. 2).

    Attributes:
        threshold: FSP's threshold (:data:`~captum_feedback.core.selection.Threshold`).
        drop_edges: Close the outermost row and column of every spatial map (released code).
        stages: FSP's stages, run in order (:class:`Stage`); one stage of 5 updates is Alg. 2.
        linearize: Freeze ReLU states and max-pool choices after the first pass (Sec. 3.3).
        gate_pools: Give max-pool outputs gates too (Sec. 3.1); the released code gates ReLUs only.
        contrastive: Run FSP also for the target's dual, the negated score (Zhang et al.,
            ECCV 2016, contrastive excitation backprop), so that the Summation Energy Map can be
            the evidence FSP keeps for the target less the evidence it keeps against it, site by
            site (:func:`~captum_feedback.summation_energy_map`). On a network with global
            pooling a unit's CW is the same at every location, and what makes a map
            class-specific is the negative evidence that cancels the features other objects
            share; a pruning for the target alone removes it.
    """

    threshold: Threshold = "zero"
    drop_edges: bool = False
    stages: Tuple[Stage, ...] = (Stage(1.0, 5),)
    linearize: bool = True
    gate_pools: bool = True
    contrastive: bool = False
    rule: SelectionRule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", as_rule(self.threshold, self.drop_edges))
        stages = tuple(self.stages)
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise ValueError(f"stages must be a non-empty sequence of Stage, got {self.stages!r}.")
        object.__setattr__(self, "stages", stages)

    @property
    def updates(self) -> int:
        """FSP's gate updates: those of every stage together."""
        return sum(stage.updates for stage in self.stages)

    @property
    def guarantees_ascent(self) -> bool:
        """Whether every update provably keeps the target score from falling (Sec. 4.1):
        linearized with the zero threshold and no edge dropping. Stages keep it: updating some
        sites from one backward pass is Algorithm 2's sweep over those sites alone."""
        return self.linearize and self.rule.is_zero and not self.drop_edges

    def with_updates(self, updates: int) -> SelectionSettings:
        """The same selection with ``updates`` gate updates in all; the last stage makes what
        the earlier stages leave (at least one)."""
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 1:
            raise ValueError(f"updates must be an integer >= 1, got {updates!r}.")
        last = updates - sum(stage.updates for stage in self.stages[:-1])
        if last < 1:
            raise ValueError(f"updates={updates} leaves none for the last of {len(self.stages)} stages; "
                             f"these stages need at least {updates - last + 1} updates.")
        return replace(self, stages=self.stages[:-1] + (replace(self.stages[-1], updates=last),))


@dataclass(frozen=True)
class MapSettings:
    """Which maps are drawn from FSP's gates: the Summation Energy Map (Sec. 4.3) and the
    FSP-FR map (Procedure 1, steps 5-6).

    Attributes:
        summation: What the Summation Energy Map sums (:data:`SUMMATIONS`).
        summation_sites: The sites it sums, ``None`` for every spatial activation site.
        site_normalization: How each summed site's map is scaled first (:data:`SITE_NORMALIZATIONS`;
            the released code divides by the maximum).
        evidence_weighted: With a contrastive selection, multiply the contrastive map by the
            target's own evidence, each summed site's map divided by its maximum: the contrast
            says where the target's evidence is denser than the evidence against it, the
            evidence says how much of the object lies there
            (:func:`~captum_feedback.summation_energy_map`).
        neuron_ratio: The FSP-FR map's neurons: those of the layer whose CW is at least this
            share of the layer's mean positive CW (``mean_thd.m``); 0 keeps every neuron with a
            positive contribution.
        fr_threshold: The threshold of the FR pass of the FSP-FR map (the selection's
            ``drop_edges`` applies to it too).
    """

    summation: str = "cw"
    summation_sites: Optional[SiteRange] = None
    site_normalization: str = "none"
    evidence_weighted: bool = False
    neuron_ratio: float = 0.0
    fr_threshold: Threshold = "zero"

    def __post_init__(self) -> None:
        if self.summation not in SUMMATIONS:
            raise ValueError(f"Unknown summation {self.summation!r}; use one of {SUMMATIONS}.")
        if self.site_normalization not in SITE_NORMALIZATIONS:
            raise ValueError(f"Unknown site_normalization {self.site_normalization!r}; use one of "
                             f"{SITE_NORMALIZATIONS}.")
        if self.summation_sites is not None:
            start, stop = self.summation_sites
            if not 0 <= start < stop <= 1:
                raise ValueError(f"summation_sites must be shares 0 <= start < stop <= 1, got {start, stop}.")
        if not (isinstance(self.neuron_ratio, (int, float)) and math.isfinite(self.neuron_ratio)
                and self.neuron_ratio >= 0):
            raise ValueError(f"neuron_ratio must be a finite number >= 0, got {self.neuron_ratio!r}.")
        as_rule(self.fr_threshold)


@dataclass(frozen=True)
class ExecutionSettings:
    """How FSP runs, not what it computes.

    Attributes:
        batch_invariant: Run FSP on each sample of a batch alone, so that a batch's maps and
            state equal each image's alone bit for bit, on any model and device (the FSP-FR
            maps, whose one FR pass runs on the batch, within float rounding: 2e-7 of the map's
            scale on googlenet and regnet_y_1_6gf at 224 x 224). Batched passes
            (the default) round differently from one image's (oneDNN's CPU convolutions, cuDNN's
            algorithms), a unit whose CW sits at its threshold's rounding level can flip, and the
            flip propagates through later updates: in float32 most of torchvision's 80
            classifiers agree within 1e-6 of the map's scale, ``googlenet`` at 224 x 224 differs
            by 0.13 (``benchmarks/zoo.py``). 1.2-1.5 x the time of a batch of four on the CPU
            (``benchmarks/batch_invariance.py``).
    """

    batch_invariant: bool = False


_GROUP_TYPES = {"selection": SelectionSettings, "maps": MapSettings, "execution": ExecutionSettings}
_GROUPS = {group: tuple(f.name for f in fields(kind) if f.init) for group, kind in _GROUP_TYPES.items()}
"""The settings of each group of a :class:`FeedbackConfig`, by name."""
_SETTINGS = frozenset(name for names in _GROUPS.values() for name in names)


@dataclass(frozen=True)
class FeedbackConfig:
    """Everything the FSP -> FR pipeline can be told, in three groups, each validated once.

    Build one from its groups, or derive one from a preset with :meth:`replace`::

        >>> FeedbackConfig(SelectionSettings(stages=(Stage(1.0, 3),)))   # Alg. 2, 3 updates
        >>> PRESETS["default"].replace(threshold="zero", batch_invariant=True)

    Attributes:
        selection: How FSP selects its gates (:class:`SelectionSettings`).
        maps: Which maps are drawn from them (:class:`MapSettings`).
        execution: How FSP runs (:class:`ExecutionSettings`).
        fr_rule: The FSP-FR map's FR threshold as a rule, with the selection's edge dropping.
    """

    selection: SelectionSettings = SelectionSettings()
    maps: MapSettings = MapSettings()
    execution: ExecutionSettings = ExecutionSettings()
    fr_rule: SelectionRule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, kind in _GROUP_TYPES.items():
            if not isinstance(getattr(self, name), kind):
                raise TypeError(f"FeedbackConfig.{name} must be a {kind.__name__}, "
                                f"got {type(getattr(self, name)).__name__}.")
        if self.maps.evidence_weighted and not self.selection.contrastive:
            raise ValueError("evidence_weighted weights a contrastive map: set contrastive=True too.")
        object.__setattr__(self, "fr_rule", as_rule(self.maps.fr_threshold, self.selection.drop_edges))

    def replace(self, updates: Optional[int] = None, **changes: Any) -> FeedbackConfig:
        """The same configuration with the named settings changed, whatever their group.

        Args:
            updates: FSP's gate updates in all (:meth:`SelectionSettings.with_updates`).
            **changes: Fields of :class:`SelectionSettings`, :class:`MapSettings` or
                :class:`ExecutionSettings`, by name.

        Raises:
            ValueError: a name that is no setting, or an invalid value.
        """
        unknown = sorted(set(changes) - _SETTINGS)
        if unknown:
            raise ValueError(f"Unknown settings {unknown}; a FeedbackConfig has {dict(_GROUPS)}.")
        groups = {group: replace(getattr(self, group), **{k: v for k, v in changes.items() if k in names})
                  for group, names in _GROUPS.items() if any(k in names for k in changes)}
        config = replace(self, **groups)
        if updates is None:
            return config
        return replace(config, selection=config.selection.with_updates(updates))


PRESETS: Dict[str, FeedbackConfig] = {
    "paper": FeedbackConfig(),
    "released_code": FeedbackConfig(
        SelectionSettings(threshold=MeanRatio(1.0), drop_edges=True, stages=(Stage(7 / 15, 1), Stage(1.0, 1)),
                          linearize=False, gate_pools=False),
        MapSettings(summation="activation", summation_sites=(2 / 13, 9 / 13), site_normalization="max",
                    neuron_ratio=0.1, fr_threshold=MeanRatio(0.1)),
    ),
}
PRESETS["default"] = FeedbackConfig(
    SelectionSettings(threshold=MeanRatio(2.0, located_only=True), stages=(Stage(HEAD, 1),), linearize=False,
                      gate_pools=False, contrastive=True),
    MapSettings(summation="contribution", summation_sites=(0.5, 1.0), site_normalization="sum",
                evidence_weighted=True, neuron_ratio=0.1, fr_threshold=MeanRatio(0.1)),
)
"""Contrastive FSP, chosen on the tune splits of three test beds (EfficientNet-Lite0 on grids of
real photos, the cluttered VGG and the cluttered ResNet on their scenes; the held-out splits
report it): on a network with global average pooling a head unit's CW is the same at every
location, and a map is class-specific through the negative evidence that pruning for the target
alone removes (issue #21; docs/benchmarks.md has the search)."""

PRESETS["pruning"] = PRESETS["released_code"].replace(threshold=MeanRatio(2.0), summation_sites=(4 / 13, 11 / 13))
"""The default before issue #21: the released code's two stages with a unit kept while its CW is at
least twice its layer's mean positive CW, the Summation of spatial sites 4-10 of 13 (VGG16's
conv3_2 ... conv5_1). The most target-specific Summation map on the cluttered scenes' VGG; at
chance on networks with global average pooling."""

ConfigLike = Union[None, str, FeedbackConfig]
"""What every entry point's ``config`` argument takes: a preset name, a :class:`FeedbackConfig`,
or ``None`` for ``"default"``."""


def resolve_config(config: ConfigLike = None, updates: Optional[int] = None) -> FeedbackConfig:
    """The :class:`FeedbackConfig` of a ``config`` argument (:data:`ConfigLike`), with the
    per-call ``updates`` (FSP's gate updates in all; ``None`` keeps the configuration's).

    Raises:
        ValueError: an unknown preset or an invalid ``updates``.
        TypeError: something that is neither a name nor a FeedbackConfig.
    """
    if config is None or isinstance(config, str):
        name = "default" if config is None else config
        if name not in PRESETS:
            raise ValueError(f"Unknown configuration {name!r}; use one of {sorted(PRESETS)} or a FeedbackConfig.")
        config = PRESETS[name]
    elif not isinstance(config, FeedbackConfig):
        raise TypeError(f"config must be a preset name or a FeedbackConfig, got {type(config).__name__}.")
    return config if updates is None else config.replace(updates=updates)
