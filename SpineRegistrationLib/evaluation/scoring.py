"""Scoring registration methods on evaluation cases: one record per case, and the figures a
researcher reports (mTRE, success rates, capture range, verdict agreement, time)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from ..core.metrics import (
    CAPTURE_BINS_MM,
    SUCCESS_THRESHOLDS_MM,
    capture_range,
    mtre_mm,
    rotation_error_deg,
    success_rates,
    translation_error_mm,
    vertebra_points,
)
from .cases import EvalCase
from .methods import Method

#: mTRE (mm) under which a registration counts as a success (the headline threshold).
SUCCESS_MM = 2.0


def iter_run_method(
    cases: Iterable[EvalCase],
    method: Method,
    name: str,
    points: dict[str, np.ndarray] | None = None,
    max_points: int = 5000,
    raise_errors: bool = False,
) -> Iterator[dict]:
    """Yield the record of :func:`run_method` for each case as it finishes."""
    cache: dict[int, tuple] = {}  # id(mask) -> (mask, points): cases share their vertebra's mask array
    for case in cases:
        if points and case.vertebra in points:
            target = points[case.vertebra]
        else:
            mask, target = cache.get(id(case.mask), (None, None))
            if mask is not case.mask:
                target = vertebra_points(case.mask, case.ct, max_points=max_points)
                cache[id(case.mask)] = (case.mask, target)
        record = {
            "method": name,
            "case": case.index,
            "vertebra": case.vertebra,
            "renderer": case.renderer,
            "initial_mtre_mm": mtre_mm(case.matrix_init, case.matrix_true, target),
            "matrix_true": np.asarray(case.matrix_true).tolist(),
        }
        try:
            matrix, time_s, extra = method(case)
        except Exception as error:  # noqa: BLE001 - one failed case must not end the evaluation
            if raise_errors:
                raise
            record.update(mtre_mm=math.inf, rotation_error_deg=math.nan, translation_error_mm=math.nan,
                          time_s=math.nan, matrix_ras=None, verdict=None, similarity=None,
                          error=f"{type(error).__name__}: {' '.join(str(error).split())}")
            yield record
            continue
        matrix = np.asarray(matrix, dtype=np.float64)
        extra = dict(extra or {})
        record.update(
            mtre_mm=mtre_mm(matrix, case.matrix_true, target),
            rotation_error_deg=rotation_error_deg(matrix, case.matrix_true),
            translation_error_mm=translation_error_mm(matrix, case.matrix_true, case.center_ras),
            time_s=float(time_s),
            matrix_ras=matrix.tolist(),
            verdict=extra.pop("verdict", None),
            similarity=extra.pop("similarity", None),
            error=None,
        )
        if extra:
            record["extra"] = extra
        yield record


def run_method(
    cases: Iterable[EvalCase],
    method: Method,
    name: str,
    points: dict[str, np.ndarray] | None = None,
    max_points: int = 5000,
    raise_errors: bool = False,
) -> list[dict]:
    """Run ``method`` on every case and score it: one JSON-ready record per case.

    points: vertebra name -> (N, 3) CT RAS points for the mTRE (default: up to
        ``max_points`` voxel centres of the case's mask, :func:`.metrics.vertebra_points`).
    A method that raises on a case gets a failed record (mTRE infinite, ``error`` set)
    unless ``raise_errors``. Record keys: method, case, vertebra, renderer,
    initial_mtre_mm, mtre_mm, rotation_error_deg, translation_error_mm, time_s,
    matrix_ras, matrix_true, verdict, similarity, error (and ``extra`` when the method
    returned more).
    """
    return list(iter_run_method(cases, method, name, points, max_points, raise_errors))


def _stats(values: Sequence[float], p90: bool = True) -> dict[str, float | None]:
    """median / mean (/ p90) ignoring NaN (no result); an infinite value (a failed run) stays infinite."""
    array = np.asarray(list(values), dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return {"median": None, "mean": None, **({"p90": None} if p90 else {})}
    # Percentiles interpolate: a stand-in for infinity keeps inf - inf out of them.
    big = np.float64(1e300)
    clipped = np.minimum(array, big)

    def back(value: float) -> float:  # interpolating towards a failure gives a failure
        return math.inf if value >= big * 1e-10 else float(value)

    out = {"median": back(np.median(clipped)), "mean": float(np.mean(array))}
    if p90:
        out["p90"] = back(np.percentile(clipped, 90))
    return out


def summarize(
    records: Sequence[dict],
    thresholds: Sequence[float] = SUCCESS_THRESHOLDS_MM,
    bins: Sequence[float] = CAPTURE_BINS_MM,
) -> dict:
    """Aggregate the records of one method (or any set of records) into the reported figures.

    Returns a JSON-ready dict: cases, errors, mtre_mm / rotation_error_deg /
    translation_error_mm / initial_mtre_mm {median, mean, p90}, success {"<1mm": rate, ...},
    capture_range (:func:`.metrics.capture_range` at :data:`SUCCESS_MM`), time_s {median,
    mean}, and verdict_agreement (None unless the method reports verdicts): the fraction
    of failures (mTRE >= 2 mm) flagged "doubt" and of successes flagged "pass".
    Failed runs count as failures with infinite mTRE (rotation/translation errors skip them).
    """
    if not records:
        raise ValueError("summarize needs at least one record")
    methods = sorted({record["method"] for record in records})
    final = [record["mtre_mm"] for record in records]
    initial = [record["initial_mtre_mm"] for record in records]
    success_flags = [math.isfinite(m) and m < SUCCESS_MM for m in final]
    summary = {
        "method": methods[0] if len(methods) == 1 else methods,
        "cases": len(records),
        "errors": sum(record.get("error") is not None for record in records),
        "mtre_mm": _stats(final),
        "success": {f"<{t:g}mm": rate for t, rate in success_rates(final, thresholds).items()},
        "rotation_error_deg": _stats([record["rotation_error_deg"] for record in records]),
        "translation_error_mm": _stats([record["translation_error_mm"] for record in records]),
        "initial_mtre_mm": _stats(initial),
        "capture_range": capture_range(initial, final, bins, threshold=SUCCESS_MM),
        "time_s": _stats([record["time_s"] for record in records], p90=False),
        "verdict_agreement": None,
    }
    # What methods report beside the pose: DRR renders, the network's time, fallbacks.
    extras = [record.get("extra") or {} for record in records]
    for key in ("evaluations", "network_s"):
        if any(key in extra for extra in extras):
            summary[key] = _stats([float(extra.get(key, math.nan)) for extra in extras], p90=False)
    if any("fallback" in extra for extra in extras):
        summary["fallback_rate"] = float(np.mean([bool(extra.get("fallback")) for extra in extras]))
    judged = [(flag, record["verdict"]) for flag, record in zip(success_flags, records)
              if record.get("verdict") in ("pass", "doubt")]
    if judged:
        failures = [verdict for flag, verdict in judged if not flag]
        successes = [verdict for flag, verdict in judged if flag]
        summary["verdict_agreement"] = {
            "failures": len(failures),
            "failures_flagged_doubt": (failures.count("doubt") / len(failures)) if failures else None,
            "successes": len(successes),
            "successes_flagged_pass": (successes.count("pass") / len(successes)) if successes else None,
        }
    return summary


def summarize_by_method(records: Sequence[dict]) -> dict[str, dict]:
    """{method: :func:`summarize` of its records}, in the order the methods first appear."""
    names = list(dict.fromkeys(record["method"] for record in records))
    return {name: summarize([r for r in records if r["method"] == name]) for name in names}
