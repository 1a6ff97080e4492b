"""``spinereg drr``: render a DRR of a CT (or of one vertebra) for an X-ray geometry.

Examples::

    spinereg drr --ct ct.nii.gz --geometry ap.json --out ap_drr.nrrd
    spinereg drr --ct ct.nii.gz --seg seg.nii.gz --vertebra L1 --geometry lat.json \\
        --transform L1.h5 --out l1_lat.png
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "drr",
        help="render a digitally reconstructed radiograph (whole CT or one vertebra)",
        description=(
            "Render the line integral of linear attenuation (1/mm, from HU) from the X-ray source "
            "to every detector pixel: an optical depth, bone bright. .nrrd/.mha keep float values; "
            ".png stores them scaled to 16 bits."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--ct", required=True, metavar="CT", help="CT volume in HU (NIfTI, NRRD, MHA, DICOM folder)")
    parser.add_argument("--seg", metavar="SEG", help="vertebra labelmap or Slicer .seg.nrrd (with --vertebra)")
    parser.add_argument("--vertebra", metavar="NAME", help="render this vertebra alone (e.g. L1, or a raw label)")
    parser.add_argument("--label-scheme", default="auto", help="label numbering of --seg: auto, verse or totalseg")
    parser.add_argument("--geometry", required=True, metavar="G.json", help="spinereg-xray-geometry JSON sidecar")
    parser.add_argument(
        "--transform", metavar="T",
        help="pose of the CT (CT RAS -> world): ITK transform (.h5/.tfm) or JSON matrix_ras (default: identity)",
    )
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    parser.add_argument("--out", required=True, metavar="DRR", help="output image (.nrrd, .mha, .nii.gz or .png)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..errors import InputError
    from ..io import check_xray_extension, read_labelmap, read_rigid_matrix, read_volume, vertebra_mask, write_xray
    from ..io.atomic import new_output_file, staged_output_file
    from ..io.geometry_json import load_geometry
    from ..methods import resolve_device
    from ..core.labelmap import check_same_grid
    from ..pipeline.inputs import check_volume_seen
    from ..render.drr import hu_to_mu, render_drr

    out = new_output_file(args.out, args.overwrite)
    check_xray_extension(out)
    if bool(args.seg) != bool(args.vertebra):
        raise InputError("--seg and --vertebra go together: give both to render one vertebra, or neither")
    device = resolve_device(args.device)
    geometry = load_geometry(args.geometry)
    ct = read_volume(args.ct)
    matrix = np.eye(4) if args.transform is None else read_rigid_matrix(args.transform)
    mask = None
    if args.seg:
        labelmap = read_labelmap(args.seg, args.label_scheme)
        check_same_grid(labelmap, ct, f"segmentation {args.seg}")
        mask = vertebra_mask(labelmap, args.vertebra)
    check_volume_seen(geometry, ct, mask, matrix, what=args.vertebra or "the CT")
    image = render_drr(ct.with_array(hu_to_mu(ct.array)), geometry, matrix_ras=matrix, mask=mask, device=device)
    with staged_output_file(out) as staging:
        write_xray(image, staging)
    print(f"wrote {out} ({geometry.columns}x{geometry.rows}, max optical depth {image.max():.3f})")
    return 0
