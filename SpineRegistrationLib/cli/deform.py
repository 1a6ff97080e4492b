"""``spinereg deform``: the spine-wide deformation, from vertebra poses or from CT to CT.

Examples::

    spinereg deform --result result/ --ct ct.nii.gz --seg seg.nii.gz --out deformed/
    spinereg deform --fixed ct_or.nii.gz --moving ct_pre.nii.gz --moving-seg seg.nii.gz --out deformed/

Both write the folder of :mod:`SpineRegistrationLib.io.deform_folder` (which appears only once
complete): displacement.h5, warped_seg.nii.gz / .seg.nrrd and deform.json.
"""

from __future__ import annotations

import argparse

from ..core.labels import SCHEME_CHOICES
from .options import add_output_folder

DESCRIPTION = (
    "Turn per-vertebra rigid poses (--result, a 'spinereg register' folder) or a second CT (--fixed/--moving) "
    "into one dense deformation. Writes to DIR (which appears only once complete): displacement.h5 (ITK "
    "displacement-field transform, world -> CT resampling direction; Slicer loads it as a grid transform: make "
    "it the CT's parent), warped_seg.nii.gz and warped_seg.seg.nrrd (the segmentation moved by it, on the CT's "
    "grid), drr_<VIEW>.nrrd when X-rays are given (the poses are then refined against them jointly first) and "
    "deform.json (format spinereg-deform: the field's grid, Jacobian determinant statistics, per-vertebra figures, "
    "time). Exit status 0 on success, 2 for bad input."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "deform",
        help="dense deformation from vertebra poses (--result) or from CT to CT (--fixed/--moving)",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    suppress = argparse.SUPPRESS
    poses = parser.add_argument_group("from vertebra poses (2D/3D: after 'spinereg register')")
    poses.add_argument("--result", metavar="DIR", default=suppress,
                       help="result folder of 'spinereg register' (its per-vertebra poses)")
    poses.add_argument("--ct", metavar="CT", default=suppress, help="the CT the result was registered from")
    poses.add_argument("--seg", metavar="SEG", default=suppress,
                       help="its vertebra labelmap or .seg.nrrd (the vertebrae without a pose follow their "
                       "registered neighbours)")
    poses.add_argument("--spacing", type=float, default=2.0, metavar="MM",
                       help="grid spacing of the displacement field (mm); the field covers the CT")
    poses.add_argument("--rigid-margin", type=float, default=None, metavar="MM",
                       help="how far beyond each moved vertebra the field stays exactly rigid "
                       "(default: a grid cell's diagonal, the spacing x 1.73; at most a third of the gap "
                       "to the next vertebra)")
    poses.add_argument("--xray", action="append", metavar="IMAGE", default=suppress,
                       help="an X-ray the result was registered to (repeat per view, with --geometry): the poses "
                       "of the registered vertebrae are then refined jointly against the X-rays first, and "
                       "drr_<VIEW>.nrrd is written at the final poses")
    poses.add_argument("--geometry", action="append", metavar="G.json", default=suppress,
                       help="the matching X-ray's spinereg-xray-geometry JSON (or 'dicom'); repeat per view")
    poses.add_argument("--invert", action="store_true", help="the X-rays are stored bone-dark")
    poses.add_argument("--no-refine", action="store_true",
                       help="with --xray: keep the result's poses as they are, only write the DRRs")
    poses.add_argument("--keep-doubted", action="store_true",
                       help="use the poses of the vertebrae whose registration said doubt as they are (by default "
                       "they follow their neighbours, and with --xray the refinement starts them there)")
    poses.add_argument("--device", default="cpu", help="torch device of the refinement and of the CT-to-CT network: cpu, cuda or auto (cuda when available)")
    _add_pair_arguments(parser)
    common = parser.add_argument_group("common")
    common.add_argument("--label-scheme", default="auto", choices=SCHEME_CHOICES,
                        help="label numbering of the segmentations (auto: from segment names or label values)")
    add_output_folder(common)
    parser.set_defaults(func=run)
    return parser


def _add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    """The CT-to-CT mode's options."""
    suppress = argparse.SUPPRESS
    pair = parser.add_argument_group("CT to CT (3D/3D)")
    pair.add_argument("--fixed", metavar="CT", default=suppress, help="the CT that stays (world)")
    pair.add_argument("--moving", metavar="CT", default=suppress, help="the CT that is deformed onto --fixed")
    pair.add_argument("--fixed-seg", metavar="SEG", default=suppress, help="vertebra labelmap of --fixed (optional)")
    pair.add_argument("--moving-seg", metavar="SEG", default=suppress,
                      help="vertebra labelmap of --moving (optional; warped onto --fixed)")
    pair.add_argument("--model", metavar="MODEL.pt", default=None,
                      help="deformable model file ('spinereg train-deform'; default: the shipped one)")
    pair.add_argument("--transform", default="rigid", choices=("rigid", "affine_noscale", "affine"),
                      help="the linear stage before the deformable one (affine_noscale keeps volumes)")
    pair.add_argument("--similarity", default="ncc", choices=("mse", "ncc", "lncc", "mi", "mind"),
                      help="similarity of the linear stage (mi/mind for different scanners or contrast)")
    pair.add_argument("--rigid-start", default="iterative", choices=("iterative", "learned", "learned+iterative"),
                      help="how the linear stage starts: iterative from the identity, the learned rigid keypoint network "
                           "alone (one forward pass, fast, about 1-2 mm), or the keypoint network's pose refined iteratively; a "
                           "learned pose under which the CTs agree less than at the identity is refused and the "
                           "iterative stage runs")
    pair.add_argument("--rigid-model", metavar="MODEL.pt", default=None,
                      help="rigid keypoint network ('spinereg train-deform --network rigid'; default: the shipped one)")
    pair.add_argument("--articulated", action="store_true",
                      help="after the linear stage (its coarsest level), register every vertebra of --moving-seg "
                           "rigidly on its own voxels (all in one batch) and blend the poses poly-rigidly (rigid "
                           "inside each vertebra, smooth between), then refine that field near the bone "
                           "(--refine-steps); the deformable network refines it further only when --model or "
                           "--instance-steps is given")
    pair.add_argument("--refine-steps", type=int, default=20, metavar="N",
                      help="with --articulated: Adam steps of the free-form refinement near the bone (a smooth "
                           "displacement before the poly-rigid field, fitted to the CTs' intensities at random points "
                           "around the vertebrae; 0: the poly-rigid blend alone; default: %(default)s)")
    pair.add_argument("--linear-only", action="store_true", help="stop after the linear stage (no network)")
    pair.add_argument("--instance-steps", type=int, default=0, metavar="N",
                      help="test-time optimisation steps of the network's field (LNCC + bending; 0: off)")
    pair.add_argument("--margin", type=float, default=20.0, metavar="MM",
                      help="the field covers --fixed-seg's box grown by this (the whole --fixed without it)")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError

    by_poses = [name for name in ("result", "ct", "seg", "xray", "geometry") if hasattr(args, name)]
    by_pair = [name for name in ("fixed", "moving", "fixed_seg", "moving_seg") if hasattr(args, name)]
    if by_poses and by_pair:
        raise InputError("give either --result/--ct/--seg (from vertebra poses) or --fixed/--moving (CT to CT), not both")
    if by_pair:
        return _run_pair(args)
    missing = [f"--{name}" for name in ("result", "ct", "seg") if name not in by_poses]
    if missing:
        raise InputError(f"deform from vertebra poses needs {', '.join(missing)} (or use --fixed/--moving)")
    return _run_poses(args)


def _run_poses(args: argparse.Namespace) -> int:
    import sys

    from ..deform.polyrigid import PolyRigidConfig
    from ..io.atomic import staged_output_dir
    from ..io.deform_folder import write_deform_folder
    from ..pipeline.deform import deform_from_result

    config = PolyRigidConfig(spacing_mm=args.spacing, rigid_margin_mm=args.rigid_margin)
    with staged_output_dir(args.out, args.overwrite) as staging:
        output = deform_from_result(args.result, args.ct, args.seg, args.label_scheme, config,
                                    xrays=getattr(args, "xray", ()), geometries=getattr(args, "geometry", ()),
                                    invert=args.invert, refine_poses=not args.no_refine, device=args.device,
                                    keep_doubted=args.keep_doubted, progress=lambda stage: print(f"deform: {stage}", file=sys.stderr, flush=True))
        paths = write_deform_folder(staging, output.field, output.warped, output.document, output.drrs)
    document = output.document
    jacobian = document["jacobian"]
    worst = max((v["rigid_residual"]["p99_mm"] for v in document["vertebrae"].values() if v["rigid_residual"]),
                default=0.0)
    inferred = [name for name, v in document["vertebrae"].items() if not v["registered"]]
    doubted = [name for name, v in document["vertebrae"].items() if v["doubted"]]
    if doubted:
        start = "the refinement started from their neighbours" if document["refined"] else "they followed their neighbours"
        print(f"not trusted, their registration said doubt: {', '.join(doubted)} ({start}; --keep-doubted uses "
              "their poses)", file=sys.stderr)
    print(f"{len(document['vertebrae'])} vertebrae ({len(inferred)} followed their neighbours"
          f"{': ' + ', '.join(inferred) if inferred else ''}); Jacobian determinant {jacobian['min']:.3f}.."
          f"{jacobian['max']:.3f}, folding {jacobian['folding_percent']:.4f} %, SDlogJ {jacobian['sdlogj']:.3f}; "
          f"rigid residual p99 <= {worst:.3f} mm")
    if document.get("held"):
        print(f"held as registered (passed, refined by the intensity stages): {', '.join(document['held'])}")
    refined = [(name, v["refinement"]) for name, v in document["vertebrae"].items() if "refinement" in v]
    if refined:
        print("refined against the X-rays: " + ", ".join(
            f"{name} {r['similarity_before']:.3f} -> {r['similarity_after']:.3f} ({r['rotation_deg']:.2f} deg, "
            f"{r['centre_shift_mm']:.2f} mm)" for name, r in refined))
    print(f"wrote {args.out}: {', '.join(path.name for path in paths.values())} ({document['time_s']:.1f} s)")
    return 0


def _run_pair(args: argparse.Namespace) -> int:
    """CT-to-CT mode (3D/3D registration, then the learned deformable network)."""
    import sys
    import time
    from pathlib import Path

    from ..core.metrics import dice_per_label, hd95_mm
    from ..deform.affine import AffineConfig
    from ..deform.ct_pair import PairConfig, register_ct_pair, warp_labelmap
    from ..core.displacement import jacobian_stats
    from ..errors import InputError
    from ..io import read_labelmap, read_volume
    from ..io.atomic import staged_output_dir
    from ..io.deform_folder import write_deform_folder
    from ..methods import resolve_device
    import numpy as np

    missing = [f"--{name}" for name in ("fixed", "moving") if not hasattr(args, name)]
    if missing:
        raise InputError(f"deform from CT to CT needs {' and '.join(missing)}")
    for option in ("instance_steps", "refine_steps"):
        if getattr(args, option) < 0:
            raise InputError(f"--{option.replace('_', '-')} must be >= 0, got {getattr(args, option)}")
    if args.articulated and args.linear_only:
        raise InputError("--articulated registers every vertebra after the linear stage: drop --linear-only")
    started = time.perf_counter()
    config = PairConfig(model=None if args.model is None else Path(args.model), deformable=not args.linear_only,
                        affine=AffineConfig(transform=args.transform, similarity=args.similarity),
                        margin_mm=args.margin, instance_steps=args.instance_steps, device=resolve_device(args.device),
                        rigid_start=args.rigid_start, articulated=args.articulated, refine_steps=args.refine_steps,
                        rigid_model=None if args.rigid_model is None else Path(args.rigid_model))
    with staged_output_dir(args.out, args.overwrite) as staging:
        fixed, moving = read_volume(args.fixed), read_volume(args.moving)
        segs = {name: read_labelmap(getattr(args, name), scheme=args.label_scheme) if hasattr(args, name) else None
                for name in ("fixed_seg", "moving_seg")}
        print("deform: registering the CTs", file=sys.stderr, flush=True)
        field, info = register_ct_pair(fixed, moving, segs["fixed_seg"], segs["moving_seg"], config)
        warped = None if segs["moving_seg"] is None else warp_labelmap(segs["moving_seg"], field, fixed)
        vertebrae = {}
        if warped is not None and segs["fixed_seg"] is not None:
            spacing = fixed.spacing_mm
            for name, label in segs["fixed_seg"].labels.items():
                moved_label = warped.labels.get(name)
                truth = segs["fixed_seg"].volume.array == label
                moved = warped.volume.array == moved_label if moved_label is not None else np.zeros_like(truth)
                vertebrae[name] = {"dice": dice_per_label(truth.astype(np.uint8), moved.astype(np.uint8), [1])[1],
                                   "hd95_mm": hd95_mm(truth, moved, spacing)}
        document = {
            "mode": "ct-pair",
            "inputs": {"fixed": str(args.fixed), "moving": str(args.moving),
                       **{name: str(getattr(args, name)) for name in ("fixed_seg", "moving_seg") if hasattr(args, name)}},
            "jacobian": jacobian_stats(field),
            "vertebrae": vertebrae,
            "registration": info,
            "time_s": time.perf_counter() - started,
        }
        paths = write_deform_folder(staging, field, warped, document)
    jacobian = document["jacobian"]
    summary = ""
    if vertebrae:
        dice = [v["dice"] for v in vertebrae.values()]
        summary = f"; Dice per vertebra mean {np.nanmean(dice):.3f} (min {np.nanmin(dice):.3f}, {len(dice)} vertebrae)"
    print(f"Jacobian determinant {jacobian['min']:.3f}..{jacobian['max']:.3f}, folding "
          f"{jacobian['folding_percent']:.4f} %, SDlogJ {jacobian['sdlogj']:.3f}{summary}")
    print(f"wrote {args.out}: {', '.join(path.name for path in paths.values())} ({document['time_s']:.1f} s)")
    return 0
