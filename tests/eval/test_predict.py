"""`medclm predict` (medclm_jax/commands/predict.py): image file -> windowed pixels -> model input -> generated text ->
reasoning / answer / box -> the box drawn on the image.

Generation is replaced by a known text where the test is about parsing and drawing (a random model rarely writes
a box); one test runs the real model. References: PIL's resize of the file's pixels for the model input,
Hounsfield units read with pydicom and the lung window computed by hand for the DICOM, the box's pixel corners
computed by hand for the drawing.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from shipped_files import pydicom_file

from medclm_jax import cli
from medclm_jax.commands.predict import DEFAULT_QUESTION as DEFAULT_Q
from medclm_jax.eval.generate import GenerateOptions, Generator
from test_eval_run import tiny_checkpoint

RED = [255, 0, 0]
TEXT = "Reasoning: The lesion lies in the right lung at [0.25, 0.25, 0.75, 0.5]. Answer: nodule"
CORPUS = ["What abnormality is seen in this image?", "Reasoning: a nodule at [0.25, 0.33, 0.58, 0.67].",
          "Answer: nodule", "Is there a mass in the left lung?", "Answer: no"] * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("predict_ckpt") / "ckpt", CORPUS,
                           tmp_path_factory.mktemp("predict_tok"))


@pytest.fixture
def answer_with(monkeypatch):
    """Makes generation return `text` for the real row and records the rows the model was given."""
    seen = []

    def use(text):
        def fake(self, rows, step=0):
            seen.extend(r for r in rows if r is not None)
            return [None if r is None else text for r in rows]
        monkeypatch.setattr(Generator, "generate", fake)
        return seen
    return use


def spy_prompt_rows(monkeypatch):
    """Records the rows the model is given and lets the real generation run on them."""
    seen, real = [], Generator.prompt_row

    def spy(self, *args, **kwargs):
        seen.append(real(self, *args, **kwargs))
        return seen[-1]
    monkeypatch.setattr(Generator, "prompt_row", spy)
    return seen


def hand_window(x, center, width):
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR window to [0, 255], written out."""
    frac = (np.asarray(x, np.float64) - (center - 0.5)) / (width - 1) + 0.5
    return np.rint(np.clip(frac, 0.0, 1.0) * 255).astype(np.uint8)


def bicubic_input(pixels):
    """uint8[H, W] -> the tiny (PaliGemma-family) model's input by hand: PIL bicubic to 32 x 32, [-1, 1], 3 channels."""
    a = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 127.5 - 1
    return np.repeat(a[..., None], 3, axis=-1)


def predict(capsys, *args):
    code = cli.main(["predict", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_png_gives_reasoning_answer_box_and_the_box_drawn(ckpt, tmp_path, capsys, answer_with):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 200, (48, 64), dtype=np.uint8)  # no pure red anywhere
    Image.fromarray(pixels).save(tmp_path / "xray.png")
    seen = answer_with(TEXT)
    out_png = tmp_path / "pred" / "boxed.png"
    code, out, err = predict(capsys, "--checkpoint", ckpt, "--image", str(tmp_path / "xray.png"), "--out",
                             str(out_png), "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["prediction"] == TEXT and result["answer"] == "nodule"
    assert result["reasoning"] == "The lesion lies in the right lung at [0.25, 0.25, 0.75, 0.5]."
    assert result["box"] == [0.25, 0.25, 0.75, 0.5] and result["overlay"] == str(out_png)
    assert result["image_size"] == [64, 48] and result["prompt_format"] == "trained"
    # The model got the file's pixels squashed to 32 x 32 (PIL bicubic, the tiny preset's family) in [-1, 1].
    want = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 127.5 - 1
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0]["image"], np.repeat(want[..., None], 3, axis=-1))
    drawn = np.asarray(Image.open(out_png))
    assert drawn.shape == (48, 64, 3)
    # Box pixels: x 0.25 * 64 = 16 .. ceil(0.75 * 64) - 1 = 47, y 0.25 * 48 = 12 .. ceil(0.5 * 48) - 1 = 23.
    for y, x in ((12, 16), (12, 47), (23, 16), (23, 47), (18, 16), (12, 30)):
        assert drawn[y, x].tolist() == RED, (y, x)
    inside, outside = drawn[14:22, 18:46], drawn[25:, :]
    np.testing.assert_array_equal(inside, np.repeat(pixels[14:22, 18:46, None], 3, axis=-1))
    np.testing.assert_array_equal(outside, np.repeat(pixels[25:, :, None], 3, axis=-1))


def test_dicom_is_windowed_like_the_records(ckpt, tmp_path, capsys, answer_with, monkeypatch):
    path = get_testdata_file("CT_small.dcm")
    answer_with(TEXT)
    monkeypatch.chdir(tmp_path)  # the default --out is written in the current folder
    code, out, err = predict(capsys, "--checkpoint", ckpt, "--image", path)
    assert code == 0, err
    assert "answer:    nodule" in out and "wrote CT_small.medclm.png" in out
    drawn = np.asarray(Image.open(tmp_path / "CT_small.medclm.png"))
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lung = np.rint(np.clip((hu + 1350.0) * 255.0 / 1500.0, 0, 255)).astype(np.uint8)  # window (-600, 1500) by hand
    assert drawn.shape == (128, 128, 3)
    assert drawn[32, 32].tolist() == RED and drawn[63, 95].tolist() == RED
    np.testing.assert_array_equal(drawn[70:, :, 0], lung[70:, :])
    code, out, err = predict(capsys, "--checkpoint", ckpt, "--image", path, "--ct-window", "40,400", "--json")
    assert code == 0 and json.loads(out)["modality"] == "ct"
    mediastinum = np.rint(np.clip((hu + 160.0) * 255.0 / 400.0, 0, 255)).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "CT_small.medclm.png"))[70:, :, 1],
                                  mediastinum[70:, :])


def test_no_box_in_the_answer_writes_no_picture(ckpt, tmp_path, capsys, answer_with):
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
        tmp_path / "photo.jpg")
    answer_with("Answer: no abnormality")
    out_png = tmp_path / "none.png"
    code, out, err = predict(capsys, "--checkpoint", ckpt, "--image", str(tmp_path / "photo.jpg"), "--out",
                             str(out_png))
    assert code == 0, err
    assert "box:       none (no box found); no picture written" in out and not out_png.exists()


def test_the_real_model_answers(ckpt, tmp_path, capsys):
    Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)).save(tmp_path / "a.png")
    code, out, err = predict(capsys, "--checkpoint", ckpt, "--image", str(tmp_path / "a.png"), "--question",
                             "Is there a mass in the left lung?", "--max-new-tokens", "10", "--json", "--out",
                             str(tmp_path / "a_box.png"))
    assert code == 0, err
    result = json.loads(out)
    assert result["prediction"]  # random weights, but some text
    assert (result["overlay"] is None) == (result["box"] is None) == (not (tmp_path / "a_box.png").exists())


def test_unusable_inputs_are_one_line_errors(ckpt, tmp_path, capsys, answer_with):
    (tmp_path / "notes.txt").write_text("not an image")
    code, _, err = predict(capsys, "--checkpoint", ckpt, "--image", str(tmp_path / "notes.txt"))
    assert code == 2 and "medclm predict:" in err and "notes.txt" in err
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    code, _, err = predict(capsys, "--checkpoint", str(tmp_path), "--image", str(tmp_path / "a.png"))
    assert code == 2 and "not a model checkpoint" in err
    answer_with(TEXT)
    code, _, err = predict(capsys, "--checkpoint", ckpt, "--image", str(tmp_path / "a.png"), "--out",
                           str(tmp_path / "a.png"))
    assert code == 2 and "is the input image" in err
    code, _, err = predict(capsys, "--checkpoint", ckpt, "--image", str(tmp_path / "a.png"), "--ct-window", "x,y")
    assert code == 2 and "--ct-window" in err


def test_real_model_on_a_shipped_chest_radiograph(ckpt, tmp_path, capsys, monkeypatch):
    """pydicom-data's CR chest PA (MONOCHROME1, window 15000/30000): the real model answers the pixels of the
    radiograph's own VOI window, inverted, as a one-image call on those pixels does."""
    path = pydicom_file("RG1_UNCR.dcm")
    seen = spy_prompt_rows(monkeypatch)
    code, out, err = predict(capsys, "--checkpoint", ckpt, "--image", path, "--max-new-tokens", "10", "--json",
                             "--out", str(tmp_path / "rg1.png"))
    assert code == 0, err
    result = json.loads(out)
    ds = pydicom.dcmread(path)
    windowed = 255 - hand_window(ds.pixel_array, float(ds.WindowCenter), float(ds.WindowWidth))
    want = bicubic_input(windowed)
    assert (result["modality"], result["image_size"]) == ("xray", [int(ds.Columns), int(ds.Rows)])
    np.testing.assert_array_equal(seen[0]["image"], want)
    assert result["prediction"] == Generator.load(ckpt, GenerateOptions(max_new_tokens=10)).answer(DEFAULT_Q, want)
    assert (result["overlay"] is None) == (result["box"] is None)


def test_real_model_on_a_nifti_slice(ckpt, tmp_path, capsys, monkeypatch):
    """A CT volume written as NIfTI (RAS+ affine, three different axial slices in HU): `--slice 1` answers that
    slice, in display orientation (rows anterior -> posterior, image left = patient right) and the lung window."""
    rng = np.random.default_rng(2)
    hu = rng.integers(-1100, 400, (40, 30, 3)).astype(np.int16)  # x (R), y (A), z (S)
    hu[:, :, 1] = np.linspace(-1000, 200, 40, dtype=np.int16)[:, None]  # slice 1: a ramp along x
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([0.8, 0.8, 2.5, 1.0])), str(path))
    seen = spy_prompt_rows(monkeypatch)
    code, out, err = predict(capsys, "--checkpoint", ckpt, "--image", str(path), "--slice", "1",
                             "--max-new-tokens", "10", "--json", "--out", str(tmp_path / "ct_box.png"))
    assert code == 0, err
    result = json.loads(out)
    display = hu[::-1, ::-1, 1].T.astype(np.float64)  # [y, x] with row 0 anterior, column 0 patient right
    lung = np.rint(np.clip((display + 1350.0) * 255.0 / 1500.0, 0, 255)).astype(np.uint8)  # (-600, 1500) by hand
    want = bicubic_input(lung)
    assert (result["modality"], result["image_size"]) == ("ct", [40, 30])
    np.testing.assert_array_equal(seen[0]["image"], want)
    assert result["prediction"] == Generator.load(ckpt, GenerateOptions(max_new_tokens=10)).answer(DEFAULT_Q, want)
    seen.clear()
    code, _, err = predict(capsys, "--checkpoint", ckpt, "--image", str(path), "--slice", "2", "--max-new-tokens",
                           "1", "--json", "--out", str(tmp_path / "ct_box.png"))
    assert code == 0, err
    assert not np.array_equal(seen[0]["image"], want)  # another slice, another image
    code, _, err = predict(capsys, "--checkpoint", ckpt, "--image", str(path), "--slice", "3")
    assert code == 2 and "slice_index 3 outside" in err and "ct.nii.gz" in err
