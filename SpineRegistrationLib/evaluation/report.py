"""The evaluation report: the headline table, ``results.json`` and ``plot.png``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..errors import InputError
from .cases import EvalConfig
from .scoring import SUCCESS_MM

#: Format tag and version of results.json.
RESULTS_FORMAT = "spinereg-evaluation"
RESULTS_VERSION = 1


def format_table(summaries: dict[str, dict], markdown: bool = False) -> str:
    """The headline table: method, cases, success@2mm, median and p90 mTRE, median rotation and
    translation errors, median DRR renders and time per vertebra."""
    header = ("method", "cases", "success <2mm", "median mTRE (mm)", "p90 mTRE (mm)", "median rot (deg)",
              "median trans (mm)", "median renders", "median time (s)")
    rows = []
    for name, s in summaries.items():
        rows.append((
            name,
            str(s["cases"]),
            _fmt(s["success"].get(f"<{SUCCESS_MM:g}mm"), percent=True),
            _fmt(s["mtre_mm"]["median"]),
            _fmt(s["mtre_mm"]["p90"]),
            _fmt(s["rotation_error_deg"]["median"]),
            _fmt(s["translation_error_mm"]["median"]),
            _fmt((s.get("evaluations") or {}).get("median"), digits=0),
            _fmt(s["time_s"]["median"], digits=1),
        ))
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in (header, *rows))


def _fmt(value, digits: int = 2, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-" if value is None else ("inf" if value > 0 else "nan")
    return f"{100 * value:.0f}%" if percent else f"{value:.{digits}f}"


def _json_ready(value):
    """numpy -> Python, non-finite floats -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_report(
    directory: str | Path,
    summaries: dict[str, dict],
    records: Sequence[dict],
    config: EvalConfig | dict | None = None,
    metadata: dict | None = None,
) -> dict[str, Path]:
    """Write ``results.json`` and ``plot.png`` into an existing ``directory``.

    results.json (format ``spinereg-evaluation``, version 1): software version, the
    config, ``metadata`` (anything else worth keeping: inputs, device, threads), the
    summaries by method and every record. plot.png: the mTRE CDF, the capture range and
    the time per vertebra of each method. Non-finite numbers are written as null.
    Returns {"results": path, "plot": path}.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"report folder does not exist: {directory}")
    config_dict = asdict(config) if isinstance(config, EvalConfig) else config
    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "software": f"SpineRegistration {__version__}",
        "success_mm": SUCCESS_MM,
        "config": config_dict,
        "metadata": metadata or {},
        "summaries": summaries,
        "records": list(records),
    }
    paths = {"results": directory / "results.json", "plot": directory / "plot.png"}
    paths["results"].write_text(json.dumps(_json_ready(results), indent=2, allow_nan=False) + "\n")
    plot_report(summaries, records, paths["plot"])
    return paths


def plot_report(summaries: dict[str, dict], records: Sequence[dict], path: str | Path) -> Path:
    """Three panels: mTRE CDF, success rate by initial-mTRE bin, time per vertebra (one colour per method).

    Uses matplotlib's object API (no pyplot, no global backend change); matplotlib is
    imported here so the library does not need it until a report is written.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError as error:
        raise InputError("writing the evaluation plot needs matplotlib: pip install matplotlib") from error
    names = list(summaries)
    colors = {name: f"C{index}" for index, name in enumerate(names)}
    figure = Figure(figsize=(15, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    cdf, capture, timing = figure.subplots(1, 3)

    for name in names:
        mtre = np.sort([r["mtre_mm"] for r in records if r["method"] == name])
        if mtre.size == 0:
            continue
        shown = np.clip(np.where(np.isfinite(mtre), mtre, 1e3), 1e-2, 1e3)
        fraction = np.arange(1, mtre.size + 1) / mtre.size
        cdf.step(np.concatenate([[1e-2], shown]), np.concatenate([[0.0], fraction]), where="post",
                 color=colors[name], label=f"{name} (n={mtre.size})")
    cdf.axvline(SUCCESS_MM, color="0.4", linestyle="--", linewidth=1)
    cdf.set(xscale="log", xlim=(1e-2, 1e2), ylim=(0, 1.02), xlabel="mTRE (mm)", ylabel="fraction of cases",
            title="mTRE (cumulative)")
    cdf.legend(loc="lower right", fontsize=8)

    labels, counts = [], None
    for offset, name in enumerate(names):
        bins = summaries[name]["capture_range"]["bins"]
        labels = [f"{b['low_mm']:g}-{b['high_mm']:g}" if b["high_mm"] is not None else f"≥{b['low_mm']:g}"
                  for b in bins]
        counts = counts or [b["count"] for b in bins]
        rates = [b["success_rate"] if b["success_rate"] is not None else np.nan for b in bins]
        positions = np.arange(len(bins)) + 0.06 * (offset - (len(names) - 1) / 2)  # keep ties visible
        capture.plot(positions, rates, "o-", color=colors[name], label=name, markersize=5)
    if labels:
        capture.set_xticks(np.arange(len(labels)), [f"{label}\nn={n}" for label, n in zip(labels, counts)],
                           fontsize=7)
    capture.set(ylim=(-0.03, 1.05), xlabel="initial mTRE (mm); n = cases of the first method",
                ylabel=f"success rate (mTRE < {SUCCESS_MM:g} mm)", title="capture range")
    capture.legend(loc="lower left", fontsize=8)

    times = [[r["time_s"] for r in records if r["method"] == name and r["time_s"] is not None
              and math.isfinite(r["time_s"])] for name in names]
    shown_names = [name for name, t in zip(names, times) if t]
    if shown_names:
        boxes = timing.boxplot([t for t in times if t], patch_artist=True)
        for box, name in zip(boxes["boxes"], shown_names):
            box.set_facecolor(colors[name])
            box.set_alpha(0.6)
        timing.set_xticks(np.arange(1, len(shown_names) + 1), shown_names, fontsize=8, rotation=15)
    timing.set(ylabel="seconds per vertebra", title="time per vertebra")
    timing.set_ylim(bottom=0)
    cdf.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    figure.savefig(path, dpi=110)
    return Path(path)
