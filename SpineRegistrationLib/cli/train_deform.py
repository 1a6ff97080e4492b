"""``spinereg train-deform``: train or fine-tune the CT-to-CT networks on synthetic pairs: the
deformable network (the default) or, with ``--network rigid``, the rigid keypoint network that starts it.

Examples::

    spinereg train-deform --out run/                                  # varied procedural phantoms
    spinereg train-deform --network rigid --out rigid/                # the rigid keypoint network
    spinereg train-deform --ct ct.nii.gz --seg seg.nii.gz --init-model shipped --steps 300 --out patient/
    spinereg train-deform --out run/ --resume                         # continue after Ctrl-C
    torchrun --nproc_per_node 4 -m SpineRegistrationLib train-deform --device cuda --out run/

The work is :mod:`SpineRegistrationLib.deform.training`; training CTs are found as for
``spinereg train`` (:func:`.training_options.training_cts`: --ct/--seg pairs, --data, or phantoms).
"""

from __future__ import annotations

import argparse

from .training_options import add_run_options, add_training_cts, run_fields, run_training, training_cts

DESCRIPTION = (
    "Train the deformable CT-to-CT network (MONAI VoxelMorph, diffeomorphic, reading the pair's optical-flow terms; "
    "--inputs images: the two images alone, plain VoxelMorph) on pairs synthesised on the fly "
    "from CTs with vertebra labelmaps: each vertebra moved rigidly, smooth soft-tissue warps between them, the "
    "known field as one loss term beside LNCC, bending energy and Dice. With --network rigid, train the rigid "
    "keypoint network (MONAI BasicUNet heat maps, fitted by Kabsch) on the same pairs turned by up to 10 deg / "
    "20 mm, against the truth at the vertebra voxels. Writes to DIR: checkpoint.pt (continue with --resume), model.pt (use it with "
    "'spinereg deform --fixed ... --model', or '--rigid-model' for the rigid one), log.csv, config.json."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train-deform", help="train or fine-tune the deformable CT-to-CT network",
                                   description=DESCRIPTION, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_training_cts(parser, phantom_seed=2000)
    training = add_run_options(parser, steps=None, batch_size=None, lr=None, workers=0, threads=None, log_every=10,
                               checkpoint_every=50,
                               shipped="Resources/Models/deform_phantoms.pt (rigid3d_phantoms.pt with --network rigid)")
    training.add_argument("--network", choices=("deformable", "rigid"), default="deformable",
                          help="which network: the deformable one (600 steps of 1 pair, lr 3e-3) or the rigid "
                               "keypoint network (1500 steps of 4 pairs, lr 1e-3)")
    training.add_argument("--crop", type=int, default=48, help="deformable: training crop, working-grid nodes per side")
    training.add_argument("--dice-weight", type=float, default=1.0, help="deformable: weight of the Dice term (0: no labels)")
    training.add_argument("--truth-weight", type=float, default=1.0, help="deformable: weight of the known-field term")
    parser.add_argument("--spacing-mm", type=float, default=2.0, help="deformable: working-grid spacing of a new model, mm")
    parser.add_argument("--inputs", choices=("flow", "images"), default="flow",
                        help="deformable, new models: 'flow' (optical-flow terms before the UNet) or 'images' "
                             "(plain MONAI VoxelMorph)")
    parser.set_defaults(func=run)
    return parser


def pair_sources(args: argparse.Namespace, spacing_mm: float) -> list:
    """The training CTs the options name, as :class:`..synthetic.deformation_pairs.PairSource`."""
    import dataclasses

    from ..core.labelmap import Labelmap
    from ..synthetic.deformation_pairs import PairSource

    cts = training_cts(args)
    if cts:
        return [PairSource(ct, labelmap, spacing_mm, name) for name, ct, labelmap in cts]
    from ..synthetic.phantom import generate_phantom, varied_phantom_config

    sources = []
    for seed in range(args.phantom_seed, args.phantom_seed + args.phantoms):
        # Phantoms at half the working spacing: averaged onto the working grid
        # as a patient's CT is, so the network never sees sharper edges than at inference.
        config = dataclasses.replace(varied_phantom_config(seed), spacing_mm=spacing_mm / 2.0)
        phantom = generate_phantom(config)
        sources.append(PairSource(phantom.ct, Labelmap(phantom.labels, "verse"), spacing_mm, f"phantom-{seed}"))
    return sources


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from ..deform.network import DeformModelConfig, shipped_network_path
    from ..deform.rigid_network import shipped_rigid_path
    from ..deform.training import TrainDeformConfig, TrainRigidConfig, check_run, recipe_of, train_deform

    if args.network == "rigid":
        config = TrainRigidConfig(**run_fields(args, shipped_rigid_path))
    else:
        config = TrainDeformConfig(**run_fields(args, shipped_network_path), crop=args.crop,
                                   dice_weight=args.dice_weight, truth_weight=args.truth_weight,
                                   model=DeformModelConfig(spacing_mm=args.spacing_mm, inputs=args.inputs))
    payload = check_run(config) if int(os.environ.get("RANK", "0")) == 0 else None
    if payload is None and config.init_model is not None:  # fine-tuning keeps the model's own working grid
        from ..learned.checkpoint import read_payload

        payload = read_payload(config.init_model, recipe_of(config).model_formats)
    model = payload["config"] if payload is not None else config.model.to_dict()  # train_deform runs on it
    spacing = float(model["spacing_mm"])
    sources = pair_sources(args, spacing)
    crop = model["size"] if args.network == "rigid" else config.crop
    print(f"training the {args.network} network on {len(sources)} CT(s): {', '.join(s.name for s in sources)}; "
          f"{config.steps} steps of {config.batch_size} pair(s) of {crop}^3 at {spacing:g} mm on {config.device}",
          file=sys.stderr, flush=True)
    return run_training(lambda: train_deform(sources, config), config.out)
