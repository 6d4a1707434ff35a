"""The record contract between data_gen (the writer) and training/eval (the readers). Free of JAX.

    schema     the keys (kind, meaning), SCHEMA_VERSION, stages/pools/splits, `domain_of`, `check_record`
    example    `tf.train.Example` bytes without TensorFlow: `encode_example` / `decode_example`
    tfrecord   the TFRecord framing: `TFRecordWriter`, `read_tfrecord`, `read_record_at`
    shards     sharded output with a `.index` of record offsets: `ShardWriter`, `write_shard`, `read_index`
    boxes      box text in the CoT (`[x1, y1, x2, y2]`) and PaliGemma location tokens
    overlay    the lesion box drawn on an image (the Easy view, `predict`'s picture)
    errors     `RecordError`: the file, the byte offset, the key, and what to do

Rule: this package imports nothing from `data_gen` and nothing that imports jax, so both halves can import it.
Submodules load on first use (PEP 562), so `medclm_jax.records.boxes` alone does not import numpy or protobuf
(`medclm score` stays light).
"""

import importlib

_EXPORTS = {
    "RecordError": "errors",
    "decode_example": "example", "encode_example": "example",
    "ShardInfo": "shards", "ShardWriter": "shards", "index_path": "shards", "list_shards": "shards",
    "read_index": "shards", "read_shard_record": "shards", "remove_stale_temps": "shards", "shard_name": "shards",
    "write_shard": "shards",
    "TFRecordWriter": "tfrecord", "frame_record": "tfrecord", "iter_tfrecord_frames": "tfrecord",
    "masked_crc32c": "tfrecord", "read_record_at": "tfrecord", "read_tfrecord": "tfrecord",
}
_SUBMODULES = ("boxes", "errors", "example", "overlay", "schema", "shards", "tfrecord")
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
