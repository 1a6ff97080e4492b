"""SpineRegistrationLib: per-vertebra 2D/3D registration of a spine CT to AP/LAT X-rays.

Pure Python (torch, numpy, SimpleITK); never imports slicer, qt or vtk. One folder per
concept, imports pointing down this list (README, Layout):

- ``errors``      the one user-facing exception
- ``core``        frames (RAS <-> LPS), pose, volume, labels, labelmap, pose-error metrics
- ``geometry``    the X-ray detector and C-arm views
- ``io``          files: images, labelmaps, .seg.nrrd, centroids, X-rays, transforms, geometry
                  JSON, DICOM geometry, the result folder, atomic writes
- ``render``      the differentiable DRR renderer and the one X-ray simulator
- ``similarity``  image similarity of a DRR and an X-ray
- ``rigid``       per-vertebra rigid registration
- ``synthetic``   the phantom, acquisition distributions, simulated cases and sample data
- ``learned``     the pose network: data, training, inference, the shipped model
- ``methods``     the registration methods and devices by name
- ``pipeline``    the ``register`` job: inputs checked, every vertebra registered, result folder
- ``evaluation``  cases, methods, scoring and report of ``spinereg evaluate``
- ``cli``         the ``spinereg`` command
"""

__version__ = "0.1.0"
