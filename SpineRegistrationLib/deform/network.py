"""The learned deformable network: MONAI's VoxelMorph, diffeomorphic, and its model file.

The network takes the moving and the fixed CT on one working grid (intensities in [0, 1],
:func:`.grid.hu_to_unit`), predicts a stationary velocity field at half resolution and
integrates it by scaling and squaring (MONAI's ``DVF2DDF`` inside ``VoxelMorph``), so its
displacement is a diffeomorphism (no folding, up to the integration's discretisation). The
displacement u (voxels of the working grid, channels k, j, i) maps a fixed node y to the
moving point y + u(y): moving o (id + u) ~ fixed (MONAI's ``Warp``, :mod:`.field`'s direction).
Plain MONAI VoxelMorph; what is ours is the training (synthetic spine deformations with
a Dice and a known-field term, :mod:`.training`) and the optional instance optimisation.

Model file (``Resources/Models/deform_phantoms.pt``, ``spinereg train-deform``'s model.pt):
``{"format": "spinereg-deform-net", "version": 1, "config": DeformModelConfig dict,
"state_dict": ..., "info": {...}}``, written and read through :mod:`..learned.checkpoint`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


MODEL_FORMAT = "spinereg-deform-net"
CHECKPOINT_FORMAT = "spinereg-deform-net-checkpoint"
#: The shipped model's file name in Resources/Models.
SHIPPED_NAME = "deform_phantoms.pt"


@dataclass
class DeformModelConfig:
    """spacing_mm: the working grid's spacing the network was trained at (inputs are resampled to it).
    channels / final_channels: VoxelMorphUNet's encoder-decoder pairs and final convolutions.
    integration_steps: scaling-and-squaring steps (0: a plain displacement, not diffeomorphic)."""

    spacing_mm: float = 2.0
    channels: tuple[int, ...] = (16, 16, 16, 32, 32, 32)
    final_channels: tuple[int, ...] = (16, 8)
    integration_steps: int = 7

    def to_dict(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "DeformModelConfig":
        return cls(spacing_mm=float(values["spacing_mm"]), channels=tuple(values["channels"]),
                   final_channels=tuple(values["final_channels"]), integration_steps=int(values["integration_steps"]))

    @property
    def multiple(self) -> int:
        """Grid sizes must be multiples of this (the UNet's poolings and the half-resolution field)."""
        return 2 ** (len(self.channels) // 2 + 1)


def build_network(config: DeformModelConfig) -> torch.nn.Module:
    """MONAI ``VoxelMorph`` (``forward(moving, fixed) -> (warped moving, displacement voxels)``)."""
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet

    backbone = VoxelMorphUNet(spatial_dims=3, in_channels=2, unet_out_channels=config.channels[0],
                              channels=config.channels, final_conv_channels=config.final_channels)
    return VoxelMorph(backbone=backbone, integration_steps=config.integration_steps, half_res=True)


def model_payload(network: torch.nn.Module, config: DeformModelConfig, info: dict | None = None) -> dict:
    from ..learned.checkpoint import weights_payload

    return weights_payload(MODEL_FORMAT, network, config, info)


def save_model(network: torch.nn.Module, config: DeformModelConfig, path: str | os.PathLike,
               info: dict | None = None) -> Path:
    from ..learned.checkpoint import save_atomic

    return save_atomic(model_payload(network, config, info), path)


def network_from_payload(payload: dict, path) -> tuple[torch.nn.Module, DeformModelConfig]:
    from ..learned.checkpoint import network_from

    return network_from(payload, path, DeformModelConfig, build_network, "deformable model")


def load_network(path: str | os.PathLike, device="cpu") -> tuple[torch.nn.Module, DeformModelConfig]:
    """A model file or training checkpoint -> (network in eval mode, its config); InputError when bad."""
    from ..learned.checkpoint import read_payload

    payload = read_payload(path, (MODEL_FORMAT, CHECKPOINT_FORMAT))
    network, config = network_from_payload(payload, path)
    return network.to(device).eval(), config


def shipped_network_path() -> Path | None:
    """Resources/Models/deform_phantoms.pt (or its installed copy), or None."""
    from ..learned.models import shipped_file

    return shipped_file(SHIPPED_NAME)
