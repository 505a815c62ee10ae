"""Models that ship with their weights: the embedded default model, EfficientNet-Lite0."""

from captum_feedback.models.efficientnet_lite import (
    EfficientNetLite,
    class_index,
    efficientnet_lite0,
    imagenet_classes,
    preprocess,
    to_display,
)

__all__ = ["EfficientNetLite", "class_index", "efficientnet_lite0", "imagenet_classes", "preprocess", "to_display"]
