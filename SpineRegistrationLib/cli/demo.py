"""``spinereg demo``: the whole pipeline that exists so far, on the embedded phantom.

Generates the phantom and its AP/LAT X-rays (vertebrae moved by a known pose), renders the
DRR of every vertebra at its initial pose (identity: the CT as scanned) and at the known
pose, and writes ``overlay.png`` (the DRR in green over each X-ray) and
``summary.json``.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from .phantom import add_phantom_options

    parser = subparsers.add_parser(
        "demo",
        help="run the pipeline on the embedded spine phantom and write a figure and a summary",
        description=__doc__.split("\n\n")[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="spinereg-demo", metavar="DIR", help="output folder (must be new or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    add_phantom_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    import numpy as np
    import torch

    from ..drr import Detectors, DRRRenderer, hu_to_mu
    from ..figures import overlay_rgb, tile, write_png
    from ..io import vertebra_mask
    from ..sample_data import VIEWS, make_sample, write_sample
    from .common import check_device, staged_output_dir
    from .phantom import sample_config_from_args

    config = sample_config_from_args(args)
    device = check_device(args.device)
    with staged_output_dir(args.out, args.overwrite) as staging:
        started = time.perf_counter()
        print("[1/3] generating the phantom and its simulated AP/LAT X-rays ...", file=sys.stderr)
        phantom, labelmap, case = make_sample(config)
        (staging / "data").mkdir()
        write_sample(staging / "data", phantom, labelmap, case)
        print("[2/3] rendering vertebra DRRs at the initial and the true pose ...", file=sys.stderr)
        mu = phantom.ct.with_array(hu_to_mu(phantom.ct.array))
        detectors = [Detectors.from_geometries([g], device=device) for g in case.geometries]
        stages = {"initial": {name: np.eye(4) for name in case.poses}, "truth": case.poses}
        drrs = {stage: [np.zeros_like(image) for image in case.images] for stage in stages}
        render_s = []
        for name in case.poses:
            renderer = DRRRenderer(mu, mask=vertebra_mask(labelmap, name)).to(device)
            for stage, poses in stages.items():
                pose = torch.as_tensor(poses[name], dtype=torch.float32, device=device)[None]
                for view, detector in enumerate(detectors):
                    tick = time.perf_counter()
                    with torch.no_grad():
                        drrs[stage][view] += renderer(pose, detector)[0, 0].cpu().numpy()
                    render_s.append(time.perf_counter() - tick)
        print("[3/3] writing overlay.png and summary.json ...", file=sys.stderr)
        panels = [overlay_rgb(image, drrs[stage][view])
                  for stage in stages for view, image in enumerate(case.images)]
        write_png(np.concatenate([tile(panels[:2]), np.full((8, tile(panels[:2]).shape[1], 3), 24, np.uint8),
                                  tile(panels[2:])]), staging / "overlay.png")
        summary = {
            "format": "spinereg-demo-summary",
            "version": 1,
            "vertebrae": list(case.poses),
            "views": list(VIEWS),
            "figure": "overlay.png: top row initial pose (CT as scanned), bottom row true pose; AP left, LAT right",
            "true_params": {name: np.round(p, 3).tolist() for name, p in case.params.items()},
            "drr_ms_per_vertebra_view": round(1000 * float(np.median(render_s)), 2),
            "total_s": round(time.perf_counter() - started, 2),
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}: overlay.png, summary.json, data/ ({len(case.poses)} vertebrae, "
          f"{summary['drr_ms_per_vertebra_view']} ms per vertebra DRR, {summary['total_s']} s in all)")
    return 0
