"""Every method the package compares, in one vocabulary: its name (the key of maps, tables and
``summary.json``), the command line's spelling, its family and what it is. The CLI, the demo,
:class:`~captum_feedback.compare.methods.MethodMaps` and the benchmarks all read this table (it
imports nothing heavy, so that ``captum-feedback --help`` stays fast)."""

from __future__ import annotations

from typing import NamedTuple, Tuple


class Method(NamedTuple):
    """One method: ``name``, ``slug`` (the CLI's spelling), ``family`` and ``title``."""

    name: str
    slug: str
    family: str
    title: str


REGISTRY: Tuple[Method, ...] = (
    Method("FSP", "fsp", "pipeline", "FSP's input gradient as an energy map (Sec. 3.4.1)"),
    Method("FSP Summation", "summation", "pipeline", "the Summation Energy Map of FSP's sites (Sec. 4.3)"),
    Method("FSP-FR", "fsp-fr", "pipeline", "FR from the middle layer's neurons FSP kept (Proc. 1, step 6)"),
    Method("Summation-FSP-FR", "summation-fsp-fr", "pipeline", "the two maps above added (Proc. 2, step 4)"),
    Method("FR", "fr", "feedback", "Feedback Recovering from the class score (Sec. 3.5)"),
    Method("Summation, no FSP", "summation-no-fsp", "ablation", "the Summation Energy Map with every gate open"),
    Method("Summation abs(gradient), no FSP", "summation-abs-gradient", "ablation",
           "the summed sites' |gradient|, every gate open"),
    Method("Summation gradient x activation, no FSP", "summation-gradient-x-activation", "ablation",
           "the summed sites' gradient x activation, every gate open"),
    Method("Saliency", "saliency", "captum", "Captum's Saliency (|gradient|)"),
    Method("IntegratedGradients", "integrated-gradients", "captum", "Captum's Integrated Gradients"),
    Method("GuidedBackprop", "guided-backprop", "captum", "Captum's Guided Backprop"),
    Method("Deconvolution", "deconvolution", "captum", "Captum's Deconvolution"),
    Method("GuidedGradCam", "guided-grad-cam", "captum", "Captum's Guided Grad-CAM"),
    Method("LayerGradCam", "grad-cam", "captum", "Captum's Grad-CAM at the last layer, upsampled"),
    Method("InputXGradient", "input-x-gradient", "captum", "Captum's Input x Gradient"),
    Method("DeepLift", "deeplift", "captum", "Captum's DeepLift"),
    Method("LRP", "lrp", "captum", "Captum's LRP"),
    Method("Center", "center", "baseline", "a Gaussian at the image center, the same for every image"),
    Method("FSP two-stage (Procedure 1)", "procedure-1", "boxes", "Procedure 1's boxes (localization only)"),
)


def names(*families: str) -> Tuple[str, ...]:
    """The names of the methods of these families (all with maps when none is given)."""
    return tuple(m.name for m in REGISTRY if (m.family in families if families else m.family != "boxes"))


def method_name(spelling: str) -> str:
    """A method's name from its name or its CLI spelling (case-insensitive).

    Raises:
        ValueError: no method is spelled so.
    """
    for method in REGISTRY:
        if spelling.lower() in (method.name.lower(), method.slug):
            return method.name
    raise ValueError(f"Unknown method {spelling!r}; choose from {', '.join(m.slug for m in REGISTRY)} "
                     "(or their names).")


TASK_DEFAULTS = {"pointing": ("FSP Summation", "LayerGradCam", "Saliency", "Center"),
                 "localization": ("FSP two-stage (Procedure 1)", "FSP Summation", "LayerGradCam"),
                 "segmentation": ("Summation-FSP-FR", "LayerGradCam"),
                 "grid-pointing": ("FSP Summation", "Summation, no FSP", "LayerGradCam", "IntegratedGradients",
                                   "InputXGradient", "Saliency", "Center")}
"""The methods each ``captum-feedback benchmark`` task runs unless told otherwise."""
