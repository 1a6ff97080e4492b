"""Shared setup of the module-logic tests: the module folder on sys.path, a small phantom.

The module's helper package (SpineRegistrationModuleLib) is imported by name, as Slicer
imports it from the module folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[2] / "SpineRegistration"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory):
    """The sample data set (ct.nii.gz, seg.nii.gz, AP/LAT png+json, truth.json) of a small
    phantom: L1-L3 at 2 mm voxels, 256 x 256 detectors of 2 mm pixels."""
    from SpineRegistrationLib.synthetic.phantom import PhantomConfig
    from SpineRegistrationLib.synthetic.sample_data import SampleConfig, make_sample, write_sample

    config = SampleConfig(
        phantom=PhantomConfig(spacing_mm=2.0, vertebrae=("L1", "L2", "L3")),
        detector_size=(256, 256),
        pixel_spacing_mm=2.0,
    )
    folder = tmp_path_factory.mktemp("phantom")
    write_sample(folder, *make_sample(config))
    return folder
