"""The package's layout shows its design: the algorithm in core/, the paper's applications in
wsol/, what users run in app/, and data/ depending on nothing above it; the modules' earlier
homes at the package root still import."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "captum_feedback"
LAYERS = {"core": set(), "wsol": {"core"}, "data": set(), "models": {"data"}}
"""Which other parts of the package each part may import."""


def _imported_parts(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "captum_feedback" and len(parts) > 1:
                yield parts[1]


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_each_part_imports_only_the_parts_below_it(part):
    allowed = LAYERS[part] | {part}
    for path in (PACKAGE / part).rglob("*.py"):
        outside = set(_imported_parts(path)) - allowed
        if part == "wsol" and path.name == "methods.py":
            outside -= {"models"}  # recommended_layers, for MethodMaps' default layers
        assert not outside, f"{path.relative_to(PACKAGE)} imports {sorted(outside)}"


@pytest.mark.parametrize("earlier, home", [("localization", "wsol.localization"), ("photos", "data.photos"),
                                           ("engine", "core.engine"), ("cli", "app.cli"),
                                           ("classifiers", "models.classifiers")])
def test_the_earlier_module_paths_still_import_as_the_same_modules(earlier, home):
    assert importlib.import_module(f"captum_feedback.{earlier}") is importlib.import_module(f"captum_feedback.{home}")


def test_one_method_vocabulary_serves_maps_cli_and_benchmarks():
    import torch

    from captum_feedback.app.cli import MAP_SLUGS
    from captum_feedback.benchmark.tasks import PROCEDURE_1, Localization
    from captum_feedback.wsol.methods import ALL_METHODS, MethodMaps
    from captum_feedback.wsol.registry import REGISTRY, method_name

    assert len({m.name for m in REGISTRY}) == len({m.slug for m in REGISTRY}) == len(REGISTRY)
    assert [method_name(slug) for slug in MAP_SLUGS] == list(ALL_METHODS)
    assert Localization.methods == (PROCEDURE_1, *ALL_METHODS)
    from nets import VGGish, seeded

    net = seeded(VGGish())
    methods = [m for m in ALL_METHODS if m != "LRP"]  # Captum's LRP has no rule for nn.Flatten
    maps = MethodMaps(net, net.features[3], net.features[3], ig_steps=2)(torch.rand(1, 3, 16, 16), 1, methods)
    assert list(maps) == methods and all(m.shape == (1, 1, 16, 16) for m in maps.values())
    with pytest.raises(ValueError, match="Unknown method 'magic'"):
        method_name("magic")
