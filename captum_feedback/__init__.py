"""Feedback CNN attributions (Cao et al., TPAMI 2018) for Captum and any PyTorch model."""

from captum_feedback.energy import (
    FeedbackEnergyMaps,
    energy_map,
    feedback_energy_maps,
    summation_energy_map,
    summation_fsp_fr_energy_map,
)
from captum_feedback.layer import LayerFeedback, rank_channels
from captum_feedback.pruning import FSP, FeedbackSelectivePruning
from captum_feedback.recovering import FR, FeedbackRecovering
from captum_feedback.state import FeedbackState

__version__ = "0.1.0"

__all__ = [
    "FSP",
    "FR",
    "FeedbackEnergyMaps",
    "FeedbackRecovering",
    "FeedbackSelectivePruning",
    "FeedbackState",
    "LayerFeedback",
    "energy_map",
    "feedback_energy_maps",
    "rank_channels",
    "summation_energy_map",
    "summation_fsp_fr_energy_map",
]
