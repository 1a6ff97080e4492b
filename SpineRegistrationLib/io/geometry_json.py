"""The ``spinereg-xray-geometry`` JSON sidecar (DESIGN.md) <-> :class:`~SpineRegistrationLib.geometry.XrayGeometry`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from ..geometry import XrayGeometry
from .atomic import write_text_atomic

def save_geometry(geometry: XrayGeometry, path: str | os.PathLike) -> Path:
    """Write ``geometry`` as a ``spinereg-xray-geometry`` JSON file (replaces ``path``).

    Written to a temporary file beside ``path`` and renamed, so a failure leaves any
    previous file intact. Refusing to overwrite is the caller's choice
    (:func:`.atomic.new_output_file`). Returns the path.
    """
    geometry.validate()
    return write_text_atomic(json.dumps(geometry.to_json_dict(), indent=2) + "\n", path)


def load_geometry(path: str | os.PathLike) -> XrayGeometry:
    """Read and validate a ``spinereg-xray-geometry`` JSON file; InputError naming the file if bad."""
    source = Path(path)
    if not source.is_file():
        raise InputError(f"geometry file not found: {source}")
    try:
        d = json.loads(source.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{source}: not a JSON geometry file ({error})") from error
    try:
        return XrayGeometry.from_json_dict(d)
    except InputError as error:
        raise InputError(f"{source}: {error}") from error
