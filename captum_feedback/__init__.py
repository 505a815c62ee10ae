"""Feedback CNN attributions (Cao et al., TPAMI 2018) for Captum and any PyTorch model."""

from captum_feedback.config import PRESETS, FeedbackConfig, Stage
from captum_feedback.energy import energy_map, summation_energy_map, summation_fsp_fr_energy_map
from captum_feedback.layer import LayerFeedback, NeuronFeedback, rank_channels
from captum_feedback.pipeline import FeedbackEnergyMaps, FeedbackPipeline
from captum_feedback.pruning import FSP, FeedbackSelectivePruning
from captum_feedback.recovering import FR, FeedbackRecovering
from captum_feedback.selection import MeanRatio
from captum_feedback.state import FeedbackState

__version__ = "0.2.0"

__all__ = [
    "FR",
    "FSP",
    "PRESETS",
    "FeedbackConfig",
    "FeedbackEnergyMaps",
    "FeedbackPipeline",
    "FeedbackRecovering",
    "FeedbackSelectivePruning",
    "FeedbackState",
    "LayerFeedback",
    "MeanRatio",
    "NeuronFeedback",
    "Stage",
    "energy_map",
    "rank_channels",
    "summation_energy_map",
    "summation_fsp_fr_energy_map",
]
