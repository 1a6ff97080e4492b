"""``spinereg train``: train or fine-tune the pose network on synthetic X-rays of CTs.

Examples::

    spinereg train --out run/                                   # general: varied phantoms
    spinereg train --ct ct.nii.gz --seg seg.nii.gz --init-model shipped --steps 1500 --out patient/
    spinereg train --data cts/ --out run/                       # general: every <case>_ct / <case>_seg pair
    spinereg train --out run/ --resume                          # continue after Ctrl-C
    torchrun --nproc_per_node 4 -m SpineRegistrationLib train --device cuda --out run/

The work is :mod:`SpineRegistrationLib.learned.training`; this file turns options into a
:class:`~SpineRegistrationLib.learned.training.TrainConfig` and training CTs.
"""

from __future__ import annotations

import argparse

from ..core.labels import SCHEME_CHOICES

#: Image suffixes a --data folder is searched for.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

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
    suppress = argparse.SUPPRESS
    data = parser.add_argument_group("training CTs (default: --phantoms varied procedural phantoms)")
    data.add_argument("--ct", action="append", metavar="CT", default=suppress,
                      help="CT in HU (NIfTI, NRRD, MHA, DICOM folder); repeat with --seg for several")
    data.add_argument("--seg", action="append", metavar="SEG", default=suppress,
                      help="the matching CT's vertebra labelmap or .seg.nrrd; one per --ct, same order")
    data.add_argument("--data", metavar="DIR", default=suppress,
                      help="folder of CTs: every <case>_ct.<ext> with its <case>_seg*.<ext> labelmap")
    data.add_argument("--label-scheme", default="auto", choices=SCHEME_CHOICES,
                      help="label numbering of the labelmaps")
    data.add_argument("--vertebra", action="append", metavar="NAME", default=suppress,
                      help="train on these vertebrae only (repeat; default: every labelled vertebra)")
    data.add_argument("--phantoms", type=int, default=6, metavar="N", help="phantoms when no CT is given")
    data.add_argument("--phantom-seed", type=int, default=1000, metavar="S", help="seed of the first phantom")

    training = parser.add_argument_group("training")
    training.add_argument("--out", required=True, metavar="DIR", help="training folder (must be new or empty unless --resume)")
    training.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    training.add_argument("--init-model", metavar="MODEL.pt|shipped", default=suppress,
                     help="start from these weights (fine-tuning); 'shipped' is the model in Resources/Models")
    training.add_argument("--steps", type=int, default=4500, help="optimiser steps")
    training.add_argument("--batch-size", type=int, default=16, help="samples per step (per process)")
    training.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (one-cycle schedule)")
    training.add_argument("--seed", type=int, default=0, help="seeds the weights and the sample stream")
    training.add_argument("--workers", type=int, default=1, help="processes synthesising samples (0: none)")
    training.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or auto")
    training.add_argument("--threads", type=int, default=1, help="torch CPU threads of the training process")
    training.add_argument("--log-every", type=int, default=20, metavar="STEPS", help="rows of log.csv")
    training.add_argument("--validate-every", type=int, default=250, metavar="STEPS", help="validation errors in log.csv")
    training.add_argument("--checkpoint-every", type=int, default=100, metavar="STEPS", help="checkpoint.pt refresh")
    training.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events (needs tensorboard)")

    model = parser.add_argument_group("model input (new models only; a model's own input is kept)")
    model.add_argument("--size-px", type=int, default=64, help="patch side in pixels (a multiple of 16)")
    model.add_argument("--mm-per-px", type=float, default=2.5, help="patch pixel at the vertebra centre, mm")
    parser.set_defaults(func=run)
    return parser


def _pairs_in(folder) -> list[tuple[str, str, str]]:
    """(name, CT, labelmap) for every <case>_ct.<ext> in ``folder`` and its one <case>_seg*.<ext>."""
    from pathlib import Path

    from ..errors import InputError

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--data folder {folder} does not exist")
    pairs = []
    for ct in sorted(folder.iterdir()):
        suffix = next((s for s in IMAGE_SUFFIXES if ct.name.endswith("_ct" + s)), None)
        if suffix is None:
            continue
        case = ct.name[: -len("_ct" + suffix)]
        segs = sorted(p for p in folder.iterdir() if p.name.startswith(case + "_seg")
                      and any(p.name.endswith(s) for s in IMAGE_SUFFIXES))
        if len(segs) != 1:
            raise InputError(f"{ct}: expected one labelmap named {case}_seg*<{'|'.join(IMAGE_SUFFIXES)}> beside it, "
                             f"found {len(segs)}")
        pairs.append((case, str(ct), str(segs[0])))
    if not pairs:
        raise InputError(f"--data folder {folder} holds no <case>_ct.<ext> file")
    return pairs


def sources_from_args(args: argparse.Namespace, spec) -> list:
    """The training CTs the options name (files, a folder, or phantoms)."""
    from pathlib import Path

    from ..errors import InputError
    from ..io import read_labelmap, read_volume
    from ..core.labels import canonical_name
    from ..learned.data import TrainingCT, phantom_sources

    cts, segs = getattr(args, "ct", []), getattr(args, "seg", [])
    if len(cts) != len(segs):
        raise InputError(f"got {len(cts)} --ct and {len(segs)} --seg: give one labelmap per CT, in the same order")
    pairs = [(Path(ct).name.split(".")[0], ct, seg) for ct, seg in zip(cts, segs)]
    if hasattr(args, "data"):
        pairs += _pairs_in(args.data)
    vertebrae = [canonical_name(str(v)) or str(v) for v in getattr(args, "vertebra", [])]
    if not pairs:
        if args.phantoms < 1:
            raise InputError(f"--phantoms must be >= 1, got {args.phantoms}")
        sources = phantom_sources(args.phantoms, args.phantom_seed, spec)
        if vertebrae:
            sources = [TrainingCT(s.ct, s.labelmap, spec, s.name, [v for v in vertebrae if v in s.labelmap.labels]
                                  or vertebrae) for s in sources]
        return sources
    sources = []
    for name, ct_path, seg_path in pairs:
        ct = read_volume(ct_path)
        labelmap = read_labelmap(seg_path, scheme=args.label_scheme)
        if labelmap.volume.array.shape != ct.array.shape:
            raise InputError(f"{seg_path} does not share the voxel grid of {ct_path}: resample it onto the CT")
        sources.append(TrainingCT(ct, labelmap, spec, name=name, vertebrae=vertebrae or None))
    return sources


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    from pathlib import Path

    from ..errors import InputError
    from ..learned.network import ModelConfig
    from ..learned.training import TrainConfig, check_run, train
    from ..learned.models import shipped_model
    from ..methods import resolve_device

    init_model = getattr(args, "init_model", None)
    if init_model == "shipped":
        init_model = shipped_model()
        if init_model is None:
            raise InputError("--init-model shipped: no model is shipped in Resources/Models")
    config = TrainConfig(
        out=Path(args.out), steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        workers=args.workers, device=resolve_device(args.device), threads=args.threads, resume=args.resume,
        init_model=None if init_model is None else Path(init_model), tensorboard=args.tensorboard,
        log_every=args.log_every, validate_every=args.validate_every, checkpoint_every=args.checkpoint_every,
        model=ModelConfig(size_px=args.size_px, mm_per_px=args.mm_per_px),
    )
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, process 0 owns the folder
        check_run(config)  # the folder and checkpoint first: cheap, and nothing is built for a refused run
    sources = sources_from_args(args, config.model.patch)
    print(f"training on {len(sources)} CT(s): {', '.join(s.name for s in sources)}; {config.steps} steps of "
          f"{config.batch_size} samples on {config.device}", file=sys.stderr, flush=True)
    try:
        model = train(sources, config)
    except KeyboardInterrupt:
        print(f"spinereg: interrupted: checkpoint saved in {config.out}; continue with --resume", file=sys.stderr)
        return 130
    print(f"wrote {model} (log: {config.out / 'log.csv'})")
    return 0
