"""The result folder of ``spinereg register`` (format ``spinereg-result``, version 1; DESIGN.md).

The one home of its schema: the library writes it (:func:`write_result_folder`) and the
Slicer module reads it back (:func:`read_result_folder`). A folder holds

- ``result.json``: per vertebra ``matrix_ras`` (4x4, CT RAS -> world RAS), ``params``
  (rx/ry/rz deg, tx/ty/tz mm about ``center_ras``, the vertebra centroid in CT RAS mm),
  final ``similarity``, ``verdict`` ("pass" or "doubt") with ``verdict_reason`` and
  ``rival_margin``, ``time_s``, ``evaluations``; plus the inputs, the views, the method
  and the total time (the document itself is the pipeline's);
- ``<vertebra>.h5``: one ITK transform per vertebra, which Slicer loads as ``matrix_ras``;
- ``drr_<VIEW>.nrrd``: per X-ray, the sum of the registered vertebrae's DRRs (float32
  optical depth), the X-ray's size, for overlays.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .jsonfile import read_json
from .transforms import write_transform
from .xray import write_xray

RESULT_FILE = "result.json"
RESULT_FORMAT = "spinereg-result"
RESULT_VERSION = 1
#: Names of the 6 pose parameters in JSON files (degrees, then mm).
PARAM_KEYS = ("rx_deg", "ry_deg", "rz_deg", "tx_mm", "ty_mm", "tz_mm")


def params_to_json(params, digits: int | None = None) -> dict[str, float]:
    """(6,) pose parameters -> the named form of every JSON file ({"rx_deg": ..., "tz_mm": ...}),
    rounded to ``digits`` decimals when given."""
    values = [float(value) for value in params]
    return {key: value if digits is None else round(value, digits) for key, value in zip(PARAM_KEYS, values)}


@dataclass
class VertebraResult:
    """Registration result of one vertebra.

    matrix_ras: (4, 4) CT RAS -> world. params: (rx, ry, rz deg, tx, ty, tz mm) about
    center_ras (the vertebra centroid, CT RAS mm). similarity: final objective in [-1, 1].
    verdict: "pass" or "doubt"; verdict_reason: why "doubt" (None for "pass"). time_s:
    wall time. evaluations: DRR renders used. rival_margin: similarity lead over the best
    candidate at another place (typically the neighbouring vertebra level), None when the
    search kept no rival. view_similarities: each view's similarity at the result (their mean is
    ``similarity``; None where not measured). optimiser_similarity: the refinement's own best
    score at the finest level (the verdict's second reading; None where not known). level_margin:
    the similarity's lead over the same pose moved towards the neighbouring levels
    (:func:`..rigid.verdict.level_margin`; None where not read). vertebra_evidence: how much of the
    X-rays' edges the vertebra alone explains at the result (:func:`..rigid.verdict.vertebra_evidence`;
    read only where it could change the verdict, None elsewhere). stages: what each stage did
    (JSON-ready dicts).
    """

    name: str
    matrix_ras: np.ndarray
    params: np.ndarray
    center_ras: np.ndarray
    similarity: float
    verdict: str
    time_s: float
    evaluations: int
    rival_margin: float | None = None
    verdict_reason: str | None = None
    view_similarities: list[float] | None = None
    optimiser_similarity: float | None = None
    level_margin: float | None = None
    vertebra_evidence: float | None = None
    stages: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        """The vertebra's entry in result.json."""
        return {
            "matrix_ras": np.asarray(self.matrix_ras, dtype=float).tolist(),
            "params": params_to_json(self.params),
            "center_ras": np.asarray(self.center_ras, dtype=float).tolist(),
            "similarity": float(self.similarity),
            "verdict": self.verdict,
            "verdict_reason": self.verdict_reason,
            "rival_margin": None if self.rival_margin is None else float(self.rival_margin),
            "view_similarities": self.view_similarities,
            "optimiser_similarity": self.optimiser_similarity,
            "level_margin": self.level_margin,
            "vertebra_evidence": self.vertebra_evidence,
            "time_s": round(float(self.time_s), 3),
            "evaluations": int(self.evaluations),
            "stages": self.stages,
        }

    @classmethod
    def from_json(cls, name: str, entry: dict, where: str = RESULT_FILE) -> VertebraResult:
        """The inverse of :meth:`to_json`; InputError naming ``where`` for a malformed entry."""
        try:
            matrix = np.asarray(entry["matrix_ras"], dtype=np.float64)
            result = cls(
                name=name,
                matrix_ras=matrix,
                params=np.array([entry["params"][key] for key in PARAM_KEYS], dtype=np.float64),
                center_ras=np.asarray(entry["center_ras"], dtype=np.float64),
                similarity=float(entry["similarity"]),
                verdict=str(entry["verdict"]),
                time_s=float(entry["time_s"]),
                evaluations=int(entry.get("evaluations", 0)),
                rival_margin=None if entry.get("rival_margin") is None else float(entry["rival_margin"]),
                verdict_reason=entry.get("verdict_reason"),
                view_similarities=entry.get("view_similarities"),
                optimiser_similarity=entry.get("optimiser_similarity"),
                level_margin=entry.get("level_margin"),
                vertebra_evidence=entry.get("vertebra_evidence"),
                stages=list(entry.get("stages", [])),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{where}: the entry of {name} is malformed ({type(error).__name__}: {error})") from None
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise InputError(f"{where}: the matrix_ras of {name} is not a finite 4x4 matrix")
        return result


@dataclass
class ResultFolder:
    """A result folder, read and checked: ``document`` is result.json as parsed, ``vertebrae``
    name -> :class:`VertebraResult` (in file order)."""

    directory: Path
    document: dict
    vertebrae: dict[str, VertebraResult]

    def transform_path(self, vertebra: str) -> Path:
        """The vertebra's ITK transform file."""
        return self.directory / transform_name(vertebra)

    def drr_path(self, view: str) -> Path:
        """The view's DRR image file."""
        return self.directory / drr_name(view)


def transform_name(vertebra: str) -> str:
    return f"{vertebra}.h5"


def drr_name(view: str) -> str:
    return f"drr_{view}.nrrd"


def _json_default(value):
    """numpy scalars and arrays (and tuples inside) in result.json."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_result_folder(
    directory: str | os.PathLike, document: dict, results: list[VertebraResult], drrs: dict[str, np.ndarray]
) -> dict[str, Path]:
    """Write a result folder's files into the existing folder ``directory``.

    document: result.json without its header and vertebrae (the caller's inputs, views,
    method ...); results: one per vertebra; drrs: view name -> (rows, columns) image.
    Returns name -> path: ``result`` (result.json), each vertebra name (its .h5) and
    ``drr_<VIEW>`` per view. Staging the folder so that it appears only once complete
    (:func:`.atomic.staged_output_dir`) is the caller's business.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"output folder does not exist: {directory}")
    paths: dict[str, Path] = {}
    for result in results:
        paths[result.name] = directory / transform_name(result.name)
        write_transform(result.matrix_ras, paths[result.name])
    for view, image in drrs.items():
        paths[f"drr_{view}"] = directory / drr_name(view)
        write_xray(image, paths[f"drr_{view}"])
    header = {"format": RESULT_FORMAT, "version": RESULT_VERSION}
    full = {**header, **document, "vertebrae": {result.name: result.to_json() for result in results}}
    paths["result"] = directory / RESULT_FILE
    paths["result"].write_text(json.dumps(full, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return paths


def read_result_folder(directory: str | os.PathLike) -> ResultFolder:
    """Read and check ``result.json`` of a result folder; InputError (one line) for a missing
    file, another format or version, no vertebra, or a malformed entry. The transform and
    DRR files are checked to exist (reading them is the reader's: Slicer reads them itself)."""
    directory = Path(directory)
    path = directory / RESULT_FILE
    data = read_json(path, RESULT_FORMAT)
    if not isinstance(data, dict) or data.get("format") != RESULT_FORMAT or data.get("version") != RESULT_VERSION:
        raise InputError(f"{path} is not a {RESULT_FORMAT} version {RESULT_VERSION} file")
    entries = data.get("vertebrae")
    if not isinstance(entries, dict) or not entries:
        raise InputError(f"{path} holds no vertebra")
    vertebrae = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise InputError(f"{path}: the entry of {name} is not an object")
        vertebrae[name] = VertebraResult.from_json(name, entry, str(path))
    folder = ResultFolder(directory, data, vertebrae)
    for name in vertebrae:
        if not folder.transform_path(name).is_file():
            raise InputError(f"the result folder has no transform file {transform_name(name)}")
    return folder
