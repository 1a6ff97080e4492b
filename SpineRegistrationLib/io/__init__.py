"""File I/O at the library boundary: everything read comes out in RAS, everything
written goes out in each format's own convention (LPS for ITK/DICOM/NIfTI/NRRD).

- ``images``      3D volumes (NIfTI, NRRD, MHA, DICOM series) <-> Volume
- ``labelmaps``   vertebra labelmaps (plain or Slicer .seg.nrrd) <-> Labelmap; masks, centroids, boxes
- ``segnrrd``     the Slicer .seg.nrrd codec (segments, layers)
- ``centroids``   VerSe ctd JSON centroids <-> {name: RAS mm}
- ``xray``        2D X-ray images <-> XrayImage
- ``transforms``  ITK transform files and JSON init matrices <-> matrix_ras
"""

from .centroids import axis_codes, read_centroids, write_centroids
from .images import read_volume, write_volume
from .labelmaps import Labelmap, centroid_ras, centroids_ras, read_labelmap, vertebra_mask, write_labelmap
from .segnrrd import write_seg_nrrd
from ..core.volume import bounding_box_ijk
from .transforms import check_rigid, read_matrix_json, read_rigid_matrix, read_transform, write_transform
from .xray import XrayImage, check_xray_extension, invert_intensities, read_xray, write_xray

__all__ = [
    "Labelmap",
    "XrayImage",
    "axis_codes",
    "bounding_box_ijk",
    "centroid_ras",
    "centroids_ras",
    "check_rigid",
    "check_xray_extension",
    "invert_intensities",
    "read_centroids",
    "read_labelmap",
    "read_matrix_json",
    "read_rigid_matrix",
    "read_transform",
    "read_volume",
    "read_xray",
    "vertebra_mask",
    "write_centroids",
    "write_labelmap",
    "write_seg_nrrd",
    "write_transform",
    "write_volume",
    "write_xray",
]
