"""Data with ground truth for scoring localization and segmentation."""

from captum_feedback.data.cluttered import ClutteredScenes, Scene, SceneBatch, collate
from captum_feedback.data.fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from captum_feedback.data.fashion_mnist import load_fashion_mnist, read_idx

__all__ = ["ClutteredScenes", "FASHION_MNIST_CLASSES", "Scene", "SceneBatch", "collate", "load_fashion_mnist",
           "read_idx"]
