"""Helpers shared by the subcommands: safe output paths and argument types."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError


def new_output_file(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check that ``path`` may be written: refuse to replace an existing file unless asked."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"output path is a directory: {p}")
    if p.exists() and not overwrite:
        raise InputError(f"output file exists, not overwriting (use --overwrite): {p}")
    if not p.parent.exists():
        raise InputError(f"output folder does not exist: {p.parent}")
    return p


@contextlib.contextmanager
def staged_output_file(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary name ends with ``path``'s own name, so writers that pick the format by
    extension (SimpleITK) write the same format. A failure (or an interrupt) part-way
    through writing leaves any previous ``path`` intact and no temporary file behind.
    Whether ``path`` may be replaced is :func:`new_output_file`'s question, asked before.
    """
    target = Path(path)
    staging = target.with_name(f".partial-{secrets.token_hex(4)}-{target.name}")
    try:
        yield staging
        os.replace(staging, target)
    finally:
        staging.unlink(missing_ok=True)


@contextlib.contextmanager
def staged_output_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder beside ``path``; move it to ``path`` only if the block succeeds.

    So a failed run never leaves a partial DIR that looks complete, and an existing
    non-empty DIR is never touched unless ``overwrite`` (then it is replaced whole at the
    end: moved aside, the new one moved in, and only then deleted).
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise InputError(f"output path is a file, not a folder: {target}")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError(f"output folder is not empty, not overwriting (use --overwrite): {target}")
    parent = target.absolute().parent
    if not parent.exists():
        raise InputError(f"parent folder of the output does not exist: {parent}")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if not target.exists():
        staging.rename(target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.previous-", dir=parent))
    target.rename(aside / target.name)
    try:
        staging.rename(target)
    except BaseException:
        (aside / target.name).rename(target)  # put the previous folder back
        aside.rmdir()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def check_device(name: str):
    """A torch device by name; InputError for an unknown one or CUDA without a GPU."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; expected cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda asked for, but no CUDA GPU is available")
    return device


def check_in_view(volume, mask, matrix_ras, geometry, what: str) -> None:
    """InputError unless the posed object's centre projects inside the detector and in front of the source.

    ``mask`` (K, J, I) selects the object inside ``volume`` (None: the whole volume).
    """
    import numpy as np

    from ..frames import apply_matrix

    if mask is None:
        low, high = volume.bounds_ras()
        center = (low + high) / 2
    else:
        k, j, i = np.nonzero(mask)
        center = volume.ijk_to_ras_points(np.array([i.mean(), j.mean(), k.mean()]))
    center = apply_matrix(matrix_ras, center)
    if geometry.sees(center[None])[0]:
        return
    depth_mm = float((center - geometry.source) @ geometry.detector_normal)
    if depth_mm <= 0:
        where = f"lies {-depth_mm:.0f} mm behind the X-ray source"
    elif depth_mm >= geometry.sdd_mm:
        where = "lies beyond the detector"
    else:
        column, row = geometry.project(center)
        where = (f"projects to pixel ({column:.0f}, {row:.0f}), outside the "
                 f"{geometry.columns}x{geometry.rows} detector")
    raise InputError(f"the X-ray geometry does not see {what}: its centre {where}")
