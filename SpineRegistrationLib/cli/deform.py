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
                       "(default: the spacing)")
    poses.add_argument("--xray", action="append", metavar="IMAGE", default=suppress,
                       help="an X-ray the result was registered to (repeat per view, with --geometry): the poses "
                       "of the registered vertebrae are then refined jointly against the X-rays first, and "
                       "drr_<VIEW>.nrrd is written at the final poses")
    poses.add_argument("--geometry", action="append", metavar="G.json", default=suppress,
                       help="the matching X-ray's spinereg-xray-geometry JSON (or 'dicom'); repeat per view")
    poses.add_argument("--invert", action="store_true", help="the X-rays are stored bone-dark")
    poses.add_argument("--device", default="cpu", help="torch device of the refinement: cpu, cuda or auto")
    _add_pair_arguments(parser)
    common = parser.add_argument_group("common")
    common.add_argument("--label-scheme", default="auto", choices=SCHEME_CHOICES,
                        help="label numbering of the segmentations (auto: from segment names or label values)")
    common.add_argument("--out", required=True, metavar="DIR", default=suppress,
                        help="output folder (created; must be new or empty unless --overwrite)")
    common.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder (only once complete)")
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
                                    invert=args.invert, device=args.device,
                                    progress=lambda stage: print(f"deform: {stage}", file=sys.stderr, flush=True))
        paths = write_deform_folder(staging, output.field, output.warped, output.document, output.drrs)
    document = output.document
    jacobian = document["jacobian"]
    worst = max((v["rigid_residual"]["p99_mm"] for v in document["vertebrae"].values() if v["rigid_residual"]),
                default=0.0)
    inferred = [name for name, v in document["vertebrae"].items() if not v["registered"]]
    print(f"{len(document['vertebrae'])} vertebrae ({len(inferred)} followed their neighbours"
          f"{': ' + ', '.join(inferred) if inferred else ''}); Jacobian determinant {jacobian['min']:.3f}.."
          f"{jacobian['max']:.3f}, folding {jacobian['folding_percent']:.4f} %, SDlogJ {jacobian['sdlogj']:.3f}; "
          f"rigid residual p99 <= {worst:.3f} mm")
    refined = [(name, v["refinement"]) for name, v in document["vertebrae"].items() if "refinement" in v]
    if refined:
        print("refined against the X-rays: " + ", ".join(
            f"{name} {r['similarity_before']:.3f} -> {r['similarity_after']:.3f} ({r['rotation_deg']:.2f} deg, "
            f"{r['centre_shift_mm']:.2f} mm)" for name, r in refined))
    print(f"wrote {args.out}: {', '.join(path.name for path in paths.values())} ({document['time_s']:.1f} s)")
    return 0


def _run_pair(args: argparse.Namespace) -> int:
    """CT-to-CT mode (3D/3D registration, then the learned deformable network)."""
    from ..errors import InputError

    raise InputError("CT-to-CT deformation (--fixed/--moving) is not available in this version yet")
