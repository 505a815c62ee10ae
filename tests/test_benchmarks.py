"""The benchmarks: quality runs end to end on a few scenes; speed pairs rounds against Saliency."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import claims  # noqa: E402
import configs  # noqa: E402
import located_ratio  # noqa: E402
import quality  # noqa: E402
import speed  # noqa: E402


def test_quality_benchmark_scores_every_method_and_randomizes_layer_by_layer(tmp_path, monkeypatch):
    argv = ["quality.py", "--scenes", "3", "--scenes-per-batch", "3", "--sanity-pairs", "2", "--ig-steps", "2",
            "--skip", "voc", "--configs", "paper", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    quality.main()
    report = (tmp_path / "quality.md").read_text()
    for method in quality.ALL_METHODS + (quality.TWO_STAGE, "FSP Summation [paper]"):
        assert f"| {method} |" in report
    assert "target:other" in report and "cosine of the two classes' maps" in report
    assert (tmp_path / "cluttered_vgg.png").is_file() and (tmp_path / "cluttered_resnet.png").is_file()
    assert (tmp_path / "sanity.png").is_file() and "deletion (lower is better)" in report
    sanity = [line for line in report.splitlines() if line.startswith("| FSP Summation | ")][-1]
    correlations = [float(v) for v in sanity.strip("| ").split("|")[1:]]
    assert len(correlations) == 6 and len(set(correlations)) > 1  # each stage randomizes more


def test_speed_benchmark_times_every_method_each_round_and_pairs_rounds_with_saliency():
    order = []
    calls = {label: (lambda label=label: order.append(label)) for label in ("Saliency", "FSP", "IG")}
    times, faults = speed._interleaved_times(calls, {"Saliency": 3, "FSP": 3, "IG": 1}, speed.torch.device("cpu"))
    assert order == ["Saliency", "FSP", "IG", "Saliency", "FSP", "Saliency", "FSP"]
    assert [len(times[label]) for label in calls] == [3, 3, 1] == [len(faults[label]) for label in calls]
    # A slow middle round moves the ratio of medians but not the paired ratio.
    assert speed._paired_ratio([2.0, 20.0, 2.2], [1.0, 10.0, 1.0]) == 2.0


def test_speed_counts_the_duals_updates_as_passes_and_feeds_the_embedded_model_photos():
    from captum_feedback import PRESETS

    assert speed.passes(PRESETS["default"]) == 2  # the plain pass and one update of the head
    assert speed.passes(PRESETS["default"], summation=True) == 3  # and the dual's update (the plain pass is shared)
    assert speed.passes(PRESETS["paper"], summation=True) == 6
    model, x, target = speed.model_and_inputs("efficientnet_lite0", 2, torch.device("cpu"))
    assert x.shape == (2, 3, 320, 320) and torch.equal(target, model(x).argmax(1))
    assert not torch.equal(x[0], x[1])  # two different photos


def test_the_configuration_search_scores_candidates_beside_grad_cam(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["configs.py", "--scenes", "3", "--only", "default"])
    configs.main()
    table = capsys.readouterr().out
    for row in ("LayerGradCam", "Saliency", "default (contrastive)"):
        assert f"| {row} |" in table


def test_the_located_ratio_leaves_the_pooled_embedded_model_as_alpha_above_zero(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["located_ratio.py", "--grids", "1"])
    located_ratio.main()
    assert "4 targets on 1 heldout grids: gates equal: True; largest map difference: 0 " in capsys.readouterr().out


def test_scores_count_energy_on_the_other_item_of_two_item_scenes():
    assert quality.other_items([torch.tensor([3, 5]), torch.tensor([1]), torch.tensor([0, 2])]).tolist() == [
        1, 0, -1, 4, 3]
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, 0, 0], maps[1, 0, 3, 3] = 3.0, 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, 0], masks[1, 3, 3] = True, True
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 4.0, 4.0]])
    pointing, coverage, ratio, blank = configs.scores(maps, masks, boxes, torch.tensor([1, 0]))
    assert (pointing, coverage, blank) == (1.0, 1.0, 0) and ratio == float("inf")


def test_the_claims_script_measures_every_claim_in_its_quick_form(tmp_path, monkeypatch):
    out = tmp_path / "claims.md"
    monkeypatch.setattr(sys, "argv", ["claims.py", "--quick", "--out", str(out), "--quality-out", str(tmp_path / "q")])
    claims.main()
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("** |")]
    claims_rows, grid_rows = rows[:20], rows[20:]
    assert len(claims_rows) == 20 and len(grid_rows) == 3  # ten claims per scene model; the VGG's grids
    for claim in ("converges in about 5 updates", "class-specific", "Figs. 11-12", "Table 2", "Table 1", "Table 3",
                  "what FSP adds", "not measurable here", "global average pooling", "fully connected head"):
        assert claim in text
    for row in ("| FSP Summation [paper-reevaluated] |", "| FSP Summation [pruning] |",
                "| Summation abs(gradient), no FSP |"):
        assert row in text
    assert all(any(v in row for v in ("reproduced", "partly", "not measurable")) for row in claims_rows)
    assert all(row.count("/") >= 1 and ("above" in row or "tie" in row or "below" in row) for row in grid_rows)


@pytest.mark.skipif(sys.platform == "win32", reason="getrusage counts page faults on POSIX systems")
def test_speed_counts_the_page_faults_of_a_call_that_touches_fresh_memory():
    import mmap

    def touch():
        pages = mmap.mmap(-1, 64 * mmap.PAGESIZE)  # anonymous memory: each page faults in on first write
        for page in range(64):
            pages[page * mmap.PAGESIZE] = 1
        pages.close()

    _, faults = speed._interleaved_times({"touch": touch}, {"touch": 2}, speed.torch.device("cpu"))
    assert all(count >= 64 for count in faults["touch"])
