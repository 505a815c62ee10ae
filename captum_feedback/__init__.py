"""Feedback CNN attributions (Cao et al., TPAMI 2018) for Captum and any PyTorch model.

The package: ``core/`` (the gating engine and the methods FSP, FR, LayerFeedback), ``wsol/``
(energy maps, Procedures 1 and 2, scores, every method's map), ``app/`` (the command, the demo,
figures), ``benchmark/`` (the paper's tables on data sets), ``data/`` and ``models/``.

The names below load their modules (and torch) on first use, so that ``captum-feedback --help``
starts without torch. The modules' earlier homes at the package root
(``captum_feedback.localization``, ...) still import, as the same module objects.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Any, List, Optional, Sequence

__version__ = "0.2.0"

_HOMES = {
    "captum_feedback.core.attribution": ("GatePolicyAttribution", "ungated_share"),
    "captum_feedback.core.config": ("PRESETS", "FeedbackConfig", "Stage"),
    "captum_feedback.core.engine": ("Gate", "GatePolicy", "Site"),
    "captum_feedback.wsol.energy": ("energy_map", "summation_energy_map", "summation_fsp_fr_energy_map"),
    "captum_feedback.core.layer": ("LayerFeedback", "NeuronFeedback", "rank_channels"),
    "captum_feedback.wsol.pipeline": ("FeedbackEnergyMaps", "FeedbackPipeline"),
    "captum_feedback.core.pruning": ("FSP", "FeedbackSelectivePruning"),
    "captum_feedback.core.recovering": ("FR", "FeedbackRecovering"),
    "captum_feedback.core.selection": ("MeanRatio",),
    "captum_feedback.core.state": ("FeedbackState",),
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


_EARLIER_HOMES = {
    "_compat": "core._compat",
    "attribution": "core.attribution",
    "config": "core.config",
    "engine": "core.engine",
    "layer": "core.layer",
    "pruning": "core.pruning",
    "recovering": "core.recovering",
    "selection": "core.selection",
    "sites": "core.sites",
    "state": "core.state",
    "energy": "wsol.energy",
    "pipeline": "wsol.pipeline",
    "localization": "wsol.localization",
    "segmentation": "wsol.segmentation",
    "metrics": "wsol.metrics",
    "methods": "wsol.methods",
    "cli": "app.cli",
    "commands": "app.commands",
    "demo": "app.demo",
    "visualization": "app.visualization",
    "photos": "data.photos",
    "classifiers": "models.classifiers",
}
"""Modules that moved into ``core/``, ``wsol/``, ``app/``, ``data/`` and ``models/``, by their
earlier names under the package root."""


class _EarlierHomes(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``captum_feedback.<earlier name>`` as the module at its new home."""

    def find_spec(self, name: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None) -> Any:
        prefix, _, short = name.rpartition(".")
        if prefix == __name__ and short in _EARLIER_HOMES:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec: Any) -> ModuleType:
        return importlib.import_module(f"{__name__}.{_EARLIER_HOMES[spec.name.rpartition('.')[2]]}")

    def exec_module(self, module: ModuleType) -> None:
        """The module ran at its new home."""


sys.meta_path.append(_EarlierHomes())
