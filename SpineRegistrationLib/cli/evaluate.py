"""``spinereg evaluate``: accuracy, robustness and speed of registration on simulated cases with known truth.

Example::

    spinereg evaluate --cases 20 --methods intensity,cmaes --out eval/
    spinereg evaluate --ct ct.nii.gz --seg seg.nii.gz --vertebra L2 --vertebra L3 --out eval/

The work is :mod:`SpineRegistrationLib.evaluation` (same configuration object,
:class:`~SpineRegistrationLib.evaluation.EvalConfig`); this file turns options into it,
shows progress and writes the folder atomically.
"""

from __future__ import annotations

import argparse

from ..methods import EVALUATION_METHODS as METHODS
from .options import add_ct_options, add_output_folder, add_resume, interrupted

#: Default torch CPU threads: as ``spinereg register`` (one vertebra's tensors are small).
DEFAULT_THREADS = 1

DESCRIPTION = (
    "Build a set of biplanar (AP + LAT) X-ray cases with known per-vertebra poses from a CT and its vertebra "
    "labelmap (default: the embedded spine phantom, generated): the whole spine offset from the CT by a random "
    "rigid pose about the target vertebra (uniform per axis within --rot-deg / --trans-mm), every vertebra moved "
    "a little more on its own, jittered C-arm geometry (distances, angles, pixel size) and X-ray realism "
    "(noise, gamma, scatter, heel effect, blur, collimation). Register each case's vertebra from the identity "
    "with each method and report, per case and per method: mTRE over the vertebra's voxels, success rates at "
    "mTRE < 1 / 2 / 10 mm, rotation and translation errors, capture range (success by initial mTRE) and time "
    "per vertebra. Writes DIR/results.json (format spinereg-evaluation) and DIR/plot.png; DIR appears only "
    "once complete. Progress goes to stderr, the summary table to stdout. Interrupted (Ctrl-C: exit status 130), "
    "it keeps the cases it finished and --resume continues."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="measure registration accuracy and speed on simulated cases with known truth",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    suppress = argparse.SUPPRESS
    add_ct_options(parser, "CT and vertebrae (default: the phantom, T10-L5 at 1 mm)", optional=True,
                   label_help="label numbering of --seg",
                   vertebra_help="vertebra to register (repeat for several; cases cycle through them) "
                   "(default: every vertebra with both neighbours in the labelmap)")

    cases = parser.add_argument_group("cases")
    cases.add_argument("--cases", type=int, default=20, metavar="N", help="number of cases")
    cases.add_argument("--rot-deg", type=float, default=10.0, metavar="DEG",
                       help="half-range of the spine's random rotation about the target vertebra, per axis, degrees")
    cases.add_argument("--trans-mm", type=float, default=20.0, metavar="MM",
                       help="half-range of the target vertebra's random translation, per axis, mm")
    cases.add_argument("--seed", type=int, default=0, help="random seed of the case set (case i is the same for any N > i)")
    cases.add_argument("--detector-size", type=int, nargs=2, default=(512, 512), metavar=("COLUMNS", "ROWS"),
                       help="simulated detector size in pixels")
    cases.add_argument("--pixel-mm", type=float, default=1.0, metavar="MM",
                       help="simulated detector pixel spacing in mm (jittered by 5 %% per view)")

    method = parser.add_argument_group("methods")
    method.add_argument("--methods", default="intensity,cmaes", metavar="A,B",
                        help="comma-separated methods: intensity ('spinereg register --method intensity'), cmaes (gradient-free baseline: CMA-ES at every pyramid level), learned (the "
                        "shipped pose network alone), auto (the network's rotation, then the intensity grid "
                        "and refinement, full search when in doubt: 'spinereg register --method auto')")
    method.add_argument("--model", metavar="MODEL.pt", default=suppress,
                        help="pose-network model file for learned/auto (default: the shipped one), e.g. a "
                        "patient-specific model from 'spinereg train --ct ... --seg ...'")
    method.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    method.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                        help="torch CPU threads (torch.set_num_threads), as for 'spinereg register'")

    output = parser.add_argument_group("output")
    add_output_folder(output)
    add_resume(output, "evaluate", "cases")
    parser.set_defaults(func=run)
    return parser


def parse_methods(text: str) -> list[str]:
    """``"intensity,cmaes"`` -> ["intensity", "cmaes"]; InputError for an empty list, a repeat or an unknown name."""
    from ..errors import InputError

    names = [name.strip() for name in str(text).split(",") if name.strip()]
    if not names:
        raise InputError(f"--methods {text!r}: name at least one of {', '.join(METHODS)}")
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise InputError(f"--methods: unknown method {unknown[0]!r}; expected a comma-separated list of "
                         f"{', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise InputError(f"--methods {text!r}: a method is named twice")
    return names


def _load_data(args: argparse.Namespace):
    """(CT in HU, Labelmap, description) from --ct/--seg, or the default phantom."""
    import numpy as np

    from ..errors import InputError

    ct_path, seg_path = getattr(args, "ct", None), getattr(args, "seg", None)
    if bool(ct_path) != bool(seg_path):
        raise InputError("--ct and --seg go together: give both, or neither for the phantom")
    if ct_path:
        from ..io import read_labelmap, read_volume

        ct = read_volume(ct_path)
        labelmap = read_labelmap(seg_path, args.label_scheme)
        if labelmap.volume.array.shape != ct.array.shape or not np.allclose(
            labelmap.volume.ijk_to_ras, ct.ijk_to_ras, atol=1e-3
        ):
            raise InputError(f"segmentation {seg_path} does not share the CT's voxel grid")
        return ct, labelmap, {"ct": str(ct_path), "seg": str(seg_path), "label_scheme": labelmap.scheme.name}
    from ..io import Labelmap
    from ..synthetic.phantom import PhantomConfig, generate_phantom

    phantom = generate_phantom(PhantomConfig())
    names = phantom.config.vertebrae
    return phantom.ct, Labelmap(phantom.labels, "verse"), {
        "ct": f"phantom {names[0]}-{names[-1]}, {phantom.config.spacing_mm:g} mm, seed {phantom.config.seed}"
    }


def _fingerprint(args: argparse.Namespace, config, methods: list[str]) -> str:
    """What decides an evaluation's records, hashed (:func:`..io.journal.fingerprint`): the CT and
    labelmap files (or the default phantom), the model file, the label scheme and the cases' settings.
    Not their number (case i is the same for any --cases > i) nor the methods (a record is per method
    and case): a resumed run may add cases or methods."""
    from dataclasses import asdict

    from ..io.journal import fingerprint
    from ..learned.models import shipped_model

    model = getattr(args, "model", None) or (shipped_model() if {"learned", "auto"} & set(methods) else None)
    settings = {key: value for key, value in asdict(config).items() if key != "cases"}
    return fingerprint([getattr(args, "ct", None), getattr(args, "seg", None), model],
                       {"label_scheme": args.label_scheme, "cases": settings})


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    import torch
    from tqdm import tqdm

    from ..errors import InputError
    from ..evaluation import (
        EvalConfig,
        format_table,
        iter_cases,
        iter_run_method,
        make_method,
        summarize_by_method,
        write_report,
    )
    from ..methods import resolve_device
    from ..io.atomic import staged_output_dir
    from ..io.journal import RunJournal

    started = time.perf_counter()
    methods = parse_methods(args.methods)
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    try:
        import matplotlib  # noqa: F401 - the report's plot needs it; fail before any work
    except ImportError:
        raise InputError("spinereg evaluate writes plot.png with matplotlib: pip install matplotlib") from None
    config = EvalConfig(
        cases=args.cases,
        vertebrae=tuple(getattr(args, "vertebra", None) or ()) or None,
        rot_deg=args.rot_deg,
        trans_mm=args.trans_mm,
        seed=args.seed,
        detector_size=tuple(args.detector_size),
        pixel_spacing_mm=args.pixel_mm,
    )
    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    journal = None
    try:
        with staged_output_dir(args.out, args.overwrite) as staging:
            model = getattr(args, "model", None)  # a bad model file fails before the data are made
            runners = {name: make_method(name, device=device, **({"model": model} if model and name in
                                                                   ("learned", "auto") else {}))
                       for name in methods}
            journal = RunJournal(args.out, "evaluate", _fingerprint(args, config, methods), args.resume,
                                 args.overwrite)
            if args.resume:
                print(f"resuming: {len(journal.done)} case run(s) done before" if journal.done
                      else "nothing to resume: starting afresh", file=sys.stderr)
            print("loading the CT and labelmap ..." if getattr(args, "ct", None) else "generating the phantom ...",
                  file=sys.stderr, flush=True)
            ct, labelmap, inputs = _load_data(args)
            generated = iter_cases(ct, labelmap, None, config, device=device)
            cases = list(tqdm(generated, total=config.cases, desc="simulating X-rays", unit="case",
                              file=sys.stderr, mininterval=0.5))
            records = []
            for name, method in runners.items():
                done = {case.index: journal.done[f"{name}/{case.index}"] for case in cases
                        if f"{name}/{case.index}" in journal.done}
                todo = [case for case in cases if case.index not in done]
                progress = tqdm(iter_run_method(todo, method, name), total=len(cases), initial=len(done), desc=name,
                                unit="case", file=sys.stderr, mininterval=0.5)
                for record in progress:
                    done[record["case"]] = record
                    journal.record(f"{name}/{record['case']}", record)
                    if record["error"] is None:
                        progress.set_postfix_str(f"last mTRE {record['mtre_mm']:.2f} mm", refresh=False)
                records += [done[case.index] for case in cases]
            summaries = summarize_by_method(records)
            metadata = {"inputs": inputs, "methods": methods, "device": str(device), "threads": args.threads,
                        "vertebrae": sorted({case.vertebra for case in cases}),
                        "total_s": round(time.perf_counter() - started, 1)}
            paths = write_report(staging, summaries, records, config=config, metadata=metadata)
    except KeyboardInterrupt:
        if journal is None or not journal.done:
            raise
        return interrupted(journal, "case run(s)")
    finally:
        torch.set_num_threads(threads_before)
    journal.discard()
    errors = [r for r in records if r["error"] is not None]
    if errors:
        print(f"spinereg: warning: {len(errors)} run(s) failed and count as failures; first: {errors[0]['method']} "
              f"case {errors[0]['case']}: {errors[0]['error']}", file=sys.stderr)
    print(format_table(summaries))
    print(f"wrote {args.out}: {', '.join(path.name for path in paths.values())} "
          f"({len(cases)} case(s) x {len(methods)} method(s), {time.perf_counter() - started:.1f} s in all)")
    return 0
