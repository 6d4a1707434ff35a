"""Patient keys from DICOM headers, for datasets whose CSV names images but not patients.

The phantom (and hospital exports) keep several studies of one patient under different image ids; a split by
image id would put one patient in two splits. Reading `PatientID` from each header (no pixel data) fixes that. The
value is identifying: it only feeds the salted split hash and is never written to any output.
"""

from __future__ import annotations

from data_gen.paths import DEFAULT_MAX_FILE_MB, max_bytes, regular_file
from data_gen.types import ImageItem


def patient_keys_from_dicom(items: list[ImageItem], stats: dict[str, int]) -> None:
    """Sets `item.patient_key` from the DICOM `PatientID` (in place); unreadable headers keep their key.

    Files that cannot be read are left for the conversion to reject with the decoder's reason; here they are
    only counted (`stats['patient_key_unreadable']`), as are headers without a PatientID.
    """
    import pydicom

    limit = max_bytes(DEFAULT_MAX_FILE_MB)
    for item in items:
        try:
            regular_file(item.path, limit)  # a FIFO or device would block the read forever
            ds = pydicom.dcmread(item.path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # noqa: BLE001 - any unreadable file is the reader's to reject, with its reason
            stats["patient_key_unreadable"] = stats.get("patient_key_unreadable", 0) + 1
            continue
        patient = str(ds.get("PatientID", "") or "").strip()
        if patient:
            item.patient_key = "dicom:" + patient
        else:
            stats["patient_key_missing"] = stats.get("patient_key_missing", 0) + 1
