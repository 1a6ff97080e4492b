"""Review figures: X-rays with the DRR blended over them, written as PNG.

The DRR is blended in green over the grey X-ray with an opacity that grows with its
intensity (as Slicer blends a foreground volume over a background), so a registered
vertebra's green outline lies exactly on its X-ray shadow and a misregistered one is
visibly offset.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk


def normalize(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.5)) -> np.ndarray:
    """Scale to [0, 1] between two percentiles (robust to outliers and collimation)."""
    image = np.asarray(image, dtype=np.float64)
    low, high = np.percentile(image, percentiles)
    return np.clip((image - low) / max(high - low, 1e-12), 0.0, 1.0)


def overlay_rgb(xray: np.ndarray, drr: np.ndarray, opacity: float = 0.65) -> np.ndarray:
    """(rows, cols) X-ray and DRR -> (rows, cols, 3) uint8: the DRR in green over the grey X-ray."""
    if xray.shape != drr.shape:
        raise ValueError(f"X-ray {xray.shape} and DRR {drr.shape} must have the same shape")
    gray = normalize(xray)[..., None]
    positive = drr[drr > 0]
    weight = np.clip(drr / np.percentile(positive, 99.0), 0, 1) if positive.size else np.zeros_like(drr)
    alpha = (opacity * weight)[..., None]
    rgb = gray * (1 - alpha) + alpha * np.array([0.15, 1.0, 0.25])
    return (rgb * 255).round().astype(np.uint8)


def tile(images: list[np.ndarray], gap_px: int = 8) -> np.ndarray:
    """Place (rows, cols, 3) uint8 images side by side (padded to the tallest) with a dark gap."""
    height = max(image.shape[0] for image in images)
    parts = []
    for index, image in enumerate(images):
        padded = np.zeros((height, image.shape[1], 3), np.uint8)
        padded[: image.shape[0]] = image
        parts.append(padded)
        if index < len(images) - 1:
            parts.append(np.full((height, gap_px, 3), 24, np.uint8))
    return np.concatenate(parts, axis=1)


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> None:
    """Write an (rows, cols, 3) uint8 array as an RGB PNG."""
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(rgb), isVector=True), str(path))
