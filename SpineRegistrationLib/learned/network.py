"""The dual-view pose network: AP and LAT patches in, the vertebra's pose offset out.

Input (B, V=2, C=2, n, n): per view the X-ray patch and the DRR of the vertebra at the
nominal pose, alone or with the CT around it (the template, which tells the network which
vertebra, of which shape, at which level, to look for), both standardised (:mod:`.patches`).
One convolutional encoder, shared by the views, turns each view into a grid of tokens; a
transformer runs over the tokens of both views together with a learned view and position
embedding, so that every token attends to the other view (cross-view fusion); pooled tokens
give the offset as a 6D rotation (:func:`..pose.rotation_6d_to_matrix`) and a translation in
units of ``translation_scale_mm``, in the AP detector frame (:func:`.patches.view_frame`).

Built from plain torch layers (torchvision does not import beside the CPU torch wheel, and
MONAI's 2D residual units are the same few layers).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core.pose import rotation_6d_to_matrix
from .patches import PatchSpec


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input of :class:`PoseNet` (saved with the weights).

    size_px / mm_per_px: the input patch (:class:`.patches.PatchSpec`).
    channels: encoder widths, one residual stage each, every stage halving the resolution.
    fusion_layers / heads: the cross-view transformer.
    translation_scale_mm: the translation output is in these units (mm / scale ~ 1).
    template_context_mm: the template channel's context (:class:`.patches.PatchSpec` ``context_mm``;
        0, the vertebra alone, for models saved before it existed).
    """

    size_px: int = 64
    mm_per_px: float = 2.5
    channels: tuple[int, ...] = (32, 64, 128, 192)
    fusion_layers: int = 2
    heads: int = 4
    translation_scale_mm: float = 20.0
    template_context_mm: float = 0.0

    @property
    def patch(self) -> PatchSpec:
        return PatchSpec(self.size_px, self.mm_per_px, self.template_context_mm)

    @property
    def tokens_per_view(self) -> int:
        side = self.size_px // 2 ** len(self.channels)
        return side * side

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        values = dict(values)
        values["channels"] = tuple(int(c) for c in values.get("channels", cls.channels))
        return cls(**values)


class _Residual(nn.Module):
    """Two 3x3 convolutions with a strided shortcut: (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class PoseNet(nn.Module):
    """(B, 2, 2, n, n) standardised patches -> (rotation (B, 3, 3), translation (B, 3) mm), AP frame."""

    views = 2
    in_channels = 2

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config = ModelConfig() if config is None else config
        if config.size_px % 2 ** len(config.channels) or config.size_px < 2 ** len(config.channels):
            raise ValueError(f"size_px {config.size_px} must be a multiple of 2^{len(config.channels)} (one halving per stage)")
        width = config.channels[-1]
        stages, c_in = [], self.in_channels
        for c_out in config.channels:
            stages.append(_Residual(c_in, c_out))
            c_in = c_out
        self.encoder = nn.Sequential(*stages)
        self.position = nn.Parameter(torch.zeros(1, 1, config.tokens_per_view, width))
        self.view_embedding = nn.Parameter(torch.zeros(1, self.views, 1, width))
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.view_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(width, config.heads, dim_feedforward=2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, config.fusion_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(self.views * width), nn.Linear(self.views * width, width),
                                  nn.ReLU(inplace=True), nn.Linear(width, 9))
        # Start at the nominal pose: zero translation and the 6D identity.
        nn.init.zeros_(self.head[-1].weight)
        with torch.no_grad():
            self.head[-1].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]))

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, views, channels, rows, columns = patches.shape
        if (views, channels) != (self.views, self.in_channels) or rows != self.config.size_px or columns != rows:
            raise ValueError(
                f"PoseNet takes (B, {self.views}, {self.in_channels}, {self.config.size_px}, {self.config.size_px}) "
                f"patches, got {tuple(patches.shape)}"
            )
        features = self.encoder(patches.flatten(0, 1))  # (B*V, width, s, s)
        tokens = features.flatten(2).transpose(1, 2).reshape(batch, views, -1, features.shape[1])
        tokens = tokens + self.position + self.view_embedding
        fused = self.fusion(tokens.flatten(1, 2)).reshape(batch, views, -1, features.shape[1])
        output = self.head(fused.mean(2).flatten(1))
        return rotation_6d_to_matrix(output[:, :6]), output[:, 6:] * self.config.translation_scale_mm
