"""The SpineRegistration module's helper package: MRML nodes <-> SpineRegistrationLib.

Everything here takes a ``vtkMRMLScene`` explicitly and imports only ``slicer`` (MRML
classes and the ``slicer.util`` array helpers), ``vtk``, ``numpy`` and
SpineRegistrationLib: no ``slicer.app``, no Qt, no ScriptedLoadableModule. So it runs in
the Slicer application on ``slicer.mrmlScene`` and headless in tests on a
``slicer.vtkMRMLScene()`` of the ``slicer-core`` package. It is a package, not loose files
beside SpineRegistration.py, because Slicer's scripted-module factory takes every ``*.py``
at the top of a module folder for a module of its own.

Modules (each imports only those above it):

- :mod:`.process`       the background ``spinereg`` process and its progress lines (standard library only)
- :mod:`.nodes`         matrices, node tagging, :class:`SceneChange`, volume and segmentation nodes
- :mod:`.xrays`         X-ray nodes on their detector planes, geometry, windowing, sources
- :mod:`.rois`          vertebra ROI boxes
- :mod:`.results`       a result folder read and put into the scene; reset
- :mod:`.registration`  inputs checked by the library's validator, written for the CLI, run
- :mod:`.views`         slice-view layout, DRR opacity, visibility
- :mod:`.boxes`         vertebra boxes on the X-rays (markups planes): accepted state, JSON/COCO
                        export and import, projected from the CT, detected (``spinereg detect``)
- :mod:`.deformation`   the Deform step: ``spinereg deform`` from the scene's result and X-rays, or from
                        the CT to a second CT; its folder into the scene
- :mod:`.patient_model` the pose network or the vertebra detector trained on this patient's CT before
                        surgery (``spinereg train``, ``train-detect``), cancelled and resumed

Scene representation (DESIGN.md):

- CT: a scalar volume; segmentation: a segmentation node (one segment per vertebra) or a
  labelmap volume node (VerSe or TotalSegmentator numbering).
- X-ray: a single-slice scalar volume lying on its detector plane (see
  :func:`xray_ijk_to_ras`), so it shows where it was taken in the 3D view; its geometry
  (the ``spinereg-xray-geometry`` JSON) is kept in the node attribute
  ``SpineRegistration.Geometry``; its focal spot is a locked markups point (referenced
  from the X-ray node as ``spineregSource``).
- Per vertebra: a markups ROI box (from the segmentation, aligned with the CT axes,
  editable, read back as a voxel box by :func:`roi_box_ijk`), a linear transform node
  holding the registered pose (``matrixTransformToParent`` = ``matrix_ras``, CT RAS ->
  world) and a surface model of the vertebra placed under that transform (the moved
  segmentation in 3D).
- Per X-ray and vertebra: a box, a markups plane on the X-ray's detector plane named after the
  vertebra, green when accepted, orange when not (:mod:`.boxes`).
- Per view: the DRR of the registered vertebrae as a volume on the X-ray's plane (same
  IJKToRAS as the X-ray) for blending over it in a slice view.
- A results table (vertebra, similarity, verdict, time).
- After Deform: the displacement field as a grid transform node, the warped segmentation
  as a segmentation node (closed surfaces in 3D; the rigid surfaces are then hidden) and,
  per view, the DRR of the warped vertebrae, shown over the X-ray instead of the rigid DRR.

Registration runs out of process: :func:`prepare_registration` checks the inputs and
writes them to a work folder, :class:`RegistrationRun` runs ``spinereg register`` and,
only when it succeeds, :func:`apply_registration_result` changes the scene. Any failure
raises a ``ValueError`` (the library's ``InputError``) with a one-line message, and leaves
the scene as it was: nodes are only added inside :class:`SceneChange` blocks, which remove
whatever they added when something fails.
"""

from SpineRegistrationLib.methods import DEVICES, METHODS

from .nodes import (
    ATTR_GEOMETRY,
    ATTR_GEOMETRY_FILE,
    ATTR_RESULT,
    ATTR_ROLE,
    ATTR_VERTEBRA,
    ATTR_VIEW,
    DEFORMATION_ROLES,
    RESULT_ROLES,
    ROLE_DEFORMATION,
    ROLE_DEFORMED_DRR,
    ROLE_DEFORMED_SEGMENTATION,
    ROLE_DRR,
    ROLE_MODEL,
    ROLE_ROI,
    ROLE_SOURCE,
    ROLE_TABLE,
    ROLE_TRANSFORM,
    ROLE_XRAY,
    SceneChange,
    add_segmentation_node,
    add_volume_node,
    fill_volume_node,
    first_node,
    ijk_to_ras_of,
    load_ct,
    load_segmentation,
    matrix_of,
    nodes_with,
    pose_of,
    region_color,
    remove_node,
    require_untransformed,
    tag_node,
    transform_to_parent_of,
    vertebra_checklist,
    vertebra_labelmap,
    vertebra_names,
    volume_of,
)
from .process import (
    CliProcess,
    ProgressEvent,
    find_python_slicer,
    parse_progress_line,
    python_command,
    wait_or_cancel,
)
from .registration import (
    CheckedInputs,
    RegistrationInputs,
    RegistrationRun,
    available_commands,
    check_inputs,
    prepare_registration,
    register_arguments,
    write_registration_inputs,
    write_xray_inputs,
    xray_arguments,
    xray_inputs,
)
from .boxes import (
    ROLE_BOX,
    accept_all,
    add_box,
    box_nodes,
    box_of,
    box_rows,
    boxes_from_scene,
    boxes_to_scene,
    collect_boxes,
    detect_boxes,
    export_boxes,
    import_boxes,
    is_accepted,
    project_boxes,
    projection_warnings,
    set_accepted,
)
from .results import (
    DRR_COLOR_NAME,
    RegistrationResult,
    apply_registration_result,
    read_registration_result,
    reset_results,
    results_table_rows,
    vertebra_surface,
)
from .deformation import (
    DeformationInputs,
    DeformationResult,
    DeformationRun,
    apply_deformation_result,
    MODE_PAIR,
    MODE_POSES,
    REFINE_SPAN,
    deform_arguments,
    deform_progress,
    deformation_summary,
    read_deform_document,
    read_deformation_result,
    refinement_summary,
    scene_result_vertebrae,
    write_deformation_inputs,
)
from .patient_model import (
    DEFAULT_STEPS,
    DETECTOR,
    POSE,
    PatientModelInputs,
    PatientModelRun,
    TrainingKind,
    can_resume,
    model_paths,
    patient_model_folder,
    source_fingerprint,
    train_arguments,
    write_training_inputs,
)
from .rois import ROI_MARGIN_MM, create_vertebra_rois, roi_box_ijk
from .views import set_drr_opacity, set_results_visibility, show_xray_in_slice_view
from .xrays import (
    REF_DEFORMED_DRR,
    REF_DRR,
    REF_SOURCE,
    VIEWS,
    XRAY_SLAB_MM,
    attach_geometry,
    check_view,
    check_xray_size,
    deformed_drr_node_of,
    dicom_isocenter,
    drr_node_of,
    geometry_of,
    load_xray,
    read_geometry_file,
    shown_drr_node_of,
    source_node_of,
    xray_ijk_to_ras,
    xray_size,
    xray_window,
)

__all__ = [
    "ATTR_GEOMETRY",
    "ATTR_GEOMETRY_FILE",
    "ATTR_RESULT",
    "ATTR_ROLE",
    "ATTR_VERTEBRA",
    "ATTR_VIEW",
    "DEFORMATION_ROLES",
    "DEVICES",
    "DRR_COLOR_NAME",
    "METHODS",
    "MODE_PAIR",
    "MODE_POSES",
    "REFINE_SPAN",
    "REF_DEFORMED_DRR",
    "REF_DRR",
    "REF_SOURCE",
    "RESULT_ROLES",
    "ROI_MARGIN_MM",
    "ROLE_BOX",
    "ROLE_DEFORMATION",
    "ROLE_DEFORMED_DRR",
    "ROLE_DEFORMED_SEGMENTATION",
    "ROLE_DRR",
    "ROLE_MODEL",
    "ROLE_ROI",
    "ROLE_SOURCE",
    "ROLE_TABLE",
    "ROLE_TRANSFORM",
    "ROLE_XRAY",
    "VIEWS",
    "XRAY_SLAB_MM",
    "CheckedInputs",
    "CliProcess",
    "DeformationInputs",
    "DeformationResult",
    "DeformationRun",
    "ProgressEvent",
    "RegistrationInputs",
    "RegistrationResult",
    "RegistrationRun",
    "PatientModelInputs",
    "PatientModelRun",
    "DEFAULT_STEPS",
    "DETECTOR",
    "POSE",
    "TrainingKind",
    "can_resume",
    "model_paths",
    "patient_model_folder",
    "source_fingerprint",
    "train_arguments",
    "write_training_inputs",
    "SceneChange",
    "accept_all",
    "add_box",
    "add_segmentation_node",
    "add_volume_node",
    "apply_deformation_result",
    "apply_registration_result",
    "attach_geometry",
    "available_commands",
    "box_nodes",
    "box_of",
    "box_rows",
    "boxes_from_scene",
    "boxes_to_scene",
    "check_inputs",
    "check_view",
    "check_xray_size",
    "collect_boxes",
    "create_vertebra_rois",
    "deform_arguments",
    "deform_progress",
    "deformation_summary",
    "deformed_drr_node_of",
    "detect_boxes",
    "dicom_isocenter",
    "drr_node_of",
    "export_boxes",
    "fill_volume_node",
    "find_python_slicer",
    "first_node",
    "geometry_of",
    "ijk_to_ras_of",
    "import_boxes",
    "is_accepted",
    "load_ct",
    "load_segmentation",
    "load_xray",
    "matrix_of",
    "nodes_with",
    "parse_progress_line",
    "pose_of",
    "prepare_registration",
    "project_boxes",
    "projection_warnings",
    "python_command",
    "wait_or_cancel",
    "read_deform_document",
    "read_deformation_result",
    "read_geometry_file",
    "read_registration_result",
    "refinement_summary",
    "region_color",
    "remove_node",
    "register_arguments",
    "require_untransformed",
    "reset_results",
    "results_table_rows",
    "roi_box_ijk",
    "scene_result_vertebrae",
    "set_accepted",
    "set_drr_opacity",
    "set_results_visibility",
    "show_xray_in_slice_view",
    "shown_drr_node_of",
    "source_node_of",
    "tag_node",
    "transform_to_parent_of",
    "vertebra_checklist",
    "vertebra_labelmap",
    "vertebra_names",
    "vertebra_surface",
    "volume_of",
    "write_deformation_inputs",
    "write_registration_inputs",
    "write_xray_inputs",
    "xray_arguments",
    "xray_ijk_to_ras",
    "xray_inputs",
    "xray_size",
    "xray_window",
]
