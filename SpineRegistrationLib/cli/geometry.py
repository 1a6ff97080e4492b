"""``spinereg geometry``: write an X-ray geometry sidecar (JSON) from a C-arm preset or DICOM tags.

Examples::

    spinereg geometry --preset AP --out ap.json
    spinereg geometry --primary 30 --secondary -10 --sdd 1000 --sid 600 --out oblique.json
    spinereg geometry --from-dicom lat.dcm --isocenter 0 0 15 --out lat.json
"""

from __future__ import annotations

import argparse
import sys

from .. import geometry as geo

#: C-arm options: argparse dest -> c_arm_geometry keyword. Only those the user typed
#: reach the library, whose defaults apply otherwise.
_C_ARM_OPTIONS = {
    "secondary": "secondary_deg",
    "sdd": "sdd_mm",
    "sid": "sid_mm",
    "size": "size",
    "spacing": "pixel_spacing",
}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "geometry",
        help="write an X-ray geometry JSON sidecar (C-arm preset/angles or DICOM tags)",
        description=(
            "Write a spinereg-xray-geometry JSON file (world RAS mm) for one X-ray view. "
            "C-arm convention: primary 0 = AP with the source posterior; primary 90 = LAT with "
            "the source on the patient's right; secondary rotates about the detector's column "
            "axis u, positive = detector toward the feet (DICOM caudal)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Options without a meaningful default use SUPPRESS (absent from args unless given), so
    # the help shows no "(default: None)" and run() can tell what the user typed.
    suppress = argparse.SUPPRESS
    view = parser.add_argument_group("view (choose one)").add_mutually_exclusive_group(required=True)
    view.add_argument(
        "--preset", metavar="NAME", default=suppress,
        help=f"named view, one of {', '.join(geo.PRESET_PRIMARY_DEG)} (case-insensitive)",
    )
    view.add_argument(
        "--primary", type=float, metavar="DEG", default=suppress,
        help="C-arm primary angle in degrees, right-handed about the patient's superior axis "
        "(0 = AP, 90 = LAT with the detector on the left: DICOM LAO)",
    )
    view.add_argument(
        "--from-dicom", metavar="FILE", default=suppress,
        help="read the geometry from the DICOM tags of a CR/DX/RF/XA X-ray",
    )

    arm = parser.add_argument_group("C-arm (with --preset or --primary)")
    arm.add_argument(
        "--secondary", type=float, metavar="DEG", default=suppress,
        help="secondary (cranio-caudal) angle in degrees, right-handed about detector u: positive tilts "
        "the detector toward the feet; DICOM's secondary angle is its negative (default: 0)",
    )
    arm.add_argument(
        "--sdd", type=float, metavar="MM", default=suppress,
        help=f"source-to-detector distance in mm (default: {geo.DEFAULT_SDD_MM:g})",
    )
    arm.add_argument(
        "--sid", type=float, metavar="MM", default=suppress,
        help=f"source-to-isocentre distance in mm (default: {geo.DEFAULT_SID_MM:g})",
    )
    arm.add_argument(
        "--size", type=int, nargs=2, metavar=("COLS", "ROWS"), default=suppress,
        help="detector size in pixels (default: %d %d)" % geo.DEFAULT_SIZE,
    )
    arm.add_argument(
        "--spacing", type=float, nargs=2, metavar=("DU", "DV"), default=suppress,
        help="pixel spacing in mm at the detector, along columns then rows (default: %g %g)"
        % geo.DEFAULT_PIXEL_SPACING_MM,
    )

    common = parser.add_argument_group("placement and output")
    common.add_argument(
        "--isocenter", type=float, nargs=3, metavar=("X", "Y", "Z"), default=[0.0, 0.0, 0.0],
        help="isocentre in world RAS mm: the beam axis passes through it at --sid from the source",
    )
    common.add_argument("--out", required=True, metavar="G.json", default=suppress, help="output geometry JSON file")
    common.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..io.atomic import new_output_file
    from ..io.geometry_json import save_geometry

    given = vars(args)
    out = new_output_file(args.out, overwrite=args.overwrite)
    c_arm_kw = {kw: given[dest] for dest, kw in _C_ARM_OPTIONS.items() if dest in given}
    if "from_dicom" in given:
        if c_arm_kw:
            extra = ", ".join(f"--{dest}" for dest in _C_ARM_OPTIONS if dest in given)
            raise InputError(f"{extra} cannot be combined with --from-dicom (the DICOM tags give them)")
        from ..io.dicom_geometry import geometry_from_dicom

        geometry = geometry_from_dicom(args.from_dicom, isocenter_ras=args.isocenter)
    elif "preset" in given:
        geometry = geo.preset_geometry(args.preset, isocenter_ras=args.isocenter, **c_arm_kw)
    else:
        geometry = geo.c_arm_geometry(primary_deg=args.primary, isocenter_ras=args.isocenter, **c_arm_kw)
    save_geometry(geometry, out)
    du, dv = geometry.pixel_spacing
    print(
        f"spinereg geometry: wrote {out} ({geometry.columns}x{geometry.rows} px, "
        f"{du:g}x{dv:g} mm, SDD {geometry.sdd_mm:.1f} mm)",
        file=sys.stderr,
    )
    return 0
