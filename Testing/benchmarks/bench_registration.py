"""Registration accuracy, robustness and speed: ours side by side with the CMA-ES and DiffDRR
baselines on the same simulated cases, plus ours on X-rays rendered by DiffDRR.

The cases are :func:`SpineRegistrationLib.evaluation.make_cases` on the default phantom
(T10-L5 at 1 mm): per case one vertebra (T11..L4 in turn), the whole spine offset from the
CT by a uniform ±10° / ±20 mm pose about it, every vertebra moved ±2° / ±2 mm more, jittered
AP/LAT C-arm geometry and X-ray realism (noise, gamma, scatter, heel, blur, collimation),
512² X-rays at 1 mm; every method starts from the identity. Methods, each on the same cases:

- ``intensity``: :func:`SpineRegistrationLib.rigid.register_vertebra`, default config;
- ``cmaes``: the gradient-free baseline (CMA-ES at every pyramid level, same similarity);
- ``diffdrr``: :class:`peers.diffdrr_registration.DiffDRRRegistration`, DiffDRR's renderer,
  losses and Adam schedule (skipped, and said so, when DiffDRR is not installed);
- ``intensity (DiffDRR X-rays)``: ours on the same cases with the X-rays' optical depth traced by
  DiffDRR's Siddon instead of our renderer (same poses, geometry and realism knobs).

Writes OUT/results.json (format spinereg-evaluation: config, summaries, every record),
OUT/plot.png (mTRE CDF, capture range, time per vertebra) and OUT/table.md, and prints the
table. results.json is rewritten after each method, so an interrupted run keeps what ran.

Usage (install the peer first: ``bash Testing/benchmarks/install_peers.sh``)::

    python Testing/benchmarks/bench_registration.py --out reg_bench            # default cases
    python Testing/benchmarks/bench_registration.py --cases 2 --out reg_smoke  # smoke test

The default ``--cases`` keeps the whole run near 25 minutes on a 2-core CPU with one
torch thread (measured per case: see the README figures and the JSON's ``timing``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: ~185 s per case for all four arms on a 2-core CPU, one torch thread (--cases 2 smoke run:
#: X-rays 3 s (ours) + 49 s (DiffDRR Siddon); ours 12-50 s, cmaes 28 s, diffdrr 57 s, ours on
#: DiffDRR X-rays 12 s per vertebra): 8 cases ~ 25 min.
DEFAULT_CASES = 8
ARMS = ("intensity", "cmaes", "diffdrr", "intensity-diffdrr-xrays")
DIFFDRR_XRAYS = "intensity (DiffDRR X-rays)"


def _fmt(value, digits=2, percent=False, unit=""):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.0f}%" if percent else f"{value:.{digits}f}{unit}"


def markdown(summaries: dict, renderers: dict) -> str:
    """The README table: one row per method."""
    header = ["method", "X-rays rendered by", "cases", "success <1 mm", "success <2 mm", "success <10 mm", "median mTRE (mm)",
              "p90 mTRE (mm)", "median rot. err. (°)", "median transl. err. (mm)", "capture range (mm)",
              "median time / vertebra (s)", "failures flagged doubt", "successes flagged pass"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, s in summaries.items():
        agreement = s.get("verdict_agreement") or {}
        lines.append("| " + " | ".join([
            name,
            renderers.get(name, "ours"),
            str(s["cases"]),
            _fmt(s["success"].get("<1mm"), percent=True),
            _fmt(s["success"].get("<2mm"), percent=True),
            _fmt(s["success"].get("<10mm"), percent=True),
            _fmt(s["mtre_mm"]["median"]),
            _fmt(s["mtre_mm"]["p90"]),
            _fmt(s["rotation_error_deg"]["median"]),
            _fmt(s["translation_error_mm"]["median"]),
            _fmt(s["capture_range"]["capture_range_mm"], digits=0),
            _fmt(s["time_s"]["median"], digits=1),
            _fmt(agreement.get("failures_flagged_doubt"), percent=True),
            _fmt(agreement.get("successes_flagged_pass"), percent=True),
        ]) + " |")
    return "\n".join(lines)


def _progress(iterable, total, desc):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="case", file=sys.stderr, mininterval=1.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="number of cases (same cases for every method)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the case set")
    parser.add_argument("--rot-deg", type=float, default=10.0, help="half-range of the start rotation per axis, degrees")
    parser.add_argument("--trans-mm", type=float, default=20.0, help="half-range of the start translation per axis, mm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS,
                        help="what to run (ours-diffdrr-xrays: ours on DiffDRR-rendered X-rays)")
    parser.add_argument("--diffdrr-xray-cases", type=int, default=None,
                        help="run ours on DiffDRR-rendered X-rays for only the first K cases (rendering the "
                        "background with DiffDRR's Siddon costs ~50 s per case on 2 CPU cores); default: all")
    parser.add_argument("--device", default="cpu", help="torch device for every method and renderer")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (as spinereg register)")
    parser.add_argument("--out", type=Path, default=Path("reg_bench"), help="output folder (created)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be >= 1, got {args.cases}")

    import dataclasses

    import torch

    from SpineRegistrationLib import __version__
    from SpineRegistrationLib.evaluation import (
        EvalConfig,
        iter_cases,
        iter_run_method,
        make_method,
        summarize_by_method,
        write_report,
    )
    from SpineRegistrationLib.io import Labelmap
    from SpineRegistrationLib.synthetic.phantom import PhantomConfig, generate_phantom

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        from peers.diffdrr_registration import DiffDRRRegistration, diffdrr_render_factory

        import diffdrr

        peer_version = diffdrr.__version__
    except ImportError as error:
        peer_version = None
        print(f"bench_registration: DiffDRR not available ({error}): skipping the DiffDRR arms "
              "(install it with Testing/benchmarks/install_peers.sh)", file=sys.stderr)

    phantom = generate_phantom(PhantomConfig())
    labelmap = Labelmap(phantom.labels, "verse")
    config = EvalConfig(cases=args.cases, seed=args.seed, rot_deg=args.rot_deg, trans_mm=args.trans_mm)
    tick = time.perf_counter()
    cases = list(_progress(iter_cases(phantom.ct, labelmap, phantom.centroids_ras, config, device=args.device),
                           config.cases, "X-rays (ours)"))
    timing = {"render_ours_s_per_case": round((time.perf_counter() - tick) / len(cases), 2)}

    records, renderers = [], {}
    metadata = {
        "phantom": f"{phantom.config.vertebrae[0]}-{phantom.config.vertebrae[-1]}, {phantom.config.spacing_mm:g} mm, "
                   f"seed {phantom.config.seed}",
        "device": args.device, "threads": args.threads, "torch": torch.__version__, "diffdrr": peer_version,
        "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
        "software": f"SpineRegistration {__version__}", "timing": timing,
    }

    def run(name, method, case_list):
        tick = time.perf_counter()
        for record in _progress(iter_run_method(case_list, method, name), len(case_list), name):
            records.append(record)
        timing[f"{name}: s per case"] = round((time.perf_counter() - tick) / len(case_list), 2)
        renderers[name] = case_list[0].renderer
        summaries = summarize_by_method(records)
        metadata["total_s"] = round(time.perf_counter() - started, 1)
        write_report(args.out, summaries, records, config=config, metadata=metadata)
        return summaries

    summaries = {}
    for arm in args.arms:
        if arm in ("intensity", "cmaes"):
            summaries = run(arm, make_method(arm, device=args.device), cases)
        elif peer_version is None:
            continue
        elif arm == "diffdrr":
            summaries = run("diffdrr", DiffDRRRegistration(device=args.device), cases)
        else:
            count = min(args.diffdrr_xray_cases or config.cases, config.cases)
            tick = time.perf_counter()
            peer_config = dataclasses.replace(config, cases=count)
            peer_cases = list(_progress(
                iter_cases(phantom.ct, labelmap, phantom.centroids_ras, peer_config, renderer="diffdrr",
                           render_factory=diffdrr_render_factory(args.device), device=args.device),
                count, "X-rays (DiffDRR)"))
            timing["render_diffdrr_s_per_case"] = round((time.perf_counter() - tick) / count, 2)
            summaries = run(DIFFDRR_XRAYS, make_method("intensity", device=args.device), peer_cases)

    table = markdown(summaries, renderers)
    per_case = ", ".join(f"{key} {value}" for key, value in timing.items())
    footer = (f"\n\n{config.cases} cases (phantom {metadata['phantom']}), starts ±{config.rot_deg:g}° / "
              f"±{config.trans_mm:g} mm per axis, {args.device}, {args.threads} torch thread(s); "
              f"seconds per case: {per_case}; {time.perf_counter() - started:.0f} s in all.")
    (args.out / "table.md").write_text(table + footer + "\n")
    print(table + footer)
    with open(args.out / "results.json") as handle:
        json.load(handle)  # written strictly (no NaN): prove it parses
    print(f"wrote {args.out}/results.json, plot.png, table.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
