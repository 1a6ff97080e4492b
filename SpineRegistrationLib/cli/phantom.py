"""``spinereg phantom``: write the procedural spine phantom and its simulated AP/LAT X-rays.

Example::

    spinereg phantom --out phantom/ --seed 3 --scoliosis 10 --pose-deg 5 --pose-mm 5
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "phantom",
        help="write the spine phantom: CT, labelmap, centroids, AP/LAT X-rays + geometry, truth",
        description=(
            "Generate the deterministic thoracolumbar spine phantom (CT in HU, VerSe labelmap, "
            "VerSe centroids) and simulated AP/LAT radiographs of it with every vertebra moved by "
            "a random intraoperative pose (written to truth.json). Files: ct.nii.gz, seg.nii.gz, "
            "centroids.json, AP.png/AP.json, LAT.png/LAT.json, truth.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_phantom_options(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; must be new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.set_defaults(func=run)
    return parser


def add_phantom_options(parser: argparse.ArgumentParser) -> None:
    """The phantom's knobs, shared with ``spinereg demo``."""
    group = parser.add_argument_group("phantom")
    group.add_argument("--seed", type=int, default=0, help="random seed (anatomy jitter, poses, noise)")
    group.add_argument("--spacing", type=float, default=1.0, metavar="MM", help="CT voxel size in mm")
    group.add_argument(
        "--vertebrae", nargs=2, default=("T10", "L5"), metavar=("FIRST", "LAST"),
        help="first and last vertebra, cranial to caudal (within T1..L5)",
    )
    group.add_argument("--lordosis", type=float, default=35.0, metavar="DEG", help="lumbar lordosis L1-L5 in degrees")
    group.add_argument("--kyphosis", type=float, default=10.0, metavar="DEG", help="thoracic kyphosis T10-L1 in degrees")
    group.add_argument("--scoliosis", type=float, default=0.0, metavar="DEG", help="coronal curve in degrees")
    group.add_argument("--pose-deg", type=float, default=3.0, metavar="DEG",
                       help="half-range of each vertebra's random intraoperative rotation, per axis, in degrees")
    group.add_argument("--pose-mm", type=float, default=3.0, metavar="MM",
                       help="half-range of each vertebra's random intraoperative translation, per axis, in mm")


def sample_config_from_args(args: argparse.Namespace):
    """Build the :class:`~SpineRegistrationLib.sample_data.SampleConfig` the options describe."""
    from ..errors import InputError
    from ..core.labels import canonical_name
    from ..synthetic.phantom import PHANTOM_VERTEBRAE, PhantomConfig
    from ..synthetic.sample_data import SampleConfig

    first, last = (canonical_name(name) for name in args.vertebrae)
    if first not in PHANTOM_VERTEBRAE or last not in PHANTOM_VERTEBRAE:
        raise InputError(
            f"--vertebrae {' '.join(args.vertebrae)}: the phantom has {', '.join(PHANTOM_VERTEBRAE)}"
        )
    start, stop = PHANTOM_VERTEBRAE.index(first), PHANTOM_VERTEBRAE.index(last)
    if stop < start:
        raise InputError(f"--vertebrae {first} {last}: give the cranial vertebra first")
    if not 0.3 <= args.spacing <= 4.0:
        raise InputError(f"--spacing {args.spacing}: expected a voxel size between 0.3 and 4 mm")
    if args.pose_deg < 0 or args.pose_mm < 0:
        raise InputError("--pose-deg and --pose-mm must be >= 0")
    phantom = PhantomConfig(
        seed=args.seed,
        vertebrae=tuple(PHANTOM_VERTEBRAE[start : stop + 1]),
        spacing_mm=args.spacing,
        lordosis_deg=args.lordosis,
        kyphosis_deg=args.kyphosis,
        scoliosis_deg=args.scoliosis,
    )
    return SampleConfig(phantom=phantom, pose_deg=args.pose_deg, pose_mm=args.pose_mm)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..synthetic.sample_data import make_sample, write_sample
    from ..io.atomic import staged_output_dir

    config = sample_config_from_args(args)
    with staged_output_dir(args.out, args.overwrite) as staging:
        print("generating the phantom and its X-rays ...", file=sys.stderr)
        paths = write_sample(staging, *make_sample(config))
    names = ", ".join(sorted(path.name for path in paths.values()))
    print(f"wrote {args.out}: {names}")
    return 0
