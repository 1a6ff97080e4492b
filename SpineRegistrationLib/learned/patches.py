"""What the pose network sees and says, in geometry: fixed-scale patches and the pose frame.

Patches: each view is resampled onto a square patch detector in the X-ray's own detector
plane, centred on the projection of the vertebra's centre at the nominal pose, with a pixel
spacing chosen so that one patch pixel covers ``mm_per_px`` millimetres *at the vertebra's
centre* (detector spacing = ``mm_per_px`` x magnification). So the network sees a vertebra
at the same scale whatever the source distances and detector pixel size.

Pose frame: the network predicts the vertebra's offset from its nominal pose as a rotation
about the nominal centre and a translation of that centre, expressed in the frame of the
first (AP) view's patch: rows ``u``, ``v`` and ``n = u x v`` of :func:`view_frame` (the patch
axes are the detector's, oriented as the C-arm defaults orient them: :func:`patch_axes`). In
world RAS the offset is ``D = T(c + Q^T t) . Q^T R Q . T(-c)`` (Q the frame, c the centre);
the registered pose is ``D @ nominal``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..core.volume import Volume, bounding_box_ijk
from ..geometry import XrayGeometry
from ..render.drr import DRRRenderer, hu_to_mu
from ..render.spine_xray import SOFT_TISSUE_HU
from ..render.xray_sim import gaussian_blur


@dataclass(frozen=True)
class PatchSpec:
    """The network's input patch: ``size_px`` x ``size_px`` pixels of ``mm_per_px`` mm at the vertebra centre.

    ``context_mm``: the template channel draws the CT inside the vertebra's box grown by this
    (CT mm), above soft tissue: the neighbours, ribs, sternum and shoulders around it, which
    tell its level from the next (:func:`template_renderer`); 0 draws the vertebra alone.
    """

    size_px: int = 64
    mm_per_px: float = 2.5
    context_mm: float = 0.0

    @property
    def field_mm(self) -> float:
        """Side of the patch at the vertebra centre, mm."""
        return self.size_px * self.mm_per_px


def patch_axes(geometry: XrayGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The patch's (u, v): the detector's axes, each reversed where needed so that v points to
    the feet (-S) and u to the patient's left (RAS -x) in a frontal view or to
    posterior (RAS -y) in a lateral one (the C-arm defaults). So a PA shot, a lateral from the
    left or a flipped detector give the network the image it knows, mirrored back."""
    u, v = geometry.detector_u, geometry.detector_v
    frontal = abs(geometry.detector_normal[1]) >= abs(geometry.detector_normal[0])
    u = u if u[0 if frontal else 1] <= 0 else -u
    v = v if v[2] <= 0 else -v
    return u, v


def patch_geometry(geometry: XrayGeometry, center_world: np.ndarray, spec: PatchSpec) -> XrayGeometry:
    """The patch detector of ``geometry`` around ``center_world`` (RAS mm), see the module docstring."""
    center_world = np.asarray(center_world, dtype=np.float64)
    spacing = spec.mm_per_px * geometry.magnification(center_world)
    column, row = geometry.project(center_world)
    hit = geometry.pixel_to_ras(column, row)
    half = 0.5 * (spec.size_px - 1) * spacing
    u, v = patch_axes(geometry)
    origin = hit - half * u - half * v
    return XrayGeometry(geometry.source, origin, u, v, (spacing, spacing), (spec.size_px, spec.size_px))


def resample_to_patch(image: torch.Tensor, geometry: XrayGeometry, patch: XrayGeometry) -> torch.Tensor:
    """(rows, columns) X-ray of ``geometry`` -> (size, size) on ``patch`` (same detector plane).

    The image is first box-averaged by the whole number of its pixels that fit in a patch
    pixel (no aliasing of noise), then sampled bilinearly; outside the detector is 0.
    """
    du, dv = geometry.pixel_spacing
    factor = max(1, int(min(patch.pixel_spacing[0] / du, patch.pixel_spacing[1] / dv)))
    pooled = image[None, None].to(torch.float32)
    if factor > 1:
        pooled = F.avg_pool2d(pooled, factor, ceil_mode=True)
    rows, columns = np.meshgrid(np.arange(patch.rows), np.arange(patch.columns), indexing="ij")
    where = geometry.project(patch.pixel_to_ras(columns, rows))  # (n, n, 2) column, row of the X-ray
    where = (where - (factor - 1) / 2.0) / factor  # pooled pixel coordinates
    height, width = pooled.shape[-2:]
    grid = np.stack([2.0 * where[..., 0] / max(width - 1, 1) - 1.0, 2.0 * where[..., 1] / max(height - 1, 1) - 1.0], -1)
    grid_t = torch.as_tensor(grid, dtype=torch.float32, device=pooled.device)[None]
    return F.grid_sample(pooled, grid_t, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]


def standardize(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Zero mean, unit standard deviation over the last two axes (each patch on its own)."""
    mean = images.mean((-2, -1), keepdim=True)
    std = images.std((-2, -1), keepdim=True)
    return (images - mean) / (std + eps)


def normalize_xray(images: torch.Tensor, sigma_px: float = 6.0) -> torch.Tensor:
    """X-ray patches (..., n, n) -> their detail (minus a Gaussian blur of ``sigma_px``), standardised.

    Removes what varies slowly across a patch (heel effect, scatter veil, the body's
    outline, windowing offsets) and keeps the bone edges the pose is read from.
    """
    return standardize(images - gaussian_blur(images, sigma_px))


def view_frame(geometry: XrayGeometry) -> np.ndarray:
    """(3, 3) rotation world RAS -> pose frame: rows u, v (the patch's, :func:`patch_axes`), u x v."""
    u, v = patch_axes(geometry)
    return np.stack([u, v, np.cross(u, v)])


def offset_in_frame(pose: np.ndarray, nominal: np.ndarray, center_ct: np.ndarray, frame: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(R, t) in the pose frame of the offset that takes ``nominal`` to ``pose`` (both CT RAS -> world).

    R (3, 3) rotates about the nominal centre ``nominal @ center_ct``; t (3,) mm moves that centre.
    """
    offset = np.asarray(pose, np.float64) @ np.linalg.inv(np.asarray(nominal, np.float64))
    center = nominal[:3, :3] @ center_ct + nominal[:3, 3]
    rotation_world = offset[:3, :3]
    translation_world = rotation_world @ center + offset[:3, 3] - center
    return frame @ rotation_world @ frame.T, frame @ translation_world


def pose_from_offset(rotation: np.ndarray, translation: np.ndarray, nominal: np.ndarray, center_ct: np.ndarray,
                     frame: np.ndarray) -> np.ndarray:
    """The (4, 4) pose (CT RAS -> world) that the frame offset (R, t) makes of ``nominal``; inverse of
    :func:`offset_in_frame`."""
    center = nominal[:3, :3] @ center_ct + nominal[:3, 3]
    offset = np.eye(4)
    offset[:3, :3] = frame.T @ np.asarray(rotation, np.float64) @ frame
    offset[:3, 3] = center + frame.T @ np.asarray(translation, np.float64) - offset[:3, :3] @ center
    return offset @ np.asarray(nominal, np.float64)


def template_renderer(mu: Volume, mask: np.ndarray, spec: PatchSpec) -> DRRRenderer:
    """The renderer of the template channel (``spec.context_mm``): mu (1/mm) and the vertebra's
    (K, J, I) mask, the volume averaged to the patch's resolution (:func:`volume_downsample`)."""
    factor = volume_downsample(mu, spec)
    if spec.context_mm <= 0:
        return DRRRenderer(mu, mask=mask, downsample=factor)
    # Above soft tissue only, so that the box's faces draw no edge across the body.
    start, stop = bounding_box_ijk(mask, np.ceil(spec.context_mm / mu.spacing_mm).astype(int))
    box = mu.cropped(start, stop)
    soft = float(hu_to_mu(np.float32(SOFT_TISSUE_HU)))
    return DRRRenderer(box.with_array(np.clip(box.array - soft, 0.0, None)), downsample=factor)


def template_channel(drr: torch.Tensor, spec: PatchSpec) -> torch.Tensor:
    """Template DRRs (..., n, n) as the network reads them: the vertebra alone standardised, its
    context (which has the body's slow shading, as an X-ray has) high-passed like the X-ray."""
    return normalize_xray(drr) if spec.context_mm > 0 else standardize(drr)


def volume_downsample(volume: Volume, spec: PatchSpec) -> int:
    """Voxel blocks to average so that the rendered volume is no finer than a patch pixel."""
    return max(1, int(round(spec.mm_per_px / float(volume.spacing_mm.min()))))
