"""The paper's claims, each measured on this project's data, with a verdict: ``docs/claims.md``.

One row per claim of Cao et al. (TPAMI 2018): the ascent and convergence of FSP (Sec. 4.1,
Figs. 6-7), FSP's class specificity where FR has none (Fig. 4), coverage (Figs. 11-12), pointing
(Table 2), localization (Table 1, Procedure 1) and segmentation (Table 3, Procedure 2), and what
the feedback selection adds over the same summation without it. The map claims are read from a
run of ``benchmarks/quality.py`` on the cluttered scenes (run here, or given with
``--quality-json``), with 95% bootstrap intervals over scenes; the ascent and convergence claims
are measured here, on cluttered items and on the bundled photos with EfficientNet-Lite0.

A verdict compares intervals: "reproduced" when FSP's interval lies beyond every compared
method's, "partly" when it beats some, "not reproduced" otherwise; the paper's absolute numbers
need VOC07, VOC12 and ILSVRC, which do not ship offline ("not measurable here").

Usage::

    python benchmarks/claims.py                      # 300 scenes, writes docs/claims.md
    python benchmarks/claims.py --quality-json benchmarks/results/quality/quality.json
    python benchmarks/claims.py --quick --out /tmp/claims.md   # a smoke run of every step
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

from captum_feedback import FSP
from captum_feedback.data import ClutteredScenes
from captum_feedback.data.photos import bundled_photos
from captum_feedback.models import efficientnet_lite0, preprocess
from captum_feedback.models.cluttered_vgg import cluttered_vgg

sys.path.insert(0, str(Path(__file__).parent))
import quality  # noqa: E402

METHODS = ("FSP", "FSP Summation", "FSP-FR", "Summation-FSP-FR", "FR", "Summation, no FSP",
           "Summation abs(gradient), no FSP", "Summation gradient x activation, no FSP", "Saliency",
           "GuidedBackprop", "IntegratedGradients", "LayerGradCam")
CONFIGS = ("paper", "released_code", "paper-reevaluated", "paper-no-pool-gates", "default-linearized",
           "default-pool-gates", "default-ratio-1", "default-zero-threshold")
GRADIENT_METHODS = ("Saliency", "GuidedBackprop", "IntegratedGradients")
BOX = quality.box_metric(0.99)
Interval = Tuple[float, float, float]


def run_quality(args: argparse.Namespace) -> Dict:
    """The cluttered-scene part of the quality benchmark, with the ablation rows."""
    out = args.quality_out
    argv = ["quality.py", "--scenes", str(args.scenes), "--scenes-per-batch", str(min(args.scenes, 50)),
            "--skip", "voc", "sanity", "--box-fractions", "0.99", "--methods", *METHODS,
            "--configs", *CONFIGS, "--out", str(out)]
    if args.quick:
        argv += ["--ig-steps", "2"]
    saved, sys.argv = sys.argv, argv
    try:
        quality.main()
    finally:
        sys.argv = saved
    return json.loads((out / "quality.json").read_text())


def ascent_runs(quick: bool) -> Dict[str, float]:
    """The paper's configuration (linearized, zero threshold) on cluttered items and on the
    bundled photos' top-2 classes: how often the target score never falls over 5 updates, and
    how many updates the gates take to a fixed point (up to 20)."""
    rises, updates, converged = [], [], []
    scenes = ClutteredScenes("test", length=4 if quick else 40, seed=0)
    vgg = cluttered_vgg()
    for k in range(len(scenes)):
        scene = scenes[k]
        _record(vgg, scene.image[None].expand(len(scene.classes), -1, -1, -1), scene.classes.tolist(),
                rises, updates, converged)
    photos = list(bundled_photos().values())[: 1 if quick else 5]
    lite = efficientnet_lite0()
    for photo in photos:
        x = preprocess(photo)
        with torch.no_grad():
            top2 = lite(x)[0].topk(2).indices.tolist()
        _record(lite, x.expand(2, -1, -1, -1), top2, rises, updates, converged)
    updates_t = torch.tensor(updates, dtype=torch.float64)
    return {"runs": len(rises), "never fell": sum(rises) / len(rises),
            "median updates": float(updates_t.median()), "within 5": float((updates_t <= 5).double().mean()),
            "converged": sum(converged) / len(converged)}


def _record(model: torch.nn.Module, x: torch.Tensor, targets: List[int], rises: List[bool], updates: List[int],
            converged: List[bool]) -> None:
    five = FSP(model).select(x, targets, config="paper", keep_cws=False)
    steps = five.target_scores[1:] - five.target_scores[:-1]
    tolerance = 1e-4 * five.target_scores.abs().amax(0)
    rises += (steps >= -tolerance).all(0).tolist()
    long = FSP(model).select(x, targets, config="paper", iterations=20, keep_cws=False)
    updates += long.updates.tolist()
    converged += long.converged.tolist()


def stat(table: Dict, method: str, metric: str) -> Interval:
    cell = table[method][metric]
    low, high = cell["ci"] if cell["ci"] else (float("nan"),) * 2
    return cell["mean"], low, high


def compare(table: Dict, best: str, others: Sequence[str], metric: str, lower_is_better: bool = False) -> str:
    """Verdict from intervals: does ``best`` beat each of ``others`` on ``metric``?"""
    _, low, high = stat(table, best, metric)
    wins = []
    for other in others:
        _, o_low, o_high = stat(table, other, metric)
        wins.append(high < o_low if lower_is_better else low > o_high)
    if all(wins):
        return "reproduced"
    return "partly" if any(wins) else "not reproduced"


def fmt(table: Dict, method: str, metric: str, digits: int = 3) -> str:
    mean, low, high = stat(table, method, metric)
    return f"{mean:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def claims_rows(table: Dict, ascent: Dict[str, float], command: str) -> List[Tuple[str, str, str]]:
    """``(claim, measurement, verdict)`` per claim of the paper."""
    cov, point, cos = "coverage +0px", "pointing (box)", quality.COSINE
    rows = []
    rows.append(("FSP raises the target score at every update (Sec. 4.1, Fig. 6)",
                 f"paper preset, 5 updates: score never fell in {ascent['never fell']:.0%} of {ascent['runs']} runs "
                 "(cluttered items; bundled photos, top-2 classes)",
                 "reproduced" if ascent["never fell"] == 1 else "partly"))
    rows.append(("FSP converges in about 5 updates (Figs. 6-7)",
                 f"median {ascent['median updates']:.0f} updates to a fixed point; {ascent['within 5']:.0%} within 5; "
                 f"{ascent['converged']:.0%} within 20",
                 "reproduced" if ascent["median updates"] <= 5 else "partly"))
    rows.append(("FSP is class-specific, FR is not (Fig. 4): maps of two classes differ",
                 f"cosine of two items' maps: FSP Summation {fmt(table, 'FSP Summation', cos)}, FR "
                 f"{fmt(table, 'FR', cos)}; paper preset {fmt(table, 'FSP Summation [paper]', cos)}",
                 compare(table, "FSP Summation", ["FR"], cos, lower_is_better=True)))
    for preset, label in (("", "default"), (" [paper]", "paper preset")):
        rows.append((f"Summation Energy Maps cover far more of the object than the gradient (Figs. 11-12), {label}",
                     f"energy on the item's mask: FSP Summation{preset} {fmt(table, 'FSP Summation' + preset, cov)}, "
                     f"Saliency {fmt(table, 'Saliency', cov)}; multi-item scenes "
                     f"{fmt(table, 'FSP Summation' + preset, 'coverage multi-item')} vs "
                     f"{fmt(table, 'Saliency', 'coverage multi-item')}",
                     compare(table, "FSP Summation" + preset, ["Saliency"], cov)))
    gradients = ", ".join(f"{m} {fmt(table, m, point)}" for m in GRADIENT_METHODS)
    rows.append(("Pointing above gradient-based methods (Table 2)",
                 f"pointing game (box): FSP Summation {fmt(table, 'FSP Summation', point)}; {gradients}; "
                 f"Grad-CAM {fmt(table, 'LayerGradCam', point)}",
                 compare(table, "FSP Summation", GRADIENT_METHODS, point)))
    rows.append(("Localization by Procedure 1's boxes (Table 1)",
                 f"box IoU >= 0.5 at 99% energy: two-stage Procedure 1 {fmt(table, quality.TWO_STAGE, BOX)}, "
                 f"FSP Summation {fmt(table, 'FSP Summation', BOX)}, Saliency {fmt(table, 'Saliency', BOX)}, "
                 f"Grad-CAM {fmt(table, 'LayerGradCam', BOX)}",
                 compare(table, "FSP Summation", ["Saliency", "LayerGradCam"], BOX)))
    mious = {m: table[m].get("mIoU") for m in ("Summation-FSP-FR", "FSP Summation", "Saliency", "LayerGradCam")}
    others = [mious[m] or 0 for m in ("Saliency", "LayerGradCam")]  # the methods it is compared with
    rows.append(("Segmentation by Procedure 2 (Table 3), against the gradient and Grad-CAM",
                 "mIoU with background: " + ", ".join(f"{m} {v:.3f}" for m, v in mious.items() if v is not None),
                 "reproduced" if (mious["Summation-FSP-FR"] or 0) > max(others) else "not reproduced"))
    ablations = ["Summation, no FSP", "Summation abs(gradient), no FSP", "Summation gradient x activation, no FSP"]
    rows.append(("The feedback selection is what makes the maps (what FSP adds)",
                 "pointing / coverage / target:other: FSP Summation "
                 f"{fmt(table, 'FSP Summation', point)} / {fmt(table, 'FSP Summation', cov)} / "
                 f"{stat(table, 'FSP Summation', quality.TARGET_OTHER)[0]:.1f}; "
                 + "; ".join(f"{m} {fmt(table, m, point)} / {fmt(table, m, cov)} / "
                             f"{stat(table, m, quality.TARGET_OTHER)[0]:.1f}" for m in ablations),
                 compare(table, "FSP Summation", ablations, cov)))
    rows.append(("The paper's absolute numbers (VOC07 pointing, ILSVRC localization, VOC12 mIoU)",
                 "the data sets and ImageNet VGG16 weights do not ship offline; "
                 "`captum-feedback benchmark` is where they would run", "not measurable here"))
    return rows


def ablation_table(table: Dict) -> str:
    metrics = ("pointing (box)", "coverage +0px", quality.TARGET_OTHER, quality.COSINE, BOX)
    rows = [m for m in table if m.startswith("FSP Summation") or m in METHODS[4:]]
    lines = ["| map | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for method in rows:
        lines.append(f"| {method} | " + " | ".join(fmt(table, method, m, 2 if m == quality.TARGET_OTHER else 3)
                                                  for m in metrics) + " |")
    return "\n".join(lines)


def write(path: Path, rows: List[Tuple[str, str, str]], table: Dict, quality_command: str, command: str,
          seconds: float) -> None:
    lines = ["# The paper's claims, measured", "",
             f"Regenerated by `{command}` ({seconds:.0f} s). Maps: `python {quality_command}` "
             "(cluttered Fashion-MNIST scenes, the packaged VGG-style classifier trained on image labels only); "
             "intervals are 95% bootstrap intervals over scenes. FSP rows use the default configuration unless "
             "a configuration is named in brackets.", "",
             "| claim | measurement | verdict |", "|---|---|---|"]
    lines += [f"| {claim} | {measurement} | **{verdict}** |" for claim, measurement, verdict in rows]
    lines += ["", "## Ablations: one choice changed at a time", "",
              "`[paper-reevaluated]`: the paper preset without linearization; `[paper-no-pool-gates]`: ReLU gates "
              "only; `[default-linearized]`, `[default-pool-gates]`, `[default-ratio-1]`, `[default-zero-threshold]`: "
              "the default with that one change. The three \"no FSP\" rows sum the same sites of the plain network.",
              "", ablation_table(table), ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--quality-json", type=Path, default=None,
                        help="reuse a quality.py run made with the claims' --methods and --configs")
    parser.add_argument("--quick", action="store_true", help="4 scenes and one photo: checks every step runs")
    parser.add_argument("--out", type=Path, default=Path("docs/claims.md"))
    parser.add_argument("--quality-out", type=Path, default=Path("benchmarks/results/claims_quality"),
                        help="where the quality run writes its tables")
    args = parser.parse_args()
    if args.quick:
        args.scenes = 4
    start = time.time()
    results = json.loads(args.quality_json.read_text()) if args.quality_json else run_quality(args)
    ascent = ascent_runs(args.quick)
    rows = claims_rows(results["cluttered"], ascent, " ".join(sys.argv))
    write(args.out, rows, results["cluttered"], results["command"], "python " + " ".join(sys.argv),
          time.time() - start)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
