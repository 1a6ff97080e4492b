"""Training the vertebra detector (``spinereg train-detect``): the bank, the loop, checkpoints, resume.

:func:`train_detector` renders the training views once (:func:`.detector_data.render_bank`, saved
as ``bank.npz`` in ``out`` and reused on resume), keeps the last ``validation_views`` of them
apart, then runs ``steps`` AdamW steps (one-cycle learning rate, :func:`.training.optimiser_of`)
on batches of radiographs made from the others, writing into ``out`` as the pose network's
training does: ``checkpoint.pt`` (every ``checkpoint_every`` steps, on Ctrl-C and at the end),
``model.pt`` (:mod:`.detector`'s model file), ``log.csv`` (loss terms, and every
``validate_every`` steps the validation recall at IoU 0.5 and level accuracy), ``config.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
import torch

from ..core.labels import VERTEBRAE
from ..errors import InputError
from ..geometry.image_boxes import box_iou
from .checkpoint import read_payload, save_atomic
from .detector import (DETECTOR_CHECKPOINT_FORMAT, DETECTOR_FORMAT, DetectorConfig, VertebraDetector, decode,
                       detection_arrays, detector_from_payload, detector_payload, save_detector)
from .detector_data import Bank, DetectorCT, DetectorSynthesis, detection_loss, make_batch, render_bank
from .levels import name_levels
from .training import (CHECKPOINT_FILE, LOG_FILE, MODEL_FILE, RunConfig, RunLog, optimiser_of, resume_payload,
                       run_steps, start_process)

BANK_FILE = "bank.npz"
LOG_FIELDS = ("step", "loss", "heat", "offset", "size", "orient", "level", "lr", "images_per_s",
              "val_recall", "val_level_accuracy", "val_mean_iou")


@dataclass
class DetectTrainConfig(RunConfig):
    """One detector training run: :class:`.training.RunConfig`'s fields with this network's defaults, and

    validate_every / validation_views: in steps / bank views kept apart for validation.
    level_weight: weight of the level cross-entropy in the loss.
    model: the network; synthesis: the training views.
    """

    WHOLE_NUMBERS: ClassVar[tuple[str, ...]] = RunConfig.WHOLE_NUMBERS + ("validate_every", "validation_views")

    steps: int = 2500
    batch_size: int = 8
    lr: float = 2e-3
    workers: int = 0
    validate_every: int = 250
    validation_views: int = 24
    level_weight: float = 0.5
    model: DetectorConfig = field(default_factory=DetectorConfig)
    synthesis: DetectorSynthesis = field(default_factory=DetectorSynthesis)


def check_detect_run(config: DetectTrainConfig) -> dict | None:
    """The checkpoint to resume from (None for a fresh run); InputError when ``out`` or ``init_model`` do not fit."""
    payload = resume_payload(config, (DETECTOR_CHECKPOINT_FORMAT,))
    if payload is None and config.init_model is not None:
        detector_from_payload(read_payload(config.init_model, (DETECTOR_FORMAT, DETECTOR_CHECKPOINT_FORMAT)),
                              config.init_model)
    return payload


def evaluate_views(model: VertebraDetector, bank: Bank, views: Sequence[int], synthesis: DetectorSynthesis,
                   seed: int) -> dict[str, float]:
    """Recall at IoU 0.5, level accuracy of the matched boxes and their mean IoU on bank ``views``."""
    model.eval()
    hits, named, ious, total = 0, 0, [], 0
    with torch.no_grad():
        for view in views:
            batch = make_batch(bank, [view], synthesis, model.config, np.random.default_rng([seed, view]))
            detections = decode(model(batch["images"])[0])
            names = name_levels(*detection_arrays(detections))  # as the product names them: some dropped
            detections, names = ([d for d, name in zip(detections, names) if name is not None],
                                 [name for name in names if name is not None])
            corners, levels = bank.boxes_of(view)
            total += len(corners)
            for box, level in zip(corners, levels):
                overlaps = [box_iou(box, d.corners()) for d in detections]
                if overlaps and max(overlaps) >= 0.5:
                    best = int(np.argmax(overlaps))
                    hits += 1
                    ious.append(overlaps[best])
                    named += names[best] == VERTEBRAE[level]
    model.train()
    return {"val_recall": hits / max(total, 1), "val_level_accuracy": named / max(hits, 1),
            "val_mean_iou": float(np.mean(ious)) if ious else 0.0}


def train_detector(sources: Sequence[DetectorCT], config: DetectTrainConfig, progress: bool = True) -> Path:
    """Train (or resume, or fine-tune) the detector on views of ``sources``; returns model.pt's path.
    Raises KeyboardInterrupt after saving a checkpoint when interrupted."""
    _, _, device = start_process(config)
    payload = check_detect_run(config)
    config.out.mkdir(parents=True, exist_ok=True)
    bank_path = config.out / BANK_FILE
    if payload is not None and bank_path.is_file():
        bank = Bank.load(bank_path)
    else:
        bank = render_bank(sources, config.synthesis, config.seed, progress)
        bank.save(bank_path)
    views = len(bank.depths)
    if views <= config.validation_views:
        raise InputError(f"{views} training views are too few for {config.validation_views} validation views: "
                         "draw more (draws_per_ct)")
    training_views = views - config.validation_views

    torch.manual_seed(config.seed)
    if payload is not None:
        model = detector_from_payload(payload, config.out / CHECKPOINT_FILE)
    elif config.init_model is not None:
        model = detector_from_payload(read_payload(config.init_model, (DETECTOR_FORMAT, DETECTOR_CHECKPOINT_FORMAT)),
                                      config.init_model)
    else:
        model = VertebraDetector(config.model)
    model = model.to(device).train()
    optimizer, schedule, start = optimiser_of(model, config, payload)
    (config.out / "config.json").write_text(json.dumps(config.to_json(), indent=2, default=str))
    log = RunLog(config.out / LOG_FILE, LOG_FIELDS, resumed=payload is not None)

    def checkpoint(step: int) -> None:
        save_atomic({**detector_payload(model, {"step": step}), "format": DETECTOR_CHECKPOINT_FORMAT,
                     "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step,
                     "train_config": config.to_json()}, config.out / CHECKPOINT_FILE)

    from tqdm.auto import tqdm

    def batches():
        """Step s's batch, from a generator seeded by (seed, s): a resumed run sees the same batches."""
        for step in range(start, config.steps):
            rng = np.random.default_rng([config.seed, step])
            yield make_batch(bank, rng.integers(training_views, size=config.batch_size), config.synthesis,
                             model.config, rng)

    def loss_of(batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        output = model(batch["images"].to(device))
        return detection_loss(output, {k: v.to(device) for k, v in batch.items()}, config.level_weight)

    bar = tqdm(total=config.steps, initial=start, desc="train-detect", unit="step", disable=not progress)
    started = time.perf_counter()
    validation = range(training_views, views)
    step = run_steps(model, optimizer, schedule, batches(), loss_of, config, start=start, checkpoint=checkpoint,
                     bar=bar, log=log, per_step=config.batch_size, rate="images_per_s",
                     postfix=lambda row: {"loss": f"{row['loss']:.3f}", "level": f"{row['level']:.2f}"},
                     validate=lambda: evaluate_views(model, bank, validation, config.synthesis, config.seed))
    return save_detector(model, config.out / MODEL_FILE, {
        "steps": step, "seed": config.seed, "sources": [s.name for s in sources], "views": views,
        "train_s_last_session": round(time.perf_counter() - started, 1)})
