"""The ``spinereg register`` job as a Python API: inputs read and checked (:mod:`.inputs`, the one
validator), every vertebra registered and the result folder written (:mod:`.run`)."""

from .inputs import DICOM_GEOMETRY, CaseInputs, RegisterConfig, check_seen, load_case, why_unseen
from .run import (
    CaseProgress,
    case_fingerprint,
    iter_register_case,
    register_case,
    render_vertebra_drrs,
    result_document,
    write_result,
)
