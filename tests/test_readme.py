"""The Python code of the README and of the gate-rule guide runs as written: each file's blocks,
in order, in one namespace (a later block may use what an earlier one made), so none can rot.
A block that imports an optional library (timm, transformers) that is not installed is left
out, and says so."""

import re
import warnings
from pathlib import Path

import matplotlib
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/gate_rules.md")
OPTIONAL = ("timm", "transformers")
"""The optional libraries of the ``models`` extra."""


def python_blocks(document: str):
    return re.findall(r"^```python\n(.*?)^```", (ROOT / document).read_text(), flags=re.S | re.M)


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_python_block_runs(document, monkeypatch):
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    monkeypatch.setattr(plt, "show", lambda *args, **kwargs: None)
    blocks = python_blocks(document)
    assert len(blocks) >= 2
    namespace = {"__name__": "docs"}
    for number, block in enumerate(blocks, start=1):
        try:
            exec(compile(block, f"{document} python block {number}", "exec"), namespace)
        except ModuleNotFoundError as error:
            if error.name not in OPTIONAL:
                pytest.fail(f"{document} python block {number} fails: {error}")
            warnings.warn(
                f"{document} python block {number} left out: {error.name} is not installed",
                stacklevel=1,
            )
        except Exception as error:  # noqa: BLE001 - name the block that failed
            pytest.fail(f"{document} python block {number} fails: {type(error).__name__}: {error}")
        finally:
            plt.close("all")
