"""Training the two CT-to-CT networks on synthetic pairs: the deformable network and the rigid
keypoint network (:mod:`.rigid_network`); losses, one loop, checkpoints, resume, logs.

Same habits as the pose network (:mod:`..learned.training`): ``train_deform`` runs
``steps`` AdamW steps (one-cycle learning rate) on pairs from
:class:`..synthetic.deformation_pairs.PairSource` crops and writes into ``out``:
``checkpoint.pt`` every ``checkpoint_every`` steps, on Ctrl-C and at the end (``resume``
continues with the same weights, optimiser, schedule and sample stream), ``model.pt``
(:mod:`.network`'s model file), ``log.csv`` and ``config.json``. Under ``torchrun`` every
process trains on its own sample stream with DistributedDataParallel; process 0 writes.

Loss per pair (fixed F, moving M, displacement u, truth u*, labels one-hot S_F, S_M):

    LNCC(M o u, F) + bending * BendingEnergy(u) + dice * Dice(S_M o u, S_F) + truth * <|u - u*|^2>_w

(<.>_w: the mean weighted 1 in the fixed vertebrae and ``tissue_truth_weight`` elsewhere)
(MONAI's LocalNormalizedCrossCorrelationLoss, BendingEnergyLoss, DiceLoss; u in voxels).
The known-field term is what synthetic pairs offer and what makes CPU training converge in
minutes; the image and Dice terms are what instance optimisation keeps at test time.

The rigid keypoint network (a :class:`TrainRigidConfig` run, ``spinereg train-deform --network rigid``)
is trained on whole-cube pairs turned by a global twist, with the mean distance between where its
rigid map and the truth take the fixed vertebra voxels as the loss (:func:`rigid_loss`). What
differs between the two runs is a :class:`Recipe`; the loop is the same.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, ClassVar, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..learned.checkpoint import read_payload, save_atomic
from ..learned.training import (CHECKPOINT_FILE, LOG_FILE, MODEL_FILE, RunConfig, RunLog, distributed_net, optimiser_of,
                                resume_payload, run_steps, start_process)
from ..synthetic.deformation_pairs import DeformationConfig, PairSource
from . import rigid_network
from .network import CHECKPOINT_FORMAT, MODEL_FORMAT, DeformModelConfig, build_network, model_payload, network_from_payload
from .rigid_network import RigidNetConfig

LOG_FIELDS = ("step", "loss", "lncc", "dice", "bending", "truth_mm", "bone_mm", "bone_start_mm", "lr", "pairs_per_s")
MODEL_FORMATS = (MODEL_FORMAT, CHECKPOINT_FORMAT)
#: Vertebrae one-hot encoded per crop (a 128 mm crop holds at most five).
MAX_LABELS = 6
#: Fixed vertebra points per pair in the rigid keypoint network's loss.
RIGID_POINTS = 512


@dataclass
class TrainDeformConfig(RunConfig):
    """One training run. crop: working-grid nodes per side of the training crops;
    lncc_weight / bending_weight / dice_weight / truth_weight: the loss terms (module docstring);
    tissue_truth_weight: the known-field term's weight outside the vertebrae (1 inside them): in
        air and soft tissue the motion barely shows, and an equal weight there teaches the
        network to predict no motion at all;
    the other fields are :class:`..learned.training.RunConfig`'s, with this network's defaults."""

    WHOLE_NUMBERS: ClassVar[tuple[str, ...]] = RunConfig.WHOLE_NUMBERS + ("crop",)

    steps: int = 600
    batch_size: int = 1
    lr: float = 3e-3
    weight_decay: float = 1e-5
    checkpoint_every: int = 50
    crop: int = 48
    lncc_weight: float = 1.0
    bending_weight: float = 0.5
    dice_weight: float = 1.0
    truth_weight: float = 1.0
    tissue_truth_weight: float = 0.1
    model: DeformModelConfig = field(default_factory=DeformModelConfig)
    synthesis: DeformationConfig = field(default_factory=DeformationConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.crop % self.model.multiple:
            raise InputError(f"crop must be a multiple of {self.model.multiple}, got {self.crop}")


def _rigid_synthesis() -> DeformationConfig:
    return DeformationConfig(global_rotation_deg=10.0, global_translation_mm=20.0)


@dataclass
class TrainRigidConfig(RunConfig):
    """One training run of the rigid CT-to-CT keypoint network (:mod:`.rigid_network`): the loss is the
    mean vertebra point distance (:func:`rigid_loss`); pairs turned by up to +-10 deg / +-20 mm
    (``synthesis``' global twist) with articulated and soft-tissue motion on top."""

    steps: int = 1500
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-4
    checkpoint_every: int = 50
    model: RigidNetConfig = field(default_factory=RigidNetConfig)
    synthesis: DeformationConfig = field(default_factory=_rigid_synthesis)


def _one_hot(labels: torch.Tensor, values: list[int]) -> torch.Tensor:
    """(K, J, I) labels -> (MAX_LABELS + 1, K, J, I) float one-hot of ``values`` (background channel 0)."""
    out = torch.zeros((MAX_LABELS + 1,) + labels.shape)
    out[0] = 1.0
    for channel, value in enumerate(values[:MAX_LABELS], start=1):
        inside = labels == value
        out[channel][inside] = 1.0
        out[0][inside] = 0.0
    return out


class PairStream(torch.utils.data.IterableDataset):
    """Batches for steps [start, stop) of a run: step s draws from a generator seeded by
    (seed, rank, s), so a resumed run sees exactly the batches it would have seen."""

    def __init__(self, sources: Sequence[PairSource], config: TrainDeformConfig, start: int, stop: int,
                 rank: int = 0) -> None:
        self.sources, self.config, self.start, self.stop, self.rank = list(sources), config, start, stop, rank

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, self.rank, step])
        samples = []
        for _ in range(self.config.batch_size):
            source = self.sources[int(rng.integers(len(self.sources)))]
            pair = source.sample((self.config.crop,) * 3, rng, self.config.synthesis)
            values = [int(v) for v in pair["moving_labels"].unique() if v != 0]
            pair["fixed_onehot"] = _one_hot(pair.pop("fixed_labels"), values)
            pair["moving_onehot"] = _one_hot(pair.pop("moving_labels"), values)
            samples.append(pair)
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        for step in range(self.start + worker, self.stop, workers):
            yield self.batch(step)


class DeformLoss(torch.nn.Module):
    """The training loss (module docstring); returns (total, {term: value})."""

    def __init__(self, config: TrainDeformConfig) -> None:
        super().__init__()
        from monai.losses import BendingEnergyLoss, DiceLoss, LocalNormalizedCrossCorrelationLoss
        from monai.networks.blocks import Warp

        self.config = config
        self.lncc = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=9)
        self.bending = BendingEnergyLoss()
        self.dice = DiceLoss(include_background=False)
        self.warp = Warp(mode="bilinear", padding_mode="zeros")

    def forward(self, warped, ddf, batch) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        terms = {"lncc": self.lncc(warped, batch["fixed"]), "bending": self.bending(ddf)}
        total = c.lncc_weight * terms["lncc"] + c.bending_weight * terms["bending"]
        if c.dice_weight > 0:
            terms["dice"] = self.dice(self.warp(batch["moving_onehot"], ddf), batch["fixed_onehot"])
            total = total + c.dice_weight * terms["dice"]
        error2 = ((ddf - batch["truth"]) ** 2).sum(1)
        bone = 1.0 - batch["fixed_onehot"][:, 0]
        if c.truth_weight > 0:
            weight = bone + c.tissue_truth_weight
            total = total + c.truth_weight * (error2 * weight).sum() / weight.sum()
        values = {k: float(v.detach()) for k, v in terms.items()}
        error = error2.detach().sqrt() * c.model.spacing_mm
        values["truth_mm"] = float(error.mean())
        values["bone_mm"] = float((error * bone).sum() / bone.sum().clamp(min=1.0))
        # The identity's error there, for comparison: what the pair's truth moves the vertebrae by.
        start = batch["truth"].detach().norm(dim=1) * c.model.spacing_mm
        values["bone_start_mm"] = float((start * bone).sum() / bone.sum().clamp(min=1.0))
        return total, values


class RigidPairStream(PairStream):
    """Batches for the rigid keypoint network: the pair on the network's cube, and the truth at up to
    :data:`RIGID_POINTS` fixed vertebra voxels (their offsets y - c from the cube's centre and
    where the truth takes them in the moving CT, x - c; RAS mm)."""

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.config.seed, self.rank, step])
        size = self.config.model.size
        samples = []
        for _ in range(self.config.batch_size):
            source = self.sources[int(rng.integers(len(self.sources)))]
            pair = source.sample((size,) * 3, rng, self.config.synthesis)
            linear = torch.as_tensor(source.grid.ijk_to_ras[:3, :3], dtype=torch.float32)
            bone = torch.nonzero(pair["fixed_labels"] > 0)
            if len(bone) == 0:  # no vertebra voxel in the crop: the whole cube carries the truth
                bone = torch.nonzero(torch.ones_like(pair["fixed_labels"]))
            pick = torch.as_tensor(rng.integers(len(bone), size=RIGID_POINTS))
            kji = bone[pick]
            offsets = (kji.flip(1).float() - (size - 1) / 2.0) @ linear.T
            truth = pair["truth"][:, kji[:, 0], kji[:, 1], kji[:, 2]].T.flip(1) @ linear.T
            samples.append({"fixed": pair["fixed"], "moving": pair["moving"], "offsets": offsets,
                            "targets": offsets + truth})
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def rigid_loss(matrices: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean distance (mm) between where the predicted rigid maps (B, 4, 4) of offsets from the
    cube's centre and the truth take the fixed vertebra points (its minimum is the truth's best
    rigid fit), and the identity's for comparison."""
    predicted = batch["offsets"] @ matrices[:, :3, :3].transpose(1, 2) + matrices[:, None, :3, 3]
    loss = (predicted - batch["targets"]).norm(dim=-1).mean()
    start = float((batch["offsets"] - batch["targets"]).norm(dim=-1).mean())
    return loss, {"point_mm": float(loss.detach()), "start_mm": start}


@dataclass(frozen=True)
class Recipe:
    """What differs between the trainings of the two CT-to-CT networks: the model file's
    functions (``build(model_config)``, ``from_payload(payload, path)``, ``payload(network,
    model_config, info)``), the batch stream, ``loss(config)`` -> ``f(net, batch)`` -> (loss,
    {term: float}), the log's columns and the progress bar's."""

    name: str
    model_formats: tuple[str, str]
    build: Callable
    from_payload: Callable
    payload: Callable
    stream: type
    loss: Callable
    log_fields: tuple[str, ...]
    postfix: Callable[[dict], dict]


def _deformable_loss(config: TrainDeformConfig) -> Callable:
    loss_fn = DeformLoss(config)

    def loss_of(net, batch):
        warped, ddf = net(batch["moving"], batch["fixed"])
        return loss_fn(warped, ddf, batch)
    return loss_of


RIGID = Recipe("train-rigid3d", (rigid_network.MODEL_FORMAT, rigid_network.CHECKPOINT_FORMAT),
               rigid_network.RigidKeypointNet, rigid_network.network_from_payload, rigid_network.model_payload,
               RigidPairStream, lambda config: lambda net, b: rigid_loss(net(b["moving"], b["fixed"]), b),
               ("step", "loss", "point_mm", "start_mm", "lr", "pairs_per_s"),
               lambda row: {"point_mm": f"{row['point_mm']:.2f}", "start_mm": f"{row['start_mm']:.2f}"})
DEFORMABLE = Recipe("train-deform", MODEL_FORMATS, build_network, network_from_payload, model_payload, PairStream,
                    _deformable_loss, LOG_FIELDS,
                    lambda row: {"bone_mm": f"{row['bone_mm']:.2f}", "start_mm": f"{row['bone_start_mm']:.2f}",
                                 "lncc": f"{row['lncc']:.3f}"})


def recipe_of(config: RunConfig) -> Recipe:
    """The recipe of a run: the rigid keypoint network's for a :class:`TrainRigidConfig`."""
    return RIGID if isinstance(config, TrainRigidConfig) else DEFORMABLE


def check_run(config: RunConfig) -> dict | None:
    """The checkpoint to resume from (None for a fresh run); InputError when ``out`` does not fit."""
    recipe = recipe_of(config)
    payload = resume_payload(config, recipe.model_formats[1:])
    if payload is None and config.init_model is not None:
        recipe.from_payload(read_payload(config.init_model, recipe.model_formats), config.init_model)
    return payload


def train_deform(sources: Sequence[PairSource], config: RunConfig, progress: bool = True) -> Path:
    """Train (or resume, or fine-tune) the deformable network (a :class:`TrainDeformConfig`) or the
    rigid keypoint network (a :class:`TrainRigidConfig`); returns model.pt's path.
    Raises KeyboardInterrupt after saving a checkpoint when interrupted."""
    recipe = recipe_of(config)
    checkpoint_format = recipe.model_formats[1]
    rank, world, device = start_process(config)
    # The untrained network's displacements are tiny: their gradients through the scaling and
    # squaring fall into denormal floats, which make CPU backward passes ~10x slower.
    torch.set_flush_denormal(True)
    payload = check_run(config) if rank == 0 else None
    if world > 1:
        torch.distributed.barrier()
        payload = read_payload(config.out / CHECKPOINT_FILE, (checkpoint_format,)) if config.resume else None
    config.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    model_config = config.model
    if payload is not None:
        network, model_config = recipe.from_payload(payload, config.out / CHECKPOINT_FILE)
    elif config.init_model is not None:
        network, model_config = recipe.from_payload(read_payload(config.init_model, recipe.model_formats),
                                                    config.init_model)
    else:
        network = recipe.build(model_config)
    # Resumed or fine-tuned, the run is the model's own: its grid for the batches, its spacing for
    # the logged millimetres, its config in config.json.
    config = replace(config, model=model_config)
    network = network.to(device).train()
    optimizer, schedule, start = optimiser_of(network, config, payload)
    net = distributed_net(network, world, device)
    loss = recipe.loss(config)
    stream = recipe.stream(sources, config, start, config.steps, rank)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                         worker_init_fn=_one_thread, persistent_workers=False)
    log = None
    if rank == 0:
        (config.out / "config.json").write_text(json.dumps(config.to_json(), indent=2, default=str))
        log = RunLog(config.out / LOG_FILE, recipe.log_fields, resumed=payload is not None)

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_atomic({**recipe.payload(network, model_config, {"step": step}), "format": checkpoint_format,
                         "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step,
                         "train_config": config.to_json()}, config.out / CHECKPOINT_FILE)

    from tqdm.auto import tqdm

    bar = tqdm(total=config.steps, initial=start, desc=recipe.name, unit="step", disable=not progress or rank != 0)
    started = time.perf_counter()
    step = run_steps(network, optimizer, schedule, loader,
                     lambda batch: loss(net, {k: v.to(device) for k, v in batch.items()}), config, start=start,
                     checkpoint=checkpoint, bar=bar, log=log, per_step=config.batch_size * world, rate="pairs_per_s",
                     postfix=recipe.postfix, keys=tuple(f for f in recipe.log_fields[1:] if f not in ("lr", "pairs_per_s")))
    model_path = config.out / MODEL_FILE
    if rank == 0:
        save_atomic(recipe.payload(network, model_config, {
            "steps": step, "seed": config.seed, "pairs": step * config.batch_size * world,
            "sources": [s.name for s in sources], "train_s_last_session": round(time.perf_counter() - started, 1),
            "synthesis": asdict(config.synthesis)}), model_path)
    if world > 1:
        torch.distributed.destroy_process_group()
    return model_path


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)
