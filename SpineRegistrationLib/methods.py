"""The registration methods, by name: the one list the CLI, the pipeline, the evaluation and the
Slicer module offer. No heavy import here (``spinereg --help`` reads it).

- ``intensity``: DRR similarity with a global search and gradient refinement
  (:func:`SpineRegistrationLib.rigid.register_vertebra`);
- ``learned``: the pose network's answer alone (:mod:`SpineRegistrationLib.learned`);
- ``auto``: the network's rotation, then the intensity registration's translation grid and
  refinement, the full intensity search when the result is in doubt; ``intensity`` when no
  model is shipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

METHODS = ("auto", "learned", "intensity")
#: Baselines the evaluation scores beside :data:`METHODS`: ``cmaes`` is CMA-ES alone at every
#: pyramid level with the same similarity (the gradient-free baseline).
BASELINES = ("cmaes",)
#: Everything ``spinereg evaluate --methods`` takes.
EVALUATION_METHODS = METHODS + BASELINES
#: Devices offered to users (``auto``: CUDA when available).
DEVICES = ("auto", "cpu", "cuda")


def resolve_method(method: str, model: str | os.PathLike | None = None) -> tuple[str, str | None, Path | None]:
    """The method that will run for ``method``, a one-line note when it differs, and the model file.

    ``learned`` without a model (``model`` or a shipped one) raises InputError; ``auto`` then
    falls back to ``intensity`` with a note.
    """
    from .learned.models import shipped_model

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "intensity":
        return "intensity", None, None
    model = Path(model) if model is not None else shipped_model()
    if model is None:
        if method == "learned":
            raise InputError(
                "method 'learned' needs a trained model (Resources/Models/*.pt) and none is shipped with this "
                "installation; use method 'intensity' (or 'auto', which falls back to it)"
            )
        return "intensity", "no learned model is shipped (Resources/Models/*.pt): using intensity-based registration", None
    return method, None, model


def resolve_device(name: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` -> a torch device name; InputError otherwise
    (and for CUDA on a machine without a GPU)."""
    import torch

    if str(name).strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {name!r}; expected cpu, cuda or auto") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; expected cpu, cuda or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} asked for, but no CUDA GPU is available")
    return str(device)
