"""data_gen on real users' folders: every situation is recreated on data the test writes (phantom data or small
fixture files in the adapters' layouts) and checked against what the user must see.

  * paths from annotation files stay inside the dataset; only regular files are opened;
  * DICOMs that may show names or dates in their pixels are rejected unless the user allows them;
  * the LLM endpoint is local unless allowed, checked before the first image, and sent only the image and seed text;
  * a bad config value fails before the first image, naming the key, the value and the choices;
  * every input is accounted for (unannotated images, repeated rows);
  * broken annotation and config files give one line naming the file and what to do.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import socket

import numpy as np
import pydicom
import pytest
from local_http import JSONHandler, serve
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

from data_gen import phantom
from data_gen.annotations import get_adapter
from data_gen.config import load_dataset_config, validate
from data_gen.errors import ConfigError, InputError
from data_gen.imaging import ImageOptions, load_image
from data_gen.pipeline import convert_image
from data_gen.synth import endpoint, get_synthesizer, preflight, usage
from data_gen.synth.settings import SynthSettings
from data_gen.types import ImageItem
from medclm_jax.config_file import ConfigFileError, load_config
from medclm_jax.records import schema as S


@pytest.fixture(scope="module")
def phantom_master(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("phantom_master"))
    phantom.write_phantom(root, 4, seed=5, cxr_size=160, ct_size=160)
    return root


@pytest.fixture
def raw(phantom_master, tmp_path):
    """A private copy of the phantom (2 radiographs, 2 CT slices) that the test may damage."""
    root = str(tmp_path / "phantom")
    shutil.copytree(phantom_master, root)
    return root


def _cfg(root, *sets):
    return load_dataset_config("phantom", f"root={root}", list(sets))


def _adapter(cfg):
    return get_adapter(cfg.adapter.name)(cfg.adapter)


def _accounted(stats) -> bool:
    return stats["rows"] == (stats["lesions"] + stats["merged_boxes"] + stats["no_finding_rows"]
                             + stats["rows_rejected"])


def _write(path, text, mode="w"):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, mode) as f:
        f.write(text)
    return str(path)


def _png(path, size=(8, 8)):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(np.arange(size[0] * size[1], dtype=np.uint8).reshape(size)).save(str(path))
    return str(path)


def _cxr_items(cfg):
    return sorted((it for it in _adapter(cfg).items if it.modality == "xray"), key=lambda it: it.image_key)


def _convert(item, cfg, synthesizer=None):
    validate(cfg)
    return convert_image(item, cfg, {"xray": ["nodule"]}, synthesizer)


# ---------------------------------------------------------------------------------------------------------------
# Paths from annotation files stay inside the dataset.


def test_json_paths_outside_the_root_are_rejected_alike_whether_or_not_they_exist(tmp_path):
    root = tmp_path / "dataset"
    _png(root / "imgs" / "ok.png")
    secret = _png(tmp_path / "secret.png")  # outside the dataset
    os.symlink(secret, root / "imgs" / "link.png")  # inside by name, outside once resolved
    box = [{"bbox": [1, 1, 5, 5], "class": "nodule"}]
    entries = [
        {"image_path": "imgs/ok.png", "annotations": box},
        {"image_path": "../secret.png", "image_id": "a", "annotations": box},  # exists
        {"image_path": "../missing.png", "image_id": "b", "annotations": box},  # does not exist
        {"image_path": secret, "annotations": box},  # absolute
        {"image_path": "/dev/zero", "annotations": box},
        {"image_path": "imgs/link.png", "annotations": box},
        {"image_path": "imgs/ok.png", "image_id": "c", "anatomy_path": "../elsewhere", "annotations": box},
        {"image_path": "../secret.png", "image_id": "a", "annotations": box + box},  # a later entry of image a
    ]
    _write(root / "annotations.json", json.dumps(entries))
    aset = _adapter(load_dataset_config("generic_json", f"root={root}"))
    assert [it.image_key for it in aset.items] == ["imgs/ok.png"]
    reasons = [(r.item, r.reason) for r in aset.rejects]
    assert reasons == [("annotations.json:[1]", "outside_root"), ("annotations.json:[2]", "outside_root"),
                       ("annotations.json:[3]", "outside_root"), ("annotations.json:[4]", "outside_root"),
                       ("annotations.json:[5]", "outside_root"), ("annotations.json:[6]", "outside_root"),
                       ("annotations.json:[7]", "image_rejected")]
    exists, missing = aset.rejects[0].detail, aset.rejects[1].detail
    assert exists.replace("../secret.png", "X") == missing.replace("../missing.png", "X")  # tells nothing
    assert "adapter.root" in exists and secret not in aset.rejects[4].detail  # the link's target is not shown
    assert aset.stats["reject:outside_root"] == 6 and _accounted(aset.stats)


def test_coco_file_names_and_vindr_ids_cannot_leave_the_dataset(tmp_path, raw):
    root = tmp_path / "coco"
    _png(root / "images" / "a.png")
    outside = _png(tmp_path / "outside.png")
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": outside},
                       {"id": 3, "file_name": "../../outside.png"}],
            "annotations": [{"id": 9, "image_id": 2, "category_id": 1, "bbox": [1, 1, 3, 3]},
                            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3]}],
            "categories": [{"id": 1, "name": "nodule"}]}
    _write(root / "annotations.json", json.dumps(coco))
    aset = _adapter(load_dataset_config("coco", f"root={root}"))
    assert [it.image_key for it in aset.items] == ["1"]
    assert {(r.item, r.reason) for r in aset.rejects} == {
        ("annotations.json:images[1]", "outside_root"), ("annotations.json:images[2]", "outside_root"),
        ("annotations.json:annotations[0]", "image_rejected")}
    assert _accounted(aset.stats)

    # VinDr layout (the phantom's radiographs): an image_id that climbs out of the image folder
    with open(os.path.join(raw, "cxr", "annotations.csv"), "a") as f:
        f.write("../../../../outside,R1,Nodule,1,1,9,9\n../../../../outside,R2,Nodule,1,1,9,9\n")
    aset = _adapter(_cfg(raw))
    got = [(r.reason, r.item.rsplit(":", 1)[1]) for r in aset.rejects]
    n = sum(1 for _ in open(os.path.join(raw, "cxr", "annotations.csv")))
    assert got == [("outside_root", str(n - 1)), ("image_rejected", str(n))]
    assert all("outside" not in it.path for it in aset.items) and _accounted(aset.stats)


def test_only_regular_files_are_opened(tmp_path, raw):
    fifo = str(tmp_path / "fifo.dcm")
    os.mkfifo(fifo)  # opening it for reading would block forever
    for path, reason in ((fifo, "not_a_file"), ("/dev/zero", "not_a_file"),
                         (str(tmp_path / "nope.dcm"), "missing_file")):
        with pytest.raises(InputError) as e:
            load_image(ImageItem(path=path, source="t", image_key="k", patient_key="p"))
        assert e.value.reason == reason and path in str(e.value)

    cfg = _cfg(raw)
    item = _cxr_items(cfg)[0]
    with pytest.raises(InputError) as e:
        load_image(item, ImageOptions(max_file_mb=0.001))
    assert e.value.reason == "too_large" and "image.max_file_mb" in str(e.value)

    # a FIFO in place of a phantom radiograph: the adapter (which reads PatientID from each header) and the
    # conversion pass it by; it becomes a counted reject, not a hung build
    os.remove(item.path)
    os.mkfifo(item.path)
    aset = _adapter(cfg)
    assert aset.stats["patient_key_unreadable"] == 1
    result = _convert(next(it for it in aset.items if it.path == item.path), cfg)
    assert not result.examples and result.rejects[0].reason == "not_a_file"


# ---------------------------------------------------------------------------------------------------------------
# Burned-in text.


def test_burned_in_annotation_and_unflagged_secondary_capture_are_rejected_unless_allowed(raw):
    cfg = _cfg(raw)
    burned, capture = _cxr_items(cfg)
    ds = pydicom.dcmread(burned.path)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(burned.path)
    ds = pydicom.dcmread(capture.path)
    del ds.BurnedInAnnotation
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.save_as(capture.path)

    for item, reason, key in ((burned, "burned_in_annotation", "image.burned_in_annotation"),
                              (capture, "secondary_capture", "image.secondary_capture")):
        result = _convert(item, cfg)
        assert not result.examples and result.rejects[0].reason == reason and key in result.rejects[0].detail
        assert {r.reason for r in result.rejects[1:]} == {"image_rejected"}  # its lesions, counted
        allowed = _convert(item, _cfg(raw, f"{key}=allow"))
        assert allowed.examples and not [r for r in allowed.rejects if r.kind == "image"]

    # a Secondary Capture whose tag says NO is read
    ds.BurnedInAnnotation = "NO"
    ds.save_as(capture.path)
    assert load_image(capture, cfg.image).pixels.size


# ---------------------------------------------------------------------------------------------------------------
# Bad configuration fails at the start, naming the key, the value and the valid choices.


@pytest.mark.parametrize("sets,expected", [
    (["masks.source=pngdir"], ["masks.source", "'pngdir'", "png_dir"]),
    (["image.ct_window=lungs"], ["image.ct_window", "'lungs'", "mediastinum"]),
    (["image.xray_voi=sigmoid"], ["image.xray_voi", "'sigmoid'", "percentile"]),
    (["image.max_side=0"], ["image.max_side", ">= 1", "0"]),
    (["image.max_side=-8"], ["image.max_side", "-8"]),
    (["image.max_file_mb=0"], ["image.max_file_mb", "> 0"]),
    (["image.burned_in_annotation=maybe"], ["image.burned_in_annotation", "'maybe'", "'allow'"]),
    (["image.secondary_capture=yes"], ["image.secondary_capture", "'yes'", "'reject'"]),
    (["split.val=1.2"], ["split.val=1.2", "[0, 1)"]),
    (["split.test=-0.1"], ["split.test=-0.1", "[0, 1)"]),
    (["split.val=0.6", "split.test=0.5"], ["split.val=0.6", "split.test=0.5", "sum below 1"]),
    (["curriculum.hard_fraction=1"], ["curriculum.hard_fraction", "[0, 1)", "1"]),
    (["write.records_per_shard=0"], ["write.records_per_shard", ">= 1", "0"]),
    (["link.min_score=1.5"], ["link.min_score", "[0, 1]", "1.5"]),
    (["synth.backend=gpt"], ["synth.backend", "'gpt'", "'llm'"]),
    (["synth.backend=llm", "synth.llm.temperature=-1"], ["synth.llm.temperature", "-1"]),
    (["synth.backend=llm", "synth.llm.base_url=http://93.184.216.34/v1"], ["synth.llm.allow_remote=true",
                                                                           "93.184.216.34"]),
])
def test_bad_values_fail_before_the_first_image(phantom_master, sets, expected):
    cfg = _cfg(phantom_master, *sets)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert all(text in str(e.value) for text in expected), str(e.value)


@pytest.mark.parametrize("sets,expected", [
    (["adapter.options.merge=union"], ["adapter.options.merge", "'union'", "'iou'"]),
    (["adapter.options.merge_iou=0"], ["adapter.options.merge_iou", "(0, 1]", "0"]),
    (["adapter.options.patient_key=dcm"], ["adapter.options.patient_key", "'dcm'", "'dicom'"]),
    (["adapter.options.duplicates=keep"], ["adapter.options.duplicates", "'keep'", "'merge'"]),
])
def test_bad_adapter_options_fail_when_the_adapter_loads(phantom_master, sets, expected):
    with pytest.raises(ConfigError) as e:
        _adapter(_cfg(phantom_master, *sets))
    assert all(text in str(e.value) for text in expected), str(e.value)


def test_ct_window_pairs_and_the_default_config_are_checked(phantom_master):
    validate(_cfg(phantom_master))  # the shipped config passes
    assert ImageOptions.from_config({"ct_window": [40, 400]}).ct_window == (40.0, 400.0)
    for bad, text in (((40, -5), "width -5"), ((40,), "(center, width)"), (7, "(center, width)")):
        with pytest.raises(ConfigError, match="image.ct_window") as e:
            ImageOptions.from_config({"ct_window": bad})
        assert text in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# The LLM endpoint: local unless allowed, checked before the first image, sent only the image and seed text.


@contextlib.contextmanager
def openai_server(models=("m",), models_status=200):
    """A loopback OpenAI-compatible server: GET /v1/models, POST /v1/chat/completions (a fixed, unhelpful reply).
    Yields a log with the base_url and every chat request body."""
    log = {"bodies": []}

    class Handler(JSONHandler):
        def do_GET(self):
            self.send_json(models_status, {"object": "list", "data": [{"id": m} for m in models]})

        def do_POST(self):
            log["bodies"].append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_json(200, {"choices": [{"message": {"content": "Question: Is it? | Answer: yes"}}]})

    with serve(Handler) as base_url:
        log["base_url"] = base_url
        yield log


def _llm(base_url, **llm):
    return {"backend": "llm", "llm": {"base_url": base_url, "model": "m", "api_key_env": "", "retries": 0,
                                      "timeout_s": 5.0, "backoff_s": 0.0, **llm}}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_endpoint_that_does_not_answer_stops_the_build_unless_fallback_is_allowed():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    with pytest.raises(ConfigError) as e:
        preflight(_llm(url))
    assert "does not answer" in str(e.value) and "synth.llm.allow_fallback=true" in str(e.value)
    lines = preflight(_llm(url, allow_fallback=True))
    assert lines[0].startswith("synth: llm backend 'm' at 127.0.0.1") and "fall back to templates" in lines[1]
    assert preflight({"backend": "template"}) == []

    with openai_server() as log:
        assert preflight(_llm(log["base_url"])) == ["synth: llm backend 'm' at 127.0.0.1 (this machine or network)"]
        with pytest.raises(ConfigError, match="does not serve synth.llm.model 'other'"):
            preflight(_llm(log["base_url"], model="other"))
    with openai_server(models_status=401) as log:
        with pytest.raises(ConfigError, match="refused the API key"):
            preflight(_llm(log["base_url"]))
    with openai_server(models_status=404) as log:  # a server without /models is reachable
        assert len(preflight(_llm(log["base_url"]))) == 1


def test_remote_endpoints_need_an_explicit_opt_in(monkeypatch):
    for host, scope in (("127.0.0.1", "local"), ("localhost", "local"), ("10.2.3.4", "local"),
                        ("192.168.1.9", "local"), ("169.254.3.3", "local"), ("100.100.1.1", "local"),
                        ("::1", "local"), ("fd12::1", "local"), ("8.8.8.8", "remote"), ("2001:4860::8888", "remote")):
        assert endpoint.host_scope(host) == scope, host
    answers = {"gpu.lan": "192.168.0.7", "api.example.com": "93.184.216.34"}

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            raise socket.gaierror("no such host")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], 0))]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert [endpoint.host_scope(h) for h in ("gpu.lan", "api.example.com", "nowhere")] == ["local", "remote",
                                                                                           "unresolved"]
    with pytest.raises(ConfigError, match="synth.llm.allow_remote=true"):
        preflight(_llm("https://api.example.com/v1"))  # a name is resolved before anything is sent
    with pytest.raises(ConfigError, match="allow_remote"):
        SynthSettings.from_config(_llm("http://8.8.8.8/v1"))  # an address literal fails at config time
    assert SynthSettings.from_config(_llm("http://8.8.8.8/v1", allow_remote=True)).llm.allow_remote


def test_the_vlm_gets_the_windowed_image_and_seed_text_and_nothing_that_identifies(raw):
    cfg = _cfg(raw)
    item = _cxr_items(cfg)[0]
    ds = pydicom.dcmread(item.path)
    with openai_server() as log:
        cfg.synth.backend = "llm"
        cfg.synth.llm.update({"base_url": log["base_url"], "model": "m", "api_key_env": "", "retries": 0,
                              "backoff_s": 0.0})
        synthesizer = get_synthesizer(cfg.synth)
        result = _convert(item, cfg, synthesizer)
    assert result.examples and log["bodies"]
    stored = np.asarray(Image.open(io.BytesIO(result.examples[0][S.IMAGE_ENCODED])))
    forbidden = [item.path, os.path.basename(item.path), item.image_key, result.image_id, raw, str(ds.PatientID),
                 str(ds.PatientName), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)]
    images = 0
    for body in log["bodies"]:
        assert not [f for f in forbidden if f and f in body]
        content = json.loads(body)["messages"][1]["content"]
        for part in content:
            if part["type"] == "image_url":
                images += 1
                url = part["image_url"]["url"]
                sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
                assert sent.shape[:2] == stored.shape[:2]  # the stored (windowed, resized) image, nothing else
    assert synthesizer.stats["images_sent:127.0.0.1"] == images == len(log["bodies"])
    # the unhelpful replies fall back per record: counted, and reported as a share at the end
    stats = dict(result.stats)
    stats.update(usage.backend_counters(synthesizer))
    summary = usage.summarize(stats, "llm")
    assert summary["fallback_records"] == len(result.examples) and summary["fallback_share"] == 1.0
    assert summary["images_sent"] == {"127.0.0.1": images}
    lines = usage.format_usage(summary)
    assert f"synth: 127.0.0.1 received {images} images" in lines and lines[-1].startswith("warning")


def test_usage_summary_by_hand():
    stats = {"synth:llm": 117, "synth:template_fallback:timeout": 2, "synth:template_fallback:no_box": 1,
             "synth_backend:images_sent:10.0.0.5": 354, "synth_backend:requests": 360, "records": 999}
    summary = usage.summarize(stats, "llm")
    assert summary == {"backend": "llm", "records_by_vlm": 117, "fallback_records": 3, "fallback_share": 0.025,
                       "fallback_reasons": {"no_box": 1, "timeout": 2}, "images_sent": {"10.0.0.5": 354},
                       "requests": 360, "cache_hits": 0}
    assert usage.format_usage(summary) == [
        "synth: 117 of 120 records by the VLM, 3 template fallbacks (2.5%: no_box 1, timeout 2)",
        "synth: 10.0.0.5 received 354 images"]
    assert usage.summarize(stats, "template") == {"backend": "template"}
    assert usage.format_usage({"backend": "template"}) == []


# ---------------------------------------------------------------------------------------------------------------
# Every input is accounted for.


def test_images_without_an_annotation_row_are_counted(tmp_path, raw):
    assert _adapter(_cfg(raw)).stats["unannotated_images"] == 0
    images = os.path.join(raw, "cxr", "images")
    first = sorted(os.listdir(images))[0]
    shutil.copy(os.path.join(images, first), os.path.join(images, "never_annotated.dicom"))
    shutil.copy(os.path.join(images, first), os.path.join(images, "notes.txt"))  # not an image name
    aset = _adapter(_cfg(raw))
    assert aset.stats["unannotated_images"] == 1 and "never_annotated" not in {it.image_key for it in aset.items}

    root = tmp_path / "coco"
    for name in ("a.png", "sub/b.png", "sub/stray.png", "stray.jpg"):
        _png(root / "images" / name)
    coco = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "sub/b.png"}],
            "annotations": [], "categories": []}
    _write(root / "annotations.json", json.dumps(coco))
    assert _adapter(load_dataset_config("coco", f"root={root}")).stats["unannotated_images"] == 2


def _double_rows(raw):
    path = os.path.join(raw, "cxr", "annotations.csv")
    with open(path) as f:
        header, *rows = f.read().splitlines()
    _write(path, "\n".join([header] + rows + rows) + "\n")
    return sum(1 for r in rows if r.split(",")[3])  # rows with a box


def test_repeated_rows_never_become_duplicate_records(raw, phantom_master):
    def lesions(aset):
        return sorted((it.image_key, les.label, les.box) for it in aset.items for les in it.lesions)

    single = {m: _adapter(_cfg(phantom_master, f"adapter.options.merge={m}")) for m in ("none", "iou")}
    boxed = _double_rows(raw)
    for merge in ("none", "iou"):
        doubled = _adapter(_cfg(raw, f"adapter.options.merge={merge}"))
        assert lesions(doubled) == lesions(single[merge])  # the same boxes: not twice, and means not skewed
        assert doubled.stats["duplicate_rows"] == boxed and _accounted(doubled.stats)
        assert doubled.stats["merged_boxes"] == single[merge].stats["merged_boxes"] + boxed
    rejected = _adapter(_cfg(raw, "adapter.options.merge=none", "adapter.options.duplicates=reject"))
    assert lesions(rejected) == lesions(single["none"])
    assert rejected.stats["reject:duplicate_row"] == boxed and _accounted(rejected.stats)
    assert "repeats cxr/annotations.csv:2" in next(r.detail for r in rejected.rejects if r.reason == "duplicate_row")


# ---------------------------------------------------------------------------------------------------------------
# Broken files: one line naming the file and what to do.


def _vindr_csv(root, body: bytes):
    return _write(root / "annotations" / "annotations_train.csv",
                  b"image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n" + body, "wb")


@pytest.mark.parametrize("name,body,reason,hint", [
    ("vindr_cxr", b"a,R1,Nodule,1,1,5,5\nb,R1,N\xe9odule,1,1,5,5\n", "not_utf8", "line 3"),  # Latin-1
    ("vindr_cxr", b'a,R1,"Nodule,1,1,5,5\n' + b"x" * (129 * 1024) + b"\n", "bad_csv", "line 2"),  # unclosed quote
    ("generic_json", b"[" * 100_000 + b"]" * 100_000, "bad_json", "nested too deeply"),
    ("generic_json", '[{"image_path": "caf\u00e9.png"}]'.encode("latin-1"), "not_utf8", "line 1"),
])
def test_broken_annotation_files_are_one_line_errors(tmp_path, name, body, reason, hint):
    if name == "vindr_cxr":
        path = _vindr_csv(tmp_path, body)
    else:
        path = _write(tmp_path / "annotations.json", body, "wb")
    with pytest.raises(InputError) as e:
        _adapter(load_dataset_config(name, f"root={tmp_path}"))
    message = str(e.value)
    assert e.value.reason == reason and message.startswith(path) and hint in message and "\n" not in message


def test_a_coco_image_id_that_is_a_list_rejects_that_entry(tmp_path):
    _png(tmp_path / "images" / "a.png")
    coco = {"images": [{"id": [1, 2], "file_name": "a.png"}, {"id": 3, "file_name": "a.png"}],
            "annotations": [{"id": 1, "image_id": [1, 2], "category_id": 1, "bbox": [1, 1, 2, 2]}],
            "categories": [{"id": 1, "name": "nodule"}]}
    _write(tmp_path / "annotations.json", json.dumps(coco))
    aset = _adapter(load_dataset_config("coco", f"root={tmp_path}"))
    assert [it.image_key for it in aset.items] == ["3"]
    assert [(r.item, r.reason) for r in aset.rejects] == [("annotations.json:images[0]", "bad_id"),
                                                          ("annotations.json:annotations[0]", "unknown_image")]


def test_a_symlink_loop_in_the_nih_layout_names_the_folder(tmp_path):
    _write(tmp_path / "BBox_List_2017.csv", "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                                            "00000001_000.png,Nodule,10,10,20,20\n")
    _png(tmp_path / "images_002" / "images" / "00000001_000.png")
    os.makedirs(tmp_path / "images_001")
    os.symlink("images", tmp_path / "images_001" / "images")  # points at itself
    with pytest.raises(InputError) as e:
        _adapter(load_dataset_config("nih_cxr14", f"root={tmp_path}"))
    assert e.value.reason == "unreadable_folder" and str(tmp_path / "images_001" / "images") in str(e.value)


def test_a_config_file_with_a_syntax_error_names_the_line(tmp_path):
    path = _write(tmp_path / "mine.py", "def get_config(arg=None):\n    x = [1, 2\n    return x\n")
    with pytest.raises(ConfigFileError) as e:
        load_config(f"{path}:")
    assert str(path) in str(e.value) and "line 2" in str(e.value) and "\n" not in str(e.value)

