"""The phantom's file formats: a DX/CR DICOM radiograph, DeepLesion 16-bit PNG, mask PNG and mask NIfTI.

Everything here is byte-deterministic: DICOM UIDs come from `generate_uid(entropy_srcs=...)`, no timestamps
are written, PNGs carry no time chunk, and nibabel's gzip writer sets mtime 0.
"""

from __future__ import annotations

import dataclasses
import gzip

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (PYDICOM_IMPLEMENTATION_UID, ComputedRadiographyImageStorage,
                         DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid)

from data_gen.imaging.raster import DEEPLESION_OFFSET

BITS_STORED = 12


@dataclasses.dataclass(frozen=True)
class RadiographTags:
    """The identifying and acquisition attributes of one phantom radiograph (all fake)."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age_years: int
    study_date: str
    study_time: str
    accession: str
    modality: str  # "DX" or "CR"
    view: str  # "PA" or "AP"
    photometric: str  # "MONOCHROME1" or "MONOCHROME2"
    spacing_mm: float
    uid_key: tuple[str, ...]  # entropy for the UIDs: (dataset seed, patient, study, image)
    study_number: int
    instance_number: int


def _uid(key: tuple[str, ...], what: str) -> str:
    return generate_uid(entropy_srcs=["medclm-jax phantom", *key, what])


def write_radiograph_dicom(path: str, image: np.ndarray, tags: RadiographTags) -> None:
    """Write a chest radiograph as a Part 10 DICOM file (Explicit VR Little Endian, 12 bits stored).

    Args:
      path: output file.
      image: float `[H, W]` attenuation in [0, 1] (1 = dense, displayed white).
      tags: patient/study/acquisition attributes.

    MONOCHROME1 files store `4095 - value` (white = minimum) as CR plates often do; the window is computed on
    the stored values so a viewer shows both alike. DX gets Imager Pixel Spacing (detector plane), CR Pixel
    Spacing, so readers exercise both.
    """
    top = 2 ** BITS_STORED - 1
    stored = np.rint(np.clip(image, 0.0, 1.0) * top).astype(np.uint16)
    if tags.photometric == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    lo, hi = np.percentile(stored, [0.5, 99.9])  # keeps bone and soft tissue apart, as a technologist would
    center, width = int(round((lo + hi) / 2)), max(int(round(hi - lo)), 2)

    sop_class = DigitalXRayImageStorageForPresentation if tags.modality == "DX" else ComputedRadiographyImageStorage
    study_key = tags.uid_key[:3]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = _uid(tags.uid_key, "sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDCLM_PHANTOM"

    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = tags.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = tags.study_time
    ds.AccessionNumber = tags.accession
    ds.Modality = tags.modality
    if tags.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "MEDCLM-JAX PHANTOM"
    ds.InstitutionName = "PHANTOM GENERAL HOSPITAL"
    ds.ReferringPhysicianName = "PHANTOM^REFERRER"
    ds.StationName = f"PHANTOM-{tags.modality}1"
    ds.StudyDescription = "CHEST 1 VIEW"
    ds.SeriesDescription = f"CHEST {tags.view}"
    ds.PatientName = tags.patient_name
    ds.PatientID = tags.patient_id
    ds.PatientBirthDate = tags.birth_date
    ds.PatientSex = tags.sex
    ds.PatientAge = f"{tags.age_years:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = tags.view
    ds.StudyInstanceUID = _uid(study_key, "study")
    ds.SeriesInstanceUID = _uid(tags.uid_key, "series")
    ds.StudyID = f"{tags.study_number}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = tags.instance_number
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet: standard display
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = tags.photometric
    ds.Rows, ds.Columns = int(image.shape[0]), int(image.shape[1])
    spacing = [f"{tags.spacing_mm:.6f}", f"{tags.spacing_mm:.6f}"]
    if tags.modality == "DX":
        ds.ImagerPixelSpacing = spacing
    else:
        ds.PixelSpacing = spacing
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    if tags.modality == "DX":
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if tags.photometric == "MONOCHROME2" else -1
    ds.WindowCenter = str(center)
    ds.WindowWidth = str(width)
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_hu_png(path: str, hu: np.ndarray) -> None:
    """DeepLesion encoding: uint16 PNG holding HU + 32768."""
    arr = (hu.astype(np.int32) + DEEPLESION_OFFSET).astype(np.uint16)
    Image.fromarray(arr).save(path, compress_level=1)


def write_mask_png(path: str, mask: np.ndarray) -> None:
    """Binary mask as an 8-bit PNG with values 0/255 (the CXAS and authors' per-organ format)."""
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path, compress_level=1)


def slice_affine(spacing_mm: tuple[float, float], slice_mm: float, slice_index: int,
                 shape: tuple[int, int]) -> np.ndarray:
    """RAS affine of one axial slice stored the way dcm2niix stores an LPS-ordered DICOM series.

    Voxel `(i, j, 0)` is display column i, row j: i runs toward the patient's left and j toward posterior, so
    x_RAS = -i * col_spacing and y_RAS = -j * row_spacing (centred on the image); z is the slice position.
    `data_gen.imaging.display_slice` (canonical reorientation, then radiological display) returns the display grid.
    """
    rows, cols = shape
    row_mm, col_mm = spacing_mm
    aff = np.diag([-col_mm, -row_mm, slice_mm, 1.0])
    aff[:3, 3] = [cols / 2.0 * col_mm, rows / 2.0 * row_mm, slice_index * slice_mm]
    return aff


def write_mask_nifti(path: str, mask: np.ndarray, affine: np.ndarray) -> None:
    """One display-grid mask `[H, W]` as a single-slice uint8 NIfTI-1 (TotalSegmentator's per-class format).

    `path` must end in `.nii.gz` (the bytes are gzip-compressed).
    """
    data = np.asfortranarray(mask.T[:, :, None].astype(np.uint8))  # (i = column, j = row, 1); NIfTI is F-order
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.update_header()
    header = img.header
    header.set_data_offset(352)
    # Single-file NIfTI-1: 348-byte header, 4-byte extension flag (none), voxels in Fortran order. Written
    # directly as one buffer (nibabel's writer goes through its array writer) and gzipped with mtime 0, so the
    # bytes are deterministic.
    raw = header.binaryblock + b"\x00\x00\x00\x00" + data.tobytes(order="F")
    with open(path, "wb") as f:
        f.write(gzip.compress(raw, compresslevel=1, mtime=0))
