"""The README picture of CT to CT on the real CT: a sagittal and a coronal slice of the fixed CT
through the spine, the fixed vertebrae's outlines (the truth, green) and the moved moving
segmentation's (red) for the identity, elastix, vertebra by vertebra (the poly-rigid blend alone)
and vertebra by vertebra refined near the bone (``--articulated``'s default), each panel titled
with its mean vertebra Dice.

The pair is :mod:`bench_deform_ct`'s real-CT pair (the same CT, deformation and seed), the
methods its rows (one torch thread). Usage::

    python Testing/benchmarks/plot_deform_ct.py --out Testing/benchmarks/results/deform_ct_real.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_deform_ct as bench  # noqa: E402
from SpineRegistrationLib.core.displacement import DisplacementField  # noqa: E402
from SpineRegistrationLib.deform.ct_pair import PairConfig, register_ct_pair, warp_labelmap  # noqa: E402
from SpineRegistrationLib.synthetic.deformation_pairs import synthetic_pair  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    torch.set_num_threads(1)
    _, moving, moving_seg = bench.real_case()
    fixed, fixed_seg, truth = synthetic_pair(moving, moving_seg, np.random.default_rng(0), bench.PAIR_DEFORMATION)
    fields = {"identity": DisplacementField(np.zeros_like(truth.displacement), truth.ijk_to_ras)}
    fields["elastix"], _ = bench.elastix_field(fixed, moving, 100, 4)
    fields["vertebra by vertebra"], _ = register_ct_pair(fixed, moving, fixed_seg, moving_seg,
                                                         PairConfig(articulated=True, refine_steps=0))
    fields["+ free-form near the bone"], _ = register_ct_pair(fixed, moving, fixed_seg, moving_seg,
                                                              PairConfig(articulated=True))

    spine = np.argwhere(fixed_seg.volume.array > 0)  # (k, j, i)
    k_mid, j_mid, i_mid = np.median(spine, axis=0).astype(int)
    sx, sy, sz = fixed.spacing_mm  # i, j, k
    window = dict(cmap="gray", vmin=-400, vmax=1200, origin="lower")
    cuts = {"sagittal": (lambda a: a[:, :, i_mid], sz / sy), "coronal": (lambda a: a[:, j_mid, :], sz / sx)}
    figure, axes = plt.subplots(2, len(fields), figsize=(4.2 * len(fields), 9.5))
    for column, (name, field) in enumerate(fields.items()):
        warped = warp_labelmap(moving_seg, field, fixed).volume.array
        dice = bench.score(name, fixed, fixed_seg, moving_seg, truth, field, 0.0)["dice_mean"]
        for row, (cut_name, (cut, aspect)) in enumerate(cuts.items()):
            ax = axes[row, column]
            ax.imshow(cut(fixed.array), aspect=aspect, **window)
            ax.contour(cut(fixed_seg.volume.array > 0).astype(float), [0.5], colors="lime", linewidths=0.8)
            ax.contour(cut(warped > 0).astype(float), [0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{name}: Dice {dice:.3f} ({cut_name})" if row == 0 else cut_name, fontsize=9)
            ax.set_axis_off()
    figure.suptitle("Real CT to itself deformed (known field): fixed vertebrae (green), moved moving segmentation (red)")
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
