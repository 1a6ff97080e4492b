"""Review figures: X-rays with the DRR blended over them, written as PNG.

False-colour overlay: the X-ray drives magenta (red + blue), the DRR drives green, so
where they agree bone looks grey/white, bone seen only on the X-ray is magenta and bone
only in the DRR is green — the way registration results are usually judged by eye.
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


def overlay_rgb(xray: np.ndarray, drr: np.ndarray, drr_mask: np.ndarray | None = None) -> np.ndarray:
    """(rows, cols) X-ray and DRR -> (rows, cols, 3) uint8 false-colour overlay.

    ``drr_mask`` limits the green channel's blend to where the DRR has content (a
    vertebra's DRR is zero elsewhere, and the X-ray shows through in grey there).
    """
    if xray.shape != drr.shape:
        raise ValueError(f"X-ray {xray.shape} and DRR {drr.shape} must have the same shape")
    gray = normalize(xray)
    positive = drr[drr > 0]
    green = np.clip(drr / np.percentile(positive, 99.5), 0, 1) if positive.size else np.zeros_like(gray)
    if drr_mask is None:
        drr_mask = np.ones_like(gray, dtype=bool)
    rgb = np.stack([gray, np.where(drr_mask, green, gray), gray], axis=-1)
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
