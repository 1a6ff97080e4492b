"""Writing without ever leaving a half-written file or folder that looks complete.

The one home of the project's atomic writes: the CLI's output files and folders, geometry
sidecars, model and checkpoint files. Each writes beside its target under a hidden
``.partial`` name and renames onto the target only once complete (``os.replace``, atomic
on one file system); a failure or an interrupt leaves any previous target intact.
Written by hand because the standard library has no atomic folder replacement and the
small packages that do files (atomicwrites) are unmaintained.
"""

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


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`staged_output_file`; returns the path."""
    with staged_output_file(path) as staging:
        staging.write_text(text, encoding="utf-8")
    return Path(path)


def write_texts_atomic(texts: dict) -> list[Path]:
    """Write several {path: text} files as one: every file is staged in full before any is
    renamed onto its target, so a failure while writing leaves all the previous targets intact."""
    with contextlib.ExitStack() as stack:
        for path, text in texts.items():
            stack.enter_context(staged_output_file(path)).write_text(text, encoding="utf-8")
    return [Path(path) for path in texts]


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
