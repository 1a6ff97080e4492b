"""``spinereg train-detect``: train or fine-tune the vertebra detector on synthetic X-rays of CTs.

Examples::

    spinereg train-detect --out run/                                   # general: varied phantoms
    spinereg train-detect --ct ct.nii.gz --seg seg.nii.gz --init-model shipped --out patient/   # patient-specific
    spinereg train-detect --out run/ --resume                          # continue after Ctrl-C

The work is :mod:`SpineRegistrationLib.learned.detector_training`; training CTs are found as for
``spinereg train`` (:func:`.training_options.training_cts`: --ct/--seg pairs, --data, or phantoms).
"""

from __future__ import annotations

import argparse

from .training_options import add_run_options, add_training_cts, kind_defaults, run_fields, run_training, training_cts

#: Defaults of a patient-specific run (one --ct): the views drawn and the steps of the single run that named
#: the real CT's vertebrae best (README, the detector section); general training (phantoms) keeps a smaller
#: bank per CT and fewer steps.
PATIENT_DRAWS, GENERAL_DRAWS = 1500, 200
PATIENT_STEPS, GENERAL_STEPS = 8000, 2500

DESCRIPTION = (
    "Train the vertebra detector (one X-ray in, an oriented box and a level name per vertebra out) on X-rays "
    "rendered from CTs with vertebra labelmaps under random C-arm views and poses, the boxes projected from the "
    "labels. The views are rendered once into DIR/bank.npz; every step makes radiographs of them with fresh noise, "
    "scatter, blur, gamma and collimation. With one CT (--ct/--seg): patient-specific training on the patient's "
    "own CT; without: varied procedural phantoms. Writes to DIR: checkpoint.pt (continue with --resume), model.pt "
    "(use it with 'spinereg detect --model'), log.csv (loss terms; validation recall, level accuracy, IoU), "
    "config.json."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train-detect", help="train or fine-tune the vertebra detector on X-rays",
                                   description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_cts(parser, phantom_seed=3000)
    training = add_run_options(parser, steps=f"{PATIENT_STEPS} for a patient-specific run (one --ct), else {GENERAL_STEPS}",
                               batch_size=8, lr=2e-3, workers=0, threads=1, log_every=25,
                               checkpoint_every=100, shipped="Resources/Models/vertebra_detector_phantoms.pt")
    training.add_argument("--validate-every", type=int, default=250, metavar="STEPS", help="validation figures in log.csv")
    views = parser.add_argument_group("training views")
    views.add_argument("--draws-per-ct", type=int, default=argparse.SUPPRESS, metavar="N",
                       help="poses and C-arms drawn per CT (an AP and a LAT view each), rendered once (default: "
                            f"{PATIENT_DRAWS} for a patient-specific run, about 400 MB a CT, else {GENERAL_DRAWS})")
    views.add_argument("--mm-per-px", type=float, default=2.0,
                       help="input pixel at the detector of a new model, mm (a fine-tuned model keeps its own)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    import sys

    from ..learned.checkpoint import read_payload
    from ..learned.detector import DETECTOR_CHECKPOINT_FORMAT, DETECTOR_FORMAT, DetectorConfig, shipped_detector
    from ..learned.detector_data import DetectorCT, DetectorSynthesis, detector_acquisition
    from ..learned.detector_training import DetectTrainConfig, check_detect_run, train_detector

    run_defaults(args)
    fields = run_fields(args, shipped_detector)
    model = DetectorConfig(mm_per_px=args.mm_per_px)
    if fields["init_model"] is not None:  # fine-tuning keeps the model's own input
        model = DetectorConfig.from_dict(read_payload(fields["init_model"], (DETECTOR_FORMAT, DETECTOR_CHECKPOINT_FORMAT))["config"])
    if args.draws_per_ct < 1:
        from ..errors import InputError

        raise InputError(f"--draws-per-ct must be >= 1, got {args.draws_per_ct}")
    synthesis = DetectorSynthesis(acquisition=detector_acquisition(model.mm_per_px), draws_per_ct=args.draws_per_ct)
    config = DetectTrainConfig(**fields, validate_every=args.validate_every, model=model, synthesis=synthesis)
    check_detect_run(config)  # the folder and checkpoint first: cheap, and nothing is built for a refused run
    cts = training_cts(args)
    if cts:
        sources = [DetectorCT(ct, labelmap, name, model.mm_per_px) for name, ct, labelmap in cts]
    else:
        from ..io.labelmaps import Labelmap
        from ..synthetic.phantom import generate_phantom, varied_phantom_config

        phantoms = [(seed, generate_phantom(varied_phantom_config(seed)))
                    for seed in range(args.phantom_seed, args.phantom_seed + args.phantoms)]
        sources = [DetectorCT(p.ct, Labelmap(p.labels, "verse"), f"phantom-{seed}", model.mm_per_px) for seed, p in phantoms]
    print(f"training on {len(sources)} CT(s): {', '.join(s.name for s in sources)}; {config.steps} steps of "
          f"{config.batch_size} X-rays on {config.device}", file=sys.stderr, flush=True)
    return run_training(lambda: train_detector(sources, config), config.out)


def run_defaults(args: argparse.Namespace) -> None:
    """Fill --steps and --draws-per-ct where not given, by the kind of run (:func:`.training_options.patient_specific`)."""
    kind_defaults(args, {"steps": (PATIENT_STEPS, GENERAL_STEPS), "draws_per_ct": (PATIENT_DRAWS, GENERAL_DRAWS)})
