"""The ``spinereg-roi`` v1 JSON file (DESIGN.md, ``spinereg register --roi``) <-> vertebra boxes.

::

    {"format": "spinereg-roi", "version": 1, "frame": "RAS",
     "vertebrae": {"L1": {"center_ras": [x, y, z],
                          "axes": [[a11, a12, a13], [a21, a22, a23], [a31, a32, a33]],
                          "size_mm": [sx, sy, sz]}, ...}}

All in CT RAS mm (the CT as scanned, before any initial pose). ``axes`` is a 3x3 matrix
written row by row whose columns are the box's unit edge directions (a Slicer ROI node's
ObjectToNode rotation); ``size_mm`` is the edge length along each column. What a box does to
the registration is :meth:`SpineRegistrationLib.pipeline.inputs.CaseInputs.start`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.box import OrientedBox
from ..core.labels import canonical_name
from ..errors import InputError
from .atomic import write_text_atomic
from .jsonfile import check_format, read_json

ROI_FORMAT = "spinereg-roi"
ROI_VERSION = 1


def read_roi(path: str | os.PathLike) -> dict[str, OrientedBox]:
    """Vertebra name (canonical: ``L1``) -> box, from a ``spinereg-roi`` file; InputError (one line,
    naming the file) when it is malformed, another format or version, names a non-vertebra,
    or holds a box with non-orthonormal axes or a size <= 0."""
    document = read_json(path, "ROI")
    try:
        return _boxes_of(document)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None


def _boxes_of(document) -> dict[str, OrientedBox]:
    if not isinstance(document, dict):
        raise InputError(f"expected a JSON object, got {type(document).__name__}")
    check_format(document, ROI_FORMAT, ROI_VERSION)
    if document.get("frame", "RAS") != "RAS":
        raise InputError(f"frame is {document.get('frame')!r}, expected 'RAS' (CT RAS mm)")
    entries = document.get("vertebrae")
    if not isinstance(entries, dict) or not entries:
        raise InputError("'vertebrae' must be a non-empty object: vertebra name -> box")
    boxes = {}
    for key, entry in entries.items():
        name = canonical_name(key)
        if name is None:
            raise InputError(f"unknown vertebra {key!r}; expected a name like L1 or T12")
        if name in boxes:
            raise InputError(f"vertebra {name} has two boxes")
        if not isinstance(entry, dict) or not {"center_ras", "axes", "size_mm"} <= set(entry):
            raise InputError(f"the box of {name} needs center_ras, axes and size_mm")
        try:
            boxes[name] = OrientedBox(entry["center_ras"], entry["axes"], entry["size_mm"])
        except InputError as error:
            raise InputError(f"the box of {name}: {error}") from None
        except (TypeError, ValueError):
            raise InputError(f"the box of {name}: center_ras, axes and size_mm must be numbers") from None
    return boxes


def roi_entry(box: OrientedBox) -> dict:
    """One vertebra's entry of the file: center_ras, axes (rows of the matrix), size_mm."""
    return {"center_ras": box.center_ras.tolist(), "axes": box.axes.tolist(), "size_mm": box.size_mm.tolist()}


def write_roi(path: str | os.PathLike, boxes: dict[str, OrientedBox]) -> Path:
    """Write vertebra name -> box as a ``spinereg-roi`` file (replaced atomically); returns the path."""
    document = {"format": ROI_FORMAT, "version": ROI_VERSION, "frame": "RAS",
                "vertebrae": {name: roi_entry(box) for name, box in boxes.items()}}
    return write_text_atomic(json.dumps(document, indent=2) + "\n", path)
