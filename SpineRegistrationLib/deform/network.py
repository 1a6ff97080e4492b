"""The learned deformable network: MONAI's VoxelMorph, diffeomorphic, and its model file.

The network takes the moving and the fixed CT on one working grid (intensities in [0, 1],
:func:`.grid.hu_to_unit`), predicts a stationary velocity field and integrates it by scaling
and squaring (MONAI's ``DVF2DDF`` inside ``VoxelMorph``), so its displacement is a
diffeomorphism (no folding, up to the integration's discretisation). The displacement u
(voxels of the working grid, channels k, j, i) maps a fixed node y to the moving point
y + u(y): moving o (id + u) ~ fixed (MONAI's ``Warp``, :mod:`.field`'s direction).

Two inputs (``DeformModelConfig.inputs``): ``"images"`` is plain MONAI VoxelMorph (the two
images; the peer of the benchmarks), ``"flow"`` puts :class:`FlowFeatures` (the optical-flow
terms of the pair at two scales) in front of the same UNet. What is ours is that front, the
training (synthetic spine deformations with a Dice and a known-field term, :mod:`.training`)
and the optional instance optimisation.

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
    integration_steps: scaling-and-squaring steps (0: a plain displacement, not diffeomorphic).
    inputs: "flow" (:class:`FlowFeatures` in front of the UNet) or "images" (plain VoxelMorph).
    half_res: integrate the velocity at half resolution (MONAI's ``half_res``)."""

    spacing_mm: float = 2.0
    channels: tuple[int, ...] = (16, 16, 16, 32, 32, 32)
    final_channels: tuple[int, ...] = (16, 8)
    integration_steps: int = 7
    inputs: str = "flow"
    half_res: bool = False

    def __post_init__(self) -> None:
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {', '.join(INPUTS)}, got {self.inputs!r}")

    def to_dict(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "DeformModelConfig":
        # Files written before ``inputs`` and ``half_res`` existed hold plain half-resolution VoxelMorph.
        return cls(spacing_mm=float(values["spacing_mm"]), channels=tuple(values["channels"]),
                   final_channels=tuple(values["final_channels"]), integration_steps=int(values["integration_steps"]),
                   inputs=str(values.get("inputs", "images")), half_res=bool(values.get("half_res", True)))

    @property
    def multiple(self) -> int:
        """Grid sizes must be multiples of this (the UNet's poolings and a half-resolution field)."""
        return 2 ** (len(self.channels) // 2 + int(self.half_res))


#: The network inputs a model can have (DeformModelConfig.inputs).
INPUTS = ("flow", "images")


class FlowFeatures(torch.nn.Module):
    """(B, 2, K, J, I) [moving, fixed] -> (B, 16, K, J, I): both images, then at each of two scales
    (as given, and smoothed by a Gaussian of ``sigma`` voxels) the difference d = fixed - moving,
    the moving image's gradient g (3 channels, voxels) and the products d g (3).

    To first order u . g = d (brightness constancy), so d g and g are the terms of the local
    normal equations of optical flow (Lucas-Kanade); given them, the UNet need not learn a product
    of its inputs. Measured on phantom pairs (2 mm grid, one CPU thread, 300 supervised steps): plain
    VoxelMorph's error in the vertebrae stayed at the identity's (3.0 mm), with these inputs 2.5 mm.
    The smoothed scale widens the range of that linearisation beyond a voxel. Both images are
    standardised together (one mean and deviation per pair), so the terms do not depend on the
    intensity window.
    """

    channels = 16

    def __init__(self, sigma: float = 1.5) -> None:
        super().__init__()
        from monai.networks.layers import GaussianFilter

        self.smooth = GaussianFilter(3, sigma)

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        mean = pair.mean(dim=(1, 2, 3, 4), keepdim=True)
        std = pair.std(dim=(1, 2, 3, 4), keepdim=True).clamp(min=1e-6)
        pair = (pair - mean) / std
        features = [pair]
        for scaled in (pair, self.smooth(pair)):
            moving, fixed = scaled[:, :1], scaled[:, 1:]
            difference = fixed - moving
            gradient = torch.cat(torch.gradient(moving, dim=(2, 3, 4)), dim=1)
            features += [difference, gradient, 4.0 * difference * gradient]
        return torch.cat(features, dim=1)


def build_network(config: DeformModelConfig) -> torch.nn.Module:
    """MONAI ``VoxelMorph`` (``forward(moving, fixed) -> (warped moving, displacement voxels)``),
    its backbone preceded by :class:`FlowFeatures` when ``config.inputs`` is "flow"."""
    from monai.networks.nets import VoxelMorph, VoxelMorphUNet

    flow = config.inputs == "flow"
    backbone = VoxelMorphUNet(spatial_dims=3, in_channels=FlowFeatures.channels if flow else 2,
                              unet_out_channels=config.channels[0], channels=config.channels,
                              final_conv_channels=config.final_channels)
    if flow:
        backbone = torch.nn.Sequential(FlowFeatures(), backbone)
    return VoxelMorph(backbone=backbone, integration_steps=config.integration_steps, half_res=config.half_res)


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
