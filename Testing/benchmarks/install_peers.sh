#!/usr/bin/env bash
# Install the peer renderer DiffDRR (eigenvivek/DiffDRR) into the ACTIVE virtual environment,
# for the peer cross-check test (Testing/unit/test_drr_peer.py, `pytest -m peer`) and the
# benchmark (Testing/benchmarks/bench_drr.py), and itk-elastix for Testing/benchmarks/bench_deform_ct.py.
#
# Why not `pip install diffdrr`: DiffDRR's metadata requires torchvision (used only by
# diffdrr.metrics) plus timm, pyvista[all], seaborn, imageio (registration/visualisation).
# torchvision would replace our torch CPU wheel with a multi-GB CUDA build. The modules we
# use -- diffdrr.drr, .detector, .renderers, .pose, .data -- import only torch, numpy,
# fastcore, torchio (-> nibabel, scipy, SimpleITK), einops and pandas, so we install DiffDRR
# with --no-deps and exactly those by name, with torch pinned by a constraints file to the
# build already installed. Do not import diffdrr.metrics (torchvision), diffdrr.registration
# (timm), diffdrr.utils (kornia) or diffdrr.visualization (pyvista): they are not installed.
#
# Usage:  . .venv/bin/activate && bash Testing/benchmarks/install_peers.sh
set -euo pipefail

if [[ -z "${VIRTUAL_ENV:-}" ]]; then
    echo "install_peers.sh: activate the project's virtual environment first (. .venv/bin/activate)" >&2
    exit 2
fi

TORCH_BEFORE="$(python -c 'import torch; print(torch.__version__)')"
echo "torch before: ${TORCH_BEFORE}"

# Pin torch (and forbid torchvision) for every dependency resolved below.
CONSTRAINTS="$(mktemp)"
trap 'rm -f "${CONSTRAINTS}"' EXIT
printf 'torch==%s\ntorchvision<0\n' "${TORCH_BEFORE}" > "${CONSTRAINTS}"

python -m pip install --no-deps "diffdrr==0.6.1"
# pip then reports diffdrr's unmet requirements (torchvision, timm, kornia, roma, pyvista,
# seaborn, imageio) as "dependency conflicts": expected, those modules are never imported.
python -m pip install -c "${CONSTRAINTS}" fastcore torchio einops pandas scipy nibabel
# The deformable CT-to-CT peer (Testing/benchmarks/bench_deform_ct.py): elastix's rigid + B-spline.
python -m pip install -c "${CONSTRAINTS}" itk-elastix

TORCH_AFTER="$(python -c 'import torch; print(torch.__version__)')"
echo "torch after:  ${TORCH_AFTER}"
if [[ "${TORCH_AFTER}" != "${TORCH_BEFORE}" ]]; then
    echo "install_peers.sh: torch changed from ${TORCH_BEFORE} to ${TORCH_AFTER}" >&2
    exit 1
fi
if python -c 'import torchvision' 2>/dev/null; then
    echo "install_peers.sh: torchvision is installed; it must not be (it drags a CUDA torch)" >&2
    exit 1
fi
python -c 'from diffdrr.drr import DRR; from diffdrr.data import read; import diffdrr; print("diffdrr", diffdrr.__version__, "OK")'
