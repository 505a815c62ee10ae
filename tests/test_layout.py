"""The package's layout shows its design: the algorithm in core/, the paper's applications in
wsol/, the maps of other methods beside them in compare/, what users run in app/, and data/
depending on nothing above it; no module imports one
that imports it back, by any import form."""

import ast
import importlib
from pathlib import Path
from typing import Dict, Iterator, List, Set

import pytest

import captum_feedback

PACKAGE = Path(__file__).resolve().parents[1] / "captum_feedback"
LAYERS = {"core": set(), "wsol": {"core"}, "compare": {"core", "wsol", "models"}, "data": set(),
          "models": {"data", "core"}}
"""Which other parts of the package each part may import."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolved(name: str) -> str:
    """The package module a dotted name refers to: itself, or the module holding the attribute
    it names (``captum_feedback.FSP`` lives in ``captum_feedback.core.pruning``)."""
    if name in MODULES:
        return name
    package, _, attribute = name.rpartition(".")
    if package == "captum_feedback" and attribute in captum_feedback._HOME_OF:
        return captum_feedback._HOME_OF[attribute]
    return package if package in MODULES else name


def imported_modules(module: str) -> Iterator[str]:
    """Every package module ``module`` imports, at the top or inside a function: ``import a.b``,
    ``from a.b import c`` (``c`` a module or an attribute), relative imports, the package root's
    lazy names, and ``importlib.import_module("...")`` with a literal name."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for name in names:
            if name.startswith("captum_feedback."):
                yield _resolved(name)


GRAPH: Dict[str, Set[str]] = {m: set(imported_modules(m)) & set(MODULES) - {m} for m in MODULES}


@pytest.mark.parametrize("part", sorted(LAYERS))
def test_each_part_imports_only_the_parts_below_it(part):
    allowed = LAYERS[part] | {part}
    for module in (m for m in MODULES if m.split(".")[1:2] == [part]):
        outside = {name.split(".")[1] for name in GRAPH[module]} - allowed
        assert not outside, f"{module} imports {sorted(outside)}"


def test_no_module_imports_itself_through_others():
    def cycle_from(start: str, node: str, seen: List[str]) -> List[str]:
        for nxt in sorted(GRAPH[node]):
            if nxt == start:
                return seen + [nxt]
            if nxt not in seen:
                found = cycle_from(start, nxt, seen + [nxt])
                if found:
                    return found
        return []

    cycles = {m: cycle_from(m, m, [m]) for m in MODULES if not m.endswith("__init__")}
    assert not {m: c for m, c in cycles.items() if c}, " -> ".join(next(c for c in cycles.values() if c))


@pytest.mark.parametrize("source", ["from captum_feedback import FSP",
                                    "from captum_feedback.core import pruning",
                                    "from ..core.pruning import FSP",
                                    "import captum_feedback.core.pruning",
                                    "importlib.import_module('captum_feedback.core.pruning')"])
def test_the_layering_sees_every_import_form(source, tmp_path, monkeypatch):
    module = "captum_feedback.data.probe"
    monkeypatch.setitem(MODULES, module, tmp_path / "probe.py")
    (tmp_path / "probe.py").write_text(source + "\n")
    assert list(imported_modules(module)) == ["captum_feedback.core.pruning"]


def test_the_earlier_module_paths_are_gone():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("captum_feedback.localization")


def test_one_method_vocabulary_serves_maps_cli_and_benchmarks():
    import torch

    from captum_feedback.app.cli import MAP_SLUGS
    from captum_feedback.compare.methods import ALL_METHODS, MethodMaps
    from captum_feedback.compare.registry import REGISTRY, method_name
    from captum_feedback.evaluation.tasks import PROCEDURE_1, Localization

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
