"""The three annotated Pascal VOC photos in the ``labelme`` sdist's ``examples/``, laid out as a
VOC folder (JPEGImages, Annotations, SegmentationClass) for the benchmarks. Fetching them runs
``pip download`` (PyPI is reachable where the package registry is); library code never does.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Union


def fetch_labelme_photos(dest: Union[str, Path], version: str = "6.3.1") -> Path:
    """Download the ``labelme`` sdist from PyPI and lay its three annotated VOC photos out in
    VOC's layout under ``dest`` (JPEGImages, Annotations, SegmentationClass). Returns ``dest``;
    does nothing when ``dest`` already holds them."""
    dest = Path(dest)
    if (dest / "JPEGImages").is_dir() and any((dest / "JPEGImages").glob("*.jpg")):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"labelme=={version}", "-d", tmp], check=True)
        with tarfile.open(next(Path(tmp).glob("labelme-*.tar.gz"))) as sdist:
            for member in sdist.getmembers():
                _extract_voc_member(sdist, member, dest)
    return dest


def _extract_voc_member(sdist: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    parts = Path(member.name).parts
    wanted = {("bbox_detection", "Annotations"), ("instance_segmentation", "JPEGImages"),
              ("instance_segmentation", "SegmentationClass")}
    if len(parts) == 6 and (parts[2], parts[4]) in wanted and member.isfile():
        target = dest / parts[4] / parts[5]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sdist.extractfile(member).read())
