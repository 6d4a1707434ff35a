"""medclm_jax.records: tf.train.Example bytes, TFRecord framing, shards and their index.

The checks are independent of the code under test: CRC-32C comes from `crcmod` (or a table implementation written
here), frames are parsed with `struct` here, and the Example bytes are written out by hand from the protobuf wire
format with TensorFlow's field numbers.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from medclm_jax.records import RecordError
from medclm_jax.records import (ShardWriter, TFRecordWriter, decode_example, encode_example, frame_record, list_shards,
                            masked_crc32c, read_index, read_record_at, read_shard_record, read_tfrecord,
                            remove_stale_temps, write_shard)
from medclm_jax.records import example as example_mod


# ---------------------------------------------------------------------------------------------------------------
# An independent CRC-32C and TFRecord parser.


def _table_crc32c(data: bytes) -> int:
    """Bitwise-reflected CRC-32C (polynomial 0x82F63B78), straight from the definition."""
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    crc = 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:
    import crcmod.predefined

    _crc32c = crcmod.predefined.mkCrcFun("crc-32c")
except ImportError:  # crcmod is in the test extra; the table version is equally independent
    _crc32c = _table_crc32c


def _masked(data: bytes) -> int:
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _parse_file(path) -> list[tuple[int, bytes]]:
    """(offset, data) of every frame, checking both CRCs with the independent implementation."""
    raw = open(path, "rb").read()
    out, pos = [], 0
    while pos < len(raw):
        (length,) = struct.unpack_from("<Q", raw, pos)
        (lcrc,) = struct.unpack_from("<I", raw, pos + 8)
        assert lcrc == _masked(raw[pos:pos + 8])
        data = raw[pos + 12:pos + 12 + length]
        (dcrc,) = struct.unpack_from("<I", raw, pos + 12 + length)
        assert dcrc == _masked(data)
        out.append((pos, data))
        pos += 16 + length
    assert pos == len(raw)
    return out


def test_independent_crc_is_crc32c():
    assert _crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert _table_crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("data", [b"", b"\x00" * 8, b"hello", bytes(range(256)) * 3])
def test_masked_crc_matches_independent(data):
    assert masked_crc32c(data) == _masked(data)


def test_frame_layout_by_hand():
    data = b"hello"
    length = (5).to_bytes(8, "little")
    expected = length + _masked(length).to_bytes(4, "little") + data + _masked(data).to_bytes(4, "little")
    assert frame_record(data) == expected
    assert len(frame_record(data)) == 12 + 5 + 4


# ---------------------------------------------------------------------------------------------------------------
# tf.train.Example bytes.


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2) with a one-byte length, as TF's field numbers give it."""
    assert len(payload) < 128
    return bytes([field << 3 | 2, len(payload)]) + payload


def _entry(key: bytes, feature: bytes) -> bytes:
    return _ld(1, _ld(1, key) + _ld(2, feature))  # Features.feature (1) -> map entry {key=1, value=2}


def test_example_bytes_by_hand():
    # Example{features=1}; Features{feature=1 map}; Feature{bytes_list=1, float_list=2, int64_list=3};
    # *List{value=1}, float/int64 packed.
    int_feature = _ld(3, _ld(1, b"\x05"))  # Int64List [5]: packed varint
    float_feature = _ld(2, _ld(1, struct.pack("<f", 0.5)))  # FloatList [0.5]: packed fixed32
    bytes_feature = _ld(1, _ld(1, b"hi"))  # BytesList [b"hi"]
    neg_feature = _ld(3, _ld(1, b"\xff" * 9 + b"\x01"))  # Int64List [-1]: ten-byte two's-complement varint

    assert encode_example({"a": 5}) == _ld(1, _entry(b"a", int_feature))
    assert encode_example({"a": 5}).hex() == "0a0c0a0a0a016112051a030a0105"
    # map entries come out sorted by key, whatever the insertion order
    got = encode_example({"s": b"hi", "n": -1, "f": 0.5, "a": 5})
    want = _ld(1, _entry(b"a", int_feature) + _entry(b"f", float_feature) + _entry(b"n", neg_feature)
               + _entry(b"s", bytes_feature))
    assert got == want


def test_generated_messages_equal_tfds_copy():
    """The fallback classes built from our own descriptor read and write the same bytes."""
    generated = example_mod._build_messages()
    record = {"image/encoded": b"\x89PNG", "lesion/box": [0.1, 0.2, 0.3, 0.4], "image/height": 7, "x": "é"}
    data = encode_example(record)
    ex = generated["Example"]()
    ex.ParseFromString(data)
    assert ex.SerializeToString(deterministic=True) == data
    assert [(f.name, f.number) for f in generated["Feature"].DESCRIPTOR.fields] == [
        ("bytes_list", 1), ("float_list", 2), ("int64_list", 3)]
    assert generated["Int64List"].DESCRIPTOR.fields[0].is_packed
    assert generated["FloatList"].DESCRIPTOR.fields[0].is_packed
    assert not generated["BytesList"].DESCRIPTOR.fields[0].is_packed


def test_generated_fallback_when_tfds_has_no_proto(monkeypatch):
    def missing():
        raise ImportError("no tensorflow_datasets")

    monkeypatch.setattr(example_mod, "_tfds_messages", missing)
    messages, source = example_mod._load_messages()
    assert source == "generated"
    ex = messages["Example"]()
    ex.features.feature["a"].int64_list.value.append(5)
    assert ex.SerializeToString(deterministic=True).hex() == "0a0c0a0a0a016112051a030a0105"  # as by hand above


def test_example_round_trip():
    record = {
        "image/encoded": b"\x00\xff" * 10,
        "image/id": "a3f",
        "image/height": 512,
        "lesion/box": [0.25, 1 / 3, 0.58, 0.67],
        "lesion/organ_score": 0.875,
        "easy/question": "Is there a nodule in the right upper zone?",
        "unicode": "léSion ✓",
        "ints": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "floats": np.zeros((0,), np.float32),
        "flag": True,
        "tags": ["a", b"b"],
        "mixed_numbers": [1, 2.5],
    }
    out = decode_example(encode_example(record))
    assert set(out) == set(record)
    assert out["image/encoded"] == [record["image/encoded"]]
    assert out["image/id"] == [b"a3f"]
    assert out["image/height"] == [512]
    np.testing.assert_array_equal(out["lesion/box"], np.float32(record["lesion/box"]))  # stored as float32
    assert out["lesion/organ_score"] == [0.875]
    assert out["unicode"] == ["léSion ✓".encode()]
    assert out["ints"] == [1, 2, 3, 4]
    assert out["floats"] == []
    assert out["flag"] == [1]
    assert out["tags"] == [b"a", b"b"]
    assert out["mixed_numbers"] == [1.0, 2.5]


@pytest.mark.parametrize("value, error", [([], ValueError), ([1, "a"], TypeError), ({"a": 1}, TypeError),
                                          (None, TypeError)])
def test_encode_rejects_untyped_values(value, error):
    with pytest.raises(error, match="bad_key"):
        encode_example({"bad_key": value})


def test_decode_garbage_raises():
    with pytest.raises(RecordError) as e:
        decode_example(b"\xff\xff\xff")
    assert e.value.reason == "bad_example"


# ---------------------------------------------------------------------------------------------------------------
# TFRecord files.


def _records(n: int) -> list[bytes]:
    return [encode_example({"i": i, "text": "x" * (i * 37 % 200)}) for i in range(n)]


def test_writer_reader_round_trip(tmp_path):
    path = tmp_path / "a.tfrecord"
    records = _records(6) + [b""]
    with TFRecordWriter(str(path)) as w:
        placed = [w.write(r) for r in records]
    parsed = _parse_file(path)
    assert [d for _, d in parsed] == records
    assert [o for o, _ in parsed] == [o for o, _ in placed]
    assert [n for _, n in placed] == [16 + len(r) for r in records]
    assert list(read_tfrecord(str(path))) == records
    for (offset, _), r in zip(placed, records):
        assert read_record_at(str(path), offset) == r


def _write(path, records):
    with TFRecordWriter(str(path)) as w:
        return [w.write(r) for r in records]


def test_corrupt_data_byte_names_file_and_offset(tmp_path):
    path = tmp_path / "c.tfrecord"
    placed = _write(path, _records(4))
    raw = bytearray(path.read_bytes())
    bad_offset = placed[2][0]
    raw[bad_offset + 12 + 3] ^= 0x40  # one bit inside record 2's data
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordError) as e:
        list(read_tfrecord(str(path)))
    assert e.value.reason == "tfrecord_crc"
    assert str(path) in str(e.value) and f"byte offset {bad_offset}" in str(e.value)
    with pytest.raises(RecordError, match=f"byte offset {bad_offset}"):
        read_record_at(str(path), bad_offset)
    assert len(list(read_tfrecord(str(path), verify=False))) == 4  # no CRC check: the flip goes unnoticed


def test_corrupt_length_and_truncation(tmp_path):
    path = tmp_path / "t.tfrecord"
    placed = _write(path, _records(3))
    good = path.read_bytes()

    raw = bytearray(good)
    raw[placed[1][0]] ^= 0x01  # record 1's length field
    path.write_bytes(bytes(raw))
    with pytest.raises(RecordError, match=f"length CRC mismatch .* byte offset {placed[1][0]}") as e:
        list(read_tfrecord(str(path)))
    assert e.value.reason == "tfrecord_crc"

    for cut in (len(good) - 2, placed[2][0] + 5):  # inside the last record's footer, inside its header
        path.write_bytes(good[:cut])
        with pytest.raises(RecordError, match=f"byte offset {placed[2][0]}") as e:
            list(read_tfrecord(str(path), verify=False))
        assert e.value.reason == "tfrecord_truncated" and str(path) in str(e.value)

    path.write_bytes(good)
    with pytest.raises(RecordError, match="outside the file"):
        read_record_at(str(path), len(good) + 10)


# ---------------------------------------------------------------------------------------------------------------
# Shards.


def _index_lines(shard):
    return [tuple(int(x) for x in line.split()) for line in open(str(shard) + ".index")]


def test_shards_by_records_per_shard_and_index(tmp_path):
    records = _records(10)
    with ShardWriter(str(tmp_path), "train", records_per_shard=4) as w:
        for r in records:
            w.write(r)
        assert list_shards(str(tmp_path), "train") == []  # nothing finished before close
    names = sorted(p for p in os.listdir(tmp_path))
    assert names == [f"train-0000{i}-of-00003.tfrecord{s}" for i in range(3) for s in ("", ".index")]
    shards = list_shards(str(tmp_path), "train")
    assert [len(_parse_file(s)) for s in shards] == [4, 4, 2]
    # the index holds (frame offset, frame length) and agrees with the independent parse
    for s in shards:
        parsed = _parse_file(s)
        assert _index_lines(s) == [(o, 16 + len(d)) for o, d in parsed]
        assert read_index(s) == _index_lines(s)
    # random access by record number, in any order
    flat = [(s, i) for s in shards for i in range(len(read_index(s)))]
    for k in (9, 0, 5, 3):
        assert read_shard_record(flat[k][0], flat[k][1]) == records[k]
    with pytest.raises(IndexError):
        read_shard_record(shards[2], 2)


def test_shards_by_count_round_robin(tmp_path):
    records = _records(7)
    w = ShardWriter(str(tmp_path), "val", num_shards=3)
    for r in records:
        w.write(r)
    infos = w.close()
    assert [os.path.basename(i.path) for i in infos] == [f"val-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert [i.num_records for i in infos] == [3, 2, 2]
    for k, info in enumerate(infos):
        assert [d for _, d in _parse_file(info.path)] == records[k::3]
        assert info.num_bytes == os.path.getsize(info.path)
    # more shards than records: empty shards still exist so "-of-n" holds
    infos = ShardWriter(str(tmp_path / "e"), "test", num_shards=4)
    infos.write(records[0])
    infos = infos.close()
    assert [i.num_records for i in infos] == [1, 0, 0, 0]
    assert os.path.getsize(infos[3].path) == 0 and read_index(infos[3].path) == []


def test_interrupted_writer_leaves_no_finished_looking_shard(tmp_path):
    records = _records(5)
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path), "train", records_per_shard=2) as w:
            for r in records:
                w.write(r)
            raise RuntimeError("worker died")
    assert os.listdir(tmp_path) == []  # aborted: temps removed, nothing final

    # a process killed mid-run never reaches close(): only hidden temp files remain
    w = ShardWriter(str(tmp_path), "train", records_per_shard=2)
    for r in records:
        w.write(r)
    assert list_shards(str(tmp_path), "train") == []
    assert all(n.startswith(".") and n.endswith(".tmp") for n in os.listdir(tmp_path))
    removed = remove_stale_temps(str(tmp_path), "train")
    assert len(removed) == 3 and os.listdir(tmp_path) == []  # three data temps (indexes come at close)
    w._shards[-1].writer.close()


def test_write_shard_atomic(tmp_path):
    records = _records(3)
    info = write_shard(str(tmp_path), "train", 1, 4, iter(records))
    assert os.path.basename(info.path) == "train-00001-of-00004.tfrecord"
    assert [d for _, d in _parse_file(info.path)] == records

    def failing():
        yield records[0]
        raise OSError("decode failed")

    with pytest.raises(OSError):
        write_shard(str(tmp_path), "train", 2, 4, failing())
    assert sorted(os.listdir(tmp_path)) == ["train-00001-of-00004.tfrecord", "train-00001-of-00004.tfrecord.index"]
    assert list_shards(str(tmp_path), "train") == [info.path]


def test_bad_or_missing_index(tmp_path):
    info = write_shard(str(tmp_path), "train", 0, 1, _records(2))
    with open(info.index_path, "a") as f:
        f.write("12 oops\n")
    with pytest.raises(RecordError, match="line 3") as e:
        read_index(info.path)
    assert e.value.reason == "bad_index" and info.index_path in str(e.value)
    os.remove(info.index_path)
    with pytest.raises(RecordError) as e:
        read_index(info.path)
    assert e.value.reason == "missing_index"
    assert list_shards(str(tmp_path), "train") == []  # a shard without its index is not finished


# mutation-testing gaps (mutmut survivors, see benchmarks/results/mutation.md) ---------------------------------

from medclm_jax.records import iter_tfrecord_frames  # noqa: E402


def test_writer_counts_records_and_refuses_writes_after_close(tmp_path):
    path = tmp_path / "n.tfrecord"
    w = TFRecordWriter(str(path))
    assert (w.num_records, w.offset) == (0, 0)
    w.write(b"ab")
    w.write(b"")
    assert (w.num_records, w.offset) == (2, 16 + 2 + 16)
    w.close()
    with pytest.raises(ValueError, match="write after close") as e:
        w.write(b"x")
    assert str(path) in str(e.value)


def test_flush_reaches_the_file_and_fsync_only_on_request(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    path = tmp_path / "f.tfrecord"
    w = TFRecordWriter(str(path))
    w.write(b"abc")
    w.flush()
    assert path.read_bytes() == frame_record(b"abc") and synced == []   # flushed, not fsynced, by default
    w.flush(fsync=True)
    assert len(synced) == 1
    w.close()
    assert len(synced) == 1                                               # close() does not fsync by default
    w2 = TFRecordWriter(str(tmp_path / "g.tfrecord"))
    w2.write(b"abc")
    w2.close(fsync=True)
    assert len(synced) == 2
    w2.close(fsync=True)                                                  # a second close is a no-op
    assert len(synced) == 2


def test_errors_carry_path_offset_and_reason_as_attributes(tmp_path):
    path = tmp_path / "e.tfrecord"
    placed = _write(path, _records(3))
    good = path.read_bytes()
    o1, o2 = placed[1][0], placed[2][0]

    def error(fn):
        with pytest.raises(RecordError) as e:
            fn()
        return e.value

    raw = bytearray(good)
    raw[o1] ^= 0x01                                                       # length field of record 1
    path.write_bytes(bytes(raw))
    e = error(lambda: list(read_tfrecord(str(path))))
    assert (e.path, e.offset, e.reason) == (str(path), o1, "tfrecord_crc")
    raw = bytearray(good)
    raw[o1 + 12] ^= 0x01                                                  # data of record 1
    path.write_bytes(bytes(raw))
    e = error(lambda: list(read_tfrecord(str(path))))
    assert (e.path, e.offset, e.reason) == (str(path), o1, "tfrecord_crc")
    e = error(lambda: read_record_at(str(path), o1))
    assert (e.path, e.offset, e.reason) == (str(path), o1, "tfrecord_crc") and str(path) in str(e)
    e = error(lambda: list(iter_tfrecord_frames(str(path))))              # verifies by default
    assert e.reason == "tfrecord_crc"

    path.write_bytes(good[:o2 + 5])                                       # inside record 2's header
    e = error(lambda: list(read_tfrecord(str(path), verify=False)))
    assert (e.path, e.offset, e.reason) == (str(path), o2, "tfrecord_truncated")
    assert "(5 of 12 bytes); the shard was cut short: rewrite it" in str(e)
    path.write_bytes(good[:-2])                                           # inside record 2's footer
    e = error(lambda: list(read_tfrecord(str(path), verify=False)))
    assert (e.path, e.offset, e.reason) == (str(path), o2, "tfrecord_truncated")

    path.write_bytes(good)
    for bad in (len(good), len(good) + 10, -1):                           # the end of the file is outside it too
        e = error(lambda: read_record_at(str(path), bad))
        assert (e.path, e.offset, e.reason) == (str(path), bad, "tfrecord_offset")
        assert "does not belong to this shard: rewrite the shard" in str(e)


@pytest.mark.parametrize("length", [2 ** 40, 2 ** 63 + 5])
def test_a_huge_corrupt_length_read_without_crc_checks_is_a_truncation_not_an_allocation(tmp_path, length):
    path = tmp_path / "a.tfrecord"
    with TFRecordWriter(str(path)) as w:
        w.write(b"payload")
    blob = bytearray(path.read_bytes())
    blob[:8] = struct.pack("<Q", length)
    path.write_bytes(bytes(blob))
    with pytest.raises(RecordError) as e:
        list(read_tfrecord(str(path), verify=False))
    assert e.value.reason == "tfrecord_truncated" and e.value.offset == 0


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("size", [0, 3, 9])
def test_a_record_cut_anywhere_after_its_header_is_a_truncation_naming_the_bytes_left(tmp_path, size, verify):
    """A file cut between a record's header and the end of its CRC footer: the reader must raise a truncation that
    says how many bytes were left, at every cut (also right after the header, and for an empty or a short payload,
    whose footer is as long as its data); never return a partial payload or fail with a struct or CRC error."""
    path = tmp_path / "cut.tfrecord"
    placed = _write(path, [b"first record", b"x" * size])
    good = path.read_bytes()
    start = placed[1][0]
    assert len(good) == start + 12 + size + 4
    for cut in range(start + 12, len(good)):
        path.write_bytes(good[:cut])
        with pytest.raises(RecordError) as e:
            list(read_tfrecord(str(path), verify=verify))
        assert (e.value.offset, e.value.reason) == (start, "tfrecord_truncated")
        assert (f"header says {size} data bytes + 4 CRC bytes, only {cut - start - 12} left; the shard was cut "
                "short: rewrite it") in str(e.value)
