"""`tf.train.Example` protos without TensorFlow: encode a flat dict of features, decode it back.

The message classes come from the copy of TensorFlow's `example.proto`/`feature.proto` that tensorflow-datasets
bundles (`tensorflow_datasets.proto.tf_example_generated_pb2`, package `tensorflow_copy`). When that module is not
importable, an equivalent set of classes is built at import time from a hand-written descriptor in a private
descriptor pool (so it can never clash with TensorFlow's own `tensorflow.Example` if both are loaded).

Only the wire format matters to readers, and it is fixed by the field numbers, which equal TensorFlow's:

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }

So `tf.io.parse_single_example` reads what `encode_example` writes, bit for bit. Serialization is deterministic
(map entries sorted by key), so the same record dict always gives the same bytes.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

from medclm_jax.records.errors import RecordError

FeatureValue = list  # list[bytes] | list[float] | list[int]


def _build_messages() -> dict[str, type]:
    """Example/Features/Feature/*List message classes from a descriptor written here (TF's field numbers)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="medclm_tfrecord/example.proto", package="medclm_tfrecord",
                                             syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto

    def add_list(name: str, field_type: int, packed: bool) -> None:
        msg = fdp.message_type.add(name=name)
        field = msg.field.add(name="value", number=1, type=field_type, label=F.LABEL_REPEATED)
        if packed:
            field.options.packed = True

    add_list("BytesList", F.TYPE_BYTES, packed=False)
    add_list("FloatList", F.TYPE_FLOAT, packed=True)
    add_list("Int64List", F.TYPE_INT64, packed=True)

    feature = fdp.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (field_name, type_name) in enumerate(
            [("bytes_list", "BytesList"), ("float_list", "FloatList"), ("int64_list", "Int64List")], start=1):
        feature.field.add(name=field_name, number=number, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                          type_name=f".medclm_tfrecord.{type_name}", oneof_index=0)

    features = fdp.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                    type_name=".medclm_tfrecord.Feature")
    features.field.add(name="feature", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_REPEATED,
                       type_name=".medclm_tfrecord.Features.FeatureEntry")

    example = fdp.message_type.add(name="Example")
    example.field.add(name="features", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                      type_name=".medclm_tfrecord.Features")

    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    names = ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"medclm_tfrecord.{n}")) for n in names}


def _tfds_messages() -> dict[str, type]:
    from tensorflow_datasets.proto import tf_example_generated_pb2 as ex  # pylint: disable=import-outside-toplevel
    from tensorflow_datasets.proto import tf_feature_generated_pb2 as fe  # pylint: disable=import-outside-toplevel

    return {"Example": ex.Example, "Features": fe.Features, "Feature": fe.Feature, "BytesList": fe.BytesList,
            "FloatList": fe.FloatList, "Int64List": fe.Int64List}


def _load_messages() -> tuple[dict[str, type], str]:
    try:
        return _tfds_messages(), "tensorflow_datasets"
    except ImportError:
        return _build_messages(), "generated"


MESSAGES, PROTO_SOURCE = _load_messages()
Example = MESSAGES["Example"]


def _feature_kind(key: str, value: Any) -> tuple[str, list]:
    """(`bytes_list` | `float_list` | `int64_list`, flat python list) for one feature value."""
    if isinstance(value, (str, bytes)):
        value = [value]
    elif isinstance(value, (numbers.Number, np.generic)):
        value = [value]
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        flat = value.reshape(-1)
        if kind == "f":
            return "float_list", [float(v) for v in flat]
        if kind in "iub":
            return "int64_list", [int(v) for v in flat]
        value = flat.tolist()
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"feature {key!r}: cannot encode a {type(value).__name__}; use str/bytes, int, float, "
                        "a list of one of them, or a numpy array")
    if not value:
        raise ValueError(f"feature {key!r}: an empty list has no type; pass an empty numpy array with a dtype")
    if all(isinstance(v, (str, bytes, np.str_, np.bytes_)) for v in value):
        return "bytes_list", [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
    if all(isinstance(v, (numbers.Integral, np.integer, np.bool_)) for v in value):
        return "int64_list", [int(v) for v in value]
    if all(isinstance(v, (numbers.Real, np.integer, np.floating, np.bool_)) for v in value):
        return "float_list", [float(v) for v in value]
    kinds = sorted({type(v).__name__ for v in value})
    raise TypeError(f"feature {key!r}: mixed or unsupported element types {kinds}; a feature holds one kind")


def encode_example(features: Mapping[str, Any]) -> bytes:
    """Serialize a flat dict as a `tf.train.Example`.

    Args:
      features: key -> value. `str`/`bytes` (or a list of them) -> bytes_list (str as UTF-8); `int`/`bool` (or a
        list, or an integer numpy array) -> int64_list; `float` (or a list with at least one float, or a float numpy
        array) -> float_list (stored as float32, as TF does). Arrays are flattened.

    Returns:
      the serialized Example (deterministic: map entries sorted by key).
    """
    example = Example()
    feature_map = example.features.feature
    for key, value in features.items():
        if not isinstance(key, str):
            raise TypeError(f"feature keys are str, got {key!r}")
        kind, values = _feature_kind(key, value)
        getattr(feature_map[key], kind).value.extend(values)
    return example.SerializeToString(deterministic=True)


def decode_example(data: bytes) -> dict[str, FeatureValue]:
    """Parse a serialized `tf.train.Example` into key -> list of values.

    Every value is a list, as in TF (a scalar feature is a one-element list): `list[bytes]` for bytes_list,
    `list[float]` for float_list (float32 values widened to Python floats), `list[int]` for int64_list; a feature
    with no kind set decodes to `[]`.

    Raises:
      RecordError(reason='bad_example'): the bytes are not an Example.
    """
    example = Example()
    try:
        example.ParseFromString(bytes(data))
    except message.DecodeError as e:
        raise RecordError(f"not a serialized tf.train.Example ({e})", reason="bad_example") from e
    out: dict[str, FeatureValue] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[key] = list(getattr(feature, kind).value) if kind else []
    return out
