"""TFRecord output without TensorFlow: `tf.train.Example` encoding, the framed file format, atomic shards.

    encode_example(dict) -> bytes          decode_example(bytes) -> dict[str, list]
    TFRecordWriter(path)                   read_tfrecord(path, verify=True)      read_record_at(path, offset)
    ShardWriter(out_dir, split, num_shards=|records_per_shard=)    write_shard(...)    read_index / list_shards
"""

from data_gen.write.example import PROTO_SOURCE, decode_example, encode_example
from data_gen.write.shards import (ShardInfo, ShardWriter, index_path, list_shards, read_index, read_shard_record,
                                   remove_stale_temps, shard_name, write_shard)
from data_gen.write.tfrecord import (TFRecordWriter, frame_record, iter_tfrecord_frames, masked_crc32c,
                                     read_record_at, read_tfrecord)

__all__ = [
    "PROTO_SOURCE", "decode_example", "encode_example", "ShardInfo", "ShardWriter", "index_path", "list_shards",
    "read_index", "read_shard_record", "remove_stale_temps", "shard_name", "write_shard", "TFRecordWriter",
    "frame_record", "iter_tfrecord_frames", "masked_crc32c", "read_record_at", "read_tfrecord",
]
