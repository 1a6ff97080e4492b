"""The one X-ray simulator of the project: a CT whose vertebrae move rigidly, as a C-arm sees it.

The intraoperative patient is the preoperative CT with some vertebrae moved rigidly, each
by its own pose (CT RAS -> world), and the rest of the body moved by a background pose.
Attenuation is linear in mu, so the optical depth is exactly

    DRR(background at its pose) + sum over moving vertebrae of DRR(vertebra excess at its pose)

where the background is the CT with each moving vertebra replaced by soft tissue
(:data:`SOFT_TISSUE_HU`) and a vertebra's excess is its attenuation *above* that tissue.
A moved vertebra displaces the soft tissue the background keeps at its new place, so
tissue is never counted twice (to first order: what it displaces is taken for soft
tissue). No volume is resampled, and the truth is exact by construction.

Used by the sample data and the demo, ``spinereg phantom``, ``spinereg evaluate``, the
tests and the training samples. The renderer is a :data:`RenderFactory`, ours by default
(:func:`ours_render_factory`); the benchmarks pass DiffDRR's to make X-rays with an
independent renderer. Radiograph realism (noise, scatter, gamma, ...) is then
:func:`.xray_sim.simulate_xray` on the optical depth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..core.volume import Volume
from ..geometry import XrayGeometry
from ..core.labelmap import Labelmap, vertebra_mask
from .drr import Detectors, DRRRenderer
from .xray_sim import hu_to_mu_spectral

#: HU of the soft tissue a moving vertebra leaves behind, and displaces where it goes (muscle).
SOFT_TISSUE_HU = 40.0

#: A view's renderer: (matrix_ras (4, 4), geometry) -> (rows, columns) float32 optical depth.
Render = Callable[[np.ndarray, XrayGeometry], np.ndarray]
#: A renderer factory: (mu Volume 1/mm, mask (K, J, I) bool or None) -> :data:`Render` of the
#: masked volume moved by matrix_ras.
RenderFactory = Callable[[Volume, "np.ndarray | None"], Render]


def tissue_split(mu: np.ndarray, masks: Sequence[np.ndarray], tissue_mu: float) -> tuple[np.ndarray, np.ndarray]:
    """(background, excess) float32 arrays of an attenuation array ``mu`` (1/mm) and vertebra ``masks``.

    background: ``mu`` with every mask's voxels set to ``tissue_mu`` (soft tissue where the
    vertebrae were); excess: ``mu - tissue_mu`` (each vertebra's attenuation above tissue:
    render it masked by its own mask). background + masked excess is ``mu`` again.
    """
    mu = np.asarray(mu, dtype=np.float32)
    background = mu.copy()
    for mask in masks:
        background[mask] = tissue_mu
    return background, (mu - np.float32(tissue_mu)).astype(np.float32)


def ours_render_factory(device: str | torch.device = "cpu", downsample: int = 1) -> RenderFactory:
    """:class:`.drr.DRRRenderer` as a :data:`RenderFactory` (``downsample``: voxel blocks averaged)."""

    def factory(mu: Volume, mask: np.ndarray | None) -> Render:
        renderer = DRRRenderer(mu, mask=mask, downsample=downsample).to(device)

        def render(matrix_ras: np.ndarray, geometry: XrayGeometry) -> np.ndarray:
            pose = torch.as_tensor(matrix_ras, dtype=torch.float32, device=device)[None]
            with torch.no_grad():
                depth = renderer(pose, Detectors.from_geometries([geometry], device=device))
            return depth[0, 0].cpu().numpy()

        return render

    return factory


class PosedSpine:
    """A CT (HU) whose ``moving`` vertebrae move rigidly on their own, the rest with the background.

    hu_to_mu: the attenuation model of the simulated beam (default the spectral one,
    deliberately not the registration's :func:`.drr.hu_to_mu`). render_factory: how optical
    depths are rendered (default ours on ``device``). Renderers are built here, once.
    masks: moving vertebra name -> its (K, J, I) bool mask in the CT.
    """

    def __init__(
        self,
        ct_hu: Volume,
        labelmap: Labelmap,
        moving: Sequence[str],
        hu_to_mu: Callable[[np.ndarray], np.ndarray] = hu_to_mu_spectral,
        render_factory: RenderFactory | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        factory = render_factory if render_factory is not None else ours_render_factory(device)
        self.moving = list(moving)
        self.masks = {name: vertebra_mask(labelmap, name) for name in self.moving}
        background, excess = tissue_split(hu_to_mu(ct_hu.array), list(self.masks.values()),
                                          float(hu_to_mu(np.float32(SOFT_TISSUE_HU))))
        self._background = factory(ct_hu.with_array(background), None)
        del background
        excess = ct_hu.with_array(excess)
        self._vertebrae = {name: factory(excess, self.masks[name]) for name in self.moving}

    def background_depth(self, matrix_ras: np.ndarray, geometry: XrayGeometry) -> np.ndarray:
        """(rows, columns) optical depth of everything but the moving vertebrae, at ``matrix_ras``."""
        return self._background(matrix_ras, geometry)

    def vertebra_depth(self, name: str, matrix_ras: np.ndarray, geometry: XrayGeometry) -> np.ndarray:
        """(rows, columns) optical depth a moving vertebra adds above soft tissue, at ``matrix_ras``."""
        return self._vertebrae[name](matrix_ras, geometry)

    def optical_depth(self, geometry: XrayGeometry, poses: dict[str, np.ndarray],
                      background_pose: np.ndarray | None = None) -> np.ndarray:
        """(rows, columns) float32 optical depth of the posed spine in one view.

        poses: moving vertebra name -> (4, 4) matrix_ras, one for each of ``moving``.
        background_pose: (4, 4) matrix_ras of the rest of the body (default identity).
        """
        missing = [name for name in self.moving if name not in poses]
        if missing:
            raise ValueError(f"no pose for the moving vertebrae {', '.join(missing)}")
        depth = self.background_depth(np.eye(4) if background_pose is None else background_pose, geometry)
        for name in self.moving:
            depth = depth + self.vertebra_depth(name, poses[name], geometry)
        return np.asarray(depth, dtype=np.float32)
