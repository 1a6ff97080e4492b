"""Vertebra boxes on X-rays: the ``spinereg-xray-boxes`` JSON (version 1) and its COCO export.

A box is four corners in pixel coordinates (column, row) of the X-ray, pixel centres at whole
numbers (DESIGN.md's convention: pixel (0, 0) is the centre of the first stored pixel), in
order around the box. The file::

    {"format": "spinereg-xray-boxes", "version": 1,
     "xrays": {"AP": [{"vertebra": "L1", "corners_px": [[c, r], x4], "score": 0.93,
                       "accepted": true, "source": "detector"}, ...], "LAT": [...]},
     "images": {"AP": {"file_name": "AP.png", "size": [columns, rows]}}}

``source`` (who made the box: ``detector``, ``projection``, ``manual``...) and ``images``
are optional. When an image's size is known, a box whose centre lies outside the image is
refused (corners may stick out: a vertebra cut by the image's edge).

COCO (cocodataset.org/#format-data, "object detection"): one image per view, one category
per vertebra name (id = position in ``labels.VERTEBRAE`` + 1), each box an annotation whose
``segmentation`` is the four-corner polygon, ``bbox`` its axis-aligned bounds and ``area`` the
polygon's; ``score``, ``accepted``, ``source`` and the image's ``view`` ride along as extra
keys. COCO puts the first pixel's corner at (0, 0), so x = column + 0.5, y = row + 0.5.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.labels import VERTEBRAE, canonical_name
from ..errors import InputError
from ..geometry.image_boxes import polygon_area
from .atomic import write_text_atomic, write_texts_atomic
from .jsonfile import check_format, read_json

BOXES_FORMAT = "spinereg-xray-boxes"
BOXES_VERSION = 1
#: Smallest box area accepted, px^2; smaller boxes are degenerate.
MIN_AREA_PX2 = 1.0
#: COCO's pixel origin is the first pixel's corner, ours its centre.
_COCO_OFFSET = 0.5


@dataclass
class XrayBox:
    """One vertebra's box on one X-ray.

    vertebra: canonical name (``L1``). corners_px: (4, 2) float (column, row), in order around
    the box. score: confidence in [0, 1]. accepted: confirmed by a person (or by the caller).
    source: who made it (``detector``, ``projection``, ``manual``), or None.
    """

    vertebra: str
    corners_px: np.ndarray
    score: float = 1.0
    accepted: bool = False
    source: str | None = None

    def __post_init__(self) -> None:
        self.corners_px = np.asarray(self.corners_px, dtype=np.float64)

    @property
    def center_px(self) -> np.ndarray:
        """(2,) mean of the corners, (column, row)."""
        return self.corners_px.mean(axis=0)


@dataclass(frozen=True)
class XrayImageInfo:
    """An X-ray's file name and size (columns, rows), as the box files record them."""

    file_name: str
    size: tuple[int, int]


def on_image(point_px, size) -> bool:
    """Whether a (column, row) pixel point lies on an image of ``size`` (columns, rows) pixels,
    pixel centres at integers."""
    return bool(-0.5 <= point_px[0] <= size[0] - 0.5 and -0.5 <= point_px[1] <= size[1] - 0.5)


def _checked_box(raw: Any, where: str, size: tuple[int, int] | None) -> XrayBox:
    if not isinstance(raw, Mapping):
        raise InputError(f"{where}: a box must be an object with vertebra and corners_px, got {raw!r}")
    name = canonical_name(str(raw.get("vertebra", "")))
    if name is None:
        raise InputError(f"{where}: unknown vertebra {raw.get('vertebra')!r}; expected one of {VERTEBRAE[0]}..{VERTEBRAE[-1]}")
    try:
        corners = np.asarray(raw.get("corners_px"), dtype=np.float64)
    except (TypeError, ValueError):
        corners = np.zeros(0)
    if corners.shape != (4, 2) or not np.all(np.isfinite(corners)):
        raise InputError(f"{where} ({name}): corners_px must be 4 finite [column, row] pairs, got {raw.get('corners_px')!r}")
    edges = np.roll(corners, -1, axis=0) - corners
    turns = edges[:, 0] * np.roll(edges[:, 1], -1) - edges[:, 1] * np.roll(edges[:, 0], -1)
    if abs(polygon_area(corners)) < MIN_AREA_PX2 or not (np.all(turns > 0) or np.all(turns < 0)):
        raise InputError(f"{where} ({name}): degenerate box (corners not a convex quadrilateral of >= {MIN_AREA_PX2:g} px^2)")
    score = raw.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
        raise InputError(f"{where} ({name}): score must be a number in [0, 1], got {score!r}")
    accepted = raw.get("accepted", False)
    if not isinstance(accepted, bool):
        raise InputError(f"{where} ({name}): accepted must be true or false, got {accepted!r}")
    source = raw.get("source")
    if source is not None and not isinstance(source, str):
        raise InputError(f"{where} ({name}): source must be a string, got {source!r}")
    box = XrayBox(name, corners, float(score), accepted, source)
    if size is not None:
        column, row = box.center_px
        if not on_image(box.center_px, size):
            raise InputError(f"{where} ({name}): box centre ({column:.1f}, {row:.1f}) px lies outside the "
                             f"{size[0]}x{size[1]} image")
    return box


def _checked_size(raw: Any, where: str) -> tuple[int, int]:
    if (not isinstance(raw, (list, tuple)) or len(raw) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in raw)):
        raise InputError(f"{where}: image size must be [columns, rows], whole numbers >= 1, got {raw!r}")
    return int(raw[0]), int(raw[1])


def check_boxes(boxes: Mapping[str, list[XrayBox]], sizes: Mapping[str, tuple[int, int]] | None = None,
                where: str = "boxes") -> dict[str, list[XrayBox]]:
    """The same boxes checked (names canonical, convex, in the image when its size is known); InputError if not."""
    sizes = sizes or {}
    return {str(view): [_checked_box(_box_dict(box), f"{where}: {view} box {n}", sizes.get(view))
                        for n, box in enumerate(view_boxes)]
            for view, view_boxes in boxes.items()}


def _box_dict(box: XrayBox) -> dict[str, Any]:
    d = {"vertebra": box.vertebra, "corners_px": np.asarray(box.corners_px, float).tolist(),
         "score": float(box.score), "accepted": bool(box.accepted)}
    if box.source is not None:
        d["source"] = box.source
    return d


def read_xray_boxes(path: str | os.PathLike, sizes: Mapping[str, tuple[int, int]] | None = None
                    ) -> dict[str, list[XrayBox]]:
    """A ``spinereg-xray-boxes`` file -> {view: [XrayBox]}; InputError (one line) if malformed.

    ``sizes`` ({view: (columns, rows)}) overrides the sizes the file's ``images`` records.
    """
    d = read_json(path, BOXES_FORMAT)
    try:
        check_format(d, BOXES_FORMAT, BOXES_VERSION)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    xrays = d.get("xrays")
    if not isinstance(xrays, dict) or not all(isinstance(v, list) for v in xrays.values()):
        raise InputError(f"{path}: 'xrays' must map each view name to a list of boxes")
    known = dict(_read_images(d.get("images", {}), path)) | dict(sizes or {})
    return {view: [_checked_box(raw, f"{path}: {view} box {n}", known.get(view)) for n, raw in enumerate(raws)]
            for view, raws in xrays.items()}


def _read_images(raw: Any, path) -> dict[str, tuple[int, int]]:
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise InputError(f"{path}: 'images' must map each view name to {{file_name, size}}")
    return {view: _checked_size(info.get("size"), f"{path}: {view}") for view, info in raw.items()}


def write_xray_boxes(path: str | os.PathLike, boxes: Mapping[str, list[XrayBox]],
                     images: Mapping[str, XrayImageInfo] | None = None) -> Path:
    """Write {view: [XrayBox]} (and each view's image, if given) as ``spinereg-xray-boxes`` v1, atomically.

    The boxes are checked first (as :func:`read_xray_boxes` would); InputError writes nothing.
    """
    return write_text_atomic(_boxes_text(path, boxes, images), path)


def _boxes_text(path, boxes: Mapping[str, list[XrayBox]], images: Mapping[str, XrayImageInfo] | None) -> str:
    images = dict(images or {})
    boxes = check_boxes(boxes, {view: info.size for view, info in images.items()}, str(path))
    d: dict[str, Any] = {"format": BOXES_FORMAT, "version": BOXES_VERSION,
                         "xrays": {view: [_box_dict(b) for b in view_boxes] for view, view_boxes in boxes.items()}}
    if images:
        d["images"] = {view: {"file_name": info.file_name, "size": list(info.size)} for view, info in images.items()}
    return json.dumps(d, indent=1) + "\n"


def coco_path(path: str | os.PathLike) -> Path:
    """Where a box file's COCO twin goes: BOXES.json -> BOXES.coco.json (any other name gets .coco.json appended)."""
    path = Path(path)
    name = path.name[: -len(".json")] if path.name.lower().endswith(".json") else path.name
    return path.with_name(name + ".coco.json")


def write_coco(path: str | os.PathLike, boxes: Mapping[str, list[XrayBox]],
               images: Mapping[str, XrayImageInfo]) -> Path:
    """Write {view: [XrayBox]} as a COCO detection file (every view needs its image); atomically."""
    return write_text_atomic(_coco_text(path, boxes, images), path)


def write_boxes_with_coco(path: str | os.PathLike, boxes: Mapping[str, list[XrayBox]],
                          images: Mapping[str, XrayImageInfo]) -> tuple[Path, Path]:
    """Write the boxes file and its COCO twin (:func:`coco_path`) together: both are checked and
    staged before either replaces a previous file, so an error leaves both as they were."""
    twin = coco_path(path)
    texts = {Path(path): _boxes_text(path, boxes, images), twin: _coco_text(twin, boxes, images)}
    write_texts_atomic(texts)
    return Path(path), twin


def _coco_text(path, boxes: Mapping[str, list[XrayBox]], images: Mapping[str, XrayImageInfo]) -> str:
    missing = sorted(set(boxes) - set(images))
    if missing:
        raise InputError(f"{path}: COCO needs the image (file name, size) of view(s) {', '.join(missing)}")
    boxes = check_boxes(boxes, {view: info.size for view, info in images.items()}, str(path))
    coco_images, annotations = [], []
    for image_id, (view, info) in enumerate(images.items(), start=1):
        coco_images.append({"id": image_id, "file_name": info.file_name, "width": info.size[0],
                            "height": info.size[1], "view": view})
        for box in boxes.get(view, []):
            xy = box.corners_px + _COCO_OFFSET
            low, high = xy.min(axis=0), xy.max(axis=0)
            annotation = {"id": len(annotations) + 1, "image_id": image_id,
                          "category_id": VERTEBRAE.index(box.vertebra) + 1,
                          "segmentation": [xy.ravel().tolist()], "bbox": [*low.tolist(), *(high - low).tolist()],
                          "area": abs(polygon_area(xy)), "iscrowd": 0, "score": box.score, "accepted": box.accepted}
            if box.source is not None:
                annotation["source"] = box.source
            annotations.append(annotation)
    d = {"info": {"description": f"vertebra boxes ({BOXES_FORMAT} v{BOXES_VERSION} export)"},
         "images": coco_images, "annotations": annotations,
         "categories": [{"id": n + 1, "name": name, "supercategory": "vertebra"} for n, name in enumerate(VERTEBRAE)]}
    return json.dumps(d) + "\n"


def read_coco(path: str | os.PathLike) -> tuple[dict[str, list[XrayBox]], dict[str, XrayImageInfo]]:
    """A COCO detection file -> ({view: [XrayBox]}, {view: XrayImageInfo}); InputError (one line) if malformed.

    An image's view is its ``view`` key, else its file name without extension. Each annotation
    needs a 4-point ``segmentation`` polygon (an oriented box); a category name is the vertebra.
    """
    d = read_json(path, "COCO")
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations", "categories")):
        raise InputError(f"{path}: not a COCO detection file (images, annotations and categories lists expected)")
    try:
        names = {c["id"]: c["name"] for c in d["categories"]}
        views, images = {}, {}
        for image in d["images"]:
            view = str(image.get("view") or Path(str(image["file_name"])).name.split(".")[0])
            views[image["id"]] = view
            images[view] = XrayImageInfo(str(image["file_name"]),
                                         _checked_size([image["width"], image["height"]], f"{path}: image {view}"))
        boxes: dict[str, list[dict]] = {view: [] for view in images}
        for annotation in d["annotations"]:
            polygon = annotation["segmentation"][0]
            corners = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) - _COCO_OFFSET
            boxes[views[annotation["image_id"]]].append(
                {"vertebra": names[annotation["category_id"]], "corners_px": corners.tolist(),
                 "score": annotation.get("score", 1.0), "accepted": annotation.get("accepted", False),
                 "source": annotation.get("source")})
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise InputError(f"{path}: malformed COCO entry ({type(error).__name__}: {error})") from None
    return ({view: [_checked_box(raw, f"{path}: {view} box {n}", images[view].size) for n, raw in enumerate(raws)]
             for view, raws in boxes.items()}, images)
