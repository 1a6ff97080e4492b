"""What the training commands (``train``, ``train-deform``, ``train-detect``) share: the options
naming the training CTs and the run (folder, steps, optimiser, workers, device, checkpoints),
the CT files they name, and running a training that Ctrl-C interrupts into a checkpoint.

Each command keeps its own defaults (passed in) and its own model options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ..core.labels import SCHEME_CHOICES
from ..errors import InputError

#: Image suffixes a --data folder is searched for.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def add_training_cts(parser: argparse.ArgumentParser, phantom_seed: int) -> argparse._ArgumentGroup:
    """The group naming the training CTs: --ct/--seg pairs, --data, --label-scheme, --phantoms."""
    suppress = argparse.SUPPRESS
    data = parser.add_argument_group("training CTs (default: --phantoms varied procedural phantoms)")
    data.add_argument("--ct", action="append", metavar="CT", default=suppress,
                      help="CT in HU (NIfTI, NRRD, MHA, DICOM folder); repeat with --seg for several")
    data.add_argument("--seg", action="append", metavar="SEG", default=suppress,
                      help="the matching CT's vertebra labelmap or .seg.nrrd; one per --ct, same order")
    data.add_argument("--data", metavar="DIR", default=suppress,
                      help="folder of CTs: every <case>_ct.<ext> with its <case>_seg*.<ext> labelmap")
    data.add_argument("--label-scheme", default="auto", choices=SCHEME_CHOICES, help="label numbering of the labelmaps")
    data.add_argument("--phantoms", type=int, default=6, metavar="N", help="phantoms when no CT is given")
    data.add_argument("--phantom-seed", type=int, default=phantom_seed, metavar="S", help="seed of the first phantom")
    return data


def add_run_options(parser: argparse.ArgumentParser, *, steps: int | None, batch_size: int | None, lr: float | None,
                    workers: int, threads: int | None, log_every: int, checkpoint_every: int,
                    shipped: str) -> argparse._ArgumentGroup:
    """The group of the run itself, with the command's defaults (None for steps, batch size and lr:
    the config class of the network trained decides; a string: the command decides later, the
    string says how); ``shipped`` names what ``--init-model shipped`` loads."""
    training = parser.add_argument_group("training")
    training.add_argument("--out", required=True, metavar="DIR", help="training folder (must be new or empty unless --resume)")
    training.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    training.add_argument("--init-model", metavar="MODEL.pt|shipped", default=argparse.SUPPRESS,
                          help=f"start from these weights (fine-tuning); 'shipped' is {shipped}")
    for flag, kind, default, text in (("--steps", int, steps, "optimiser steps"),
                                      ("--batch-size", int, batch_size, "samples per step (per process)"),
                                      ("--lr", float, lr, "peak learning rate (one-cycle schedule)")):
        if default is None or isinstance(default, str):  # absent: decided later (run_fields leaves it out)
            decided = "the network's" if default is None else default
            training.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=f"{text} (default: {decided})")
        else:
            training.add_argument(flag, type=kind, default=default, help=text)
    training.add_argument("--seed", type=int, default=0, help="seeds the weights and the sample stream")
    training.add_argument("--workers", type=int, default=workers, help="processes synthesising samples (0: none)")
    training.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N or auto")
    training.add_argument("--threads", type=int, default=threads, help="torch CPU threads of the training process")
    training.add_argument("--log-every", type=int, default=log_every, metavar="STEPS", help="rows of log.csv")
    training.add_argument("--checkpoint-every", type=int, default=checkpoint_every, metavar="STEPS",
                          help="checkpoint.pt refresh")
    return training


def run_fields(args: argparse.Namespace, shipped: Callable[[], Path | None]) -> dict:
    """The :class:`..learned.training.RunConfig` fields the run options give; ``shipped()`` is
    the shipped model's path (None when none is shipped) for ``--init-model shipped``."""
    from ..methods import resolve_device

    init_model = getattr(args, "init_model", None)
    if init_model == "shipped":
        init_model = shipped()
        if init_model is None:
            raise InputError("--init-model shipped: no such model is shipped in Resources/Models")
    fields = dict(out=Path(args.out), seed=args.seed, workers=args.workers, device=resolve_device(args.device),
                  threads=args.threads, resume=args.resume, init_model=None if init_model is None else Path(init_model),
                  log_every=args.log_every, checkpoint_every=args.checkpoint_every)
    for name in ("steps", "batch_size", "lr"):  # absent: left to the config class's default
        if hasattr(args, name):
            fields[name] = getattr(args, name)
    return fields


def _pairs_in(folder) -> list[tuple[str, str, str]]:
    """(name, CT, labelmap) for every <case>_ct.<ext> in ``folder`` and its one <case>_seg*.<ext>."""
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


def training_cts(args: argparse.Namespace) -> list[tuple[str, object, object]]:
    """(name, CT Volume, Labelmap) of every CT the options name (--ct/--seg pairs, then --data),
    read and checked (same voxel grid, not empty); [] when none is named (phantoms then)."""
    from ..io import read_labelmap, read_volume

    cts, segs = getattr(args, "ct", []), getattr(args, "seg", [])
    if len(cts) != len(segs):
        raise InputError(f"got {len(cts)} --ct and {len(segs)} --seg: give one labelmap per CT, in the same order")
    pairs = [(Path(ct).name.split(".")[0], ct, seg) for ct, seg in zip(cts, segs)]
    if hasattr(args, "data"):
        pairs += _pairs_in(args.data)
    if not pairs and args.phantoms < 1:
        raise InputError(f"--phantoms must be >= 1, got {args.phantoms}")
    read = []
    for name, ct_path, seg_path in pairs:
        ct = read_volume(ct_path)
        labelmap = read_labelmap(seg_path, scheme=args.label_scheme)
        if labelmap.volume.array.shape != ct.array.shape:
            raise InputError(f"{seg_path} does not share the voxel grid of {ct_path}: resample it onto the CT")
        if not labelmap.values:
            raise InputError(f"{seg_path} is empty: no labelled voxel")
        read.append((name, ct, labelmap))
    return read


def patient_specific(args: argparse.Namespace) -> bool:
    """Does the run train on one given CT (the patient's own), not on several, a folder or phantoms?"""
    return len(getattr(args, "ct", [])) == 1 and not hasattr(args, "data")


def kind_defaults(args: argparse.Namespace, defaults: dict[str, tuple]) -> None:
    """Fill the options of ``defaults`` (dest -> (patient-specific value, general value)) that the command
    line left out, by the kind of run (:func:`patient_specific`)."""
    patient = patient_specific(args)
    for dest, (for_patient, general) in defaults.items():
        if not hasattr(args, dest):
            setattr(args, dest, for_patient if patient else general)


def run_training(train: Callable[[], Path], out: Path) -> int:
    """Run ``train()`` (it returns the model file): exit 0 with the model's path on stdout,
    130 when Ctrl-C stops it (its checkpoint is in ``out``)."""
    try:
        model = train()
    except KeyboardInterrupt:
        print(f"spinereg: interrupted: checkpoint saved in {out}; continue with --resume", file=sys.stderr)
        return 130
    print(f"wrote {model} (log: {Path(out) / 'log.csv'})")
    return 0
