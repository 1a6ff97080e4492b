"""SpineRegistrationLib: per-vertebra 2D/3D registration of a spine CT to AP/LAT X-rays.

Pure Python (torch, numpy, SimpleITK); never imports slicer or qt. One concept per module:

- ``frames``      RAS <-> LPS at the I/O boundary, homogeneous-matrix helpers
- ``pose``        6 pose parameters <-> 4x4 matrices about a centre (numpy and batched torch)
- ``volume``      the in-memory 3D image (array + IJK->RAS matrix)
- ``geometry``    X-ray (C-arm) geometry: JSON sidecar, presets, DICOM tags, projection
- ``labels``      vertebra names and label schemes (VerSe, TotalSegmentator)
- ``io``          images, labelmaps, .seg.nrrd, centroids, X-rays, ITK transform files
- ``drr``         the differentiable DRR renderer
- ``phantom``     the procedural spine phantom and its simulated X-rays
- ``pipeline``    the whole ``register`` job: inputs checked, every vertebra registered, result folder
- ``cli``         the ``spinereg`` command
"""

__version__ = "0.1.0"
