"""Where the shipped model files are: the package data, or the Resources/Models beside the package.

The models trained by the project ship in the repository's ``Resources/Models``. A wheel
installs them as the package data ``SpineRegistrationLib/learned/weights/*.pt`` (pyproject
maps the one folder onto the other); the Slicer extension (SpineRegistration/CMakeLists.txt)
and a source checkout keep them in ``Resources/Models`` beside the ``SpineRegistrationLib``
folder. All three find the same files.
No torch import here: the CLI asks for the shipped model before anything heavy loads.
"""

from __future__ import annotations

from pathlib import Path

#: The shipped model's folder when installed from a wheel: the package data beside this file.
INSTALLED_MODEL_DIR = Path(__file__).resolve().parent / "weights"
#: The shipped model's folder beside the package: a source checkout's or the Slicer extension's
#: module folder's Resources/Models.
BESIDE_MODEL_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"


def model_dirs() -> list[Path]:
    """Folders searched for the shipped model, first match wins: the installed package data,
    then the Resources/Models beside the package."""
    return [folder for folder in (INSTALLED_MODEL_DIR, BESIDE_MODEL_DIR) if folder.is_dir()]


#: Name prefixes of the shipped files that are not pose networks (the deformable and rigid
#: CT-to-CT networks of SpineRegistrationLib.deform, the X-ray vertebra detector).
OTHER_MODEL_PREFIXES = ("deform_", "rigid3d_", "vertebra_detector_")


def shipped_file(name: str) -> Path | None:
    """The shipped model file called ``name`` in the first of :func:`model_dirs` that has it, or None."""
    return next((folder / name for folder in model_dirs() if (folder / name).is_file()), None)


def shipped_model() -> Path | None:
    """The shipped pose-network weights (the first other ``*.pt`` of :func:`model_dirs`), or None."""
    for folder in model_dirs():
        models = sorted(p for p in folder.glob("*.pt") if not p.name.startswith(OTHER_MODEL_PREFIXES))
        if models:
            return models[0]
    return None
