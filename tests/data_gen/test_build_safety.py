"""A build on a user's real folders: it never destroys or leaks their files and never keeps stale output.

Each test recreates one situation a hospital team ran into, on phantom data it writes itself: `--out` pointed at
the dataset, a non-empty folder, `--overwrite` next to the user's own files, a different salt, a moved box, a
fixed DICOM, a folder named after a patient, SIGTERM on a two-worker build, an unwritable `--out`, and a build in
which most images fail for one reason.
"""

import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from local_http import JSONHandler, hung_llm, llm_build_sets, serve

from data_gen import phantom
from data_gen.build import MANIFEST, OutputError, build_failure, run_build
from data_gen.commands import build as build_command
from data_gen.config import load_dataset_config
from data_gen.dataset_info import salt_fingerprint
from data_gen.splits import pseudonymous_id
from medclm_jax.records import decode_example, read_tfrecord

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "data", "phantom.py")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("safety") / "dataset")
    phantom.write_phantom(root, 8, seed=5)
    return root


def _copy(raw, tmp_path, name="dataset"):
    return shutil.copytree(raw, str(tmp_path / name))


def _cfg(root, *sets):
    return load_dataset_config("phantom", f"root={root}", list(sets))


def _snapshot(folder):
    """{relative path: bytes} of every file under `folder`."""
    out = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if os.path.isfile(path):
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def _records(out):
    return [decode_example(r) for p in sorted(glob.glob(os.path.join(out, "*.tfrecord"))) for r in read_tfrecord(p)]


def _rejects(out):
    return [json.loads(line) for line in open(os.path.join(out, "diagnostics", "rejects.jsonl"))]


# ---- the user's files are never destroyed ---------------------------------------------------------------------


def test_out_is_never_the_dataset_nor_a_folder_holding_it(raw, tmp_path, capsys):
    root = _copy(raw, tmp_path)
    before = _snapshot(root)
    for out in (root, str(tmp_path)):
        for overwrite in (False, True):
            with pytest.raises(OutputError, match="input folder"):
                run_build(_cfg(root), out, overwrite=overwrite, progress=False)
    with pytest.raises(SystemExit) as e:  # the command: one line, status 2
        build_command.main(["--config", f"{CONFIG}:root={root}", "--out", root, "--overwrite", "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and root in err and "Traceback" not in err
    assert _snapshot(root) == before, "the dataset was touched"


def test_out_inside_the_dataset_only_when_asked(raw, tmp_path):
    root = _copy(raw, tmp_path)
    before = _snapshot(root)
    out = os.path.join(root, "derived")
    with pytest.raises(OutputError, match="inside the input folder.*--allow-out-inside-root"):
        run_build(_cfg(root), out, progress=False)
    assert not os.path.exists(out)
    for overwrite in (False, True):
        run_build(_cfg(root), out, overwrite=overwrite, allow_out_inside_root=True, progress=False)
    after = _snapshot(root)
    assert {k: v for k, v in after.items() if not k.startswith("derived" + os.sep)} == before


def test_a_build_never_writes_into_a_folder_of_someone_else(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000-of-00001.tfrecord").write_bytes(b"the user's own file")  # a shard's name, by chance
    (out / "notes.txt").write_text("mine")
    before = _snapshot(str(out))
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="not empty and holds no medclm-data build"):
            run_build(_cfg(raw), str(out), overwrite=overwrite, progress=False)
    assert _snapshot(str(out)) == before


def test_overwrite_removes_only_what_the_build_wrote(raw, tmp_path):
    out = str(tmp_path / "out")
    run_build(_cfg(raw, "write.records_per_shard=2"), out, progress=False)
    old_shards = {os.path.basename(p) for p in glob.glob(os.path.join(out, "*.tfrecord"))}
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("the user's notes, next to the build")
    with open(os.path.join(out, "diagnostics", "triage.txt"), "w") as f:
        f.write("the user's triage of the rejects")
    with open(os.path.join(out, ".draft.tmp"), "w") as f:  # a hidden temp name, but not one of the writer's
        f.write("an editor's swap file")
    with pytest.raises(OutputError, match="different build.*write.records_per_shard"):
        run_build(_cfg(raw, "write.records_per_shard=50"), out, progress=False)
    run_build(_cfg(raw, "write.records_per_shard=50"), out, overwrite=True, progress=False)
    new_shards = {os.path.basename(p) for p in glob.glob(os.path.join(out, "*.tfrecord"))}
    assert old_shards - new_shards, "the plan changed: some old shard names are gone"
    manifest = json.load(open(os.path.join(out, MANIFEST)))
    assert set(manifest["shards"]) == new_shards
    assert open(os.path.join(out, "notes.txt")).read() == "the user's notes, next to the build"
    assert open(os.path.join(out, "diagnostics", "triage.txt")).read() == "the user's triage of the rejects"
    ours = {n for s in new_shards for n in (s, s + ".index", s + ".summary.json")}
    assert set(os.listdir(out)) == ours | {"notes.txt", ".draft.tmp", "diagnostics", "dataset_info.json", MANIFEST}


def test_a_resume_with_another_salt_is_refused(raw, tmp_path):
    out = str(tmp_path / "out")
    run_build(_cfg(raw, "salt=site-a-secret"), out, progress=False)
    with pytest.raises(OutputError, match=f"another salt.*{salt_fingerprint('site-a-secret')}.*--overwrite"):
        run_build(_cfg(raw, "salt=site-b-secret"), out, progress=False)
    info = run_build(_cfg(raw, "salt=site-b-secret"), out, overwrite=True, progress=False)
    assert info["config"]["salt"] == salt_fingerprint("site-b-secret")
    assert "site-b-secret" not in open(os.path.join(out, MANIFEST)).read()


# ---- a re-run never keeps stale output --------------------------------------------------------------------------


def _move_first_ct_box(root, dx):
    """Moves the first lesion box of DL_info.csv by `dx` pixels (same row count); returns (image key, new box
    normalized by the image size)."""
    path = os.path.join(root, "ct", "DL_info.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    x1, y1, x2, y2 = (float(v) for v in rows[0]["Bounding_boxes"].split(","))
    rows[0]["Bounding_boxes"] = ", ".join(f"{v:.3f}" for v in (x1 + dx, y1, x2 + dx, y2))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    width, height = (float(v) for v in rows[0]["Image_size"].split(","))
    return rows[0]["File_name"], [(x1 + dx) / width, y1 / height, (x2 + dx) / width, y2 / height]


def _boxes_of(out, image_id):
    return [list(ex["lesion/box"]) for ex in _records(out) if ex["image/id"][0].decode() == image_id]


def test_a_moved_box_rebuilds_its_shard_and_only_it(raw, tmp_path):
    root = _copy(raw, tmp_path)
    out = str(tmp_path / "out")
    cfg = _cfg(root, "write.records_per_shard=2")
    run_build(cfg, out, progress=False)
    shards = sorted(glob.glob(os.path.join(out, "*.tfrecord")))
    stamps = {p: os.stat(p).st_mtime_ns for p in shards}
    key, new_box = _move_first_ct_box(root, dx=12.0)
    image_id = pseudonymous_id(cfg.salt, "phantom_ct", key)
    assert not any(b == pytest.approx(new_box, abs=1e-4) for b in _boxes_of(out, image_id))

    info = run_build(_cfg(root, "write.records_per_shard=2"), out, progress=False)
    assert any(b == pytest.approx(new_box, abs=1e-4) for b in _boxes_of(out, image_id)), "the record has the new box"
    changed = [p for p in shards if os.stat(p).st_mtime_ns != stamps[p]]
    assert len(changed) == 1 and info["generator"]["shards_rebuilt_changed_inputs"] == 1
    assert info["generator"]["shards_resumed"] == len(shards) - 1

    _move_first_ct_box(root, dx=-12.0)  # and back, with --overwrite: a full rebuild from the current inputs
    run_build(_cfg(root, "write.records_per_shard=2"), out, overwrite=True, progress=False)
    assert not any(b == pytest.approx(new_box, abs=1e-4) for b in _boxes_of(out, image_id))


def test_a_fixed_dicom_loses_its_old_reject(raw, tmp_path):
    root = _copy(raw, tmp_path)
    out = str(tmp_path / "out")
    dicom = sorted(glob.glob(os.path.join(root, "cxr", "images", "*.dicom")))[0]
    good = open(dicom, "rb").read()
    with open(dicom, "r+b") as f:
        f.truncate(2000)
    cfg = _cfg(root)
    info = run_build(cfg, out, progress=False)
    assert info["counts"]["total"]["images_rejected"] == 1
    assert any(r["kind"] == "image" and r["path"] == os.path.relpath(dicom, root) for r in _rejects(out))

    with open(dicom, "wb") as f:  # the user fixes the file
        f.write(good)
    info = run_build(_cfg(root), out, progress=False)
    assert info["counts"]["total"]["images_rejected"] == 0 and info["rejects"]["total"] == 0
    assert _rejects(out) == []
    key = os.path.basename(dicom)[:-len(".dicom")]
    assert _boxes_of(out, pseudonymous_id(cfg.salt, "phantom_cxr", key)), "the fixed image has its records"


# ---- nothing identifying leaves in the dataset ------------------------------------------------------------------


def test_a_folder_named_after_a_patient_stays_out_of_the_dataset(raw, tmp_path):
    root = _copy(raw, tmp_path, "DOE_JOHN_19010203")
    bad = sorted(glob.glob(os.path.join(root, "cxr", "images", "*.dicom")))[1]
    with open(bad, "r+b") as f:  # a reject whose detail names the file
        f.truncate(2000)
    out = str(tmp_path / "out")
    run_build(_cfg(root, "masks.root=" + os.path.join(root, "cxr", "masks")), out, progress=False)
    secrets = ["DOE_JOHN", "19010203", root, os.path.realpath(root)]
    secrets += [os.path.basename(p).split(".")[0] for p in glob.glob(os.path.join(root, "*", "images", "*"))]
    secrets += [os.path.basename(p) for p in glob.glob(os.path.join(root, "ct", "Images_png", "*"))]
    dataset = {k: v for k, v in _snapshot(out).items() if not k.startswith("diagnostics" + os.sep)}
    assert any(k.endswith(".summary.json") for k in dataset) and "dataset_info.json" in dataset
    for name, blob in dataset.items():
        for s in secrets:
            assert s.encode() not in blob, f"{s!r} leaked into {name}"
    # the one diagnostic that must name sources names them relative to the root
    diagnostics = open(os.path.join(out, "diagnostics", "rejects.jsonl")).read()
    assert os.path.relpath(bad, root) in diagnostics
    assert root not in diagnostics and "DOE_JOHN" not in diagnostics


# ---- processes and messages -------------------------------------------------------------------------------------


def _children(pid):
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def _alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads worker processes from /proc")
def test_sigterm_stops_every_worker_and_says_how_to_resume(raw, tmp_path):
    # An LLM endpoint that passes the start-up check (it lists the model) and then never answers a request keeps
    # the workers busy, as a hung server would.
    release = threading.Event()

    server = serve(hung_llm(release))
    base_url = server.__enter__()
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "data_gen.cli", "build", "--config", f"{CONFIG}:root={raw}", "--out", out,
           "--workers", "2", "--no-progress", *llm_build_sets(base_url)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    workers, err = [], ""
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            workers = _children(proc.pid)
        assert len(workers) >= 2, f"the build did not start its workers: {proc.communicate()}"
        time.sleep(0.5)  # let them reach the hung endpoint
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)  # the workers hold the pipes too: this returns once all are gone
    finally:
        if proc.poll() is None:
            proc.kill()
        survivors = [w for w in workers if _alive(w)]
        for w in survivors:  # orphans of a failed run hold the pipes open; they are this test's own processes
            os.kill(w, signal.SIGKILL)
        release.set()
        server.__exit__(None, None, None)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM" in err and "run the same command again" in err and "Traceback" not in err
    assert not survivors, "a worker outlived the build"
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")], "half-written shards were left behind"


def test_an_unwritable_out_is_one_line(raw, tmp_path, capsys):
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = str(locked / "out")
    else:  # root writes through permission bits; /sys refuses new entries
        out = "/sys/medclm_data_test_out"
    with pytest.raises(SystemExit) as e:
        build_command.main(["--config", f"{CONFIG}:root={raw}", "--out", out, "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and out in err and "choose a folder you can write to" in err, err


def _info(images_in, written, by_reason, records=None):
    rejected = images_in - written
    return {"counts": {"total": {"images_in": images_in, "images_written": written, "images_rejected": rejected,
                                 "records": written if records is None else records}},
            "rejects": {"by_reason": by_reason}}


def test_the_failure_rule():
    assert "8 of 8 images (100%)" in build_failure(_info(8, 0, {"image:not_dicom": 8}), max_share=1.0)
    assert build_failure(_info(8, 5, {"image:not_dicom": 3}), max_share=0.5) is None
    assert "5 of 8 images" in build_failure(_info(8, 3, {"image:truncated": 5}), max_share=0.5)
    # every image failed, for different reasons: still a failed build
    message = build_failure(_info(8, 0, {"image:truncated": 4, "image:not_dicom": 4}), max_share=0.6)
    assert message.startswith("no record was written from 8 images") and "image:truncated (4)" in message
    # images the adapter dropped count too
    assert "6 of 8 images" in build_failure(_info(2, 2, {"image:missing_file": 6}), max_share=0.5)


def test_a_build_where_most_images_fail_for_one_reason_exits_non_zero(raw, tmp_path, capsys):
    root = _copy(raw, tmp_path)
    dicoms = sorted(glob.glob(os.path.join(root, "cxr", "images", "*.dicom")))
    for path in dicoms:
        with open(path, "r+b") as f:
            f.truncate(2000)
    args = ["--config", f"{CONFIG}:root={root}", "--no-progress"]
    assert build_command.main(args + ["--out", str(tmp_path / "a")]) == 0  # half of them: under the default share
    capsys.readouterr()
    assert build_command.main(args + ["--out", str(tmp_path / "b"), "--max-reject-share", "0.4"]) == 1
    first = capsys.readouterr().err.splitlines()[0]
    assert f"{len(dicoms)} of 8 images" in first and "image:" in first and "cxr/images/" in first, first


def test_the_build_reports_which_host_received_how_many_images(raw, tmp_path):
    """The LLM backend's per-host image counts and fallback share reach dataset_info.json and the summary."""
    from data_gen.build import format_summary

    class Replies(JSONHandler):
        def do_GET(self):
            self.send_json(200, {"object": "list", "data": [{"id": "test-vlm"}]})

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_json(200, {"choices": [{"message": {"content": "Question: Is it? | Answer: yes"}}]})

    with serve(Replies) as base_url:
        cfg = load_dataset_config("phantom", f"root={raw}", ["synth.backend=llm", f"synth.llm.base_url={base_url}",
                                                             "synth.llm.model=test-vlm", "synth.llm.retries=0"])
        info = run_build(cfg, str(tmp_path / "out"), workers=1, progress=False)
    usage = info["synth"]
    total = info["counts"]["total"]["records"]
    assert usage["records_by_vlm"] + usage["fallback_records"] == total > 0
    assert sum(usage["images_sent"].values()) > 0 and all(h.startswith("127.0.0.1") for h in usage["images_sent"])
    summary = format_summary(info)
    assert "received" in summary and "template fallbacks" in summary
