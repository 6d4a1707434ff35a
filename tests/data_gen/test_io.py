"""data_gen.imaging: DICOM / NIfTI / PNG readers and windowing, against real files and hand-computed values."""

from __future__ import annotations

import os
import warnings

import nibabel as nib
import numpy as np
import pydicom
import pytest
from shipped_files import pydicom_file
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, MPEG2MPML, SecondaryCaptureImageStorage, generate_uid

from data_gen.errors import ConfigError, InputError
from data_gen.imaging import CT_WINDOWS, ImageOptions, ct_to_uint8, detect_format, load_image, window_to_uint8
from data_gen.imaging import dicom as dicom_io
from data_gen.types import ImageItem

warnings.filterwarnings("ignore", message=".*download.*")


def item(path, **kw) -> ImageItem:
    return ImageItem(path=str(path), source=kw.pop("source", "test"), image_key="k", patient_key="p", **kw)


def needs_decoder(uid: str) -> None:
    dec = pydicom.pixels.get_decoder(UID(uid))
    if not dec.is_available:
        pytest.skip(f"no decoder plugin for {UID(uid).name}")


def hand_window(x, center, width, top=255.0):
    """PS3.3 C.11.2.1.2.1 LINEAR window, written out: the independent reference for VOI windowing."""
    x = np.asarray(x, np.float64)
    frac = (x - (center - 0.5)) / (width - 1) + 0.5
    return np.rint(np.clip(frac, 0.0, 1.0) * top).astype(np.uint8)


def write_dicom(path, arr, *, photometric="MONOCHROME2", bits_stored=12, modality="OT", **tags) -> str:
    """A minimal Part 10 Secondary Capture file with the given pixels and attributes (Burned In Annotation NO
    unless given: the readers refuse an SC image without it)."""
    tags.setdefault("BurnedInAnnotation", "NO")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(path)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.set_pixel_data(np.asarray(arr), photometric, bits_stored)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


# ---------------------------------------------------------------------------------------------- windowing


def test_window_presets_by_hand():
    hu = np.array([-2000.0, -1350.0, -1000.0, -600.0, 150.0, 3000.0])
    # lung -600/1500: [-1350, 150] -> [0, 255]; -1000 -> 350/1500*255 = 59.5 -> 60 (half to even); -600 -> 127.5
    assert window_to_uint8(hu, -600, 1500).tolist() == [0, 0, 60, 128, 255, 255]
    assert ct_to_uint8(hu, "lung").tolist() == [0, 0, 60, 128, 255, 255]
    # mediastinum 40/400: [-160, 240]; 0 HU -> 160/400*255 = 102; 40 -> 127.5 -> 128
    assert ct_to_uint8(np.array([0.0, 40.0, -160.0, 240.0]), "mediastinum").tolist() == [102, 128, 0, 255]
    assert CT_WINDOWS["bone"] == (400.0, 1800.0) and CT_WINDOWS["abdomen"] == (60.0, 400.0)
    # bone 400/1800: [-500, 1300]; 700 -> 1200/1800*255 = 170
    assert ct_to_uint8(np.array([700.0]), "bone").tolist() == [170]


def test_window_auto_rgb_and_errors():
    hu = np.linspace(-1200, 1500, 64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(ct_to_uint8(hu, "auto", hint=(50.0, 350.0)), window_to_uint8(hu, 50.0, 350.0))
    assert np.array_equal(ct_to_uint8(hu, "auto"), ct_to_uint8(hu, "mediastinum"))  # CT fallback
    rgb = ct_to_uint8(hu, "lung", rgb=True)
    assert rgb.shape == (8, 8, 3)
    for ch, name in enumerate(("lung", "mediastinum", "bone")):
        assert np.array_equal(rgb[..., ch], ct_to_uint8(hu, name))
    with pytest.raises(ConfigError, match="ct_window"):
        ImageOptions.from_config({"ct_window": "brain"})
    with pytest.raises(ConfigError, match="xray_voi"):
        ImageOptions.from_config({"xray_voi": "sigmoidal"})
    assert ImageOptions.from_config(None) == ImageOptions()


# ---------------------------------------------------------------------------------------------- DICOM


def test_ct_small_hu_spacing_and_lung_window():
    path = pydicom_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = load_image(item(path))
    expected_hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert img.modality == "ct" and img.hu.dtype == np.float32
    np.testing.assert_array_equal(img.hu, expected_hu.astype(np.float32))
    assert img.spacing_mm == pytest.approx((0.661468, 0.661468))
    lo = -600 - 750
    np.testing.assert_array_equal(img.pixels, np.rint(np.clip((expected_hu - lo) / 1500 * 255, 0, 255)))
    assert img.pixels.dtype == np.uint8 and img.col_direction == "L"


def test_rescale_slope_intercept_to_hu(tmp_path):
    stored = np.array([[0, 500], [1000, 1500]], np.uint16)
    path = write_dicom(tmp_path / "ct.dcm", stored, modality="CT", RescaleSlope="2", RescaleIntercept="-1000")
    img = load_image(item(path), {"ct_window": "mediastinum"})
    np.testing.assert_array_equal(img.hu, [[-1000, 0], [1000, 2000]])
    assert img.pixels.tolist() == [[0, 102], [255, 255]]  # 0 HU in 40/400 -> 102 (see above)
    img = load_image(item(path, window=(0.0, 4000.0)), {"ct_window": "auto"})  # the item's window wins
    assert img.pixels.tolist() == [[np.rint(1000 / 4000 * 255), 128], [np.rint(3000 / 4000 * 255), 255]]


def test_monochrome1_inverted_against_hand_window(tmp_path):
    stored = np.array([[0, 1024, 2048], [3000, 4000, 4095]], np.uint16)
    tags = dict(WindowCenter="2000", WindowWidth="3000", ViewPosition="PA", PatientOrientation=["L", "F"])
    p1 = write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", modality="CR", **tags)
    p2 = write_dicom(tmp_path / "m2.dcm", stored, photometric="MONOCHROME2", modality="CR", **tags)
    expected = hand_window(stored, 2000, 3000)
    m2, m1 = load_image(item(p2)), load_image(item(p1))
    np.testing.assert_array_equal(m2.pixels, expected)
    np.testing.assert_array_equal(m1.pixels, 255 - expected)  # minimum stored value displays white
    assert m1.modality == "xray" and m1.view == "PA" and m1.hu is None


def test_pydicom_data_chest_radiograph_monochrome1():
    path = pydicom_file("RG1_UNCR.dcm")  # CR chest PA, MONOCHROME1, window 15000/30000, PixelSpacing 0\0
    ds = pydicom.dcmread(path)
    img = load_image(item(path))
    assert (img.modality, img.view, img.col_direction) == ("xray", "PA", "L")
    assert img.spacing_mm is None  # a zero Pixel Spacing counts as unknown
    expected = 255 - hand_window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    np.testing.assert_array_equal(img.pixels, expected)


def test_patient_orientation_and_image_orientation_set_col_direction():
    ap = pydicom_file("RG3_UNCI.dcm")  # AP radiograph whose rows run toward the patient's right
    assert load_image(item(ap)).col_direction == "R"
    ect = pydicom_file("eCT_Supplemental.dcm")  # enhanced CT, row cosine (-1, 0, 0): columns run to the right
    img = load_image(item(ect, slice_index=1))
    assert img.col_direction == "R"
    ds = pydicom.dcmread(ect)
    # Rescale lives in the shared functional groups (intercept -1024) and must still be applied.
    np.testing.assert_array_equal(img.hu, ds.pixel_array[1].astype(np.float32) - 1024.0)
    assert img.spacing_mm == pytest.approx((0.388672, 0.388672))


def test_mr_uses_its_own_window_and_item_modality_wins():
    path = pydicom_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    img = load_image(item(path))
    assert img.modality == "mri" and img.hu is None
    np.testing.assert_array_equal(img.pixels, hand_window(ds.pixel_array, 600, 1600))
    assert load_image(item(path, modality="xray")).modality == "xray"


@pytest.mark.parametrize("compressed,reference,max_mean_diff", [
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", 0.0),  # JPEG 2000 lossless
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", 0.0),  # JPEG-LS lossless
    ("MR_small_RLE.dcm", "MR_small.dcm", 0.0),  # RLE (pydicom's own decoder)
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb.dcm", 3.0),  # JPEG baseline (lossy), colour
    ("JPEG2000.dcm", "JPEG2000_UNC.dcm", 0.0),  # JPEG 2000, 16-bit NM
])
def test_compressed_transfer_syntaxes_decode(compressed, reference, max_mean_diff):
    path = pydicom_file(compressed)
    needs_decoder(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    sc_ok = ImageOptions(secondary_capture="allow")  # some of pydicom's samples are Secondary Captures
    got, ref = load_image(item(path), sc_ok), load_image(item(pydicom_file(reference)), sc_ok)
    assert got.pixels.shape == ref.pixels.shape
    assert np.abs(got.pixels.astype(float) - ref.pixels).mean() <= max_mean_diff


def test_multi_frame_needs_slice_index():
    path = pydicom_file("emri_small.dcm")  # 10 frames
    with pytest.raises(InputError) as e:
        load_image(item(path))
    assert e.value.reason == "multi_frame" and "emri_small.dcm" in str(e.value)
    frame = pydicom.dcmread(path).pixel_array[3].astype(np.float64)
    img = load_image(item(path, slice_index=3))
    lo, hi = np.percentile(frame, [0.5, 99.5])
    np.testing.assert_array_equal(img.pixels, np.rint(np.clip((frame - lo) / (hi - lo) * 255, 0, 255)))
    with pytest.raises(InputError) as e:
        load_image(item(path, slice_index=10))
    assert e.value.reason == "slice_out_of_range"


def test_truncated_files(tmp_path):
    data = open(pydicom_file("CT_small.dcm"), "rb").read()
    for cut in (200, len(data) // 2):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(data[:cut])
        with pytest.raises(InputError) as e:
            load_image(item(path))
        assert e.value.reason == "truncated" and str(path) in str(e.value)
    with pytest.raises(InputError) as e:
        load_image(item(pydicom_file("MR_truncated.dcm")))
    assert e.value.reason == "truncated"
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(InputError) as e:
        load_image(item(tmp_path / "empty.dcm"))
    assert e.value.reason == "truncated"


def test_non_dicom_and_missing(tmp_path):
    text = tmp_path / "notes.dcm"
    text.write_text("patient,finding\n1,nodule\n" * 20)
    with pytest.raises(InputError) as e:
        load_image(item(text))
    assert e.value.reason == "not_dicom" and "notes.dcm" in str(e.value)
    noise = tmp_path / "noise"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(InputError) as e:
        load_image(item(noise))
    assert e.value.reason == "not_dicom"
    with pytest.raises(InputError) as e:
        load_image(item(tmp_path / "absent.dcm"))
    assert e.value.reason == "missing_file"


def test_dicom_without_preamble_is_parsed(tmp_path):
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8) * 16
    path = write_dicom(tmp_path / "with.dcm", stored, WindowCenter="512", WindowWidth="1024")
    bare = tmp_path / "bare"
    ds = pydicom.dcmread(path)
    ds.preamble = None
    ds.save_as(str(bare), implicit_vr=False, little_endian=True)  # no preamble, no 'DICM'
    assert open(bare, "rb").read(132)[128:132] != b"DICM"
    assert detect_format(str(bare)) == "dicom_nopreamble"
    np.testing.assert_array_equal(load_image(item(bare)).pixels, hand_window(stored, 512, 1024))


@pytest.mark.parametrize("syntax", [MPEG2MPML, "1.2.840.10008.1.2.4.110"])  # MPEG-2 video; JPEG XL (too new)
def test_unsupported_transfer_syntax_names_file_and_uid(tmp_path, syntax):
    ds = pydicom.dcmread(write_dicom(tmp_path / "plain.dcm", np.arange(16, dtype=np.uint16).reshape(4, 4)))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # no installed pixel-data decoder handles either syntax
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "encoded.dcm"
    ds.save_as(str(path), enforce_file_format=True)
    # pydicom refuses to write a syntax it does not know: patch the (same-length) UID in the file meta.
    path.write_bytes(path.read_bytes().replace(str(MPEG2MPML).encode(), str(syntax).encode(), 1))
    with pytest.raises(InputError) as e:
        load_image(item(path))
    msg = str(e.value)
    assert e.value.reason == "unsupported_transfer_syntax" and str(path) in msg and str(syntax) in msg


def test_missing_decoder_plugin_says_what_to_install(monkeypatch):
    path = pydicom_file("MR_small_jp2klossless.dcm")

    class NoPlugin:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"]

    monkeypatch.setattr(dicom_io, "get_decoder", lambda uid: NoPlugin())
    with pytest.raises(InputError) as e:
        load_image(item(path))
    assert e.value.reason == "unsupported_transfer_syntax"
    assert "pylibjpeg-openjpeg" in str(e.value) and "1.2.840.10008.1.2.4.90" in str(e.value)


def test_constant_dicom_rejected(tmp_path):
    path = write_dicom(tmp_path / "flat.dcm", np.full((6, 6), 100, np.uint16))
    with pytest.raises(InputError) as e:
        load_image(item(path))
    assert e.value.reason == "constant_image" and "flat.dcm" in str(e.value)


# ---------------------------------------------------------------------------------------------- NIfTI


def _display_marker(h=12, w=10) -> np.ndarray:
    """A display-grid slice (rows anterior->posterior, cols patient right->left) no flip or transpose maps to
    itself: distinct values everywhere plus a bright marker at the anterior, patient-right corner."""
    d = np.arange(h * w, dtype=np.float32).reshape(h, w) - 500.0
    d[0:2, 0:3] = 900.0
    return d


@pytest.mark.parametrize("s_to_i", [False, True])
def test_nifti_non_canonical_affine_displays_radiologically(tmp_path, s_to_i):
    slices = [_display_marker() + 1000.0 * k for k in range(3)]  # 3 axial slices, inferior -> superior
    sy, sx, sz = 0.7, 0.9, 2.5  # row (A-P) and column (R-L) spacing differ to catch swaps
    # Stored axes: a = display row (toward Posterior), b = slice, c = display column (toward patient Left).
    stored = np.stack(slices[::-1] if s_to_i else slices, axis=1)
    affine = np.array([[0, 0, -sx, 0], [-sy, 0, 0, 0], [0, (-sz if s_to_i else sz), 0, 0], [0, 0, 0, 1.0]])
    assert nib.aff2axcodes(affine) == ("P", "I" if s_to_i else "S", "L")
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(stored, affine), str(path))
    for k in range(3):  # slice_index counts inferior -> superior whatever the storage order
        img = load_image(item(path, slice_index=k), {"ct_window": "bone"})
        np.testing.assert_array_equal(img.hu, slices[k])
        assert img.spacing_mm == pytest.approx((sy, sx))
        assert img.col_direction == "L" and img.modality == "ct"
    with pytest.raises(InputError) as e:
        load_image(item(path))
    assert e.value.reason == "multi_frame"


def test_nibabel_anatomical_las_volume():
    from nibabel.testing import data_path
    path = os.path.join(data_path, "anatomical.nii")  # LAS: x toward Left already, y toward Anterior
    raw = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    img = load_image(item(path, slice_index=12, modality="mri"))
    expected = raw[:, ::-1, 12].T  # rows: anterior first; columns: already patient right -> left
    lo, hi = np.percentile(expected, [0.5, 99.5])
    np.testing.assert_array_equal(img.pixels, np.rint(np.clip((expected - lo) / (hi - lo) * 255, 0, 255)))
    assert img.pixels.shape == (41, 33) and img.hu is None


def test_nifti_nan_rejected(tmp_path):
    vol = np.zeros((4, 4, 1), np.float32)
    vol[1, 2, 0] = np.nan
    vol[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "nan.nii"))
    with pytest.raises(InputError) as e:
        load_image(item(tmp_path / "nan.nii"))
    assert e.value.reason == "nan_pixels" and "nan.nii" in str(e.value)


# ---------------------------------------------------------------------------------------------- PNG / JPEG


def test_deeplesion_png_is_hu_plus_32768(tmp_path):
    hu = np.array([[-1000, -600, 0], [40, 240, 1000]], np.int32)
    Image.fromarray((hu + 32768).astype(np.uint16)).save(tmp_path / "000.png")
    for it in (item(tmp_path / "000.png", source="deeplesion"),  # by source
               item(tmp_path / "000.png", window=(40.0, 400.0)),  # by a 16-bit PNG with a window hint
               item(tmp_path, slice_index=0, source="deeplesion")):  # a series folder + key slice
        img = load_image(it, {"ct_window": "mediastinum"})
        np.testing.assert_array_equal(img.hu, hu)
        assert img.modality == "ct" and img.pixels.tolist() == [[0, 0, 102], [128, 255, 255]]


def test_plain_png_and_jpeg(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (5, 1))
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb_grey.png")
    img = load_image(item(tmp_path / "g.png", modality="xray"))
    np.testing.assert_array_equal(img.pixels, grey)
    assert img.modality == "xray" and img.spacing_mm is None
    np.testing.assert_array_equal(load_image(item(tmp_path / "rgb_grey.png")).pixels, grey)  # grey stored as RGB
    Image.fromarray(np.stack([grey, grey[:, ::-1], grey], -1)).save(tmp_path / "c.jpg", quality=95)
    assert load_image(item(tmp_path / "c.jpg")).pixels.shape == (5, 25, 3)
    (tmp_path / "mislabelled.dcm").write_bytes((tmp_path / "g.png").read_bytes())
    assert detect_format(str(tmp_path / "mislabelled.dcm")) == "raster"
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "flat.png")
    with pytest.raises(InputError) as e:
        load_image(item(tmp_path / "flat.png"))
    assert e.value.reason == "constant_image"
    data = (tmp_path / "g.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as e:
        load_image(item(tmp_path / "cut.png"))
    assert e.value.reason in ("truncated", "decode_failed") and "cut.png" in str(e.value)
