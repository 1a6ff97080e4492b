"""Vertebra centroids in the VerSe ``ctd`` JSON format.

The format (anjany/verse, ``*_ctd.json``) is a list: first ``{"direction": ["P", "I",
"R"]}``, then one ``{"label": 20, "X": .., "Y": .., "Z": ..}`` per vertebra, with VerSe
labels (``labels.SCHEMES["verse"]``). X, Y, Z are **voxel coordinates** of the image
the centroids belong to (its array axes 0, 1, 2 = our i, j, k), not millimetres; the
direction codes are that image's axis codes in nibabel's convention (the letter each
voxel axis increases towards, e.g. ``R, A, S`` for an identity RAS affine). So reading
and writing need the Volume (CT or labelmap) the file refers to.

In memory, centroids are ``{name: (3,) RAS mm}``. Entries the file marks NaN and labels
that are not vertebrae (27, coccyx) are skipped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from ..core.labels import SCHEMES, canonical_name, sort_vertebrae
from ..core.volume import Volume
from .jsonfile import read_json

_VERSE = SCHEMES["verse"]
_POSITIVE = "RAS"
_NEGATIVE = "LPI"
_WHAT = "VerSe centroid (ctd) JSON"


def axis_codes(volume: Volume) -> tuple[str, str, str]:
    """Nibabel-style axis codes of a volume: the RAS letter each of i, j, k increases towards.

    For an oblique grid, each voxel axis gets its closest world axis (largest
    direction cosine first, each world axis used once).
    """
    cosines = np.abs(volume.ijk_to_ras[:3, :3] / volume.spacing_mm)  # [world, voxel]
    codes = [""] * 3
    for _ in range(3):
        world, voxel = np.unravel_index(np.argmax(cosines), cosines.shape)
        sign = volume.ijk_to_ras[world, voxel]
        codes[voxel] = _POSITIVE[world] if sign > 0 else _NEGATIVE[world]
        cosines[world, :] = -1.0
        cosines[:, voxel] = -1.0
    return tuple(codes)


def _opposite(code: str) -> str:
    return _NEGATIVE[_POSITIVE.index(code)] if code in _POSITIVE else _POSITIVE[_NEGATIVE.index(code)]


def _file_to_volume_ijk(points: np.ndarray, file_codes: tuple[str, ...], volume: Volume, path) -> np.ndarray:
    """(N, 3) voxel coordinates along the file's axes -> along the volume's i, j, k.

    Same axes in another order are permuted; a reversed axis maps x -> (n - 1) - x
    (voxel centres at 0..n-1).
    """
    volume_codes = axis_codes(volume)
    sizes = volume.shape_ijk
    ijk = np.empty_like(points)
    for file_axis, code in enumerate(file_codes):
        if code in volume_codes:
            axis = volume_codes.index(code)
            ijk[:, axis] = points[:, file_axis]
        elif _opposite(code) in volume_codes:
            axis = volume_codes.index(_opposite(code))
            ijk[:, axis] = (sizes[axis] - 1) - points[:, file_axis]
        else:
            raise InputError(
                f"{path}: direction {list(file_codes)} does not match the volume's axes {list(volume_codes)}"
            )
    return ijk


def _parse_direction(entries: list, path) -> tuple[str, str, str]:
    directions = [e["direction"] for e in entries if isinstance(e, dict) and "direction" in e]
    if not directions:
        raise InputError(f"{path}: no {{'direction': [...]}} entry; a VerSe ctd file starts with the axis codes")
    codes = tuple(str(c).upper() for c in directions[0])
    axes = sorted((_POSITIVE + _NEGATIVE).index(c) % 3 for c in codes if c in _POSITIVE + _NEGATIVE)
    if len(codes) != 3 or axes != [0, 1, 2]:
        raise InputError(f"{path}: direction {list(directions[0])} must be 3 distinct axis codes from R/L, A/P, S/I")
    return codes


def read_centroids(path: str | os.PathLike, volume: Volume) -> dict[str, np.ndarray]:
    """Read a VerSe ctd JSON -> {vertebra name: (3,) RAS mm}, cranial -> caudal.

    volume: the image the file's voxel coordinates refer to (the CT or its labelmap).
    """
    entries = read_json(path, _WHAT)
    if not isinstance(entries, list):
        raise InputError(f"{path} is not a {_WHAT} file: expected a list of entries, got {type(entries).__name__}")
    file_codes = _parse_direction(entries, path)
    names, points = [], []
    for entry in entries:
        if not isinstance(entry, dict) or "label" not in entry:
            continue
        try:
            label, point = int(entry["label"]), [float(entry[axis]) for axis in "XYZ"]
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: centroid entry {entry} needs an integer 'label' and numbers X, Y, Z") from None
        if label in _VERSE.name_of and not any(math.isnan(v) for v in point):
            names.append(_VERSE.name_of[label])
            points.append(point)
    if not names:
        return {}
    ras = volume.ijk_to_ras_points(_file_to_volume_ijk(np.array(points), file_codes, volume, path))
    by_name = dict(zip(names, ras))
    return {name: by_name[name] for name in sort_vertebrae(by_name)}


def write_centroids(
    centroids_ras: Mapping[str, np.ndarray], path: str | os.PathLike, volume: Volume, decimals: int = 3
) -> None:
    """Write {vertebra name: (3,) RAS mm} as a VerSe ctd JSON in ``volume``'s voxel coordinates.

    Labels are VerSe's; coordinates are rounded to ``decimals`` voxels.
    """
    entries: list[dict] = [{"direction": list(axis_codes(volume))}]
    canonical = {}
    for name, point in centroids_ras.items():
        vertebra = canonical_name(name)
        if vertebra is None:
            raise InputError(f"cannot write centroid {name!r}: not a vertebra name")
        canonical[vertebra] = np.asarray(point, dtype=np.float64)
    for vertebra in sort_vertebrae(canonical):
        ijk = volume.ras_to_ijk_points(canonical[vertebra])
        entry = {"label": _VERSE.label_of[vertebra]}
        entry |= {axis: round(float(value), decimals) for axis, value in zip("XYZ", ijk)}
        entries.append(entry)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(entries, handle)
    except OSError as error:
        raise InputError(f"cannot write centroids {path}: {error.strerror}") from None
