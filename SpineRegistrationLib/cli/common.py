"""Helpers shared by the subcommands: safe output paths and argument types."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import InputError


def existing_file(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path, or raise InputError if it is not an existing file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"file not found: {p}")
    if p.is_dir() and not p.name.endswith(".dcm"):
        return p  # a DICOM series folder is accepted where readers allow it
    return p


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
def staged_output_dir(path: str | os.PathLike, overwrite: bool = False):
    """Yield a temporary folder beside ``path``; move it to ``path`` only if the block succeeds.

    So a failed run never leaves a partial DIR that looks complete, and an existing
    non-empty DIR is never touched unless ``overwrite`` (then it is replaced whole at the end).
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
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
