"""Does the pose network read X-rays taken from the other side? ``learned`` alone on phantom cases
whose frontal view is AP or PA and whose lateral comes from the left or the right.

Cases: :func:`SpineRegistrationLib.evaluation.iter_cases` on the default phantom (our simulator),
three sets of the same draws but for the C-arm: the default (one side each), flipped detectors with
offset principal points (which the patches undo exactly), and views from either side at random.
Reports the median mTRE per set and, in the last, per side (the side where the frontal and the
lateral sources are, relative to the vertebra: +y anterior, +x the patient's left), beside the
median of the same cases (same poses) seen from the default C-arm: the sides' groups hold
different poses, so only that pairing tells the side's effect from the starts'.

Usage::

    python Testing/benchmarks/bench_learned_sides.py --out Testing/benchmarks/results [--model MODEL.pt]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from SpineRegistrationLib.evaluation import EvalConfig, iter_cases, iter_run_method, learned_method  # noqa: E402
from SpineRegistrationLib.io.labelmaps import Labelmap  # noqa: E402
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom  # noqa: E402


def side_of(case) -> str:
    """Where the frontal and the lateral sources are, relative to the vertebra at its true pose."""
    center = case.matrix_true[:3, :3] @ case.center_ras + case.matrix_true[:3, 3]
    frontal, lateral = (np.asarray(g.source) for g in case.geometries[:2])
    return f"frontal source {'+y' if frontal[1] > center[1] else '-y'}, lateral source {'+x' if lateral[0] > center[0] else '-x'}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--model", help="pose-network file (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    phantom = generate_phantom(PhantomConfig())
    labelmap = Labelmap(phantom.labels, "verse")
    base = EvalConfig(cases=args.cases)
    sets = {"default C-arm": base,
            "flipped detectors, principal points +-20 mm": dataclasses.replace(base, flip_detector=True, principal_offset_mm=20.0),
            "either side": dataclasses.replace(base, either_side=True)}
    rows = ["| cases | views | count | median start mTRE (mm) | median mTRE (mm) | the same cases from the default C-arm (mm) "
            "| success < 2 mm |", "|---|---|---|---|---|---|---|"]
    summary, default_errors = {}, None
    for name, config in sets.items():
        cases = list(iter_cases(phantom.ct, labelmap, config=config))
        records = list(iter_run_method(cases, learned_method("cpu", model=args.model), "learned"))
        errors = np.array([r["mtre_mm"] for r in records])
        starts = np.array([r["initial_mtre_mm"] for r in records])
        default_errors = errors if default_errors is None else default_errors  # the sets share their poses
        groups = {"all": np.ones(len(cases), bool)}
        for index, case in enumerate(cases):
            groups.setdefault(side_of(case), np.zeros(len(cases), bool))[index] = True
        for group, chosen in groups.items():
            entry = {"count": int(chosen.sum()), "median_start_mtre_mm": float(np.median(starts[chosen])),
                     "median_mtre_mm": float(np.median(errors[chosen])),
                     "default_carm_median_mtre_mm": float(np.median(default_errors[chosen])),
                     "success": float(np.mean(errors[chosen] < 2.0))}
            summary[f"{name} | {group}"] = entry
            rows.append(f"| {name} | {group} | {entry['count']} | {entry['median_start_mtre_mm']:.1f} | "
                        f"{entry['median_mtre_mm']:.1f} | {entry['default_carm_median_mtre_mm']:.1f} | "
                        f"{100 * entry['success']:.0f} % |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learned_sides.md").write_text("\n".join(rows) + "\n")
    (args.out / "learned_sides.json").write_text(json.dumps({"cases": args.cases, "model": args.model or "shipped",
                                                             "summary": summary}, indent=1))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
