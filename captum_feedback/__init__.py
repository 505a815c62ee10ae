"""Feedback CNN attributions (Cao et al., TPAMI 2018) for Captum and any PyTorch model.

The package: ``core/`` (the gating engine and the methods FSP, FR, LayerFeedback), ``wsol/``
(energy maps, Procedures 1 and 2, scores), ``compare/`` (every method's map, Captum's beside
the package's), ``app/`` (the command, the demo, figures), ``evaluation/`` (the paper's tables
on data sets), ``data/`` and ``models/``.

The names below load their modules (and torch) on first use, so that ``captum-feedback --help``
starts without torch.
"""

from __future__ import annotations

import importlib
from typing import Any, List

__version__ = "0.4.0"

_HOMES = {
    "captum_feedback.core.allocator": ("keep_freed_memory",),
    "captum_feedback.core.attribution": ("GatePolicyAttribution", "ungated_share"),
    "captum_feedback.core.config": ("PRESETS", "ExecutionSettings", "FeedbackConfig", "MapSettings",
                                    "SelectionSettings", "Stage"),
    "captum_feedback.core.diagnosis": ("FeedbackDegenerateWarning", "degeneracies"),
    "captum_feedback.core.engine": ("Gate", "GatePolicy", "Site"),
    "captum_feedback.wsol.energy": ("energy_map", "summation_energy_map", "summation_fsp_fr_energy_map"),
    "captum_feedback.core.layer": ("LayerFeedback", "NeuronFeedback", "rank_channels"),
    "captum_feedback.wsol.pipeline": ("FeedbackEnergyMaps", "FeedbackPipeline"),
    "captum_feedback.core.pruning": ("FSP", "FeedbackSelectivePruning"),
    "captum_feedback.core.recovering": ("FR", "FeedbackRecovering"),
    "captum_feedback.core.selection": ("Computed", "Constant", "MeanRatio", "Zero"),
    "captum_feedback.core.state": ("FeedbackState",),
    "captum_feedback.core.tokens": ("MapLayout",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = sorted(_HOME_OF)

def __getattr__(name: str) -> Any:
    if name not in _HOME_OF:
        raise AttributeError(f"module 'captum_feedback' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))

