"""``spinereg detect``: vertebra boxes on X-rays, from the detector and (with a CT) from the projection.

Examples::

    spinereg detect --xray AP.png --geometry AP.json --out boxes.json
    spinereg detect --xray AP.png --geometry AP.json --xray LAT.png --geometry LAT.json \\
        --ct ct.nii.gz --seg seg.nii.gz --init init.h5 --out boxes.json

Writes ``boxes.json`` (format spinereg-xray-boxes v1, by view name; each box's ``source`` says
``detector`` or ``projection``) and ``boxes.coco.json`` beside it (COCO, polygon per box).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.labels import SCHEME_CHOICES

DESCRIPTION = (
    "Find each vertebra on each X-ray: an oriented box (four corners, column/row pixels of the image) and its "
    "level name. The detector network (the one shipped in Resources/Models, or --model) reads the X-ray; "
    "with --ct/--seg the detections' level names also weigh where the CT's vertebrae project (at the CT's pose, "
    "--init, default the identity, shifted to fit all views), and every vertebra of the segmentation is projected "
    "and its box written with source 'projection'. No box is accepted: that is "
    "the annotator's call (the Slicer module, or edit the file). Writes OUT (spinereg-xray-boxes v1) and "
    "OUT's .coco.json twin, both only once everything is computed."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("detect", help="vertebra boxes with level names on X-rays (detector, projection)",
                                   description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    suppress = argparse.SUPPRESS
    xray = parser.add_argument_group("X-rays (--xray and --geometry pair up in order; one or more views)")
    xray.add_argument("--xray", action="append", required=True, metavar="IMAGE", default=suppress,
                      help="X-ray image (PNG, TIFF, NRRD, MHA or DICOM), bone bright unless --invert")
    xray.add_argument("--geometry", action="append", required=True, metavar="G.json", default=suppress,
                      help="the matching X-ray's spinereg-xray-geometry JSON; its file stem names the view")
    xray.add_argument("--view", action="append", metavar="NAME", default=suppress,
                      help="view names in the output, one per --xray (default: the geometry file stems)")
    xray.add_argument("--invert", action="store_true", help="the X-rays are stored bone-dark: flip their intensities")
    ct = parser.add_argument_group("CT (optional: adds the projected boxes)")
    ct.add_argument("--ct", metavar="CT", default=suppress, help="CT volume in HU, with --seg")
    ct.add_argument("--seg", metavar="SEG", default=suppress, help="vertebra labelmap on the CT's grid, or .seg.nrrd")
    ct.add_argument("--label-scheme", default="auto", choices=SCHEME_CHOICES, help="label numbering of --seg")
    ct.add_argument("--init", metavar="INIT.json|INIT.h5", default=suppress,
                    help="pose of the CT (CT RAS -> world RAS), JSON matrix_ras or ITK transform (default: identity)")
    detector = parser.add_argument_group("detector")
    detector.add_argument("--model", metavar="MODEL.pt", default=suppress,
                          help="detector model file, e.g. from 'spinereg train-detect' (default: the shipped one)")
    detector.add_argument("--threshold", type=float, default=0.3, help="smallest detection score kept, 0..1")
    detector.add_argument("--device", default="cpu", help="torch device: cpu, cuda (cuda:N) or auto")
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="BOXES.json", default=suppress,
                     help="boxes file; the COCO export goes beside it as BOXES.coco.json")
    out.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.set_defaults(func=run)
    return parser


def _views(args: argparse.Namespace) -> list[str]:
    """The views' names, by ``spinereg register``'s rule (so its ``--boxes`` finds them)."""
    from ..errors import InputError
    from ..pipeline.inputs import view_names

    names = getattr(args, "view", None)
    if names is not None and len(names) != len(args.xray):
        raise InputError(f"{len(names)} --view names for {len(args.xray)} X-rays: give one per --xray, or none")
    return view_names(args.xray, args.geometry, names)


def run(args: argparse.Namespace) -> int:
    import sys

    import numpy as np

    from ..errors import InputError
    from ..io import read_labelmap, read_rigid_matrix, read_volume, read_xray
    from ..io.atomic import new_output_file
    from ..io.geometry_json import load_geometry
    from ..io.xray_boxes import XrayImageInfo, coco_path, write_boxes_with_coco
    from ..methods import resolve_device

    out = new_output_file(args.out, args.overwrite)
    coco = new_output_file(coco_path(out), args.overwrite)
    if len(args.xray) != len(args.geometry):
        raise InputError(f"got {len(args.xray)} --xray and {len(args.geometry)} --geometry: give one geometry per X-ray")
    if not 0.0 <= args.threshold <= 1.0:
        raise InputError(f"--threshold must lie in [0, 1], got {args.threshold}")
    if hasattr(args, "ct") != hasattr(args, "seg"):
        raise InputError("--ct and --seg go together: give both for the projected boxes, or neither")
    views = _views(args)
    device = resolve_device(args.device)
    geometries = [load_geometry(path) for path in args.geometry]
    images = [read_xray(path, geometry, args.invert).array for path, geometry in zip(args.xray, geometries)]
    outlines = None
    if hasattr(args, "ct"):
        from ..core.labelmap import check_same_grid
        from ..pipeline.inputs import check_volume_seen
        from ..render.projected_boxes import VertebraOutlines

        ct = read_volume(args.ct)
        labelmap = read_labelmap(args.seg, args.label_scheme)
        check_same_grid(labelmap, ct, f"segmentation {args.seg}")
        init = read_rigid_matrix(args.init) if hasattr(args, "init") else np.eye(4)
        for view, geometry in zip(views, geometries):
            check_volume_seen(geometry, ct, labelmap.volume.array > 0, init, f"the segmentation in the {view} X-ray")
        outlines = VertebraOutlines(labelmap)
    from ..learned.detector import DetectorPredictor, shipped_detector

    model = getattr(args, "model", None) or shipped_detector()
    if model is None:
        raise InputError("no vertebra detector is shipped in Resources/Models: train one with "
                         "'spinereg train-detect' and pass it with --model")
    predictor = DetectorPredictor(model, device)
    # With the CT, its vertebrae's places at the initial pose help name the detected levels, all views together.
    centers = None if outlines is None else outlines.centers_at(init)
    boxes = {}
    for view, geometry, detected in zip(views, geometries,
                                        predictor.detect_views(images, geometries, args.threshold, centers)):
        boxes[view] = detected
        found = f"{len(detected)} detected ({', '.join(b.vertebra for b in detected) or 'none'})"
        if outlines is not None:
            projected = outlines.boxes(geometry, init)
            boxes[view] = detected + projected
            found += f", named with the CT's help; {len(projected)} projected"
        print(f"{view}: {found}", file=sys.stderr, flush=True)
    infos = {view: XrayImageInfo(Path(path).name, geometry.size)
             for view, path, geometry in zip(views, args.xray, geometries)}
    write_boxes_with_coco(out, boxes, infos)
    print(f"wrote {out} and {coco}")
    return 0
