"""medclm_jax.data.source: random access over a split's shards through their `.index` files.

The expected records come from what the tests wrote and from `read_tfrecord` (a sequential reader that does not
use the index); corruption is made by editing the bytes of real shards.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import json
import logging
import os
import pickle
import random
import shutil

import grain
import numpy as np
import pytest

from data_gen import phantom
from data_gen.build import run_build
from medclm_jax.config_file import load_config
from medclm_jax.data.source import RecordSource, read_split
from medclm_jax.records import RecordError, ShardWriter, decode_example, encode_example, read_tfrecord, schema
from medclm_jax.records.shards import index_path
from record_factory import make_record

PHANTOM_CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "data", "phantom.py")


def _record(n: int, rng: random.Random, **changes) -> dict:
    """A schema-valid record; `image/id` = f"img{n:05d}" identifies it; payload size varies (1-40 kB)."""
    return make_record(image=rng.randbytes(rng.randrange(1_000, 40_000)), image_id=f"img{n:05d}",
                       questions={s: f"{s} question {n}?" for s in schema.STAGES},
                       **{"rationale/seed": f"seed {n}", **changes})


def _write_info(out: str, shards: dict[str, list[str]], records: dict[str, int], version=schema.SCHEMA_VERSION):
    info = {"schema": {**schema.describe(), "version": version}, "shards": shards,
            "counts": {"per_split": {split: {"records": n} for split, n in records.items()}}}
    with open(os.path.join(out, "dataset_info.json"), "w") as f:
        json.dump(info, f)


def write_split(out: str, payloads: list[bytes], num_shards: int, split: str = "train") -> list[str]:
    """Writes `payloads` into `num_shards` shards (record k -> shard k mod n) plus dataset_info.json."""
    writer = ShardWriter(out, split, num_shards=num_shards)
    for data in payloads:
        writer.write(data)
    paths = [shard.path for shard in writer.close()]
    _write_info(out, {split: [os.path.basename(p) for p in paths]}, {split: len(payloads)})
    return paths


def sequential(paths: list[str]) -> list[dict]:
    return [decode_example(data) for path in paths for data in read_tfrecord(path)]


@pytest.fixture
def split_dir(tmp_path):
    """37 records in 4 shards (10, 9, 9, 9 records); returns (dir, shard paths, decoded records in split order)."""
    rng = random.Random(0)
    payloads = [encode_example(_record(n, rng)) for n in range(37)]
    paths = write_split(str(tmp_path), payloads, num_shards=4)
    expected = [decode_example(payloads[k]) for s in range(4) for k in range(s, 37, 4)]
    return str(tmp_path), paths, expected


def _ids(records):
    return [r["image/id"][0].decode() for r in records]


# ---------------------------------------------------------------------------------------------------------------
# Order, length, random access.


def test_length_and_order_follow_the_shards_as_written(split_dir):
    out, paths, expected = split_dir
    src = RecordSource(out, "train")
    assert len(src) == 37 and src.shard_paths == paths
    assert [src[i] for i in range(len(src))] == expected
    assert _ids([src[0], src[9], src[10], src[36]]) == ["img00000", "img00036", "img00001", "img00035"]
    assert src[-1] == expected[-1]
    with pytest.raises(IndexError):
        src[37]
    assert read_split(out, "train") == expected


def test_empty_shards_are_part_of_the_split(tmp_path):
    rng = random.Random(1)
    payloads = [encode_example(_record(n, rng)) for n in range(3)]
    paths = write_split(str(tmp_path), payloads, num_shards=5)  # shards 3 and 4 are empty
    src = RecordSource(str(tmp_path), "train")
    assert len(src) == 3 and [src[i] for i in range(3)] == sequential(paths)


def test_random_access_equals_sequential_reading(split_dir):
    out, paths, _ = split_dir
    src = RecordSource(out, "train")
    expected = sequential(paths)
    order = list(range(len(src)))
    random.Random(2).shuffle(order)
    for i in order:
        assert src[i] == expected[i]
        path, offset, length = src.locate(i)
        with open(path, "rb") as f:
            f.seek(offset)
            frame = f.read(length)
        assert decode_example(frame[12:-4]) == expected[i]


def test_opening_reads_the_indexes_not_the_payloads(tmp_path, monkeypatch):
    """10,000 records of 1 MiB in a sparse 10 GiB shard: opening touches only its index and its size."""
    n, frame = 10_000, 1 << 20
    shard = tmp_path / "train-00000-of-00001.tfrecord"
    with open(shard, "wb") as f:
        f.truncate(n * frame)  # sparse: no blocks on disk
    with open(index_path(str(shard)), "w") as f:
        f.writelines(f"{k * frame} {frame}\n" for k in range(n))
    _write_info(str(tmp_path), {"train": [shard.name]}, {"train": n})

    touched = []
    real_open, real_os_open, real_pread = builtins.open, os.open, os.pread
    monkeypatch.setattr(builtins, "open",
                        lambda file, *a, **k: (touched.append(str(file)), real_open(file, *a, **k))[1])
    monkeypatch.setattr(os, "open", lambda path, *a, **k: (touched.append(str(path)), real_os_open(path, *a, **k))[1])
    monkeypatch.setattr(os, "pread", lambda *a: (touched.append("pread"), real_pread(*a))[1])
    src = RecordSource(str(tmp_path), "train")
    monkeypatch.undo()
    assert len(src) == n and src.locate(n - 1) == (str(shard), (n - 1) * frame, frame)
    assert str(shard) not in touched and "pread" not in touched, touched
    assert index_path(str(shard)) in touched


# ---------------------------------------------------------------------------------------------------------------
# Threads, descriptors, pickling, Grain.


@pytest.mark.parametrize("max_open_files", [128, 2])
def test_many_threads_reading_at_random_all_get_their_record(split_dir, max_open_files):
    out, paths, _ = split_dir
    expected = sequential(paths)
    src = RecordSource(out, "train", max_open_files=max_open_files)
    rng = np.random.default_rng(3)
    jobs = np.array_split(rng.integers(0, len(src), 4_000), 8)

    def read(indices):
        return [(int(i), src[int(i)]) for i in indices]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = [pair for part in pool.map(read, jobs) for pair in part]
    assert len(results) == 4_000
    wrong = [i for i, rec in results if rec != expected[i]]
    assert not wrong, f"{len(wrong)} of 4000 concurrent reads returned the wrong record"
    assert src.num_open_files() <= max_open_files


def test_pickled_source_reads_the_same_records_with_its_own_descriptors(split_dir):
    out, _, expected = split_dir
    src = RecordSource(out, "train", on_error="skip")
    assert src[5] == expected[5] and src.num_open_files() == 1
    copy = pickle.loads(pickle.dumps(src))
    assert repr(copy) == repr(src) and len(copy) == len(src)
    assert copy.num_open_files() == 0 and copy.skipped == {}
    assert [copy[i] for i in range(len(copy))] == expected
    src.close()
    assert src.num_open_files() == 0 and src[0] == expected[0]  # reopens on demand


def test_grain_shuffles_globally_and_slices_per_process(split_dir):
    out, _, expected = split_dir
    src = RecordSource(out, "train")
    ds = grain.MapDataset.source(src).shuffle(seed=0)
    parts = [_ids(ds.slice(slice(p, None, 2))) for p in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(_ids(expected))
    assert abs(len(parts[0]) - len(parts[1])) <= 1
    assert parts[0] + parts[1] != _ids(expected[0::2] + expected[1::2]), "shuffled"

    # the iterator's position checkpoints and restores
    it = iter(ds.slice(slice(0, None, 2)).to_iter_dataset())
    head = [next(it) for _ in range(5)]
    state = it.get_state()
    rest = _ids(list(it))
    it2 = iter(ds.slice(slice(0, None, 2)).to_iter_dataset())
    it2.set_state(state)
    assert _ids(list(it2)) == rest and _ids(head) + rest == parts[0]


# ---------------------------------------------------------------------------------------------------------------
# Bad records.


def _flip(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupt_payload_byte_raises_naming_shard_and_offset_or_is_skipped(split_dir):
    out, paths, expected = split_dir
    i = 12  # shard 1, its record 2
    path, offset, length = RecordSource(out, "train").locate(i)
    assert path == paths[1]
    _flip(path, offset + 12 + length // 2)

    src = RecordSource(out, "train")
    with pytest.raises(RecordError) as e:
        src[i]
    assert e.value.path == path and e.value.offset == offset and e.value.reason == "tfrecord_crc"
    message = str(e.value)
    assert os.path.basename(path) in message and f"byte offset {offset}" in message and f"record {i} " in message
    assert src[i - 1] == expected[i - 1] and src[i + 1] == expected[i + 1]

    skipping = RecordSource(out, "train", on_error="skip")
    got = [skipping[k] for k in range(len(skipping))]
    assert got[i] is None and got[:i] + got[i + 1:] == expected[:i] + expected[i + 1:]
    assert skipping.skipped == {"tfrecord_crc": 1}
    assert list(skipping.iter_records()) == expected[:i] + expected[i + 1:]
    assert _ids(grain.MapDataset.source(skipping)) == _ids(expected[:i] + expected[i + 1:]), "Grain drops None"


def test_a_corrupt_length_header_is_a_bad_record_too(split_dir):
    out, _, expected = split_dir
    path, offset, _ = RecordSource(out, "train").locate(3)
    _flip(path, offset + 2)
    src = RecordSource(out, "train", on_error="skip")  # the index still fits the shard's size: kept
    assert src[3] is None and src.skipped == {"tfrecord_crc": 1} and src[4] == expected[4]


def test_a_record_that_breaks_the_schema_is_a_bad_record(tmp_path):
    rng = random.Random(4)
    records = [_record(n, rng) for n in range(4)]
    del records[2]["medium/cot"]
    write_split(str(tmp_path), [encode_example(r) for r in records], num_shards=1)
    with pytest.raises(RecordError, match=r"record 2 .*missing \['medium/cot'\]") as e:
        RecordSource(str(tmp_path), "train")[2]
    assert e.value.reason == "schema_mismatch" and e.value.offset is not None
    src = RecordSource(str(tmp_path), "train", on_error="skip")
    assert [r is None for r in src.iter_records()] == [False] * 3 and src.skipped == {"schema_mismatch": 1}
    assert RecordSource(str(tmp_path), "train", check_schema=False)[2]["image/id"] == [b"img00002"]


def test_a_truncated_shard_raises_or_keeps_its_complete_frames(split_dir, caplog):
    out, paths, expected = split_dir
    src = RecordSource(out, "train")
    last = paths[-1]
    first_of_last = len(src) - 9
    _, cut_frame, length = src.locate(first_of_last + 6)  # cut inside its 7th frame: 3 records after the cut lost
    os.truncate(last, cut_frame + length // 2)

    with pytest.raises(RecordError) as e:
        RecordSource(out, "train")
    assert e.value.path == last and e.value.offset == cut_frame and e.value.reason == "tfrecord_truncated"
    assert f"byte offset {cut_frame}" in str(e.value) and os.path.basename(last) in str(e.value)

    with caplog.at_level(logging.WARNING):
        skipping = RecordSource(out, "train", on_error="skip")
    assert len(skipping) == 37 - 3 and skipping.lost == {"tfrecord_truncated": 3}
    assert [skipping[k] for k in range(len(skipping))] == expected[:first_of_last + 6]
    assert "3 record(s) after byte offset" in caplog.text


def test_a_shard_cut_short_after_opening_fails_at_read(split_dir):
    out, paths, expected = split_dir
    src = RecordSource(out, "train", on_error="skip")
    _, offset, _ = src.locate(36)
    os.truncate(paths[-1], offset + 20)
    assert src[36] is None and src.skipped == {"tfrecord_truncated": 1} and src[35] == expected[35]


# ---------------------------------------------------------------------------------------------------------------
# Missing and mismatched indexes.


def test_a_missing_index_is_rebuilt_in_memory(split_dir, caplog):
    out, paths, expected = split_dir
    original = open(index_path(paths[2])).read()
    os.remove(index_path(paths[2]))
    with caplog.at_level(logging.WARNING):
        src = RecordSource(out, "train")
    assert [src[i] for i in range(len(src))] == expected
    assert "is missing; rebuilt it" in caplog.text and "write_index=True" in caplog.text
    assert not os.path.exists(index_path(paths[2])), "the data folder is not written to unless asked"

    RecordSource(out, "train", write_index=True)
    assert open(index_path(paths[2])).read() == original


def test_an_index_of_another_shard_is_detected_and_rebuilt(split_dir, caplog):
    out, paths, expected = split_dir
    shutil.copy(index_path(paths[0]), index_path(paths[1]))  # 10 frames of shard 0 over shard 1's 9 frames
    with caplog.at_level(logging.WARNING):
        src = RecordSource(out, "train")
    assert os.path.basename(index_path(paths[1])) in caplog.text and "rebuilt" in caplog.text
    assert [src[i] for i in range(len(src))] == expected


def test_an_index_that_fits_the_size_but_not_the_frames_is_caught_at_read(tmp_path):
    rng = random.Random(5)
    payloads = [encode_example(_record(n, rng)) for n in range(2)]
    (path,) = write_split(str(tmp_path), payloads, num_shards=1)
    a, b = (len(p) + 16 for p in payloads)
    with open(index_path(path), "w") as f:
        f.write(f"0 {b}\n{b} {a}\n")  # contiguous, ends at the file's size, wrong boundaries
    src = RecordSource(str(tmp_path), "train")
    with pytest.raises(RecordError, match="index does not belong to this shard") as e:
        src[0]
    assert e.value.reason == "index_mismatch" and e.value.path == path
    skipping = RecordSource(str(tmp_path), "train", on_error="skip")
    # record 1's "header" is payload bytes: its length CRC fails (the message names both causes)
    assert skipping[0] is None and skipping[1] is None
    assert skipping.skipped == {"index_mismatch": 1, "tfrecord_crc": 1}


def test_an_unparsable_index_is_rebuilt(split_dir):
    out, paths, expected = split_dir
    with open(index_path(paths[3]), "w") as f:
        f.write("0 100\nnot numbers\n")
    src = RecordSource(out, "train")
    assert [src[i] for i in range(len(src))] == expected


# ---------------------------------------------------------------------------------------------------------------
# dataset_info.json.


def test_an_unknown_schema_version_is_refused_with_how_to_fix(split_dir):
    out, paths, _ = split_dir
    _write_info(out, {"train": [os.path.basename(p) for p in paths]}, {"train": 37}, version=schema.SCHEMA_VERSION + 1)
    with pytest.raises(RecordError, match="rebuild the dataset") as e:
        RecordSource(out, "train")
    assert e.value.reason == "schema_version" and f"version {schema.SCHEMA_VERSION + 1}" in str(e.value)


def test_a_missing_split_names_the_available_ones(split_dir):
    out, _, _ = split_dir
    with pytest.raises(RecordError, match=r"no split 'val'; its splits are \['train'\]"):
        RecordSource(out, "val")


def test_a_missing_shard_or_dataset_info_is_named(split_dir):
    out, paths, _ = split_dir
    os.remove(paths[1])
    with pytest.raises(RecordError, match="not on disk") as e:
        RecordSource(out, "train")
    assert e.value.path == paths[1]
    os.remove(os.path.join(out, "dataset_info.json"))
    with pytest.raises(RecordError, match="dataset_info.json"):
        RecordSource(out, "train")


def test_a_count_that_disagrees_with_dataset_info_is_refused(split_dir):
    out, paths, _ = split_dir
    _write_info(out, {"train": [os.path.basename(p) for p in paths]}, {"train": 40})
    with pytest.raises(RecordError, match="counts 40 records .* hold 37") as e:
        RecordSource(out, "train")
    assert e.value.reason == "count_mismatch"
    assert len(RecordSource(out, "train", on_error="skip")) == 37


# ---------------------------------------------------------------------------------------------------------------
# A real build.


@pytest.fixture(scope="session")
def phantom_build(tmp_path_factory):
    raw = str(tmp_path_factory.mktemp("phantom_raw"))
    phantom.write_phantom(raw, 12, seed=3)
    out = str(tmp_path_factory.mktemp("phantom_built"))
    cfg = load_config(f"{PHANTOM_CONFIG}:root={raw}", ["write.records_per_shard=4"])
    return out, run_build(cfg, out, workers=1, progress=False)


def test_a_phantom_build_reads_back_split_by_split(phantom_build):
    out, info = phantom_build
    assert len(info["shards"]["train"]) > 1
    for split, names in info["shards"].items():
        src = RecordSource(out, split)
        expected = sequential([os.path.join(out, n) for n in names])
        assert len(src) == len(expected) == info["counts"]["per_split"][split]["records"]
        assert [src[i] for i in range(len(src))] == expected
        assert {r["split"][0].decode() for r in expected} == {split}
