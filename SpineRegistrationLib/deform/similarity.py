"""3D image similarity of two CTs on one grid, as losses (lower is better), differentiable.

Images are (B, 1, K, J, I) tensors, intensities in [0, 1] (:func:`.grid.hu_to_unit`);
``weight`` is an optional (B, 1, K, J, I) tensor (a mask, or where the moving image was
sampled inside its volume) over which the loss is averaged. The loss pools the whole batch, or,
for ``mse`` and ``ncc`` with ``per_sample``, is one loss per batch element, (B,).

- ``mse``:  mean squared difference.
- ``ncc``:  1 - global normalised cross-correlation (gain and offset invariant), in [0, 2].
- ``lncc``: MONAI's LocalNormalizedCrossCorrelationLoss (-mean local NCC, 9-voxel windows), in [-1, 0].
- ``mi``:   MONAI's GlobalMutualInformationLoss (-mutual information, Parzen histogram), for
  images whose intensities do not map one to one (contrast agent, another scanner).
- ``mind``: mean squared difference of MIND-SSC descriptors (Heinrich et al., MICCAI 2013),
  a modality-independent local structure measure. Written here because neither MONAI nor
  torch ships MIND; it follows the authors' reference (six-neighbourhood, 12 self-similarity
  pairs, patch distances by box filter, normalised by their mean variance).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIMILARITIES = ("mse", "ncc", "lncc", "mi", "mind")
#: Those with one loss per batch element (``per_sample``); the others pool the batch.
PER_SAMPLE = ("mse", "ncc")
_EPS = 1e-8


def _pooled_dims(values: torch.Tensor, per_sample: bool) -> tuple[int, ...]:
    """The dimensions a loss sums over: all, or all but the batch's."""
    return tuple(range(1 if per_sample else 0, values.dim()))


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None, per_sample: bool = False) -> torch.Tensor:
    dims = _pooled_dims(values, per_sample)
    if weight is None:
        return values.mean(dims)
    weight = weight.expand_as(values)
    return (values * weight).sum(dims) / weight.sum(dims).clamp(min=_EPS)


def mse(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None = None,
        per_sample: bool = False) -> torch.Tensor:
    return _weighted_mean((fixed - warped) ** 2, weight, per_sample)


def ncc(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None = None,
        per_sample: bool = False) -> torch.Tensor:
    """1 - global NCC (written out: three weighted moments, not worth a dependency)."""
    w = torch.ones_like(fixed) if weight is None else weight.expand_as(fixed)
    dims = _pooled_dims(fixed, per_sample)
    total = w.sum(dims, keepdim=True).clamp(min=_EPS)
    a = fixed - (w * fixed).sum(dims, keepdim=True) / total
    b = warped - (w * warped).sum(dims, keepdim=True) / total
    return 1.0 - (w * a * b).sum(dims) / torch.sqrt((w * a * a).sum(dims) * (w * b * b).sum(dims) + _EPS)


def lncc(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None = None,
         kernel_size: int = 9) -> torch.Tensor:
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    local = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=kernel_size, reduction="none")
    return _weighted_mean(local(warped, fixed), weight)


def mi(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    from monai.losses import GlobalMutualInformationLoss

    loss = GlobalMutualInformationLoss(num_bins=32)
    if weight is None:
        return loss(warped, fixed)
    keep = weight.expand_as(fixed) > 0.5  # MONAI's histogram takes no weights: keep the voxels inside
    return loss(warped[keep].view(1, 1, -1), fixed[keep].view(1, 1, -1))


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """(B, 1, K, J, I) -> (B, 12, K, J, I) MIND-SSC descriptors in (0, 1]."""
    offsets = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 0, -1), (0, -1, 0), (-1, 0, 0)]
    pad = dilation
    padded = F.pad(image, (pad,) * 6, mode="replicate")
    k, j, i = image.shape[2:]

    def shifted(offset):
        dk, dj, di = (pad + dilation * o for o in offset)
        return padded[:, :, dk:dk + k, dj:dj + j, di:di + i]

    # The 12 pairs of six-neighbours that are sqrt(2) apart (not opposite, not equal).
    pairs = [(a, b) for a in range(6) for b in range(a + 1, 6) if b - a != 3]
    shifts = [shifted(o) for o in offsets]
    distances = torch.cat([(shifts[a] - shifts[b]) ** 2 for a, b in pairs], 1)
    size = 2 * radius + 1
    distances = F.avg_pool3d(F.pad(distances, (radius,) * 6, mode="replicate"), size, stride=1)
    distances = distances - distances.min(1, keepdim=True)[0]
    variance = distances.mean(1, keepdim=True)
    mean_variance = variance.mean()
    variance = variance.clamp(mean_variance * 1e-3 + _EPS, mean_variance * 1e3 + _EPS)
    return torch.exp(-distances / variance)


def mind(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return _weighted_mean(((mind_ssc(fixed) - mind_ssc(warped)) ** 2).mean(1, keepdim=True), weight)


def similarity_loss(name: str, fixed: torch.Tensor, warped: torch.Tensor,
                    weight: torch.Tensor | None = None, per_sample: bool = False) -> torch.Tensor:
    """The loss ``name`` (one of :data:`SIMILARITIES`) of the warped moving image against the fixed
    one; ``per_sample`` (:data:`PER_SAMPLE`): one per batch element."""
    functions = {"mse": mse, "ncc": ncc, "lncc": lncc, "mi": mi, "mind": mind}
    if name not in functions:
        raise ValueError(f"unknown similarity {name!r}; choose one of {', '.join(SIMILARITIES)}")
    if per_sample:
        if name not in PER_SAMPLE:
            raise ValueError(f"the {name} loss pools the batch: no per-sample losses")
        return functions[name](fixed, warped, weight, per_sample=True)
    return functions[name](fixed, warped, weight)
