"""A DiffDRR-based registration baseline and a DiffDRR X-ray renderer for the evaluation.

1. :class:`DiffDRRRegistration`: biplanar single-vertebra 2D/3D registration done the way
   DiffDRR's own registration code does it (eigenvivek/xvr ``src/xvr/registrar/base.py``,
   ``_RegistrarBase.run_test_time_optimization``, built on ``diffdrr.registration``), with
   DiffDRR's renderer and DiffDRR's losses, none of ours:

   - renderer: ``diffdrr.drr.DRR`` (through :class:`.diffdrr_peer.DiffDRRPeer`, which
     maps our geometry and pose conventions onto DiffDRR's) of the vertebra alone (the CT
     masked by its label, as xvr renders selected ``labels``), one DRR per view;
     ``renderer="trilinear"`` (xvr's default);
   - loss: xvr's ``imagesim`` = ``beta * MultiscaleNCC([None, patch], [0.5, 0.5]) +
     (1 - beta) * GradientNCC(patch, sigma)`` (xvr's beta 0.5 and its 9-px patch at the
     full-resolution stage; sizes in mm, see :class:`DiffDRRConfig`), averaged over the
     two views. ``diffdrr.metrics`` imports torchvision
     (not installable here: it drags a CUDA torch), so the two classes are written out
     again below from DiffDRR's source (eigenvivek/DiffDRR ``src/diffdrr/metrics.py``:
     ``NormalizedCrossCorrelation2d``, ``MultiscaleNormalizedCrossCorrelation2d``,
     ``GradientNormalizedCrossCorrelation2d``, ``_Sobel``, ``_to_patches``; the
     installed 0.6.1 ``diffdrr/metrics.py`` has the same NCC classes, with torchvision's
     ``gaussian_blur`` inside ``Sobel``);
   - optimiser: Adam (``maximize=True``) on the 6 pose parameters, xvr's defaults
     ``lr_rot = 1e-2`` rad and ``lr_xyz = 1`` mm, ``ReduceLROnPlateau(factor=0.1,
     patience=10, threshold=1e-4, mode="max")``, a stage ends after 3 plateaus or its
     iteration budget; coarse to fine over detector scales (xvr's ``rescale_detector_``
     per stage, with its step-size schedule ``lr / step_size_scalar``,
     ``step_size_scalar *= 2 ** (stage - 1)``); the X-ray is min-max standardised and
     resized to the DRR (xvr's ``XrayTransforms``; its final affine normalisation does
     not change NCC);
   - rotation: Euler angles, convention ``"ZXY"`` (xvr's default), through
     ``diffdrr.pose.euler_angles_to_matrix``, about the vertebra's centroid (DiffDRR
     rotates about the centre of its canonicalised volume; for a vertebra crop that is
     the vertebra); translation: the centroid's displacement in mm.

   What is ours: the biplanar loop (one pose, two DRRs), the start (identity, like every
   method of the evaluation), the crop of both X-rays to a window around the vertebra's
   projection (xvr's ``crop``; without it DiffDRR would trace all 512² rays of each view,
   >95 % of them through empty space), re-centred on the current estimate at each stage
   with a shrinking margin (``margins_mm``), and the loss's patch and smoothing sizes set
   in mm rather than pixels (see :class:`DiffDRRConfig`). The trilinear renderer takes
   one sample per voxel along the vertebra box's diagonal (DiffDRR's ``n_points``).
   Tuning notes (phantom L1-L3 at 1 mm, one thread): from a start 5 mm off the truth
   this converges to 0.3-0.5 mm mTRE; with xvr's pixel-sized sigma (5 px) and one fixed
   40 mm window it drifted away (5 -> 28 mm), with per-stage windows and mm-sized
   sigma it also converges from some ~27 mm starts. It has no global search (neither
   has DiffDRR's registration: xvr starts from a network's estimate), so far starts
   fail: that is the point of comparing it with ours.

2. :func:`diffdrr_render_factory`: a :data:`SpineRegistrationLib.evaluation.RenderFactory`
   that renders the optical depth of the evaluation's X-rays with DiffDRR's Siddon ray
   tracer (exact ray/voxel intersections, nearest voxel values) instead of our Joseph
   projector, so the benchmark can test our registration on X-rays made by a different
   renderer. Only the detector window the posed volume box projects onto is traced
   (outside it the optical depth of a masked vertebra is exactly 0), in DiffDRR's
   ``patch_size`` patches to bound memory.

Install DiffDRR with ``Testing/benchmarks/install_peers.sh``; this module imports it
only inside the functions that need it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from SpineRegistrationLib.geometry import XrayGeometry
from SpineRegistrationLib.core.volume import Volume, bounding_box_ijk

from .diffdrr_peer import DiffDRRPeer


# --------------------------------------------------------------------------- DiffDRR's losses
# Written out again from eigenvivek/DiffDRR src/diffdrr/metrics.py (see the module
# docstring for why); same maths, same defaults (eps 1e-4 as in the current source).
def _to_patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * p * p, H - p + 1, W - p + 1): every p x p patch as channels (stride 1)."""
    x = x.unfold(2, patch_size, step=1).unfold(3, patch_size, step=1).contiguous()
    b, c, h, w, p1, p2 = x.shape
    return x.permute(0, 1, 4, 5, 2, 3).reshape(b, c * p1 * p2, h, w)


class NormalizedCrossCorrelation2d(torch.nn.Module):
    """NCC of two (B, C, H, W) batches -> (B,); with ``patch_size``, NCC of every patch position."""

    def __init__(self, patch_size: int | None = None, eps: float = 1e-4):
        super().__init__()
        self.patch_size = patch_size
        self.eps = eps

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.patch_size is not None:
            x1 = _to_patches(x1, self.patch_size)
            x2 = _to_patches(x2, self.patch_size)
        if x1.shape != x2.shape:
            raise ValueError(f"images must be the same size, got {tuple(x1.shape)} and {tuple(x2.shape)}")
        _, c, h, w = x1.shape
        score = (self._norm(x1) * self._norm(x2)).sum(dim=(1, 2, 3))
        return score / (c * h * w)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(dim=(-1, -2), keepdim=True)
        var = x.var(dim=(-1, -2), keepdim=True, correction=0) + self.eps
        return (x - mu) / var.sqrt()


class MultiscaleNormalizedCrossCorrelation2d(torch.nn.Module):
    """Weighted sum of NCCs at several patch sizes (None = the whole image) -> (B,)."""

    def __init__(self, patch_sizes=(None,), patch_weights=(1.0,), eps: float = 1e-4):
        super().__init__()
        if len(patch_sizes) != len(patch_weights):
            raise ValueError(f"each scale needs a weight, got {list(patch_sizes)} and {list(patch_weights)}")
        self.nccs = torch.nn.ModuleList([NormalizedCrossCorrelation2d(p, eps) for p in patch_sizes])
        self.patch_weights = list(patch_weights)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return torch.stack([w * ncc(x1, x2) for w, ncc in zip(self.patch_weights, self.nccs)]).sum(0)


class _Sobel(torch.nn.Module):
    """Gaussian smoothing (sigma px, reflect padding) then 3x3 Sobel: (B, 1, H, W) -> (B, 2, H, W)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma
        gx = torch.tensor([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=torch.float32)
        gy = torch.tensor([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=torch.float32)
        self.register_buffer("sobel_weight", torch.stack([gx, gy]).unsqueeze(1))
        self.gauss_pad = 0
        if sigma > 0:
            size = int(6 * sigma + 1) | 1
            offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0
            kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
            kernel = kernel / kernel.sum()
            self.register_buffer("gauss_h", kernel.reshape(1, 1, 1, -1))
            self.register_buffer("gauss_v", kernel.reshape(1, 1, -1, 1))
            self.gauss_pad = size // 2

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float()
        if self.sigma > 0:
            # Reflect padding needs pad < size: small (coarse) images get a shorter reach.
            pad = min(self.gauss_pad, x.shape[-1] - 1, x.shape[-2] - 1)
            x = F.pad(x, [pad] * 4, mode="reflect")
            trim = self.gauss_pad - pad
            h = self.gauss_h[..., trim : self.gauss_h.shape[-1] - trim]
            v = self.gauss_v[..., trim : self.gauss_v.shape[-2] - trim, :]
            x = F.conv2d(F.conv2d(x, h / h.sum()), v / v.sum())
        return F.conv2d(x, self.sobel_weight, padding=1)


class GradientNormalizedCrossCorrelation2d(NormalizedCrossCorrelation2d):
    """NCC of the (smoothed) Sobel gradients of two (B, 1, H, W) batches -> (B,)."""

    def __init__(self, patch_size: int | None = None, sigma: float = 1.0, **kwargs):
        super().__init__(patch_size, **kwargs)
        self.sobel = _Sobel(sigma)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return super().forward(self.sobel(x1), self.sobel(x2))


# --------------------------------------------------------------------------- registration
@dataclass
class DiffDRRConfig:
    """Knobs of :class:`DiffDRRRegistration` (xvr's defaults where they carry over).

    scales: detector down-sampling factor of each stage, coarse -> fine (1 = the X-ray's pixels).
    iterations: Adam steps per stage at most (a stage also ends after ``max_plateaus``).
    lr_rot (rad) / lr_xyz (mm): Adam step sizes of the first stage.
    patience / threshold / max_plateaus: ReduceLROnPlateau and the stage's stop rule.
    patch_mm / sigma_mm / beta: the loss. xvr sets the patch (9 px) and the gradient
        smoothing (sigma 5 px) in pixels of its working resolution (~1.5 mm pixels for a
        ~300 mm pelvis); a vertebra is ~50 mm, and 5 px of a 4 mm coarse level blur it
        into a blob (the optimiser then drifts away: measured), so here both are set in
        mm at the detector and converted per stage: patch ``max(5, odd(patch_mm / pixel))``
        px, sigma ``sigma_mm / pixel`` px.
    margins_mm: per stage, the crop around the vertebra's projection at the current pose,
        in mm at the vertebra (converted with the view's magnification): the first must
        cover the search range; later ones shrink with the remaining error, which keeps
        the fine stages cheap (DiffDRR's cost grows with the rays and the patches).
    samples_per_voxel: trilinear samples per voxel of the vertebra box's diagonal.
    renderer: DiffDRR's "trilinear" or "siddon".
    cube_mm: None renders the vertebra alone (the CT masked by its label, as xvr renders
        selected labels); a side in mm renders the whole CT inside that cube about the
        vertebra's centroid instead (the context a real X-ray shows around it).
    """

    scales: tuple[float, ...] = (4.0, 2.0, 1.0)
    iterations: tuple[int, ...] = (60, 30, 15)
    lr_rot: float = 1e-2
    lr_xyz: float = 1.0
    patience: int = 10
    threshold: float = 1e-4
    max_plateaus: int = 3
    patch_mm: float = 9.0
    sigma_mm: float = 4.0
    beta: float = 0.5
    margins_mm: tuple[float, ...] = (40.0, 20.0, 10.0)
    samples_per_voxel: float = 1.0
    renderer: str = "trilinear"
    cube_mm: float | None = None

    def __post_init__(self) -> None:
        if not self.scales or not len(self.scales) == len(self.iterations) == len(self.margins_mm):
            raise ValueError(f"scales {self.scales}, iterations {self.iterations} and margins_mm {self.margins_mm} "
                             "need the same non-zero length")


def _magnification(geometry: XrayGeometry, point_ras: np.ndarray) -> float:
    return geometry.sdd_mm / float((point_ras - geometry.source) @ geometry.detector_normal)


def _box_corners_ras(volume: Volume, roi_ijk) -> np.ndarray:
    (i0, j0, k0), (i1, j1, k1) = roi_ijk
    corners = np.array([[i, j, k] for i in (i0 - 0.5, i1 - 0.5) for j in (j0 - 0.5, j1 - 0.5)
                        for k in (k0 - 0.5, k1 - 0.5)], float)
    return volume.ijk_to_ras_points(corners)


def _window(geometry: XrayGeometry, corners_world: np.ndarray, margin_px: float, clip: bool) -> tuple[int, int, int, int]:
    """(c0, r0, columns, rows) of the pixels the points project onto, grown by ``margin_px``."""
    pixels = geometry.project(corners_world)
    c0, r0 = np.floor(pixels.min(0) - margin_px).astype(int)
    c1, r1 = np.ceil(pixels.max(0) + margin_px).astype(int) + 1
    if clip:
        c0, r0 = max(c0, 0), max(r0, 0)
        c1, r1 = min(c1, geometry.columns), min(r1, geometry.rows)
    return int(c0), int(r0), int(max(c1 - c0, 0)), int(max(r1 - r0, 0))


def _masked_crop(mu: Volume, mask: np.ndarray | None, roi_ijk) -> Volume:
    """The volume zeroed outside ``mask`` and cropped to ``roi_ijk`` (stop exclusive), done once
    so that every DiffDRR renderer built from it handles only the vertebra's box."""
    (i0, j0, k0), (i1, j1, k1) = roi_ijk
    array = mu.array[k0:k1, j0:j1, i0:i1].astype(np.float32)
    if mask is not None:
        array = np.where(mask[k0:k1, j0:j1, i0:i1], array, np.float32(0.0))
    shift = np.eye(4)
    shift[:3, 3] = (i0, j0, k0)
    return Volume(np.ascontiguousarray(array), mu.ijk_to_ras @ shift)


def _crop_image(image: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """``image`` inside ``window`` (zero where it leaves the detector)."""
    c0, r0, cols, rows = window
    out = np.zeros((rows, cols), np.float32)
    sr0, sc0 = max(r0, 0), max(c0, 0)
    sr1, sc1 = min(r0 + rows, image.shape[0]), min(c0 + cols, image.shape[1])
    if sr1 > sr0 and sc1 > sc0:
        out[sr0 - r0 : sr1 - r0, sc0 - c0 : sc1 - c0] = image[sr0:sr1, sc0:sc1]
    return out


def _standardize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """xvr's ``Standardize``: min-max to [0, 1]."""
    return (x - x.min()) / (x.max() - x.min() + eps)


class DiffDRRRegistration:
    """Register one vertebra to biplanar X-rays with DiffDRR (see the module docstring).

    Call it with an :class:`SpineRegistrationLib.evaluation.EvalCase` (it is an evaluation
    method): returns ``(matrix_ras, time_s, extra)``.
    """

    def __init__(self, config: DiffDRRConfig = DiffDRRConfig(), device: str | torch.device = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.trace = None  # optional callback(stage, matrix_ras, similarity) after every step

    def imagesim(self, pixel_mm: float):
        """xvr's combined similarity at a detector pixel size: ((B, 1, H, W), (B, 1, H, W)) -> (B,), higher is better."""
        c = self.config
        patch = max(5, int(round(c.patch_mm / pixel_mm)) | 1)
        ncc = MultiscaleNormalizedCrossCorrelation2d([None, patch], [0.5, 0.5]).to(self.device)
        gradncc = GradientNormalizedCrossCorrelation2d(patch, c.sigma_mm / pixel_mm).to(self.device)
        return lambda x, y: c.beta * ncc(x, y) + (1 - c.beta) * gradncc(x, y)

    def __call__(self, case) -> tuple[np.ndarray, float, dict]:
        started = time.perf_counter()
        matrix, extra = self.register(case.mu, case.mask, case.images, case.geometries, case.matrix_init)
        return matrix, time.perf_counter() - started, extra

    def register(self, mu: Volume, mask: np.ndarray, images, geometries, init: np.ndarray | None = None):
        """(4, 4) matrix_ras of the vertebra ``mask`` of ``mu`` (1/mm) in the views; and an info dict."""
        from diffdrr.pose import euler_angles_to_matrix

        c, device = self.config, self.device
        init = np.eye(4) if init is None else np.asarray(init, dtype=np.float64)
        k, j, i = np.nonzero(mask)
        center_ijk = np.array([i.mean(), j.mean(), k.mean()])
        center_ras = mu.ijk_to_ras_points(center_ijk)
        if c.cube_mm is None:
            roi = bounding_box_ijk(mask)
            vertebra = _masked_crop(mu, mask, roi)
        else:
            half = 0.5 * c.cube_mm / mu.spacing_mm
            roi = (np.clip(np.floor(center_ijk - half).astype(int), 0, None),
                   np.minimum(np.ceil(center_ijk + half).astype(int) + 1, mu.shape_ijk))
            vertebra = _masked_crop(mu, None, roi)
        center_world = init[:3, :3] @ center_ras + init[:3, 3]
        corners_ras = _box_corners_ras(mu, roi)
        spacing = float(mu.spacing_mm.min())
        diagonal_mm = float(np.linalg.norm((np.asarray(roi[1]) - np.asarray(roi[0])) * mu.spacing_mm))

        def crop_views(matrix: np.ndarray, margin_mm: float) -> list:
            """Each view cropped to the vertebra's projection at ``matrix`` grown by ``margin_mm`` (xvr's ``crop``)."""
            corners_world = corners_ras @ matrix[:3, :3].T + matrix[:3, 3]
            center = matrix[:3, :3] @ center_ras + matrix[:3, 3]
            views = []
            for image, geometry in zip(images, geometries):
                margin_px = margin_mm * _magnification(geometry, center) / min(geometry.pixel_spacing)
                window = _window(geometry, corners_world, margin_px, clip=True)
                if window[2] < 4 or window[3] < 4:
                    raise ValueError("the vertebra does not project onto the detector")
                views.append((_crop_image(np.asarray(image, np.float32), window), geometry.cropped(*window)))
            return views

        rotation = torch.zeros(1, 3, device=device, requires_grad=True)
        translation = torch.zeros(1, 3, device=device, requires_grad=True)
        init_t = torch.as_tensor(init, dtype=torch.float32, device=device)
        center_t = torch.as_tensor(center_world, dtype=torch.float32, device=device)

        def pose() -> torch.Tensor:
            """(1, 4, 4): rotate about the (start) centroid, then move it by the translation; after ``init``."""
            r = euler_angles_to_matrix(rotation, "ZXY")
            offset = center_t + translation[0] - r[0] @ center_t
            top = torch.cat([r[0], offset[:, None]], 1)
            delta = torch.cat([top, torch.tensor([[0.0, 0.0, 0.0, 1.0]], device=device)], 0)
            return (delta @ init_t)[None]

        n_points = max(16, math.ceil(c.samples_per_voxel * diagonal_mm / spacing) + 1)
        iterations, nccs, step_size_scalar = 0, [], 1.0
        for stage, (scale, n_itr, margin_mm) in enumerate(zip(c.scales, c.iterations, c.margins_mm), start=1):
            with torch.no_grad():
                current = pose()[0].double().cpu().numpy()
            renderers, targets, levels = [], [], []
            for image, geometry in crop_views(current, margin_mm):
                level = geometry.scaled(scale) if scale != 1 else geometry
                levels.append(level)
                renderers.append(DiffDRRPeer(vertebra, level, renderer=c.renderer, device=device,
                                             **({"n_points": n_points} if c.renderer == "trilinear" else {})))
                x = torch.from_numpy(image)[None, None].to(device)
                x = F.interpolate(_standardize(x), size=(level.rows, level.columns), mode="bilinear",
                                  align_corners=False, antialias=True)
                targets.append(x)
            imagesim = self.imagesim(min(levels[0].pixel_spacing))
            step_size_scalar *= 2 ** (stage - 1)
            optimizer = torch.optim.Adam(
                [{"params": [rotation], "lr": c.lr_rot / step_size_scalar},
                 {"params": [translation], "lr": c.lr_xyz / step_size_scalar}],
                maximize=True,
            )
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=0.1, patience=c.patience, threshold=c.threshold, mode="max"
            )
            plateaus, current_lr = 0, math.inf
            for _ in range(n_itr):
                optimizer.zero_grad()
                p = pose()
                loss = torch.stack([imagesim(target, renderer(p)[:, None]) for renderer, target
                                    in zip(renderers, targets)]).mean()
                loss.backward()
                optimizer.step()
                scheduler.step(loss.detach())
                iterations += 1
                nccs.append(float(loss.detach()))
                if self.trace is not None:
                    self.trace(stage, p.detach()[0].double().cpu().numpy(), nccs[-1])
                lr = scheduler.get_last_lr()[0]
                if lr < current_lr:
                    current_lr, plateaus = lr, plateaus + 1
                if plateaus == c.max_plateaus:
                    break
        with torch.no_grad():
            final = pose()[0].double().cpu().numpy()
        return final, {"similarity": nccs[-1] if nccs else None, "iterations": iterations}


def diffdrr_method(config: DiffDRRConfig = DiffDRRConfig(), device: str | torch.device = "cpu"):
    """The baseline as an evaluation method (``case -> (matrix_ras, time_s, extra)``)."""
    return DiffDRRRegistration(config, device)


# --------------------------------------------------------------------------- X-ray renderer
def diffdrr_render_factory(device: str | torch.device = "cpu", patch_size: int = 64, renderer: str = "siddon"):
    """A :data:`SpineRegistrationLib.render.spine_xray.RenderFactory` rendering with DiffDRR (Siddon by default).

    ``patch_size``: DiffDRR's ``DRR(patch_size=...)``, rays rendered p x p at a time (its
    Siddon holds rays x crossed planes tensors; 64² rays through a 1 mm CT take ~200 MB).
    """

    def factory(mu: Volume, mask: np.ndarray | None):
        # One voxel of (masked, zero) margin: DiffDRR cannot trace a volume one voxel thick
        # (a vertebra cut by the CT's last slice).
        roi = bounding_box_ijk(mask, 1) if mask is not None else (np.zeros(3, int), np.array(mu.shape_ijk))
        volume = _masked_crop(mu, mask, roi)
        corners = _box_corners_ras(mu, roi)

        def render(matrix_ras: np.ndarray, geometry: XrayGeometry) -> np.ndarray:
            matrix = np.asarray(matrix_ras, dtype=np.float64)
            world = corners @ matrix[:3, :3].T + matrix[:3, 3]
            depth = np.zeros((geometry.rows, geometry.columns), np.float32)
            window = _window(geometry, world, margin_px=2, clip=True)
            if window[2] == 0 or window[3] == 0:
                return depth
            kwargs = {"patch_size": patch_size} if window[2] * window[3] > patch_size**2 else {}
            peer = DiffDRRPeer(volume, geometry.cropped(*window), renderer=renderer, device=device, **kwargs)
            c0, r0, cols, rows = window
            depth[r0 : r0 + rows, c0 : c0 + cols] = peer.render(matrix)
            return depth

        return render

    return factory
