"""One typed configuration for the whole FSP -> FR pipeline, and its named presets.

A :class:`FeedbackConfig` says how FSP selects gates (threshold rule, stages, linearization,
which sites get gates), which Summation Energy Map is drawn from the result (Sec. 4.3), and
how the FSP-FR map picks and recovers hidden neurons (Procedure 1, steps 5-6). Every entry
point -- :class:`~captum_feedback.FSP`, the energy maps, Procedures 1 and 2, the CLI and the
benchmarks -- takes one, so that no option is dropped on the way. Presets:

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
* ``"default"``: the released code's rules with two settings chosen by measurement on
  held-out scenes (``PRESETS["default"]``; README, "Which configuration is the default").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Dict, Optional, Tuple, Union

from captum_feedback.core.selection import MeanRatio, SelectionRule, Threshold, as_rule

SUMMATIONS = ("cw", "activation", "contribution")
"""What the Summation Energy Map sums per kept unit: the CW ``z |alpha|`` (the paper's text),
the gated activation ``z x`` (the released code) or the contribution ``z alpha x`` (the terms of
Eq. 6, whose sum over a site is the target score)."""


@dataclass(frozen=True)
class Stage:
    """One stage of FSP: ``updates`` gate updates of the top ``sites`` share of the gate sites.

    Sites are counted in execution order from the output end, so ``Stage(0.47, 1)`` updates the
    upper 47% of the sites once, whatever the model (``FSP_SumEnergy.m`` updates 7 of VGG16's 15
    ReLUs, fc8 down to conv4_2, then all of them).
    """

    sites: float = 1.0
    updates: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.sites, (int, float)) and 0 < self.sites <= 1):
            raise ValueError(f"Stage.sites is a share of the gate sites in (0, 1], got {self.sites!r}.")
        if isinstance(self.updates, bool) or not isinstance(self.updates, int) or self.updates < 1:
            raise ValueError(f"Stage.updates must be an integer >= 1, got {self.updates!r}.")

    def count(self, n_sites: int) -> int:
        """How many of ``n_sites`` sites, from the top, this stage updates (at least one)."""
        return max(1, min(n_sites, round(self.sites * n_sites)))


SiteRange = Tuple[float, float]
"""``(start, stop)`` shares of the spatial activation sites, counted from the input."""


@dataclass(frozen=True)
class FeedbackConfig:
    """Everything the FSP -> FR pipeline can be told, validated once.

    Attributes:
        threshold: FSP's threshold (:data:`~captum_feedback.core.selection.Threshold`).
        drop_edges: Close the outermost row and column of every spatial map (released code).
        stages: FSP's stages, run in order (:class:`Stage`); one stage of 5 updates is Alg. 2.
        linearize: Freeze ReLU states and max-pool choices after the first pass (Sec. 3.3).
        gate_pools: Give max-pool outputs gates too (Sec. 3.1); the released code gates ReLUs only.
        summation: What the Summation Energy Map sums (:data:`SUMMATIONS`).
        summation_sites: The sites it sums, ``None`` for every spatial activation site.
        normalize_sites: Divide each site's map by its maximum before summing (released code).
        neuron_ratio: The FSP-FR map's neurons: those of the layer whose CW is at least this
            share of the layer's mean positive CW (``mean_thd.m``); 0 keeps every neuron with a
            positive contribution.
        fr_threshold: The threshold of the FR pass of the FSP-FR map.
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

    threshold: Threshold = "zero"
    drop_edges: bool = False
    stages: Tuple[Stage, ...] = (Stage(1.0, 5),)
    linearize: bool = True
    gate_pools: bool = True
    summation: str = "cw"
    summation_sites: Optional[SiteRange] = None
    normalize_sites: bool = False
    neuron_ratio: float = 0.0
    fr_threshold: Threshold = "zero"
    batch_invariant: bool = False
    rule: SelectionRule = field(init=False, repr=False, compare=False)
    fr_rule: SelectionRule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rule", as_rule(self.threshold, self.drop_edges))
        object.__setattr__(self, "fr_rule", as_rule(self.fr_threshold, self.drop_edges))
        stages = tuple(self.stages)
        if not stages or not all(isinstance(s, Stage) for s in stages):
            raise ValueError(f"stages must be a non-empty sequence of Stage, got {self.stages!r}.")
        object.__setattr__(self, "stages", stages)
        if self.summation not in SUMMATIONS:
            raise ValueError(f"Unknown summation {self.summation!r}; use one of {SUMMATIONS}.")
        if self.summation_sites is not None:
            start, stop = self.summation_sites
            if not 0 <= start < stop <= 1:
                raise ValueError(f"summation_sites must be shares 0 <= start < stop <= 1, got {start, stop}.")
        if not (isinstance(self.neuron_ratio, (int, float)) and math.isfinite(self.neuron_ratio)
                and self.neuron_ratio >= 0):
            raise ValueError(f"neuron_ratio must be a finite number >= 0, got {self.neuron_ratio!r}.")

    @property
    def iterations(self) -> int:
        """Total number of gate updates over all stages."""
        return sum(stage.updates for stage in self.stages)

    @property
    def guarantees_ascent(self) -> bool:
        """Whether every update provably keeps the target score from falling (Sec. 4.1):
        linearized with the zero threshold and no edge dropping. Stages keep it: updating some
        sites from one backward pass is Algorithm 2's sweep over those sites alone."""
        return self.linearize and self.rule.is_zero and not self.drop_edges

    def with_updates(self, iterations: int) -> FeedbackConfig:
        """The same configuration with ``iterations`` updates in its last stage."""
        check_iterations(iterations)
        return replace(self, stages=self.stages[:-1] + (replace(self.stages[-1], updates=iterations),))


def check_iterations(iterations: int) -> None:
    """Raises ``ValueError`` unless ``iterations`` is an integer >= 1."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}.")


PRESETS: Dict[str, FeedbackConfig] = {
    "paper": FeedbackConfig(),
    "released_code": FeedbackConfig(
        threshold=MeanRatio(1.0), drop_edges=True, stages=(Stage(7 / 15, 1), Stage(1.0, 1)),
        linearize=False, gate_pools=False, summation="activation", summation_sites=(2 / 13, 9 / 13),
        normalize_sites=True, neuron_ratio=0.1, fr_threshold=MeanRatio(0.1),
    ),
}
PRESETS["default"] = replace(PRESETS["released_code"], threshold=MeanRatio(2.0), summation_sites=(4 / 13, 11 / 13))
"""The released code's rules with two settings chosen on held-out scenes (``--seed 1`` of the
cluttered test set, not the benchmark's): a unit stays open while its CW is at least twice its
layer's mean positive CW, and the Summation Energy Map sums spatial ReLU sites 4-10 of 13
(conv3_2 ... conv5_1 on VGG16) instead of 2-8."""

ConfigLike = Union[None, str, FeedbackConfig]


def resolve_config(
    config: ConfigLike = None,
    iterations: Optional[int] = None,
    threshold: Optional[Threshold] = None,
    linearize: Optional[bool] = None,
) -> FeedbackConfig:
    """The validated configuration of one call: a preset name or a :class:`FeedbackConfig`
    (``None``: ``"default"``), with the fields the caller set explicitly replaced.

    Raises:
        ValueError: an unknown preset, or an invalid field.
    """
    if config is None or isinstance(config, str):
        name = "default" if config is None else config
        if name not in PRESETS:
            raise ValueError(f"Unknown configuration {name!r}; use one of {sorted(PRESETS)} or a FeedbackConfig.")
        config = PRESETS[name]
    elif not isinstance(config, FeedbackConfig):
        raise TypeError(f"config must be a preset name or a FeedbackConfig, got {type(config).__name__}.")
    changes = {k: v for k, v in (("threshold", threshold), ("linearize", linearize)) if v is not None}
    config = replace(config, **changes) if changes else config
    return config.with_updates(iterations) if iterations is not None else config
