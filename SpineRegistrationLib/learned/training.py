"""Training the pose network: the loss, the loop, checkpoints, resume, logs, several GPUs.

:func:`train` runs ``steps`` AdamW steps (one-cycle learning rate) on batches from
:class:`.data.SampleStream`, writing into ``TrainConfig.out``:

- ``checkpoint.pt`` every ``checkpoint_every`` steps, on Ctrl-C and at the end (resume with
  ``resume=True``: same weights, optimizer, schedule and data stream as if never stopped);
- ``model.pt``, the model file (:mod:`.checkpoint`) of the last step;
- ``log.csv`` (step, loss, point distance, rotation and translation errors, learning rate,
  samples per second, and the validation errors every ``validate_every`` steps), plus
  TensorBoard event files when ``tensorboard`` is set and the package is installed;
- ``config.json``, what was asked.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its own data stream with
DistributedDataParallel (NCCL on GPUs, Gloo on CPUs) and process 0 writes the files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..core.pose import geodesic_deg
from .checkpoint import CHECKPOINT_FORMAT, model_from_payload, model_payload, read_payload, save_atomic, save_model
from .data import SampleStream, SynthesisConfig, TrainingCT
from .network import ModelConfig, PoseNet

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
LOG_FILE = "log.csv"
LOG_FIELDS = ("step", "loss", "point_mm", "rotation_deg", "translation_mm", "lr", "samples_per_s",
              "val_point_mm", "val_rotation_deg", "val_translation_mm")
#: Validation batches are drawn from this rank of the data stream (never a training rank).
VALIDATION_RANK = 1_000_000


@dataclass
class RunConfig:
    """What every training run of the project shares (the pose network's :class:`TrainConfig`, the
    deformable network's ``deform.training.TrainDeformConfig``): where it writes, how long, the
    optimiser, the data workers, checkpoints and logs, the device, resuming and fine-tuning.
    Subclasses set their own defaults and add their loss and model fields; ``WHOLE_NUMBERS``
    names the fields that must be whole numbers >= 1."""

    WHOLE_NUMBERS: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "checkpoint_every", "log_every")

    out: Path
    steps: int = 6000
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup: float = 0.05
    seed: int = 0
    workers: int = 1
    checkpoint_every: int = 100
    log_every: int = 10
    device: str = "cpu"
    threads: int | None = None
    resume: bool = False
    init_model: Path | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in self.WHOLE_NUMBERS:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"lr must be > 0, got {self.lr!r}")
        if self.workers < 0:
            raise InputError(f"workers must be >= 0, got {self.workers}")

    def to_json(self) -> dict:
        values = asdict(self)
        values["out"] = str(self.out)
        values["init_model"] = None if self.init_model is None else str(self.init_model)
        values["model"] = self.model.to_dict()
        return values


@dataclass
class TrainConfig(RunConfig):
    """One training run (see the module docstring for the files in ``out``).

    steps / batch_size: optimiser steps and samples per step (per process).
    lr / weight_decay / warmup: AdamW peak learning rate, decay and the share of steps warming up.
    rotation_weight / translation_weight: loss = point distance (mm) + these x rotation (deg)
        and translation (mm) errors.
    seed: seeds the weights and the data stream.
    workers: DataLoader processes synthesising samples (0: in the training process).
    checkpoint_every / log_every / validate_every / validation_batches: in steps / batches.
    device: torch device; threads: torch CPU threads of the training process.
    resume: continue the run in ``out`` from its checkpoint.
    init_model: start from these weights (fine-tuning), a model file or checkpoint.
    tensorboard: also write TensorBoard events.
    """

    WHOLE_NUMBERS: ClassVar[tuple[str, ...]] = RunConfig.WHOLE_NUMBERS + ("validate_every",)

    rotation_weight: float = 0.2
    translation_weight: float = 0.2
    validate_every: int = 500
    validation_batches: int = 4
    tensorboard: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)


def optimiser_of(network: torch.nn.Module, config: RunConfig, payload: dict | None):
    """(AdamW, one-cycle schedule, first step) of a run, restored from the checkpoint ``payload`` when resuming."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                   pct_start=config.warmup)
    if payload is None:
        return optimizer, schedule, 0
    optimizer.load_state_dict(payload["optimizer"])
    schedule.load_state_dict(payload["schedule"])
    return optimizer, schedule, int(payload["step"])


def distributed_net(network: torch.nn.Module, world: int, device: torch.device) -> torch.nn.Module:
    """``network`` wrapped in DistributedDataParallel when ``world`` > 1 processes train, else itself."""
    if world <= 1:
        return network
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None)


def pose_errors(rotation_pred: torch.Tensor, translation_pred: torch.Tensor, rotation: torch.Tensor,
                translation: torch.Tensor, points: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample errors (B,): mean point distance over ``points`` (mm), rotation (deg), translation (mm)."""
    moved_pred = points @ rotation_pred.transpose(-1, -2) + translation_pred[:, None]
    moved_true = points @ rotation.transpose(-1, -2) + translation[:, None]
    return {
        "point_mm": (moved_pred - moved_true).norm(dim=-1).mean(-1),
        "rotation_deg": geodesic_deg(rotation_pred, rotation),
        "translation_mm": (translation_pred - translation).norm(dim=-1),
    }


def pose_loss(errors: dict[str, torch.Tensor], config: TrainConfig) -> torch.Tensor:
    """Scalar loss from :func:`pose_errors`."""
    return (errors["point_mm"] + config.rotation_weight * errors["rotation_deg"]
            + config.translation_weight * errors["translation_mm"]).mean()


def optimiser_step(loss: torch.Tensor, network: torch.nn.Module, optimizer, schedule, clip: float = 5.0) -> None:
    """One step of a training run: gradients of ``loss``, clipped to norm ``clip``, then the
    optimiser and its learning-rate schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(network.parameters(), clip)
    optimizer.step()
    schedule.step()


def window_row(step: int, window: list[dict], schedule, per_step: int, seconds: float, rate: str,
               keys: Sequence[str] | None = None) -> dict:
    """A log.csv row: the step, the mean of each term over the steps since the last row
    (``keys``, default the first step's; a term a step lacks counts as NaN), the learning rate,
    and ``rate`` = items per second (``per_step`` items a step over ``seconds``)."""
    keys = list(window[0]) if keys is None else keys
    return {"step": step, **{k: float(np.mean([w.get(k, np.nan) for w in window])) for k in keys},
            "lr": schedule.get_last_lr()[0], rate: len(window) * per_step / max(seconds, 1e-9)}


def start_process(config: RunConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this training process, from torchrun's environment
    ((0, 1, config.device) when alone); under torchrun it joins the process group (NCCL on
    its local GPU, else gloo). Sets the torch CPU threads when ``config.threads`` is given."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(config.device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if config.threads:
        torch.set_num_threads(config.threads)
    return rank, world, device


def resume_payload(config: RunConfig, checkpoint_formats: tuple[str, ...]) -> dict | None:
    """What every run checks first: with ``resume``, the checkpoint in ``out`` (read, of one of
    ``checkpoint_formats``, for ``config.steps`` steps, unfinished); without, that ``out`` is new or
    empty (None then). InputError when not."""
    checkpoint = config.out / CHECKPOINT_FILE
    if config.resume:
        if not checkpoint.is_file():
            raise InputError(f"nothing to resume: {checkpoint} does not exist")
        payload = read_payload(checkpoint, checkpoint_formats)
        planned = int(payload["train_config"]["steps"])
        if planned != config.steps:
            raise InputError(f"{checkpoint} belongs to a run of {planned} steps: resume it with --steps {planned}")
        if int(payload["step"]) >= planned:
            raise InputError(f"the run in {config.out} already finished its {planned} steps (model.pt is its result)")
        return payload
    if config.out.exists() and any(config.out.iterdir()):
        raise InputError(f"{config.out} is not empty: pass --resume to continue the run in it, or choose a new --out")
    return None


def check_run(config: TrainConfig) -> dict | None:
    """The checkpoint to resume from (None for a fresh run); InputError when ``out`` or the
    starting weights (``init_model``) do not fit the run."""
    payload = resume_payload(config, (CHECKPOINT_FORMAT,))
    if payload is not None:
        saved = ModelConfig.from_dict(payload["config"])
        if (saved.size_px, saved.mm_per_px) != (config.model.size_px, config.model.mm_per_px):
            raise InputError(f"{config.out / CHECKPOINT_FILE} was trained for {saved.size_px}-pixel patches of "
                             f"{saved.mm_per_px:g} mm, not {config.model.size_px} of {config.model.mm_per_px:g}: "
                             "resume with its own input")
        if saved.template_context_mm != config.model.template_context_mm:
            raise InputError(f"{config.out / CHECKPOINT_FILE} was trained with a template context of "
                             f"{saved.template_context_mm:g} mm, not {config.model.template_context_mm:g}: "
                             "resume with its own input")
        return payload
    if config.init_model is not None:
        model_from_payload(read_payload(config.init_model), config.init_model, expect=config.model)
    return None


class RunLog:
    """A run's log.csv of ``fields`` (appended to when resuming), and TensorBoard events in
    ``tensorboard_dir`` when given (needs the tensorboard package); rank 0 only."""

    def __init__(self, path: Path, fields: Sequence[str], resumed: bool, tensorboard_dir: Path | None = None) -> None:
        fresh = not (resumed and path.is_file())
        self.file = open(path, "a" if not fresh else "w", newline="")
        self.writer = csv.DictWriter(self.file, fields)
        if fresh:
            self.writer.writeheader()
        self.board = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise InputError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
            self.board = SummaryWriter(str(tensorboard_dir))

    def write(self, row: dict) -> None:
        self.writer.writerow({key: (f"{value:.5g}" if isinstance(value, float) else value)
                              for key, value in row.items()})
        self.file.flush()
        if self.board is not None:
            for key, value in row.items():
                if key != "step" and value not in ("", None):
                    self.board.add_scalar(key, float(value), row["step"])

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def run_steps(model: torch.nn.Module, optimizer, schedule, batches: Iterable, loss_of: Callable, config: RunConfig, *,
              start: int, checkpoint: Callable[[int], None], bar, log: RunLog | None, per_step: int, rate: str,
              postfix: Callable[[dict], dict], keys: Sequence[str] | None = None,
              validate: Callable[[], dict] | None = None) -> int:
    """The loop of every training run, from step ``start``: per batch, ``loss_of(batch)`` -> (loss,
    {term: float}) and an :func:`optimiser_step`; every ``log_every`` steps and at the last, a
    :func:`window_row` (``per_step``, ``rate``, ``keys``), with ``validate()``'s values every
    ``validate_every`` steps, written to ``log`` (None on ranks that write nothing) and shown on ``bar``
    (``postfix(row)``); ``checkpoint(step)`` every ``checkpoint_every`` steps, at the end and on Ctrl-C
    (re-raised; the buffers of the step it cut put back). Closes ``bar`` and ``log``; returns the last step."""
    step, window, tick, buffers = start, [], time.perf_counter(), {}
    try:
        for batch in batches:
            # Batch-norm statistics change in the forward pass: an interrupt inside a step
            # puts them back, so the checkpoint is exactly the last completed step.
            buffers = {name: value.clone() for name, value in model.named_buffers()}
            loss, terms = loss_of(batch)
            optimiser_step(loss, model, optimizer, schedule)
            step += 1
            buffers = {}  # the step is complete: nothing to put back
            window.append({"loss": float(loss.detach()), **terms})
            bar.update(1)
            if log is not None and (step % config.log_every == 0 or step == config.steps):
                now = time.perf_counter()
                row = window_row(step, window, schedule, per_step, now - tick, rate, keys)
                if validate is not None and (step % config.validate_every == 0 or step == config.steps):
                    row.update(validate())
                log.write(row)
                bar.set_postfix(**postfix(row))
                window, tick = [], now
            if step % config.checkpoint_every == 0:
                checkpoint(step)
    except KeyboardInterrupt:
        restore_buffers(model, buffers)
        checkpoint(step)
        raise
    finally:
        bar.close()
        if log is not None:
            log.close()
    checkpoint(step)
    return step


def _validate(model: torch.nn.Module, batches: list[dict], device) -> dict[str, float]:
    model.eval()
    errors: dict[str, list] = {}
    with torch.no_grad():
        for batch in batches:
            rotation, translation = model(batch["patches"].to(device))
            for key, value in pose_errors(rotation, translation, batch["rotation"].to(device),
                                          batch["translation"].to(device), batch["points"].to(device)).items():
                errors.setdefault(key, []).append(value.cpu())
    model.train()
    return {f"val_{key}": float(torch.cat(values).median()) for key, values in errors.items()}


def train(sources: Sequence[TrainingCT], config: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume, or fine-tune) the pose network on samples from ``sources``; returns model.pt's path.

    Raises KeyboardInterrupt after saving a checkpoint when interrupted.
    """
    rank, world, device = start_process(config)
    payload = check_run(config) if rank == 0 else None
    if world > 1:  # the other ranks read what rank 0 checked
        torch.distributed.barrier()
        payload = read_payload(config.out / CHECKPOINT_FILE) if config.resume else None
    config.out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)
    if payload is not None:
        model = model_from_payload(payload, config.out / CHECKPOINT_FILE)
    elif config.init_model is not None:
        model = model_from_payload(read_payload(config.init_model), config.init_model, expect=config.model)
    else:
        model = PoseNet(config.model)
    model = model.to(device).train()
    optimizer, schedule, start = optimiser_of(model, config, payload)
    net = distributed_net(model, world, device)

    stream = SampleStream(sources, config.synthesis, config.batch_size, config.seed, start, config.steps, rank)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                         worker_init_fn=_one_thread, persistent_workers=False)
    validation = []
    log = None
    if rank == 0:
        (config.out / "config.json").write_text(json.dumps(config.to_json(), indent=2, default=str))
        validation = [SampleStream(sources, config.synthesis, config.batch_size, config.seed, 0, 0,
                                   VALIDATION_RANK).batch(i) for i in range(config.validation_batches)]
        log = RunLog(config.out / LOG_FILE, LOG_FIELDS, resumed=payload is not None,
                     tensorboard_dir=config.out / "tensorboard" if config.tensorboard else None)

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_atomic({**model_payload(model, {"step": step}), "format": CHECKPOINT_FORMAT,
                         "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                         "step": step, "train_config": config.to_json()}, config.out / CHECKPOINT_FILE)

    from tqdm.auto import tqdm

    def loss_of(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        rotation, translation = net(batch["patches"].to(device))
        errors = pose_errors(rotation, translation, batch["rotation"].to(device),
                             batch["translation"].to(device), batch["points"].to(device))
        return pose_loss(errors, config), {k: float(v.detach().median()) for k, v in errors.items()}

    bar = tqdm(total=config.steps, initial=start, desc="train", unit="step", disable=not progress or rank != 0)
    step = run_steps(model, optimizer, schedule, loader, loss_of, config, start=start, checkpoint=checkpoint, bar=bar,
                     log=log, per_step=config.batch_size * world, rate="samples_per_s",
                     postfix=lambda row: {"point_mm": f"{row['point_mm']:.2f}", "rot": f"{row['rotation_deg']:.2f}"},
                     validate=lambda: _validate(model, validation, device))
    model_path = config.out / MODEL_FILE
    if rank == 0:
        save_model(model, model_path, {"steps": step, "seed": config.seed, "samples": step * config.batch_size * world,
                                       "sources": [s.name for s in sources]})
    if world > 1:
        torch.distributed.destroy_process_group()
    return model_path


def restore_buffers(model: torch.nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    """Put back the buffers (batch-norm statistics) saved before a step that an interrupt cut short,
    so that the checkpoint is exactly the last completed step."""
    with torch.no_grad():
        for name, value in model.named_buffers():
            if name in buffers:
                value.copy_(buffers[name])


def _one_thread(_worker: int) -> None:
    """DataLoader workers render with one thread each (the training process keeps the rest)."""
    torch.set_num_threads(1)
