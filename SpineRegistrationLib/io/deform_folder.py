"""The output folder of ``spinereg deform`` (format ``spinereg-deform``, version 1; DESIGN.md).

Both modes (from vertebra poses, CT to CT) write the same files:

- ``displacement.h5``: the ITK displacement-field transform (world -> CT resampling
  direction, LPS), which Slicer loads as a grid transform; set as the CT's (or the
  segmentation's) parent it shows them at the operating-room pose;
- ``warped_seg.nii.gz`` and ``warped_seg.seg.nrrd``: the segmentation moved by the field,
  on the CT's grid in world coordinates (load it without a parent transform);
- ``drr_<VIEW>.nrrd`` (when X-rays were given): the DRR of every vertebra at its final pose (the
  warped segmentation's DRR, the field being rigid inside each vertebra), for overlays;
- ``deform.json``: the mode, the inputs, the field's grid, its Jacobian statistics and
  per-vertebra figures (residuals, Dice, ...), the time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..core.labelmap import Labelmap
from ..core.displacement import DisplacementField
from ..errors import InputError
from .displacement import write_displacement
from .labelmaps import write_labelmap
from .results import drr_name
from .xray import write_xray

DEFORM_FILE = "deform.json"
DEFORM_FORMAT = "spinereg-deform"
DEFORM_VERSION = 1
FIELD_FILE = "displacement.h5"
WARPED_LABELMAP_FILE = "warped_seg.nii.gz"
WARPED_SEGMENTATION_FILE = "warped_seg.seg.nrrd"


def grid_description(field: DisplacementField) -> dict:
    """The field grid in deform.json: size (I, J, K), spacing mm, ijk_to_ras (world RAS)."""
    spacing = np.linalg.norm(field.ijk_to_ras[:3, :3], axis=0)
    return {"size": list(field.displacement.shape[2::-1]), "spacing_mm": spacing.round(6).tolist(),
            "ijk_to_ras": field.ijk_to_ras.round(6).tolist()}


def write_deform_folder(directory: str | os.PathLike, field: DisplacementField, warped: Labelmap | None,
                        document: dict, drrs: dict[str, np.ndarray] | None = None) -> dict[str, Path]:
    """Write a deform folder's files into the existing folder ``directory``.

    document: deform.json without its header (mode, inputs, jacobian, vertebrae, time...).
    drrs: view -> (rows, columns) DRR of the vertebrae at their final poses, written as
    ``drr_<VIEW>.nrrd`` as a register result's. Returns name -> path. Staging the folder (:func:`.atomic.staged_output_dir`) is the caller's.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"output folder does not exist: {directory}")
    paths = {"field": directory / FIELD_FILE}
    write_displacement(field, paths["field"])
    if warped is not None:
        paths["labelmap"] = directory / WARPED_LABELMAP_FILE
        write_labelmap(warped, paths["labelmap"])
        paths["segmentation"] = directory / WARPED_SEGMENTATION_FILE
        write_labelmap(warped, paths["segmentation"])
    for view, image in (drrs or {}).items():
        paths[f"drr_{view}"] = directory / drr_name(view)
        write_xray(image, paths[f"drr_{view}"])
    full = {"format": DEFORM_FORMAT, "version": DEFORM_VERSION, "grid": grid_description(field), **document}
    paths["deform"] = directory / DEFORM_FILE
    paths["deform"].write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    return paths
