"""Every torchvision classifier (weights=None) through FSP and FR: what is gated, whether the
contract holds, and how long it takes.

For each model of ``torchvision.models.list_models(module=torchvision.models)``, at its
smallest input (64 x 64; 96 x 96 for Inception v3; 224 x 224 for the transformers, whose patch
grids are fixed), with a
batch of two images:

* FSP (default configuration) and FR give finite, input-shaped attributions;
* no hook, no torch-function mode and no training flag is left, and the parameters, buffers,
  ``requires_grad`` and ``.grad`` are as they were;
* the batch's attributions equal those of each image alone, bit for bit, with
  ``batch_invariant=True``; the difference of the default's batched passes (relative to the
  attribution's scale) is reported beside it;
* under the paper's linearized zero-threshold rule the target score never falls (Sec. 3.3).

::

    python benchmarks/zoo.py                         # every model: a markdown table and zoo.json
    python benchmarks/zoo.py --models resnet18 vit_b_16

``tests/test_zoo.py`` runs the same checks on a few small models of each family.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torchvision
from torch import nn

from captum_feedback import FR, FSP, PRESETS, FeedbackConfig

FIXED_SIZE = ("vit_", "swin", "maxvit")
"""Models whose input size is fixed by a patch grid or window size: they take 224 x 224."""
BATCH_TOLERANCE = 0.0
"""``batch_invariant=True`` runs each image alone: its maps must be equal, not close."""


def input_size(name: str) -> int:
    if name.startswith(FIXED_SIZE):
        return 224
    return 96 if name == "inception_v3" else 64  # Inception v3 needs at least 75 x 75


def build(name: str) -> nn.Module:
    """The model with random weights, made informative: torchvision starts ViT's head at zero
    (every logit 0, every gradient 0) and ConvNeXt's layer scales at 1e-6 (every block almost
    skipped); those start at N(0, 0.02) and 1 here."""
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.any():
                nn.init.normal_(module.weight, std=0.02)
        for parameter_name, parameter in model.named_parameters():
            if parameter_name.endswith("layer_scale"):
                parameter.fill_(1.0)
    return model


def _snapshot(model: nn.Module) -> List[torch.Tensor]:
    return [t.detach().clone() for t in list(model.parameters()) + list(model.buffers())]


def _leftovers(model: nn.Module) -> List[str]:
    found = [f"hook on {name or 'model'}" for name, m in model.named_modules()
             if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks]
    if torch._C._len_torch_function_stack():
        found.append("a torch-function mode")
    return found


def check(model: nn.Module, size: int, seed: int = 0) -> Dict[str, object]:
    """The contract for one model; every field is a finding (see the module's description)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, size, size, generator=generator)
    with torch.no_grad():
        target = model(x).argmax(1).tolist()
    before, flags = _snapshot(model), [(p.requires_grad, p.grad) for p in model.parameters()]
    start = time.perf_counter()
    fsp = FSP(model)
    state = fsp.select(x, target, keep_cws=False)
    fsp_seconds = time.perf_counter() - start
    fr = FR(model).attribute(x, target)
    batch = state.attributions[0]
    invariant = replace(PRESETS["default"], batch_invariant=True)
    difference = {name: batch_vs_alone(fsp, x, target, config) for name, config in
                  (("default", PRESETS["default"]), ("batch_invariant", invariant))}
    linearized = fsp.select(x, target, config="paper", iterations=3, keep_cws=False).target_scores
    falls = (linearized[1:] - linearized[:-1] < -1e-4 * linearized.abs().amax(0).clamp_min(1)).any()
    after = _snapshot(model)
    unchanged = all(torch.equal(a, b) for a, b in zip(before, after)) and not model.training and all(
        (p.requires_grad, p.grad) == flag for p, flag in zip(model.parameters(), flags))
    return {
        "sites": len(state.gates),
        "site kinds": dict(sorted({k: list(state.site_kinds.values()).count(k)
                                   for k in set(state.site_kinds.values())}.items())),
        "finite": bool(torch.isfinite(batch).all() and torch.isfinite(fr).all()),
        "shapes": batch.shape == x.shape == fr.shape,
        "left over": _leftovers(model),
        "state unchanged": bool(unchanged),
        "batch vs alone": difference["batch_invariant"],
        "batch vs alone (default)": difference["default"],
        "score never falls (linearized)": not bool(falls),
        "fsp seconds": round(fsp_seconds, 2),
    }


def batch_vs_alone(fsp: FSP, x: torch.Tensor, target: List[int], config: FeedbackConfig) -> float:
    """The largest difference between a batch's map and each image's alone, over the map's scale."""
    batch = fsp.attribute(x, target, config=config)
    alone = torch.cat([fsp.attribute(x[i:i + 1], target[i], config=config) for i in range(len(x))])
    return float((batch - alone).abs().amax() / batch.abs().amax().clamp_min(1e-30))


def passes(finding: Dict[str, object]) -> bool:
    return bool(finding["finite"] and finding["shapes"] and not finding["left over"] and finding["state unchanged"]
                and finding["batch vs alone"] <= BATCH_TOLERANCE and finding["score never falls (linearized)"])


def run(names: Sequence[str], out: Optional[Path]) -> Dict[str, Dict[str, object]]:
    findings: Dict[str, Dict[str, object]] = {}
    for name in names:
        start = time.perf_counter()
        try:
            finding = check(build(name), input_size(name))
        except Exception as error:  # noqa: BLE001 - a model that fails is a finding
            finding = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
        finding["seconds"] = round(time.perf_counter() - start, 1)
        findings[name] = finding
        print(name, "ok" if "error" not in finding and passes(finding) else "FAIL", finding, flush=True)
        if out:
            out.write_text(json.dumps(findings, indent=1))
    return findings


def markdown(findings: Dict[str, Dict[str, object]]) -> str:
    lines = ["| model | input | sites (activation / pool) | contract | batch vs alone (batch_invariant) | "
             "batched by default | FSP s | all checks s |", "|---|---:|---|---|---:|---:|---:|---:|"]
    for name, f in findings.items():
        if "error" in f:
            lines.append(f"| {name} | {input_size(name)} | | error: {f['error']} | | | | {f['seconds']} |")
            continue
        kinds = f["site kinds"]
        failed = [k for k in ("finite", "shapes", "state unchanged", "score never falls (linearized)") if not f[k]]
        failed += ["left over: " + ", ".join(f["left over"])] if f["left over"] else []
        failed += ["batch"] if f["batch vs alone"] > BATCH_TOLERANCE else []
        verdict = "holds" if not failed else "fails: " + "; ".join(failed)
        lines.append(f"| {name} | {input_size(name)} | {f['sites']} ({kinds.get('activation', 0)} / "
                     f"{kinds.get('pool', 0)}) | {verdict} | {f['batch vs alone']:.1e} | "
                     f"{f['batch vs alone (default)']:.1e} | {f['fsp seconds']} | "
                     f"{f['seconds']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=torchvision.models.list_models(module=torchvision.models))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/zoo.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    findings = run(args.models, args.out)
    print(markdown(findings))
    print(f"{sum('error' not in f and passes(f) for f in findings.values())} of {len(findings)} models hold "
          f"the contract; {math.fsum(f['seconds'] for f in findings.values()):.0f} s in all")


if __name__ == "__main__":
    main()
