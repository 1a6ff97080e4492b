"""Slicer segmentation files (``.seg.nrrd``) <-> one label volume.

A .seg.nrrd is an NRRD whose header carries, per segment N, ``SegmentN_Name``,
``SegmentN_LabelValue`` and ``SegmentN_Layer`` (keys of Slicer's
``vtkMRMLSegmentationStorageNode``). Non-overlapping segments share a layer (a 3D
labelmap); overlapping ones go to further layers, stored as a 4D NRRD whose first axis
is a ``list`` kind, which SimpleITK reads as a 3D image with one vector component per
layer. Files without ``Layer`` keys (older Slicer) have one segment per layer with
value 1, which is what the defaults below reproduce.

Reading merges all layers into one volume numbered by a label scheme (segments that
are not vertebrae are dropped; where vertebra segments overlap, the later segment wins).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..core.labelmap import Labelmap
from ..core.labels import LabelScheme, canonical_name, detect_scheme, get_scheme
from ..errors import InputError
from .images import volume_to_image, write_image_file

_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(\w+)$")
_BINARY_LABELMAP = "Binary labelmap"
# Display colours (RGB 0..1) by spine region; odd/even levels alternate in brightness
# so that neighbouring vertebrae differ on screen.
_REGION_COLOR = {"C": (0.86, 0.55, 0.35), "T": (0.42, 0.62, 0.90), "L": (0.52, 0.82, 0.47), "S": (0.90, 0.80, 0.40)}


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a .seg.nrrd header: its name, voxel value and layer (vector component)."""

    index: int
    name: str
    label_value: int
    layer: int


def has_segment_metadata(image: sitk.Image) -> bool:
    """True when the image header describes Slicer segments (``Segment0_...`` keys)."""
    return any(_SEGMENT_KEY.match(key) for key in image.GetMetaDataKeys())


def read_segment_info(image: sitk.Image) -> list[SegmentInfo]:
    """The segments listed in a .seg.nrrd header, in file order."""
    fields: dict[int, dict[str, str]] = defaultdict(dict)
    for key in image.GetMetaDataKeys():
        match = _SEGMENT_KEY.match(key)
        if match:
            fields[int(match.group(1))][match.group(2)] = image.GetMetaData(key).strip()
    return [
        SegmentInfo(
            index=index,
            name=fields[index].get("Name", f"Segment_{index}"),
            label_value=int(fields[index].get("LabelValue", 1)),
            layer=int(fields[index].get("Layer", index)),
        )
        for index in sorted(fields)
    ]


def labels_from_segments(
    image: sitk.Image, path: str | os.PathLike, scheme: str | LabelScheme = "auto"
) -> tuple[np.ndarray, LabelScheme]:
    """Merge the vertebra segments of a .seg.nrrd image into one (K, J, I) label array.

    scheme ``auto`` takes the scheme from the segment names and values
    (``labels.detect_scheme``). Returns (uint8 array numbered by the scheme, scheme).
    """
    if image.GetDimension() != 3:
        raise InputError(f"{path} is a {image.GetDimension()}D segmentation; expected 3D (one component per layer)")
    segments = read_segment_info(image)
    if scheme == "auto":
        scheme = detect_scheme([s.name for s in segments], [s.label_value for s in segments])
    scheme = get_scheme(scheme)
    vertebrae = [(s, canonical_name(s.name)) for s in segments if canonical_name(s.name)]
    if not vertebrae:
        names = ", ".join(repr(s.name) for s in segments)
        raise InputError(
            f"{path}: no segment is a vertebra (segments: {names}); expected names like L1, vertebrae_L1, 'L1 vertebra'"
        )
    layers = sitk.GetArrayFromImage(image)
    if layers.ndim == 3:
        layers = layers[..., None]
    merged = np.zeros(layers.shape[:3], dtype=np.uint8)
    for segment, name in vertebrae:
        if name not in scheme.label_of:
            raise InputError(f"{path}: segment {segment.name!r} has no label in the {scheme.name!r} scheme")
        if not 0 <= segment.layer < layers.shape[3]:
            layer_count = layers.shape[3]
            raise InputError(
                f"{path}: segment {segment.name!r} is in layer {segment.layer} but the file has {layer_count} layer(s)"
            )
        merged[layers[..., segment.layer] == segment.label_value] = scheme.label_of[name]
    return merged, scheme


def _segment_color(name: str | None) -> tuple[float, float, float]:
    if name is None:
        return (0.7, 0.7, 0.7)
    scale = 1.0 if int(name[1:]) % 2 else 0.8
    return tuple(round(c * scale, 4) for c in _REGION_COLOR[name[0]])


def write_seg_nrrd(labelmap: Labelmap, path: str | os.PathLike) -> None:
    """Write a labelmap as a single-layer Slicer .seg.nrrd, one segment per label value.

    Vertebra segments are named the scheme's way (``L1`` for VerSe, ``vertebrae_L1`` for
    TotalSegmentator) and keep their label value, so reading the file back detects the
    same scheme; other values become ``Label_<value>`` segments. Each segment's extent
    is the whole image (Slicer crops on its own).
    """
    if not str(path).lower().endswith(".nrrd"):
        raise InputError(f"a Slicer segmentation must be written as .seg.nrrd, got {path}")
    image = volume_to_image(labelmap.volume)
    ni, nj, nk = labelmap.volume.shape_ijk
    extent = f"0 {ni - 1} 0 {nj - 1} 0 {nk - 1}"
    for index, value in enumerate(labelmap.values):
        name = labelmap.scheme.name_of.get(value)
        segment_name = labelmap.scheme.segment_name(name) if name else f"Label_{value}"
        metadata = {
            "ID": f"Segment_{value}",
            "Name": segment_name,
            "NameAutoGenerated": "0",
            "Color": " ".join(str(c) for c in _segment_color(name)),
            "ColorAutoGenerated": "0",
            "LabelValue": str(value),
            "Layer": "0",
            "Extent": extent,
        }
        for key, text in metadata.items():
            image.SetMetaData(f"Segment{index}_{key}", text)
    image.SetMetaData("Segmentation_MasterRepresentation", _BINARY_LABELMAP)
    image.SetMetaData("Segmentation_ContainedRepresentationNames", _BINARY_LABELMAP + "|")
    image.SetMetaData("Segmentation_ReferenceImageExtentOffset", "0 0 0")
    write_image_file(image, path)
