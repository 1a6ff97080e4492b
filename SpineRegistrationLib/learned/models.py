"""Where the shipped pose-network model file is: the package data, or the source checkout.

The model trained by the project ships in the repository's ``Resources/Models`` and is
installed as the package data ``SpineRegistrationLib/learned/weights/*.pt`` (pyproject maps
the one folder onto the other), so an editable checkout and a wheel find the same file.
No torch import here: the CLI asks for the shipped model before anything heavy loads.
"""

from __future__ import annotations

from pathlib import Path

#: The shipped model's folder when installed from a wheel: the package data beside this file.
INSTALLED_MODEL_DIR = Path(__file__).resolve().parent / "weights"
#: The shipped model's folder in a source checkout (the repository's Resources/Models).
CHECKOUT_MODEL_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"


def model_dirs() -> list[Path]:
    """Folders searched for the shipped model, first match wins: the installed package data,
    then the source checkout's Resources/Models."""
    return [folder for folder in (INSTALLED_MODEL_DIR, CHECKOUT_MODEL_DIR) if folder.is_dir()]


def shipped_model() -> Path | None:
    """The shipped pose-network weights (the first ``*.pt`` of :func:`model_dirs`), or None."""
    for folder in model_dirs():
        # deform_*.pt are the deformable network's (SpineRegistrationLib.deform.network), not pose networks.
        models = sorted(p for p in folder.glob("*.pt") if not p.name.startswith("deform_"))
        if models:
            return models[0]
    return None
