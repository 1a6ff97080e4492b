"""Realistic X-ray simulation: what a detector records, not our plain DRR.

Real radiographs differ from a DRR of the same CT: a polychromatic beam makes bone
relatively brighter than a linear HU->mu model says, the anode heel makes the field
uneven, scatter adds a blurred veil, photons are Poisson noise, the detector blurs, the
image is log-transformed, windowed with a gamma and quantised, and collimator blades
black out the border. :func:`simulate_xray` applies these to an optical-depth image (the
output of :class:`~SpineRegistrationLib.drr.DRRRenderer`), batched in torch so that the
training-data synthesis can use it as augmentation; :func:`hu_to_mu_spectral` is the
attenuation model used to render such X-rays, deliberately different from
:func:`~SpineRegistrationLib.drr.hu_to_mu`.

Images are (..., rows, columns) tensors, bone bright, values in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .drr import MU_WATER_PER_MM


def hu_to_mu_spectral(hu: np.ndarray, bone_boost: float = 1.35, mu_water_per_mm: float = MU_WATER_PER_MM) -> np.ndarray:
    """HU -> mu (1/mm) with bone attenuating ``bone_boost`` times more per HU than soft tissue.

    A bilinear (soft tissue / bone) model in the spirit of spectral CT calibration: below
    0 HU the water line, above it a steeper slope, which is what a lower-energy beam sees.
    """
    hu = np.asarray(hu, dtype=np.float32)
    relative = 1.0 + np.where(hu > 0, bone_boost * hu, hu) / 1000.0
    return (mu_water_per_mm * np.clip(relative, 0.0, None)).astype(np.float32)


@dataclass
class XraySimConfig:
    """Knobs of the simulated acquisition (defaults: a plausible mobile C-arm spine shot).

    photons: mean photon count per pixel of the open field (sets the Poisson noise).
    scatter_fraction: scatter intensity relative to the primary, spread with
        ``scatter_sigma_px`` (pixels of the output image).
    heel: relative intensity drop of the anode heel effect across the columns.
    blur_sigma_px: detector point-spread (Gaussian sigma, pixels).
    gamma: exponent of the display curve applied after windowing.
    window_percentiles: (low, high) percentiles of the log image mapped to 0 and 1.
    bits: quantisation depth of the stored image.
    collimation: fraction of the width/height blacked out at each border (0 = none).
    """

    photons: float = 2.0e4
    scatter_fraction: float = 0.25
    scatter_sigma_px: float = 20.0
    heel: float = 0.15
    blur_sigma_px: float = 0.8
    gamma: float = 0.8
    window_percentiles: tuple[float, float] = (1.0, 99.5)
    bits: int = 12
    collimation: float = 0.04


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., rows, columns) images with reflect padding.

    Written with torch's conv2d rather than MONAI's GaussianFilter to keep MONAI out of
    the core install (it is only a training extra).
    """
    if sigma_px <= 0:
        return images
    shape = images.shape
    flat = images.reshape(-1, 1, *shape[-2:])
    # Reflect padding needs a radius below the image size; small images get a truncated kernel.
    radius_rows = min(int(round(3 * sigma_px)), shape[-2] - 1)
    radius_cols = min(int(round(3 * sigma_px)), shape[-1] - 1)
    flat = F.pad(flat, (radius_cols, radius_cols, radius_rows, radius_rows), mode="reflect")
    flat = F.conv2d(flat, _gaussian_kernel(sigma_px, radius_cols, images).view(1, 1, 1, -1))
    flat = F.conv2d(flat, _gaussian_kernel(sigma_px, radius_rows, images).view(1, 1, -1, 1))
    return flat.reshape(shape)


def _gaussian_kernel(sigma_px: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    """Normalised 1D Gaussian of 2*radius+1 taps, dtype/device of ``like``."""
    offsets = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    return kernel / kernel.sum()


def simulate_xray(
    optical_depth: torch.Tensor, config: XraySimConfig | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Optical depth (..., rows, columns) -> simulated radiograph in [0, 1], bone bright."""
    config = XraySimConfig() if config is None else config
    depth = optical_depth.clamp(min=0.0)
    columns = depth.shape[-1]
    heel = 1.0 - config.heel * torch.linspace(0.0, 1.0, columns, dtype=depth.dtype, device=depth.device)
    primary = config.photons * heel * torch.exp(-depth)
    scatter = config.scatter_fraction * gaussian_blur(primary, config.scatter_sigma_px)
    expected = primary + scatter
    counts = torch.poisson(expected, generator=generator) if config.photons > 0 else expected
    counts = gaussian_blur(counts, config.blur_sigma_px).clamp(min=1.0)
    log_image = -torch.log(counts / config.photons)
    flat = log_image.flatten(-2)
    low = torch.quantile(flat, config.window_percentiles[0] / 100.0, dim=-1)[..., None, None]
    high = torch.quantile(flat, config.window_percentiles[1] / 100.0, dim=-1)[..., None, None]
    image = ((log_image - low) / (high - low).clamp(min=1e-6)).clamp(0.0, 1.0) ** config.gamma
    levels = 2**config.bits - 1
    image = torch.round(image * levels) / levels
    return collimate(image, config.collimation)


def collimate(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """Black out ``fraction`` of the height and width at each border (collimator blades)."""
    if fraction <= 0:
        return images
    rows, columns = images.shape[-2:]
    r, c = int(round(fraction * rows)), int(round(fraction * columns))
    mask = torch.zeros(rows, columns, dtype=images.dtype, device=images.device)
    mask[r : rows - r, c : columns - c] = 1.0
    return images * mask
