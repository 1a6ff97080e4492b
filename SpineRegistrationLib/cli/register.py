"""``spinereg register``: per-vertebra rigid registration of a CT to two (or more) X-rays.

Example::

    spinereg register --ct ct.nii.gz --seg seg.nii.gz --vertebra L1 --vertebra L2 \\
        --xray AP.png --geometry AP.json --xray LAT.png --geometry LAT.json --out result/

The work is :mod:`SpineRegistrationLib.pipeline` (same configuration object, same checks);
this file only turns options into a :class:`~SpineRegistrationLib.pipeline.RegisterConfig`,
shows progress and writes the folder atomically.
"""

from __future__ import annotations

import argparse

from ..methods import METHODS
from .options import add_ct_options, add_output_folder, add_resume, interrupted


#: Default torch CPU threads, see the --threads help.
DEFAULT_THREADS = 1

DESCRIPTION = (
    "Find the pose of each vertebra (CT RAS -> world RAS, rigid) that makes its digitally reconstructed "
    "radiographs match the X-rays, all views jointly. Writes to DIR (which appears only once complete): "
    "result.json (format spinereg-result: per vertebra matrix_ras, params in deg/mm about its centroid, "
    "similarity, pass/doubt verdict with its reason, time), one ITK transform per vertebra (L1.h5, loads in Slicer as the "
    "vertebra's transform) and drr_<VIEW>.nrrd per X-ray (the registered vertebrae's DRR, optical depth, the "
    "X-ray's size; VIEW is the geometry file's stem, e.g. AP). Progress goes to stderr, a summary table to "
    "stdout. Exit status 0 when every vertebra was registered (check verdicts marked 'doubt'), 2 for bad input, "
    "130 when interrupted (Ctrl-C): the vertebrae it finished are kept and --resume continues."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "register",
        help="register each vertebra of a CT to AP/LAT X-rays (rigid, per vertebra)",
        description=DESCRIPTION,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    suppress = argparse.SUPPRESS
    add_ct_options(parser, "CT and vertebrae", optional=False,
                   label_help="label numbering of --seg (auto: from segment names or label values)",
                   vertebra_help="vertebra to register (L1, T12, ... or a raw integer label); repeat for several "
                   "(default: every vertebra of --seg whose centroid all X-rays see at the initial pose)")

    xray = parser.add_argument_group("X-rays (two or more views; --xray and --geometry pair up in order)")
    xray.add_argument("--xray", action="append", required=True, metavar="IMAGE", default=suppress,
                      help="X-ray image (PNG, TIFF, NRRD, MHA or DICOM), bone bright unless --invert; repeat per view")
    xray.add_argument("--geometry", action="append", required=True, metavar="G.json|dicom", default=suppress,
                      help="the matching X-ray's spinereg-xray-geometry JSON (write one with 'spinereg geometry'), "
                      "or the word 'dicom' to read it from the X-ray's DICOM tags (isocentre taken at the "
                      "vertebrae's centroid); repeat per view")
    xray.add_argument("--invert", action="store_true",
                      help="the X-rays are stored bone-dark: flip their intensities (DICOM MONOCHROME1 needs no flag)")

    method = parser.add_argument_group("registration")
    method.add_argument("--init", metavar="INIT.json|INIT.h5", default=suppress,
                        help="initial pose of the CT (CT RAS -> world RAS): JSON {\"matrix_ras\": 4x4} or an ITK "
                        "transform (.h5/.tfm); must be rigid (default: identity, the CT as scanned)")
    method.add_argument("--roi", metavar="ROI.json", default=suppress,
                        help="vertebra boxes in CT RAS (format spinereg-roi v1, as the Slicer module writes its ROI "
                        "nodes): a vertebra's registration compares only the CT inside its box, and starts moved by "
                        "the box's shift from its default place (centre of the vertebra's voxel bounding box), after "
                        "--init")
    method.add_argument("--boxes", metavar="BOXES.json", default=suppress,
                        help="vertebra boxes on the X-rays (format spinereg-xray-boxes v1, by view name = the "
                        "geometry file stem, e.g. from 'spinereg detect'); only accepted boxes count: a vertebra "
                        "with boxes in two views or more starts where their centres triangulate, and its "
                        "translation search keeps its projected centre inside each of its boxes")
    method.add_argument("--method", default="auto", choices=METHODS,
                        help="intensity: DRR similarity (gradient and patch NCC) with a global search and "
                        "multi-resolution gradient refinement; learned: the pose network's answer alone (well "
                        "under a second); auto: the network's rotation, then the intensity "
                        "registration's translation grid and refinement, the full intensity search when the result "
                        "is in doubt (intensity alone when no model is shipped)")
    method.add_argument("--model", metavar="MODEL.pt", default=suppress,
                        help="pose-network model file for learned/auto, e.g. from 'spinereg train' (default: the "
                        "model shipped in Resources/Models)")
    method.add_argument("--device", default="cpu", help="torch device: cpu, cuda (cuda:N) or auto (cuda when available)")
    method.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                        help="torch CPU threads (torch.set_num_threads). 1 by default: one vertebra's tensors are "
                        "small (its cropped volume, a few thousand rays per view), so more threads mostly add "
                        "synchronisation; measured on a shared 2-core CPU, one vertebra took 14-22 s with 1 thread "
                        "and 97-112 s with 2. Try more on a many-core CPU with fine (< 1 mm) CTs")

    output = parser.add_argument_group("output")
    add_output_folder(output)
    add_resume(output, "register", "vertebrae")
    parser.set_defaults(func=run)
    return parser


class _ProgressPrinter:
    """Progress on stderr: ``[i/n] L1: registering`` when a vertebra starts, a tqdm bar
    (``L1:  40%|####  | ...``) within it and a one-line summary when it ends. The Slicer
    module's runner parses exactly these lines (SpineRegistrationModuleLib.process)."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.bar = None
        self.index = None

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if event.index != self.index:
            self.close()
            self.index = event.index
            print(f"[{event.index}/{event.count}] {event.vertebra}: registering", file=self.stream, flush=True)
            self.bar = tqdm(total=100, desc=event.vertebra, file=self.stream, leave=False, mininterval=0.2)
        self.bar.set_postfix_str(event.stage, refresh=False)
        self.bar.update(max(0, round(100 * event.fraction) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _table(results) -> str:
    """The summary table printed on stdout (level_margin and evidence: the verdict's readings, "-" where
    not read; the evidence only where it could change the verdict)."""
    lines = [f"{'vertebra':<9} {'similarity':>10} {'level_margin':>12} {'evidence':>8}  {'verdict':<7} {'time_s':>7} "
             f"{'renders':>8}"]
    for r in results:
        lead = "-" if r.level_margin is None else f"{r.level_margin:+.3f}"
        evidence = "-" if r.vertebra_evidence is None else f"{r.vertebra_evidence:.3f}"
        lines.append(f"{r.name:<9} {r.similarity:>10.3f} {lead:>12} {evidence:>8}  {r.verdict:<7} {r.time_s:>7.1f} "
                     f"{r.evaluations:>8d}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import sys
    import time

    from ..io.atomic import staged_output_dir
    from ..io.journal import RunJournal
    from ..io.results import VertebraResult
    from ..pipeline import RegisterConfig, case_fingerprint, iter_register_case, load_case, write_result
    from ..rigid import RigidConfig

    started = time.perf_counter()
    config = RegisterConfig(
        ct=args.ct,
        seg=args.seg,
        xrays=args.xray,
        geometries=args.geometry,
        vertebrae=getattr(args, "vertebra", None) or (),
        label_scheme=args.label_scheme,
        invert=args.invert,
        init=getattr(args, "init", None),
        method=args.method,
        device=args.device,
        rigid=RigidConfig(),
        threads=args.threads,
        model=getattr(args, "model", None),
        roi=getattr(args, "roi", None),
        boxes=getattr(args, "boxes", None),
    )
    journal = None
    try:
        with staged_output_dir(args.out, args.overwrite) as staging:
            case = load_case(config)  # every bad-input check, before any line of progress
            journal = RunJournal(args.out, "register", case_fingerprint(case), args.resume, args.overwrite)
            resumed = {name: VertebraResult.from_json(name, journal.done[name], str(journal.path))
                       for name in case.vertebrae if name in journal.done}
            for note in case.notes:
                print(f"spinereg: note: {note}", file=sys.stderr)
            if args.resume:
                print(f"resuming: {len(resumed)} of {len(case.vertebrae)} vertebra(e) done before"
                      if resumed else "nothing to resume: starting afresh", file=sys.stderr)
            print(f"registering {len(case.vertebrae)} vertebra(e) ({', '.join(case.vertebrae)}) to "
                  f"{len(case.views)} views ({', '.join(case.views)}), method {case.method}, device {case.device}",
                  file=sys.stderr, flush=True)
            printer = _ProgressPrinter(sys.stderr)
            results = []
            try:
                for result in iter_register_case(case, progress=printer, done=resumed):
                    printer.close()
                    results.append(result)
                    if result.name in resumed:
                        print(f"{result.name}: similarity {result.similarity:.3f} ({result.verdict}), from the "
                              "interrupted run", file=sys.stderr, flush=True)
                        continue
                    journal.record(result.name, result.to_json())
                    print(f"{result.name}: similarity {result.similarity:.3f} ({result.verdict}), "
                          f"{result.time_s:.1f} s, {result.evaluations} renders", file=sys.stderr, flush=True)
            finally:
                printer.close()
            paths = write_result(staging, results, case, total_time_s=time.perf_counter() - started)
    except KeyboardInterrupt:
        if journal is None or not journal.done:
            raise
        return interrupted(journal, "vertebra(e)")
    journal.discard()
    doubt = [r.name for r in results if r.verdict != "pass"]
    if doubt:
        reasons = "; ".join(f"{r.name}: {r.verdict_reason or 'in doubt'}" for r in results if r.verdict != "pass")
        print(f"spinereg: warning: registration in doubt ({reasons}); check the overlay before using it",
              file=sys.stderr)
    print(_table(results))
    names = ", ".join(path.name for path in paths.values())
    print(f"wrote {args.out}: {names} ({len(results)} vertebra(e), {len(doubt)} in doubt, "
          f"{time.perf_counter() - started:.1f} s in all)")
    return 0
