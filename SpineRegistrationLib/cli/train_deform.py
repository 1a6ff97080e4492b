"""``spinereg train-deform``: train or fine-tune the deformable CT-to-CT network on synthetic pairs.

Examples::

    spinereg train-deform --out run/                                  # varied procedural phantoms
    spinereg train-deform --ct ct.nii.gz --seg seg.nii.gz --init-model shipped --steps 300 --out patient/
    spinereg train-deform --out run/ --resume                         # continue after Ctrl-C
    torchrun --nproc_per_node 4 -m SpineRegistrationLib train-deform --device cuda --out run/

The work is :mod:`SpineRegistrationLib.deform.training`; training CTs are found as for
``spinereg train`` (:func:`.train.sources_from_args` rules: --ct/--seg pairs, --data, or phantoms).
"""

from __future__ import annotations

import argparse

from ..core.labels import SCHEME_CHOICES

DESCRIPTION = (
    "Train the deformable CT-to-CT network (MONAI VoxelMorph, diffeomorphic) on pairs synthesised on the fly "
    "from CTs with vertebra labelmaps: each vertebra moved rigidly, smooth soft-tissue warps between them, the "
    "known field as one loss term beside LNCC, bending energy and Dice. Writes to DIR: checkpoint.pt (continue "
    "with --resume), model.pt (use it with 'spinereg deform --fixed ... --model'), log.csv, config.json."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train-deform", help="train or fine-tune the deformable CT-to-CT network",
                                   description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    suppress = argparse.SUPPRESS
    data = parser.add_argument_group("training CTs (default: --phantoms varied procedural phantoms)")
    data.add_argument("--ct", action="append", metavar="CT", default=suppress, help="CT in HU; repeat with --seg")
    data.add_argument("--seg", action="append", metavar="SEG", default=suppress,
                      help="the matching CT's vertebra labelmap or .seg.nrrd; one per --ct, same order")
    data.add_argument("--data", metavar="DIR", default=suppress,
                      help="folder of CTs: every <case>_ct.<ext> with its <case>_seg*.<ext> labelmap")
    data.add_argument("--label-scheme", default="auto", choices=SCHEME_CHOICES, help="label numbering of the labelmaps")
    data.add_argument("--phantoms", type=int, default=6, metavar="N", help="phantoms when no CT is given")
    data.add_argument("--phantom-seed", type=int, default=2000, metavar="S", help="seed of the first phantom")

    training = parser.add_argument_group("training")
    training.add_argument("--out", required=True, metavar="DIR", help="training folder (new or empty unless --resume)")
    training.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    training.add_argument("--init-model", metavar="MODEL.pt|shipped", default=suppress,
                          help="start from these weights; 'shipped' is Resources/Models/deform_phantoms.pt")
    training.add_argument("--steps", type=int, default=600, help="optimiser steps")
    training.add_argument("--batch-size", type=int, default=1, help="pairs per step (per process)")
    training.add_argument("--crop", type=int, default=48, help="training crop, working-grid nodes per side")
    training.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (one-cycle schedule)")
    training.add_argument("--dice-weight", type=float, default=1.0, help="weight of the Dice term (0: no labels)")
    training.add_argument("--truth-weight", type=float, default=1.0, help="weight of the known-field term")
    training.add_argument("--seed", type=int, default=0, help="seeds the weights and the pair stream")
    training.add_argument("--workers", type=int, default=0, help="processes synthesising pairs (0: none)")
    training.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or auto")
    training.add_argument("--threads", type=int, default=None, help="torch CPU threads of the training process")
    training.add_argument("--log-every", type=int, default=10, metavar="STEPS", help="rows of log.csv")
    training.add_argument("--checkpoint-every", type=int, default=50, metavar="STEPS", help="checkpoint.pt refresh")
    parser.add_argument("--spacing-mm", type=float, default=2.0, help="working-grid spacing of a new model, mm")
    parser.set_defaults(func=run)
    return parser


def pair_sources(args: argparse.Namespace, spacing_mm: float) -> list:
    """The training CTs the options name, as :class:`..synthetic.deformation_pairs.PairSource`."""
    import dataclasses
    from pathlib import Path

    from ..core.labelmap import Labelmap
    from ..errors import InputError
    from ..io import read_labelmap, read_volume
    from ..synthetic.deformation_pairs import PairSource
    from .train import _pairs_in

    cts, segs = getattr(args, "ct", []), getattr(args, "seg", [])
    if len(cts) != len(segs):
        raise InputError(f"got {len(cts)} --ct and {len(segs)} --seg: give one labelmap per CT, in the same order")
    pairs = [(Path(ct).name.split(".")[0], ct, seg) for ct, seg in zip(cts, segs)]
    if hasattr(args, "data"):
        pairs += _pairs_in(args.data)
    if not pairs:
        from ..synthetic.phantom import generate_phantom, varied_phantom_config

        if args.phantoms < 1:
            raise InputError(f"--phantoms must be >= 1, got {args.phantoms}")
        sources = []
        for seed in range(args.phantom_seed, args.phantom_seed + args.phantoms):
            # Phantoms at half the working spacing: averaged onto the working grid
            # as a patient's CT is, so the network never sees sharper edges than at inference.
            config = dataclasses.replace(varied_phantom_config(seed), spacing_mm=spacing_mm / 2.0)
            phantom = generate_phantom(config)
            sources.append(PairSource(phantom.ct, Labelmap(phantom.labels, "verse"), spacing_mm, f"phantom-{seed}"))
        return sources
    sources = []
    for name, ct_path, seg_path in pairs:
        ct = read_volume(ct_path)
        labelmap = read_labelmap(seg_path, scheme=args.label_scheme)
        if labelmap.volume.array.shape != ct.array.shape:
            raise InputError(f"{seg_path} does not share the voxel grid of {ct_path}: resample it onto the CT")
        if not labelmap.values:
            raise InputError(f"{seg_path} is empty: no labelled voxel")
        sources.append(PairSource(ct, labelmap, spacing_mm, name))
    return sources


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from ..deform.network import DeformModelConfig, shipped_network_path
    from ..deform.training import TrainDeformConfig, check_run, train_deform
    from ..errors import InputError
    from ..methods import resolve_device

    init_model = getattr(args, "init_model", None)
    if init_model == "shipped":
        init_model = shipped_network_path()
        if init_model is None:
            raise InputError("--init-model shipped: no deformable model is shipped in Resources/Models")
    config = TrainDeformConfig(
        out=Path(args.out), steps=args.steps, batch_size=args.batch_size, crop=args.crop, lr=args.lr,
        dice_weight=args.dice_weight, truth_weight=args.truth_weight, seed=args.seed, workers=args.workers,
        device=resolve_device(args.device), threads=args.threads, resume=args.resume,
        init_model=None if init_model is None else Path(init_model), log_every=args.log_every,
        checkpoint_every=args.checkpoint_every, model=DeformModelConfig(spacing_mm=args.spacing_mm),
    )
    payload = check_run(config) if int(os.environ.get("RANK", "0")) == 0 else None
    if payload is None and config.init_model is not None:  # fine-tuning keeps the model's own working grid
        from ..deform.training import MODEL_FORMATS
        from ..learned.checkpoint import read_payload

        payload = read_payload(config.init_model, MODEL_FORMATS)
    spacing = float(payload["config"]["spacing_mm"]) if payload is not None else config.model.spacing_mm
    sources = pair_sources(args, spacing)
    print(f"training on {len(sources)} CT(s): {', '.join(s.name for s in sources)}; {config.steps} steps of "
          f"{config.batch_size} pair(s) of {config.crop}^3 at {spacing:g} mm on {config.device}",
          file=sys.stderr, flush=True)
    try:
        model = train_deform(sources, config)
    except KeyboardInterrupt:
        print(f"spinereg: interrupted: checkpoint saved in {config.out}; continue with --resume", file=sys.stderr)
        return 130
    print(f"wrote {model} (log: {config.out / 'log.csv'})")
    return 0
