"""Model and training-state files of the pose network, and the one-line errors when they are bad.

- Model file (``model.pt``, what Resources/Models ships): ``{"format": "spinereg-pose-net",
  "version": 1, "config": ModelConfig dict, "state_dict": weights, "info": {...}}``.
- Training checkpoint (``checkpoint.pt`` in a training folder): the model file's keys plus the
  optimizer, the learning-rate schedule, the step and the training configuration, so that
  ``spinereg train --resume`` continues exactly.

Files are written atomically (a temporary file renamed over the old one) and read with
``torch.load(weights_only=True)``: a checkpoint can hold tensors and plain values only,
never code.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import InputError
from ..io.atomic import staged_output_file
from .network import ModelConfig, PoseNet

MODEL_FORMAT = "spinereg-pose-net"
CHECKPOINT_FORMAT = "spinereg-pose-net-checkpoint"
VERSION = 1


def save_atomic(payload: dict, path: str | os.PathLike) -> Path:
    """torch.save ``payload`` to ``path`` through :func:`..io.atomic.staged_output_file`."""
    with staged_output_file(path) as staging:
        torch.save(payload, staging)
    return Path(path)


def weights_payload(model_format: str, network: torch.nn.Module, config, info: dict | None = None) -> dict:
    """What a model file of any of the project's networks holds: its format, the version, its
    config dataclass as a dict (``config.to_dict()``), the weights on the CPU and ``info``."""
    return {
        "format": model_format,
        "version": VERSION,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "info": dict(info or {}),
    }


def network_from(payload: dict, path, config_class, build, what: str):
    """(network, config) of a model file's payload: ``config_class.from_dict``, ``build(config)``, its
    weights loaded; InputError "PATH: unusable WHAT (...)" when any of it does not fit."""
    try:
        config = config_class.from_dict(payload["config"])
        network = build(config)
        network.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{path}: unusable {what} ({' '.join(str(error).split())[:160]})") from None
    return network, config


def model_payload(model: PoseNet, info: dict | None = None) -> dict:
    """What a pose-network model file holds (weights on the CPU)."""
    return weights_payload(MODEL_FORMAT, model, model.config, info)


def save_model(model: PoseNet, path: str | os.PathLike, info: dict | None = None) -> Path:
    """Write a model file (see the module docstring)."""
    return save_atomic(model_payload(model, info), path)


def read_payload(path: str | os.PathLike, formats: tuple[str, ...] = (MODEL_FORMAT, CHECKPOINT_FORMAT)) -> dict:
    """A model file or checkpoint as a dict; InputError (one line) when missing, corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same one-line error
        reason = " ".join(str(error).split())[:160]
        raise InputError(f"{path} is not a readable spinereg model file (corrupt or truncated?): {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InputError(f"{path} is not the spinereg model file expected here (format {found!r}, expected "
                         f"{' or '.join(formats)})")
    if payload.get("version") != VERSION:
        raise InputError(f"{path} has version {payload.get('version')!r}; this spinereg reads version {VERSION}")
    return payload


def model_from_payload(payload: dict, path: str | os.PathLike, expect: ModelConfig | None = None) -> PoseNet:
    """Build the network a payload describes and load its weights; InputError when they disagree,
    or when ``expect`` (the input the caller will feed) differs in its patches from what the model
    was trained for. The template's context is ``expect``'s: fine-tuning may change it (same weights)."""
    try:
        config = ModelConfig.from_dict(payload["config"])
        if expect is not None:
            config = replace(config, template_context_mm=expect.template_context_mm)
        model = PoseNet(config)
    except (KeyError, TypeError, ValueError) as error:
        raise InputError(f"{path}: unusable model configuration ({error})") from None
    if expect is not None and (config.size_px, config.mm_per_px) != (expect.size_px, expect.mm_per_px):
        raise InputError(
            f"{path} was trained for {config.size_px}-pixel patches of {config.mm_per_px:g} mm, not "
            f"{expect.size_px}-pixel patches of {expect.mm_per_px:g} mm"
        )
    try:
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError) as error:
        first = " ".join(str(error).split())[:200]
        raise InputError(f"{path}: weights do not fit the model configuration it names: {first}") from None
    return model


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               expect: ModelConfig | None = None) -> PoseNet:
    """A model file (or a training checkpoint) -> PoseNet in eval mode on ``device``."""
    payload = read_payload(path)
    return model_from_payload(payload, path, expect).to(device).eval()
