"""DiffDRR (eigenvivek/DiffDRR 0.6.1) driven with SpineRegistration's geometry, pose and units.

The peer renders the same quantity as :class:`SpineRegistrationLib.drr.DRRRenderer`: the
optical depth ``∫ mu dl`` of a linear-attenuation volume (mu in 1/mm, length in mm) along
the ray from the source to each pixel centre, for a CT placed in the world by ``matrix_ras``
(CT RAS -> world RAS). Install DiffDRR with ``Testing/benchmarks/install_peers.sh`` (never
plain ``pip install diffdrr``: it pulls torchvision and a CUDA torch). Only the modules
``diffdrr.drr``, ``.detector``, ``.renderers``, ``.pose`` are imported here.

How our conventions map onto DiffDRR's (file:line of the installed diffdrr 0.6.1):

Volume.
    ``DRR.__init__`` (drr.py:71-85) keeps ``subject.volume.affine`` as the voxel -> world
    matrix and ``subject.density.data.squeeze()`` as the voxel values, indexed ``[i, j, k]``
    (torchio's (C, I, J, K) order); ``DRR.render`` (drr.py:201-205) maps rays into voxel
    indices with the inverse affine. Voxel centres sit at integer indices
    (``voxel_shift=0.5``: planes at index - 0.5, renderers.py:97-99; grid_sample
    normalisation, renderers.py:152; (I, J, K) -> (K, J, I) permute, renderers.py:160).
    The affine is used as numbers, never re-oriented, so we build the ``torchio.Subject``
    ourselves with our array transposed to (1, I, J, K) and our RAS ``ijk_to_ras`` as the
    affine: DiffDRR's "world" is then our CT RAS frame (no LPS anywhere). We skip
    ``diffdrr.data.read``: it rescales HU to a [0, 1] "density" (``transform_hu_to_density``,
    data.py:214-227) and re-centres the volume at the origin (``canonicalize``,
    data.py:187-211); both would change what is integrated and where. We pass
    ``orientation=None`` and ``reorient = I`` (data.py:110-120).

Detector.
    ``Detector._initialize_carm`` (detector.py:98-138) puts the source at the camera origin
    and pixel (row r, column c) at camera ``(delx * s_c + x0, dely * t_r + y0, sdd)``
    (calibration matrix, detector.py:50-60 and :148) with ``t_r = (H-1)/2 - r`` and
    ``s_c = c - (W-1)/2`` (``reverse_x_axis=False``) or ``(W-1)/2 - c`` (``True``), for
    even and odd sizes alike. Output rows/columns are (height, width) = (rows, columns)
    (drr.py:111-116). So with camera axes ``e_x = ±u``, ``e_y = -v``, ``e_z = e_x × e_y``
    (``reverse_x_axis`` picks the sign that makes ``e_z`` point from the source towards
    the detector, keeping the camera frame a proper rotation): ``delx = du``, ``dely = dv``,
    ``sdd`` = the perpendicular source-detector distance, and ``x0``, ``y0`` place pixel
    (0, 0) on ``detector_origin`` (principal point anywhere, see :func:`detector_parameters`).
    u and v must be orthonormal: DiffDRR's detector is a rectangular grid.

Pose.
    ``RigidTransform.compose(T)`` is ``T @ self`` (pose.py:53-55), and ``Detector.forward``
    (detector.py:145-154) applies ``reorient.compose(extrinsic)`` = ``extrinsic`` to the
    camera points: the pose passed to ``DRR.forward`` is camera -> DiffDRR world. Our CT
    moves to the world by M; equivalently the camera ``C`` (camera -> world RAS, columns
    e_x, e_y, e_z and the source) is moved by M^-1 in the CT frame: ``extrinsic = M^-1 C``.

Units.
    ``DRR.render`` starts each pixel at the ray length ``|target - source|`` in mm
    (drr.py:201); Siddon multiplies it by the voxel value and by the parametric length of
    each voxel crossing (renderers.py:57-71), i.e. ``sum mu * length_mm``; Trilinear by
    the value and the parametric step (renderers.py:222-236). With a mu volume in 1/mm
    both return ``∫ mu dl`` like ours. Siddon's default ``mode="nearest"`` integrates the
    piecewise-constant (voxel) volume; ours integrates the piecewise-linear interpolant,
    so the two differ at sharp edges by a fraction of a voxel, and agree on smooth data;
    ``mode="bilinear"`` (a renderer kwarg) makes Siddon sample the same interpolant.

Not used: ``Siddon(filter_intersections_outside_volume=True)`` raises a TypeError in
0.6.1 (renderers.py:118 calls ``_get_alpha_minmax`` with 4 of its 5 arguments, :124).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from SpineRegistrationLib.geometry import XrayGeometry
from SpineRegistrationLib.core.pose import invert_rigid
from SpineRegistrationLib.core.volume import Volume

RENDERERS = ("siddon", "trilinear")


def detector_parameters(geometry: XrayGeometry, tol: float = 1e-6) -> dict:
    """Our detector -> DiffDRR's intrinsics and the camera -> world RAS matrix.

    Returns a dict with ``sdd``, ``height``, ``width``, ``delx``, ``dely``, ``x0``, ``y0``,
    ``reverse_x_axis`` (keyword arguments of ``diffdrr.drr.DRR``) and ``camera_to_world``
    (4, 4) float64 (camera axes e_x, e_y, e_z as columns, the source as translation).
    """
    u = np.asarray(geometry.detector_u, dtype=np.float64)
    v = np.asarray(geometry.detector_v, dtype=np.float64)
    if abs(np.linalg.norm(u) - 1) > tol or abs(np.linalg.norm(v) - 1) > tol or abs(u @ v) > tol:
        raise ValueError(
            f"DiffDRR needs orthonormal detector axes, got detector_u={u.tolist()}, detector_v={v.tolist()}"
        )
    source = np.asarray(geometry.source, dtype=np.float64)
    origin = np.asarray(geometry.detector_origin, dtype=np.float64)
    columns, rows = geometry.size
    du, dv = geometry.pixel_spacing
    e_y = -v
    # reverse_x_axis=False: e_x = u, e_z = u x (-v) = -(u x v); flip e_x when that points back to the source.
    reverse_x_axis = bool((origin - source) @ -np.cross(u, v) < 0)
    e_x = -u if reverse_x_axis else u
    e_z = np.cross(e_x, e_y)
    offset = origin - source  # to pixel (0, 0), world mm
    sdd = float(offset @ e_z)
    if sdd <= 0:
        raise ValueError(f"the source lies in the detector plane (distance {sdd} mm)")
    # Pixel (0, 0) sits at camera x = delx * s_0 + x0 with s_0 = -(W-1)/2 (or +(W-1)/2 reversed),
    # y = dely * (H-1)/2 + y0.
    s_0 = (columns - 1) / 2 if reverse_x_axis else -(columns - 1) / 2
    x0 = float(offset @ e_x - du * s_0)
    y0 = float(offset @ e_y - dv * (rows - 1) / 2)
    camera_to_world = np.eye(4)
    camera_to_world[:3, :3] = np.stack([e_x, e_y, e_z], axis=1)
    camera_to_world[:3, 3] = source
    return dict(
        sdd=sdd,
        height=int(rows),
        width=int(columns),
        delx=float(du),
        dely=float(dv),
        x0=x0,
        y0=y0,
        reverse_x_axis=reverse_x_axis,
        camera_to_world=camera_to_world,
    )


def _crop(mu: Volume, mask: np.ndarray | None, roi_ijk) -> tuple[np.ndarray, np.ndarray]:
    """Zero outside ``mask``, crop to ``roi_ijk`` (or the mask's box): (K, J, I) array, its ijk_to_ras.

    Same rules as :class:`SpineRegistrationLib.drr.DRRRenderer` (written out again here so
    that a cropping error in ours is not shared by the peer): ``roi_ijk`` is
    ((i0, j0, k0), (i1, j1, k1)) with the stop exclusive.
    """
    array = np.asarray(mu.array, dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != array.shape:
            raise ValueError(f"mask shape {mask.shape} does not match volume shape {array.shape}")
        if not mask.any():
            raise ValueError("mask is empty: nothing to render")
        array = np.where(mask, array, 0.0).astype(np.float32)
        if roi_ijk is None:
            k, j, i = np.nonzero(mask)
            roi_ijk = ((i.min(), j.min(), k.min()), (i.max() + 1, j.max() + 1, k.max() + 1))
    start = np.zeros(3, dtype=int)
    if roi_ijk is not None:
        start = np.clip(np.asarray(roi_ijk[0], dtype=int), 0, None)
        stop = np.minimum(np.asarray(roi_ijk[1], dtype=int), np.array(mu.shape_ijk))
        if np.any(stop <= start):
            raise ValueError(f"ROI {roi_ijk} does not overlap the volume of size {mu.shape_ijk}")
        array = array[start[2] : stop[2], start[1] : stop[1], start[0] : stop[0]]
    shift = np.eye(4)
    shift[:3, 3] = start
    return np.ascontiguousarray(array), mu.ijk_to_ras @ shift


class DiffDRRPeer:
    """DiffDRR rendering our mu volume (1/mm) for one of our X-ray geometries.

    Args:
        mu_volume: linear attenuation, 1/mm (see ``SpineRegistrationLib.drr.hu_to_mu``).
        geometry: the view (world RAS mm).
        renderer: "siddon" (exact ray-voxel intersections, nearest voxel value) or
            "trilinear" (uniform samples, trilinear interpolation).
        mask: optional (K, J, I) bool array; voxels outside are zeroed, and the volume is
            cropped to the mask's bounding box unless ``roi_ijk`` is given.
        roi_ijk: optional ((i0, j0, k0), (i1, j1, k1)) crop, stop exclusive, like ours.
        device: torch device of the renderer.
        renderer_kwargs: passed to DiffDRR's renderer; Trilinear's ``n_points`` defaults
            to two samples per voxel along the longest ray through the volume's box.
    """

    def __init__(
        self,
        mu_volume: Volume,
        geometry: XrayGeometry,
        renderer: str = "siddon",
        mask: np.ndarray | None = None,
        roi_ijk=None,
        device: str | torch.device = "cpu",
        **renderer_kwargs,
    ) -> None:
        # Imported here so that importing this module never needs DiffDRR.
        from diffdrr.drr import DRR
        from torchio import ScalarImage, Subject

        if renderer not in RENDERERS:
            raise ValueError(f"renderer must be one of {RENDERERS}, got {renderer!r}")
        array_kji, ijk_to_ras = _crop(mu_volume, mask, roi_ijk)
        tensor = torch.from_numpy(array_kji.transpose(2, 1, 0).copy())[None]  # (1, I, J, K)
        image = ScalarImage(tensor=tensor, affine=ijk_to_ras)
        subject = Subject(
            volume=image, density=image, mask=None, reorient=torch.eye(4), orientation=None, fiducials=None
        )
        params = detector_parameters(geometry)
        self.camera_to_world = torch.as_tensor(params.pop("camera_to_world"), dtype=torch.float32, device=device)
        self.renderer_name = renderer
        self.forward_kwargs = {}
        if renderer == "trilinear" and "n_points" not in renderer_kwargs:
            spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
            diagonal_mm = float(np.linalg.norm(np.array(array_kji.shape[::-1]) * spacing))
            self.forward_kwargs["n_points"] = math.ceil(2 * diagonal_mm / spacing.min()) + 1
        elif "n_points" in renderer_kwargs:
            self.forward_kwargs["n_points"] = renderer_kwargs.pop("n_points")
        self.drr = DRR(subject, renderer=renderer, **params, **renderer_kwargs).to(device)
        self.geometry = geometry
        self.device = torch.device(device)

    def extrinsic(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) our pose (CT RAS -> world) -> (B, 4, 4) DiffDRR camera -> CT RAS: M^-1 C."""
        return invert_rigid(pose) @ self.camera_to_world.to(pose.dtype)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        """(B, 4, 4) poses -> (B, rows, columns) optical depth; differentiable w.r.t. ``pose``."""
        from diffdrr.pose import RigidTransform

        if pose.ndim != 3 or pose.shape[-2:] != (4, 4):
            raise ValueError(f"pose must have shape (B, 4, 4), got {tuple(pose.shape)}")
        image = self.drr(RigidTransform(self.extrinsic(pose.to(torch.float32))), **self.forward_kwargs)
        return image[:, 0]

    __call__ = forward

    def render(self, matrix_ras: np.ndarray | None = None) -> np.ndarray:
        """One DRR, (rows, columns) float32, for the CT moved by ``matrix_ras`` (identity if None)."""
        pose = np.eye(4) if matrix_ras is None else np.asarray(matrix_ras, dtype=np.float64)
        with torch.no_grad():
            image = self.forward(torch.as_tensor(pose, dtype=torch.float32, device=self.device)[None])
        return image[0].cpu().numpy()
