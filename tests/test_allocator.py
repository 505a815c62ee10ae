"""The allocator setting that lets FSP's passes reuse their pages (issue #22)."""

import subprocess
import sys

import pytest

from captum_feedback.core import allocator

PASSES = """
import resource, sys, torch
from captum_feedback.core.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_pass():  # three 48 MiB activations, written and freed, as a pass of a large model
    return [torch.ones(12 << 20) for _ in range(3)]
for _ in range(3):
    one_pass()
before = faults()
for _ in range(5):
    one_pass()
print(kept, faults() - before)
"""


def _faults(mode):
    out = subprocess.run([sys.executable, "-c", PASSES, mode], capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(allocator._glibc() is None, reason="glibc's mallopt only")
def test_with_freed_memory_kept_later_passes_reuse_the_pages_of_the_ones_before():
    kept, faults = _faults("kept")
    _, default_faults = _faults("default")
    assert kept
    assert default_faults > 5 * 3 * 12_000  # each 48 MiB tensor mapped anew: 12,288 pages of 4 KiB
    assert faults < default_faults / 2  # small allocations between passes split the kept space: some refault


def test_elsewhere_than_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() is False
