"""End to end: phantom data on disk -> `medclm-data build` -> shards read back record by record.

The framing is checked here with an independent reader (struct + crcmod's CRC-32C, not medclm_jax.records's code),
the counts against the records actually read, and the promises of the build: patient-level splits, whole images
per curriculum pool, resume, identical output from 1 or 2 workers and from Beam, every bad input accounted for,
and no patient identifier in any output byte.
"""

import csv
import glob
import io
import json
import os
import shutil
import struct

import crcmod.predefined
import numpy as np
import pydicom
import pytest
from PIL import Image

from data_gen import phantom
from data_gen.build import OutputError, run_build
from data_gen.dataset_info import salt_fingerprint
from medclm_jax.records import decode_example
from medclm_jax.records.boxes import format_box
from medclm_jax.config_file import load_config

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "data", "phantom.py")
_crc32c = crcmod.predefined.mkCrcFun("crc-32c")


def _masked(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_frames_independently(path):
    """TFRecord framing per TensorFlow's record_writer: u64 len, masked crc(len), data, masked crc(data)."""
    out = []
    with open(path, "rb") as f:
        blob = f.read()
    pos = 0
    while pos < len(blob):
        header = blob[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (len_crc,) = struct.unpack("<I", blob[pos + 8:pos + 12])
        assert len_crc == _masked(_crc32c(header)), f"{path}@{pos}: length CRC"
        data = blob[pos + 12:pos + 12 + length]
        (data_crc,) = struct.unpack("<I", blob[pos + 12 + length:pos + 16 + length])
        assert data_crc == _masked(_crc32c(data)), f"{path}@{pos}: data CRC"
        out.append((pos, data))
        pos += 16 + length
    assert pos == len(blob)
    return out


def _first(ex, key):
    v = ex[key]
    return v[0].decode() if isinstance(v[0], bytes) else v[0]


def _cfg(root, **overrides):
    sets = [f"{k}={v}" for k, v in overrides.items()]
    return load_config(f"{CONFIG}:root={root}", sets)


def _shard_bytes(out):
    return {os.path.basename(p): open(p, "rb").read() for p in sorted(glob.glob(os.path.join(out, "*.tfrecord")))}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("phantom"))
    phantom.write_phantom(root, 20, seed=3)
    return root


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("built"))
    info = run_build(_cfg(raw, **{"write.records_per_shard": 8}), out, workers=1, progress=False)
    return out, info


def _all_records(out):
    records = []
    for path in sorted(glob.glob(os.path.join(out, "*.tfrecord"))):
        index = [tuple(map(int, line.split())) for line in open(path + ".index")]
        frames = read_frames_independently(path)
        assert [off for off, _ in frames] == [off for off, _ in index], "index offsets match the frames"
        records += [(os.path.basename(path), decode_example(data)) for _, data in frames]
    return records


def test_records_follow_the_schema(built):
    out, info = built
    records = _all_records(out)
    assert records and len(records) == info["counts"]["total"]["records"]
    for shard, ex in records:
        for key in info["schema"]["keys"]:
            assert key in ex, key
        assert shard.startswith(_first(ex, "split") + "-")
        img = Image.open(io.BytesIO(ex["image/encoded"][0]))
        assert img.format == "PNG" and img.mode in ("L", "RGB")
        assert (img.height, img.width) == (_first(ex, "image/height"), _first(ex, "image/width"))
        box = list(ex["lesion/box"])
        assert _first(ex, "domain") == f"{_first(ex, 'lesion/class').replace(' ', '_')}_{_first(ex, 'image/modality')}"
        if box:
            assert len(box) == 4 and all(0.0 <= v <= 1.0 for v in box) and box[0] < box[2] and box[1] < box[3]
            for stage in ("easy", "medium"):
                assert format_box(box) in _first(ex, f"{stage}/cot"), "Easy/Medium CoT cites the box"
            assert _first(ex, "lesion/organ") != ""
        else:
            assert _first(ex, "lesion/class") == "no finding"
        assert "hard/cot" not in ex and "[" not in _first(ex, "hard/question")
        assert _first(ex, "curriculum/pool") in ("easy_medium", "hard")


def test_counts_add_up(built):
    out, info = built
    t = info["counts"]["total"]
    records = _all_records(out)
    assert t["records"] == len(records) == t["lesion_records"] + t["negative_records"]
    assert t["images_in"] == t["images_written"] + t["images_rejected"] == 20
    assert t["lesions_in"] == t["lesion_records"] + t["lesions_rejected"]
    rejects = [json.loads(line) for line in open(os.path.join(out, "diagnostics", "rejects.jsonl"))]
    assert len(rejects) == info["rejects"]["total"]
    per_split = {s: sum(1 for shard, _ in records if shard.startswith(s + "-")) for s in ("train", "val", "test")}
    for split, c in info["counts"]["per_split"].items():
        assert c["records"] == per_split[split]
    # per-domain stage counts: easy/medium from the easy_medium pool, hard from the hard pool
    for split, domains in info["counts"]["per_split_domain_stage"].items():
        for domain, stages in domains.items():
            mine = [ex for shard, ex in records if shard.startswith(split + "-") and _first(ex, "domain") == domain]
            assert stages.get("hard", 0) == sum(_first(ex, "curriculum/pool") == "hard" for ex in mine)
            assert stages.get("easy", 0) == sum(_first(ex, "curriculum/pool") == "easy_medium" for ex in mine)


def test_patient_level_splits_and_whole_image_pools(raw, built):
    out, _ = built
    from data_gen.annotations import get_adapter
    from data_gen.splits import pseudonymous_id

    cfg = _cfg(raw)
    items = get_adapter(cfg.adapter.name)(cfg.adapter).items
    patient_of = {pseudonymous_id(cfg.salt, it.source, it.image_key): it.patient_key for it in items}
    cxr_patients = [it.patient_key for it in items if it.source == "phantom_cxr"]
    assert all(p.startswith("dicom:") for p in cxr_patients), "CXR patient keys come from the DICOM PatientID"
    assert len(set(cxr_patients)) < len(cxr_patients), "the phantom has patients with several studies"
    split_of_patient, pool_of_image = {}, {}
    for _, ex in _all_records(out):
        image_id = _first(ex, "image/id")
        assert image_id in patient_of, "image/id is the salted hash of the dataset key"
        patient = patient_of[image_id]
        assert split_of_patient.setdefault(patient, _first(ex, "split")) == _first(ex, "split")
        assert pool_of_image.setdefault(image_id, _first(ex, "curriculum/pool")) == _first(ex, "curriculum/pool")


def test_resume_skips_finished_shards_and_rebuilds_missing_ones(raw, built, tmp_path):
    out, _ = built
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    before = _shard_bytes(copy)
    cfg = _cfg(raw, **{"write.records_per_shard": 8})
    info = run_build(cfg, copy, progress=False)
    assert info["generator"]["shards_resumed"] == info["generator"]["shards_total"] == len(before)
    victim = sorted(before)[0]
    os.remove(os.path.join(copy, victim))
    info = run_build(cfg, copy, progress=False)
    assert info["generator"]["shards_resumed"] == len(before) - 1
    assert _shard_bytes(copy) == before
    with pytest.raises(OutputError, match="different build.*write.records_per_shard"):
        run_build(_cfg(raw, **{"write.records_per_shard": 5}), copy, progress=False)


def test_two_workers_give_the_same_bytes(raw, built, tmp_path):
    out, _ = built
    run_build(_cfg(raw, **{"write.records_per_shard": 8}), str(tmp_path), workers=2, progress=False)
    assert _shard_bytes(str(tmp_path)) == _shard_bytes(out)


@pytest.mark.beam
def test_beam_runner_gives_the_same_bytes(raw, built, tmp_path):
    pytest.importorskip("apache_beam")
    out, _ = built
    info = run_build(_cfg(raw, **{"write.records_per_shard": 8}), str(tmp_path), runner="beam", progress=False)
    assert _shard_bytes(str(tmp_path)) == _shard_bytes(out)
    assert info["counts"]["total"]["records"] == len(_all_records(out))


def test_no_patient_identifier_reaches_any_output(raw, built):
    out, _ = built
    secrets = set()
    for path in glob.glob(os.path.join(raw, "cxr", "images", "*.dicom")):
        ds = pydicom.dcmread(path)
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "InstitutionName",
                    "AccessionNumber", "StudyInstanceUID", "SOPInstanceUID"):
            value = str(ds.get(tag, "") or "")
            if len(value) >= 4:
                secrets.add(value)
                secrets.update(part for part in value.replace("^", " ").split() if len(part) >= 4)
    assert any("PHANTOM" in s for s in secrets), "the phantom DICOMs carry fake names to look for"
    blobs = {p: open(p, "rb").read() for p in glob.glob(os.path.join(out, "*")) if os.path.isfile(p)}
    for path, blob in blobs.items():
        for s in secrets:
            assert s.encode() not in blob, f"{s!r} leaked into {path}"
    # the dataset's own image keys are replaced by salted hashes too
    keys = {row["image_id"] for row in csv.DictReader(open(os.path.join(raw, "cxr", "annotations.csv")))}
    for path, blob in blobs.items():
        for k in keys:
            assert k.encode() not in blob, f"image key {k} leaked into {path}"


def test_bad_inputs_are_skipped_counted_and_reported(raw, tmp_path):
    bad = str(tmp_path / "raw")
    shutil.copytree(raw, bad)
    images = sorted(glob.glob(os.path.join(bad, "cxr", "images", "*.dicom")))
    with open(images[0], "r+b") as f:  # truncated DICOM
        f.truncate(2000)
    with open(images[1], "wb") as f:  # not a DICOM at all
        f.write(b"this is a text file, not a radiograph\n" * 10)
    ann = os.path.join(bad, "cxr", "annotations.csv")
    rows = list(csv.DictReader(open(ann)))
    victim = next(r["image_id"] for r in rows if r["class_name"] != "No finding"
                  and r["image_id"] not in (os.path.basename(images[0])[:-6], os.path.basename(images[1])[:-6]))
    extra = [
        {"image_id": victim, "rad_id": "R99", "class_name": "Nodule", "x_min": "-40", "y_min": "10",
         "x_max": "30", "y_max": "60"},  # partly outside: clipped
        {"image_id": victim, "rad_id": "R99", "class_name": "Consolidation", "x_min": "5000", "y_min": "5000",
         "x_max": "5100", "y_max": "5100"},  # fully outside: rejected
        {"image_id": victim, "rad_id": "R98", "class_name": "Aortic enlargement", "x_min": "200", "y_min": "150",
         "x_max": "260", "y_max": "220"},  # a class the phantom does not use: kept, counted
    ]
    with open(ann, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writerows(extra)
    out = str(tmp_path / "out")
    info = run_build(_cfg(bad), out, progress=False)
    reasons = info["rejects"]["by_reason"]
    assert reasons.get("image:truncated", 0) + reasons.get("image:not_dicom", 0) >= 2, reasons
    assert reasons.get("lesion:box_outside") == 1
    assert info["stats"].get("boxes_clipped", 0) >= 1
    t = info["counts"]["total"]
    assert t["images_rejected"] == 2 and t["images_in"] == 20
    rejects = [json.loads(line) for line in open(os.path.join(out, "diagnostics", "rejects.jsonl"))]
    assert len(rejects) == info["rejects"]["total"]
    assert all(r["reason"] and r["item"] for r in rejects)
    classes = {_first(ex, "lesion/class") for _, ex in _all_records(out)}
    assert "aortic enlargement" in classes


def test_stratified_pools_give_every_domain_both_pools():
    from data_gen.splits import stratified_pools

    images = [(f"img{i}", ["nodule_xray"]) for i in range(10)]
    images += [("a", ["cyst_ct"]), ("b", ["cyst_ct", "mass_ct"]), ("c", ["x_ct"]), ("d", ["mass_ct"])]
    pools = stratified_pools("salt", images, 0.3)
    assert [pools[f"img{i}"] for i in range(10)].count("hard") == 3
    for domain in ("cyst_ct", "mass_ct"):  # two images each, one shared: both pools in both domains
        members = [pools[i] for i, ds in images if domain in ds]
        assert sorted(members) == ["easy_medium", "hard"], (domain, members)
    assert pools["c"] == "easy_medium"  # a single image cannot be in both pools; Easy/Medium come first
    assert stratified_pools("salt", list(reversed(images)), 0.3) == pools  # order of the input does not matter
    assert set(stratified_pools("salt", images, 0.0).values()) == {"easy_medium"}


def test_train_domains_with_two_images_have_both_pools(built):
    out, _ = built
    pools_by_domain = {}
    for shard, ex in _all_records(out):
        if shard.startswith("train-"):
            pools_by_domain.setdefault(_first(ex, "domain"), {})[_first(ex, "image/id")] = \
                _first(ex, "curriculum/pool")
    assert pools_by_domain
    for domain, pools in pools_by_domain.items():
        if len(pools) >= 2:
            assert set(pools.values()) == {"easy_medium", "hard"}, (domain, pools)


def test_the_salt_is_stored_only_as_a_one_way_fingerprint(raw, tmp_path):
    """With the salt, image ids can be recomputed from the source keys: it must not travel with the dataset."""
    salt = "hospital-secret-7f3a9c"
    out = str(tmp_path / "out")
    info = run_build(_cfg(raw, salt=salt), out, workers=1, progress=False)
    assert info["config"]["salt"] == salt_fingerprint(salt) != salt_fingerprint("medclm")
    for path in glob.glob(os.path.join(out, "**", "*"), recursive=True):
        if os.path.isfile(path):
            assert salt.encode() not in open(path, "rb").read(), f"the salt leaked into {path}"
