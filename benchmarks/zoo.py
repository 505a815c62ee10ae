"""The models users bring, with random weights, through FSP and FR: what is gated, whether the
contract holds, whether the maps are degenerate, and how long it takes.

Three libraries (``--library``):

* ``torchvision``: every model of ``torchvision.models.list_models(module=torchvision.models)``,
  at its smallest input (64 x 64; 96 x 96 for Inception v3; 224 x 224 for the transformers,
  whose patch grids are fixed);
* ``timm`` (optional): one model per architecture family (timm's model module), the one with the
  fewest parameters among those whose input is at most 224 px, at that input;
* ``transformers`` (optional): small random configurations of Hugging Face's image classifiers
  (:data:`HF_MODELS`), at 64 x 64.

Each runs with a batch of two images:

* FSP (default configuration) and FR give finite, input-shaped attributions;
* no hook, no torch-function mode and no training flag is left, and the parameters, buffers,
  ``requires_grad`` and ``.grad`` are as they were;
* the batch's attributions equal those of each image alone, bit for bit, with
  ``batch_invariant=True``; the difference of the default's batched passes (relative to the
  attribution's scale) is reported beside it;
* under the paper's linearized zero-threshold rule the target score never falls (Sec. 3.3) and
  stays finite;
* the Summation Energy Map is finite and not zero;
* and it reports how the sites' activations lie (:class:`~captum_feedback.core.tokens.MapLayout`),
  the share of the gradient that passes no gate (``ungated_share``) and which degeneracies
  (:mod:`captum_feedback.core.diagnosis`) the default and the paper preset show.

::

    python benchmarks/zoo.py                         # every torchvision model: a table and zoo.json
    python benchmarks/zoo.py --models resnet18 vit_b_16
    python benchmarks/zoo.py --families --out benchmarks/results/zoo_families.json  # one per family
    python benchmarks/zoo.py --library timm          # one model per timm family: zoo_timm.json

``tests/test_zoo.py`` runs the same checks on a few small models of each family.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision
from torch import nn
from torch.nn.modules import module as module_hooks

from captum_feedback import FR, FSP, PRESETS, FeedbackConfig, summation_energy_map
from captum_feedback.core.attribution import model_scores, ungated_share
from captum_feedback.core.diagnosis import degeneracies
from captum_feedback.core.tokens import MapLayout
from captum_feedback.models.classifiers import recommended_layers

LIBRARIES = ("torchvision", "timm", "transformers")
FIXED_SIZE = ("vit_", "swin", "maxvit")
"""torchvision models whose input size is fixed by a patch grid or window size: they take 224 x 224."""
BATCH_TOLERANCE = 0.0
"""``batch_invariant=True`` runs each image alone: its maps must be equal, not close."""
TIMM_LARGEST_INPUT = 224
HF_SIZE = 64
"""The side of the ``transformers`` models' images (their configurations are made for it)."""


def _hf(model_class: str, config_class: str, **config: object) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        settings = dict(num_labels=10, image_size=HF_SIZE, **config)
        return getattr(transformers, model_class)(getattr(transformers, config_class)(**settings))

    return make


_HF_VIT = dict(num_hidden_layers=4, hidden_size=64, num_attention_heads=2, intermediate_size=128, patch_size=8)
HF_MODELS: Dict[str, Callable[[], nn.Module]] = {
    "ViTForImageClassification": _hf("ViTForImageClassification", "ViTConfig", **_HF_VIT),
    "DeiTForImageClassificationWithTeacher": _hf("DeiTForImageClassificationWithTeacher", "DeiTConfig", **_HF_VIT),
    "BeitForImageClassification": _hf("BeitForImageClassification", "BeitConfig", **_HF_VIT),
    "SwinForImageClassification": _hf("SwinForImageClassification", "SwinConfig", patch_size=4, embed_dim=32,
                                      depths=[2, 2], num_heads=[2, 4], window_size=4),
    "ConvNextForImageClassification": _hf("ConvNextForImageClassification", "ConvNextConfig",
                                          hidden_sizes=[16, 32, 64], depths=[1, 1, 1], num_stages=3),
    "ResNetForImageClassification": _hf("ResNetForImageClassification", "ResNetConfig", embedding_size=16,
                                        hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic"),
}
"""Hugging Face image classifiers in small random configurations, by class name."""


TORCHVISION_FAMILIES = {
    "alexnet": "alexnet", "convnext": "convnext_tiny", "densenet": "densenet121", "efficientnet": "efficientnet_b0",
    "googlenet": "googlenet", "inception": "inception_v3", "maxvit": "maxvit_t", "mnasnet": "mnasnet0_5",
    "mobilenetv2": "mobilenet_v2", "mobilenetv3": "mobilenet_v3_small", "regnet": "regnet_x_400mf",
    "resnet": "resnet18", "shufflenetv2": "shufflenet_v2_x0_5", "squeezenet": "squeezenet1_1",
    "swin_transformer": "swin_t", "vgg": "vgg11", "vision_transformer": "vit_b_32",
}
"""``{family: model}``: per torchvision model module, its smallest classifier."""


def timm_families(largest: int = TIMM_LARGEST_INPUT) -> Dict[str, str]:
    """``{family: model}``: per timm model module, the model with the fewest parameters (counted
    on the meta device) among those whose default input is at most ``largest`` px."""
    import timm
    from timm.models import get_pretrained_cfg

    best: Dict[str, Tuple[int, str]] = {}
    for name in timm.list_models():
        cfg = get_pretrained_cfg(name)
        size = getattr(cfg, "input_size", None) or (3, 224, 224)
        if max(size[1:]) > largest:
            continue
        family = _timm_family(name)
        try:
            with torch.device("meta"):
                count = sum(p.numel() for p in timm.create_model(name, pretrained=False).parameters())
        except Exception:  # noqa: BLE001 - a model that does not build is left out
            continue
        if family not in best or count < best[family][0]:
            best[family] = (count, name)
    return {family: name for family, (_, name) in sorted(best.items())}


def _timm_family(name: str) -> str:
    from timm.models._registry import _model_to_module

    return _model_to_module[name]


def model_names(library: str, families: bool = False) -> List[str]:
    """Every model the zoo runs for ``library`` (torchvision's: one per family with ``families``)."""
    if library == "torchvision":
        return list(TORCHVISION_FAMILIES.values()) if families else torchvision.models.list_models(
            module=torchvision.models)
    if library == "timm":
        return list(timm_families().values())
    return list(HF_MODELS)


def input_size(name: str, library: str = "torchvision") -> int:
    if library == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        return (getattr(cfg, "input_size", None) or (3, 224, 224))[-1]
    if library == "transformers":
        return HF_SIZE
    if name.startswith(FIXED_SIZE):
        return 224
    return 96 if name == "inception_v3" else 64  # Inception v3 needs at least 75 x 75


def build(name: str, library: str = "torchvision") -> nn.Module:
    """The model with random weights, made informative: torchvision and timm start ViT's head at
    zero (every logit 0, every gradient 0) and ConvNeXt's layer scales at 1e-6 (every block
    almost skipped); those start at N(0, 0.02) and 1 here."""
    torch.manual_seed(0)
    if library == "timm":
        import timm

        model = timm.create_model(name, pretrained=False)
    elif library == "transformers":
        model = HF_MODELS[name]()
    else:
        kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    return informative(model.eval())


def informative(model: nn.Module) -> nn.Module:
    """Zero linear weights drawn from N(0, 0.02); zero normalization weights (the last norm of
    a residual branch that timm starts at zero, SwinV2's post-norms) and layer scales
    (``layer_scale``, ``gamma``, and ``scale`` vectors under 1e-3) set to 1."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.02)
            norm = isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
            if norm and module.weight is not None and not module.weight.any():
                module.weight.fill_(1.0)
        for parameter_name, parameter in model.named_parameters():
            last = parameter_name.rsplit(".", 1)[-1]
            tiny = parameter.dim() == 1 and 0 < parameter.abs().max() < 1e-3
            if last.endswith("layer_scale") or (tiny and ("gamma" in last or "scale" in parameter_name)):
                parameter.fill_(1.0)
    return model


def _snapshot(model: nn.Module) -> List[torch.Tensor]:
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def _leftovers(model: nn.Module) -> List[str]:
    found = [f"hook on {name or 'model'}" for name, m in model.named_modules()
             if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]
    if torch._C._len_torch_function_stack():
        found.append("a torch-function mode")
    if module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks:
        found.append("a global module hook")
    return found


def check(model: nn.Module, size: int, seed: int = 0) -> Dict[str, object]:
    """The contract for one model; every field is a finding (see the module's description)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size, size, generator=generator)
    with torch.no_grad():
        target = model_scores(model(x)).argmax(1).tolist()
    before, flags = _snapshot(model), [(p.requires_grad, p.grad) for p in model.parameters()]
    start = time.perf_counter()
    fsp = FSP(model)
    state = fsp.select(x, target)
    fsp_seconds = time.perf_counter() - start
    summation = summation_energy_map(state)
    fr = FR(model).attribute(x, target)
    batch = state.attributions[0]
    invariant = PRESETS["default"].replace(batch_invariant=True)
    difference = {name: batch_vs_alone(fsp, x, target, config) for name, config in
                  (("default", PRESETS["default"]), ("batch_invariant", invariant))}
    paper = fsp.select(x, target, config="paper", updates=3, keep_cws=False)
    linearized = paper.target_scores
    falls = (linearized[1:] - linearized[:-1] < -1e-4 * linearized.abs().amax(0).clamp_min(1)).any() or \
        not torch.isfinite(linearized).all()
    share = ungated_share(model, x, target)
    after = _snapshot(model)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, after)) and not model.training and all(
        (p.requires_grad, p.grad) == flag for p, flag in zip(model.parameters(), flags))
    layout = MapLayout.of((x,))
    return {
        "recommended layers": recommended_names(model, size),
        "sites": len(state.gates),
        "site kinds": _counts(state.site_kinds.values()),
        "layouts": _counts(str(layout.describe(g.shape)) for g in state.gates.values()),
        "finite": bool(torch.isfinite(batch).all() and torch.isfinite(fr).all()),
        "shapes": batch.shape == x.shape == fr.shape,
        "summation map": bool(torch.isfinite(summation).all() and summation.shape == (2, 1, size, size)
                              and summation.sum() > 0),
        "left over": _leftovers(model),
        "state unchanged": bool(unchanged),
        "batch vs alone": difference["batch_invariant"],
        "batch vs alone (default)": difference["default"],
        "score never falls (linearized)": not bool(falls),
        "ungated share": round(float(share.mean()), 3),
        "degenerate (default)": _reasons(state),
        "degenerate (paper)": _reasons(paper),
        "fsp seconds": round(fsp_seconds, 2),
    }


def recommended_names(model: nn.Module, size: int) -> List[str]:
    """The module names of ``recommended_layers(model)`` (FSP-FR's, Grad-CAM's) at ``size``."""
    names = {module: name for name, module in model.named_modules()}
    return [names[layer] for layer in recommended_layers(model, size)]


def _counts(values) -> Dict[str, int]:
    values = list(values)
    return dict(sorted((value, values.count(value)) for value in set(values)))


def _reasons(state) -> List[str]:
    return [reason for reason, holds in degeneracies(state).items() if holds.any()]


def batch_vs_alone(fsp: FSP, x: torch.Tensor, target: List[int], config: FeedbackConfig) -> float:
    """The largest difference between a batch's map and each image's alone, over the map's scale.
    On one thread: with several, some backward kernels (timm's hardcorenas and rexnet, torchvision's
    regnet) vary by 1e-7 of the map from one call to the next, Captum's Saliency too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = fsp.attribute(x, target, config=config)
        alone = torch.cat([fsp.attribute(x[i:i + 1], target[i], config=config) for i in range(len(x))])
    finally:
        torch.set_num_threads(threads)
    return float((batch - alone).abs().amax() / batch.abs().amax().clamp_min(1e-30))


def passes(finding: Dict[str, object]) -> bool:
    return bool(finding["finite"] and finding["shapes"] and not finding["left over"] and finding["state unchanged"]
                and finding["batch vs alone"] <= BATCH_TOLERANCE and finding["score never falls (linearized)"]
                and finding["summation map"])


def run(names: Sequence[str], out: Optional[Path], library: str = "torchvision") -> Dict[str, Dict[str, object]]:
    findings: Dict[str, Dict[str, object]] = {}
    for name in names:
        start = time.perf_counter()
        try:
            finding = check(build(name, library), input_size(name, library))
        except Exception as error:  # noqa: BLE001 - a model that fails is a finding
            finding = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
        finding["seconds"] = round(time.perf_counter() - start, 1)
        finding["input"] = input_size(name, library)
        if library == "timm":
            finding["family"] = _timm_family(name)
        findings[name] = finding
        print(name, "ok" if "error" not in finding and passes(finding) else "FAIL", finding, flush=True)
        if out:
            out.write_text(json.dumps(findings, indent=1))
    return findings


def markdown(findings: Dict[str, Dict[str, object]]) -> str:
    lines = ["| model | input | sites (activation / pool) | layouts | contract | batch vs alone (batch_invariant) | "
             "batched by default | ungated share | degenerate (default; paper) | "
             "recommended layers (FSP-FR; Grad-CAM) | FSP s | all checks s |",
             "|---|---:|---|---|---|---:|---:|---:|---|---|---:|---:|"]
    for name, f in findings.items():
        label = f"{f['family']}: {name}" if "family" in f else name
        if "error" in f:
            lines.append(f"| {label} | {f['input']} | | | error: {f['error']} | | | | | | | {f['seconds']} |")
            continue
        kinds = f["site kinds"]
        failed = [k for k in ("finite", "shapes", "state unchanged", "score never falls (linearized)",
                              "summation map") if not f[k]]
        failed += ["left over: " + ", ".join(f["left over"])] if f["left over"] else []
        failed += ["batch"] if f["batch vs alone"] > BATCH_TOLERANCE else []
        verdict = "holds" if not failed else "fails: " + "; ".join(failed)
        layouts = ", ".join(f"{kind} {count}" for kind, count in f["layouts"].items() if kind != "None")
        degenerate = f"{', '.join(f['degenerate (default)']) or '-'}; {', '.join(f['degenerate (paper)']) or '-'}"
        lines.append(f"| {label} | {f['input']} | {f['sites']} ({kinds.get('activation', 0)} / "
                     f"{kinds.get('pool', 0)}) | {layouts or '-'} | {verdict} | {f['batch vs alone']:.1e} | "
                     f"{f['batch vs alone (default)']:.1e} | {f['ungated share']:.2f} | {degenerate} | "
                     f"{'; '.join(f'`{n}`' for n in f.get('recommended layers', []))} | {f['fsp seconds']} | "
                     f"{f['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", choices=LIBRARIES, default="torchvision")
    parser.add_argument("--models", nargs="+", help="default: every model of the library (see above)")
    parser.add_argument("--families", action="store_true", help="torchvision: its smallest model per family")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/zoo[_LIBRARY].json")
    args = parser.parse_args()
    suffix = "" if args.library == "torchvision" else f"_{args.library}"
    out = args.out or Path(f"benchmarks/results/zoo{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    findings = run(args.models or model_names(args.library, args.families), out, args.library)
    print(markdown(findings))
    print(f"{sum('error' not in f and passes(f) for f in findings.values())} of {len(findings)} models hold "
          f"the contract; {math.fsum(f['seconds'] for f in findings.values()):.0f} s in all")


if __name__ == "__main__":
    main()
